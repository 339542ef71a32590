"""The CIFAR-10 reproduction: ConvNet and ResNet-18 (each in its own folder
under the workdir), train -> sensitivities -> sweeps -> report, with CIFAR
normalisation and augmentation (configs/default.py)."""

import os

from experiments.cifar10.configs import default
from experiments.common import normalizer, reproduce_models
from uswim_jax import data


def run(
    configs,
    workdir: str | os.PathLike,
    *,
    results_dir: str | os.PathLike | None = None,
    train_data: data.Dataset | None = None,
    test_data: data.Dataset | None = None,
    progress: bool = True,
    synthetic: bool = False,
) -> dict:
    """Runs (or resumes) every config (one per model) and writes the reports.
    ``synthetic``: generated 32x32x3 data instead of CIFAR-10 (smoke runs)."""
    return reproduce_models(
        configs,
        workdir,
        results_dir=results_dir,
        train_data=train_data,
        test_data=test_data,
        preprocess=normalizer(default.MEAN, default.STD),
        synthetic_spec=("cifar10", (32, 32, 3), 10) if synthetic else None,
        progress=progress,
    )
