"""The paper's one-pass diagonal second derivative, for any JAX function.

A small interpreter over the jaxpr of ``apply_fn``: a forward pass that keeps every
primal value, then a backward pass that carries the *second-order cotangent* ``h``
(the running diagonal of the loss Hessian with respect to each value, Becker–LeCun
/ Optimal Brain Damage) from the outputs back to every input, with one rule per
class of primitive (docs/method.md §4.1 for the rules, §4.2 for this
interpreter):

- **bilinear** (``dot_general``, ``conv_general_dilated``): for each active operand,
  the transpose of the primitive with every *other* operand squared, applied to
  ``h``;
- **elementwise** (``add``, ``mul``, ``tanh``, ``max``, ``div``, ``select_n``, ...,
  and calls whose body is elementwise, such as ``jax.nn.relu`` or ``jax.nn.silu``):
  ``d**2 * h`` with ``d`` the local derivative from a JVP with a ones tangent,
  summed back over broadcast axes. Connected elementwise primitives whose
  intermediate values are used only by each other are fused into one region, and
  ``d`` is the derivative of the whole region, so an activation written inline
  (``x * sigmoid(x)``, Flax's tanh-approximate GELU) gets its exact ``f'(x)**2``
  rather than a sum of squared paths;
- **structural**, whose Jacobian entries are 0 or 1 (``reshape``, ``transpose``,
  ``broadcast_in_dim``, ``reduce_sum``, ``pad``, ``gather``, ``reduce_window_max``
  (max-pool), ``reduce_window_sum``, ...): the plain VJP;
- **calls** (``jit``/``pjit``, ``closed_call``, ``custom_jvp_call``,
  ``custom_vjp_call``, ``remat``): recurse into the inner jaxpr;
- **control flow** is rewritten first (:func:`unroll_control_flow`): a loop
  with a static trip count (``scan``, so ``lax.scan``, a ``fori_loop`` with
  static bounds, Flax's ``nn.RNN``) is unrolled, so its iterations are plain
  primitives; a ``cond`` (``lax.cond``, ``lax.switch``) runs every branch and
  selects the taken branch's outputs (``select_n`` on its index), so the
  second-order cotangents reach the taken branch alone;
- ``stop_gradient`` passes nothing. Anything else that lies on a path from the
  params to the outputs raises ``NotImplementedError`` naming the primitive
  (a ``while`` loop whose trip count is known only at run time among them).

Where a value fans out to several consumers whose paths re-merge through a
non-elementwise primitive (a residual add), the contributions are summed and the
cross term is dropped, exactly as Becker–LeCun and the authors' code do.

With ``q_scale="authors"`` the backward pass reproduces the authors' quantized
(Q) layers, which compute ``op(x * a_l, W_l / a_l)`` with ``a_l = max|W_l|`` and
multiply the second-order cotangent through ``x * a_l`` by ``a_l`` instead of
``a_l**2`` (docs/method.md §8): the forward pass tags every value derived
from exactly one crossbar param leaf through elementwise, structural and call
primitives (a reshape, a transpose, the straight-through quantizer ``w +
stop_gradient(q(w) - w)``), and at a bilinear primitive whose one operand carries
the tag of leaf ``l`` the ``h`` of the other (data-side) operand is divided by
``a_l``. The ``h`` of the weight operand itself is unchanged.

Only values that depend on a float input marked *active* (the params) carry ``h``;
the input data never does, so the first layer costs what it costs in a gradient.
Everything happens at trace time: the pass is jit-compilable and, compiled, costs
about one forward and one backward pass.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from uswim_jax._tree import abstract

#: Call-like primitives whose inner jaxpr is interpreted recursively.
CALL_PRIMITIVES = frozenset(
    {
        "pjit",
        "jit",
        "closed_call",
        "core_call",
        "custom_jvp_call",
        "custom_vjp_call",
        "custom_vjp_call_jaxpr",
        "remat",
        "remat2",
        "checkpoint",
    }
)
# custom_vjp functions cannot be differentiated forward, so they are never fused.
_NO_JVP_CALLS = frozenset({"custom_vjp_call", "custom_vjp_call_jaxpr"})

#: Elementwise primitives: the rule is d**2 * h with d from a ones-tangent JVP.
ELEMENTWISE_PRIMITIVES = frozenset(
    {
        "add",
        "add_any",
        "sub",
        "mul",
        "div",
        "neg",
        "max",
        "min",
        "abs",
        "sign",
        "floor",
        "ceil",
        "round",
        "exp",
        "exp2",
        "log",
        "log1p",
        "expm1",
        "tanh",
        "logistic",
        "sin",
        "cos",
        "tan",
        "asin",
        "acos",
        "atan",
        "atan2",
        "sinh",
        "cosh",
        "asinh",
        "acosh",
        "atanh",
        "sqrt",
        "rsqrt",
        "cbrt",
        "square",
        "integer_pow",
        "pow",
        "erf",
        "erfc",
        "erf_inv",
        "lgamma",
        "digamma",
        "rem",
        "clamp",
        "select_n",
        "convert_element_type",
        "copy",
        "copy_p",
        "reduce_precision",
        "optimization_barrier",
    }
)

#: Bilinear primitives: transpose with the other operand squared.
BILINEAR_PRIMITIVES = frozenset({"dot_general", "conv_general_dilated"})

#: Primitives with 0/1 Jacobian entries: the plain VJP.
STRUCTURAL_PRIMITIVES = frozenset(
    {
        "reshape",
        "transpose",
        "broadcast_in_dim",
        "squeeze",
        "expand_dims",
        "reduce_sum",
        "reduce_max",
        "reduce_min",
        "slice",
        "dynamic_slice",
        "dynamic_update_slice",
        "pad",
        "concatenate",
        "stack",
        "split",
        "gather",
        "scatter",
        "scatter-add",
        "scatter_add",
        "reduce_window_sum",
        "reduce_window_max",
        "reduce_window_min",
        "rev",
        "cumsum",
    }
)

#: Primitives through which no second-order information flows.
BLOCKING_PRIMITIVES = frozenset({"stop_gradient"})

#: Control flow rewritten before the passes (:func:`unroll_control_flow`): a
#: loop with a static trip count becomes one copy of its body per iteration,
#: so the rules see plain primitives and the carry's ``h`` flows back through
#: the iterations like any other value; a ``cond`` becomes its branches and a
#: ``select_n`` of their outputs.
REWRITTEN_PRIMITIVES = frozenset({"scan", "cond"})

SUPPORTED_PRIMITIVES = (
    CALL_PRIMITIVES
    | REWRITTEN_PRIMITIVES
    | ELEMENTWISE_PRIMITIVES
    | BILINEAR_PRIMITIVES
    | STRUCTURAL_PRIMITIVES
    | BLOCKING_PRIMITIVES
)

# Numerators after which a division by a constant is an average pool, for the
# authors' ``h/k`` quirk (docs/method.md §8).
_POOL_SUMS = frozenset({"reduce_window_sum", "reduce_sum"})


def _is_float(aval: Any) -> bool:
    dtype = getattr(aval, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


def _is_var(v: Any) -> bool:
    return not isinstance(v, (jcore.Literal, jcore.DropVar))


def _read(env: dict, v: Any) -> Any:
    return v.val if isinstance(v, jcore.Literal) else env[v]


def _active(active: set, v: Any) -> bool:
    return _is_var(v) and v in active


def _inner(eqn: Any) -> tuple[Any, Sequence[Any]]:
    params = eqn.params
    inner = params.get("jaxpr", params.get("call_jaxpr"))
    if isinstance(inner, jcore.ClosedJaxpr):
        return inner.jaxpr, inner.consts
    return inner, ()


def _bind(eqn: Any, invals: Sequence[Any]) -> list[Any]:
    params = eqn.primitive.get_bind_params(eqn.params)
    with eqn.ctx.manager:
        ans = eqn.primitive.bind(*invals, **params)
    return list(ans) if eqn.primitive.multiple_results else [ans]


def _unbroadcast(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sums ``x`` back to ``shape`` over the axes an elementwise op broadcast."""
    if x.shape == tuple(shape):
        return x
    if len(shape) == 0:
        return jnp.sum(x)
    axes = tuple(
        i
        for i, (a, b) in enumerate(zip(x.shape, shape, strict=True))
        if b == 1 and a != 1
    )
    return jnp.sum(x, axis=axes, keepdims=True).reshape(shape)


def _elementwise_body(jaxpr: Any, in_active: Sequence[bool]) -> bool:
    """True if every primitive of ``jaxpr`` touching an active input is
    elementwise (recursively through calls)."""
    active = {v for v, a in zip(jaxpr.invars, in_active, strict=True) if a}
    for eqn in jaxpr.eqns:
        acts = [_active(active, v) for v in eqn.invars]
        if not any(acts):
            continue
        name = eqn.primitive.name
        if name in BLOCKING_PRIMITIVES:
            continue
        if name in ELEMENTWISE_PRIMITIVES:
            pass
        elif name in CALL_PRIMITIVES and name not in _NO_JVP_CALLS:
            if not _elementwise_body(_inner(eqn)[0], acts):
                return False
        else:
            return False
        active.update(v for v in eqn.outvars if _is_var(v) and _is_float(v.aval))
    return True


class _Record:
    """What the forward pass keeps for one jaxpr: values, activity, sub-records."""

    def __init__(self, jaxpr: Any) -> None:
        self.jaxpr = jaxpr
        self.env: dict = {}
        self.active: set = set()
        self.subs: dict[int, _Record] = {}
        self.fused_calls: set[int] = set()
        # Value -> the crossbar leaf tag it derives from (only tagged values).
        self.source: dict = {}


def _common_source(rec: "_Record", invars: Sequence[Any]) -> Any:
    """The tag shared by every active operand, or ``None`` (no active operand,
    an untagged one, or two different tags)."""
    tags = {rec.source.get(v) for v in invars if _active(rec.active, v)}
    return tags.pop() if len(tags) == 1 else None


def forward(
    jaxpr: Any,
    consts: Sequence[Any],
    args: Sequence[Any],
    in_active: Sequence[bool],
    in_source: Sequence[Any] | None = None,
) -> _Record:
    """Evaluates ``jaxpr`` keeping every value and which ones depend on an active
    input.

    ``in_source`` optionally tags inputs (a hashable tag per input, ``None`` for
    untagged): a tag follows the values derived from that input alone through
    elementwise, structural and call primitives (see ``q_scale`` in
    :func:`backward`)."""
    rec = _Record(jaxpr)
    env, active = rec.env, rec.active
    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = c
    if in_source is None:
        in_source = [None] * len(jaxpr.invars)
    for v, a, act, tag in zip(jaxpr.invars, args, in_active, in_source, strict=True):
        env[v] = a
        if act and _is_float(v.aval):
            active.add(v)
            if tag is not None:
                rec.source[v] = tag
    for i, eqn in enumerate(jaxpr.eqns):
        invals = [_read(env, v) for v in eqn.invars]
        acts = [_active(active, v) for v in eqn.invars]
        name = eqn.primitive.name
        if any(acts) and name in CALL_PRIMITIVES:
            if name not in _NO_JVP_CALLS and _elementwise_body(_inner(eqn)[0], acts):
                rec.fused_calls.add(i)
                outs = _bind(eqn, invals)
                out_act = [True] * len(eqn.outvars)
                out_tag = [_common_source(rec, eqn.invars)] * len(eqn.outvars)
            else:
                inner, inner_consts = _inner(eqn)
                if len(inner.invars) != len(invals):
                    raise NotImplementedError(
                        f"obd_diagonal: cannot match the operands of primitive "
                        f"'{name}' to its inner jaxpr"
                    )
                in_tags = [
                    rec.source.get(v) if a else None
                    for v, a in zip(eqn.invars, acts, strict=True)
                ]
                sub = forward(inner, inner_consts, invals, acts, in_tags)
                rec.subs[i] = sub
                outs = [_read(sub.env, v) for v in inner.outvars]
                out_act = [_active(sub.active, v) for v in inner.outvars]
                out_tag = [
                    sub.source.get(v) if _is_var(v) else None for v in inner.outvars
                ]
        else:
            outs = _bind(eqn, invals)
            live = any(acts) and name not in BLOCKING_PRIMITIVES
            out_act = [live] * len(eqn.outvars)
            keeps_tag = name in ELEMENTWISE_PRIMITIVES or name in STRUCTURAL_PRIMITIVES
            tag = _common_source(rec, eqn.invars) if live and keeps_tag else None
            out_tag = [tag] * len(eqn.outvars)
        for v, o, a, t in zip(eqn.outvars, outs, out_act, out_tag, strict=True):
            if isinstance(v, jcore.DropVar):
                continue
            env[v] = o
            if a and _is_float(v.aval):
                active.add(v)
                if t is not None:
                    rec.source[v] = t
    return rec


# ------------------------------------------------------------------ unrolling

#: Calls inlined when their body holds such control flow (custom derivatives are not:
#: their rule is theirs).
_INLINED_CALLS = CALL_PRIMITIVES - {
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
}


def _holds_control_flow(jaxpr: Any) -> bool:
    """Whether ``jaxpr`` or a call inside it that would be inlined holds a
    primitive of :data:`REWRITTEN_PRIMITIVES`."""
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in REWRITTEN_PRIMITIVES:
            return True
        if name in _INLINED_CALLS and _holds_control_flow(_inner(eqn)[0]):
            return True
    return False


def unroll_control_flow(closed: jcore.ClosedJaxpr) -> jcore.ClosedJaxpr:
    """``closed`` with every ``scan`` (``lax.scan``, a ``fori_loop`` with static
    bounds, Flax's ``nn.RNN``) unrolled into ``length`` copies of its body,
    every ``cond`` (``lax.cond``, ``lax.switch``) replaced by all of its
    branches and a ``select_n`` of their outputs on its index, and the calls
    around them inlined; ``closed`` itself when it holds neither.

    The rewritten program computes the same values with the same primitives, so
    the one-pass diagonal of a model written with a scan equals that of the
    same model written with a Python loop, and that of a model with a ``cond``
    equals that of the same model with the taken branch written in its place.
    Tracing grows with the trip count, and every branch runs. A branch that is
    not taken still carries a zero cotangent back: where its values are
    infinite or NaN (``log`` of a negative input, say) the zero times them is
    NaN, as in ``jax.grad`` of a ``jnp.where``.
    """
    if not _holds_control_flow(closed.jaxpr):
        return closed
    return jax.make_jaxpr(
        lambda *args: _eval_unrolled(closed.jaxpr, closed.consts, args)
    )(*[abstract(v.aval) for v in closed.jaxpr.invars])


def _eval_unrolled(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any]) -> list:
    env: dict = {}
    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = c
    for v, a in zip(jaxpr.invars, args, strict=True):
        env[v] = a
    for eqn in jaxpr.eqns:
        invals = [_read(env, v) for v in eqn.invars]
        name = eqn.primitive.name
        if name == "scan":
            outs = _scan_unrolled(eqn, invals)
        elif name == "cond":
            outs = _cond_selected(eqn, invals)
        elif name in _INLINED_CALLS and _holds_control_flow(_inner(eqn)[0]):
            outs = _eval_unrolled(*_inner(eqn), invals)
        else:
            outs = _bind(eqn, invals)
        for v, o in zip(eqn.outvars, outs, strict=True):
            if not isinstance(v, jcore.DropVar):
                env[v] = o
    return [_read(env, v) for v in jaxpr.outvars]


def _scan_unrolled(eqn: Any, invals: Sequence[Any]) -> list:
    """One ``scan`` as a Python loop over its body: the carry threaded through,
    the per-iteration outputs stacked on a new leading axis."""
    p = eqn.params
    body, nc, nk, n = p["jaxpr"], p["num_consts"], p["num_carry"], p["length"]
    consts, carry, xs = invals[:nc], list(invals[nc : nc + nk]), invals[nc + nk :]
    ys: list = [None] * n
    for i in reversed(range(n)) if p["reverse"] else range(n):
        step = [jax.lax.index_in_dim(x, i, keepdims=False) for x in xs]
        out = _eval_unrolled(body.jaxpr, body.consts, [*consts, *carry, *step])
        carry, ys[i] = out[:nk], out[nk:]
    stacked = [
        jnp.stack([y[j] for y in ys])
        if n
        else jnp.zeros((0, *v.aval.shape), v.aval.dtype)
        for j, v in enumerate(body.jaxpr.outvars[nk:])
    ]
    return [*carry, *stacked]


def _cond_selected(eqn: Any, invals: Sequence[Any]) -> list:
    """One ``cond`` as every branch run on its operands and the outputs of the
    one its index picks selected (``select_n``)."""
    index, ops = invals[0], invals[1:]
    outs = [_eval_unrolled(b.jaxpr, b.consts, ops) for b in eqn.params["branches"]]
    if len(outs) == 1:
        return outs[0]
    return [jax.lax.select_n(index, *[o[j] for o in outs]) for j in range(len(outs[0]))]


# --------------------------------------------------------------------------- plan


def _plan(
    rec: _Record, fuse: bool, avg_pool: str, rowwise: bool = True
) -> list[tuple[str, list[int]]]:
    """Groups the active equations into units and orders them for the backward
    pass (reverse topological order). A unit is ``(kind, [eqn indices])``; a
    row-wise unit's kind is ``("rowwise", axes)`` (see :func:`_rowwise_groups`)."""
    jaxpr, active = rec.jaxpr, rec.active
    eqns = jaxpr.eqns
    kinds: dict[int, str] = {}
    producer: dict[Any, int] = {}
    consumers: dict[Any, list[int]] = {}
    for i, eqn in enumerate(eqns):
        ins = [v for v in eqn.invars if _active(active, v)]
        outs = [v for v in eqn.outvars if _active(active, v)]
        if not ins or not outs:
            continue
        name = eqn.primitive.name
        if i in rec.subs:
            kind = "call"
        elif i in rec.fused_calls:
            kind = "ew"
        elif name in ELEMENTWISE_PRIMITIVES:
            kind = "ew"
            if (
                avg_pool == "authors"
                and name == "div"
                and _active(active, eqn.invars[0])
                and not _active(active, eqn.invars[1])
                and eqn.invars[0] in producer
                and eqns[producer[eqn.invars[0]]].primitive.name in _POOL_SUMS
            ):
                kind = "avgdiv"
        elif name in BILINEAR_PRIMITIVES:
            kind = "bilinear"
        elif name in STRUCTURAL_PRIMITIVES:
            kind = "structural"
        else:
            kind = "unknown"
        kinds[i] = kind
        for v in outs:
            producer[v] = i
        for v in ins:
            consumers.setdefault(v, []).append(i)

    outvars = {id(v) for v in jaxpr.outvars if _is_var(v)}

    # Union-find over elementwise equations joined by a value used only by
    # elementwise equations.
    parent = {i: i for i in kinds}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if fuse:
        for v, p in producer.items():
            if kinds[p] != "ew" or id(v) in outvars:
                continue
            users = consumers.get(v, [])
            if users and all(kinds[u] == "ew" for u in users):
                for u in users:
                    parent[find(u)] = find(p)

    def order(groups: dict[int, list[int]]) -> list[int] | None:
        unit_of = {i: r for r, members in groups.items() for i in members}
        deps: dict[int, set[int]] = {r: set() for r in groups}
        for r, members in groups.items():
            for i in members:
                for v in eqns[i].invars:
                    if _active(active, v) and v in producer:
                        q = unit_of[producer[v]]
                        if q != r:
                            deps[r].add(q)
        done: list[int] = []
        placed: set[int] = set()
        pending = sorted(groups, key=lambda r: max(groups[r]))
        while pending:
            progress = [r for r in pending if deps[r] <= placed]
            if not progress:
                return None
            for r in progress:
                placed.add(r)
                done.append(r)
            pending = [r for r in pending if r not in placed]
        return done

    groups: dict[int, list[int]] = {}
    for i in kinds:
        groups.setdefault(find(i), []).append(i)
    row_axes: dict[int, tuple[int, ...]] = {}
    if fuse and rowwise:
        rw = _rowwise_groups(rec, kinds, producer, consumers, outvars)
        if rw:
            merged = _absorb(groups, rw)
            if order(merged) is not None:
                groups = merged
                row_axes = {r: axes for r, (members, axes) in rw.items()}
    topo = order(groups)
    if topo is None:  # a fused region was not convex: fall back to single equations
        groups = {i: [i] for i in kinds}
        row_axes = {}
        topo = order(groups)
        assert topo is not None
    units = []
    for r in reversed(topo):
        members = sorted(groups[r])
        if r in row_axes:
            units.append((("rowwise", row_axes[r]), members))
            continue
        kind = "ew" if len(members) > 1 else kinds[members[0]]
        units.append((kind, members))
    return units


_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min"})


def _keepdims(eqn: Any) -> bool:
    """A ``broadcast_in_dim`` or ``reshape`` that only inserts size-1 axes (the
    ``keepdims`` of a reduction)."""
    name = eqn.primitive.name
    src, dst = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
    if name == "broadcast_in_dim":
        dims = eqn.params["broadcast_dimensions"]
        return all(src[i] == dst[d] for i, d in enumerate(dims)) and all(
            dst[d] == 1 for d in range(len(dst)) if d not in dims
        )
    if name == "reshape":
        return len(dst) > len(src) and [d for d in dst if d != 1] == [
            d for d in src if d != 1
        ]
    return False


def _rowwise_groups(
    rec: _Record, kinds: dict, producer: dict, consumers: dict, outvars: set
) -> dict[int, tuple[list[int], tuple[int, ...]]]:
    """Normalisation subgraphs (softmax, LayerNorm, RMS norm, ...): sets of
    elementwise equations, reductions over axes ``A`` and their ``keepdims``
    broadcasts in which a reduction's result is broadcast back over ``A`` and
    combined with full rows again. Returns ``{root: (members, A)}``.

    Candidates are joined through values used only by candidates (as the
    elementwise fusion); a reduction none of whose descendants in the group is
    full along ``A`` again (a pooling, ``jnp.mean`` before a head) is left out
    with its descendants; what remains is split into convex pieces by the
    number of outside equations between them (a residual add after an
    attention block starts a new piece); a piece is kept if its reductions all
    reduce the same axes of rows of one shape and every active value in it is
    a row (full or size 1 along ``A``) or a reduced row."""
    eqns, active = rec.jaxpr.eqns, rec.active
    cand = {
        i
        for i, k in kinds.items()
        if k in ("ew", "avgdiv")
        or (k == "structural" and eqns[i].primitive.name in _REDUCTIONS)
    }
    # keepdims broadcasts of computed values (a reshape of a param vector
    # stays outside: the piece then sees the param as a row)
    cand |= {
        i
        for i, k in kinds.items()
        if k == "structural"
        and _keepdims(eqns[i])
        and producer.get(eqns[i].invars[0]) in cand
    }
    if not any(eqns[i].primitive.name in _REDUCTIONS for i in cand):
        return {}

    def components(members: set) -> list[set]:
        parent = {i: i for i in members}

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for v, p in producer.items():
            if p not in members or id(v) in outvars:
                continue
            users = consumers.get(v, [])
            if users and all(u in members for u in users):
                for u in users:
                    parent[find(u)] = find(p)
        out: dict[int, set] = {}
        for i in members:
            out.setdefault(find(i), set()).add(i)
        return list(out.values())

    def desc(start: int, members: set) -> set:
        seen, stack = {start}, [start]
        while stack:
            i = stack.pop()
            for v in eqns[i].outvars:
                for u in consumers.get(v, []) if _is_var(v) else []:
                    if u in members and u not in seen:
                        seen.add(u)
                        stack.append(u)
        return seen

    groups: dict[int, tuple[list[int], tuple[int, ...]]] = {}
    for comp in components(cand):
        reds = [i for i in comp if eqns[i].primitive.name in _REDUCTIONS]
        if not reds:
            continue
        drop: set = set()
        for r in reds:
            shape = eqns[r].invars[0].aval.shape
            axes = tuple(eqns[r].params["axes"])
            d = desc(r, comp)
            full = any(
                _is_var(v)
                and v.aval.shape == shape
                and all(v.aval.shape[a] > 1 for a in axes)
                for i in d
                for v in eqns[i].outvars
            )
            if not full:
                drop |= d
        kept = comp - drop
        for piece in _levels(kept, eqns, active, producer):
            for sub in components(piece):
                info = _row_layout(sub, eqns, active)
                if info is not None:
                    groups[min(sub)] = (sorted(sub), info)
    return groups


def _levels(members: set, eqns: Any, active: set, producer: dict) -> list[set]:
    """Splits ``members`` by how many outside equations lie on the longest path
    into each member from another member; each level is convex."""
    level: dict[int, int] = {}
    reach: dict[int, int] = {}  # outside equation -> deepest member before it
    for i in range(len(eqns)):
        best, via = -1, -1
        for v in eqns[i].invars:
            if not (_active(active, v) and v in producer):
                continue
            p = producer[v]
            if p in level:
                best = max(best, level[p])
            elif p in reach:
                via = max(via, reach[p])
        if i in members:
            level[i] = max(best, via + 1, 0)
        elif best >= 0 or via >= 0:
            reach[i] = max(best, via)
    out: dict[int, set] = {}
    for i, lv in level.items():
        out.setdefault(lv, set()).add(i)
    return list(out.values())


def _row_layout(members: set, eqns: Any, active: set) -> tuple[int, ...] | None:
    """The reduced axes ``A`` of a normalisation piece, or ``None`` if it is not
    one (no reduction, reductions over different axes or rows, or an active
    value that is neither a row nor a reduced row)."""
    reds = [i for i in members if eqns[i].primitive.name in _REDUCTIONS]
    layouts = {
        (tuple(eqns[i].params["axes"]), tuple(eqns[i].invars[0].aval.shape))
        for i in reds
    }
    if len(layouts) != 1:
        return None
    ((axes, shape),) = layouts
    rows = [d for a, d in enumerate(shape) if a not in axes]
    for i in members:
        for v in (*eqns[i].invars, *eqns[i].outvars):
            if not _active(active, v):
                continue
            s = v.aval.shape
            if len(s) == len(shape):
                along = {s[a] for a in axes}
                if not (along <= {1} or all(s[a] == shape[a] for a in axes)):
                    return None
                if any(s[a] not in (1, shape[a]) for a in range(len(s))):
                    return None
            elif list(s) != rows:
                return None
    if not any(
        _is_var(v) and v.aval.shape == shape
        for i in members
        if eqns[i].primitive.name not in _REDUCTIONS
        for v in eqns[i].outvars
    ):
        return None
    return axes


def _absorb(groups: dict, rw: dict) -> dict:
    """``groups`` with every group that meets a row-wise piece merged into it."""
    owner = {i: r for r, (members, _) in rw.items() for i in members}
    merged: dict[int, list[int]] = {r: list(m) for r, (m, _) in rw.items()}
    for g, members in groups.items():
        hit = {owner[i] for i in members if i in owner}
        if not hit:
            merged[g] = list(members)
            continue
        r = min(hit)
        for other in hit - {r}:  # a group bridging two pieces joins them
            merged[r].extend(merged.pop(other))
            for i in rw[other][0]:
                owner[i] = r
        merged[r].extend(i for i in members if i not in owner)
    return {r: sorted(set(m)) for r, m in merged.items()}


# ----------------------------------------------------------------------- backward


def backward(
    rec: _Record,
    h_out: Sequence[jax.Array | None],
    *,
    fuse: bool = True,
    avg_pool: str = "exact",
    q_scales: Sequence[Any] | None = None,
    rowwise: bool = True,
) -> list[jax.Array | None]:
    """Carries the second-order cotangents ``h_out`` of ``rec.jaxpr``'s outputs
    back to its inputs (``None`` where nothing flows).

    ``q_scales``: the authors' Q-layer quirk. ``q_scales[t]`` is ``a = max|W|``
    of the input tagged ``t`` in :func:`forward`; at a bilinear primitive with
    one operand tagged ``t`` the ``h`` of the other, untagged operand is divided
    by ``a``. ``None``: the exact rule."""
    jaxpr, env, active = rec.jaxpr, rec.env, rec.active
    h: dict = {}

    def acc(v: Any, val: jax.Array | None) -> None:
        if val is None or not _active(active, v):
            return
        val = val.astype(v.aval.dtype) if val.dtype != v.aval.dtype else val
        h[v] = h[v] + val if v in h else val

    for v, ho in zip(jaxpr.outvars, h_out, strict=True):
        acc(v, ho)

    for kind, members in _plan(rec, fuse, avg_pool, rowwise):
        if isinstance(kind, tuple):
            _walk_region(
                rec, members, h, acc, functools.partial(_rowwise_rule, kind[1])
            )
            continue
        if kind == "ew":
            _walk_region(rec, members, h, acc, _region_rule)
            continue
        i = members[0]
        eqn = jaxpr.eqns[i]
        houts = [h.get(v) if _is_var(v) else None for v in eqn.outvars]
        if all(x is None for x in houts):
            continue
        name = eqn.primitive.name
        if kind == "call":
            hin = backward(
                rec.subs[i],
                houts,
                fuse=fuse,
                avg_pool=avg_pool,
                q_scales=q_scales,
                rowwise=rowwise,
            )
            for v, x in zip(eqn.invars, hin, strict=True):
                acc(v, x)
        elif kind == "bilinear":
            _bilinear_rule(rec, eqn, houts[0], acc, q_scales)
        elif kind == "structural":
            _structural_rule(env, active, eqn, houts, acc)
        elif kind == "avgdiv":
            num, den = (_read(env, v) for v in eqn.invars)
            d = 1.0 / den if not hasattr(den, "dtype") else jnp.reciprocal(den)
            d = jnp.abs(jnp.asarray(d, dtype=houts[0].dtype))
            acc(eqn.invars[0], _unbroadcast(houts[0] * d, np.shape(num)))
        else:
            raise NotImplementedError(
                f"obd_diagonal: no second-order rule for primitive '{name}' "
                f"(supported: bilinear, elementwise, structural and call "
                f"primitives, scan, which is unrolled, and cond; a while loop "
                f"is not supported: unroll it or move it off the path from "
                f"params to logits, or take a diagonal by autodiff, "
                f"ggn_diagonal or hutchinson_diagonal)"
            )
    return [h.get(v) if _is_var(v) else None for v in jaxpr.invars]


def _bilinear_rule(
    rec: _Record, eqn: Any, hout: Any, acc: Callable, q_scales: Sequence[Any] | None
) -> None:
    env, active = rec.env, rec.active
    vals = [_read(env, v) for v in eqn.invars]
    tags = [rec.source.get(v) if _is_var(v) else None for v in eqn.invars]
    for k, v in enumerate(eqn.invars):
        if not _active(active, v):
            continue
        squared = [x * x for x in vals]

        def lin(u, k=k, squared=squared):
            args = list(squared)
            args[k] = u
            return _bind(eqn, args)[0]

        primal = jax.ShapeDtypeStruct(np.shape(vals[k]), v.aval.dtype)
        (ct,) = jax.linear_transpose(lin, primal)(hout)
        if q_scales is not None and tags[k] is None:
            # The authors' Q layer: h through x * a picks up a, not a**2.
            other = [t for j, t in enumerate(tags) if j != k and t is not None]
            if len(other) == 1:
                ct = ct / jnp.asarray(q_scales[other[0]], dtype=ct.dtype)
        acc(v, ct)


def _structural_rule(
    env: dict, active: set, eqn: Any, houts: list, acc: Callable
) -> None:
    vals = [_read(env, v) for v in eqn.invars]
    idx = [k for k, v in enumerate(eqn.invars) if _active(active, v)]

    def f(*us):
        args = list(vals)
        for k, u in zip(idx, us, strict=True):
            args[k] = u
        return _bind(eqn, args)

    outs, vjp = jax.vjp(f, *[vals[k] for k in idx])
    cts = []
    for o, ho in zip(outs, houts, strict=True):
        if not _is_float(o):
            cts.append(np.zeros(np.shape(o), jax.dtypes.float0))
        else:
            cts.append(jnp.zeros_like(o) if ho is None else ho)
    for k, ct in zip(idx, vjp(cts), strict=True):
        acc(eqn.invars[k], ct)


class _Unit(NamedTuple):
    """A fused unit of the plan as :func:`_walk_region` hands it to a rule."""

    rec: _Record  # the forward record
    members: list[int]  # the unit's equations, in order
    inputs: list  # active values read and not produced, in order of first use
    houts: list  # h of the outputs (the produced values that carry h)
    region: Callable  # region(j, u): the outputs with input j replaced by u


def _walk_region(
    rec: _Record, members: list[int], h: dict, acc: Callable, rule: Callable
) -> None:
    """Walks the fused unit ``members`` of the plan and, when it has active
    inputs and outputs carrying ``h``, calls ``rule(unit, acc)`` with the
    :class:`_Unit`: its inputs, the outputs' ``h`` and ``region(j, u)``, the
    outputs recomputed with input ``j`` replaced by ``u`` (every other value
    read from the forward record), the function a rule differentiates."""
    env, active, eqns = rec.env, rec.active, rec.jaxpr.eqns
    produced: list = []
    produced_ids: set[int] = set()
    for i in members:
        for v in eqns[i].outvars:
            if _is_var(v):
                produced.append(v)
                produced_ids.add(id(v))
    inputs: list = []
    seen: set[int] = set()
    for i in members:
        for v in eqns[i].invars:
            if _active(active, v) and id(v) not in produced_ids and id(v) not in seen:
                seen.add(id(v))
                inputs.append(v)
    outputs = [v for v in produced if v in h]
    if not outputs or not inputs:
        return
    houts = [h[v] for v in outputs]

    def region(j: int, u: jax.Array) -> list[jax.Array]:
        local = {id(inputs[j]): u}
        for i in members:
            eqn = eqns[i]
            vals = [
                local[id(v)] if _is_var(v) and id(v) in local else _read(env, v)
                for v in eqn.invars
            ]
            for v, o in zip(eqn.outvars, _bind(eqn, vals), strict=True):
                if _is_var(v):
                    local[id(v)] = o
        return [local[id(v)] for v in outputs]

    rule(_Unit(rec, members, inputs, houts, region), acc)


def _region_rule(unit: _Unit, acc: Callable) -> None:
    """Fused elementwise region (a rule of :func:`_walk_region`): for each
    active input u and each output o carrying h,
    ``h_u += unbroadcast((do/du)**2 * h_o)``."""
    env, inputs, houts, region = unit.rec.env, unit.inputs, unit.houts, unit.region
    for j, u in enumerate(inputs):
        x = env[u]
        _, tangents = jax.jvp(lambda t, j=j: region(j, t), (x,), (jnp.ones_like(x),))
        total = None
        for d, ho in zip(tangents, houts, strict=True):
            term = _unbroadcast(d * d * ho, np.shape(x))
            total = term if total is None else total + term
        acc(u, total)


def _rowwise_rule(axes: tuple[int, ...], unit: _Unit, acc: Callable) -> None:
    """Row-wise region (a normalisation over ``axes``; with ``axes`` bound, a
    rule of :func:`_walk_region`): for each active input
    ``u`` and each output ``o`` carrying ``h``,
    ``h_u[r, k] += sum_j (do[r, j] / du[r, k])**2 * h_o[r, j]``, the square of
    the exact per-row Jacobian; rows (the other axes) do not interact. The
    Jacobian columns come from one JVP per position ``k`` along ``axes`` (a
    one-hot tangent along ``axes``, the same in every row), vmapped; an input
    that is size 1 along ``axes`` (or a reduced row) gets a ones tangent."""
    env, eqns = unit.rec.env, unit.rec.jaxpr.eqns
    members, inputs, houts, region = unit.members, unit.inputs, unit.houts, unit.region
    full = next(
        eqns[i].invars[0].aval.shape
        for i in members
        if eqns[i].primitive.name in _REDUCTIONS
    )
    ndim = len(full)
    sizes = tuple(full[a] for a in axes)
    width = int(np.prod(sizes))

    def keep_shape(x: jax.Array) -> jax.Array:
        """``x`` (one output's ``d**2 h``) summed over ``axes`` with ``keepdims``
        (a reduced row gets its axes back)."""
        if x.ndim != ndim:
            return jnp.expand_dims(x, axes)
        return jnp.sum(x, axis=axes, keepdims=True)

    def column(j: int, t: jax.Array) -> jax.Array:
        """``sum_o sum_j d**2 h_o`` over ``axes`` for tangent ``t`` of input j."""
        x = env[inputs[j]]
        _, tangents = jax.jvp(lambda u: region(j, u), (x,), (t,))
        total = None
        for d, ho in zip(tangents, houts, strict=True):
            term = keep_shape(d * d * ho)
            total = term if total is None else total + term
        return total

    for j, u in enumerate(inputs):
        x = env[u]
        shape = np.shape(x)
        if len(shape) == ndim and all(shape[a] == full[a] for a in axes) and width > 1:
            eye = jnp.eye(width, dtype=x.dtype).reshape((width, *sizes))
            # one-hot tangents along axes, broadcast over the row axes of u
            rows = [a for a in range(ndim) if a not in axes]
            t = jnp.expand_dims(eye, tuple(1 + a for a in rows))
            t = jnp.broadcast_to(t, (width, *shape))
            cols = jax.vmap(lambda tk, j=j: column(j, tk))(t)  # (width, keep...)
            # cols[k, r, 1...] -> out[r, k]: move the width axis into axes
            cols = jnp.squeeze(cols, axis=tuple(1 + a for a in axes))
            cols = cols.reshape((*sizes, *cols.shape[1:]))
            out = jnp.moveaxis(cols, tuple(range(len(axes))), axes)
        else:
            out = column(j, jnp.ones_like(x))
            if len(shape) != ndim:
                out = jnp.squeeze(out, axis=axes)
        acc(u, _unbroadcast(out, shape))
