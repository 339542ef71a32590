"""The reproduction pipeline: train (or reuse) a model, compute sensitivities,
sweep every selection method under every device setting, and write a run folder.

Every finished unit of work (the trained model, the sensitivities, the
exhaustive/no-verify end points of each setting, each step chunk of a curve when
``steps_per_chunk`` is set, and each (setting, method) curve in ``curves/``) is
written atomically into the run folder as it completes; running the same command
again skips what is done, so a run killed at any moment (SIGINT or SIGKILL) loses
nothing already written. A different config in the same folder is refused, and so
is a different JAX version, backend, PRNG setting or dataset (``manifest.json``):
results would not be byte-identical.
"""

import dataclasses
import functools
import json
import math
import time
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uswim_jax import curvature, selection
from uswim_jax._checks import check_dataset
from uswim_jax._io import (
    atomic_write_bytes,
    atomic_write_json,
    npz_bytes,
    remove_stale_temp_files,
)
from uswim_jax.data import Dataset
from uswim_jax.device import StateDependentVariation, UniformVariation
from uswim_jax.montecarlo import evaluate
from uswim_jax.report import check_resumable, config_hash, manifest, prepare_run_dir
from uswim_jax.sweep import Curve, counts_for_fractions, sweep
from uswim_jax.train import TrainConfig, train

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
    conv_impl: str = "im2col"
    # Budget points per saved unit of work within a curve (None: whole curves).
    steps_per_chunk: int | None = None
    # Ablation switches (method.md §4.3, §9); at their defaults they are left
    # out of ``to_json`` so older run folders keep their config hash.
    first_order: bool = True
    k_power: int = 1
    avg_pool: str = "exact"
    # The authors' Q-layer scale rule (h * a instead of h * a**2, method.md
    # §4.3); "authors" needs a quantized model (train.weight_bits).
    q_scale: str = "exact"
    curvature_augment: bool = False
    programming: str = "gaussian"
    finetune_steps: int = 0
    finetune_sigma: float = 0.3
    label: str = "default"

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
        d = dataclasses.asdict(self)
        # Absent when unset, so run folders made before the field existed keep
        # their config hash (and resume).
        if d.get("steps_per_chunk") is None:
            d.pop("steps_per_chunk", None)
        for k, v in ABLATION_DEFAULTS.items():
            if d.get(k) == v:
                d.pop(k, None)
        d["train"] = self.train.to_json()  # leaves out unset new train fields
        return d


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
    if not isinstance(c.seed, int) or isinstance(c.seed, bool) or c.seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {c.seed!r}")
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


def _methods_for(setting: Setting, methods: tuple[str, ...]) -> list[str]:
    # Under uniform variation U-SWIM's multiplier is 1: its order is SWIM's.
    return [m for m in methods if not (m == "uswim" and setting.s is None)]


# ----------------------------------------------------------------- sensitivities


def _save_tree(path: Path, trees: dict[str, Any]) -> None:
    arrays = {}
    for name, tree in trees.items():
        for i, leaf in enumerate(jax.tree.leaves(tree)):
            arrays[f"{name}/{i}"] = np.asarray(leaf)
    atomic_write_bytes(path, npz_bytes(**arrays))


def _load_tree(path: Path, template: Any, names: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    treedef = jax.tree.structure(template)
    n = treedef.num_leaves
    try:
        with open(path, "rb") as f, np.load(f) as z:
            if not all(f"{name}/0" in z for name in names):
                return None
            return {
                name: treedef.unflatten([z[f"{name}/{i}"] for i in range(n)])
                for name in names
            }
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"corrupt sensitivity file {path} ({e}); delete it") from e


def compute_sensitivities(
    apply_fn, params, train_data: Dataset, config: ExperimentConfig, log=print
) -> dict[str, Any]:
    """One-pass diagonal (and first-order term) over the training set, plus the
    other curvature estimators on a subset. Returns a dict of pytrees."""
    x, y = train_data
    n = config.curvature_subset or len(x)
    t0 = time.perf_counter()
    aug = {}
    if config.curvature_augment:
        # Training augmentations in the second-derivative pass (method.md §4.2
        # step 2, §10.3), batch-norm in inference mode (apply_fn).
        from uswim_jax.train import augment_batch

        aug = {
            "augment": augment_batch,
            "key": jax.random.fold_in(jax.random.key(config.seed), 13),
        }
    hess, grad = curvature.obd_over_dataset(
        apply_fn,
        params,
        x[:n],
        y[:n],
        avg_pool=config.avg_pool,
        q_scale=config.q_scale,
        **aug,
    )
    hess, grad = jax.block_until_ready((hess, grad))  # so the time is real
    out = {"obd": hess, "obd_grad": grad}
    log(
        f"  one-pass diagonal over {n} training images: "
        f"{time.perf_counter() - t0:.1f} s"
    )
    wanted = {m.split("-", 1)[1] for m in config.methods if m.startswith("eloss-")}
    m = min(config.estimator_subset, len(x))
    xs, ys = jnp.asarray(x[:m]), jnp.asarray(y[:m])
    if "hutchinson" in wanted:
        t0 = time.perf_counter()
        loss_fn = curvature.make_loss_fn(apply_fn, xs, ys)
        est, se = jax.jit(
            functools.partial(
                curvature.hutchinson_diagonal,
                num_probes=config.hutchinson_probes,
                chunk_size=8,
            ),
            static_argnums=(1,),
        )(jax.random.fold_in(jax.random.key(config.seed), 7), loss_fn, params)
        out["hutchinson"], out["hutchinson_se"] = jax.block_until_ready((est, se))
        log(
            f"  Hutchinson ({config.hutchinson_probes} probes, {m} images): "
            f"{time.perf_counter() - t0:.1f} s"
        )
    for name, fn in (
        ("ggn", curvature.ggn_diagonal),
        ("fisher", curvature.fisher_diagonal),
    ):
        if name in wanted:
            t0 = time.perf_counter()
            out[name] = jax.block_until_ready(
                jax.jit(functools.partial(fn, apply_fn, chunk_size=64))(params, xs, ys)
            )
            log(f"  {name} diagonal ({m} images): {time.perf_counter() - t0:.1f} s")
    return out


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


def _finetuned(model, params, train_data, config, run_dir: Path, log) -> Any:
    """Noise-aware fine-tuning of the trained model (method.md §6), cached in
    ``run_dir/finetuned.npz``."""
    from uswim_jax.finetune import FinetuneConfig, noise_aware_finetune

    path = run_dir / "finetuned.npz"
    got = _load_tree(path, params, ["params"])
    if got is not None:
        return got["params"]
    t0 = time.perf_counter()
    if config.train.train_subset:
        train_data = train_data.take(config.train.train_subset)
    device = UniformVariation(config.finetune_sigma, 0.0)
    ft = FinetuneConfig(
        steps=config.finetune_steps,
        batch_size=min(config.train.batch_size, len(train_data)),
        seed=config.seed,
    )
    params, _ = noise_aware_finetune(model, params, train_data, device, ft)
    _save_tree(path, {"params": params})
    log(
        f"  noise-aware fine-tuning, {config.finetune_steps} steps at sigma "
        f"{config.finetune_sigma:g}: {time.perf_counter() - t0:.1f} s"
    )
    return params


def _mc_device(setting: Setting, config: "ExperimentConfig") -> Any:
    """The device model Monte Carlo runs under: the setting's Gaussian model, or
    the pulse-level process (``programming="pulse"``) with the calibrated
    defaults and the tolerance scaled so the residual std is about
    ``ratio * sigma`` (the defaults give 0.03 at sigma 0.3)."""
    if config.programming != "pulse":
        return setting.device(config.verify_cycles)
    from uswim_jax.device import DEFAULT_SIGMA_VERIFIED
    from uswim_jax.programming import DEFAULT_TOLERANCE, PulseModel

    tol = DEFAULT_TOLERANCE * setting.ratio * setting.sigma / DEFAULT_SIGMA_VERIFIED
    return PulseModel(sigma=setting.sigma, tolerance=tol)


def _is_pulse(device: Any) -> bool:
    from uswim_jax.programming import PulseModel

    return isinstance(device, PulseModel)


def method_order(
    method: str,
    params,
    sens: dict[str, Any],
    setting: Setting,
    device,
    seed: int,
    *,
    first_order: bool = True,
    k_power: int = 1,
) -> jax.Array:
    """The verification order of ``method`` under ``setting`` (``first_order``
    and ``k_power`` are the SWIM/U-SWIM ablation switches)."""
    if _is_pulse(device):  # expected-loss orders use the Gaussian equivalent
        device = setting.device(1.0)
    if method == "random":
        key = jax.random.fold_in(jax.random.key(seed), 11)
        scores = selection.random_score(key, params)
    elif method == "magnitude":
        scores = selection.magnitude_score(params)
    elif method == "swim":
        scores = selection.swim_score(
            params, sens["obd"], sens["obd_grad"], first_order=first_order
        )
    elif method == "uswim":
        scores = selection.uswim_score(
            params,
            sens["obd"],
            sens["obd_grad"],
            s=1.0 if setting.s is None else setting.s,
            first_order=first_order,
            k_power=k_power,
        )
    elif method.startswith("eloss-"):
        sw, sv = device.std(params)
        scores = selection.expected_loss_score(sens[method[6:]], sw, sv)
    else:
        raise ValueError(f"unknown method {method!r}")
    return selection.global_order(scores)


# ----------------------------------------------------------------- the run


@functools.partial(
    jax.jit,
    static_argnames=("apply_fn", "num_trials", "chunk_size", "eval_batch_size"),
)
def _sweep_jit(
    key,
    params,
    x,
    y,
    device,
    order,
    counts,
    reference,
    baseline,
    *,
    apply_fn,
    num_trials,
    chunk_size,
    eval_batch_size,
):
    run_sweep = sweep
    if _is_pulse(device):
        from uswim_jax.pulse_sweep import pulse_sweep as run_sweep
    return run_sweep(
        key,
        apply_fn,
        params,
        x,
        y,
        device,
        order,
        counts,
        num_trials,
        chunk_size=chunk_size,
        eval_batch_size=eval_batch_size,
        reference=reference,
        baseline=baseline,
    )


@functools.partial(
    jax.jit,
    static_argnames=("apply_fn", "num_trials", "chunk_size", "eval_batch_size"),
)
def _evaluate_jit(
    key,
    params,
    x,
    y,
    device,
    verified,
    *,
    apply_fn,
    num_trials,
    chunk_size,
    eval_batch_size,
):
    if _is_pulse(device):
        from uswim_jax.montecarlo import summarize
        from uswim_jax.pulse_sweep import pulse_trials

        out = pulse_trials(
            key,
            apply_fn,
            params,
            x,
            y,
            device,
            verified,
            num_trials,
            chunk_size=chunk_size,
            eval_batch_size=eval_batch_size,
        )
        return summarize(out[:, 0])
    return evaluate(
        key,
        apply_fn,
        params,
        x,
        y,
        device,
        verified,
        num_trials,
        chunk_size=chunk_size,
        eval_batch_size=eval_batch_size,
    )


def _curve_file(run_dir: Path, setting: Setting, method: str) -> Path:
    safe = setting.name.replace(" ", "_").replace("=", "")
    return run_dir / "curves" / f"{safe}__{method}.npz"


def _save_curve(path: Path, curve: Curve) -> None:
    atomic_write_bytes(
        path, npz_bytes(**{k: np.asarray(v) for k, v in curve._asdict().items()})
    )


def _load_curve(path: Path) -> Curve | None:
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f, np.load(f) as z:
            return Curve(**{k: z[k] for k in Curve._fields})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"corrupt curve file {path} ({e}); delete it") from e


def _chunk_slices(num_steps: int, steps_per_chunk: int | None) -> list[slice]:
    """The step ranges saved as separate units (one when not chunking)."""
    per = steps_per_chunk or max(num_steps, 1)
    return [slice(i, min(i + per, num_steps)) for i in range(0, num_steps, per)]


def _chunk_file(run_dir: Path, setting: Setting, method: str, i: int) -> Path:
    stem = _curve_file(run_dir, setting, method).stem
    return run_dir / "chunks" / f"{stem}__steps{i:04d}.npz"


def _ends_file(run_dir: Path, setting: Setting) -> Path:
    safe = setting.name.replace(" ", "_").replace("=", "")
    return run_dir / "chunks" / f"{safe}__ends.npz"


def _join_chunks(parts: list[Curve]) -> Curve:
    """One curve from its step chunks (in order): per-step fields are
    concatenated, the per-setting ones (reference, baseline) taken from the
    first chunk."""
    per_step = ("counts", "fractions", "cycles", "cycles_verified_only", "accuracies")
    first = parts[0]
    return first._replace(
        **{k: np.concatenate([getattr(p, k) for p in parts]) for k in per_step}
    )


def _sweep_in_chunks(
    run_dir: Path,
    setting: Setting,
    method: str,
    slices: list[slice],
    sweep_chunk,
    on_chunk=None,
) -> Curve:
    """The curve of (setting, method): every step chunk is loaded when already
    saved, else computed by ``sweep_chunk(slice)`` and saved atomically; the
    joined curve is saved as the finished unit and the chunk files removed."""
    parts = []
    for i, sl in enumerate(slices):
        path = _chunk_file(run_dir, setting, method, i)
        part = _load_curve(path) if len(slices) > 1 else None
        if part is None:
            part = jax.device_get(sweep_chunk(sl))
            if len(slices) > 1:
                _save_curve(path, part)
            if on_chunk is not None:
                on_chunk()
        parts.append(part)
    curve = _join_chunks(parts) if len(parts) > 1 else parts[0]
    _save_curve(_curve_file(run_dir, setting, method), curve)
    if len(slices) > 1:
        for i in range(len(slices)):
            _chunk_file(run_dir, setting, method, i).unlink(missing_ok=True)
    return curve


def _load_ends(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f, np.load(f) as z:
            return z["reference"], z["baseline"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"corrupt file {path} ({e}); delete it") from e


def run(
    config: ExperimentConfig,
    run_dir: str | Path,
    *,
    train_data: Dataset,
    test_data: Dataset,
    progress: bool = True,
    log=print,
) -> dict[str, Any]:
    """Runs (or resumes) the whole reproduction in ``run_dir``.

    Deterministic: the same config, seed, JAX version and backend give
    byte-identical curves (and ``curves.csv``), whether the run was interrupted
    and resumed or not.

    Returns:
        A dict with the model, clean accuracy, dataset name, the settings and
        ``curves[(setting_name, method)] -> Curve``; the report is written by
        :func:`uswim_jax.report.write_report`.

    Raises:
        ValueError: bad data (empty, NaN, mismatched labels or image shapes,
            labels out of range), a run folder holding a different config or
            made under a different environment or dataset, or a corrupt file in
            the run folder.
    """
    check_dataset("train_data", train_data)
    check_dataset("test_data", test_data)
    (x_tr, _), (x_te, _) = train_data, test_data
    shape_train, shape_test = np.shape(x_tr)[1:], np.shape(x_te)[1:]
    if shape_train != shape_test:
        raise ValueError(
            f"test_data images have shape {shape_test}, train_data {shape_train}"
        )
    from uswim_jax.models import build_model

    build_model(  # checks model, image shape and bits before anything is written
        config.train.model,
        num_classes=max(2, getattr(train_data, "num_classes", 10)),
        input_shape=tuple(shape_train),
        weight_bits=config.train.weight_bits,
        width=config.train.width,
    )
    run_dir = prepare_run_dir(run_dir, {"experiment": config.to_json()})
    num_test = len(test_data)
    if config.test_subset:
        num_test = min(num_test, config.test_subset)
    new_manifest = manifest(
        seed=config.seed,
        dataset=test_data.name,
        dataset_source=test_data.source,
        num_test=int(num_test),
        config_hash=config_hash({"experiment": config.to_json()}),
    )
    check_resumable(run_dir / "manifest.json", new_manifest, run_dir)
    remove_stale_temp_files(run_dir)  # left by a run that was killed mid-write
    atomic_write_json(run_dir / "manifest.json", new_manifest)
    start = time.perf_counter()
    result = train(
        config.train,
        run_dir / "train",
        train_data=train_data,
        test_data=test_data,
        progress=progress,
    )
    model, params = result.model, result.params
    if config.finetune_steps:
        params = _finetuned(model, params, train_data, config, run_dir, log)
    model, params = model.export(params)  # noise goes on Q(W) for quantized models
    eval_model = model
    if config.conv_impl != model.module.conv_impl:
        # The same function and params; im2col turns the Monte Carlo trials'
        # convolutions into matmuls (benchmarks/mc_throughput.py). Curvature uses
        # the plain model.
        eval_model = dataclasses.replace(
            model, module=model.module.clone(conv_impl=config.conv_impl)
        )
    apply_fn = model.apply_fn
    x_test, y_test = test_data
    if config.test_subset:
        x_test, y_test = x_test[: config.test_subset], y_test[: config.test_subset]
    x_test, y_test = jnp.asarray(x_test), jnp.asarray(y_test)
    from uswim_jax.train import accuracy

    clean = accuracy(apply_fn, params, np.asarray(x_test), np.asarray(y_test))

    sens_file = run_dir / "sensitivities.npz"
    names = ["obd", "obd_grad"] + [
        m.split("-", 1)[1]
        for m in config.methods
        if m.startswith("eloss-") and m != "eloss-obd"
    ]
    sens = _load_tree(sens_file, params, names)
    if sens is None:
        log("computing sensitivities")
        sens = compute_sensitivities(apply_fn, params, train_data, config, log)
        _save_tree(sens_file, {k: v for k, v in sens.items() if k in names})

    n = model.num_weights(params)
    counts = jnp.asarray(counts_for_fractions(config.fractions, n))
    key = jax.random.key(config.seed)
    common = {
        "apply_fn": eval_model.apply_fn,
        "num_trials": config.num_trials,
        "chunk_size": config.chunk_size,
        "eval_batch_size": config.eval_batch_size,
    }
    every = jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), params)
    units = [(s, m) for s in config.settings() for m in _methods_for(s, config.methods)]
    # Units of work: each step chunk of each (setting, method) curve.
    slices = _chunk_slices(int(counts.shape[0]), config.steps_per_chunk)
    curves: dict[tuple[str, str], Curve] = {}
    todo = []
    chunks_left = 0
    for s, m in units:
        c = _load_curve(_curve_file(run_dir, s, m))
        if c is None:
            todo.append((s, m))
            chunks_left += sum(
                not _chunk_file(run_dir, s, m, i).is_file() for i in range(len(slices))
            )
        else:
            curves[(s.name, m)] = c
            for i in range(len(slices)):  # left when killed right after the curve
                _chunk_file(run_dir, s, m, i).unlink(missing_ok=True)
    chunks_total = len(units) * len(slices)
    if chunks_left < chunks_total:
        log(
            f"resuming: {len(units) - len(todo)} of {len(units)} curves and "
            f"{chunks_total - chunks_left} of {chunks_total} step chunks already done"
        )
    bar = None
    if progress and chunks_left:
        from tqdm.auto import tqdm

        bar = tqdm(total=chunks_left, desc="sweeps", dynamic_ncols=True)
    ends: dict[str, tuple[Any, Any]] = {}
    for s, m in todo:
        device = _mc_device(s, config)
        if s.name not in ends:
            ends_path = _ends_file(run_dir, s)
            got = _load_ends(ends_path)
            if got is None:
                ref = _evaluate_jit(
                    key, params, x_test, y_test, device, every, **common
                )
                base = _evaluate_jit(
                    key, params, x_test, y_test, device, None, **common
                )
                got = jax.device_get((ref.accuracies, base.accuracies))
                atomic_write_bytes(
                    ends_path, npz_bytes(reference=got[0], baseline=got[1])
                )
            ends[s.name] = got
        order = method_order(
            m,
            params,
            sens,
            s,
            device,
            config.seed,
            first_order=config.first_order,
            k_power=config.k_power,
        )

        def sweep_chunk(sl, device=device, order=order, s=s):
            return _sweep_jit(
                key,
                params,
                x_test,
                y_test,
                device,
                order,
                counts[sl],
                *ends[s.name],
                **common,
            )

        def tick(s=s, m=m):
            if bar is not None:
                bar.set_postfix_str(f"{s.name} {m}")
                bar.update(1)

        curves[(s.name, m)] = _sweep_in_chunks(
            run_dir, s, m, slices, sweep_chunk, on_chunk=tick
        )
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    info = {
        "model": model.name,
        "num_weights": n,
        "clean_accuracy": clean,
        "dataset": test_data.name,
        "dataset_source": test_data.source,
        "num_test": int(len(y_test)),
        "settings": [s.name for s in config.settings()],
        "seconds_this_invocation": seconds,
        # Summed over the invocations that built this folder (resumes included).
        "seconds_total": seconds + _previous_seconds(run_dir / "run_info.json"),
    }
    atomic_write_json(run_dir / "run_info.json", info)
    # The evaluated params (Q(W) for quantized models) and the sensitivities, for
    # drivers that compare the orders of two runs (the ablations).
    return {
        **info,
        "curves": curves,
        "config": config,
        "params": params,
        "sensitivities": sens,
    }


def _previous_seconds(path: Path) -> float:
    """Compute time recorded by earlier invocations of a run folder."""
    if not path.is_file():
        return 0.0
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return 0.0
    return float(old.get("seconds_total", old.get("seconds_this_invocation", 0.0)))


def load_config(run_dir: str | Path) -> ExperimentConfig:
    """The experiment config stored in a run folder."""
    raw = json.loads((Path(run_dir) / "config.json").read_text())["config"]
    d = dict(raw["experiment"])
    d["train"] = TrainConfig(**d["train"])
    for k in ("sigmas", "s_values", "fractions", "methods"):
        d[k] = tuple(d[k])
    return ExperimentConfig(**d)
