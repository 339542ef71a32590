"""Configs of ``make ablations``: LeNet on MNIST (the same training as
``make reproduce-mnist``), a base run that follows the authors' code, and one
variant per ablation (docs/method.md §8, §10). Each variant changes one thing
and runs only the settings and methods that the change can affect, so the whole
table costs about as much as a third of ``reproduce-mnist``.

The base: uniform variation sigma = 0.3 and U-SWIM's state-dependent variation
s = 3 at sigma = 0.3 (the authors' default dev_var and a mid s), sigma_verified
= sigma / 10, a write-verify costs 10 cycles per device, first-order term on,
U-SWIM's k linear, the authors' average-pool rule (h/k), Gaussian programming,
7 budget points.

The authors' two sensitivity quirks need other models, so each is a pair of
variants on its own model, compared in their own section of the table:

- the Q-layer scale rule (h * a instead of h * a**2, docs/method.md §8) exists only
  in quantized layers: a 4-bit LeNet (the authors' QLeNet bit width), trained
  like the base, with the exact rule and with the authors';
- the average-pool rule (h / k instead of h / k**2) needs an average pool, which
  LeNet lacks: a narrow ResNet-18 (base width 8, global average pool over the
  last 4x4 feature map, so k = 16) on the same MNIST images, a few epochs of the
  authors' ResNet recipe, with each rule, on a test subset with fewer trials so
  that it fits the 2-core CPU in a few minutes.
"""

import dataclasses
from typing import Any

from uswim_jax.experiment import ExperimentConfig
from uswim_jax.train import TrainConfig

UNIFORM = {"sigmas": (0.3,), "s_values": ()}
STATE = {"sigmas": (), "s_values": (3.0,)}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row group of the table: ``changes`` replace fields of the base
    config (an empty tuple is the base itself)."""

    name: str
    what: str
    changes: tuple[tuple[str, Any], ...] = ()

    def apply(self, base: ExperimentConfig) -> ExperimentConfig:
        return dataclasses.replace(base, **dict(self.changes), label=self.name)


@dataclasses.dataclass(frozen=True)
class AblationConfig:
    """The base, the variants, and ``pairs`` of variant names ``(reference,
    changed)`` whose verification orders are compared in the table (Spearman,
    per-layer verified fractions, accuracy against budget)."""

    base: ExperimentConfig
    variants: tuple[Variant, ...]
    pairs: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        names = [v.name for v in self.variants]
        if not names or names[0] != "base" or self.variants[0].changes:
            raise ValueError("the first variant must be 'base' with no changes")
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        for v in self.variants:
            v.apply(self.base)  # validates every variant's config
        for pair in self.pairs:
            if len(pair) != 2 or not set(pair) <= set(names):
                raise ValueError(f"pairs must name two variants, got {pair!r}")


def _u(**kw) -> tuple[tuple[str, Any], ...]:
    return tuple({**UNIFORM, "methods": ("swim",), **kw}.items())


#: The quantized LeNet of the Q-layer scale pair (the authors' QLeNet, 4 bits).
QLENET_TRAIN = TrainConfig(
    model="lenet", dataset="mnist", epochs=20, seed=0, weight_bits=4
)
#: The narrow ResNet-18 of the average-pool pair (the authors' ResNet recipe:
#: SGD 0.01, momentum 0.9, weight decay 5e-4, cosine; 5 epochs).
RESNET_TRAIN = TrainConfig(model="resnet18", dataset="mnist", epochs=5, seed=0, width=8)
#: Monte Carlo size of the ResNet pair (first test images, trials).
RESNET_MC = {"test_subset": 1000, "num_trials": 10}

#: The pairs the table compares order by order.
PAIRS = (
    ("qlenet4", "qlenet4-q-scale-authors"),
    ("resnet-avg-pool-exact", "resnet-avg-pool-authors"),
)


def variants(
    base_fractions: tuple[float, ...],
    finetune_steps: int = 1000,
    *,
    qlenet_train: TrainConfig = QLENET_TRAIN,
    resnet_train: TrainConfig = RESNET_TRAIN,
    resnet_mc: dict[str, Any] | None = None,
) -> tuple[Variant, ...]:
    coarse = tuple(f for f in (0.01, 0.05, 0.2) if f <= max(base_fractions))
    extra = {0.001, 0.003, 0.0075, 0.015, 0.03, 0.075, 0.15}
    top = max(base_fractions)
    fine = tuple(sorted(set(base_fractions) | {f for f in extra if f <= top}))
    mc = RESNET_MC if resnet_mc is None else resnet_mc
    return (
        Variant("base", "the authors' code (see the config docstring)"),
        Variant(
            "no-first-order",
            "first-order term off: S = h_hat (U-SWIM's --no_first)",
            (("first_order", False), ("methods", ("swim", "uswim"))),
        ),
        Variant(
            "k-squared",
            "U-SWIM multiplier k**2 (variance ratio) instead of k (std ratio)",
            tuple({**STATE, "methods": ("uswim",), "k_power": 2}.items()),
        ),
        Variant(
            "coarse-steps",
            f"{len(coarse)} programming steps (budget points) instead of "
            f"{len(base_fractions)}",
            _u(fractions=coarse),
        ),
        Variant(
            "fine-steps",
            f"{len(fine)} programming steps instead of {len(base_fractions)}",
            _u(fractions=fine),
        ),
        Variant(
            "pulse",
            "pulse-level write-verify (programming.PulseModel, calibrated "
            "defaults) instead of the Gaussian model; cycles are the pulses spent",
            _u(programming="pulse"),
        ),
        Variant(
            "noise-finetune",
            f"noise-aware fine-tuning first ({finetune_steps} SGD steps, lr 1e-4, "
            "momentum 0.9, a fresh sigma = 0.3 noise draw per batch; docs/method.md "
            "§7.4), then the same sweep: compare its none_verified (NWC 0.1, plain "
            "writes only) and its curve with the base's SWIM at equal NWC",
            _u(finetune_steps=finetune_steps),
        ),
        Variant(
            "ratio-0.05",
            "sigma_verified = 0.05 sigma instead of 0.1 sigma",
            _u(verified_ratio=0.05),
        ),
        Variant(
            "ratio-0.2",
            "sigma_verified = 0.2 sigma instead of 0.1 sigma",
            _u(verified_ratio=0.2),
        ),
        Variant(
            "qlenet4",
            f"{qlenet_train.weight_bits}-bit LeNet (the authors' QLeNet bit "
            "width; noise on Q(W)), exact Q-layer scale rule (h * a**2)",
            _u(train=qlenet_train),
        ),
        Variant(
            "qlenet4-q-scale-authors",
            f"{qlenet_train.weight_bits}-bit LeNet, the authors' Q-layer scale "
            "rule: h through the input scale x * max|W_l| gets a, not a**2, so "
            "every crossbar layer divides the h of its input by max|W_l| "
            "(docs/method.md §8)",
            _u(train=qlenet_train, q_scale="authors"),
        ),
        Variant(
            "resnet-avg-pool-exact",
            f"ResNet-18 of width {resnet_train.width} ({resnet_train.epochs} "
            "epochs), exact average-pool rule h/k**2",
            _u(train=resnet_train, avg_pool="exact", **mc),
        ),
        Variant(
            "resnet-avg-pool-authors",
            f"ResNet-18 of width {resnet_train.width}, the authors' "
            "average-pool rule h/k (every conv's h times k = 16 relative to the "
            "dense head)",
            _u(train=resnet_train, avg_pool="authors", **mc),
        ),
    )


def _base(**kw) -> ExperimentConfig:
    return ExperimentConfig(
        **{
            "train": TrainConfig(model="lenet", dataset="mnist", epochs=20, seed=0),
            "sigmas": (0.3,),
            "s_values": (3.0,),
            "s_sigma": 0.3,
            "fractions": (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2),
            "num_trials": 20,
            "methods": ("magnitude", "swim", "uswim"),
            "avg_pool": "authors",
            "label": "base",
            **kw,
        }
    )


def get_config() -> AblationConfig:
    """The default table: about 25-30 minutes from scratch on 2 shared CPU cores
    (the LeNet variants about 15, the quantized LeNet pair 2, the ResNet-18 pair
    about 11); a rerun resumes what its run folders hold."""
    base = _base()
    return AblationConfig(base, variants(base.fractions), PAIRS)


def get_quick_config() -> AblationConfig:
    """A smoke run of every variant in a few minutes: 2 epochs on 2,048 images
    (1 for the ResNet), 500 test images, 6 trials, 4 budget points."""
    base = _base(
        train=TrainConfig(
            model="lenet", dataset="mnist", epochs=2, seed=0, train_subset=2048
        ),
        fractions=(0.005, 0.01, 0.05, 0.2),
        num_trials=6,
        test_subset=500,
        curvature_subset=2048,
    )
    small = {"train_subset": 2048, "epochs": 2}
    return AblationConfig(
        base,
        variants(
            base.fractions,
            finetune_steps=200,
            qlenet_train=dataclasses.replace(QLENET_TRAIN, **small),
            resnet_train=dataclasses.replace(RESNET_TRAIN, **{**small, "epochs": 1}),
            resnet_mc={"test_subset": 500, "num_trials": 6},
        ),
        PAIRS,
    )
