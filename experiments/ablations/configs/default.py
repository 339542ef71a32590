"""Configs of ``make ablations``: LeNet on MNIST (the same training as
``make reproduce-mnist``), a base run that follows the authors' code, and one
variant per ablation (method.md §4.3, §9, §10). Each variant changes one thing
and runs only the settings and methods that the change can affect, so the whole
table costs about as much as a third of ``reproduce-mnist``.

The base: uniform variation sigma = 0.3 and U-SWIM's state-dependent variation
s = 3 at sigma = 0.3 (the authors' default dev_var and a mid s), sigma_verified
= sigma / 10, a write-verify costs 10 cycles per device, first-order term on,
U-SWIM's k linear, the authors' average-pool rule (h/k), Gaussian programming,
7 budget points.
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
    base: ExperimentConfig
    variants: tuple[Variant, ...]

    def __post_init__(self):
        names = [v.name for v in self.variants]
        if not names or names[0] != "base" or self.variants[0].changes:
            raise ValueError("the first variant must be 'base' with no changes")
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        for v in self.variants:
            v.apply(self.base)  # validates every variant's config


def _u(**kw) -> tuple[tuple[str, Any], ...]:
    return tuple({**UNIFORM, "methods": ("swim",), **kw}.items())


def variants(
    base_fractions: tuple[float, ...], finetune_steps: int = 1000
) -> tuple[Variant, ...]:
    coarse = tuple(f for f in (0.01, 0.05, 0.2) if f <= max(base_fractions))
    extra = {0.001, 0.003, 0.0075, 0.015, 0.03, 0.075, 0.15}
    top = max(base_fractions)
    fine = tuple(sorted(set(base_fractions) | {f for f in extra if f <= top}))
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
            "avg-pool-exact",
            "exact average-pool rule h/k**2 instead of the authors' h/k "
            "(LeNet has no average pool: must match the base)",
            _u(avg_pool="exact"),
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
            "momentum 0.9, a fresh sigma = 0.3 noise draw per batch; method.md "
            "§6), then the same sweep: compare its none_verified (NWC 0.1, plain "
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
    """The default table: about 10 minutes on 2 CPU cores."""
    base = _base()
    return AblationConfig(base, variants(base.fractions))


def get_quick_config() -> AblationConfig:
    """A smoke run of every variant in a few minutes: 2 epochs on 2,048 images,
    500 test images, 6 trials, 4 budget points."""
    base = _base(
        train=TrainConfig(
            model="lenet", dataset="mnist", epochs=2, seed=0, train_subset=2048
        ),
        fractions=(0.005, 0.01, 0.05, 0.2),
        num_trials=6,
        test_subset=500,
        curvature_subset=2048,
    )
    return AblationConfig(base, variants(base.fractions, finetune_steps=200))
