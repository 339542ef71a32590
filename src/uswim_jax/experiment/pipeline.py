"""``run``: the whole reproduction in one run folder (train, sensitivities,
end points, sweeps, run info); the files are a
:class:`~uswim_jax.experiment.store.RunStore`'s, the report is written by
:func:`uswim_jax.report.write_report`."""

import functools
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uswim_jax import _distributed
from uswim_jax._trialbatch import conv_path_log
from uswim_jax.data import Dataset
from uswim_jax.experiment import units
from uswim_jax.experiment.config import ExperimentConfig, _methods_for
from uswim_jax.experiment.sensitivities import (
    _finetuned,
    compute_sensitivities,
    method_order,
)
from uswim_jax.experiment.store import RunStore, config_hash, manifest, step_slices
from uswim_jax.keys import key_stream
from uswim_jax.sweep import counts_for_fractions
from uswim_jax.train import accuracy, check_train_inputs, train


def run(
    config: ExperimentConfig,
    run_dir: str | Path | RunStore,
    *,
    train_data: Dataset,
    test_data: Dataset,
    progress: bool = True,
    log=print,
) -> dict[str, Any]:
    """Runs (or resumes) the whole reproduction in ``run_dir`` (a folder, or a
    :class:`~uswim_jax.experiment.store.RunStore`).

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
            the run folder (:class:`~uswim_jax.experiment.store.CorruptFileError`).
    """
    start = time.perf_counter()
    store = _open(config, run_dir, train_data, test_data, log)
    result = train(
        config.train,
        store.root / "train",
        train_data=train_data,
        test_data=test_data,
        progress=progress,
    )
    model, params = result.model, result.params
    if config.finetune_steps:
        params = _finetuned(model, params, train_data, config, store, log)
    model, params = model.export(params)  # noise goes on Q(W) for quantized models
    params = _distributed.from_writer(params)  # several processes: process 0's
    x, y = _test_arrays(config, test_data)
    clean = accuracy(model.apply_fn, params, np.asarray(x), np.asarray(y))
    sens = _sensitivities(store, model, params, train_data, config, log)
    counts = jnp.asarray(
        counts_for_fractions(config.fractions, model.num_weights(params))
    )
    key = key_stream(config.seed, "trials")
    common = _static_args(model, config)
    slices = step_slices(int(counts.shape[0]), config.steps_per_chunk)
    work = [(s, m) for s in config.settings() for m in _methods_for(s, config.methods)]
    bar = _progress_bar(store, work, slices, progress, log)
    curves = {}
    for s, m in work:  # each unit of work: loaded when saved, else computed
        device = units._mc_device(s, config)
        order = functools.cache(
            functools.partial(
                method_order, m, params, sens, s, device, config.seed,
                first_order=config.first_order, k_power=config.k_power,
            )
        )  # fmt: skip

        def compute(steps, s=s, device=device, order=order):
            ends = _ends(store, s.name, key, params, x, y, device, common)
            return units._sweep_jit(
                key, params, x, y, device, order(), counts[steps], *ends, **common
            )

        curves[(s.name, m)] = store.curve(
            s.name, m, slices, compute, on_chunk=lambda s=s, m=m: bar(f"{s.name} {m}")
        )
    bar(None)
    info = _run_info(store, model, params, clean, test_data, config, y, start)
    # The evaluated params (Q(W) for quantized models) and the sensitivities, for
    # drivers that compare the orders of two runs (the ablations).
    return {**info, "curves": curves, "config": config, "params": params,
            "sensitivities": sens, "apply_fn": common["apply_fn"]}  # fmt: skip


def _open(config, run_dir, train_data, test_data, log) -> RunStore:
    """The run folder, checked against the config and the environment before
    anything is written (so a corrected command can reuse it)."""
    check_train_inputs(config.train, train_data, test_data)
    identity = {"experiment": config.to_json()}
    new_manifest = manifest(
        seed=config.seed,
        dataset=test_data.name,
        dataset_source=test_data.source,
        num_test=len(_test_arrays(config, test_data)[1]),
        config_hash=config_hash(identity),
    )
    store = run_dir if isinstance(run_dir, RunStore) else RunStore(run_dir)
    _distributed.check_shared_folder(store.root)  # only process 0 writes it
    return store.open(
        identity, new_manifest, execution=config.execution_json(), log=log
    )


def _test_arrays(config: ExperimentConfig, test_data: Dataset):
    x, y = test_data
    if config.test_subset:
        x, y = x[: config.test_subset], y[: config.test_subset]
    return jnp.asarray(x), jnp.asarray(y)


def _sensitivities(store, model, params, train_data, config, log):
    """The curvature scores the orders need: loaded when saved, else computed
    and saved."""
    extra = [m.split("-", 1)[1] for m in config.methods if m.startswith("eloss-")]
    names = ["obd", "obd_grad"] + [e for e in extra if e != "obd"]
    sens = store.load_trees("sensitivities", params, names)
    if sens is None:
        log("computing sensitivities")
        sens = compute_sensitivities(model.apply_fn, params, train_data, config, log)
        store.save_trees("sensitivities", {k: sens[k] for k in names})
    return _distributed.from_writer(sens)


def _static_args(model, config: ExperimentConfig) -> dict[str, Any]:
    """The static arguments of the jitted drivers (:data:`units.STATIC`). The
    trials run the plain model through the same trial batching users' models
    get (:mod:`uswim_jax._trialbatch`: convolutions as im2col matmuls)."""
    return {
        "apply_fn": model.apply_fn,
        "num_trials": config.num_trials,
        "chunk_size": config.chunk_size,
        "eval_batch_size": config.eval_batch_size,
        # Several devices (of this process or of every process): each computes
        # its share of the trials; the accuracies do not depend on it.
        "shard": jax.device_count() > 1,
    }


def _ends(store: RunStore, setting: str, key, params, x, y, device, common):
    """The per-trial accuracies of a setting with every weight verified and with
    none: loaded when saved, else computed (once per setting) and saved."""
    got = store.load_ends(setting)
    if got is None:
        every = jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), params)
        got = jax.device_get(
            tuple(
                units._evaluate_jit(key, params, x, y, device, v, **common).accuracies
                for v in (every, None)
            )
        )
        store.save_ends(setting, *got)
    return got


def _progress_bar(store: RunStore, work, slices, progress: bool, log):
    """Logs what a resumed run already holds; returns ``tick(label)`` (None
    closes the bar)."""
    left = sum(store.chunks_left(s.name, m, slices) for s, m in work)
    total = len(work) * len(slices)
    if left < total:
        done = sum(store.curve_path(s.name, m).is_file() for s, m in work)
        log(
            f"resuming: {done} of {len(work)} curves and "
            f"{total - left} of {total} step chunks already done"
        )
    bar = None
    if progress and left:
        from tqdm.auto import tqdm

        bar = tqdm(total=left, desc="sweeps", dynamic_ncols=True)

    def tick(label):
        if bar is None:
            return
        if label is None:
            bar.close()
        else:
            bar.set_postfix_str(label)
            bar.update(1)

    return tick


def _run_info(store, model, params, clean, test_data, config, y, start):
    """``run_info.json``: what was run and the compute time, summed over the
    invocations that built the folder (resumes included)."""
    seconds = time.perf_counter() - start
    old = store.read_json("run_info.json") or {}
    info = {
        "model": model.name,
        "num_weights": model.num_weights(params),
        "clean_accuracy": clean,
        "dataset": test_data.name,
        "dataset_source": test_data.source,
        "num_test": int(len(y)),
        "settings": [s.name for s in config.settings()],
        # how each convolution layer shape with per-trial noise last ran
        "conv_paths": _merged_conv_paths(old.get("conv_paths", []), conv_path_log()),
        "seconds_this_invocation": seconds,
        "seconds_total": seconds
        + float(old.get("seconds_total", old.get("seconds_this_invocation", 0.0))),
    }
    store.write_json("run_info.json", info)
    return info


def _merged_conv_paths(old: list[dict], new: list[dict]) -> list[dict]:
    """The folder's conv path records: this invocation's, plus the earlier
    invocations' records for shapes it did not trace (a resume that finds
    every unit done traces nothing, and keeps the record of how they ran)."""
    key = lambda r: repr(r.get("conv", r.get("model")))  # noqa: E731
    seen = {key(r) for r in new}
    return [r for r in old if key(r) not in seen] + list(new)
