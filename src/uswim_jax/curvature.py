"""Second-order sensitivity: diagonal curvature estimators for any JAX model.

Every estimator returns a pytree shaped like ``params`` holding, per scalar
parameter, an estimate of the diagonal of the loss Hessian:

- :func:`obd_diagonal`: the paper's one-pass diagonal (Becker–LeCun / Optimal
  Brain Damage backprop, docs/method.md §4), implemented generically over the jaxpr
  of ``apply_fn`` (see ``_obd.py``); :func:`obd_over_dataset` runs it over a
  dataset in batches and also returns the authors' first-order term.
- :func:`hutchinson_diagonal`: Rademacher probes and forward-over-reverse HVPs.
- :func:`exact_diagonal`: one HVP per parameter with unit vectors (the oracle for
  small models).
- :func:`ggn_diagonal`: the exact Gauss–Newton diagonal through the output space.
- :func:`fisher_diagonal`: the empirical Fisher diagonal (squared per-example
  gradients).

Convention: ``B`` is the number of samples; the model-based estimators
(``obd``, ``ggn``, ``fisher``) use the loss *summed* over samples (no ``1/B``), as
the authors' code does for the second-order term (docs/method.md §4.3). Labels
``y`` are integer class indices of shape ``(B,)`` for ``loss="cross_entropy"`` and
targets shaped like the logits for ``loss="squared_error"`` (``0.5 * (z - y)**2``).

No function here is jitted; wrap the call in ``jax.jit`` at the driver. Only
:func:`obd_over_dataset`, a dataset-level driver, jits its per-batch step (one
module-level jitted function, so a second call with an equal ``apply_fn`` and
the same options and shapes reuses the compiled step).
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from uswim_jax import _obd, _random
from uswim_jax._checks import (
    check_finite_tree,
    check_key,
    check_labels,
    check_model_data,
    check_positive,
    num_samples,
)
from uswim_jax._tree import CrossbarPredicate, check_crossbar, on_crossbar, path_str

LOSSES = ("cross_entropy", "squared_error")
#: The rules :func:`obd_diagonal` offers for the authors' two quirks.
AVG_POOL_RULES = ("exact", "authors")
Q_SCALE_RULES = ("exact", "authors")

#: Primitive names the one-pass interpreter handles (for documentation and tests).
OBD_SUPPORTED_PRIMITIVES = _obd.SUPPORTED_PRIMITIVES


# ------------------------------------------------------------------------ helpers


def _check_loss(loss: Any) -> None:
    if not callable(loss) and loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES} or a callable, got {loss!r}")


def _per_example_loss(z: jax.Array, y: jax.Array, loss: str) -> jax.Array:
    """Per-sample loss from logits ``z`` (..., C)."""
    if loss == "cross_entropy":
        logp = jax.nn.log_softmax(z, axis=-1)
        idx = jnp.asarray(y).astype(jnp.int32)[..., None]
        return -jnp.take_along_axis(logp, idx, axis=-1)[..., 0]
    diff = z - jnp.asarray(y, dtype=z.dtype)
    return 0.5 * jnp.sum(diff * diff, axis=-1)


def make_loss_fn(
    apply_fn: Callable[[Any, Any], jax.Array],
    x: Any,
    y: Any,
    *,
    loss: str = "cross_entropy",
    reduction: str = "sum",
) -> Callable[[Any], jax.Array]:
    """Closes a model over a batch: ``params -> scalar loss``.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits`` of shape ``(B, C)``.
      x: inputs.
      y: integer labels ``(B,)`` (cross-entropy) or targets ``(B, C)``.
      loss: ``"cross_entropy"`` or ``"squared_error"``.
      reduction: ``"sum"`` over samples (the convention of :func:`obd_diagonal`)
        or ``"mean"``.

    Returns:
      A function of the params only, for :func:`hutchinson_diagonal` and
      :func:`exact_diagonal`.

    Raises:
      ValueError: for an unknown ``loss`` or ``reduction``, or data that do not
        fit (see ``uswim_jax._checks.check_model_data``): ``y`` is checked here,
        and against the logits when ``loss_fn`` is first traced.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    n = num_samples(x)
    labels = _label_kind(loss)
    check_labels(y, n, None, labels)
    check_finite_tree("x", x)

    def loss_fn(params: Any) -> jax.Array:
        z = apply_fn(params, x)
        check_labels(y, n, tuple(np.shape(z)), labels)  # at trace time
        per = _per_example_loss(z, y, loss)
        return jnp.sum(per) if reduction == "sum" else jnp.mean(per)

    return loss_fn


def _label_kind(loss: Any) -> str:
    """What ``y`` holds under ``loss`` (see ``uswim_jax._checks.LABEL_KINDS``)."""
    if callable(loss):
        return "any"
    return "classes" if loss == "cross_entropy" else "targets"


def _check_rules(loss: Any, avg_pool: Any, q_scale: Any) -> None:
    _check_loss(loss)
    if avg_pool not in AVG_POOL_RULES:
        raise ValueError(f"avg_pool must be one of {AVG_POOL_RULES}, got {avg_pool!r}")
    if q_scale not in Q_SCALE_RULES:
        raise ValueError(f"q_scale must be one of {Q_SCALE_RULES}, got {q_scale!r}")


def _layer_scale(leaf: Any) -> Any:
    """``max|W_l|`` of a float leaf (1 for an all-zero one); ``None`` for a
    non-float leaf."""
    if not _is_float_leaf(leaf):
        return None
    m = jnp.max(jnp.abs(jnp.asarray(leaf)))
    return jnp.where(m > 0, m, jnp.ones_like(m))


def _is_float_leaf(leaf: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)


def _split_float(params: Any) -> tuple[list, Callable, Callable]:
    """Float leaves of ``params``, a function rebuilding params from them, and one
    expanding per-float-leaf results to a params-shaped pytree (zeros elsewhere)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    is_f = [_is_float_leaf(x) for x in leaves]
    fl = [x for x, f in zip(leaves, is_f, strict=True) if f]

    def merge(float_leaves: list) -> Any:
        it = iter(float_leaves)
        return treedef.unflatten(
            [next(it) if f else x for x, f in zip(leaves, is_f, strict=True)]
        )

    def expand(float_out: list) -> Any:
        it = iter(float_out)
        return treedef.unflatten(
            [
                next(it) if f else jnp.zeros(np.shape(x), jnp.result_type(x))
                for x, f in zip(leaves, is_f, strict=True)
            ]
        )

    return fl, merge, expand


def _logit_hessian_seed(z: jax.Array, y: Any, loss: Any) -> jax.Array:
    """Diagonal of the per-sample loss Hessian with respect to the logits."""
    if callable(loss):
        return jnp.asarray(loss(z, y), dtype=z.dtype)
    if loss == "cross_entropy":
        p = jax.nn.softmax(z, axis=-1)
        return p * (1 - p)
    return jnp.ones_like(z)


# -------------------------------------------------------------- one-pass diagonal


def obd_diagonal(
    apply_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    x: Any,
    y: Any,
    *,
    loss: str | Callable = "cross_entropy",
    avg_pool: str = "exact",
    q_scale: str = "exact",
    predicate: CrossbarPredicate | None = None,
    fuse_elementwise: bool = True,
    row_jacobian: bool = True,
) -> Any:
    """The one-pass diagonal second derivative SWIM and U-SWIM use.

    Becker–LeCun diagonal backprop: the second-order cotangent is seeded at the
    logits with the diagonal of the per-sample loss Hessian (``p * (1 - p)`` for
    softmax cross-entropy, off-diagonals dropped) and carried backwards through
    every primitive of ``apply_fn`` with squared local coefficients, summed over
    samples (no ``1/B``, as the authors). For the last layer it equals the exact
    Hessian diagonal; for earlier layers it is the Becker–LeCun approximation of
    the Gauss–Newton diagonal. The interpreter runs at trace time, so the call is
    jit-compilable and costs about one forward and one backward pass.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits`` with logits of shape ``(B, C)``;
        any JAX function (Flax linen ``model.apply``, a merged NNX module, a plain
        function).
      params: any pytree; every float leaf gets a second derivative (batch-norm
        statistics included); non-float leaves get zeros.
      x: the input batch (not differentiated).
      y: labels; not used by the cross-entropy seed (its Hessian does not depend
        on the label) but kept for a uniform signature.
      loss: ``"cross_entropy"`` (seed ``p(1-p)``), ``"squared_error"`` (seed 1) or
        a callable ``(logits, y) -> seed`` giving the per-element diagonal of the
        loss Hessian with respect to the logits.
      avg_pool: ``"exact"`` (a division by a constant after a window or axis sum
        scales ``h`` by ``1/k**2``) or ``"authors"`` (by ``1/k``, the quirk of the
        authors' average-pool rule, docs/method.md §8). ``"authors"`` applies to
        every division of a ``reduce_window_sum`` or ``reduce_sum`` output by a
        value that does not depend on the params, which is how ``nn.avg_pool``
        and ``jnp.mean`` (global average pool) lower; it is meant for the
        ResNet-18 reproduction and would also touch, say, a layer norm's mean.
      q_scale: ``"exact"`` or ``"authors"``: the quirk of the authors' quantized
        layers (``QSLinear``/``QSConv2d``, docs/method.md §8),
        which compute ``op(x * a_l, W_l / a_l)`` with ``a_l = max|W_l|`` and
        carry ``h`` through ``x * a_l`` as ``h * a_l`` instead of ``h * a_l**2``.
        With ``"authors"``, at every bilinear primitive (``dot_general``,
        ``conv_general_dilated``) whose one operand derives from a crossbar leaf
        ``W_l`` alone (through reshapes, transposes, casts or the
        straight-through quantizer ``w + stop_gradient(q(w) - w)``), the ``h``
        of the other (data-side) operand is divided by ``max|W_l|``: every
        earlier layer's diagonal shrinks by ``1/max|W_l|`` per crossbar layer
        that ``h`` passes through. The layer's own diagonal is unchanged. The
        rule applies to every crossbar layer of the graph; in the authors' code
        only quantized models have it (their float layers scale the output,
        which is exact), which is why the experiment pipeline allows it only for
        quantized models.
      predicate: which leaves are crossbar weights, for ``q_scale``
        (``predicate(path, leaf)``; default: conv and dense kernels, see
        ``uswim_jax._tree.default_crossbar``).
      fuse_elementwise: fuse connected elementwise primitives into one local
        derivative (exact ``f'(x)**2`` for inline activations such as Flax's
        GELU). ``False`` applies the rule primitive by primitive, summing squared
        paths where a value fans out; calls whose body is elementwise
        (``jax.nn.relu``, jitted activations) stay one unit either way.
      row_jacobian: treat each normalisation over an axis (softmax, LayerNorm,
        RMS norm: a reduction over axes ``A`` whose result is broadcast back and
        combined with the rows it reduced) as one unit and pass ``h`` through
        the square of its exact per-row Jacobian,
        ``h_x[r, k] = sum_j (dy[r, j] / dx[r, k])**2 * h_y[r, j]`` (one JVP per
        position along ``A``). That is the Becker–LeCun rule of a layer whose
        output is a vector function of its input row: only the cross terms
        between different outputs are dropped, as for a dense layer. For
        softmax, ``J = diag(p) - p p^T``; for LayerNorm,
        ``J = g (I - 1/D - xhat xhat^T / D) / sigma``. ``False`` applies the
        rule primitive by primitive inside them (the mean, the variance and the
        normaliser as separate paths, their cross terms dropped), which
        ignores that the paths cancel (a softmax is shift invariant). Models
        without such a normalisation (LeNet, the ConvNet, ResNet-18 with its
        inference-mode batch-norm and average pool) are unaffected; inside a
        row-wise unit ``avg_pool="authors"`` does not apply (a layer norm's mean
        gets the exact rule). Only with ``fuse_elementwise``.

    Returns:
      A pytree like ``params`` of raw (unnormalised) diagonal second derivatives
      ``d2L/dw2`` of the summed loss.

    Raises:
      ValueError: for an unknown ``loss``, ``avg_pool`` or ``q_scale``, data
        that do not fit the model (``uswim_jax._checks.check_model_data``: NaN
        params or inputs, labels of the wrong dtype, shape or range, logits not
        of shape ``(B, C)``), or params with no crossbar leaf.
      NotImplementedError: naming a primitive on the path from params to logits
        that has no rule (a ``while`` loop whose trip count is known only at
        run time; a ``scan`` is unrolled, a ``cond`` runs every branch and
        selects the taken one's outputs). ``OBD_SUPPORTED_PRIMITIVES`` lists those
        handled; control flow that does not touch the params (input
        preprocessing) is fine.

    References:
      docs/method.md §4.1 (per-layer rules, seed), §4.2 (the interpreter) and
      §8 (the authors' quirks).
    """
    _check_rules(loss, avg_pool, q_scale)
    check_crossbar("params", params, predicate)
    check_model_data(apply_fn, params, x, y, labels=_label_kind(loss))
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves = [leaf for _, leaf in path_leaves]
    x_leaves, x_def = jax.tree_util.tree_flatten(x)
    n = len(leaves)

    def flat_fn(*args: Any) -> Any:
        return apply_fn(treedef.unflatten(args[:n]), x_def.unflatten(args[n:]))

    closed = _obd.unroll_control_flow(jax.make_jaxpr(flat_fn)(*leaves, *x_leaves))
    if len(closed.jaxpr.outvars) != 1:
        raise ValueError(
            "apply_fn must return a single logits array, got "
            f"{len(closed.jaxpr.outvars)} outputs"
        )
    in_active = [_is_float_leaf(v) for v in leaves] + [False] * len(x_leaves)
    in_source = None
    q_scales = None
    if q_scale == "authors":
        in_source = [
            i if act and on_crossbar(predicate, path_str(path), leaf) else None
            for i, ((path, leaf), act) in enumerate(
                zip(path_leaves, in_active, strict=False)
            )
        ] + [None] * len(x_leaves)
        q_scales = [_layer_scale(leaf) for leaf in leaves]
    rec = _obd.forward(
        closed.jaxpr, closed.consts, [*leaves, *x_leaves], in_active, in_source
    )
    out = closed.jaxpr.outvars[0]
    logits = _obd._read(rec.env, out)
    seed = _logit_hessian_seed(jnp.asarray(logits), y, loss)
    h_in = _obd.backward(
        rec,
        [seed],
        fuse=fuse_elementwise,
        avg_pool=avg_pool,
        q_scales=q_scales,
        rowwise=row_jacobian,
    )
    result = []
    for leaf, hl in zip(leaves, h_in[:n], strict=True):
        if hl is None:
            hl = jnp.zeros(np.shape(leaf), jnp.result_type(leaf))
        result.append(hl)
    return treedef.unflatten(result)


def obd_over_dataset(
    apply_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    x: Any,
    y: Any,
    *,
    batch_size: int = 128,
    loss: str = "cross_entropy",
    avg_pool: str = "exact",
    q_scale: str = "exact",
    predicate: CrossbarPredicate | None = None,
    augment: Callable[[jax.Array, Any], Any] | None = None,
    key: jax.Array | None = None,
) -> tuple[Any, Any]:
    """Runs :func:`obd_diagonal` over a dataset in batches, as the authors do.

    This is a dataset-level driver: its per-batch step is one module-level jitted
    function with ``apply_fn``, the options and ``augment`` static, compiled once
    per batch shape (plus once for a smaller last batch) and reused by later calls
    with an equal ``apply_fn`` (the same function, or a bound method of an equal
    object such as an equal :class:`uswim_jax.models.Model`). It loops over
    batches in Python, slicing ``x`` and ``y`` on the host, so the dataset need
    not fit on the device.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``.
      params: any pytree of float leaves.
      x: inputs, an array with samples on axis 0 (NumPy or JAX).
      y: labels with samples on axis 0.
      batch_size: samples per batch (the authors use 128).
      loss: ``"cross_entropy"`` or ``"squared_error"``.
      avg_pool: ``"exact"`` or ``"authors"`` (see :func:`obd_diagonal`).
      q_scale: ``"exact"`` or ``"authors"`` (see :func:`obd_diagonal`).
      predicate: the crossbar predicate for ``q_scale`` (see
        :func:`obd_diagonal`).
      augment: ``augment(key, xb) -> xb``, applied to every batch before both
        passes (the authors run the second-derivative pass with the training
        augmentations, docs/method.md §4.3); batch ``i`` gets
        ``fold_in(key, i)``. ``None``: no augmentation.
      key: a ``jax.random`` key, required with ``augment``; the key is consumed.

    Returns:
      ``(hess, grad)``: ``hess`` is the one-pass diagonal summed over all samples;
      ``grad`` is the sum over batches of the gradient of the batch-*mean* loss
      (the authors' first-order term, docs/method.md §4.3).

    Raises:
      ValueError: for a non-positive ``batch_size``, an unknown ``loss``,
        ``avg_pool`` or ``q_scale``, data that do not fit the model (as
        :func:`obd_diagonal`) or params with no crossbar leaf.

    References:
      docs/method.md §4.3 and §5.2.
    """
    check_positive("batch_size", batch_size)
    batch_size = int(batch_size)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    _check_rules(loss, avg_pool, q_scale)
    check_crossbar("params", params, predicate)
    check_model_data(apply_fn, params, x, y, labels=_label_kind(loss))
    num = num_samples(x)
    if augment is not None and key is None:
        raise ValueError("key is required when augment is given")
    options = {
        "apply_fn": apply_fn,
        "loss": loss,
        "avg_pool": avg_pool,
        "q_scale": q_scale,
        "predicate": predicate,
        "augment": augment,
    }
    hess = grad = None
    for start in range(0, num, batch_size):
        bkey = None if augment is None else jax.random.fold_in(key, start // batch_size)
        hb, gb = _obd_batch(
            params,
            x[start : start + batch_size],
            y[start : start + batch_size],
            bkey,
            **options,
        )
        if hess is None:
            hess, grad = hb, gb
        else:
            hess, grad = _tree_add(hess, hb), _tree_add(grad, gb)
    return hess, grad


@functools.partial(
    jax.jit,
    static_argnames=("apply_fn", "loss", "avg_pool", "q_scale", "predicate", "augment"),
)
def _obd_batch(
    params: Any,
    xb: Any,
    yb: Any,
    bkey: Any,
    *,
    apply_fn: Callable,
    loss: str,
    avg_pool: str,
    q_scale: str,
    predicate: CrossbarPredicate | None,
    augment: Callable | None,
) -> tuple[Any, Any]:
    """One batch of :func:`obd_over_dataset`: the one-pass diagonal and the
    gradient of the batch-mean loss (zeros for non-float leaves)."""
    if augment is not None:
        xb = augment(bkey, xb)
    hess = obd_diagonal(
        apply_fn,
        params,
        xb,
        yb,
        loss=loss,
        avg_pool=avg_pool,
        q_scale=q_scale,
        predicate=predicate,
    )
    fl, merge, expand = _split_float(params)

    def mean_loss(fls: list) -> jax.Array:
        z = apply_fn(merge(fls), xb)
        return jnp.mean(_per_example_loss(z, yb, loss))

    return hess, expand(jax.grad(mean_loss)(fl))


_tree_add = jax.jit(lambda a, b: jax.tree_util.tree_map(jnp.add, a, b))


# ---------------------------------------------------------------------- Hutchinson


def _merge_moments(
    count_a: Any, mean_a: list, m2_a: list, count_b: int, samples: list
) -> tuple[Any, list, list]:
    """Chan et al.'s parallel update of (count, mean, M2) with a chunk of samples."""
    mean_b = [jnp.mean(s, axis=0) for s in samples]
    m2_b = [
        jnp.sum((s - m[None]) ** 2, axis=0)
        for s, m in zip(samples, mean_b, strict=True)
    ]
    total = count_a + count_b
    means, m2s = [], []
    for ma, m2a, mb, m2b in zip(mean_a, m2_a, mean_b, m2_b, strict=True):
        na = jnp.asarray(count_a, ma.dtype)
        nb = jnp.asarray(count_b, ma.dtype)
        nt = na + nb
        delta = mb - ma
        means.append(ma + delta * (nb / nt))
        m2s.append(m2a + m2b + delta * delta * (na * nb / nt))
    return total, means, m2s


def hutchinson_diagonal(
    key: jax.Array,
    loss_fn: Callable[[Any], jax.Array],
    params: Any,
    num_probes: int,
    *,
    chunk_size: int | None = None,
) -> tuple[Any, Any]:
    """Hutchinson estimate of the Hessian diagonal, with its standard error.

    For Rademacher probes ``z``, ``E[z * (H z)] = diag(H)``. Hessian-vector
    products are ``jax.jvp`` over ``jax.grad`` (forward over reverse), vmapped
    over probes; with ``chunk_size`` the probes run ``chunk_size`` at a time in a
    ``lax.scan`` that accumulates the mean and variance (Chan et al.), so memory
    stays at ``chunk_size`` HVPs.

    Args:
      key: a ``jax.random`` key; the key is consumed.
      loss_fn: ``params -> scalar`` (see :func:`make_loss_fn`).
      params: any pytree; float leaves are probed, others get zeros.
      num_probes: number of probes ``n >= 1``.
      chunk_size: probes per vmapped chunk (default: all at once).

    Returns:
      ``(estimate, stderr)``, pytrees like ``params``: the mean of ``z * Hz`` over
      probes and its standard error ``std / sqrt(n)`` (``inf`` when ``n == 1``).

    Raises:
      ValueError: if ``num_probes`` or ``chunk_size`` is not positive.

    References:
      Hutchinson (1989); docs/method.md §4.4; optax
      ``hutchinson_estimator_diag_hessian``.
    """
    check_key("key", key)
    check_positive("num_probes", num_probes)
    if chunk_size is not None:
        check_positive("chunk_size", chunk_size)
    num_probes = int(num_probes)
    check_finite_tree("params", params)
    fl, merge, expand = _split_float(params)
    grad_f = jax.grad(lambda leaves: loss_fn(merge(leaves)))

    def sample(k: jax.Array) -> list:
        ks = jax.random.split(k, max(len(fl), 1))
        z = [
            _random.rademacher(kk, np.shape(x), jnp.result_type(x))
            for kk, x in zip(ks, fl, strict=False)
        ]
        _, hz = jax.jvp(grad_f, (fl,), (z,))
        return [a * b for a, b in zip(z, hz, strict=True)]

    keys = jax.random.split(key, num_probes)
    chunk = num_probes if chunk_size is None else min(int(chunk_size), num_probes)
    n_full = num_probes // chunk
    zeros = [jnp.zeros(np.shape(x), jnp.result_type(x)) for x in fl]

    def body(carry: tuple, chunk_keys: jax.Array) -> tuple:
        count, mean, m2 = carry
        samples = jax.vmap(sample)(chunk_keys)
        return _merge_moments(count, mean, m2, chunk, samples), None

    full_keys = keys[: n_full * chunk].reshape((n_full, chunk))
    if n_full == 1:
        (count, mean, m2), _ = body((0, zeros, zeros), full_keys[0])
    else:
        (count, mean, m2), _ = jax.lax.scan(
            body, (jnp.zeros((), jnp.int32), zeros, zeros), full_keys
        )
    rest = num_probes - n_full * chunk
    if rest:
        samples = jax.vmap(sample)(keys[n_full * chunk :])
        count, mean, m2 = _merge_moments(count, mean, m2, rest, samples)
    if num_probes > 1:
        se = [jnp.sqrt(m / (num_probes - 1) / num_probes) for m in m2]
    else:
        se = [jnp.full_like(m, jnp.inf) for m in m2]
    return expand(mean), expand(se)


# --------------------------------------------------------------------------- exact


def exact_diagonal(
    loss_fn: Callable[[Any], jax.Array],
    params: Any,
    *,
    chunk_size: int | None = 128,
) -> Any:
    """The exact Hessian diagonal, one HVP per parameter (small models only).

    ``H_ii = e_i . H e_i`` with ``H e_i`` a forward-over-reverse HVP; unit vectors
    are vmapped ``chunk_size`` at a time (``jax.lax.map``). Costs ``P`` HVPs for
    ``P`` parameters: the oracle for tests and small models.

    Args:
      loss_fn: ``params -> scalar``.
      params: any pytree; float leaves (one dtype) are differentiated.
      chunk_size: unit vectors per vmapped chunk; ``None`` vmaps all of them.

    Returns:
      A pytree like ``params`` holding ``d2L/dw2`` (zeros for non-float leaves).

    Raises:
      ValueError: if ``chunk_size`` is not positive.
    """
    if chunk_size is not None:
        check_positive("chunk_size", chunk_size)
    check_finite_tree("params", params)
    fl, merge, expand = _split_float(params)
    flat, unravel = ravel_pytree(fl)
    size = int(flat.shape[0])
    if size == 0:
        return expand([])
    grad_f = jax.grad(lambda v: loss_fn(merge(unravel(v))))

    def entry(i: jax.Array) -> jax.Array:
        e = jnp.zeros_like(flat).at[i].set(1)
        return jax.jvp(grad_f, (flat,), (e,))[1][i]

    batch = None if chunk_size is None else min(int(chunk_size), size)
    diag = jax.lax.map(entry, jnp.arange(size), batch_size=batch)
    return expand(unravel(diag))


# ----------------------------------------------------------------- GGN and Fisher


def _sum_over_examples(fn: Callable, xs: tuple, chunk_size: int | None) -> list:
    """``sum_n fn(xs[n])`` with ``fn`` vmapped ``chunk_size`` examples at a time."""
    num = int(np.shape(xs[0])[0])

    def total(batch: tuple) -> list:
        return [jnp.sum(s, axis=0) for s in jax.vmap(fn)(*batch)]

    if chunk_size is None or chunk_size >= num:
        return total(xs)
    chunk = int(chunk_size)
    n_full = num // chunk
    shaped = tuple(
        a[: n_full * chunk].reshape((n_full, chunk, *a.shape[1:])) for a in xs
    )
    first = total(tuple(a[0] for a in shaped))

    def body(acc: list, batch: tuple) -> tuple:
        return [a + b for a, b in zip(acc, total(batch), strict=True)], None

    acc, _ = jax.lax.scan(body, first, tuple(a[1:] for a in shaped))
    if num > n_full * chunk:
        rest = total(tuple(a[n_full * chunk :] for a in xs))
        acc = [a + b for a, b in zip(acc, rest, strict=True)]
    return acc


def _check_per_example_args(
    loss: str, chunk_size: int | None, apply_fn: Any, params: Any, x: Any, y: Any
) -> None:
    """The argument checks shared by the per-example estimators."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if chunk_size is not None:
        check_positive("chunk_size", chunk_size)
    check_model_data(apply_fn, params, x, y, labels=_label_kind(loss))


def ggn_diagonal(
    apply_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    loss: str = "cross_entropy",
    chunk_size: int | None = None,
) -> Any:
    """The exact Gauss–Newton diagonal ``diag(sum_n J_n^T H_n J_n)``.

    ``H_n``, the loss Hessian with respect to sample ``n``'s logits, is factored as
    ``L L^T`` (for softmax cross-entropy ``L[:, c] = sqrt(p_c) (e_c - p)``, for
    squared error ``L = I``), so the diagonal is the sum over samples and classes of
    squared per-sample VJPs. Costs ``C`` backward passes per sample.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``; called on one sample at a time
        with a leading batch axis of 1.
      params: any pytree.
      x: inputs with samples on axis 0.
      y: labels (unused by the cross-entropy factor; kept for a uniform signature).
      loss: ``"cross_entropy"`` or ``"squared_error"``.
      chunk_size: samples per vmapped chunk (default: all at once).

    Returns:
      A pytree like ``params``: the GGN diagonal of the loss summed over samples.

    Raises:
      ValueError: for an unknown ``loss``, a non-positive ``chunk_size`` or data
        that do not fit the model (as :func:`obd_diagonal`).
    """
    _check_per_example_args(loss, chunk_size, apply_fn, params, x, y)
    fl, merge, expand = _split_float(params)

    def one(xn: jax.Array, yn: jax.Array) -> list:
        del yn
        z, vjp = jax.vjp(lambda leaves: apply_fn(merge(leaves), xn[None])[0], fl)
        c = z.shape[-1]
        eye = jnp.eye(c, dtype=z.dtype)
        if loss == "cross_entropy":
            p = jax.nn.softmax(z)
            factor = jnp.sqrt(p)[:, None] * (eye - p[None, :])  # row c = L[:, c]
        else:
            factor = eye
        cols = jax.vmap(lambda v: vjp(v)[0])(factor)
        return [jnp.sum(g * g, axis=0) for g in cols]

    return expand(_sum_over_examples(one, (x, y), chunk_size))


def fisher_diagonal(
    apply_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    loss: str = "cross_entropy",
    chunk_size: int | None = None,
) -> Any:
    """The empirical Fisher diagonal: squared per-example gradients, summed.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``; called on one sample at a time
        with a leading batch axis of 1.
      params: any pytree.
      x: inputs with samples on axis 0.
      y: labels with samples on axis 0 (the empirical Fisher uses them).
      loss: ``"cross_entropy"`` or ``"squared_error"``.
      chunk_size: samples per vmapped chunk (default: all at once).

    Returns:
      A pytree like ``params``: ``sum_n (d l_n / d w)**2``.

    Raises:
      ValueError: for an unknown ``loss``, a non-positive ``chunk_size`` or data
        that do not fit the model (as :func:`obd_diagonal`).
    """
    _check_per_example_args(loss, chunk_size, apply_fn, params, x, y)
    fl, merge, expand = _split_float(params)

    def one(xn: jax.Array, yn: jax.Array) -> list:
        def per(leaves: list) -> jax.Array:
            z = apply_fn(merge(leaves), xn[None])
            return jnp.sum(_per_example_loss(z, yn[None], loss))

        return [g * g for g in jax.grad(per)(fl)]

    return expand(_sum_over_examples(one, (x, y), chunk_size))
