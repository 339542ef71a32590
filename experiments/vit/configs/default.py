"""Configs of ``make reproduce-vit`` (docs/studies.md, part 3(c)): the full
selective write-verify comparison on a transformer. The small vision
transformer of ``uswim_jax.models.vit`` (patch 7, width 64, depth 6, 4 heads,
MLP 128: 200,384 crossbar weights; LayerNorm, softmax and the attention
products are digital) on mnist-10k and on Fashion-MNIST at 28x28, under the
reproductions' uniform variation sigma in {0.1, 0.2, 0.3} and U-SWIM's
state-dependent variation s = 3 at sigma = 0.3 (sigma_verified = sigma / 10, a
verify costs 10 cycles), comparing random, magnitude, SWIM, U-SWIM and the
expected-loss scores of the one-pass diagonal and of the exact GGN diagonal.
One run folder per dataset; the report says which layers (embedding,
query/key/value/output projections, MLP, head) absorb the verified budget.

Training: Adam 1e-3, batch 128 (the LeNet recipe), 15 epochs on mnist-10k's
8,000 training images, 5 on the first 20,000 Fashion-MNIST images. The default
is sized for 2 CPU cores: 20 Monte Carlo trials over the first 1,000 test
images, 8 budget points, the one-pass diagonal over 4,096 training images and
the GGN over 256.
"""

from experiments.deep.configs.default import StudyConfig
from uswim_jax.experiment import FULL_FRACTIONS, ExperimentConfig
from uswim_jax.train import TrainConfig

METHODS = ("random", "magnitude", "swim", "uswim", "eloss-obd", "eloss-ggn")
FRACTIONS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
DATASETS = ("mnist", "fashion_mnist")


def _train(ds: str, **kw) -> TrainConfig:
    size = {
        "mnist": {"epochs": 15},
        "fashion_mnist": {"epochs": 5, "train_subset": 20000},
    }
    return TrainConfig(**{"model": "vit", "dataset": ds, "seed": 0, **size[ds], **kw})


def _base(ds: str, train: dict | None = None, **kw) -> ExperimentConfig:
    return ExperimentConfig(
        **{
            "train": _train(ds, **(train or {})),
            "sigmas": (0.1, 0.2, 0.3),
            "s_values": (3.0,),
            "s_sigma": 0.3,
            "fractions": FRACTIONS,
            "num_trials": 20,
            "methods": METHODS,
            "test_subset": 1000,
            "curvature_subset": 4096,
            "estimator_subset": 256,
            "label": "vit",
            **kw,
        }
    )


def get_config() -> StudyConfig:
    """The ViT on both datasets (see the module docstring)."""
    return StudyConfig(tuple((ds, _base(ds)) for ds in DATASETS), image_size=28)


def get_quick_config() -> StudyConfig:
    """A smoke run of every stage: 1 epoch on 1,024 images, one sigma and the
    state setting, 3 trials over 100 test images, 4 budget points, the
    diagonals over 256 / 64 images."""
    return StudyConfig(
        tuple(
            (
                ds,
                _base(
                    ds,
                    train={"epochs": 1, "train_subset": 1024},
                    sigmas=(0.2,),
                    fractions=(0.01, 0.05, 0.2, 0.5),
                    num_trials=3,
                    test_subset=100,
                    curvature_subset=256,
                    estimator_subset=64,
                    label="vit-quick",
                ),
            )
            for ds in DATASETS
        ),
        image_size=28,
    )


def get_full_config() -> StudyConfig:
    """30 epochs on every training image, 100 trials over the whole test set,
    the dense budget grid, the one-pass diagonal over every training image and
    the GGN over 1,024 (meant for a GPU)."""
    return StudyConfig(
        tuple(
            (
                ds,
                _base(
                    ds,
                    train={"epochs": 30, "train_subset": None},
                    fractions=FULL_FRACTIONS,
                    num_trials=100,
                    test_subset=None,
                    curvature_subset=None,
                    estimator_subset=1024,
                    chunk_size=None,
                    label="vit-full",
                ),
            )
            for ds in DATASETS
        ),
        image_size=28,
    )
