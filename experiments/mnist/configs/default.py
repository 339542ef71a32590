"""Configs of ``make reproduce-mnist``: LeNet on MNIST with the authors' recipe
(Adam 1e-3, batch 128, 20 epochs; docs/method.md §9), then selective write-verify
under uniform variation (sigma = 0.1, 0.2, 0.3) and U-SWIM's state-dependent
variation (s = 2, 3, 5 at sigma = 0.3, the authors' default dev_var), with
sigma_verified = sigma / 10."""

from uswim_jax.experiment import ExperimentConfig, presets
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
    """A smoke run of every stage, in about 3 minutes (``presets.QUICK``: 2
    epochs on 2,048 images, two settings, 500 test images, 8 trials)."""
    return presets.quick(get_config())


def get_full_config() -> ExperimentConfig:
    """The whole grid with 100 trials (meant for a GPU; ``presets.FULL``)."""
    return presets.full(get_config())
