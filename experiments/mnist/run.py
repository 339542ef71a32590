"""The MNIST reproduction: train (or reuse) LeNet, compute sensitivities, sweep
every method under every device setting, and write the report."""

import os
import shutil
import time
from pathlib import Path

from uswim_jax import data
from uswim_jax.experiment import ExperimentConfig
from uswim_jax.experiment import run as run_experiment
from uswim_jax.report import write_report

REPORT_FILES = (
    "summary.md",
    "curves.csv",
    "speedups.csv",
    "references.csv",
    "run_info.json",
    "accuracy_vs_cycles.png",
    "config.json",
    "manifest.json",
)


def choices_line(config: ExperimentConfig) -> str:
    return (
        f"run `{config.label}`: {config.num_trials} Monte Carlo trials per point, "
        f"budget points at {', '.join(f'{100 * f:g}%' for f in config.fractions)} "
        f"verified; sigma_verified = {config.verified_ratio:g} x sigma; a "
        f"write-verify costs {config.verify_cycles:g} cycles per device; seed "
        f"{config.seed}"
    )


def run(
    config: ExperimentConfig,
    workdir: str | os.PathLike,
    *,
    results_dir: str | os.PathLike | None = None,
    train_data: data.Dataset | None = None,
    test_data: data.Dataset | None = None,
    progress: bool = True,
) -> dict:
    """Runs (or resumes) the experiment in ``workdir`` and writes the report
    there (and a copy of it to ``results_dir``). Returns the run's info."""
    start = time.perf_counter()
    if train_data is None:
        train_data = data.load(config.train.dataset, "train")
    if test_data is None:
        test_data = data.load(config.train.dataset, "test")
    out = run_experiment(
        config, workdir, train_data=train_data, test_data=test_data, progress=progress
    )
    choices = choices_line(config) + (
        f"; pipeline time {out['seconds_total']:.0f} s over all invocations of "
        f"this run folder (this one: {time.perf_counter() - start:.0f} s)"
    )
    text = write_report(workdir, out, out["curves"], choices=choices)
    if results_dir is not None:
        results_dir = Path(results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        for name in REPORT_FILES:
            shutil.copyfile(Path(workdir) / name, results_dir / name)
    return {**out, "summary": text}
