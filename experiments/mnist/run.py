"""The MNIST reproduction: the authors' 4-bit QLeNet and the float LeNet, each
trained (or reused), its sensitivities computed and every method swept under
every device setting in its own sub-folder, then one report of both (the
shared driver is ``experiments.common.reproduce_models``)."""

import os

from experiments.common import MODELS_REPORT_FILES, REPORT_FILES, reproduce_models
from uswim_jax import data

__all__ = ["MODELS_REPORT_FILES", "REPORT_FILES", "run"]


def run(
    configs,
    workdir: str | os.PathLike,
    *,
    results_dir: str | os.PathLike | None = None,
    train_data: data.Dataset | None = None,
    test_data: data.Dataset | None = None,
    progress: bool = True,
) -> dict:
    """Runs (or resumes) every config (one per model, ``configs/default.py``)
    in ``workdir/<model>`` and writes the report of them all in ``workdir``
    (and a copy to ``results_dir``). Training sees the whole test set; the
    Monte Carlo its first ``test_subset`` images. Returns ``{"outs": {model: info},
    "summary": text}``."""
    return reproduce_models(
        configs,
        workdir,
        results_dir=results_dir,
        train_data=train_data,
        test_data=test_data,
        limit_test=False,
        progress=progress,
    )
