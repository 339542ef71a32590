"""Monte Carlo accuracy under device variation: one trial as a pure function,
``vmap``-ed over trial keys in chunks, optionally sharded over local devices.

``T`` denotes Monte Carlo trials. Trial ``t`` draws its noise from
``fold_in(key, t)``: 100 trials are a prefix of 1,000, the result of a trial does
not depend on the chunk size or the number of devices, and the same trial keys
serve every method and every programming step (common random numbers).
"""

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from uswim_jax import _distributed
from uswim_jax._checks import check_model_data
from uswim_jax._tree import check_crossbar, crossbar_flags
from uswim_jax._trialbatch import nbytes_of as _nbytes_of
from uswim_jax._trialbatch import trial_batched
from uswim_jax._trialbatch import var_bytes as _var_bytes
from uswim_jax.device import (
    DEVICE_FIX,
    _noisy_leaf,
    add_noise,
    noise_like,
    verified_mask,
)

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
    half = 1.959963984540054 * std / jnp.asarray(np.sqrt(t), std.dtype)
    ci = jnp.stack([mean - half, mean + half], axis=-1)
    p1 = jnp.percentile(acc, 1.0, axis=-1)
    p5 = jnp.percentile(acc, 5.0, axis=-1)
    return MCStats(acc, mean, std, ci, p1, p5)


def trial_keys(key: jax.Array, num_trials: int, start: int = 0) -> jax.Array:
    """Keys ``fold_in(key, t)`` for ``t`` in ``[start, start + num_trials)``."""
    idx = jnp.arange(start, start + num_trials, dtype=jnp.uint32)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)


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
        pred = jnp.argmax(apply_fn(params, x), axis=-1)
        return jnp.sum(pred == y, dtype=jnp.int32)
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
        pred = jnp.argmax(apply(prepared, xi), axis=-1)
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
    template = jax.tree.map(
        lambda a, b: jax.ShapeDtypeStruct(a.shape[1:] if b else a.shape, a.dtype),
        stacked,
        batched,
    )
    if batch_size is None or batch_size >= n:
        tb = trial_batched(apply_fn, template, x, batched)
        pred = jnp.argmax(tb(stacked, x), axis=-1)
        return jnp.sum(pred == y[None], axis=1, dtype=jnp.int32)
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
        pred = jnp.argmax(tb.apply(prepared, xi), axis=-1)
        return jnp.sum(pred == yi[None], axis=1, dtype=jnp.int32)

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


def _check_chunk_size(chunk_size: Any) -> None:
    if chunk_size is not None and (
        not isinstance(chunk_size, int | np.integer) or chunk_size < 1
    ):
        raise ValueError(
            f"chunk_size must be a positive integer or None, got {chunk_size!r} "
            '(evaluate and sweep also take "auto")'
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


def run_chunks(
    keys: jax.Array,
    fn: Callable[[jax.Array], Any],
    *,
    chunk_size: int | None = None,
    shard: bool = False,
) -> Any:
    """Applies ``fn(keys) -> (T, ...)``, which evaluates a chunk of trials at
    once, to ``keys`` in chunks of ``chunk_size`` (``lax.map`` over the chunks,
    the remainder as one more chunk), and, with ``shard=True``, the trial axis
    split over all local devices (``jax.shard_map``). Results do not depend on
    ``chunk_size`` or the device count as long as ``fn``'s result for a trial
    does not depend on the other trials of its chunk."""
    _check_chunk_size(chunk_size)
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


#: ``chunk_size="auto"``: the share of the free memory the trials may take.
AUTO_MEMORY_FRACTION = 0.5
#: ``chunk_size="auto"`` on CPU: a chunk's working set for one image batch is
#: kept within this share of the last-level cache. Calibrated on LeNet (im2col)
#: with a 32 MiB L3 (2-core CPU): it picks 5 trials x 20 images, 4 x 40 and
#: 2 x 100 (10 to 20 MiB of estimated working set), each as fast as the best
#: chunk measured for its image batch; 20 x 10 or 25 x 16 ran slower.
AUTO_CACHE_FRACTION = 0.6
_FALLBACK_FREE_BYTES = 4 * 2**30
_FALLBACK_CACHE_BYTES = 32 * 2**20


def choose_chunk_size(
    num_trials: int,
    trial_bytes: int,
    budget_bytes: int,
    *,
    block_bytes: int | None = None,
    cache_bytes: int | None = None,
    min_chunk: int = 2,
) -> int:
    """How many trials to evaluate at once: a pure function of the sizes.

    1. Memory: at most ``budget_bytes // trial_bytes`` trials (at least 1).
    2. Cache (when ``cache_bytes`` is given, i.e. on CPU): at most
       ``cache_bytes // block_bytes`` trials, ``block_bytes`` being what one
       trial touches per image batch, but at least ``min_chunk``: ``vmap``-ing
       two trials already shares the first layer's input patches and gives the
       matmuls a trial axis (measured faster than one at a time on LeNet), and
       the cache only costs speed where the memory bound costs an OOM, so the
       memory bound still wins.
    3. At most ``num_trials``.
    4. Even chunks: the largest divisor of ``num_trials`` in ``(cap / 2,
       cap]`` when there is one, so ``lax.map`` has no remainder chunk to
       compile; else the cap.

    Examples:
        >>> choose_chunk_size(100, 2**20, 2**30)  # memory allows all
        100
        >>> choose_chunk_size(100, 2**20, 2**30, block_bytes=3 * 2**20,
        ...                   cache_bytes=16 * 2**20)  # 5 blocks fit, 5 | 100
        5
        >>> choose_chunk_size(100, 300 * 2**20, 2**30)  # 3 fit, 2 | 100
        2
    """
    if num_trials < 1 or trial_bytes < 1 or budget_bytes < 0:
        raise ValueError(
            "num_trials and trial_bytes must be positive and budget_bytes "
            f"non-negative, got {num_trials}, {trial_bytes}, {budget_bytes}"
        )
    cap = max(1, budget_bytes // trial_bytes)
    if cache_bytes is not None:
        if block_bytes is None or block_bytes < 1:
            raise ValueError("cache_bytes needs a positive block_bytes")
        cap = min(cap, max(min_chunk, cache_bytes // block_bytes))
    cap = min(cap, num_trials)
    for d in range(cap, cap // 2, -1):
        if num_trials % d == 0:
            return d
    return cap


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


def _free_memory_bytes(device: Any) -> int:
    if device.platform == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            return _FALLBACK_FREE_BYTES
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return _FALLBACK_FREE_BYTES


def _last_level_cache_bytes() -> int:
    """Size of the CPU's largest cache (Linux sysfs), else 32 MiB."""
    best = (0, 0)
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for name in os.listdir(base):
            try:
                with open(os.path.join(base, name, "level")) as f:
                    level = int(f.read())
                with open(os.path.join(base, name, "size")) as f:
                    size = f.read().strip()
            except (OSError, ValueError):
                continue
            unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:].upper(), 1)
            value = int(size[:-1] if unit > 1 else size) * unit
            best = max(best, (level, value))
    except (OSError, ValueError):
        pass
    return best[1] or _FALLBACK_CACHE_BYTES


def auto_chunk_size(
    apply_fn: ApplyFn,
    params: Any,
    x: Any,
    num_trials: int,
    eval_batch_size: int | None = None,
    *,
    shard: bool = False,
) -> int:
    """``chunk_size="auto"``: :func:`choose_chunk_size` with sizes estimated for
    this model and data on the first local device.

    - One trial holds a noisy copy of the params, the noise and its random
      bits and the prepared params (4 x the params' bytes), plus the activations
      of one forward pass over ``eval_batch_size`` images
      (:func:`forward_bytes`); twice that is budgeted per trial.
    - The budget is :data:`AUTO_MEMORY_FRACTION` of the free memory:
      ``MemAvailable`` from ``/proc/meminfo`` on CPU, ``bytes_limit -
      bytes_in_use`` of the device's memory stats on GPU and TPU.
    - On CPU only, a chunk's working set per image batch (activations plus
      params of each trial) stays within :data:`AUTO_CACHE_FRACTION` of the
      last-level cache; on accelerators only the memory bounds the chunk.
    - The activations are those of the trial-batched forward pass that
      :func:`evaluate` runs (:func:`uswim_jax._trialbatch.trial_batched`, one
      trial), im2col patches included; any model gets several trials (its
      convolutions with per-trial kernels are matmuls, not grouped
      convolutions).

    With ``shard=True`` the trials per device are what is chunked. The choice is
    made when traced (under ``jit``, once per compilation).
    """
    n = int(np.shape(x)[0])
    b = n if eval_batch_size is None else min(int(eval_batch_size), n)
    xb = jax.ShapeDtypeStruct((b, *np.shape(x)[1:]), jnp.result_type(x))
    # The activations of one trial as evaluate runs it: trial-batched, with
    # the im2col patches of the rewritten convolutions.
    one = jax.tree.map(
        lambda p: jax.ShapeDtypeStruct((1, *np.shape(p)), jnp.result_type(p)), params
    )
    tb = trial_batched(apply_fn, params, xb)
    activations = _peak_bytes(jax.make_jaxpr(tb)(one, xb).jaxpr)
    param_bytes = sum(
        _nbytes_of(np.shape(p), jnp.result_type(p)) for p in jax.tree.leaves(params)
    )
    device = jax.local_devices()[0]
    cache = None
    if device.platform == "cpu":
        cache = int(AUTO_CACHE_FRACTION * _last_level_cache_bytes())
    t = num_trials
    if shard and jax.local_device_count() > 1:
        t = -(-num_trials // jax.local_device_count())
    return choose_chunk_size(
        t,
        2 * (activations + 4 * param_bytes),
        int(AUTO_MEMORY_FRACTION * _free_memory_bytes(device)),
        block_bytes=max(1, activations + param_bytes),
        cache_bytes=cache,
    )


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
    chunk_size: int | str | None = "auto",
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
            memory. ``None``: all at once. ``"auto"`` (default): chosen from the
            model's and data's sizes, the free memory and, on CPU, the cache
            (:func:`auto_chunk_size`, :func:`choose_chunk_size`). The
            accuracies do not depend on it.
        eval_batch_size: images per forward pass inside a trial; ``None``: all.
        shard: split the trials over all local devices.

    Returns:
        :class:`MCStats` with per-trial accuracies and their summary.

    Raises:
        ValueError: bad ``num_trials``; data that do not fit the model (empty,
            NaN, labels that are not integer class indices ``(N,)`` in
            ``[0, C)``, logits not of shape ``(N, C)``: see
            ``uswim_jax._checks.check_model_data``); NaN params; params with no
            crossbar leaf; or a ``verified`` mask that does not match ``params``.

    Performance: a chunk's noise is drawn first (the same draw per trial as
    :func:`noisy_accuracy`), then the images are walked in ``eval_batch_size``
    blocks, each evaluated once for all the chunk's trials by the
    trial-batched ``apply_fn`` (:func:`trials_correct`): work that reads no
    per-trial value runs once per block, the params-only steps once per trial,
    and convolutions with per-trial kernels become matmuls against the stacked
    kernels, for any JAX model (flax, equinox, plain ``lax``). Keep
    ``chunk_size * eval_batch_size`` cache-sized on CPU (``"auto"`` does).
    Measured: ``benchmarks/byom.py``, ``benchmarks/mc_throughput.py``.
    """
    if not isinstance(num_trials, int | np.integer) or num_trials < 1:
        raise ValueError(f"num_trials must be a positive integer, got {num_trials!r}")
    check_crossbar("params", params, device.crossbar, fix=DEVICE_FIX)
    check_model_data(apply_fn, params, x, y)
    std = device.effective_std(params, verified_mask(params, verified))
    x, y = jnp.asarray(x), jnp.asarray(y)
    if chunk_size == "auto":
        chunk_size = auto_chunk_size(
            apply_fn, params, x, num_trials, eval_batch_size, shard=shard
        )

    def chunk(keys):
        return noisy_accuracies(
            keys,
            apply_fn,
            params,
            std,
            x,
            y,
            crossbar=device.crossbar,
            eval_batch_size=eval_batch_size,
        )

    accs = run_chunks(
        trial_keys(key, num_trials), chunk, chunk_size=chunk_size, shard=shard
    )
    return summarize(accs)
