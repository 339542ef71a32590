"""The Tiny ImageNet reproduction: ResNet-18 on 64x64 images, 200 classes,
train -> sensitivities -> sweeps -> report (configs/default.py)."""

import os

from experiments.common import normalizer, reproduce_models
from experiments.tinyimagenet.configs import default
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
    """Runs (or resumes) the config(s) and writes the report. ``synthetic``:
    generated 64x64x3 data with 200 classes instead of Tiny ImageNet."""
    return reproduce_models(
        configs,
        workdir,
        results_dir=results_dir,
        train_data=train_data,
        test_data=test_data,
        preprocess=normalizer(default.MEAN, default.STD),
        synthetic_spec=("tiny_imagenet", (64, 64, 3), 200) if synthetic else None,
        progress=progress,
    )
