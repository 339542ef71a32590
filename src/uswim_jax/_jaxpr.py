"""Jaxpr utilities of the Monte Carlo engine: splitting a model's params-only
steps from the rest, and what a traced function costs (the bytes of its
values, the peak bytes it creates, the multiply-accumulates of its
convolutions and matmuls). Imports jax and numpy only."""

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def nbytes_of(shape: Sequence[int], dtype: Any) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` (a NumPy dtype or one of
    JAX's extended dtypes, such as a PRNG key's, which know their size)."""
    size = getattr(dtype, "itemsize", None)
    return math.prod(shape) * (np.dtype(dtype).itemsize if size is None else size)


def var_bytes(v: Any) -> int:
    """Bytes of a jaxpr variable's value (0 for tokens and other non-arrays)."""
    aval = getattr(v, "aval", None)
    if not hasattr(aval, "shape") or not hasattr(aval, "dtype"):
        return 0
    return nbytes_of(aval.shape, aval.dtype)


def eqn_macs(eqn: Any) -> int:
    """Multiply-accumulates of one equation: a ``conv_general_dilated`` (its
    outputs times the kernel's input features and positions), a ``dot_general``
    (its outputs times the contracted size), and those of the jaxprs inside any
    other equation: a ``scan`` body once per iteration, the largest branch of a
    ``cond``, a ``while`` body once (its trip count is not known when traced)."""
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        spec = eqn.params["dimension_numbers"].rhs_spec
        per_out = rhs[spec[1]] * math.prod(rhs[i] for i in spec[2:])
        return math.prod(eqn.outvars[0].aval.shape) * per_out
    if name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in lc)
    inner = [jaxpr_macs(j) for j in jcore.jaxprs_in_params(eqn.params)]
    if name == "cond":
        return max(inner, default=0)
    return (eqn.params["length"] if name == "scan" else 1) * sum(inner)


def jaxpr_macs(jaxpr: Any) -> int:
    """:func:`eqn_macs` summed over a jaxpr (open or closed)."""
    return sum(eqn_macs(e) for e in getattr(jaxpr, "jaxpr", jaxpr).eqns)


def forward_flops(jaxpr: Any) -> int:
    """2 x the multiply-accumulates of every convolution and ``dot_general`` of
    ``jaxpr`` (:func:`jaxpr_macs`): any model counted the same way, from what it
    traces to (XLA's cost analysis cannot be used for this: it does not count
    cuDNN convolutions on GPU)."""
    return 2 * jaxpr_macs(jaxpr)


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
            and sum(map(var_bytes, eqn.outvars)) <= max(map(var_bytes, ins))
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
        out = sum(map(var_bytes, eqn.outvars))
        peak = max(peak, live + inner + out)
        live += out
        dead = {v for v in eqn.invars if not isinstance(v, jcore.Literal)}
        live -= sum(
            var_bytes(v) for v in dead if last_use.get(v) == i and v not in outer
        )
        live -= sum(var_bytes(v) for v in eqn.outvars if v not in last_use)
    return peak


def forward_bytes(apply_fn: ApplyFn, params: Any, x: Any) -> int:
    """Estimated peak bytes of the activations of ``apply_fn(params, x)``
    (``x`` may be a ``jax.ShapeDtypeStruct``), from the live ranges of the values
    in its jaxpr; params and ``x`` themselves are not counted."""
    return _peak_bytes(jax.make_jaxpr(apply_fn)(params, x).jaxpr)
