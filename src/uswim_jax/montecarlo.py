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

from uswim_jax._checks import check_finite_tree
from uswim_jax.device import noise_like, verified_mask

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
    half = 1.959963984540054 * std / np.sqrt(t)
    ci = jnp.stack([mean - half, mean + half], axis=-1)
    p1 = jnp.percentile(acc, 1.0, axis=-1)
    p5 = jnp.percentile(acc, 5.0, axis=-1)
    return MCStats(acc, mean, std, ci, p1, p5)


def trial_keys(key: jax.Array, num_trials: int, start: int = 0) -> jax.Array:
    """Keys ``fold_in(key, t)`` for ``t`` in ``[start, start + num_trials)``."""
    idx = jnp.arange(start, start + num_trials, dtype=jnp.uint32)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)


def correct_count(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    batch_size: int | None = None,
) -> jax.Array:
    """Number of correct top-1 predictions over ``x``; evaluated in batches of
    ``batch_size`` (the last one padded and masked) when given."""
    n = x.shape[0]
    if batch_size is None or batch_size >= n:
        pred = jnp.argmax(apply_fn(params, x), axis=-1)
        return jnp.sum(pred == y, dtype=jnp.int32)
    nb = -(-n // batch_size)
    pad = nb * batch_size - n
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
    yp = jnp.concatenate([y, jnp.full((pad,), -1, y.dtype)])
    xb = xp.reshape(nb, batch_size, *x.shape[1:])
    yb = yp.reshape(nb, batch_size)

    def one(args):
        xi, yi = args
        pred = jnp.argmax(apply_fn(params, xi), axis=-1)
        return jnp.sum(pred == yi, dtype=jnp.int32)

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
    noisy = jax.tree.map(lambda w, s, n: (w + s * n).astype(w.dtype), params, std, z)
    correct = correct_count(apply_fn, noisy, x, y, eval_batch_size)
    return correct.astype(jnp.float32) / jnp.float32(x.shape[0])


def run_trials(
    keys: jax.Array,
    fn: Callable[[jax.Array], jax.Array],
    *,
    chunk_size: int | None = None,
    shard: bool = False,
) -> jax.Array:
    """Applies ``fn(key) -> scalar`` to each key: ``vmap`` within chunks of
    ``chunk_size`` trials (``lax.map``), and, with ``shard=True``, the trial axis
    split over all local devices (``jax.shard_map``). Results do not depend on
    ``chunk_size`` or the device count."""
    t = keys.shape[0]
    if not shard or jax.local_device_count() == 1:
        if chunk_size is None or chunk_size >= t:
            return jax.vmap(fn)(keys)
        return jax.lax.map(fn, keys, batch_size=chunk_size)
    devices = np.asarray(jax.local_devices())
    n_dev = len(devices)
    per = -(-t // n_dev)
    pad = per * n_dev - t
    padded = jnp.concatenate([keys, keys[:pad]]) if pad else keys
    mesh = jax.sharding.Mesh(devices, ("trials",))
    spec = jax.sharding.PartitionSpec("trials")

    def local(k):
        if chunk_size is None or chunk_size >= per:
            return jax.vmap(fn)(k)
        return jax.lax.map(fn, k, batch_size=chunk_size)

    out = jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec)(padded)
    return out[:t]


def _check_data(x: Any, y: Any) -> None:
    if np.ndim(x) < 1 or np.shape(x)[0] == 0:
        raise ValueError(f"x must hold at least one sample, got shape {np.shape(x)}")
    if np.shape(y) != (np.shape(x)[0],):
        raise ValueError(
            f"y must have shape ({np.shape(x)[0]},) to match x, got {np.shape(y)}"
        )
    check_finite_tree("x", x)


def evaluate(
    key: jax.Array,
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    device: Any,
    verified: Any = None,
    num_trials: int = 100,
    *,
    chunk_size: int | None = None,
    eval_batch_size: int | None = None,
    shard: bool = False,
) -> MCStats:
    """Accuracy of ``apply_fn`` over ``(x, y)`` under ``num_trials`` noise
    instances of ``device``.

    Args:
        key: the base key; trial ``t`` uses ``fold_in(key, t)``. The key is
            consumed.
        apply_fn: ``apply_fn(params, x) -> logits``.
        params: the trained params pytree.
        x, y: test images and int labels.
        device: a Gaussian device model (``UniformVariation``,
            ``StateDependentVariation``, ``LevelTableVariation``).
        verified: ``None`` (nothing verified) or a boolean pytree like ``params``.
        num_trials: T.
        chunk_size: trials evaluated at once (``lax.map`` batch size); bounds
            memory. ``None``: all at once.
        eval_batch_size: images per forward pass inside a trial; ``None``: all.
        shard: split the trials over all local devices.

    Returns:
        :class:`MCStats` with per-trial accuracies and their summary.

    Raises:
        ValueError: bad ``num_trials``, empty or mismatched data, NaN params, or
            a ``verified`` mask that does not match ``params``.

    Performance (CPU): each trial's noise is drawn once per chunk, and the
    images are walked in ``eval_batch_size`` blocks with the chunk's trials
    ``vmap``-ed, so keep ``chunk_size * eval_batch_size`` at a few dozen to a few
    hundred image-trials (cache-sized). XLA's CPU convolution with per-trial
    kernels is slow under ``vmap``; a model whose convolutions are matmuls
    (``build_model(..., conv_impl="im2col")``) is several times faster. Measured
    settings: ``benchmarks/mc_throughput.py``.
    """
    if not isinstance(num_trials, int | np.integer) or num_trials < 1:
        raise ValueError(f"num_trials must be a positive integer, got {num_trials!r}")
    _check_data(x, y)
    check_finite_tree("params", params)
    std = device.effective_std(params, verified_mask(params, verified))
    x, y = jnp.asarray(x), jnp.asarray(y)

    def trial(k):
        return noisy_accuracy(
            k,
            apply_fn,
            params,
            std,
            x,
            y,
            crossbar=device.crossbar,
            eval_batch_size=eval_batch_size,
        )

    accs = run_trials(
        trial_keys(key, num_trials), trial, chunk_size=chunk_size, shard=shard
    )
    return summarize(accs)
