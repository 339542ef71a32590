"""Configs of ``make reproduce-mnist``: LeNet on MNIST with the authors' recipe
(Adam 1e-3, batch 128, 20 epochs; docs/method.md §9), then selective write-verify
under uniform variation (sigma = 0.1, 0.2, 0.3) and U-SWIM's state-dependent
variation (s = 2, 3, 5 at sigma = 0.3, the authors' default dev_var), with
sigma_verified = sigma / 10."""

import dataclasses

from uswim_jax.experiment import FULL_FRACTIONS, ExperimentConfig
from uswim_jax.train import TrainConfig


def get_config() -> ExperimentConfig:
    """The default run: fits in 30 minutes on 2 CPU cores."""
    return ExperimentConfig(
        train=TrainConfig(model="lenet", dataset="mnist", epochs=20, seed=0),
        fractions=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3),
        num_trials=50,
        label="default",
    )


def get_quick_config() -> ExperimentConfig:
    """A smoke run of every stage, in about 3 minutes: 2 epochs on 2,048
    images, two settings, 500 test images, 8 trials."""
    return dataclasses.replace(
        get_config(),
        train=TrainConfig(
            model="lenet", dataset="mnist", epochs=2, seed=0, train_subset=2048
        ),
        sigmas=(0.2,),
        s_values=(3.0,),
        fractions=(0.001, 0.005, 0.01, 0.05, 0.3),
        num_trials=8,
        test_subset=500,
        curvature_subset=2048,
        estimator_subset=128,
        hutchinson_probes=8,
        label="quick",
    )


def get_full_config() -> ExperimentConfig:
    """The whole grid with 100 trials (meant for a GPU)."""
    return dataclasses.replace(
        get_config(),
        fractions=FULL_FRACTIONS,
        num_trials=100,
        label="full",
    )
