"""Jaxpr utilities of the Monte Carlo engine: splitting a model's params-only
steps from the rest, and estimating the peak bytes a traced function creates.
Imports jax and numpy only."""

from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core as jcore

from uswim_jax._trialbatch import var_bytes as _var_bytes

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def split_params_only(
    apply_fn: ApplyFn, params: Any, x: jax.Array
) -> tuple[Callable[[Any], list], Callable[[list, jax.Array], jax.Array]]:
    """Splits ``apply_fn`` into the part that reads the params alone and the rest.

    Returns ``(prepare, apply)`` with ``apply(prepare(params), x) ==
    apply_fn(params, x)``: ``prepare`` evaluates every step of ``apply_fn``'s
    jaxpr whose inputs are all params (or constants) and whose output is no
    larger than its largest input (reshapes, transposes and gathers of kernels,
    e.g. ``Dense(layout="FN")``'s row permutation, or a quantizer), and returns
    the values the other steps need; ``apply`` evaluates the rest. The steps are
    the same primitives on the same values, so the result is the same. Steps
    with side effects, and steps that would materialise something larger than
    their inputs (a bias broadcast to the activations' shape), stay in
    ``apply``. ``x`` only fixes the shape and dtype ``apply`` is traced for.

    :func:`correct_count` uses it to run ``prepare`` once per trial instead of
    once per image batch: XLA does not hoist these loop-invariant steps out of
    the batch loop itself.
    """
    closed, out_shape = jax.make_jaxpr(apply_fn, return_shape=True)(params, x)
    jaxpr = closed.jaxpr
    n_params = len(jax.tree.leaves(params))
    param_vars, x_vars = jaxpr.invars[:n_params], jaxpr.invars[n_params:]
    known = set(jaxpr.constvars) | set(param_vars)
    pre, rest = [], []
    for eqn in jaxpr.eqns:
        ins = [v for v in eqn.invars if not isinstance(v, jcore.Literal)]
        if (
            ins
            and all(v in known for v in ins)
            and not eqn.effects
            and sum(map(_var_bytes, eqn.outvars)) <= max(map(_var_bytes, ins))
        ):
            pre.append(eqn)
            known.update(eqn.outvars)
        else:
            rest.append(eqn)
    needed: dict = {}  # ordered set of the known values ``apply`` reads
    for v in [v for e in rest for v in e.invars] + list(jaxpr.outvars):
        if not isinstance(v, jcore.Literal) and v in known:
            needed[v] = None
    needed_vars = list(needed)
    src = getattr(jaxpr.debug_info, "func_src_info", "") or ""
    main_in = needed_vars + list(x_vars)
    prep = jcore.ClosedJaxpr(
        jcore.Jaxpr(
            jaxpr.constvars,
            param_vars,
            needed_vars,
            pre,
            debug_info=jcore.DebugInfo("prepare", src, None, None),
        ),
        closed.consts,
    )
    main = jcore.ClosedJaxpr(
        jcore.Jaxpr(
            [],
            main_in,
            jaxpr.outvars,
            rest,
            jaxpr.effects,
            debug_info=jcore.DebugInfo("apply", src, None, None),
        ),
        [],
    )
    out_tree = jax.tree.structure(out_shape)

    def prepare(p: Any) -> list:
        return jcore.jaxpr_as_fun(prep)(*jax.tree.leaves(p))

    def apply(prepared: list, xi: jax.Array) -> jax.Array:
        out = jcore.jaxpr_as_fun(main)(*prepared, *jax.tree.leaves(xi))
        return jax.tree.unflatten(out_tree, out)

    return prepare, apply


def _peak_bytes(jaxpr: Any) -> int:
    """Peak bytes of the values a jaxpr creates, from their live ranges in
    equation order (inputs not counted; a nested jaxpr adds its own peak at its
    equation). An estimate: XLA fuses away many of these values."""
    outer = set(jaxpr.invars) | set(jaxpr.constvars)
    last_use = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            if not isinstance(v, jcore.Literal):
                last_use[v] = i
    for v in jaxpr.outvars:
        if not isinstance(v, jcore.Literal):
            last_use[v] = len(jaxpr.eqns)
    live = peak = 0
    for i, eqn in enumerate(jaxpr.eqns):
        inner = max(
            (
                _peak_bytes(getattr(j, "jaxpr", j))
                for j in jcore.jaxprs_in_params(eqn.params)
            ),
            default=0,
        )
        out = sum(map(_var_bytes, eqn.outvars))
        peak = max(peak, live + inner + out)
        live += out
        dead = {v for v in eqn.invars if not isinstance(v, jcore.Literal)}
        live -= sum(
            _var_bytes(v) for v in dead if last_use.get(v) == i and v not in outer
        )
        live -= sum(_var_bytes(v) for v in eqn.outvars if v not in last_use)
    return peak


def forward_bytes(apply_fn: ApplyFn, params: Any, x: Any) -> int:
    """Estimated peak bytes of the activations of ``apply_fn(params, x)``
    (``x`` may be a ``jax.ShapeDtypeStruct``), from the live ranges of the values
    in its jaxpr; params and ``x`` themselves are not counted."""
    return _peak_bytes(jax.make_jaxpr(apply_fn)(params, x).jaxpr)
