"""Selective write-verify as a ``lax.scan`` over programming steps.

Step ``k`` write-verifies the first ``counts[k]`` weights of an ``order``
(masks nest), evaluates every Monte Carlo trial with the same trial keys (common
random numbers across steps and methods) and records accuracy statistics and the
cumulative normalized write cycles. The result is a :class:`Curve`.

Each trial draws its noise once and scans over the steps with it (trials
outside, steps inside), so the draw is not repeated per step; the accuracies are
exactly those of :func:`uswim_jax.evaluate` at each step with the same key.

``K`` denotes programming steps (budget points), ``T`` trials.
"""

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uswim_jax._checks import check_key, check_model_data
from uswim_jax._protocol import has_closed_form, resolve_device_model
from uswim_jax._tree import check_crossbar, crossbar_flags, crossbar_size
from uswim_jax.device import DEVICE_FIX, noise_like
from uswim_jax.montecarlo import (
    ApplyFn,
    MCStats,
    noisy_accuracies,
    programmed_trials,
    resolve_sizes,
    run_chunks,
    stack_noisy,
    summarize,
    trial_keys,
    trials_correct,
)
from uswim_jax.selection import mask_from_order
from uswim_jax.stats import MARGINS as MARGINS
from uswim_jax.stats import Z95


class CyclesToTarget(NamedTuple):
    """Normalized write cycles needed to get within a margin of exhaustive
    write-verify; ``inf`` when the sweep never gets there."""

    value: float  # from the mean paired difference
    low: float  # optimistic end: upper 95 % bound of the difference
    high: float  # pessimistic end: lower 95 % bound of the difference

    @property
    def speedup(self) -> float:
        """Speedup over exhaustive write-verify, ``1 / value``."""
        return 1.0 / self.value if self.value > 0 else math.inf


class Curve(NamedTuple):
    """Accuracy against programming budget for one method and one device setting.

    Accuracies are fractions in [0, 1]; ``reference`` holds the per-trial
    accuracy with every weight verified (exhaustive write-verify) and
    ``baseline`` with none verified, both with the same trial keys as the steps.
    """

    counts: jax.Array  # (K,) verified weights after each step
    fractions: jax.Array  # (K,) verified fraction
    cycles: jax.Array  # (K,) normalized write cycles, plain writes counted
    cycles_verified_only: jax.Array  # (K,) normalized, verified devices only
    accuracies: jax.Array  # (K, T)
    reference: jax.Array  # (T,) exhaustive write-verify
    baseline: jax.Array  # (T,) no write-verify
    baseline_cycles: jax.Array  # (2,) NWC and NWC-v with nothing verified

    def stats(self) -> MCStats:
        """Per-step statistics (each field has a leading K axis)."""
        return summarize(self.accuracies)

    def paired_difference(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard error over trials of (step accuracy - exhaustive
        accuracy), per step, in percentage points. Common random numbers make the
        paired difference far less noisy than the two means."""
        d = 100.0 * (np.asarray(self.accuracies) - np.asarray(self.reference)[None])
        t = d.shape[1]
        se = d.std(axis=1, ddof=1) / np.sqrt(t) if t > 1 else np.zeros(d.shape[0])
        return d.mean(axis=1), se

    def cycles_to_target(
        self, margin: float, *, verified_only: bool = False
    ) -> CyclesToTarget:
        """Smallest normalized write cycles whose mean accuracy is within
        ``margin`` percentage points of exhaustive write-verify.

        Linear interpolation between budget points at the first crossing; the
        low and high ends use the 95 % bounds of the paired difference. The
        curve starts at the no-verify point (``baseline``, whose cost is the
        plain writes alone) and ends at exhaustive write-verify (cycles 1),
        which always meets the target.

        Args:
            margin: percentage points (0.5 means 0.5 % accuracy).
            verified_only: count only the verify cycles (``cycles_verified_only``).
        """
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        mean, se = self.paired_difference()
        d0 = 100.0 * (np.asarray(self.baseline) - np.asarray(self.reference))
        se0 = d0.std(ddof=1) / np.sqrt(len(d0)) if len(d0) > 1 else 0.0
        cycles = np.asarray(
            self.cycles_verified_only if verified_only else self.cycles, np.float64
        )
        start = float(np.asarray(self.baseline_cycles)[1 if verified_only else 0])
        # No-verify start point; exhaustive end point (difference 0, cycles 1).
        cycles = np.concatenate([[start], cycles, [1.0]])
        out = []
        for sign in (0.0, Z95, -Z95):
            curve = np.concatenate([[d0.mean() + sign * se0], mean + sign * se, [0.0]])
            out.append(_first_crossing(cycles, curve, -margin))
        return CyclesToTarget(*out)


def _first_crossing(x: np.ndarray, y: np.ndarray, target: float) -> float:
    ok = np.flatnonzero(y >= target)
    if len(ok) == 0:
        return math.inf
    k = int(ok[0])
    if k == 0 or y[k] == y[k - 1]:
        return float(x[k])
    w = (target - y[k - 1]) / (y[k] - y[k - 1])
    return float(x[k - 1] + w * (x[k] - x[k - 1]))


def counts_for_fractions(fractions: Sequence[float], n: int) -> np.ndarray:
    """``round(f * n)`` for each fraction, checked to lie in [0, 1] and sorted."""
    f = np.asarray(fractions, np.float64)
    if f.ndim != 1 or len(f) == 0:
        raise ValueError("fractions must be a non-empty 1-D sequence")
    if np.any(~np.isfinite(f)) or np.any(f < 0) or np.any(f > 1):
        raise ValueError(f"fractions must lie in [0, 1], got {list(fractions)}")
    if np.any(np.diff(f) < 0):
        raise ValueError("fractions must be non-decreasing")
    return np.round(f * n).astype(np.int32)


def sweep(
    key: jax.Array,
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    device_model: Any = None,
    order: jax.Array | None = None,
    counts: jax.Array | None = None,
    num_trials: int | None = None,
    *,
    chunk_size: int | str | None = "auto",
    eval_batch_size: int | str | None = "auto",
    shard: bool = False,
    reference: jax.Array | None = None,
    baseline: jax.Array | None = None,
    device: Any = None,
) -> Curve:
    """Selective write-verify along ``order``, one ``lax.scan`` step per budget.

    Args:
        key: base key; trial ``t`` uses ``fold_in(key, t)`` at every step. The
            key is consumed.
        apply_fn: ``apply_fn(params, x) -> logits``.
        params: trained params pytree.
        x, y: test images and labels.
        device_model: any :class:`~uswim_jax.DeviceModel` (a Gaussian model, whose
            ``verify_cycles`` setting prices a write-verify, a ``PulseModel``,
            whose cost is the pulses it spends, or a model of your own).
        order: from :func:`uswim_jax.global_order`: crossbar weights, most
            important first (required).
        counts: (K,) non-decreasing numbers of verified weights, one per step
            (e.g. :func:`counts_for_fractions`; required). May be traced:
            changing the budget does not recompile.
        num_trials: T (required).
        chunk_size, eval_batch_size, shard: as in :func:`uswim_jax.evaluate`
            (``"auto"``: :func:`uswim_jax.montecarlo.auto_chunk_size` and
            :func:`uswim_jax.montecarlo.auto_eval_batch_size`; ``"measure"``:
            :func:`uswim_jax.montecarlo.measure_sizes`, which times one
            evaluation of a chunk; chosen once for every step).
        reference, baseline: (T,) per-trial accuracies with every / no weight
            verified, when already computed with the same key (e.g. shared by
            the methods of one setting); computed here when ``None``.
        device: deprecated name of ``device_model`` (a ``DeprecationWarning``;
            removed in the next release).

    Returns:
        A :class:`Curve`.

    Raises:
        ValueError: on bad input, as :func:`uswim_jax.evaluate`, or a missing
            ``order``, or bad ``counts``.

    Two paths, as in :func:`uswim_jax.evaluate`. A model with a closed-form std
    (:class:`~uswim_jax.ClosedFormStd`) takes the fast path: each trial draws
    its noise once and every step rescales it (trials outside, steps inside);
    the cycles are the model's exact ``write_cycles(mask, params)``. Any other
    model programs every trial at every step
    (``program_with_cost(fold_in(key, t), params, mask)``, steps outside,
    trials inside) and its cycles are the mean over trials of each run's cost,
    normalized by the exhaustive cost ``E``: the ``total`` of one all-verified
    run with the key ``jax.random.split(key)[1]`` (a split, so it is no trial's
    ``fold_in(key, t)``). ``baseline_cycles`` is then one no-verify run with
    that key, over ``E``.
    """
    device_model = resolve_device_model(device_model, device, "sweep")
    if not isinstance(num_trials, int | np.integer) or num_trials < 1:
        raise ValueError(f"num_trials must be a positive integer, got {num_trials!r}")
    if order is None:
        raise ValueError("order is required (e.g. uswim_jax.global_order(scores))")
    if counts is None:
        raise ValueError("counts is required (e.g. counts_for_fractions(...))")
    check_key("key", key)
    check_crossbar("params", params, device_model.crossbar, fix=DEVICE_FIX)
    check_model_data(apply_fn, params, x, y)
    n = crossbar_size(params, device_model.crossbar)
    if np.ndim(counts) != 1:
        raise ValueError(f"counts must be 1-D, got shape {np.shape(counts)}")
    if not isinstance(counts, jax.core.Tracer):
        c = np.asarray(counts)
        if len(c) and (c.min() < 0 or c.max() > n or np.any(np.diff(c) < 0)):
            raise ValueError(f"counts must be non-decreasing integers in [0, {n}]")
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
    if not has_closed_form(device_model):
        return _programmed_sweep(
            key,
            apply_fn,
            params,
            x,
            y,
            device_model,
            order,
            counts,
            num_trials,
            n,
            chunk_size=chunk_size,
            eval_batch_size=eval_batch_size,
            shard=shard,
            conv_path=conv_path,
            reference=reference,
            baseline=baseline,
        )
    keys = trial_keys(key, num_trials)
    std_w, std_v = device_model.std(params)
    crossbar = device_model.crossbar

    def mask_std(mask):
        return jax.tree.map(lambda m, a, b: jnp.where(m, b, a), mask, std_w, std_v)

    def accuracies(mask):
        std = mask_std(mask)

        def chunk(k):
            return noisy_accuracies(
                k,
                apply_fn,
                params,
                std,
                x,
                y,
                crossbar=crossbar,
                eval_batch_size=eval_batch_size,
            )

        return run_chunks(
            keys, chunk, chunk_size=chunk_size, shard=shard, conv_path=conv_path
        )

    counts = jnp.asarray(counts, jnp.int32)
    flags = crossbar_flags(params, crossbar)

    def chunk_curve(k):
        # Trials outside, steps inside: each trial's noise is drawn once (the
        # same z that noisy_accuracy draws from its key) and reused by every
        # step; the chunk's trials are evaluated together at each step.
        z = jax.vmap(lambda kt: noise_like(kt, params, crossbar))(k)

        def step(carry, count):
            mask = mask_from_order(order, params, count=count, predicate=crossbar)
            noisy = stack_noisy(params, mask_std(mask), z, flags)
            correct = trials_correct(apply_fn, noisy, flags, x, y, eval_batch_size)
            return carry, correct.astype(jnp.float32) / jnp.float32(x.shape[0])

        return jax.lax.scan(step, None, counts)[1].T  # (chunk, K)

    def step_cycles(carry, count):
        mask = mask_from_order(order, params, count=count, predicate=crossbar)
        cyc = device_model.write_cycles(mask, params)
        return carry, (cyc.normalized, cyc.normalized_verified_only)

    none = jax.tree.map(lambda s: jnp.zeros(s.shape, bool), std_w)
    cyc0 = device_model.write_cycles(none, params)
    every = jax.tree.map(lambda s: jnp.ones(s.shape, bool), std_w)
    _, (cycles, cycles_v) = jax.lax.scan(step_cycles, None, counts)
    accs = run_chunks(
        keys, chunk_curve, chunk_size=chunk_size, shard=shard, conv_path=conv_path
    ).T
    return Curve(
        counts=counts,
        fractions=counts.astype(jnp.float32) / jnp.float32(n),
        cycles=cycles,
        cycles_verified_only=cycles_v,
        accuracies=accs,
        reference=accuracies(every) if reference is None else reference,
        baseline=accuracies(none) if baseline is None else baseline,
        baseline_cycles=jnp.stack([cyc0.normalized, cyc0.normalized_verified_only]),
    )


def _programmed_sweep(
    key: jax.Array,
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    device_model: Any,
    order: jax.Array,
    counts: Any,
    num_trials: int,
    n: int,
    *,
    chunk_size: int | None,
    eval_batch_size: int | None,
    shard: bool,
    conv_path: str | None,
    reference: jax.Array | None,
    baseline: jax.Array | None,
) -> Curve:
    """:func:`sweep`'s generic path (any device model; see there)."""
    keys = trial_keys(key, num_trials)
    crossbar = device_model.crossbar
    _, ex_key = jax.random.split(key)
    every = jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), params)
    none = jax.tree.map(lambda w: jnp.zeros(jnp.shape(w), bool), params)
    exhaustive = jnp.asarray(
        device_model.program_with_cost(ex_key, params, every).cycles.total
    ).astype(jnp.float32)
    plain = device_model.program_with_cost(ex_key, params, none).cycles

    def run(mask):
        def chunk(k):
            return programmed_trials(
                k,
                apply_fn,
                params,
                device_model,
                mask,
                x,
                y,
                eval_batch_size=eval_batch_size,
            )

        return run_chunks(
            keys, chunk, chunk_size=chunk_size, shard=shard, conv_path=conv_path
        )

    def step(carry, count):
        mask = mask_from_order(order, params, count=count, predicate=crossbar)
        out = run(mask)
        return carry, (
            out[:, 0],
            jnp.mean(out[:, 1]) / exhaustive,
            jnp.mean(out[:, 2]) / exhaustive,
        )

    counts = jnp.asarray(counts, jnp.int32)
    _, (accs, cycles, cycles_v) = jax.lax.scan(step, None, counts)
    f32 = jnp.float32
    return Curve(
        counts=counts,
        fractions=counts.astype(f32) / f32(n),
        cycles=cycles,
        cycles_verified_only=cycles_v,
        accuracies=accs,
        reference=run(every)[:, 0] if reference is None else reference,
        baseline=run(none)[:, 0] if baseline is None else baseline,
        baseline_cycles=jnp.stack(
            [
                jnp.asarray(plain.total).astype(f32) / exhaustive,
                jnp.asarray(plain.verify).astype(f32) / exhaustive,
            ]
        ),
    )
