"""The reproduction pipeline: train (or reuse) a model, compute sensitivities,
sweep every selection method under every device setting, and write a run folder.

Every finished unit of work (the trained model, the sensitivities, each
(setting, method) curve) is written atomically into the run folder as it
completes; running the same command again skips what is done, so an interrupted
run loses nothing already computed. A different config in the same folder is
refused.
"""

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uswim_jax import curvature, selection
from uswim_jax._io import atomic_write_bytes, atomic_write_json, npz_bytes
from uswim_jax.data import Dataset
from uswim_jax.device import StateDependentVariation, UniformVariation
from uswim_jax.montecarlo import evaluate
from uswim_jax.report import manifest, prepare_run_dir
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
    estimator_subset: int = 1024
    hutchinson_probes: int = 64
    chunk_size: int | None = 1
    eval_batch_size: int | None = None
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

    def settings(self) -> list[Setting]:
        out = [Setting(s, None, self.verified_ratio) for s in self.sigmas]
        out += [Setting(self.s_sigma, s, self.verified_ratio) for s in self.s_values]
        return out

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"corrupt sensitivity file {path} ({e}); delete it") from e


def compute_sensitivities(
    apply_fn, params, train_data: Dataset, config: ExperimentConfig, log=print
) -> dict[str, Any]:
    """One-pass diagonal (and first-order term) over the training set, plus the
    other curvature estimators on a subset. Returns a dict of pytrees."""
    x, y = train_data
    n = config.curvature_subset or len(x)
    t0 = time.perf_counter()
    hess, grad = curvature.obd_over_dataset(apply_fn, params, x[:n], y[:n])
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
        out["hutchinson"], out["hutchinson_se"] = est, se
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
            out[name] = jax.jit(functools.partial(fn, apply_fn, chunk_size=64))(
                params, xs, ys
            )
            log(f"  {name} diagonal ({m} images): {time.perf_counter() - t0:.1f} s")
    return out


def method_order(
    method: str, params, sens: dict[str, Any], setting: Setting, device, seed: int
) -> jax.Array:
    """The verification order of ``method`` under ``setting``."""
    if method == "random":
        key = jax.random.fold_in(jax.random.key(seed), 11)
        scores = selection.random_score(key, params)
    elif method == "magnitude":
        scores = selection.magnitude_score(params)
    elif method == "swim":
        scores = selection.swim_score(params, sens["obd"], sens["obd_grad"])
    elif method == "uswim":
        scores = selection.uswim_score(
            params,
            sens["obd"],
            sens["obd_grad"],
            s=1.0 if setting.s is None else setting.s,
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
    return sweep(
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
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"corrupt curve file {path} ({e}); delete it") from e


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

    Returns a dict with the model, clean accuracy, dataset name, the settings and
    ``curves[(setting_name, method)] -> Curve``; the report is written by
    :func:`uswim_jax.report.write_report`.
    """
    run_dir = prepare_run_dir(run_dir, {"experiment": config.to_json()})
    start = time.perf_counter()
    result = train(
        config.train,
        run_dir / "train",
        train_data=train_data,
        test_data=test_data,
        progress=progress,
    )
    model, params = result.model, result.params
    model, params = model.export(params)  # noise goes on Q(W) for quantized models
    apply_fn = model.apply_fn
    x_test, y_test = test_data
    if config.test_subset:
        x_test, y_test = x_test[: config.test_subset], y_test[: config.test_subset]
    x_test, y_test = jnp.asarray(x_test), jnp.asarray(y_test)
    from uswim_jax.train import accuracy

    clean = accuracy(apply_fn, params, np.asarray(x_test), np.asarray(y_test))
    atomic_write_json(
        run_dir / "manifest.json",
        manifest(
            seed=config.seed,
            dataset=test_data.name,
            dataset_source=test_data.source,
            num_test=int(len(y_test)),
        ),
    )

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
        "apply_fn": apply_fn,
        "num_trials": config.num_trials,
        "chunk_size": config.chunk_size,
        "eval_batch_size": config.eval_batch_size,
    }
    every = jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), params)
    units = [(s, m) for s in config.settings() for m in _methods_for(s, config.methods)]
    curves: dict[tuple[str, str], Curve] = {}
    todo = []
    for s, m in units:
        c = _load_curve(_curve_file(run_dir, s, m))
        if c is None:
            todo.append((s, m))
        else:
            curves[(s.name, m)] = c
    if len(todo) < len(units):
        log(f"resuming: {len(units) - len(todo)} of {len(units)} curves already done")
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="sweeps", dynamic_ncols=True)
    ends: dict[str, tuple[jax.Array, jax.Array]] = {}
    for s, m in todo:
        device = s.device(config.verify_cycles)
        if s.name not in ends:
            ref = _evaluate_jit(key, params, x_test, y_test, device, every, **common)
            base = _evaluate_jit(key, params, x_test, y_test, device, None, **common)
            ends[s.name] = (ref.accuracies, base.accuracies)
        order = method_order(m, params, sens, s, device, config.seed)
        curve = _sweep_jit(
            key, params, x_test, y_test, device, order, counts, *ends[s.name], **common
        )
        curve = jax.device_get(curve)
        _save_curve(_curve_file(run_dir, s, m), curve)
        curves[(s.name, m)] = curve
        if bar is not None:
            bar.set_postfix_str(f"{s.name} {m}")
            bar.update(1)
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
    }
    atomic_write_json(run_dir / "run_info.json", info)
    return {**info, "curves": curves, "config": config}


def load_config(run_dir: str | Path) -> ExperimentConfig:
    """The experiment config stored in a run folder."""
    raw = json.loads((Path(run_dir) / "config.json").read_text())["config"]
    d = dict(raw["experiment"])
    d["train"] = TrainConfig(**d["train"])
    for k in ("sigmas", "s_values", "fractions", "methods"):
        d[k] = tuple(d[k])
    return ExperimentConfig(**d)
