"""What a reproduction run depends on: :class:`ExperimentConfig` (hashed into
the run folder's ``config.json``), its device :class:`Setting` s, the method
names and the ablation switches."""

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from uswim_jax.chip_programming import PerChipConfig
from uswim_jax.device import StateDependentVariation, UniformVariation
from uswim_jax.sweep import counts_for_fractions
from uswim_jax.train import TrainConfig

#: Selection methods a sweep can compare (``none`` and ``exhaustive`` are the
#: end points of every curve and always reported).
METHODS = (
    "random",
    "magnitude",
    "swim",
    "uswim",
    "eloss-obd",
    "eloss-hutchinson",
    "eloss-ggn",
    "eloss-fisher",
)
ESTIMATORS = ("obd", "hutchinson", "ggn", "fisher")

#: The dense budget grid of every ``--full`` run (verified fractions).
FULL_FRACTIONS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One device setting: uniform variation (``s`` is None) or U-SWIM's
    state-dependent variation with ratio ``s``; ``sigma_verified = ratio *
    sigma``."""

    sigma: float
    s: float | None = None
    ratio: float = 0.1

    @property
    def name(self) -> str:
        if self.s is None:
            return f"uniform sigma={self.sigma:g}"
        return f"state s={self.s:g} sigma={self.sigma:g}"

    def device(self, verify_cycles: float) -> Any:
        sv = self.ratio * self.sigma
        if self.s is None:
            return UniformVariation(self.sigma, sv, verify_cycles=verify_cycles)
        return StateDependentVariation(
            self.sigma, sv, self.s, verify_cycles=verify_cycles
        )


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything a reproduction run depends on (hashed into ``config.json``)."""

    train: TrainConfig = TrainConfig()
    sigmas: tuple[float, ...] = (0.1, 0.2, 0.3)
    s_values: tuple[float, ...] = (2.0, 3.0, 5.0)
    s_sigma: float = 0.3
    verified_ratio: float = 0.1
    fractions: tuple[float, ...] = (
        0.001,
        0.002,
        0.005,
        0.01,
        0.02,
        0.05,
        0.1,
        0.2,
        0.3,
        0.5,
    )
    num_trials: int = 30
    methods: tuple[str, ...] = METHODS
    verify_cycles: float = 10.0
    seed: int = 0
    test_subset: int | None = None
    curvature_subset: int | None = None
    estimator_subset: int = 512
    hutchinson_probes: int = 32
    chunk_size: int | None = 5
    eval_batch_size: int | None = 20
    # Budget points per saved unit of work within a curve (None: whole curves).
    steps_per_chunk: int | None = None
    # Ablation switches (docs/method.md §8, §10); at their defaults they are left
    # out of ``to_json`` so older run folders keep their config hash.
    first_order: bool = True
    k_power: int = 1
    avg_pool: str = "exact"
    # The authors' Q-layer scale rule (h * a instead of h * a**2, docs/method.md
    # §8); "authors" needs a quantized model (train.weight_bits).
    q_scale: str = "exact"
    curvature_augment: bool = False
    programming: str = "gaussian"
    finetune_steps: int = 0
    finetune_sigma: float = 0.3
    label: str = "default"
    # The per-chip programming study (uswim_jax.experiment.per_chip); None: off.
    # The curves do not depend on it, so it is not hashed (see execution_json).
    per_chip: PerChipConfig | None = None

    def __post_init__(self):
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; choose from {METHODS}")
        if not isinstance(self.num_trials, int) or self.num_trials < 1:
            raise ValueError(f"num_trials must be >= 1, got {self.num_trials!r}")
        for name in ("sigmas", "s_values"):
            if any(not v >= 0 for v in getattr(self, name)):
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if any(s <= 0 for s in self.s_values):
            raise ValueError(f"s_values must be > 0, got {self.s_values}")
        if not 0 <= self.verified_ratio <= 1:
            raise ValueError(
                f"verified_ratio must lie in [0, 1], got {self.verified_ratio}"
            )
        counts_for_fractions(self.fractions, 1)  # validates the fractions
        _check_config(self)
        _check_ablation_flags(self)

    def settings(self) -> list[Setting]:
        out = [Setting(s, None, self.verified_ratio) for s in self.sigmas]
        out += [Setting(self.s_sigma, s, self.verified_ratio) for s in self.s_values]
        return out

    def to_json(self) -> dict[str, Any]:
        """What the run's results depend on, as JSON (hashed into the run
        folder's ``config.json``): every field but :data:`EXECUTION_FIELDS`."""
        d = dataclasses.asdict(self)
        for k in (*EXECUTION_FIELDS, "per_chip"):
            d.pop(k)
        for k, v in ABLATION_DEFAULTS.items():
            if d.get(k) == v:
                d.pop(k, None)
        d["train"] = self.train.to_json()  # leaves out unset new train fields
        return d

    def execution_json(self) -> dict[str, Any]:
        """How the run is executed (:data:`EXECUTION_FIELDS`): recorded in the
        run folder but not hashed, so a change resumes the same run."""
        out = {k: getattr(self, k) for k in EXECUTION_FIELDS}
        if self.per_chip is not None:  # absent when off: older folders unchanged
            out["per_chip"] = dataclasses.asdict(self.per_chip)
        return out


#: Fields of :class:`ExperimentConfig` that say how the work is batched, not
#: what is computed: Monte Carlo trials per vectorised chunk, images per forward
#: batch and budget steps per saved unit of work. Every trial, image and budget
#: step keeps its own keys and noise under any of them; what can change is the
#: float32 summation order of the forward pass, i.e. logits in the last bits
#: (docs/architecture.md, "Config identity"). They are not part of a run's
#: identity: a change resumes the same run folder.
EXECUTION_FIELDS = ("chunk_size", "eval_batch_size", "steps_per_chunk")

#: Execution fields older run folders may hold that are gone: ``conv_impl``
#: (the trials' convolution path; every model now runs through the same
#: im2col trial batching, ``uswim_jax._trialbatch``). :func:`load_config`
#: ignores them, with a note.
REMOVED_EXECUTION_FIELDS = ("conv_impl",)


def _check_config(c: "ExperimentConfig") -> None:
    """The checks of ``ExperimentConfig`` beyond methods, trials, sigmas and
    fractions: every error names the field."""
    if not isinstance(c.methods, tuple | list) or not c.methods:
        raise ValueError(
            f"methods must be a non-empty tuple of names, got {c.methods!r}"
        )
    for name in ("sigmas", "s_values", "fractions"):
        v = getattr(c, name)
        if not isinstance(v, tuple | list):
            raise ValueError(f"{name} must be a tuple of numbers, got {v!r}")
    if c.per_chip is not None and not isinstance(c.per_chip, PerChipConfig):
        raise ValueError(
            f"per_chip must be a PerChipConfig or None, got {c.per_chip!r}"
        )
    if not c.sigmas and not c.s_values:
        raise ValueError("sigmas and s_values are both empty: no setting to run")
    for name in ("sigmas", "s_values", "s_sigma", "verified_ratio"):
        vals = np.atleast_1d(np.asarray(getattr(c, name), np.float64))
        if not np.all(np.isfinite(vals)) or np.any(vals < 0):
            raise ValueError(
                f"{name} must be finite and >= 0, got {getattr(c, name)!r}"
            )
    if not (math.isfinite(c.verify_cycles) and c.verify_cycles > 0):
        raise ValueError(f"verify_cycles must be > 0, got {c.verify_cycles!r}")
    if (
        not isinstance(c.seed, int)
        or isinstance(c.seed, bool)
        or not 0 <= c.seed < 2**32
    ):
        raise ValueError(f"seed must be an integer in [0, 2**32), got {c.seed!r}")
    for name in (
        "test_subset",
        "curvature_subset",
        "estimator_subset",
        "hutchinson_probes",
        "chunk_size",
        "eval_batch_size",
        "steps_per_chunk",
    ):
        v = getattr(c, name)
        optional = name not in ("estimator_subset", "hutchinson_probes")
        if v is None and optional:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


#: The ablation switches of :class:`ExperimentConfig` and their defaults.
ABLATION_DEFAULTS = {
    "first_order": True,
    "k_power": 1,
    "avg_pool": "exact",
    "q_scale": "exact",
    "curvature_augment": False,
    "programming": "gaussian",
    "finetune_steps": 0,
    "finetune_sigma": 0.3,
}


def _check_ablation_flags(c: "ExperimentConfig") -> None:
    if not isinstance(c.first_order, bool):
        raise ValueError(f"first_order must be a bool, got {c.first_order!r}")
    if c.k_power not in (1, 2) or isinstance(c.k_power, bool):
        raise ValueError(f"k_power must be 1 or 2, got {c.k_power!r}")
    if c.avg_pool not in ("exact", "authors"):
        raise ValueError(f"avg_pool must be 'exact' or 'authors', got {c.avg_pool!r}")
    if c.q_scale not in ("exact", "authors"):
        raise ValueError(f"q_scale must be 'exact' or 'authors', got {c.q_scale!r}")
    if c.q_scale == "authors" and c.train.weight_bits is None:
        # The authors' float layers multiply the output by the scale, which is
        # exact; only their quantized (Q) layers have the quirk.
        raise ValueError(
            "q_scale='authors' reproduces the authors' quantized layers: it needs "
            "a quantized model (train.weight_bits)"
        )
    if not isinstance(c.curvature_augment, bool):
        raise ValueError(
            f"curvature_augment must be a bool, got {c.curvature_augment!r}"
        )
    if c.programming not in ("gaussian", "pulse"):
        raise ValueError(
            f"programming must be 'gaussian' or 'pulse', got {c.programming!r}"
        )
    ft = c.finetune_steps
    if not isinstance(ft, int) or isinstance(ft, bool) or ft < 0:
        raise ValueError(f"finetune_steps must be an integer >= 0, got {ft!r}")
    if not (math.isfinite(c.finetune_sigma) and c.finetune_sigma >= 0):
        raise ValueError(f"finetune_sigma must be >= 0, got {c.finetune_sigma!r}")
    if c.programming == "pulse" and c.s_values:
        raise ValueError(
            "programming='pulse' models uniform variation only: set s_values=()"
        )


def _methods_for(setting: Setting, methods: tuple[str, ...]) -> list[str]:
    # Under uniform variation U-SWIM's multiplier is 1: its order is SWIM's.
    return [m for m in methods if not (m == "uswim" and setting.s is None)]


def load_config(run_dir: str | Path) -> ExperimentConfig:
    """The experiment config stored in a run folder."""
    record = json.loads((Path(run_dir) / "config.json").read_text())
    raw = record["config"]
    execution = dict(record.get("execution", {}))
    for k in REMOVED_EXECUTION_FIELDS:
        if k in execution:
            warnings.warn(
                f"{run_dir}/config.json records the removed execution setting "
                f"{k}={execution.pop(k)!r}; it is ignored (the trials of every "
                "model run through the same im2col trial batching)",
                DeprecationWarning,
                stacklevel=2,
            )
    d = {**raw["experiment"], **execution}
    d["train"] = TrainConfig(**d["train"])
    for k in ("sigmas", "s_values", "fractions", "methods"):
        d[k] = tuple(d[k])
    if d.get("per_chip") is not None:
        pc = d["per_chip"]
        d["per_chip"] = PerChipConfig(
            **{**pc, "batch_fractions": tuple(pc["batch_fractions"])}
        )
    return ExperimentConfig(**d)
