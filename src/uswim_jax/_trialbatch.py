"""Trial batching: one forward pass of any JAX model for many trials' params.

:func:`trial_batched` turns ``apply_fn(params, x)`` into a pair ``(prepare,
apply)`` with ``apply(prepare(stacked), x)[t] == apply_fn(params_t, x)``, where
``stacked`` holds the params of ``T`` trials on a leading axis (only the leaves
flagged ``batched``; the others are shared by every trial). It traces
``apply_fn`` once (``jax.make_jaxpr``) and interprets the jaxpr, tracking which
values carry the trial axis:

- a step none of whose inputs carries the trial axis runs once, shared by every
  trial (the first layer's input patches, a layer whose kernel is off the
  crossbar, normalisation constants);
- ``prepare`` runs, once per trial, every step that reads the params alone and
  makes nothing larger than its largest input (reshapes, transposes and
  gathers of kernels, quantizers; ``split_params_only``'s rule), and puts each
  convolution's per-trial kernel into matrix form (along ``"per_trial"``: cuts
  it out of the stack, one array per trial); ``apply`` runs the rest, so a
  loop over image batches does that work once;
- ``conv_general_dilated`` with a per-trial kernel becomes im2col: the patches
  (built once when the input is shared, per trial otherwise; written in place
  with ``dynamic_update_slice``) times the stacked kernels, as one matmul
  ``(T, O, K) @ (K, P*N)`` for a shared input and a batched ``dot_general``
  otherwise. Each window position's patch rows are one contiguous slice of the
  padded input flattened (a strided axis is first split into its phases,
  ``x[r::s]``, so a strided conv, ResNet-18's downsampling 3x3 among them,
  takes contiguous slices too); a 1x1 conv's patches are its input. Any rank,
  stride, padding, lhs/rhs dilation, ``feature_group_count`` and
  ``dimension_numbers``. The patches and the output keep the images on the
  minor axis (``(C, spatial..., N)``, the "CHWN trunk"), and the value keeps
  that physical layout through elementwise steps, pooling (``reduce_window_*``),
  reductions, transposes, reshapes that merge axes (a flatten before a dense
  layer) or add and drop size-1 axes, ``squeeze`` and ``broadcast_in_dim``
  (the size-1 axes of a per-sample model ``vmap``-ed over the images, as
  equinox models are) and ``dot_general`` (a dense layer: its kernel's rows
  gathered to the trunk's order once per trial in ``prepare``; the output
  ``(T, features, N)``), until a step needs the logical layout;
- call primitives (``jit``/``pjit``, ``closed_call``, ``custom_jvp_call``,
  ``custom_vjp_call``, ``remat``) are interpreted recursively (their primal
  bodies: this is a forward pass);
- every other step with a per-trial input runs under ``jax.vmap``'s batching rule
  (``dot_general`` gets the trial axis as a batch dimension, or folded into the
  free dimensions when one side is shared); so does a convolution the rewrite
  does not cover (``batch_group_count > 1``). Each primitive that takes the
  ``vmap`` route is named once per trace in a ``logging.debug`` line.

Whether a convolution with a per-trial kernel takes the rewrite (``"im2col"``),
one XLA convolution per trial (``"per_trial"``) or ``vmap``'s rule (``"xla"``)
is the :func:`conv_paths` policy. Along ``"per_trial"`` the output is held as
one array per trial, and every later step runs once per trial on it (the
steps of a loop over trials) until a ``dot_general`` stacks the trials (a
dense layer reads the stacked kernels as they are): each trial's convolution
then meets its ReLU and pooling, which XLA's CPU backend fuses with it. The
policy is a rule on CPU (one path per model), on accelerators the whole
forward pass timed under each candidate (the rule, each path, every layer
shape's fastest path) and the fastest taken; :func:`conv_path_log` records the
paths taken.

The rewritten convolutions and the dense layers on the trunk layout compute
the same sums in another order (float rounding differs at the last bits);
everything else is the same primitives on the same values.
"""

import contextlib
import copy
import hashlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

from uswim_jax import _measure_cache
from uswim_jax._distributed import from_writer
from uswim_jax._jaxpr import eqn_macs, var_bytes
from uswim_jax._obd import CALL_PRIMITIVES, ELEMENTWISE_PRIMITIVES, _bind, _inner
from uswim_jax._tree import abstract

logger = logging.getLogger(__name__)

#: Elementwise primitives run in whatever physical layout their batched
#: operands share.
_ELEMENTWISE = (ELEMENTWISE_PRIMITIVES - {"optimization_barrier"}) | {
    "stop_gradient",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "and",
    "or",
    "not",
    "xor",
    "is_finite",
    "nextafter",
}
_REDUCE_WINDOW = frozenset(
    {"reduce_window_max", "reduce_window_min", "reduce_window_sum"}
)
_REDUCE = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod"})


class _V:
    """A value: the array, whether it carries the leading trial axis, and for a
    batched value its physical layout ``perm`` (physical axis ``1 + j`` holds
    logical axis ``perm[j]``; ``None``: the logical order) and ``rows``: the
    logical axes that are merges of several axes stored in another order
    (``((axis, sizes, order), ...)``: logical ``axis`` is the row-major merge
    of axes of ``sizes``, held physically in the merge of ``[sizes[i] for i in
    order]``; ``None``: none; see :meth:`TrialBatched._reshape`).

    A batched value may instead be held as ``parts``, one array per trial in
    its logical layout (``val`` is then ``None``): the output of one XLA
    convolution per trial and every step after it, so that each trial's
    convolution meets the steps that read it (XLA fuses a convolution with the
    elementwise steps and the pooling after it) and no stacked copy is made
    until a step needs one (:func:`_stacked`)."""

    __slots__ = ("val", "batched", "perm", "rows", "parts")

    def __init__(
        self,
        val: Any,
        batched: bool = False,
        perm: Any = None,
        rows: Any = None,
        parts: Any = None,
    ) -> None:
        self.val, self.batched = val, batched
        self.parts = None if parts is None else tuple(parts)
        self.perm = (
            None
            if perm is None or tuple(perm) == tuple(range(len(perm)))
            else tuple(perm)
        )
        self.rows = tuple(rows) if rows else None


# A pytree (its arrays the leaves), so that what ``prepare`` returns can be a
# jaxpr's input (:meth:`TrialBatched.apply_jaxpr`).
jax.tree_util.register_pytree_node(
    _V,
    lambda v: ((v.val, v.parts), (v.batched, v.perm, v.rows)),
    lambda aux, ch: _V(ch[0], aux[0], aux[1], aux[2], ch[1]),
)


def _rows_to(x: Any, j: int, sizes: Sequence[int], order: Sequence[int]) -> Any:
    """Axis ``j`` of ``x``, the row-major merge of axes of ``sizes``, rearranged
    to the merge of ``[sizes[i] for i in order]``."""
    shape = x.shape
    x = jnp.reshape(x, (*shape[:j], *sizes, *shape[j + 1 :]))
    x = jnp.transpose(
        x, (*range(j), *[j + i for i in order], *range(j + len(sizes), x.ndim))
    )
    return jnp.reshape(x, shape)


def _split(parts: Sequence[Any]) -> _V:
    """A batched value held as one array per trial (see :class:`_V`)."""
    return _V(None, True, parts=parts)


def _stacked(v: _V) -> _V:
    """``v`` with its trials on one leading axis (a value held as ``parts``
    stacked; any other returned as it is)."""
    return v if v.parts is None else _V(jnp.stack(v.parts), True)


def _unrow(v: _V) -> _V:
    """``v`` with every merged axis back in its logical row order (same
    ``perm``)."""
    if not v.rows:
        return v
    x = v.val
    perm = v.perm or tuple(range(x.ndim - 1))
    for axis, sizes, order in v.rows:
        # the inverse rearrangement: from the physical order back to row-major
        inv = [order.index(i) for i in range(len(sizes))]
        x = _rows_to(x, 1 + perm.index(axis), [sizes[i] for i in order], inv)
    return _V(x, True, v.perm)


def _logical(v: _V) -> Any:
    """The array in its logical layout (trial axis first when batched)."""
    v = _unrow(_stacked(v))
    if v.perm is None:
        return v.val
    return jnp.transpose(v.val, (0, *[1 + v.perm.index(i) for i in range(len(v.perm))]))


def _in_order(v: _V, order: Sequence[int]) -> Any:
    """The array with its (logical) axes in ``order``, the trial axis kept first."""
    if not v.batched:
        return (
            jnp.transpose(v.val, order)
            if tuple(order) != tuple(range(len(order)))
            else v.val
        )
    v = _unrow(_stacked(v))
    perm = v.perm or tuple(range(len(order)))
    axes = (0, *[1 + perm.index(o) for o in order])
    return v.val if axes == tuple(range(len(axes))) else jnp.transpose(v.val, axes)


def _literal(v: Any) -> _V:
    return _V(v.val)


class TrialBatched:
    """``apply_fn`` interpreted for a stack of trials (see the module docstring).

    Args:
        apply_fn: ``apply_fn(params, x) -> outputs``.
        params: one trial's params (arrays or ``jax.ShapeDtypeStruct``), fixing
            the shapes ``apply_fn`` is traced for.
        x: one input batch (array or ``jax.ShapeDtypeStruct``).
        batched: a pytree of bools like ``params`` (or ``None``: every leaf),
            True where the leaf carries a per-trial leading axis.
        conv_patch_rows: the rule's threshold (:attr:`_rule_path`;
            ``None``: im2col for every rewritable convolution).
        conv_path: ``"rule"``, ``"measure"`` or one of :data:`CONV_PATHS`
            (:func:`conv_paths`).
    """

    def __init__(
        self,
        apply_fn: Callable,
        params: Any,
        x: Any,
        batched: Any = None,
        conv_patch_rows: int | None = None,
        conv_path: str = "rule",
    ):
        if conv_path not in CONV_POLICIES[1:]:
            raise ValueError(
                f"conv_path must be one of {CONV_POLICIES[1:]}, got {conv_path!r}"
            )
        self.apply_fn = apply_fn
        if conv_path == VMAP:  # nothing is interpreted: no jaxpr to trace
            self.jaxpr, self.consts, self.out_tree = None, (), None
        else:
            closed, out = jax.make_jaxpr(apply_fn, return_shape=True)(params, x)
            self.jaxpr, self.consts = closed.jaxpr, closed.consts
            self.out_tree = jax.tree.structure(out)
        self.param_tree = jax.tree.structure(params)
        self.n_params = self.param_tree.num_leaves
        if batched is None:
            self.batched = [True] * self.n_params
        else:
            self.batched = [bool(b) for b in self.param_tree.flatten_up_to(batched)]
        self._logged: set = set()
        #: The rule's threshold: a model with a convolution whose patch matrix
        #: has more rows than this runs every convolution as one XLA
        #: convolution per trial (``None``: never; :attr:`_rule_path`).
        self.conv_patch_rows = conv_patch_rows
        #: The most patch rows of any convolution of the model (the rule's input).
        convs = () if self.jaxpr is None else _convs(self.jaxpr)
        self._most_patch_rows = max(map(_patch_rows, convs), default=0)
        #: How convolutions with a per-trial kernel run: ``"rule"``
        #: (:attr:`conv_patch_rows`), ``"layers"`` (each layer shape's fastest
        #: path), ``"measure"`` (the fastest of those policies and the fixed
        #: paths, timed on the whole forward pass) or one of
        #: :data:`CONV_PATHS` for all of them (:func:`conv_paths`).
        self.conv_path = conv_path
        #: The policy in effect (``"measure"``'s choice, made in :meth:`prepare`).
        self._active = None if conv_path == "measure" else conv_path
        #: ``"measure"``'s key for the program: its text's hash, its number of
        #: convolutions (made once, when first measured).
        self._model_key = None
        #: Whether the convolutions' paths go to :func:`conv_path_log` (off for
        #: traces that only estimate sizes).
        self.record = True
        #: Whether a timed choice is process 0's on every process (off while
        #: ``"measure"`` times its candidates: each process times its own, and
        #: one may read its choice from a file while another times).
        self.agree = True
        self._x_template = [abstract(a) for a in jax.tree.leaves(x)]
        #: ``dot_general`` key -> its laid-out operand's (side, perm, rows); see
        #: :meth:`_discover_layouts`
        self._dots: dict | None = None
        #: While :meth:`apply_jaxpr` traces ``apply``: the multiply-accumulates
        #: counted so far by :data:`MAC_KINDS` (``None`` otherwise).
        self._counting: dict | None = None

    # -- public --------------------------------------------------------------

    def prepare(self, stacked: Any) -> dict:
        """The params-only work for the trials in ``stacked`` (a pytree like
        ``params``, batched leaves with a leading trial axis). Opaque; pass it to
        :meth:`apply` within the same trace."""
        leaves = self.param_tree.flatten_up_to(stacked)
        ts = {
            int(np.shape(a)[0]) for a, b in zip(leaves, self.batched, strict=True) if b
        }
        if len(ts) > 1:
            raise ValueError(
                f"batched leaves disagree on the number of trials: {sorted(ts)}"
            )
        t = next(iter(ts)) if ts else None
        if self._active == VMAP:
            return {"num_trials": t, VMAP: stacked}
        if self.conv_path == "measure":
            active = _measure_model(self, leaves, t)
            if active != self._active:
                self._active, self._dots = active, None
        if self._dots is None:
            self._discover_layouts(leaves)
        cache: dict = {"num_trials": t}
        ins = [_V(a, b) for a, b in zip(leaves, self.batched, strict=True)]
        n_x = len(self.jaxpr.invars) - self.n_params
        self._run(self.jaxpr, self.consts, ins + [None] * n_x, "", cache, prepare=True)
        cache["params"] = ins
        return cache

    def _discover_layouts(self, leaves) -> None:
        """Records, per ``dot_general`` that ``_dot_laid_out`` computes, the
        layout of its laid-out operand (a trace of ``apply`` on abstract
        values), so that :meth:`prepare` can put the other operand, when it
        reads the params alone, in matrix form once per trial."""
        self._dots = {}
        structs = [abstract(a) for a in leaves]

        def run(leaves, xs):
            ins = [_V(a, b) for a, b in zip(leaves, self.batched, strict=True)]
            n_x = len(self.jaxpr.invars) - self.n_params
            cache: dict = {}
            self._run(self.jaxpr, self.consts, ins + [None] * n_x, "", cache, True)
            xs = [_V(a) for a in xs]
            return [
                o.val for o in self._run(self.jaxpr, self.consts, ins + xs, "", cache)
            ]

        jax.eval_shape(run, structs, self._x_template)

    def apply(self, prepared: dict, x: Any, num_trials: int | None = None) -> Any:
        """Outputs for every trial, each with a leading trial axis."""
        t = prepared["num_trials"] or num_trials
        if VMAP in prepared:
            return self._vmap_apply(prepared[VMAP], x, t)
        xs = [_V(a) for a in jax.tree.leaves(x)]
        outs = self._run(self.jaxpr, self.consts, prepared["params"] + xs, "", prepared)
        res = []
        for o in outs:
            if o.batched:
                res.append(_logical(o))
            elif t is None:
                raise ValueError("no batched params: pass num_trials")
            else:
                a = jnp.asarray(o.val)
                res.append(jnp.broadcast_to(a, (t, *a.shape)))
        return jax.tree.unflatten(self.out_tree, res)

    def __call__(self, stacked: Any, x: Any) -> Any:
        return self.apply(self.prepare(stacked), x)

    def apply_jaxpr(self, stacked: Any, x: Any) -> tuple[Any, dict]:
        """The jaxpr of :meth:`apply` alone, what ``prepare(stacked)`` returns
        among its inputs (arrays or ``jax.ShapeDtypeStruct``): the work per
        image batch, which ``chunk_size="auto"`` sizes; and its convolutions'
        and matmuls' multiply-accumulates by :data:`MAC_KINDS`, counted as
        the steps are traced."""
        trials = []

        def prepare(p):
            out = dict(self.prepare(p))
            trials.append(out.pop("num_trials"))
            return out

        def apply(p, x):
            return self.apply({**p, "num_trials": trials[0]}, x)

        prepared = jax.eval_shape(prepare, stacked)
        macs = self._counting = dict.fromkeys(MAC_KINDS, 0)
        try:
            jaxpr = jax.make_jaxpr(apply)(prepared, x).jaxpr
        finally:
            self._counting = None
        return jaxpr, macs

    def _vmap_apply(self, stacked: Any, x: Any, t: int | None) -> Any:
        """``"vmap"``: ``apply_fn`` under ``jax.vmap`` over the batched leaves
        (outputs that read none of them broadcast to the ``t`` trials)."""
        if not any(self.batched):
            if t is None:
                raise ValueError("no batched params: pass num_trials")
            out = self.apply_fn(stacked, x)
            return jax.tree.map(lambda a: jnp.broadcast_to(a, (t, *a.shape)), out)
        axes = self.param_tree.unflatten([0 if b else None for b in self.batched])
        return jax.vmap(self.apply_fn, in_axes=(axes, None))(stacked, x)

    # -- interpreter ---------------------------------------------------------

    def _run(self, jaxpr, consts, invals, path, cache, prepare=False) -> list:
        env: dict = {}
        for v, c in zip(jaxpr.constvars, consts, strict=True):
            env[v] = _V(c)
        for v, a in zip(jaxpr.invars, invals, strict=True):
            if a is not None:
                env[v] = a

        def read(v):
            return _literal(v) if isinstance(v, jcore.Literal) else env.get(v)

        for i, eqn in enumerate(jaxpr.eqns):
            key = f"{path}/{i}"
            ins = [read(v) for v in eqn.invars]
            name = eqn.primitive.name
            if not prepare and key in cache:
                outs = cache[key]
            elif name in CALL_PRIMITIVES:
                sub, sub_consts = _inner(eqn)
                if len(sub.invars) != len(ins):
                    outs = self._step_or_none(eqn, ins, key, cache, prepare)
                else:
                    outs = self._run(sub, sub_consts, ins, key, cache, prepare)
            else:
                outs = self._step_or_none(eqn, ins, key, cache, prepare)
            for v, o in zip(eqn.outvars, outs, strict=True):
                if o is not None and not isinstance(v, jcore.DropVar):
                    env[v] = o
        return [read(v) for v in jaxpr.outvars]

    def _step_or_none(self, eqn, ins, key, cache, prepare) -> list:
        if not prepare:
            return self._step(eqn, ins, key, cache)
        vars_in = [v for v in eqn.invars if not isinstance(v, jcore.Literal)]
        hoist = (
            vars_in
            and all(a is not None for a in ins)
            and not eqn.effects
            and sum(map(var_bytes, eqn.outvars)) <= max(map(var_bytes, vars_in))
        )
        if hoist:
            outs = self._step(eqn, ins, key, cache)
            cache[key] = outs
            return outs
        if eqn.primitive.name == "dot_general" and key in (self._dots or {}):
            side = self._dots[key][0]
            b = ins[1 - side]
            if b is not None:
                cache[key + "/operand"] = self._dot_operand(eqn, b, *self._dots[key])
        if (
            eqn.primitive.name == "conv_general_dilated"
            and ins[1] is not None
            and ins[1].batched
        ):
            path = self._fixed_path
            if path == "per_trial":
                # each trial's kernel cut out of the stack once per chunk, not
                # once per image batch
                k = _logical(ins[1])
                cache[key + "/kernel_parts"] = [k[i] for i in range(k.shape[0])]
            elif path in (None, "im2col") and self._conv_rewritable(eqn):
                cache[key + "/kernel"] = self._conv_kernel(eqn, ins[1])
        return [None] * len(eqn.outvars)

    def _fallback(self, eqn, ins, why: str = "") -> list:
        name = eqn.primitive.name
        if name not in self._logged:
            self._logged.add(name)
            logger.debug(
                "trial batching: %s runs under jax.vmap's batching rule%s",
                name,
                f" ({why})" if why else "",
            )
        return self._vmapped(eqn, ins)

    @staticmethod
    def _vmapped(eqn, ins) -> list:
        """``eqn`` under ``jax.vmap``'s batching rule, in the logical layout."""
        vals = [_logical(a) for a in ins]
        axes = [0 if a.batched else None for a in ins]
        outs = jax.vmap(lambda *a: _bind(eqn, a), in_axes=axes)(*vals)
        return [_V(o, True) for o in outs]

    def _step(self, eqn, ins, key, cache) -> list:
        if self._counting is not None:
            self._count_macs(eqn, ins)
        if not any(a.batched for a in ins):
            return [_V(o) for o in _bind(eqn, [a.val for a in ins])]
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            return self._conv_step(eqn, [_unrow(a) for a in ins], key, cache)
        if any(a.parts is not None for a in ins):
            if name != "dot_general":
                return self._each_trial(eqn, ins)
            # a dense layer reads its per-trial kernels from one stacked array
            # (one per trial would copy each out of it); its input is small
            ins = [_stacked(a) for a in ins]
        if name == "reshape" and len(ins) == 1 and (ins[0].perm or ins[0].rows):
            return [self._reshape(eqn, ins[0])]
        if name == "squeeze" and (ins[0].perm or ins[0].rows):
            return [self._squeeze(eqn, ins[0])]
        if (
            name == "broadcast_in_dim"
            and len(ins) == 1
            and (ins[0].perm or ins[0].rows)
        ):
            return [self._broadcast(eqn, ins[0])]
        if name == "dot_general":
            out = self._dot_laid_out(eqn, ins, key, cache)
            if out is not None:
                return [out]
        ins = [_unrow(a) for a in ins]
        if name in _ELEMENTWISE:
            return self._elementwise(eqn, ins)
        if name == "transpose" and len(ins) == 1:
            a = ins[0]
            perm_in = a.perm or tuple(range(a.val.ndim - 1))
            q = tuple(eqn.params["permutation"])
            return [_V(a.val, True, tuple(q.index(p) for p in perm_in))]
        if name in _REDUCE_WINDOW and len(ins) == 1:
            return [self._reduce_window(eqn, ins[0])]
        if name in _REDUCE and len(ins) == 1 and ins[0].perm is not None:
            return [self._reduce(eqn, ins[0])]
        return self._fallback(eqn, ins)

    def _count_macs(self, eqn, ins) -> None:
        macs = eqn_macs(eqn)
        if not macs:
            return
        if not any(a.batched for a in ins):
            kind = "shared"
        elif eqn.primitive.name == "conv_general_dilated" and ins[1].batched:
            kind = "per_trial_kernel_conv"
        else:
            kind = "per_trial"
        self._counting[kind] += macs

    def _conv_step(self, eqn, ins, key, cache) -> list:
        lhs, rhs = ins
        if not rhs.batched or rhs.parts is not None:
            # a shared kernel (so a per-trial input), or one made per trial
            if lhs.parts is not None or rhs.parts is not None:
                return self._each_trial(eqn, ins)
            return self._fallback(eqn, ins)
        if lhs.parts is None:
            path = self._conv_path(eqn, ins)
        else:  # the path depends on the shapes alone: no stacked copy made
            part = lhs.parts[0]
            whole = jax.ShapeDtypeStruct((len(lhs.parts), *part.shape), part.dtype)
            path = self._conv_path(eqn, [_V(whole, True), rhs])
        if path == "per_trial":
            parts = cache.get(key + "/kernel_parts")
            if parts is not None:
                ins = [lhs, _split(parts)]
            return [self._conv_each_trial(eqn, ins)]
        ins = [_stacked(lhs), rhs]
        if path == "im2col":
            kmat = cache.get(key + "/kernel")
            if kmat is None:
                kmat = self._conv_kernel(eqn, rhs)
            return [self._conv(eqn, ins[0], kmat)]
        if not self._conv_rewritable(eqn):
            return self._fallback(eqn, ins, "batch_group_count > 1")
        return self._vmapped(eqn, ins)

    @staticmethod
    def _each_trial(eqn, ins) -> list:
        """``eqn`` bound once per trial on each trial's operands (shared ones
        read by every trial), its outputs held as ``parts``: the steps of a
        loop over trials, exactly."""
        per = []
        for a in ins:
            if a.parts is not None:
                per.append(a.parts)
            elif a.batched:
                x = _logical(a)
                per.append([x[t] for t in range(x.shape[0])])
            else:
                per.append(None)
        t = len(next(p for p in per if p is not None))
        outs = [
            _bind(
                eqn,
                [a.val if p is None else p[i] for a, p in zip(ins, per, strict=True)],
            )
            for i in range(t)
        ]
        return [_split([o[k] for o in outs]) for k in range(len(eqn.outvars))]

    # -- layout-keeping rules --------------------------------------------------

    def _elementwise(self, eqn, ins) -> list:
        # Run in the layout of the largest batched operand; the others (shared
        # ones of full rank, possibly with size-1 axes, and batched ones in
        # another layout) are transposed to it, rank-0 ones pass as they are.
        rank = max(np.ndim(a.val) - a.batched for a in ins)
        big = max(
            (a for a in ins if a.batched and a.val.ndim > 1),
            key=lambda a: a.val.size,
            default=None,
        )
        perm = None if big is None else big.perm
        vals, axes = [], []
        for a in ins:
            nd = np.ndim(a.val) - a.batched
            if 0 < nd < rank:  # not an elementwise operand shape: let vmap say
                return self._fallback(eqn, [_V(_logical(b), b.batched) for b in ins])
            if a.batched:
                same = a.perm == perm or nd == 0
                vals.append(a.val if same else _in_order(a, perm or range(nd)))
                axes.append(0)
            else:
                vals.append(jnp.transpose(a.val, perm) if perm and nd else a.val)
                axes.append(None)
        outs = jax.vmap(lambda *v: _bind(eqn, v), in_axes=axes)(*vals)
        return [_V(o, True, perm) for o in outs]

    def _reduce_window(self, eqn, a: _V) -> _V:
        perm = a.perm or tuple(range(a.val.ndim - 1))
        p = dict(eqn.params)
        for name in (
            "window_dimensions",
            "window_strides",
            "padding",
            "base_dilation",
            "window_dilation",
        ):
            if name in p:
                p[name] = tuple(p[name][j] for j in perm)
        name = eqn.primitive.name
        if (
            name != "reduce_window_sum"
            and all(d == 1 for d in p["base_dilation"])
            and all(pad == (0, 0) for pad in p["padding"])
        ):
            # max/min of strided slices: exact, and XLA's CPU reduce_window is
            # slower than the elementwise max of the slices.
            x = a.val
            op = lax.max if name == "reduce_window_max" else lax.min
            out_shape = eqn.outvars[0].aval.shape
            outs = [out_shape[j] for j in perm]
            acc = None
            wins, strides, wd = (
                p["window_dimensions"],
                p["window_strides"],
                p["window_dilation"],
            )
            for offs in itertools.product(*[range(w) for w in wins]):
                start = [0] + [o * d for o, d in zip(offs, wd, strict=True)]
                step = [1, *strides]
                limit = [x.shape[0]] + [
                    s0 + st * (o - 1) + 1
                    for s0, st, o in zip(start[1:], strides, outs, strict=True)
                ]
                sl = lax.slice(x, start, limit, step)
                acc = sl if acc is None else op(acc, sl)
            return _V(acc, True, a.perm)
        out = jax.vmap(lambda v: eqn.primitive.bind(v, **p))(a.val)
        return _V(out, True, a.perm)

    def _reshape(self, eqn, a: _V) -> _V:
        """A reshape that only merges runs of consecutive logical axes, each
        run held in consecutive physical axes (in any order), and inserts or
        drops size-1 axes, is a free physical reshape: the result keeps the
        physical layout (new size-1 axes go last, where their place costs
        nothing), and a run held in another order than its logical one becomes
        a merged axis with its own row order (``_V.rows``), which a
        ``dot_general`` contracting it matches by permuting the other operand's
        rows (``_dot_laid_out``). Other reshapes run in the logical layout."""
        a = _unrow(a)
        shape = tuple(eqn.invars[0].aval.shape)
        new = tuple(eqn.params["new_sizes"])
        if eqn.params.get("dimensions") is not None:
            return self._fallback(eqn, [a])[0]
        perm = a.perm or tuple(range(len(shape)))
        old_axes = [i for i, s in enumerate(shape) if s != 1]
        new_axes = [k for k, s in enumerate(new) if s != 1]
        groups, i = [], 0
        for k in new_axes:
            g, size = [], 1
            while i < len(old_axes) and size < new[k]:
                g.append(old_axes[i])
                size *= shape[old_axes[i]]
                i += 1
            if size != new[k]:
                return self._fallback(eqn, [a])[0]
            groups.append(g)
        # the physical rank of each non-unit logical axis among the non-unit ones
        rank = {ax: r for r, ax in enumerate(ax for ax in perm if shape[ax] != 1)}
        phys = [sorted(rank[ax] for ax in g) for g in groups]
        if i != len(old_axes) or any(
            ps != list(range(ps[0], ps[0] + len(ps))) for ps in phys
        ):
            return self._fallback(eqn, [a])[0]
        by_phys = sorted(range(len(groups)), key=lambda k: phys[k][0])
        order = [new_axes[k] for k in by_phys]
        order += [k for k, s in enumerate(new) if s == 1]
        val = jnp.reshape(a.val, (a.val.shape[0], *[new[k] for k in order]))
        in_phys = [ax for ax in perm if shape[ax] != 1]
        rows = []
        for k, g in zip(new_axes, groups, strict=True):
            sub = tuple(g.index(ax) for ax in in_phys if ax in g)
            if sub != tuple(range(len(g))):
                rows.append((k, tuple(shape[ax] for ax in g), sub))
        return _V(val, True, tuple(order), rows)

    def _squeeze(self, eqn, a: _V) -> _V:
        """Dropping size-1 axes keeps the physical layout of the others."""
        nd = len(eqn.invars[0].aval.shape)
        gone = {d % nd for d in eqn.params["dimensions"]}
        perm = a.perm or tuple(range(nd))
        renum = {
            ax: ax - sum(d < ax for d in gone) for ax in range(nd) if ax not in gone
        }
        keep = [j for j, ax in enumerate(perm) if ax not in gone]
        val = jnp.reshape(a.val, (a.val.shape[0], *[a.val.shape[1 + j] for j in keep]))
        rows = [(renum[ax], sizes, o) for ax, sizes, o in a.rows or ()]
        return _V(val, True, tuple(renum[perm[j]] for j in keep), rows)

    def _broadcast(self, eqn, a: _V) -> _V:
        """``broadcast_in_dim`` keeps the operand's physical layout; the new
        axes go last."""
        out = tuple(eqn.params["shape"])
        dims = tuple(eqn.params["broadcast_dimensions"])
        perm = a.perm or tuple(range(len(dims)))
        order = [dims[ax] for ax in perm]
        order += [k for k in range(len(out)) if k not in dims]
        x = jnp.reshape(a.val, (*a.val.shape, *[1] * (len(out) - len(dims))))
        val = jnp.broadcast_to(x, (x.shape[0], *[out[k] for k in order]))
        rows = [(dims[ax], sizes, o) for ax, sizes, o in a.rows or ()]
        return _V(val, True, tuple(order), rows)

    def _dot_laid_out(self, eqn, ins, key, cache) -> _V | None:
        """A ``dot_general`` with one per-trial operand in another physical
        layout than its logical one (the images-minor trunk of a convolution,
        after a reshape or not) and no batch dimensions: computed on that
        layout as it is, the other operand's contracted rows permuted to match
        a merged axis' row order (:meth:`_dot_operand`, done by
        :meth:`prepare` when that operand reads the params alone), the result
        keeping the free axes' physical order (with a per-trial other operand:
        ``(T, its free axes, these free axes)``, the images staying minor).
        ``None`` where it does not apply (``jax.vmap``'s rule runs)."""
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        laid = [a.batched and bool(a.perm or a.rows) for a in ins]
        if lb or rb or sum(laid) != 1:
            return None
        side = laid.index(True)
        a, b = ins[side], ins[1 - side]
        layout = (side, a.perm, a.rows)
        if self._dots is not None:
            self._dots[key] = layout
        bv = cache.get(key + "/operand")
        if bv is None:
            bv = self._dot_operand(eqn, b, *layout)
        ca, cb = (lc, rc) if side == 0 else (rc, lc)
        rank_a = len(eqn.invars[side].aval.shape)
        rank_b = len(eqn.invars[1 - side].aval.shape)
        perm = a.perm or tuple(range(rank_a))
        rows = {ax: (sizes, order) for ax, sizes, order in a.rows or ()}
        pa = [perm.index(ax) for ax in ca]
        free_a = [perm[j] for j in range(rank_a) if perm[j] not in ca]  # physical
        free_b = [ax for ax in range(rank_b) if ax not in cb]
        pet = eqn.params.get("preferred_element_type")
        prec = eqn.params.get("precision")  # for (lhs, rhs): make it (a, b)
        if side == 1 and isinstance(prec, tuple):
            prec = prec[::-1]
        if b.batched:  # (T, b's free axes, a's free axes)
            nf = len(free_b)
            y = lax.dot_general(
                bv,
                a.val,
                (
                    ([1 + nf + k for k in range(len(cb))], [1 + j for j in pa]),
                    ((0,), (0,)),
                ),
                precision=prec[::-1] if isinstance(prec, tuple) else prec,
                preferred_element_type=pet,
            )
            phys = [("b", ax) for ax in free_b] + [("a", ax) for ax in free_a]
        else:  # (T, a's free axes, b's free axes)
            y = lax.dot_general(
                a.val,
                bv,
                (([1 + j for j in pa], list(cb)), ((), ())),
                precision=prec,
                preferred_element_type=pet,
            )
            phys = [("a", ax) for ax in free_a] + [("b", ax) for ax in free_b]
        # logical output: lhs free axes, then rhs free axes
        logical_a = [ax for ax in range(rank_a) if ax not in ca]
        off_a = 0 if side == 0 else len(free_b)
        off_b = len(logical_a) if side == 0 else 0

        def index(kind, ax):
            if kind == "a":
                return off_a + logical_a.index(ax)
            return off_b + free_b.index(ax)

        out_rows = [(index("a", ax), *rows[ax]) for ax in logical_a if ax in rows]
        y = y.astype(eqn.outvars[0].aval.dtype)
        return _V(y, True, tuple(index(k, ax) for k, ax in phys), out_rows)

    @staticmethod
    def _dot_operand(eqn, b: _V, side, perm, rows) -> Any:
        """The other operand of :meth:`_dot_laid_out`: each contracted axis that
        meets a merged axis of the laid-out operand rearranged to its row
        order; per trial, also transposed to ``(T, free axes, contracted
        axes)`` in one copy (XLA's CPU matmul wants the contracted axes last:
        a ``(T, K, M)`` operand takes a far slower loop)."""
        (lc, rc), _ = eqn.params["dimension_numbers"]
        ca, cb = (lc, rc) if side == 0 else (rc, lc)
        rows = {ax: (sizes, order) for ax, sizes, order in rows or ()}
        bv, lead = _logical(b), int(b.batched)
        rank_b = bv.ndim - lead
        free_b = [ax for ax in range(rank_b) if ax not in cb]
        # split each merged contracted axis into its parts
        sub = {}
        shape = list(bv.shape[:lead])
        for ax in range(rank_b):
            k = cb.index(ax) if ax in cb else None
            if k is not None and ca[k] in rows:
                sizes, order = rows[ca[k]]
                sub[ax] = [len(shape) + i for i in order]
                shape += list(sizes)
            else:
                sub[ax] = [len(shape)]
                shape.append(bv.shape[lead + ax])
        if lead:
            axes = [0] + [j for ax in (*free_b, *cb) for j in sub[ax]]
            merged = [bv.shape[1 + ax] for ax in (*free_b, *cb)]
        else:
            axes = [j for ax in range(rank_b) for j in sub[ax]]
            merged = list(bv.shape)
        if len(shape) == bv.ndim and axes == list(range(len(axes))):
            return bv
        x = jnp.reshape(bv, shape)
        x = jnp.transpose(x, axes)
        return jnp.reshape(x, (*bv.shape[:lead], *merged))

    def _reduce(self, eqn, a: _V) -> _V:
        perm = a.perm
        axes = tuple(eqn.params["axes"])
        phys = tuple(sorted(perm.index(ax) for ax in axes))
        p = dict(eqn.params, axes=phys)
        out = jax.vmap(lambda v: eqn.primitive.bind(v, **p))(a.val)
        kept = [perm[j] for j in range(len(perm)) if j not in phys]
        order = sorted(kept)
        return _V(out, True, tuple(order.index(k) for k in kept))

    # -- convolution -------------------------------------------------------------

    def _conv_path(self, eqn, ins) -> str:
        """How a convolution with a per-trial kernel runs (one of
        :data:`CONV_PATHS`), by :attr:`conv_path`; recorded for
        :func:`conv_path_log`."""
        rewritable = self._conv_rewritable(eqn)
        sig = _conv_signature(eqn, ins)
        path = self._fixed_path
        policy = "layers" if path is None else self._active or "rule"
        record = {"conv": _conv_description(eqn, ins), "policy": policy}
        if path is None:  # "layers": this layer shape's fastest path
            t = ins[1].val.shape[0]
            cands = [
                c
                for c in CONV_PATHS
                if (c != "im2col" or rewritable)
                and (c != "per_trial" or t <= MEASURE_PER_TRIAL_MAX)
            ]
            measured = _measure_conv(self, eqn, ins, sig, cands)
            path = measured["path"]
            if self.agree:
                path = _agreed(path, CONV_PATHS)
            record.update(_logged_measurement(measured, path))
        if path == "im2col" and not rewritable:
            path = "xla"
        record["path"] = path
        if self.record:
            _DECISIONS[sig] = record
        return path

    @property
    def _rule_path(self) -> str:
        """The rule's path, one for the whole model: where any convolution of
        the model has a patch matrix (``W*C`` rows) of more than
        :attr:`conv_patch_rows` rows, ``"per_trial"`` for every convolution
        with a per-trial kernel, else ``"im2col"`` (on CPU; see
        :data:`CPU_CONV_PATCH_ROWS`): building big patch matrices costs more
        memory traffic than the convolutions, and a model that runs some
        convolutions per trial runs fastest with all of them so (each trial's
        layers stay in the layout XLA's convolutions want, and fuse with the
        steps between them)."""
        rows = self.conv_patch_rows
        big = rows is not None and self._most_patch_rows > rows
        return "per_trial" if big else "im2col"

    @property
    def _fixed_path(self) -> str | None:
        """The path every convolution with a per-trial kernel takes under the
        policy in effect (:attr:`_rule_path` under the rule, the path itself
        under one of :data:`CONV_PATHS`); ``None`` under ``"layers"``, where
        each layer shape takes its own. :meth:`_conv_path` and
        :meth:`prepare` both read it."""
        policy = self._active or "rule"
        if policy == "layers":
            return None
        return policy if policy in CONV_PATHS else self._rule_path

    @classmethod
    def _conv_each_trial(cls, eqn, ins) -> _V:
        """One XLA convolution per trial (a shared input is read by each), the
        outputs held as ``parts``."""
        return cls._each_trial(eqn, ins)[0]

    @staticmethod
    def _conv_rewritable(eqn) -> bool:
        return eqn.params["batch_group_count"] == 1

    @staticmethod
    def _conv_kernel(eqn, rhs: _V) -> Any:
        """Per-trial kernel as ``(T, O, W*I)`` (window-major rows, ``W`` the
        number of kernel positions, ``I`` the input features per group) or, with
        feature groups, ``(T, G, O/G, W, I)``."""
        _, rhs_spec, _ = eqn.params["dimension_numbers"]
        k = _in_order(rhs, (rhs_spec[0], *rhs_spec[2:], rhs_spec[1]))
        t, o = k.shape[0], k.shape[1]
        win, cg = math.prod(k.shape[2:-1]), k.shape[-1]
        g = eqn.params["feature_group_count"]
        if g == 1:
            return jnp.reshape(k, (t, o, win * cg))
        return jnp.reshape(k, (t, g, o // g, win, cg))

    @staticmethod
    def _conv(eqn, lhs: _V, kmat: Any) -> _V:
        p = eqn.params
        lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
        d = len(lhs_spec) - 2
        g = p["feature_group_count"]
        rhs_shape = eqn.invars[1].aval.shape
        out_aval = eqn.outvars[0].aval
        ks = [rhs_shape[rhs_spec[2 + i]] for i in range(d)]
        strides = tuple(p["window_strides"])
        rd = tuple(p["rhs_dilation"] or (1,) * d)
        ld = tuple(p["lhs_dilation"] or (1,) * d)
        outs = [out_aval.shape[out_spec[2 + i]] for i in range(d)]
        perm = (out_spec[1], *out_spec[2:], out_spec[0])
        if 0 in out_aval.shape:  # an empty output: nothing to compute
            shape = (kmat.shape[0], *[out_aval.shape[i] for i in perm])
            return _V(jnp.zeros(shape, out_aval.dtype), True, perm)
        # (C, S..., N), trial axis first when batched
        x = _in_order(lhs, (lhs_spec[1], *lhs_spec[2:], lhs_spec[0]))
        lead = 1 if lhs.batched else 0
        lead_shape = x.shape[:lead]
        win = math.prod(ks)
        pads = [tuple(pp) for pp in p["padding"]]
        # Contiguous slices wherever windows overlap (a strided axis through
        # its phases); where a stride is at least its window (patch
        # embeddings) every input element is read once, and strided slices
        # save the phase transpose. Measured on a loaded 2-core CPU, 5 trials
        # x 20 images: 3x3 stride 2 on 28x28x16 about 1.1x faster through the
        # phases (shared or per-trial input), a 7x7 stride-7 patch embedding
        # 1.5x slower.
        flat = win > 1 and all(
            st == 1 or (k - 1) * r + 1 > st
            for k, r, st in zip(ks, rd, strides, strict=True)
        )
        if flat:
            blocks, grid = _flat_blocks(x, lead, ks, strides, rd, ld, pads, outs)
        else:
            cfg = [(0, 0, 0)] * (lead + 1)
            cfg += [(lo, hi, dl - 1) for (lo, hi), dl in zip(pads, ld, strict=True)]
            cfg += [(0, 0, 0)]
            if any(c != (0, 0, 0) for c in cfg):
                x = lax.pad(x, jnp.zeros((), x.dtype), cfg)
            grid = outs
            blocks = []
            for offs in itertools.product(*[range(k) for k in ks]):
                start = [0] * x.ndim
                limit = list(x.shape)
                step = [1] * x.ndim
                for i in range(d):
                    a = lead + 1 + i
                    start[a] = offs[i] * rd[i]
                    limit[a] = start[a] + strides[i] * (outs[i] - 1) + 1
                    step[a] = strides[i]
                blocks.append(lax.slice(x, start, limit, step))
        c, n = x.shape[lead], x.shape[-1]
        pn = math.prod(grid) * n
        # Each window position's slice is written in place into one
        # (W*C, grid..., N) buffer, whose reshape to (W*C, P*N) is free.
        if win == 1:
            patches = blocks[0]
        else:
            patches = jnp.zeros(
                (*lead_shape, win * c, *blocks[0].shape[lead + 1 :]), x.dtype
            )
            for w, blk in enumerate(blocks):
                patches = lax.dynamic_update_slice_in_dim(patches, blk, w * c, lead)
        patches = jnp.reshape(patches, (*lead_shape, win * c, pn))
        prec, pet = p.get("precision"), p.get("preferred_element_type")
        t = kmat.shape[0]
        if g == 1:
            o = kmat.shape[1]
            if not lhs.batched:
                y = lax.dot_general(
                    kmat,
                    patches,
                    (((2,), (0,)), ((), ())),
                    precision=prec,
                    preferred_element_type=pet,
                )
            else:
                y = lax.dot_general(
                    kmat,
                    patches,
                    (((2,), (1,)), ((0,), (0,))),
                    precision=prec,
                    preferred_element_type=pet,
                )
        else:
            og, cg = kmat.shape[2], kmat.shape[4]
            o = g * og
            patches = jnp.reshape(patches, (*lead_shape, win, g, cg, pn))
            if not lhs.batched:
                y = lax.dot_general(
                    kmat,
                    patches,
                    (((3, 4), (0, 2)), ((1,), (1,))),
                    precision=prec,
                    preferred_element_type=pet,
                )  # (G, T, Og, PN)
                y = jnp.transpose(y, (1, 0, 2, 3))
            else:
                y = lax.dot_general(
                    kmat,
                    patches,
                    (((3, 4), (1, 3)), ((0, 1), (0, 2))),
                    precision=prec,
                    preferred_element_type=pet,
                )  # (T, G, Og, PN)
        y = jnp.reshape(y, (t, o, *grid, n))
        if flat:
            y = lax.slice(y, (0,) * y.ndim, (t, o, *outs, n))
        y = y.astype(out_aval.dtype)
        return _V(y, True, perm)


def _flat_blocks(x, lead, ks, strides, rd, ld, pads, outs):
    """The patch rows of every window position (window-major) as contiguous
    slices of one flattened array, and the grid the output is computed on.

    ``x`` is ``(C, S1, ..., Sd, N)`` (after ``lead`` trial axes), not yet padded.
    With stride 1 the rows of one window position are one contiguous slice of
    the padded input flattened to ``(C, S1*...*Sd*N)``, shifted by the
    position's offset; the output is computed on the padded grid of the
    trailing spatial axes and its extra columns dropped. A strided axis is split
    into its ``s`` phases first (``x[r::s]``, one transpose of the input to
    ``(s1*...*sd, C, P1, ..., Pd, N)``): a window offset ``q*s + r`` reads phase
    ``r`` shifted by ``q``, so every window position is again one contiguous
    slice, of one phase, on the phases' grid. The right padding of a trailing
    stride-1 axis is cut down to its left padding (at most): a window running
    off a row's right edge then reads the next row's left padding, which is
    zero. Extra zero rows at the end of the first spatial axis keep every slice
    in range. Returns ``([(…, C, pn)] * W, grid)``, ``pn = prod(grid) * N``."""
    d = len(ks)
    pads = list(pads)
    for i in range(1, d):
        if strides[i] == 1:
            lo, hi = pads[i]
            trim = max(0, min(lo, hi, (ks[i] - 1) * rd[i]))
            pads[i] = (lo, hi - trim)
    sp = [
        (x.shape[lead + 1 + i] - 1) * ld[i] + 1 + pads[i][0] + pads[i][1]
        for i in range(d)
    ]
    # every strided axis a whole number of phases (zeros no window reads)
    ph = [-(-sp[i] // strides[i]) for i in range(d)]
    n = x.shape[-1]
    steps = [math.prod(ph[i + 1 :]) * n for i in range(d)]
    reach = sum((ks[i] - 1) * rd[i] // strides[i] * steps[i] for i in range(1, d))
    ph[0] += -(-reach // steps[0])
    cfg = [(0, 0, 0)] * (lead + 1)
    cfg += [
        (lo, hi + ph[i] * s - sz, dl - 1)
        for i, ((lo, hi), dl, s, sz) in enumerate(
            zip(pads, ld, strides, sp, strict=True)
        )
    ]
    cfg += [(0, 0, 0)]
    if any(c != (0, 0, 0) for c in cfg):
        x = lax.pad(x, jnp.zeros((), x.dtype), cfg)
    lead_shape, c = x.shape[:lead], x.shape[lead]
    size = math.prod(ph) * n
    if all(s == 1 for s in strides):
        phases = [jnp.reshape(x, (*lead_shape, c, size))]
    else:
        split = [v for i in range(d) for v in (ph[i], strides[i])]
        x = jnp.reshape(x, (*lead_shape, c, *split, n))
        order = [lead + 2 + 2 * i for i in range(d)]  # the phase axes
        order += [lead] + [lead + 1 + 2 * i for i in range(d)] + [x.ndim - 1]
        x = jnp.transpose(x, (*range(lead), *order))
        x = jnp.reshape(x, (*lead_shape, math.prod(strides), c, size))
        phases = [
            lax.index_in_dim(x, i, lead, keepdims=False)
            for i in range(math.prod(strides))
        ]
    grid = [outs[0], *ph[1:]]
    pn = math.prod(grid) * n
    blocks = []
    for offs in itertools.product(*[range(k) for k in ks]):
        qr = [divmod(o * dl, s) for o, dl, s in zip(offs, rd, strides, strict=True)]
        start = sum(v[0] * st for v, st in zip(qr, steps, strict=True))
        phase = phases[int(np.ravel_multi_index([v[1] for v in qr], strides))]
        blocks.append(lax.slice_in_dim(phase, start, start + pn, 1, lead + 1))
    return blocks, grid


def _patch_rows(eqn) -> int:
    """A convolution's patch-matrix rows: its kernel positions times its input
    features per group."""
    rhs = eqn.invars[1].aval.shape
    _, rhs_spec, _ = eqn.params["dimension_numbers"]
    return rhs[rhs_spec[1]] * math.prod(rhs[i] for i in rhs_spec[2:])


def program_digest(jaxpr) -> str:
    """The SHA-256 of a program's text (a jaxpr): how the timed choices of
    ``"measure"`` and ``chunk_size="measure"`` know a model."""
    return hashlib.sha256(str(jaxpr).encode()).hexdigest()


def _convs(jaxpr):
    """Every ``conv_general_dilated`` of ``jaxpr``, inner jaxprs included (call
    primitives, loops, branches)."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            yield eqn
        for sub in jcore.jaxprs_in_params(eqn.params):
            yield from _convs(sub)


#: CPU default of :attr:`TrialBatched.conv_patch_rows` (the rule): a model
#: whose convolutions all have at most this many patch rows runs them as
#: im2col, any other model all of its convolutions as one XLA convolution per
#: trial. Measured by ``python -m benchmarks.conv_paths`` on 2 CPU cores
#: (``benchmarks/results/conv_paths.json``, ``evaluate`` at its default
#: sizes): the LeNets (9 and 54 rows) ran 290-365 trials/s as im2col against
#: 54-86 per trial; ConvNet (27, then 576 rows and up) 6.1 trials/s per
#: trial against 3.8 im2col, ResNet-18 width 16 (27, then 144 and up) 21.4
#: against 11.7, width 64 3.9 against 2.5.
CPU_CONV_PATCH_ROWS = 128

#: The ways a convolution with a per-trial kernel runs: ``"im2col"`` (the
#: rewrite: patches times the stacked kernels), ``"per_trial"`` (one XLA
#: convolution per trial) and ``"xla"`` (``jax.vmap``'s batching rule: one XLA
#: convolution with the trials folded into its feature groups, or into its
#: output features for a shared input). Earlier ones win measured ties.
CONV_PATHS = ("im2col", "per_trial", "xla")

#: How trial batching runs the multiply-accumulates of a convolution or
#: ``dot_general`` (:meth:`TrialBatched.apply_jaxpr`): ``"shared"``, reading no
#: per-trial value, once for all the trials of an image batch;
#: ``"per_trial_kernel_conv"``, a convolution with a per-trial kernel, along
#: one of :data:`CONV_PATHS` (as matmuls against the stacked kernels, or one
#: convolution per trial reading the shared layout); ``"per_trial"``, any other
#: reading a per-trial value (a dense layer with a per-trial kernel, a product
#: of two per-trial activations), each trial its own, as in a loop over trials
#: (set beside the other trials' in one matmul where the other operand is
#: shared, as a batch axis otherwise: nothing is computed once for several).
MAC_KINDS = ("shared", "per_trial_kernel_conv", "per_trial")

#: The policy under which no operation is rewritten: the whole forward pass
#: runs under ``jax.vmap`` over the trials (XLA's batching rules), which for one
#: trial at a time is the program of a loop over trials.
VMAP = "vmap"

#: Policies of :func:`conv_paths`.
CONV_POLICIES = ("auto", "rule", "measure", "layers", VMAP, *CONV_PATHS)

#: What ``"measure"`` times on the whole forward pass, in the order that wins
#: ties (the rule only where it has a threshold, on CPU, and then not the
#: fixed path it takes: it is the same program).
MEASURE_CANDIDATES = ("rule", "im2col", "per_trial", "xla", "layers")

#: A measured candidate within this fraction of the fastest wins when it comes
#: earlier in :data:`CONV_PATHS` (timing noise then does not flip the choice).
CONV_TIE = 0.03

#: ``"measure"`` times ``"per_trial"`` only for chunks of up to this many
#: trials: its program holds one convolution per trial, so its compile time
#: grows with the chunk.
MEASURE_PER_TRIAL_MAX = 16

_policy = ["auto"]
_MEASURED: dict = {}  # layer signature -> the measurement (see _measure_conv)
_MEASURED_MODELS: dict = {}  # model signature -> the measurement (_measure_model)
_DECISIONS: dict = {}  # layer signature -> how it last ran (conv_path_log)
_CLEARS = [0]  # how often conv_path_log was cleared (which measurements are new)


@contextlib.contextmanager
def conv_paths(policy: str):
    """Within the block, how :func:`trial_batched` (so :func:`uswim_jax.evaluate`,
    :func:`uswim_jax.sweep` and ``program_chips``) runs each convolution whose
    kernel carries per-trial noise.

    Policies (:data:`CONV_POLICIES`):

    - ``"auto"`` (the default outside any block): ``"rule"`` on CPU,
      ``"measure"`` on accelerators;
    - ``"rule"``: im2col, except in a model with a convolution whose patch
      matrix has more than :data:`CPU_CONV_PATCH_ROWS` rows, which runs every
      convolution as one XLA convolution per trial (on CPU; on accelerators
      im2col throughout), from the CPU measurements cited there;
    - ``"layers"``: each layer shape (input and kernel shapes and layouts,
      stride, padding, dilation, groups, trials, dtype) is timed once per
      machine (kept in the same file as ``"measure"``'s choices) on the
      running backend along every path of :data:`CONV_PATHS` (operands of the
      real shapes filled with 0.5; compiled ahead of time, one warm-up call,
      then the paths timed in turns, each its fastest call: :func:`_time_calls`),
      and runs along the fastest (ties
      within :data:`CONV_TIE` go to the earlier path). Greedy: a layer is timed
      with its input in the layout the layers before it left, so it misses a
      choice that pays off only in the next layer's layout;
    - ``"measure"``: the whole trial-batched forward pass (one image batch,
      the chunk's trials, operands filled with 0.5) is timed once per model,
      shapes and machine under each of :data:`MEASURE_CANDIDATES` (the rule,
      each fixed path but the one the rule takes, ``"layers"``; timed in
      turns, as the layers are), and the fastest runs (ties within
      :data:`CONV_TIE` go to the earlier one). It costs a compilation of the
      forward pass per candidate, plus ``"layers"``' own, the first time; the
      choice is kept in a file that later processes read
      (``$USWIM_CONV_CACHE``; see :mod:`uswim_jax._measure_cache`);
    - with several JAX processes each one times (or reads its file), and all
      run process 0's choice, so that every process compiles the same program
      (:func:`conv_path_log` says ``"chosen_by"``, and ``"own_choice"`` where
      a process's own timing differed);
    - ``"im2col"``, ``"per_trial"``, ``"xla"``: that path for every
      convolution (``"im2col"`` where the rewrite applies, ``"xla"``
      elsewhere);
    - ``"vmap"`` (:data:`VMAP`): nothing rewritten, no work shared between
      trials: the whole forward pass under ``jax.vmap`` over the trials,
      which for one trial at a time is the program of a loop over trials
      (a candidate of ``chunk_size="measure"``).

    The paths compute the same sums in other orders (the last float bits may
    differ). :func:`conv_path_log` says which path each layer shape took and
    why. The policy is read when a function is traced: a function that was
    compiled before the block keeps its paths.

        >>> with conv_paths("measure"):
        ...     pass  # evaluate(...) here times its convolutions' paths
    """
    if policy not in CONV_POLICIES:
        raise ValueError(
            f"conv_paths policy must be one of {CONV_POLICIES}, got {policy!r}"
        )
    old, _policy[0] = _policy[0], policy
    try:
        yield
    finally:
        _policy[0] = old


def conv_policy(policy: str | None = None) -> str:
    """The policy :func:`trial_batched` runs under: ``policy``, else the
    innermost :func:`conv_paths` block's, with ``"auto"`` resolved for the
    running backend (``"rule"`` on CPU, ``"measure"`` elsewhere)."""
    policy = policy or _policy[0]
    if policy == "auto":
        return "rule" if jax.default_backend() == "cpu" else "measure"
    return policy


def conv_path_log(clear: bool = False) -> list[dict]:
    """How each convolution layer shape with a per-trial kernel last ran in
    this process: one dict per shape, ``"conv"`` (its shapes and params),
    ``"policy"`` (``"rule"``, ``"layers"`` or the path it was given),
    ``"path"`` and, where timed (``"layers"``), ``"ms"`` (milliseconds per
    call of each path) and ``"seconds"`` (what timing it took, compilation
    included). Each ``"measure"`` choice adds one dict with ``"model"`` (the
    model's shapes) in place of ``"conv"``, ``"policy": "measure"``,
    ``"path"`` (the policy it chose), ``"ms"`` (per forward pass, per
    candidate) and ``"seconds"``. Timed records also say ``"reused"``: the
    measurement was made before the log was last cleared (by an earlier
    trace with the same shapes) or read from the file of an earlier process's
    measurements (then the record also has ``"cached"``, the file, and
    ``"measured"``, when), so its ``"seconds"`` were spent then.
    ``clear=True`` empties the log after reading it (the measurements stay
    cached)."""
    out = [dict(r) for r in _DECISIONS.values()]
    if clear:
        _DECISIONS.clear()
        _CLEARS[0] += 1
    return out


def _conv_signature(eqn, ins) -> str:
    """What a convolution's timing depends on: the backend, the primitive's
    params and its operands' physical shapes, layouts and dtypes."""
    ops = [
        (tuple(a.val.shape), str(a.val.dtype), a.batched, a.perm, a.rows) for a in ins
    ]
    params = sorted((k, repr(v)) for k, v in eqn.params.items())
    return repr((jax.default_backend(), _device_kind(), params, ops))


def _device_kind() -> str:
    return str(getattr(jax.devices()[0], "device_kind", ""))


def _conv_description(eqn, ins) -> str:
    """A convolution in words, for :func:`conv_path_log`."""
    p = eqn.params
    lhs, rhs = (v.aval for v in eqn.invars[:2])
    t = ins[1].val.shape[0]
    parts = [
        f"{t} trial{'s' if t != 1 else ''}",
        f"input {'x'.join(map(str, lhs.shape))} {lhs.dtype}",
        "shared" if not ins[0].batched else "per trial",
        f"kernel {'x'.join(map(str, rhs.shape))}",
        f"strides {tuple(p['window_strides'])}",
        f"padding {tuple(tuple(q) for q in p['padding'])}",
        "dims " + "/".join(map(str, map(tuple, p["dimension_numbers"]))),
    ]
    if any(d != 1 for d in p["lhs_dilation"] or ()):
        parts.append(f"lhs dilation {tuple(p['lhs_dilation'])}")
    if any(d != 1 for d in p["rhs_dilation"] or ()):
        parts.append(f"rhs dilation {tuple(p['rhs_dilation'])}")
    if p["feature_group_count"] != 1:
        parts.append(f"feature groups {p['feature_group_count']}")
    if p["batch_group_count"] != 1:
        parts.append(f"batch groups {p['batch_group_count']}")
    return ", ".join(parts)


def _compiled(fn, *structs):
    """``fn`` compiled ahead of time: calling it runs at once, even while
    another function is being traced."""
    return jax.jit(fn).lower(*structs).compile()


def _measure_conv(tb, eqn, ins, sig: str, cands) -> dict:
    """Times ``eqn`` along each of ``cands`` on operands of ``ins``' shapes
    (once per ``sig`` and machine: the in-process cache, then the file's) and
    returns ``{"path", "ms", "seconds"}``."""
    if sig in _MEASURED:
        return _MEASURED[sig]
    cached = _measure_cache.lookup("conv:" + sig, cands)
    if cached is not None:  # timed by an earlier process on this machine
        _MEASURED[sig] = {**cached, "clears": None}
        return _MEASURED[sig]
    t0 = time.perf_counter()
    lhs, rhs = ins
    structs = [jax.ShapeDtypeStruct(a.val.shape, a.val.dtype) for a in ins]
    lv, rv = _fill(structs)  # timing does not depend on the values

    def wrap(path):
        def run(lval, second):
            a = _V(lval, lhs.batched, lhs.perm, lhs.rows)
            if path == "im2col":
                return tb._conv(eqn, a, second).val
            b = _V(second, True, rhs.perm, rhs.rows)
            if path == "per_trial":
                return _logical(tb._conv_each_trial(eqn, [a, b]))
            return tb._vmapped(eqn, [a, b])[0].val

        return run

    calls = {}
    for path in cands:
        second = rv
        if path == "im2col":  # the kernel matrix is made once per chunk
            kern = _compiled(
                lambda r: tb._conv_kernel(eqn, _V(r, True, rhs.perm, rhs.rows)),
                structs[1],
            )
            second = kern(rv)
        run = _compiled(
            wrap(path), structs[0], jax.ShapeDtypeStruct(second.shape, second.dtype)
        )
        calls[path] = (run, (lv, second))
    ms = {c: 1e3 * s for c, s in _time_calls(calls).items()}
    fastest = min(ms.values())
    path = next(c for c in cands if ms[c] <= fastest * (1 + CONV_TIE))
    out = {"path": path, "ms": ms, "seconds": time.perf_counter() - t0}
    _measure_cache.remember("conv:" + sig, out)
    out["clears"] = _CLEARS[0]
    _MEASURED[sig] = out
    return out


def _logged_measurement(m: dict, path: str) -> dict:
    """A measurement as :func:`conv_path_log` shows it, ``path`` being what
    ran: ``"reused"`` when it was made before the log was last cleared (its
    ``"seconds"`` were spent then); with several processes ``"chosen_by":
    "process 0"``, and ``"own_choice"`` where this process's timing chose
    another path."""
    out = {k: v for k, v in m.items() if k != "clears"}
    out["reused"] = m["clears"] != _CLEARS[0]
    if jax.process_count() > 1:
        out["chosen_by"] = "process 0"
        if path != m["path"]:
            out["own_choice"] = m["path"]
    out["path"] = path
    return out


def _fill(structs) -> list:
    """Arrays of ``structs``' shapes and dtypes filled with 0.5 (0 for
    integers, key 0 for PRNG keys), made where they are used."""

    def one(s):
        if jax.dtypes.issubdtype(s.dtype, jax.dtypes.prng_key):
            return jnp.zeros(s.shape, s.dtype)
        return jnp.full(s.shape, 0.5).astype(s.dtype)

    def make():
        return [one(s) for s in structs]

    return _compiled(make)()


def _time_call(run, *args) -> float:
    """Seconds of the fastest of at least 3 calls (up to 20 within 0.2 s),
    after one warm-up call."""
    return _time_calls({None: (run, args)})[None]


def _time_calls(calls: dict) -> dict:
    """``{name: (run, args)}`` -> the seconds of each ``run(*args)``'s fastest
    call, after one warm-up call of each: the calls take turns, round after
    round (at least 3 rounds, and up to 20 while any of them has spent under
    0.2 s), so that a change of load on the machine meets every candidate."""
    for run, args in calls.values():
        jax.block_until_ready(run(*args))
    best = dict.fromkeys(calls, math.inf)
    spent = dict.fromkeys(calls, 0.0)
    rounds = 0
    while rounds < 3 or (min(spent.values()) < 0.2 and rounds < 20):
        for name, (run, args) in calls.items():
            s0 = time.perf_counter()
            jax.block_until_ready(run(*args))
            dt = time.perf_counter() - s0
            best[name], spent[name] = min(best[name], dt), spent[name] + dt
        rounds += 1
    return best


def _measure_model(tb: TrialBatched, leaves: list, t: int | None) -> str:
    """``"measure"``: the candidate policy whose whole forward pass (one image
    batch, ``t`` trials) runs fastest, timed once per model signature and
    machine (:func:`conv_paths`; the in-process cache, then the file's)."""
    structs = [jax.ShapeDtypeStruct(np.shape(a), a.dtype) for a in leaves]
    if tb._model_key is None:  # the program's text, printed once per instance
        tb._model_key = (program_digest(tb.jaxpr), sum(1 for _ in _convs(tb.jaxpr)))
    digest, n_conv = tb._model_key
    sig = repr(
        (
            jax.default_backend(),
            _device_kind(),
            digest,
            [(s.shape, str(s.dtype)) for s in structs],
            tb.batched,
            [(s.shape, str(s.dtype)) for s in tb._x_template],
            tb.conv_patch_rows,
        )
    )
    if sig not in _MEASURED_MODELS:
        cached = _measure_cache.lookup(sig, MEASURE_CANDIDATES)
        if cached is not None:  # measured by an earlier process on this machine
            _MEASURED_MODELS[sig] = {**cached, "policy": "measure", "clears": None}
    if sig not in _MEASURED_MODELS:
        t0 = time.perf_counter()
        # the rule is one fixed path for the whole model: timed once, as "rule"
        rule = None if tb.conv_patch_rows is None else tb._rule_path
        cands = [
            c
            for c in MEASURE_CANDIDATES
            if (c != "rule" or rule is not None)
            and c != rule
            and (c != "per_trial" or (t or 1) <= MEASURE_PER_TRIAL_MAX)
        ]
        args = _fill(structs + tb._x_template)
        n = len(structs)
        calls = {}
        for c in cands:
            cand = copy.copy(tb)
            cand.conv_path = cand._active = c
            cand._dots, cand._logged, cand.record = None, set(), False
            cand.agree = False

            def run(ps, xs, cand=cand):
                stacked = jax.tree.unflatten(tb.param_tree, ps)
                return cand.apply(cand.prepare(stacked), xs, t)

            calls[c] = (_compiled(run, structs, tb._x_template), (args[:n], args[n:]))
        ms = {c: 1e3 * s for c, s in _time_calls(calls).items()}
        fastest = min(ms.values())
        path = next(c for c in cands if ms[c] <= fastest * (1 + CONV_TIE))
        x_shape = "x".join(map(str, tb._x_template[0].shape)) if tb._x_template else ""
        _MEASURED_MODELS[sig] = {
            "model": f"{n_conv} convolutions, {t} trials, input {x_shape}",
            "policy": "measure",
            "path": path,
            "ms": ms,
            "seconds": time.perf_counter() - t0,
            "clears": _CLEARS[0],
        }
        _measure_cache.remember(sig, _MEASURED_MODELS[sig])
    record = _MEASURED_MODELS[sig]
    path = _agreed(record["path"], MEASURE_CANDIDATES)
    if tb.record:
        _DECISIONS["model:" + sig] = _logged_measurement(record, path)
    return path


def _agreed(path: str, options: Sequence[str]) -> str:
    """``path`` as process 0 chose it, on every process (identity with one):
    each process timed its own devices, and they must all compile one
    program. Every process reaches it at the same point of the same trace
    (:func:`uswim_jax._distributed.from_writer`: an all-gather run at once,
    outside the trace)."""
    options = list(options)
    return options[from_writer(options.index(path))]


def trial_batched(
    apply_fn: Callable,
    params: Any,
    x: Any,
    batched: Any = None,
    conv_path: str | None = None,
) -> TrialBatched:
    """``apply_fn`` for a stack of trials' params (see the module docstring).

    Returns a :class:`TrialBatched` ``tb``: ``tb(stacked, x)`` or
    ``tb.apply(tb.prepare(stacked), x)`` gives the outputs of every trial with a
    leading trial axis. ``params`` and ``x`` are one trial's params and one input
    batch (arrays or ``jax.ShapeDtypeStruct``); ``batched`` flags the leaves of
    ``stacked`` that carry the trial axis (default: all). Convolutions with a
    per-trial kernel take the paths of the current :func:`conv_paths` policy,
    or of ``conv_path`` when given (``"rule"``, ``"measure"`` or one of
    :data:`CONV_PATHS`).
    """
    rows = CPU_CONV_PATCH_ROWS if jax.default_backend() == "cpu" else None
    return TrialBatched(apply_fn, params, x, batched, rows, conv_policy(conv_path))
