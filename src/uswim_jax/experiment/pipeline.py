"""``run``: the whole reproduction in one run folder (train, sensitivities,
end points, sweeps, run info); the report is written by
:func:`uswim_jax.report.write_report`."""

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uswim_jax._io import (
    atomic_write_bytes,
    atomic_write_json,
    npz_bytes,
    remove_stale_temp_files,
)
from uswim_jax.data import Dataset
from uswim_jax.experiment import units
from uswim_jax.experiment.config import ExperimentConfig, _methods_for
from uswim_jax.experiment.sensitivities import (
    _finetuned,
    _load_tree,
    _save_tree,
    compute_sensitivities,
    method_order,
)
from uswim_jax.keys import key_stream
from uswim_jax.report import check_resumable, config_hash, manifest, prepare_run_dir
from uswim_jax.sweep import Curve, counts_for_fractions
from uswim_jax.train import check_train_inputs, train


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
    # Every check runs before anything is written, so a corrected command can
    # reuse the run folder.
    check_train_inputs(config.train, train_data, test_data)
    num_test = len(test_data)
    if config.test_subset:
        num_test = min(num_test, config.test_subset)
    run_config = {"experiment": config.to_json()}
    new_manifest = manifest(
        seed=config.seed,
        dataset=test_data.name,
        dataset_source=test_data.source,
        num_test=int(num_test),
        config_hash=config_hash(run_config),
    )
    check_resumable(Path(run_dir) / "manifest.json", new_manifest, run_dir)
    run_dir = prepare_run_dir(run_dir, run_config)
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
    key = key_stream(config.seed, "trials")
    common = {
        "apply_fn": eval_model.apply_fn,
        "num_trials": config.num_trials,
        "chunk_size": config.chunk_size,
        "eval_batch_size": config.eval_batch_size,
    }
    every = jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), params)
    work = [(s, m) for s in config.settings() for m in _methods_for(s, config.methods)]
    # Units of work: each step chunk of each (setting, method) curve.
    slices = units._chunk_slices(int(counts.shape[0]), config.steps_per_chunk)
    curves: dict[tuple[str, str], Curve] = {}
    todo = []
    chunks_left = 0
    for s, m in work:
        c = units._load_curve(units._curve_file(run_dir, s, m))
        if c is None:
            todo.append((s, m))
            chunks_left += sum(
                not units._chunk_file(run_dir, s, m, i).is_file()
                for i in range(len(slices))
            )
        else:
            curves[(s.name, m)] = c
            for i in range(len(slices)):  # left when killed right after the curve
                units._chunk_file(run_dir, s, m, i).unlink(missing_ok=True)
    chunks_total = len(work) * len(slices)
    if chunks_left < chunks_total:
        log(
            f"resuming: {len(work) - len(todo)} of {len(work)} curves and "
            f"{chunks_total - chunks_left} of {chunks_total} step chunks already done"
        )
    bar = None
    if progress and chunks_left:
        from tqdm.auto import tqdm

        bar = tqdm(total=chunks_left, desc="sweeps", dynamic_ncols=True)
    ends: dict[str, tuple[Any, Any]] = {}
    for s, m in todo:
        device = units._mc_device(s, config)
        if s.name not in ends:
            ends_path = units._ends_file(run_dir, s)
            got = units._load_ends(ends_path)
            if got is None:
                ref = units._evaluate_jit(
                    key, params, x_test, y_test, device, every, **common
                )
                base = units._evaluate_jit(
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
            return units._sweep_jit(
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

        curves[(s.name, m)] = units._sweep_in_chunks(
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
