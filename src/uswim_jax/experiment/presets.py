"""The sizes of a run, shared by ``make`` (``experiments/*/configs``) and the
``uswim sweep`` command line: :data:`QUICK` (a few-minute smoke run of every
stage: ``--quick``) and :data:`FULL` (the dense grid with 100 trials, meant for
a GPU: ``--full``); the default is the config itself."""

import dataclasses

from uswim_jax.experiment.config import FULL_FRACTIONS, ExperimentConfig

#: ``--quick``: the training fields it sets.
QUICK_TRAIN = {"epochs": 2, "train_subset": 2048}
#: ``--quick``: the experiment fields it sets.
QUICK = {
    "sigmas": (0.2,),
    "s_values": (3.0,),
    "fractions": (0.001, 0.005, 0.01, 0.05, 0.3),
    "num_trials": 8,
    "test_subset": 500,
    "curvature_subset": 2048,
    "estimator_subset": 128,
    "hutchinson_probes": 8,
}
#: ``--full``: the experiment fields it sets.
FULL = {"fractions": FULL_FRACTIONS, "num_trials": 100}


def quick(config: ExperimentConfig, **changes) -> ExperimentConfig:
    """``config`` at the :data:`QUICK` size (``changes`` win), labelled
    ``quick``."""
    train = dataclasses.replace(config.train, **QUICK_TRAIN)
    return dataclasses.replace(
        config, **{"train": train, **QUICK, "label": "quick", **changes}
    )


def full(config: ExperimentConfig, **changes) -> ExperimentConfig:
    """``config`` at the :data:`FULL` size (``changes`` win), labelled
    ``full``."""
    return dataclasses.replace(config, **{**FULL, "label": "full", **changes})
