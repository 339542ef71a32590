"""Programming one chip at a time: write-verify in batches until the chip is good
enough.

A programming run on real hardware has one chip, not the mean of many: it writes
every weight, then write-verifies the weights of a selection order in batches
and, after each batch, measures that chip's accuracy on a calibration split (not
the test split) and stops as soon as a rule is met. :func:`program_chips`
simulates this for ``T`` chips (Monte Carlo trials) at once, as one
``lax.scan`` over the programming batches in which each chip carries its own
stop flag. Chip ``t`` draws its noise once from ``fold_in(key, t)``, the trial
key :func:`uswim_jax.sweep` and :func:`uswim_jax.evaluate` use, and every batch
rescales it, so a chip checked after ``counts[b]`` verified weights is exactly
trial ``t`` of ``sweep`` at that budget (common random numbers with the
fixed-budget curves).

The stop rule (:class:`StopRule`) is an absolute calibration accuracy, or a
margin below the mean calibration accuracy of exhaustive write-verify over the
same chips (what a characterization of the process gives; a real programmer
cannot know one chip's exhaustive accuracy without programming it so). A chip
is checked once before any weight is verified (``counts[0]``, normally 0) and
once after each batch; it stops at the first check that meets the rule, and
from then on costs nothing: its cycles are those of the mask it stopped at. A
chip that never meets the rule stops at the first check with the budget
(``counts[-1]``) verified and counts as not reached; schedules of different
batch sizes can so be padded with the budget to one length (one compilation).
Each check costs one inference per calibration image.

``B`` denotes checks (programming batches, the first one empty), ``T`` chips.
"""

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uswim_jax._checks import check_key, check_model_data
from uswim_jax._protocol import has_closed_form
from uswim_jax._tree import check_crossbar, crossbar_flags, crossbar_size
from uswim_jax.device import DEVICE_FIX, add_noise, noise_like
from uswim_jax.montecarlo import (
    ApplyFn,
    noisy_accuracies,
    resolve_sizes,
    run_chunks,
    stack_noisy,
    trial_keys,
    trials_correct,
)
from uswim_jax.selection import mask_from_order


@dataclasses.dataclass(frozen=True)
class StopRule:
    """When a chip is good enough: exactly one of

    - ``margin``: percentage points below the mean calibration accuracy of
      exhaustive write-verify (0.5 means within 0.5 % of it), or
    - ``target``: an absolute calibration accuracy, a fraction in [0, 1].

    A chip meets the rule when its calibration accuracy is at least
    :meth:`threshold`.
    """

    margin: float | None = None
    target: float | None = None

    def __post_init__(self):
        if (self.margin is None) == (self.target is None):
            raise ValueError(
                "StopRule needs exactly one of margin and target, got "
                f"margin={self.margin!r}, target={self.target!r}"
            )
        if self.margin is not None and not (
            isinstance(self.margin, int | float) and 0 <= self.margin < math.inf
        ):
            raise ValueError(f"margin must be a number >= 0, got {self.margin!r}")
        if self.target is not None and not (
            isinstance(self.target, int | float) and 0 <= self.target <= 1
        ):
            raise ValueError(f"target must lie in [0, 1], got {self.target!r}")

    def threshold(self, reference: Any) -> jax.Array:
        """The calibration accuracy a chip must reach (float32), given the
        per-chip exhaustive calibration accuracies ``reference`` (used by the
        margin rule only, through their mean)."""
        if self.target is not None:
            return jnp.asarray(self.target, jnp.float32)
        mean = jnp.mean(jnp.asarray(reference, jnp.float32))
        return mean - jnp.asarray(self.margin, jnp.float32) / jnp.float32(100.0)

    def describe(self) -> str:
        if self.target is not None:
            return f"calibration accuracy >= {100 * self.target:g} %"
        return f"within {self.margin:g} pp of exhaustive write-verify (calibration)"


def _rule_flatten(rule: StopRule):
    kind = "margin" if rule.margin is not None else "target"
    return (getattr(rule, kind),), kind


def _rule_unflatten(kind: str, children) -> StopRule:
    # A pytree, so a driver can jit over the rule's value without recompiling;
    # the value was checked when the rule was made.
    rule = object.__new__(StopRule)
    object.__setattr__(rule, "margin", children[0] if kind == "margin" else None)
    object.__setattr__(rule, "target", children[0] if kind == "target" else None)
    return rule


jax.tree_util.register_pytree_node(StopRule, _rule_flatten, _rule_unflatten)


def batch_counts(n: int, batch_size: int, budget: int | None = None) -> np.ndarray:
    """The verified counts after each programming batch: ``0, g, 2g, ...``, the
    last one ``budget`` (default ``n``, every crossbar weight), for batches of
    ``g = batch_size`` weights.

    Raises:
        ValueError: ``batch_size`` not a positive integer, or ``budget`` outside
            ``[0, n]``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    budget = n if budget is None else budget
    if not 0 <= budget <= n:
        raise ValueError(f"budget must lie in [0, {n}], got {budget!r}")
    counts = np.arange(0, budget, batch_size, dtype=np.int32)
    return np.append(counts, np.int32(budget)).astype(np.int32)


class ChipRun(NamedTuple):
    """What :func:`program_chips` returns (accuracies are fractions in [0, 1];
    cycles are normalized by exhaustive write-verify, plain writes counted)."""

    counts: jax.Array  # (B,) verified weights at each check
    cycles: jax.Array  # (B,) normalized write cycles at each check
    threshold: jax.Array  # () calibration accuracy that meets the rule
    stop_step: jax.Array  # (T,) int32 index of the check each chip stopped at
    reached: jax.Array  # (T,) bool: the chip met the rule (else ran out)
    cycles_spent: jax.Array  # (T,) cycles[stop_step]
    calibration: jax.Array  # (T,) calibration accuracy when it stopped
    test: jax.Array  # (T,) test accuracy when it stopped
    calibration_reference: jax.Array  # (T,) exhaustive, calibration split
    calibration_size: jax.Array  # () images per check

    @property
    def checks(self) -> jax.Array:
        """(T,) accuracy checks each chip ran (``stop_step + 1``)."""
        return self.stop_step + 1

    @property
    def check_inferences(self) -> jax.Array:
        """(T,) inferences the checks cost per chip (checks x calibration
        images)."""
        return self.checks * self.calibration_size


def program_chips(
    key: jax.Array,
    apply_fn: ApplyFn,
    params: Any,
    x_cal: jax.Array,
    y_cal: jax.Array,
    x_test: jax.Array,
    y_test: jax.Array,
    device: Any,
    order: jax.Array,
    counts: Any,
    num_trials: int,
    rule: StopRule,
    *,
    chunk_size: int | str | None = "auto",
    eval_batch_size: int | str | None = "auto",
    shard: bool = False,
    calibration_reference: jax.Array | None = None,
) -> ChipRun:
    """Programs ``num_trials`` chips, each write-verifying along ``order`` in
    batches until it meets ``rule`` on the calibration split.

    Args:
        key: base key; chip ``t`` draws its noise from ``fold_in(key, t)`` (as
            :func:`uswim_jax.sweep`'s trial ``t``). The key is consumed.
        apply_fn: ``apply_fn(params, x) -> logits``.
        params: trained params pytree.
        x_cal, y_cal: the calibration split the checks run on (not the test
            split).
        x_test, y_test: the test split, evaluated once per chip when it stops.
        device: a Gaussian device model (``UniformVariation``,
            ``StateDependentVariation``, ``LevelTableVariation``); its
            ``verify_cycles`` prices a write-verify.
        order: crossbar weights, most important first (``global_order``).
        counts: (B,) non-decreasing verified counts at each check
            (:func:`batch_counts`); the last one is the budget. May be traced.
        num_trials: T, the chips.
        rule: the :class:`StopRule`.
        chunk_size, eval_batch_size, shard: as in :func:`uswim_jax.sweep`
            (``eval_batch_size`` applies to both splits).
        calibration_reference: (T,) exhaustive calibration accuracies of these
            chips (same key), when already computed; computed here when
            ``None``.

    Returns:
        A :class:`ChipRun`.

    Raises:
        ValueError: bad ``num_trials``, ``rule`` or ``counts``; a device model
            without a closed-form std; data that do not fit the model (as
            :func:`uswim_jax.evaluate`).

    Once every chip of a chunk has stopped, the remaining checks of that chunk
    are skipped (a ``lax.cond``); nothing a chip reports depends on it.
    """
    if not isinstance(num_trials, int | np.integer) or num_trials < 1:
        raise ValueError(f"num_trials must be a positive integer, got {num_trials!r}")
    if not isinstance(rule, StopRule):
        raise ValueError(f"rule must be a StopRule, got {rule!r}")
    if not (has_closed_form(device) and hasattr(device, "crossbar")):
        raise ValueError(
            "device must be a Gaussian device model with a closed-form std "
            f"(UniformVariation, StateDependentVariation, ...), got {device!r}"
        )
    check_crossbar("params", params, device.crossbar, fix=DEVICE_FIX)
    check_key("key", key)
    check_model_data(apply_fn, params, x_cal, y_cal)
    check_model_data(apply_fn, params, x_test, y_test)
    n = crossbar_size(params, device.crossbar)
    if np.ndim(counts) != 1 or np.shape(counts)[0] < 1:
        raise ValueError(f"counts must be 1-D and non-empty, got {np.shape(counts)}")
    if not isinstance(counts, jax.core.Tracer):
        c = np.asarray(counts)
        if c.min() < 0 or c.max() > n or np.any(np.diff(c) < 0):
            raise ValueError(f"counts must be non-decreasing integers in [0, {n}]")
    x_cal, y_cal = jnp.asarray(x_cal), jnp.asarray(y_cal)
    x_test, y_test = jnp.asarray(x_test), jnp.asarray(y_test)
    big = x_cal if x_cal.shape[0] >= x_test.shape[0] else x_test
    chunk_size, eval_batch_size, conv_path = resolve_sizes(
        apply_fn,
        params,
        big,
        num_trials,
        chunk_size,
        eval_batch_size,
        batched=crossbar_flags(params, device.crossbar),
        shard=shard,
    )
    crossbar = device.crossbar
    keys = trial_keys(key, num_trials)
    std_w, std_v = device.std(params)
    flags = crossbar_flags(params, crossbar)
    counts = jnp.asarray(counts, jnp.int32)
    steps = counts.shape[0]
    budget = counts[-1]
    f32 = jnp.float32

    def mask_std(mask):
        return jax.tree.map(lambda m, a, b: jnp.where(m, b, a), mask, std_w, std_v)

    def mask_at(count):
        return mask_from_order(order, params, count=count, predicate=crossbar)

    if calibration_reference is None:
        every = mask_std(jax.tree.map(lambda s: jnp.ones(s.shape, bool), std_w))

        def ref_chunk(k):
            return noisy_accuracies(
                k,
                apply_fn,
                params,
                every,
                x_cal,
                y_cal,
                crossbar=crossbar,
                eval_batch_size=eval_batch_size,
            )

        calibration_reference = run_chunks(
            keys, ref_chunk, chunk_size=chunk_size, shard=shard, conv_path=conv_path
        )
    threshold = rule.threshold(calibration_reference)

    def chunk(k):
        # Each chip's noise is drawn once (as sweep's trial) and every check
        # rescales it by that batch's std.
        z = jax.vmap(lambda kt: noise_like(kt, params, crossbar))(k)
        t = k.shape[0]

        def check(count):
            noisy = stack_noisy(params, mask_std(mask_at(count)), z, flags)
            correct = trials_correct(
                apply_fn, noisy, flags, x_cal, y_cal, eval_batch_size
            )
            return correct.astype(f32) / f32(x_cal.shape[0])

        def step(carry, inp):
            stopped, stop_step, reached, cal = carry
            b, count = inp
            acc = jax.lax.cond(
                jnp.all(stopped), lambda _: cal, check, count
            )  # skipped once every chip here has stopped
            meets = acc >= threshold
            now = ~stopped & (meets | (count == budget))
            carry = (
                stopped | now,
                jnp.where(now, b, stop_step),
                jnp.where(now, meets, reached),
                jnp.where(now, acc, cal),
            )
            return carry, None

        init = (
            jnp.zeros((t,), bool),
            jnp.zeros((t,), jnp.int32),
            jnp.zeros((t,), bool),
            jnp.zeros((t,), f32),
        )
        xs = (jnp.arange(steps, dtype=jnp.int32), counts)
        (_, stop_step, reached, cal), _ = jax.lax.scan(step, init, xs)
        # The test accuracy of each chip as it stopped: its own mask, its noise.
        stds = jax.vmap(lambda c: mask_std(mask_at(c)))(counts[stop_step])
        noisy = jax.vmap(lambda s, zt: add_noise(params, s, zt, crossbar))(stds, z)
        noisy = jax.tree.map(lambda a, w, f: a if f else w, noisy, params, flags)
        correct = trials_correct(
            apply_fn, noisy, flags, x_test, y_test, eval_batch_size
        )
        return stop_step, reached, cal, correct.astype(f32) / f32(x_test.shape[0])

    stop_step, reached, cal, test = run_chunks(
        keys, chunk, chunk_size=chunk_size, shard=shard, conv_path=conv_path
    )

    def step_cycles(carry, count):
        return carry, device.write_cycles(mask_at(count), params).normalized

    _, cycles = jax.lax.scan(step_cycles, None, counts)
    return ChipRun(
        counts=counts,
        cycles=cycles,
        threshold=threshold,
        stop_step=stop_step,
        reached=reached,
        cycles_spent=cycles[stop_step],
        calibration=cal,
        test=test,
        calibration_reference=calibration_reference,
        calibration_size=jnp.int32(x_cal.shape[0]),
    )


def cycles_for_count(device: Any, params: Any, order: jax.Array, count: int) -> float:
    """Normalized write cycles (plain writes counted) of verifying the first
    ``count`` weights of ``order``."""
    mask = mask_from_order(order, params, count=count, predicate=device.crossbar)
    return float(device.write_cycles(mask, params).normalized)


def fixed_count_at_cost(
    device: Any, params: Any, order: jax.Array, cycles: float
) -> int:
    """The largest verified count (a prefix of ``order``) whose normalized write
    cycles do not exceed ``cycles``: the fixed budget one programs every chip
    with at (at most) the same mean cost. Bisection on the exact cycle count;
    the cycles grow with the count."""
    n = crossbar_size(params, device.crossbar)
    lo, hi = 0, n
    if cycles_for_count(device, params, order, 0) > cycles:
        return 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cycles_for_count(device, params, order, mid) <= cycles:
            lo = mid
        else:
            hi = mid - 1
    return lo


def chip_summary(run: ChipRun) -> dict[str, float]:
    """The per-chip numbers of a report, from a :class:`ChipRun`: the cycles per
    chip (mean, median, 95th percentile, max), the test accuracy at the stop
    (mean, 5th percentile), the share of chips that never met the rule, the
    checks and their inferences per chip (mean), and the rule's threshold.
    Accuracies and shares in percent."""
    cyc = np.asarray(run.cycles_spent, np.float64)
    test = 100.0 * np.asarray(run.test, np.float64)
    checks = np.asarray(run.checks, np.float64)
    return {
        "chips": int(cyc.shape[0]),
        "cycles_mean": float(cyc.mean()),
        "cycles_median": float(np.median(cyc)),
        "cycles_p95": float(np.percentile(cyc, 95)),
        "cycles_max": float(cyc.max()),
        "test_mean": float(test.mean()),
        "test_p5": float(np.percentile(test, 5)),
        "never_reached": float(100.0 * np.mean(~np.asarray(run.reached))),
        "checks_mean": float(checks.mean()),
        "check_inferences_mean": float(checks.mean() * int(run.calibration_size)),
        "threshold": float(100.0 * np.asarray(run.threshold)),
    }


@dataclasses.dataclass(frozen=True)
class PerChipConfig:
    """A per-chip programming study of a reproduction run (``ExperimentConfig.
    per_chip``): the rule, the batch sizes swept, the calibration split and the
    device setting.

    - ``margin`` / ``target``: the :class:`StopRule` (``target`` wins when set).
    - ``batch_fractions``: programming batch sizes, as fractions of the crossbar
      weights, each one a row per method; the finest is the reference the
      overshoot is measured from.
    - ``budget``: the largest verified fraction a chip may reach.
    - ``calibration_size``: the checks run on the last this many training
      images.
    - ``sigma``, ``s``: the device setting (uniform variation when ``s`` is
      None), with the run's ``verified_ratio`` and ``verify_cycles``.
    """

    margin: float = 0.5
    target: float | None = None
    batch_fractions: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05)
    budget: float = 0.3
    calibration_size: int = 1000
    sigma: float = 0.3
    s: float | None = None

    def __post_init__(self):
        self.rule()  # validates margin / target
        b = self.batch_fractions
        if not isinstance(b, tuple | list) or not b or not all(0 < f <= 1 for f in b):
            raise ValueError(
                f"batch_fractions must be a non-empty tuple in (0, 1], got {b!r}"
            )
        if not 0 < self.budget <= 1:
            raise ValueError(f"budget must lie in (0, 1], got {self.budget!r}")
        c = self.calibration_size
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError(f"calibration_size must be a positive integer, got {c!r}")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"sigma must be >= 0, got {self.sigma!r}")
        if self.s is not None and not self.s > 0:
            raise ValueError(f"s must be > 0 or None, got {self.s!r}")

    def rule(self) -> StopRule:
        if self.target is not None:
            return StopRule(target=self.target)
        return StopRule(margin=self.margin)
