"""The MNIST reproduction: train (or reuse) LeNet, compute sensitivities, sweep
every method under every device setting, and write the report (the shared
driver is ``experiments.common.reproduce``)."""

import os

from experiments.common import REPORT_FILES, reproduce
from uswim_jax import data
from uswim_jax.experiment import ExperimentConfig

__all__ = ["REPORT_FILES", "run"]


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
    there (and a copy of it to ``results_dir``). Returns the run's info with the
    summary text under ``"summary"``."""
    return reproduce(
        config,
        workdir,
        results_dir=results_dir,
        train_data=train_data,
        test_data=test_data,
        progress=progress,
    )
