"""Configs of ``make reproduce-mnist``: the authors' setup, the 4-bit QLeNet
with the authors' second-derivative rules (the Q-layer scale rule h * a and
the average-pool rule h / k, which changes nothing on LeNet as it has no
average pool, docs/method.md §8; the first-order term on and U-SWIM's k
linear, the defaults), and the float LeNet beside it as a second
model in the same report. Both are trained with the authors' recipe (Adam 1e-3,
batch 128, 20 epochs; docs/method.md §9), then selective write-verify runs
under uniform variation (sigma = 0.1, 0.2, 0.3) and U-SWIM's state-dependent
variation (s = 2, 3, 5 at sigma = 0.3, the authors' default dev_var), with
sigma_verified = sigma / 10.

Each function returns one :class:`ExperimentConfig` per model, QLeNet first;
each model runs in its own sub-folder (``qlenet/``, ``lenet/``).
"""

from uswim_jax.experiment import ExperimentConfig, presets
from uswim_jax.train import TrainConfig

#: The models of the report: ``(name, weight_bits)``; None is float.
MODELS = (("qlenet", 4), ("lenet", None))


def model_config(name: str, weight_bits: int | None) -> ExperimentConfig:
    """The default run of one model (the rules and image batch of
    ``presets.reproduction``)."""
    return ExperimentConfig(
        train=TrainConfig(
            model="lenet", dataset="mnist", epochs=20, seed=0, weight_bits=weight_bits
        ),
        fractions=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3),
        num_trials=50,
        label=f"default-{name}",
        **presets.reproduction(weight_bits),
    )


def get_config() -> tuple[ExperimentConfig, ...]:
    """The default run: about 20 minutes per model on 2 CPU cores."""
    return tuple(model_config(*m) for m in MODELS)


def get_quick_config() -> tuple[ExperimentConfig, ...]:
    """A smoke run of every stage, in about 3 minutes per model
    (``presets.QUICK``: 2 epochs on 2,048 images, two settings, 500 test images,
    8 trials)."""
    return tuple(
        presets.quick(c, label=c.label.replace("default", "quick"))
        for c in get_config()
    )


def get_full_config() -> tuple[ExperimentConfig, ...]:
    """The whole grid with 100 trials (meant for a GPU; ``presets.FULL``)."""
    return tuple(
        presets.full(c, label=c.label.replace("default", "full")) for c in get_config()
    )
