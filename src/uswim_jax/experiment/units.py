"""The jitted drivers of a run's units of work, one module for every caller
(the pipeline, the benchmarks and, through the pipeline, the ``uswim`` command
line): ``_sweep_jit`` (a curve, or a step chunk of one) and ``_evaluate_jit``
(the exhaustive/no-verify end points), with :data:`STATIC` their static
arguments, and ``_mc_device`` (the device model a setting runs under). The
files they are saved in are :class:`uswim_jax.experiment.store.RunStore`'s."""

import functools
from typing import Any

import jax

from uswim_jax.experiment.config import ExperimentConfig, Setting
from uswim_jax.montecarlo import evaluate
from uswim_jax.sweep import sweep


def _mc_device(setting: Setting, config: "ExperimentConfig") -> Any:
    """The device model Monte Carlo runs under: the setting's Gaussian model, or
    the pulse-level process (``programming="pulse"``) with the calibrated
    defaults and the tolerance scaled so the residual std is about
    ``ratio * sigma`` (the defaults give 0.03 at sigma 0.3)."""
    if config.programming != "pulse":
        return setting.device(config.verify_cycles)
    from uswim_jax.device import DEFAULT_SIGMA_VERIFIED
    from uswim_jax.programming import DEFAULT_TOLERANCE, PulseModel

    tol = DEFAULT_TOLERANCE * setting.ratio * setting.sigma / DEFAULT_SIGMA_VERIFIED
    return PulseModel(sigma=setting.sigma, tolerance=tol)


#: The static arguments of the jitted drivers.
STATIC = ("apply_fn", "num_trials", "chunk_size", "eval_batch_size")


@functools.partial(
    jax.jit,
    static_argnames=(*STATIC, "shard"),
)
def _sweep_jit(
    key,
    params,
    x,
    y,
    device,
    order,
    counts,
    reference,
    baseline,
    *,
    apply_fn,
    num_trials,
    chunk_size,
    eval_batch_size,
    shard=False,
):
    return sweep(
        key,
        apply_fn,
        params,
        x,
        y,
        device,
        order,
        counts,
        num_trials,
        chunk_size=chunk_size,
        eval_batch_size=eval_batch_size,
        reference=reference,
        baseline=baseline,
        shard=shard,
    )


@functools.partial(
    jax.jit,
    static_argnames=(*STATIC, "shard"),
)
def _evaluate_jit(
    key,
    params,
    x,
    y,
    device,
    verified,
    *,
    apply_fn,
    num_trials,
    chunk_size,
    eval_batch_size,
    shard=False,
):
    return evaluate(
        key,
        apply_fn,
        params,
        x,
        y,
        device,
        verified,
        num_trials,
        chunk_size=chunk_size,
        eval_batch_size=eval_batch_size,
        shard=shard,
    )
