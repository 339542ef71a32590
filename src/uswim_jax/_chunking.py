"""How many Monte Carlo trials and images to evaluate at once: memory and
cache probing (free memory, last-level cache) and the choices made from them
(``chunk_size="auto"`` and ``eval_batch_size="auto"`` of
:func:`uswim_jax.evaluate` and :func:`uswim_jax.sweep`)."""

import contextlib
import os
import time
import weakref
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uswim_jax import _measure_cache
from uswim_jax._distributed import from_writer
from uswim_jax._jaxpr import ApplyFn, _peak_bytes, nbytes_of
from uswim_jax._tree import abstract
from uswim_jax._trialbatch import (
    CONV_TIE,
    VMAP,
    _compiled,
    _device_kind,
    _fill,
    _time_call,
    _time_calls,
    conv_paths,
    conv_policy,
    program_digest,
    trial_batched,
)

#: ``chunk_size="auto"``: the share of the free memory the trials may take.
AUTO_MEMORY_FRACTION = 0.5
#: ``chunk_size="auto"`` and ``eval_batch_size="auto"`` on CPU: a chunk's
#: working set for one image batch (its trials' peak activations, im2col
#: patches included, and params) is kept within this share of the last-level
#: cache. Calibrated on LeNet over 2,000 images with a 32 MiB L3 (2-core CPU):
#: it picks 4 trials x 40 images (24 MiB estimated), the fastest LeNet setting
#: of ``python -m benchmarks.mc_throughput`` (``benchmarks/results/
#: mc_throughput.json``: 57.4 trials/s against 55.7 for 6 x 40, 54.7 for
#: 5 x 40 and 45.3 for 5 x 20, the choice of the earlier 0.6).
AUTO_CACHE_FRACTION = 0.8
#: ``eval_batch_size="auto"`` on CPU: the image batch is the largest that lets
#: this many trials' working sets fit the cache share above (4 trials x 40
#: images on LeNet, the fastest LeNet setting measured).
AUTO_BATCH_TRIALS = 4
#: ``eval_batch_size="auto"`` on CPU: the image batch is a multiple of this
#: (the images are the minor axis of the trial-batched activations, so a
#: multiple of the float32 vector width leaves no remainder loop; compare
#: image batches with ``python -m benchmarks.mc_throughput --grid 4:24,4:25,...``).
AUTO_BATCH_MULTIPLE = 8
#: ``eval_batch_size="auto"`` on CPU: never fewer images than this per forward
#: pass (a model whose single trial overflows the cache, e.g. ResNet-18, still
#: gets matmuls wide enough to run at speed).
AUTO_MIN_EVAL_BATCH = 16
#: ``chunk_size="auto"`` on CPU: one trial at a time where more than this
#: share of a trial's multiply-accumulates are its own (:func:`own_mac_share`).
#: Measured by ``python -m benchmarks.byom`` on 2 CPU cores
#: (``benchmarks/results/byom.json``, the ``"measure"`` candidates timed side
#: by side, ms per trial): a two-block transformer (share 1) 7.5 one trial at
#: a time against 11.2 five at a time, the project's vision transformer (share
#: 0.99) 24.0 against 35.2 four at a time; an MLP and an RNN (share 1) lose
#: up to 12 % one at a time there (3.21 against 2.82, 5.63 against 5.03; in
#: byom's ``evaluate`` rows, one at a time, 0.83x and 1.09x their serial
#: loops). The CNNs, where running trials together pays, have shares of 0
#: (ResNet-18) and 0.03 (ConvNet) to 0.33 (LeNet's dense head); any threshold
#: between 0.33 and 0.99 makes the same choices on these models.
AUTO_OWN_MAC_SHARE = 0.5
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


def choose_eval_batch_size(
    num_images: int,
    image_bytes: int,
    fixed_bytes: int,
    cache_bytes: int,
    *,
    trials: int = AUTO_BATCH_TRIALS,
    min_batch: int = AUTO_MIN_EVAL_BATCH,
    multiple: int = AUTO_BATCH_MULTIPLE,
) -> int:
    """Images per forward pass: a pure function of the sizes.

    1. The most images ``b`` with ``trials * (fixed_bytes + b * image_bytes) <=
       cache_bytes``: ``trials`` trials' working sets in the cache, one trial's
       being ``fixed_bytes`` (its params and what does not grow with the images)
       plus ``image_bytes`` per image.
    2. At least ``min_batch``; all ``num_images`` when they fit (one pass).
    3. Otherwise a multiple of ``multiple``: the largest one in ``(b / 2, b]``
       that divides ``num_images`` when there is one (no padded last batch),
       else the smallest one that covers the images in as many batches as the
       largest one up to ``b`` needs, so the padding of the last batch is less
       than ``multiple`` images per batch, not up to a whole batch (500 images
       at most 464 a pass: 2 x 256, not 2 x 464).

    Examples:
        >>> choose_eval_batch_size(2000, 2**17, 2**20, 25 * 2**20)  # LeNet-sized
        40
        >>> choose_eval_batch_size(2000, 2**20, 2**25, 25 * 2**20)  # too big
        16
        >>> choose_eval_batch_size(1000, 2**17, 2**20, 25 * 2**20)  # 8 | 40 | 1000
        40
        >>> choose_eval_batch_size(999, 2**17, 2**20, 25 * 2**20)  # last padded
        40
        >>> choose_eval_batch_size(500, 2**14, 2**20, 32 * 2**20)  # 2 x 256
        256
        >>> choose_eval_batch_size(10, 2**10, 2**10, 25 * 2**20)  # all fit
        10
    """
    if (
        num_images < 1
        or image_bytes < 1
        or fixed_bytes < 0
        or trials < 1
        or multiple < 1
    ):
        raise ValueError(
            "num_images, image_bytes, trials and multiple must be positive and "
            f"fixed_bytes non-negative, got {num_images}, {image_bytes}, "
            f"{trials}, {multiple} and {fixed_bytes}"
        )
    b = int(max(min_batch, (cache_bytes // trials - fixed_bytes) // image_bytes))
    if b >= num_images:
        return int(num_images)
    top = max(multiple, b - b % multiple)
    for d in range(top, b // 2, -multiple):
        if num_images % d == 0:
            return d
    per_batch = -(-num_images // -(-num_images // top))  # ceil(n / batches)
    return -(-per_batch // multiple) * multiple


# Per apply_fn (held weakly): {(param shapes, flags, image shape, batch): the
# bytes and multiply-accumulates of one trial}.
_ONE_TRIAL: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _one_trial(
    apply_fn: ApplyFn, params: Any, x: Any, b: int, batched: Any = None
) -> tuple[int, dict]:
    """One trial of the trial-batched forward pass over ``b`` images, as
    :func:`uswim_jax.evaluate` runs it (``batched`` flags the leaves that carry
    per-trial noise; default all): ``(bytes, macs)``.

    - ``bytes``: the peak bytes of the values ``apply`` makes per image batch
      (im2col patches included); what ``prepare`` makes once per chunk
      (kernels in matrix form or cut per trial) is budgeted with the params
      (:func:`auto_chunk_size`).
    - ``macs``: the multiply-accumulates of its convolutions and matmuls by
      how trial batching runs them
      (:data:`uswim_jax._trialbatch.MAC_KINDS`).

    Cached per ``apply_fn`` by the shapes, dtypes and flags, so repeated
    un-jitted calls trace the model once."""
    tree = jax.tree.structure(params)
    structs = [abstract(p) for p in jax.tree.leaves(params)]
    flags = _flags(params, batched)
    xb = abstract(x, (b, *np.shape(x)[1:]))
    shape_key = (
        tree,
        tuple((s.shape, str(s.dtype), s.weak_type) for s in structs),
        tuple(flags),
        (xb.shape, str(xb.dtype)),
    )
    try:
        known = _ONE_TRIAL.setdefault(apply_fn, {})
    except TypeError:  # not weakly referenceable (e.g. a builtin): no cache
        known = {}
    if shape_key not in known:
        one = tree.unflatten(_stacked_structs(structs, flags, 1))
        # sizes only: the rule's paths (no timing), kept out of conv_path_log
        tb = trial_batched(apply_fn, params, xb, tree.unflatten(flags), "rule")
        tb.record = False
        jaxpr, macs = tb.apply_jaxpr(one, xb)
        known[shape_key] = (_peak_bytes(jaxpr), macs)
    return known[shape_key]


def _flags(params: Any, batched: Any) -> list[bool]:
    """``batched`` (a pytree of bools like ``params``; ``None``: every leaf)
    as one bool per leaf of ``params``."""
    if batched is None:
        return [True] * jax.tree.structure(params).num_leaves
    return [bool(f) for f in jax.tree.structure(params).flatten_up_to(batched)]


def _stacked_structs(structs: list, flags: list, t: int) -> list:
    """``structs`` (one trial's leaves) for ``t`` trials: a leading trial axis
    on the flagged ones, the others (shared by every trial) as they are."""
    return [
        jax.ShapeDtypeStruct((t, *s.shape), s.dtype, weak_type=s.weak_type) if f else s
        for s, f in zip(structs, flags, strict=True)
    ]


def _one_trial_bytes(
    apply_fn: ApplyFn, params: Any, x: Any, b: int, batched: Any = None
) -> int:
    """The ``bytes`` of :func:`_one_trial`."""
    return _one_trial(apply_fn, params, x, b, batched)[0]


def own_mac_share(
    apply_fn: ApplyFn, params: Any, x: Any, b: int, batched: Any = None
) -> float:
    """The share of one trial's multiply-accumulates over ``b`` images that are
    that trial's own (``"per_trial"`` of
    :data:`uswim_jax._trialbatch.MAC_KINDS`: dense layers with per-trial
    kernels, products of per-trial activations), of which running trials
    together computes nothing once for several; 0 for a model with no
    convolution or matmul."""
    macs = _one_trial(apply_fn, params, x, b, batched)[1]
    total = sum(macs.values())
    return macs["per_trial"] / total if total else 0.0


def _param_bytes(params: Any) -> int:
    return sum(
        nbytes_of(np.shape(p), jnp.result_type(p)) for p in jax.tree.leaves(params)
    )


def auto_eval_batch_size(
    apply_fn: ApplyFn,
    params: Any,
    x: Any,
    eval_batch_size: int | str | None,
    batched: Any = None,
) -> int | None:
    """``eval_batch_size`` as :func:`uswim_jax.evaluate` runs it: an int or
    ``None`` (all images) as given; ``"auto"``: on CPU
    :func:`choose_eval_batch_size` (a multiple of :data:`AUTO_BATCH_MULTIPLE`)
    with this model's sizes (one trial's activations traced at 1 and 64
    images, the difference per image, once per apply_fn, shapes and
    ``batched`` flags, :func:`_one_trial`; the cache share of
    :data:`AUTO_CACHE_FRACTION`); on accelerators ``None``.

    Raises:
        ValueError: ``eval_batch_size`` not ``"auto"``, ``None`` or a positive
            integer.
    """
    if eval_batch_size is None:
        return None
    if isinstance(eval_batch_size, str) and eval_batch_size == "auto":
        if jax.local_devices()[0].platform != "cpu":
            return None
        n = int(np.shape(x)[0])
        big = min(n, 64)
        a1 = _one_trial_bytes(apply_fn, params, x, 1, batched)
        per = max(
            1,
            (_one_trial_bytes(apply_fn, params, x, big, batched) - a1)
            // max(1, big - 1),
        )
        return choose_eval_batch_size(
            n,
            per,
            max(0, a1 - per) + _param_bytes(params),
            int(AUTO_CACHE_FRACTION * _last_level_cache_bytes()),
        )
    if (
        isinstance(eval_batch_size, bool)
        or not isinstance(eval_batch_size, int | np.integer)
        or eval_batch_size < 1
    ):
        raise ValueError(
            'eval_batch_size must be "auto", None or a positive integer, '
            f"got {eval_batch_size!r}"
        )
    return int(eval_batch_size)


class Sizes(NamedTuple):
    """How :func:`uswim_jax.evaluate`, :func:`uswim_jax.sweep` and
    :func:`uswim_jax.program_chips` run their trials: ``chunk_size`` trials at
    once over ``eval_batch_size`` images per forward pass (``None``: all), the
    trial-batched program under ``conv_path`` (a :func:`uswim_jax.conv_paths`
    policy; ``None``: the current one)."""

    chunk_size: Any
    eval_batch_size: int | None
    conv_path: str | None = None


def resolve_sizes(
    apply_fn: ApplyFn,
    params: Any,
    x: Any,
    num_trials: int,
    chunk_size: int | str | None = "auto",
    eval_batch_size: int | str | None = "auto",
    *,
    batched: Any = None,
    shard: bool = False,
) -> Sizes:
    """:class:`Sizes` as :func:`uswim_jax.evaluate`, :func:`uswim_jax.sweep`
    and :func:`uswim_jax.program_chips` run them: the image batch first
    (:func:`auto_eval_batch_size`), then, for ``chunk_size="auto"``, the chunk
    for that batch (:func:`auto_chunk_size`); for ``chunk_size="measure"``
    the timed choice of :func:`measure_sizes` (``batched`` flags the leaves
    that carry per-trial noise, for all three; default all), the only one
    that may set ``conv_path``; other values pass through (the image batch
    validated). With several processes every one runs process 0's sizes (each
    probed its own memory and cache, and all must compile the same
    program)."""
    if isinstance(chunk_size, str) and chunk_size == "measure":
        return measure_sizes(
            apply_fn,
            params,
            x,
            num_trials,
            eval_batch_size,
            batched=batched,
            shard=shard,
        )
    eval_batch_size = auto_eval_batch_size(
        apply_fn, params, x, eval_batch_size, batched
    )
    if isinstance(chunk_size, str) and chunk_size == "auto":
        chunk_size = auto_chunk_size(
            apply_fn, params, x, num_trials, eval_batch_size, batched, shard=shard
        )
    if chunk_size is not None and not isinstance(chunk_size, int | np.integer):
        return Sizes(chunk_size, eval_batch_size)  # refused by the caller, by name
    return _agreed_sizes(Sizes(chunk_size, eval_batch_size))


#: ``Sizes.conv_path`` values that cross processes (:func:`_agreed_sizes`).
_AGREED_PATHS = (None, VMAP)


def _agreed_sizes(sizes: Sizes) -> Sizes:
    """``sizes`` as process 0 has them, on every process (identity with one
    process). Every process reaches it at the same point of the same trace
    (an all-gather run at once)."""
    if jax.process_count() == 1:
        return sizes
    c, b, path = sizes
    got = from_writer(
        np.asarray(
            [-1 if v is None else int(v) for v in (c, b)] + [_AGREED_PATHS.index(path)]
        )
    )
    c, b = (None if v < 0 else int(v) for v in got[:2])
    return Sizes(c, b, _AGREED_PATHS[int(got[2])])


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
    batched: Any = None,
    *,
    shard: bool = False,
) -> int:
    """``chunk_size="auto"``: how many trials to run at once on the first local
    device, for this model and data (``batched`` flags the leaves that carry
    per-trial noise; default all).

    - On CPU, one trial at a time where more than :data:`AUTO_OWN_MAC_SHARE`
      of one trial's multiply-accumulates are its own
      (:func:`own_mac_share`: dense layers with per-trial kernels, products of
      per-trial activations): running such trials together shares almost no
      work, and on a transformer and a vision transformer the trial axis slows
      XLA's matmuls and the steps between them by about 1.5x (an MLP and an RNN
      lose up to 12 % one at a time: :data:`AUTO_OWN_MAC_SHARE`).
    - Otherwise :func:`choose_chunk_size` with this model's sizes:

      - one trial holds a noisy copy of the params, the noise and its random
        bits and the prepared params (4 x the params' bytes), plus the
        activations of one trial-batched forward pass over ``eval_batch_size``
        images (:func:`_one_trial`, im2col patches included); twice that is
        budgeted per trial;
      - the budget is :data:`AUTO_MEMORY_FRACTION` of the free memory:
        ``MemAvailable`` from ``/proc/meminfo`` on CPU, ``bytes_limit -
        bytes_in_use`` of the device's memory stats on GPU and TPU;
      - on CPU only, a chunk's working set per image batch (activations plus
        params of each trial) stays within :data:`AUTO_CACHE_FRACTION` of the
        last-level cache; on accelerators only the memory bounds the chunk.

    With ``shard=True`` the trials per device are what is chunked. The choice is
    made when traced (under ``jit``, once per compilation).
    """
    n = int(np.shape(x)[0])
    b = n if eval_batch_size is None else min(int(eval_batch_size), n)
    if (
        jax.local_devices()[0].platform == "cpu"
        and own_mac_share(apply_fn, params, x, b, batched) > AUTO_OWN_MAC_SHARE
    ):
        return 1
    return _sized_chunk(apply_fn, params, x, num_trials, b, batched, shard)


def _sized_chunk(
    apply_fn: ApplyFn,
    params: Any,
    x: Any,
    num_trials: int,
    b: int,
    batched: Any,
    shard: bool,
) -> int:
    """:func:`choose_chunk_size` with this model's sizes over ``b`` images
    (the second part of :func:`auto_chunk_size`)."""
    activations = _one_trial_bytes(apply_fn, params, x, b, batched)
    param_bytes = _param_bytes(params)
    device = jax.local_devices()[0]
    cache = None
    if device.platform == "cpu":
        cache = int(AUTO_CACHE_FRACTION * _last_level_cache_bytes())
    return choose_chunk_size(
        _trials_per_device(num_trials, shard),
        2 * (activations + 4 * param_bytes),
        int(AUTO_MEMORY_FRACTION * _free_memory_bytes(device)),
        block_bytes=max(1, activations + param_bytes),
        cache_bytes=cache,
    )


# -- chunk_size="measure" ---------------------------------------------------------

_MEASURED_SIZES: dict = {}  # signature -> the measurement (measure_sizes)
_SIZE_DECISIONS: dict = {}  # signature -> how it last ran (measured_sizes_log)


def _trials_per_device(num_trials: int, shard: bool) -> int:
    if shard and jax.local_device_count() > 1:
        return -(-num_trials // jax.local_device_count())
    return num_trials


def _label(sizes: Sizes) -> str:
    c, b, path = sizes
    return f"{c} x {'all' if b is None else b}" + (f", {path}" if path else "")


def size_candidates(
    apply_fn: ApplyFn,
    params: Any,
    x: Any,
    num_trials: int,
    eval_batch_size: int | str | None = "auto",
    *,
    batched: Any = None,
    shard: bool = False,
) -> list[Sizes]:
    """What ``chunk_size="measure"`` times, as :class:`Sizes` (the image batch
    ``None`` for all images at once); the rule's choice (:func:`resolve_sizes` with
    ``chunk_size="auto"``) first, as it wins ties:

    - image batches: the rule's (``eval_batch_size="auto"``:
      :func:`auto_eval_batch_size`; else the one given) and, for ``"auto"``,
      all images at once where one trial's forward pass over them fits the
      memory budget of :func:`auto_chunk_size`;
    - chunks, for each image batch: :func:`auto_chunk_size`'s, the chunk its
      sizes alone give (where it chose one trial at a time for a model whose
      matmuls are mostly each trial's own) and 1 (a trial at a time, fastest
      on some models whose single trial already runs as large matmuls), under
      the current :func:`uswim_jax.conv_paths` policy;
    - with all images at once, also one trial at a time under ``"vmap"``
      (nothing rewritten: the program of a loop over trials, fastest where
      XLA runs the model's own forward pass faster than the trial-batched
      one even at one trial).
    """
    n = int(np.shape(x)[0])

    def whole(b):
        return None if b is None or b >= n else int(b)

    batches = [
        whole(auto_eval_batch_size(apply_fn, params, x, eval_batch_size, batched))
    ]
    if (
        isinstance(eval_batch_size, str)
        and batches[0] is not None
        and 2
        * (_one_trial_bytes(apply_fn, params, x, n, batched) + 4 * _param_bytes(params))
        <= AUTO_MEMORY_FRACTION * _free_memory_bytes(jax.local_devices()[0])
    ):
        batches.append(None)
    out = []
    for b in batches:
        m = n if b is None else b
        for c in (
            auto_chunk_size(apply_fn, params, x, num_trials, b, batched, shard=shard),
            _sized_chunk(apply_fn, params, x, num_trials, m, batched, shard),
            1,
        ):
            if Sizes(c, b) not in out:
                out.append(Sizes(c, b))
    if batches[-1] is None and conv_policy() != VMAP:
        out.append(Sizes(1, None, VMAP))
    return out


def _fits_at_once(nbytes: int) -> bool:
    """Whether ``nbytes`` more (every ``"measure"`` candidate's filled params)
    fit :data:`AUTO_MEMORY_FRACTION` of the first local device's free memory."""
    return nbytes <= AUTO_MEMORY_FRACTION * _free_memory_bytes(jax.local_devices()[0])


def measure_sizes(
    apply_fn: ApplyFn,
    params: Any,
    x: Any,
    num_trials: int,
    eval_batch_size: int | str | None = "auto",
    *,
    batched: Any = None,
    shard: bool = False,
) -> Sizes:
    """``chunk_size="measure"``: the :class:`Sizes` of :func:`size_candidates`
    under which this model's trials run fastest.

    Each candidate's chunk of trials is timed through the trial-batched
    forward pass (under the candidate's policy) and top-1 count over all of
    ``x``'s images in its image batches
    (:func:`uswim_jax.montecarlo.trials_correct`; params and images
    filled with 0.5: the timing does not depend on the values; compiled ahead
    of time, one warm-up call, the fastest of at least 3 calls), per trial.
    The candidates take turns, round after round
    (:func:`uswim_jax._trialbatch._time_calls`), so that a change of load
    meets all of them, where all their filled params fit
    :data:`AUTO_MEMORY_FRACTION` of the free memory at once (the images are
    shared); else each is timed in its own block, one candidate's params held
    at a time. A candidate within :data:`uswim_jax._trialbatch.CONV_TIE` of
    the fastest wins when it comes earlier (the rule's sizes first). What it
    costs is one compilation and a few chunks per candidate, the first time
    per model, shapes and machine: the choice is kept in memory and in the file of
    :mod:`uswim_jax._measure_cache` (``$USWIM_CONV_CACHE``), which later
    processes read. With several processes each times its own, and all run
    process 0's choice (logged with ``"chosen_by"``, and ``"own_choice"``
    where this process's timing differed).
    :func:`measured_sizes_log` says what was timed and chosen. The accuracies
    do not depend on the sizes (beyond float rounding of the image batch).
    """
    from uswim_jax.montecarlo import trials_correct  # montecarlo imports this

    cands = size_candidates(
        apply_fn, params, x, num_trials, eval_batch_size, batched=batched, shard=shard
    )
    labels = [_label(c) for c in cands]
    leaves, tree = jax.tree.flatten(params)
    flags = _flags(params, batched)
    structs = [abstract(p) for p in leaves]
    x_struct, n = abstract(x), int(np.shape(x)[0])
    program = jax.make_jaxpr(apply_fn)(jax.tree.unflatten(tree, structs), x_struct)
    t = _trials_per_device(num_trials, shard)
    sig = repr(
        (
            "sizes",
            jax.default_backend(),
            _device_kind(),
            program_digest(program),
            [(s.shape, str(s.dtype)) for s in structs],
            flags,
            (x_struct.shape, str(x_struct.dtype)),
            t,
            labels,
            conv_policy(),
        )
    )
    if sig not in _MEASURED_SIZES:
        cached = _measure_cache.lookup(sig, labels)
        if cached is not None:
            _MEASURED_SIZES[sig] = {**cached, "reused": True}
    if sig not in _MEASURED_SIZES:
        t0 = time.perf_counter()
        y_struct = jax.ShapeDtypeStruct((n,), jnp.int32)
        programs = {}
        for (c, b, path), label in zip(cands, labels, strict=True):
            stacked = _stacked_structs(structs, flags, c)

            def run(ps, xs, ys, b=b):
                return trials_correct(
                    apply_fn,
                    jax.tree.unflatten(tree, ps),
                    jax.tree.unflatten(tree, flags),
                    xs,
                    ys,
                    b,
                )

            with conv_paths(path) if path else contextlib.nullcontext():
                programs[label] = (_compiled(run, stacked, x_struct, y_struct), stacked)
        xs, ys = _fill([x_struct, y_struct])
        held = sum(
            nbytes_of(a.shape, a.dtype) for _, st in programs.values() for a in st
        )
        if _fits_at_once(held):
            # every candidate's params filled at once: timed in turns
            secs = _time_calls(
                {lb: (run, (_fill(st), xs, ys)) for lb, (run, st) in programs.items()}
            )
        else:  # one candidate's params at a time
            secs = {
                lb: _time_call(run, _fill(st), xs, ys)
                for lb, (run, st) in programs.items()
            }
        ms = {
            lb: 1e3 * secs[lb] / c.chunk_size
            for lb, c in zip(labels, cands, strict=True)
        }
        fastest = min(ms.values())
        path = next(lb for lb in labels if ms[lb] <= fastest * (1 + CONV_TIE))
        _MEASURED_SIZES[sig] = {
            "model": f"{t} trials, {n} images",
            "path": path,
            "ms": ms,
            "seconds": time.perf_counter() - t0,
            "reused": False,
        }
        _measure_cache.remember(sig, _MEASURED_SIZES[sig])
    record = _MEASURED_SIZES[sig]
    sizes = _agreed_sizes(cands[labels.index(record["path"])])
    _SIZE_DECISIONS[sig] = {
        "trials": t,
        "images": n,
        "candidates": labels,
        "ms_per_trial": dict(record["ms"]),
        "chosen": _label(sizes),
        "seconds": record["seconds"],
        "reused": record["reused"],
        **({"cached": record["cached"]} if "cached" in record else {}),
    }
    if jax.process_count() > 1:
        _SIZE_DECISIONS[sig]["chosen_by"] = "process 0"
        if record["path"] != _label(sizes):
            _SIZE_DECISIONS[sig]["own_choice"] = record["path"]
    return sizes


def measured_sizes_log(clear: bool = False) -> list[dict]:
    """What each ``chunk_size="measure"`` choice of this process timed and
    chose: one dict per model and shapes, with ``"trials"`` (per device),
    ``"images"``, ``"candidates"`` (``"chunk x image batch"``, ``"all"`` for
    all images at once), ``"ms_per_trial"`` (each candidate's milliseconds
    per trial), ``"chosen"``, ``"seconds"`` (what timing took, compilations
    included) and ``"reused"`` (timed before: earlier in this process, or by
    an earlier process, then with ``"cached"``, the file). ``clear=True``
    empties the log after reading it (the choices stay cached)."""
    out = [dict(r) for r in _SIZE_DECISIONS.values()]
    if clear:
        _SIZE_DECISIONS.clear()
        for r in _MEASURED_SIZES.values():
            r["reused"] = True
    return out
