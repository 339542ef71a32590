"""Configs of ``make reproduce-uswim-scan`` (docs/studies.md, part 4): where
could U-SWIM's "7x over SWIM" come from? The float LeNet of the reproductions
(the same training config, so its ``train/`` folder could be shared) on
mnist-10k and on Fashion-MNIST, under U-SWIM's state-dependent variation at
every s in {2, 3, 5, 8, 12} and sigma in {0.2, 0.3, 0.5} (sigma_verified =
sigma / 10, a verify costs 10 cycles), SWIM and U-SWIM only: 15 settings per
dataset, one run folder per sigma.

The default is sized for about 30 minutes on 2 CPU cores and departs from the
reproductions in stated ways (printed in every run's choices line): 30 Monte
Carlo trials per point (the reproductions: 50 on MNIST, 30 on Fashion-MNIST)
over the first 1,000 test images (they use 2,000), and budget points up to
50 % verified (a heavier noise needs more). ``--full`` takes 100 trials, the whole
test set, the dense budget grid plus 70 % and the authors' 20 Fashion-MNIST
epochs (meant for a GPU).
"""

import dataclasses

from experiments._studies import Run
from uswim_jax.experiment import FULL_FRACTIONS, ExperimentConfig
from uswim_jax.train import TrainConfig

S_VALUES = (2.0, 3.0, 5.0, 8.0, 12.0)
SIGMAS = (0.2, 0.3, 0.5)
#: The datasets and their float-LeNet training (the reproductions' configs).
TRAIN = {
    "mnist": TrainConfig(model="lenet", dataset="mnist", epochs=20, seed=0),
    "fashion_mnist": TrainConfig(
        model="lenet", dataset="fashion_mnist", epochs=10, seed=0
    ),
}
FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


@dataclasses.dataclass(frozen=True)
class ScanConfig:
    """The scan: one base config per dataset (``bases``: ``(dataset, config)``
    pairs), run at every ``sigmas`` x ``s_values`` with SWIM and U-SWIM."""

    bases: tuple[tuple[str, ExperimentConfig], ...]
    sigmas: tuple[float, ...] = SIGMAS
    s_values: tuple[float, ...] = S_VALUES

    def __post_init__(self):
        if not self.bases or not self.sigmas or not self.s_values:
            raise ValueError("bases, sigmas and s_values must be non-empty")
        if len(set(self.sigmas)) != len(self.sigmas):
            raise ValueError(f"sigmas repeat: {self.sigmas}")
        self.runs()  # validates every config

    def runs(self) -> list[Run]:
        """One run per (dataset, sigma): every s at that sigma, no uniform
        setting, SWIM and U-SWIM."""
        return [
            (
                ds,
                f"sigma-{sigma:g}",
                dataclasses.replace(
                    base,
                    sigmas=(),
                    s_values=self.s_values,
                    s_sigma=sigma,
                    methods=("swim", "uswim"),
                    label=f"{base.label}-sigma-{sigma:g}",
                ),
            )
            for ds, base in self.bases
            for sigma in self.sigmas
        ]


def _base(ds: str, **kw) -> ExperimentConfig:
    return ExperimentConfig(
        **{
            "train": TRAIN[ds],
            "fractions": FRACTIONS,
            "num_trials": 30,
            "test_subset": 1000,
            "eval_batch_size": 40,
            "avg_pool": "authors",
            "label": "uswim-scan",
            **kw,
        }
    )


def get_config() -> ScanConfig:
    """The default scan: 2 datasets x 3 sigmas x 5 s (see the module docstring
    for its size)."""
    return ScanConfig(tuple((ds, _base(ds)) for ds in TRAIN))


def get_quick_config() -> ScanConfig:
    """A smoke run of every stage: 1 epoch on 2,048 training images, two
    sigmas and two s per dataset, 4 trials over 200 test images, 5 budget
    points."""
    return ScanConfig(
        tuple(
            (
                ds,
                _base(
                    ds,
                    train=dataclasses.replace(t, epochs=1, train_subset=2048),
                    fractions=(0.005, 0.02, 0.1, 0.3, 0.5),
                    num_trials=4,
                    test_subset=200,
                    curvature_subset=2048,
                    label="uswim-scan-quick",
                ),
            )
            for ds, t in TRAIN.items()
        ),
        sigmas=(0.3, 0.5),
        s_values=(2.0, 8.0),
    )


def get_full_config() -> ScanConfig:
    """100 trials over the whole test set, the dense budget grid plus 70 %,
    20 epochs on both datasets (meant for a GPU)."""
    return ScanConfig(
        tuple(
            (
                ds,
                _base(
                    ds,
                    train=dataclasses.replace(t, epochs=20),
                    fractions=(*FULL_FRACTIONS, 0.7),
                    num_trials=100,
                    test_subset=None,
                    chunk_size=None,
                    label="uswim-scan-full",
                ),
            )
            for ds, t in TRAIN.items()
        )
    )
