"""Selective write-verify under the pulse-level programming model.

The Gaussian sweep (:func:`uswim_jax.sweep`) draws ``params + std * z`` per trial.
Under :class:`~uswim_jax.programming.PulseModel` the noise of a trial is the
outcome of running the program-and-verify process itself
(:func:`~uswim_jax.programming.program`): trial ``t`` programs every device with
the key ``fold_in(key, t)`` (common random numbers across steps and methods), its
accuracy is measured on the programmed weights, and its cost is the pulses the
process actually spent. Normalized write cycles divide by the pulses of
exhaustive write-verify, measured once (all ~8 devices per weight are i.i.d., so
one all-verified run of every device gives the mean to many digits).

``K`` denotes programming steps (budget points), ``T`` trials.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uswim_jax._checks import check_model_data
from uswim_jax._tree import check_crossbar, crossbar_flags, crossbar_size
from uswim_jax.device import DEVICE_FIX
from uswim_jax.montecarlo import auto_chunk_size, run_chunks, trial_keys, trials_correct
from uswim_jax.programming import PulseModel, program, pulse_write_cycles
from uswim_jax.selection import mask_from_order
from uswim_jax.sweep import Curve


def pulse_trials(
    key: jax.Array,
    apply_fn: Any,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    model: PulseModel,
    verified: Any,
    num_trials: int,
    *,
    chunk_size: int | str | None = None,
    eval_batch_size: int | None = None,
) -> jax.Array:
    """Per-trial ``(accuracy, total pulses, verify pulses)``, shape ``(T, 3)``.

    Args:
        key: base key; trial ``t`` programs with ``fold_in(key, t)``. The key is
            consumed.
        apply_fn: ``apply_fn(params, x) -> logits``.
        params: the trained params.
        x, y: test images and labels.
        model: the :class:`PulseModel`.
        verified: a boolean pytree like ``params`` (True = write-verify), or
            ``None`` for nothing verified.
        num_trials: T.
        chunk_size: trials programmed and evaluated at once (``lax.map``);
            ``"auto"`` as in :func:`uswim_jax.montecarlo.evaluate`.
        eval_batch_size: images per forward pass.

    Raises:
        ValueError: on bad input, as :func:`uswim_jax.evaluate`.
    """
    check_crossbar("params", params, model.crossbar, fix=DEVICE_FIX)
    check_model_data(apply_fn, params, x, y)
    x, y = jnp.asarray(x), jnp.asarray(y)
    n = jnp.float32(x.shape[0])
    if chunk_size == "auto":
        chunk_size = auto_chunk_size(apply_fn, params, x, num_trials, eval_batch_size)

    flags = crossbar_flags(params, model.crossbar)

    def chunk(keys):
        # The chunk's trials are programmed first (one program per key, as
        # before), then evaluated together; off-crossbar leaves are exact, so
        # they are shared by the trials.
        res = jax.vmap(lambda k: program(k, params, model, verified))(keys)
        stacked = jax.tree.map(lambda r, w, f: r if f else w, res.params, params, flags)
        acc = trials_correct(apply_fn, stacked, flags, x, y, eval_batch_size)
        cyc = jax.vmap(lambda r: pulse_write_cycles(r, verified, exhaustive=1.0))(res)
        return jnp.stack([acc.astype(jnp.float32) / n, cyc.total, cyc.verify], axis=1)

    return run_chunks(trial_keys(key, num_trials), chunk, chunk_size=chunk_size)


def exhaustive_pulses(key: jax.Array, params: Any, model: PulseModel) -> jax.Array:
    """Pulses spent by write-verifying every crossbar device once (a scalar).
    The key is consumed."""
    every = jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), params)
    res = program(key, params, model, every)
    return pulse_write_cycles(res, every, exhaustive=1.0).total


def pulse_sweep(
    key: jax.Array,
    apply_fn: Any,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    model: PulseModel,
    order: jax.Array,
    counts: jax.Array,
    num_trials: int,
    *,
    chunk_size: int | str | None = None,
    eval_batch_size: int | None = None,
    reference: jax.Array | None = None,
    baseline: jax.Array | None = None,
) -> Curve:
    """Selective write-verify along ``order`` under the pulse model, one
    ``lax.scan`` step per budget; the :class:`~uswim_jax.sweep.Curve` has the
    same meaning as :func:`uswim_jax.sweep`'s, with cycles counted in pulses.

    Args:
        key: base key (trial ``t`` uses ``fold_in(key, t)`` at every step; the
            exhaustive-cost run uses a key split from it). The key is consumed.
        apply_fn, params, x, y: the model and the test data.
        model: the :class:`PulseModel`.
        order: crossbar weights, most important first.
        counts: (K,) non-decreasing numbers of verified weights.
        num_trials: T.
        chunk_size, eval_batch_size: as in :func:`pulse_trials`.
        reference, baseline: (T,) per-trial accuracies with every / no weight
            verified (same key), computed here when ``None``.

    Returns:
        A :class:`~uswim_jax.sweep.Curve`.

    Raises:
        ValueError: on bad input, as :func:`uswim_jax.evaluate`.
    """
    if not isinstance(num_trials, int | np.integer) or num_trials < 1:
        raise ValueError(f"num_trials must be a positive integer, got {num_trials!r}")
    check_crossbar("params", params, model.crossbar, fix=DEVICE_FIX)
    check_model_data(apply_fn, params, x, y)
    n = crossbar_size(params, model.crossbar)
    _, ex_key = jax.random.split(key)
    exhaustive = exhaustive_pulses(ex_key, params, model)
    if chunk_size == "auto":  # resolved once for every step
        chunk_size = auto_chunk_size(apply_fn, params, x, num_trials, eval_batch_size)
    kw = {"chunk_size": chunk_size, "eval_batch_size": eval_batch_size}

    def run(mask):
        return pulse_trials(key, apply_fn, params, x, y, model, mask, num_trials, **kw)

    def step(carry, count):
        mask = mask_from_order(order, params, count=count, predicate=model.crossbar)
        out = run(mask)
        return carry, (
            out[:, 0],
            jnp.mean(out[:, 1]) / exhaustive,
            jnp.mean(out[:, 2]) / exhaustive,
        )

    counts = jnp.asarray(counts, jnp.int32)
    _, (accs, cycles, cycles_v) = jax.lax.scan(step, None, counts)
    if reference is None:
        every = jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), params)
        reference = run(every)[:, 0]
    if baseline is None:
        baseline = run(None)[:, 0]
    plain = jnp.float32(n * model.devices_per_weight)
    return Curve(
        counts=counts,
        fractions=counts.astype(jnp.float32) / jnp.float32(n),
        cycles=cycles,
        cycles_verified_only=cycles_v,
        accuracies=accs,
        reference=reference,
        baseline=baseline,
        baseline_cycles=jnp.stack([plain / exhaustive, jnp.zeros((), jnp.float32)]),
    )
