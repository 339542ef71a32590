"""Configs of ``make reproduce-deep`` (docs/studies.md, part 2): where does
selective write-verify pay off for a deep network, and why? ResNet-18 of base
width 16 (``--full``: the standard 64) with batch-norm in inference mode (its
running statistics; the noise goes on the conv and dense kernels only) on
mnist-10k and on Fashion-MNIST, both zero-padded to 32x32, under uniform
variation at sigma in {0.05, 0.1, 0.15, 0.2, 0.3} and U-SWIM's
state-dependent variation s = 3 at sigma = 0.1 (sigma_verified = sigma / 10, a
verify costs 10 cycles), comparing random, magnitude, SWIM, U-SWIM and the
expected-loss scores of the one-pass diagonal and of the exact GGN diagonal.
One run folder per dataset.

Training is the authors' ResNet recipe (SGD 0.01, momentum 0.9, weight decay
5e-4, cosine schedule, batch 128) for a few epochs, no augmentation. The
default is sized for 2 CPU cores and departs from a full evaluation in stated
ways (printed in each run's choices line): 10 Monte Carlo trials over the first
500 test images, 8 budget points, Fashion-MNIST trained on its first 20,000
images for 4 epochs (mnist-10k: all 8,000, 8 epochs), the one-pass diagonal over
4,096 training images and the GGN over 256.
"""

import dataclasses

from experiments._studies import Run
from uswim_jax.experiment import FULL_FRACTIONS, ExperimentConfig
from uswim_jax.train import TrainConfig

SIGMAS = (0.05, 0.1, 0.15, 0.2, 0.3)
METHODS = ("random", "magnitude", "swim", "uswim", "eloss-obd", "eloss-ggn")
#: Images are zero-padded to this size (ResNet-18's CIFAR input).
IMAGE_SIZE = 32
FRACTIONS = (0.002, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """One config per dataset (``bases``: ``(dataset, config)`` pairs), each
    run in its own folder; ``image_size``: the padded image side."""

    bases: tuple[tuple[str, ExperimentConfig], ...]
    image_size: int = IMAGE_SIZE

    def __post_init__(self):
        if not self.bases:
            raise ValueError("bases must be non-empty")
        names = [ds for ds, _ in self.bases]
        if len(set(names)) != len(names):
            raise ValueError(f"datasets repeat: {names}")

    def runs(self) -> list[Run]:
        return [(ds, "run", cfg) for ds, cfg in self.bases]


def _train(ds: str, width: int, **kw) -> TrainConfig:
    size = {
        "mnist": {"epochs": 8},
        "fashion_mnist": {"epochs": 4, "train_subset": 20000},
    }
    return TrainConfig(
        **{
            "model": "resnet18",
            "dataset": ds,
            "seed": 0,
            "width": width,
            **size[ds],
            **kw,
        }
    )


def _base(
    ds: str, width: int = 16, train: dict | None = None, **kw
) -> ExperimentConfig:
    return ExperimentConfig(
        **{
            "train": _train(ds, width, **(train or {})),
            "sigmas": SIGMAS,
            "s_values": (3.0,),
            "s_sigma": 0.1,
            "fractions": FRACTIONS,
            "num_trials": 10,
            "methods": METHODS,
            "test_subset": 500,
            "curvature_subset": 4096,
            "estimator_subset": 256,
            "label": "deep",
            **kw,
        }
    )


DATASETS = ("mnist", "fashion_mnist")


def get_config() -> StudyConfig:
    """ResNet-18 of width 16 on both datasets (see the module docstring)."""
    return StudyConfig(tuple((ds, _base(ds)) for ds in DATASETS))


def get_quick_config() -> StudyConfig:
    """A smoke run of every stage: width 8, 1 epoch on 1,024 images, two
    sigmas and the state setting, 3 trials over 100 test images, 4 budget
    points, the diagonals over 256 / 64 images."""
    return StudyConfig(
        tuple(
            (
                ds,
                _base(
                    ds,
                    width=8,
                    train={"epochs": 1, "train_subset": 1024},
                    sigmas=(0.1, 0.3),
                    fractions=(0.01, 0.1, 0.3, 0.7),
                    num_trials=3,
                    test_subset=100,
                    curvature_subset=256,
                    estimator_subset=64,
                    label="deep-quick",
                ),
            )
            for ds in DATASETS
        )
    )


def get_full_config() -> StudyConfig:
    """The standard width 64, 15 epochs on every training image, 100 trials
    over 2,000 test images, the dense budget grid plus 70 %, the one-pass
    diagonal over every training image and the GGN over 1,024 (meant for a
    GPU)."""
    return StudyConfig(
        tuple(
            (
                ds,
                _base(
                    ds,
                    width=64,
                    train={"epochs": 15, "train_subset": None},
                    fractions=(*FULL_FRACTIONS, 0.7),
                    num_trials=100,
                    test_subset=2000,
                    curvature_subset=None,
                    estimator_subset=1024,
                    chunk_size=None,
                    label="deep-full",
                ),
            )
            for ds in DATASETS
        )
    )
