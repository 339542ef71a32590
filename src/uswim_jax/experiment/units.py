"""The units of work of a run folder: the jitted sweep and end-point
evaluations, and the atomic files they are saved in (curves, step chunks, the
exhaustive/no-verify end points), so a killed run resumes where it stopped."""

import functools
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from uswim_jax._io import atomic_write_bytes, npz_bytes
from uswim_jax.experiment.config import ExperimentConfig, Setting
from uswim_jax.montecarlo import evaluate
from uswim_jax.sweep import Curve, sweep


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


@functools.partial(
    jax.jit,
    static_argnames=("apply_fn", "num_trials", "chunk_size", "eval_batch_size"),
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
    )


@functools.partial(
    jax.jit,
    static_argnames=("apply_fn", "num_trials", "chunk_size", "eval_batch_size"),
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
    )


def _curve_file(run_dir: Path, setting: Setting, method: str) -> Path:
    safe = setting.name.replace(" ", "_").replace("=", "")
    return run_dir / "curves" / f"{safe}__{method}.npz"


def _save_curve(path: Path, curve: Curve) -> None:
    atomic_write_bytes(
        path, npz_bytes(**{k: np.asarray(v) for k, v in curve._asdict().items()})
    )


def _load_curve(path: Path) -> Curve | None:
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f, np.load(f) as z:
            return Curve(**{k: z[k] for k in Curve._fields})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"corrupt curve file {path} ({e}); delete it") from e


def _chunk_slices(num_steps: int, steps_per_chunk: int | None) -> list[slice]:
    """The step ranges saved as separate units (one when not chunking)."""
    per = steps_per_chunk or max(num_steps, 1)
    return [slice(i, min(i + per, num_steps)) for i in range(0, num_steps, per)]


def _chunk_file(run_dir: Path, setting: Setting, method: str, i: int) -> Path:
    stem = _curve_file(run_dir, setting, method).stem
    return run_dir / "chunks" / f"{stem}__steps{i:04d}.npz"


def _ends_file(run_dir: Path, setting: Setting) -> Path:
    safe = setting.name.replace(" ", "_").replace("=", "")
    return run_dir / "chunks" / f"{safe}__ends.npz"


def _join_chunks(parts: list[Curve]) -> Curve:
    """One curve from its step chunks (in order): per-step fields are
    concatenated, the per-setting ones (reference, baseline) taken from the
    first chunk."""
    per_step = ("counts", "fractions", "cycles", "cycles_verified_only", "accuracies")
    first = parts[0]
    return first._replace(
        **{k: np.concatenate([getattr(p, k) for p in parts]) for k in per_step}
    )


def _sweep_in_chunks(
    run_dir: Path,
    setting: Setting,
    method: str,
    slices: list[slice],
    sweep_chunk,
    on_chunk=None,
) -> Curve:
    """The curve of (setting, method): every step chunk is loaded when already
    saved, else computed by ``sweep_chunk(slice)`` and saved atomically; the
    joined curve is saved as the finished unit and the chunk files removed."""
    parts = []
    for i, sl in enumerate(slices):
        path = _chunk_file(run_dir, setting, method, i)
        part = _load_curve(path) if len(slices) > 1 else None
        if part is None:
            part = jax.device_get(sweep_chunk(sl))
            if len(slices) > 1:
                _save_curve(path, part)
            if on_chunk is not None:
                on_chunk()
        parts.append(part)
    curve = _join_chunks(parts) if len(parts) > 1 else parts[0]
    _save_curve(_curve_file(run_dir, setting, method), curve)
    if len(slices) > 1:
        for i in range(len(slices)):
            _chunk_file(run_dir, setting, method, i).unlink(missing_ok=True)
    return curve


def _load_ends(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f, np.load(f) as z:
            return z["reference"], z["baseline"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"corrupt file {path} ({e}); delete it") from e
