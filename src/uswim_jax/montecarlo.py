"""Monte Carlo accuracy under device variation: one trial as a pure function,
``vmap``-ed over trial keys in chunks, optionally sharded over local devices.

``T`` denotes Monte Carlo trials. Trial ``t`` draws its noise from
``fold_in(key, t)``: 100 trials are a prefix of 1,000, the result of a trial does
not depend on the chunk size or the number of devices, and the same trial keys
serve every method and every programming step (common random numbers).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uswim_jax import _distributed
from uswim_jax._checks import check_key, check_model_data
from uswim_jax._chunking import AUTO_CACHE_FRACTION as AUTO_CACHE_FRACTION
from uswim_jax._chunking import AUTO_MEMORY_FRACTION as AUTO_MEMORY_FRACTION
from uswim_jax._chunking import _free_memory_bytes as _free_memory_bytes
from uswim_jax._chunking import _last_level_cache_bytes as _last_level_cache_bytes
from uswim_jax._chunking import auto_chunk_size as auto_chunk_size
from uswim_jax._chunking import auto_eval_batch_size as auto_eval_batch_size
from uswim_jax._chunking import choose_chunk_size as choose_chunk_size
from uswim_jax._chunking import choose_eval_batch_size as choose_eval_batch_size
from uswim_jax._chunking import measure_sizes as measure_sizes
from uswim_jax._chunking import measured_sizes_log as measured_sizes_log
from uswim_jax._chunking import own_mac_share as own_mac_share
from uswim_jax._chunking import resolve_sizes as resolve_sizes
from uswim_jax._jaxpr import _peak_bytes as _peak_bytes
from uswim_jax._jaxpr import forward_bytes as forward_bytes
from uswim_jax._jaxpr import split_params_only as split_params_only
from uswim_jax._protocol import has_closed_form, resolve_device_model
from uswim_jax._tree import (
    abstract,
    check_crossbar,
    crossbar_flags,
    numbers_as_arrays,
)
from uswim_jax._trialbatch import conv_path_log as conv_path_log
from uswim_jax._trialbatch import conv_paths as conv_paths
from uswim_jax._trialbatch import trial_batched
from uswim_jax.device import (
    DEVICE_FIX,
    _noisy_leaf,
    add_noise,
    noise_like,
    verified_mask,
)
from uswim_jax.stats import Z95

ApplyFn = Callable[[Any, jax.Array], jax.Array]


class MCStats(NamedTuple):
    """Accuracy statistics over trials (accuracies are fractions in [0, 1])."""

    accuracies: jax.Array  # (T,) per-trial accuracy
    mean: jax.Array  # ()
    std: jax.Array  # () sample std (ddof=1; 0 for one trial)
    ci95: jax.Array  # (2,) normal-approximation 95 % CI of the mean
    p1: jax.Array  # () 1st percentile (tail accuracy)
    p5: jax.Array  # () 5th percentile


def summarize(accuracies: jax.Array) -> MCStats:
    """Mean, std, 95 % confidence interval of the mean and the 1st and 5th
    percentiles of per-trial accuracies (along the last axis)."""
    acc = jnp.asarray(accuracies)
    t = acc.shape[-1]
    mean = jnp.mean(acc, axis=-1)
    std = jnp.std(acc, axis=-1, ddof=1) if t > 1 else jnp.zeros_like(mean)
    half = Z95 * std / jnp.asarray(np.sqrt(t), std.dtype)
    ci = jnp.stack([mean - half, mean + half], axis=-1)
    p1 = jnp.percentile(acc, 1.0, axis=-1)
    p5 = jnp.percentile(acc, 5.0, axis=-1)
    return MCStats(acc, mean, std, ci, p1, p5)


def trial_keys(key: jax.Array, num_trials: int, start: int = 0) -> jax.Array:
    """Keys ``fold_in(key, t)`` for ``t`` in ``[start, start + num_trials)``."""
    idx = jnp.arange(start, start + num_trials, dtype=jnp.uint32)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)


def _hits(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Correct top-1 predictions of ``logits`` (``(..., N, classes)``) against
    the labels ``y`` (``(N,)``; padded images carry ``-1``), summed over the
    images; the predictions are cast to the labels' dtype (int64 ``argmax``
    under ``jax_enable_x64`` against int32 labels)."""
    pred = jnp.argmax(logits, axis=-1).astype(y.dtype)
    y = jnp.reshape(y, (1,) * (pred.ndim - 1) + y.shape)
    return jnp.sum(pred == y, axis=-1, dtype=jnp.int32)


def correct_count(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    batch_size: int | None = None,
) -> jax.Array:
    """Number of correct top-1 predictions over ``x``; evaluated in batches of
    ``batch_size`` (the last one padded and masked) when given. The steps of
    ``apply_fn`` that read the params alone run once, before the batches
    (:func:`split_params_only`)."""
    n = x.shape[0]
    if batch_size is None or batch_size >= n:
        return _hits(apply_fn(params, x), y)
    nb = -(-n // batch_size)
    pad = nb * batch_size - n
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
    yp = jnp.concatenate([y, jnp.full((pad,), -1, y.dtype)])
    xb = xp.reshape(nb, batch_size, *x.shape[1:])
    yb = yp.reshape(nb, batch_size)
    prepare, apply = split_params_only(apply_fn, params, xb[0])
    prepared = prepare(params)

    def one(args):
        xi, yi = args
        return _hits(apply(prepared, xi), yi)

    return jnp.sum(jax.lax.map(one, (xb, yb)))


def noisy_accuracy(
    key: jax.Array,
    apply_fn: ApplyFn,
    params: Any,
    std: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    crossbar: Callable | None = None,
    eval_batch_size: int | None = None,
) -> jax.Array:
    """One trial: ``params + std * z`` with ``z = noise_like(key, params)``, and
    its accuracy over ``(x, y)``. The key is consumed.

    This is exactly ``device.perturb(key, params, verified)`` for the Gaussian
    device models, with ``std = device.effective_std(params, verified)``.
    """
    z = noise_like(key, params, crossbar)
    noisy = add_noise(params, std, z, crossbar)
    correct = correct_count(apply_fn, noisy, x, y, eval_batch_size)
    return correct.astype(jnp.float32) / jnp.float32(x.shape[0])


def trials_correct(
    apply_fn: ApplyFn,
    stacked: Any,
    batched: Any,
    x: jax.Array,
    y: jax.Array,
    batch_size: int | None = None,
) -> jax.Array:
    """Correct top-1 predictions over ``x`` of each of ``T`` trials, shape
    ``(T,)``.

    ``stacked`` is a params pytree whose leaves flagged in ``batched`` (a pytree
    of bools like it) carry a leading trial axis; the others are shared by
    every trial. ``apply_fn`` runs trial-batched
    (:func:`uswim_jax._trialbatch.trial_batched`): its params-only steps run
    once per trial before the image batches, the steps that read no per-trial
    value run once per batch for all trials, and convolutions with per-trial
    kernels are matmuls against the stacked kernels. The images are evaluated in
    batches of ``batch_size`` (the last one padded and masked) when given.
    """
    n = x.shape[0]
    stacked = numbers_as_arrays(stacked)
    template = jax.tree.map(
        lambda a, b: abstract(a, np.shape(a)[1:] if b else None), stacked, batched
    )
    if batch_size is None or batch_size >= n:
        tb = trial_batched(apply_fn, template, x, batched)
        return _hits(tb(stacked, x), y)
    nb = -(-n // batch_size)
    pad = nb * batch_size - n
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
    yp = jnp.concatenate([y, jnp.full((pad,), -1, y.dtype)])
    xb = xp.reshape(nb, batch_size, *x.shape[1:])
    yb = yp.reshape(nb, batch_size)
    tb = trial_batched(apply_fn, template, xb[0], batched)
    prepared = tb.prepare(stacked)

    def one(args):
        xi, yi = args
        return _hits(tb.apply(prepared, xi), yi)

    return jnp.sum(jax.lax.map(one, (xb, yb)), axis=0)


def noisy_stack(
    keys: jax.Array, params: Any, std: Any, crossbar: Callable | None = None
) -> tuple[Any, Any]:
    """``params + std * z`` for each key (``z = noise_like(key, params)``), as
    ``(stacked, batched)``: the crossbar leaves with a leading trial axis, the
    others (whose noise is zero) as they are; ``batched`` flags the former.
    Trial ``t`` gets exactly what :func:`noisy_accuracy` uses for ``keys[t]``."""
    flags = crossbar_flags(params, crossbar)
    z = jax.vmap(lambda k: noise_like(k, params, crossbar))(keys)
    return stack_noisy(params, std, z, flags), flags


def stack_noisy(params: Any, std: Any, z: Any, batched: Any) -> Any:
    """``params + std * z`` for a stack of draws ``z`` (leading trial axis) on the
    leaves flagged in ``batched``; the other leaves as they are (their noise is
    zero)."""
    return jax.tree.map(
        lambda w, s, n, f: _noisy_leaf(w[None], s[None], n) if f else w,
        params,
        std,
        z,
        batched,
    )


def noisy_accuracies(
    keys: jax.Array,
    apply_fn: ApplyFn,
    params: Any,
    std: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    crossbar: Callable | None = None,
    eval_batch_size: int | None = None,
) -> jax.Array:
    """:func:`noisy_accuracy` for each of ``keys`` (a chunk of trials), shape
    ``(T,)``, with the trials evaluated together (:func:`trials_correct`): the
    chunk's noise is drawn first (the same draw per trial), then each image
    batch runs once for all the trials. The keys are consumed."""
    stacked, flags = noisy_stack(keys, params, std, crossbar)
    correct = trials_correct(apply_fn, stacked, flags, x, y, eval_batch_size)
    return correct.astype(jnp.float32) / jnp.float32(x.shape[0])


def programmed_trials(
    keys: jax.Array,
    apply_fn: ApplyFn,
    params: Any,
    device_model: Any,
    verified: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    eval_batch_size: int | None = None,
) -> jax.Array:
    """The generic trial of any :class:`~uswim_jax.DeviceModel`, for each of
    ``keys`` (a chunk): per trial ``(accuracy, total cycles, verify cycles)``,
    shape ``(T, 3)`` (float32).

    Trial ``keys[t]`` programs one chip,
    ``device_model.program_with_cost(keys[t], params, verified)`` (``vmap``-ed
    over the keys, so the model's methods must be ``vmap``-able); the chunk's
    programmed params are then evaluated together (:func:`trials_correct`), the
    leaves off the crossbar (exact by the protocol) shared by the trials. The
    cycles are those of each run, unnormalized (``WriteCycles.total`` and
    ``.verify``). The keys are consumed.
    """
    flags = crossbar_flags(params, device_model.crossbar)
    res = jax.vmap(lambda k: device_model.program_with_cost(k, params, verified))(keys)
    stacked = jax.tree.map(lambda r, w, f: r if f else w, res.params, params, flags)
    correct = trials_correct(apply_fn, stacked, flags, x, y, batch_size=eval_batch_size)
    f32 = jnp.float32
    return jnp.stack(
        [
            correct.astype(f32) / f32(x.shape[0]),
            jnp.asarray(res.cycles.total).astype(f32),
            jnp.asarray(res.cycles.verify).astype(f32),
        ],
        axis=1,
    )


def _check_chunk_size(chunk_size: Any) -> None:
    if chunk_size is not None and (
        not isinstance(chunk_size, int | np.integer) or chunk_size < 1
    ):
        raise ValueError(
            f"chunk_size must be a positive integer or None, got {chunk_size!r} "
            '(evaluate, sweep and program_chips also take "auto" and "measure")'
        )


def _map_chunks(fn: Callable, keys: jax.Array, chunk_size: int | None) -> Any:
    t = keys.shape[0]
    if chunk_size is None or chunk_size >= t:
        return fn(keys)
    nb, rem = divmod(t, chunk_size)
    main = jax.lax.map(fn, keys[: nb * chunk_size].reshape(nb, chunk_size))
    main = jax.tree.map(lambda a: a.reshape(nb * chunk_size, *a.shape[2:]), main)
    if not rem:
        return main
    last = fn(keys[nb * chunk_size :])
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), main, last)


def _under_policy(fn: Callable, policy: str) -> Callable:
    """``fn`` traced inside ``conv_paths(policy)``."""

    def traced(*args):
        with conv_paths(policy):
            return fn(*args)

    return traced


def run_chunks(
    keys: jax.Array,
    fn: Callable[[jax.Array], Any],
    *,
    chunk_size: int | None = None,
    shard: bool = False,
    conv_path: str | None = None,
) -> Any:
    """Applies ``fn(keys) -> (T, ...)``, which evaluates a chunk of trials at
    once, to ``keys`` in chunks of ``chunk_size`` (``lax.map`` over the chunks,
    the remainder as one more chunk), and, with ``shard=True``, the trial axis
    split over all local devices (``jax.shard_map``). Results do not depend on
    ``chunk_size`` or the device count as long as ``fn``'s result for a trial
    does not depend on the other trials of its chunk. ``fn`` is traced under
    the :func:`conv_paths` policy ``conv_path`` when given (a
    :class:`~uswim_jax._chunking.Sizes`' ``conv_path``)."""
    _check_chunk_size(chunk_size)
    if conv_path is not None:
        fn = _under_policy(fn, conv_path)
    if (mesh := _distributed.trial_mesh(shard)) is not None:
        return _distributed.run_on_mesh(
            keys, lambda k: _map_chunks(fn, k, chunk_size), mesh
        )
    t = keys.shape[0]
    if not shard or jax.local_device_count() == 1:
        return _map_chunks(fn, keys, chunk_size)
    devices = np.asarray(jax.local_devices())
    n_dev = len(devices)
    per = -(-t // n_dev)
    pad = per * n_dev - t
    padded = jnp.concatenate([keys, keys[:pad]]) if pad else keys
    mesh = jax.sharding.Mesh(devices, ("trials",))
    spec = jax.sharding.PartitionSpec("trials")
    # check_vma=False: the trial-batched interpreter binds primitives directly,
    # mixing per-device values with replicated ones (params, images) the way
    # jax.numpy would after an implicit pvary.
    out = jax.shard_map(
        lambda k: _map_chunks(fn, k, chunk_size),
        mesh=mesh,
        in_specs=spec,
        out_specs=spec,
        check_vma=False,
    )(padded)
    return jax.tree.map(lambda a: a[:t], out)


def run_trials(
    keys: jax.Array,
    fn: Callable[[jax.Array], jax.Array],
    *,
    chunk_size: int | None = None,
    shard: bool = False,
) -> jax.Array:
    """Applies ``fn(key) -> scalar`` to each key: ``vmap`` within chunks of
    ``chunk_size`` trials (:func:`run_chunks`). Results do not depend on
    ``chunk_size`` or the device count."""
    return run_chunks(keys, jax.vmap(fn), chunk_size=chunk_size, shard=shard)


def evaluate(
    key: jax.Array,
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    device_model: Any = None,
    verified: Any = None,
    num_trials: int = 100,
    *,
    chunk_size: int | str | None = "auto",
    eval_batch_size: int | str | None = "auto",
    shard: bool = False,
    device: Any = None,
) -> MCStats:
    """Accuracy of ``apply_fn`` over ``(x, y)`` on ``num_trials`` chips
    programmed under ``device_model``.

    Args:
        key: the base key; trial ``t`` uses ``fold_in(key, t)``. The key is
            consumed.
        apply_fn: ``apply_fn(params, x) -> logits``.
        params: the trained params pytree.
        x, y: test images and int labels.
        device_model: any :class:`~uswim_jax.DeviceModel`
            (``UniformVariation``, ``StateDependentVariation``,
            ``LevelTableVariation``, ``PulseModel`` or a model of your own).
        verified: ``None`` (nothing verified) or a boolean pytree like ``params``.
        num_trials: T.
        chunk_size: trials evaluated at once (``lax.map`` batch size); bounds
            memory. ``None``: all at once. ``"auto"`` (default): chosen from the
            model's and data's sizes, the free memory and, on CPU, the cache
            (:func:`auto_chunk_size`, :func:`choose_chunk_size`); on CPU one
            trial at a time for a model whose matmuls are mostly each trial's
            own (an MLP, a transformer, an RNN: :func:`own_mac_share`).
            ``"measure"``: this and, with ``eval_batch_size="auto"``, the
            image batch timed among a few candidates (the rule's sizes, one
            trial at a time, all images at once, a loop over trials'
            program) in the first call, once per
            model, shapes and machine (:func:`measure_sizes`,
            :func:`measured_sizes_log`). The accuracies do not depend on it.
        eval_batch_size: images per forward pass inside a trial; ``None``:
            all. ``"auto"`` (default): on CPU as many as let a few trials'
            working sets fit the cache, a multiple of 8
            (:func:`auto_eval_batch_size`; 40 on LeNet), on accelerators all.
            The accuracies do not depend on it beyond float rounding (the last
            batch is padded and masked).
        shard: split the trials over all local devices.
        device: deprecated name of ``device_model`` (a ``DeprecationWarning``;
            removed in the next release).

    Returns:
        :class:`MCStats` with per-trial accuracies and their summary.

    Raises:
        ValueError: ``device_model`` not a device model (or given twice); bad
            ``num_trials``; data that do not fit the model (empty, NaN, labels
            that are not integer class indices ``(N,)`` in ``[0, C)``, logits
            not of shape ``(N, C)``: see ``uswim_jax._checks.check_model_data``);
            NaN params; params with no crossbar leaf; or a ``verified`` mask that
            does not match ``params``.

    Two paths, the same trials. A model with a closed-form std
    (:class:`~uswim_jax.ClosedFormStd`, the Gaussian models) takes the fast
    path: trial ``t`` is ``add_noise(params, effective_std(params, verified),
    noise_like(fold_in(key, t), params, crossbar), crossbar)``, bit for bit
    ``device_model.program(fold_in(key, t), params, verified)``. Any other model
    runs its own programming per trial (:func:`programmed_trials`).

    Performance: a chunk's params are drawn (or programmed) first, then the
    images are walked in ``eval_batch_size`` blocks, each evaluated once for all
    the chunk's trials by the trial-batched ``apply_fn``
    (:func:`trials_correct`): work that reads no per-trial value runs once per
    block, the params-only steps once per trial, and convolutions with per-trial
    kernels become matmuls against the stacked kernels, for any JAX model
    (flax, equinox, plain ``lax``). Keep ``chunk_size * eval_batch_size``
    cache-sized on CPU (the ``"auto"`` defaults do). Measured: ``benchmarks/byom.py``,
    ``benchmarks/mc_throughput.py``.
    """
    device_model = resolve_device_model(device_model, device, "evaluate")
    if not isinstance(num_trials, int | np.integer) or num_trials < 1:
        raise ValueError(f"num_trials must be a positive integer, got {num_trials!r}")
    check_key("key", key)
    check_crossbar("params", params, device_model.crossbar, fix=DEVICE_FIX)
    check_model_data(apply_fn, params, x, y)
    mask = verified_mask(params, verified)
    x, y = jnp.asarray(x), jnp.asarray(y)
    chunk_size, eval_batch_size, conv_path = resolve_sizes(
        apply_fn,
        params,
        x,
        num_trials,
        chunk_size,
        eval_batch_size,
        batched=crossbar_flags(params, device_model.crossbar),
        shard=shard,
    )

    if has_closed_form(device_model):
        std = device_model.effective_std(params, mask)

        def chunk(keys):
            return noisy_accuracies(
                keys,
                apply_fn,
                params,
                std,
                x,
                y,
                crossbar=device_model.crossbar,
                eval_batch_size=eval_batch_size,
            )

    else:

        def chunk(keys):
            return programmed_trials(
                keys,
                apply_fn,
                params,
                device_model,
                mask,
                x,
                y,
                eval_batch_size=eval_batch_size,
            )[:, 0]

    accs = run_chunks(
        trial_keys(key, num_trials),
        chunk,
        chunk_size=chunk_size,
        shard=shard,
        conv_path=conv_path,
    )
    return summarize(accs)
