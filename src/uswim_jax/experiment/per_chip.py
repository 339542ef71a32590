"""The per-chip programming study of a reproduction run
(``ExperimentConfig.per_chip``, off by default): every method, every batch size
of :class:`~uswim_jax.chip_programming.PerChipConfig`, against the fixed-budget
rule at the same mean cost; a section of ``summary.md`` and ``per_chip.csv``.

The chips are the run's Monte Carlo trials: chip ``t`` draws its noise from
``fold_in(key_stream(seed, "trials"), t)``, as trial ``t`` of the sweeps, so the
fixed-budget comparison is paired chip by chip. The checks run on the last
``calibration_size`` images of the training split; the test accuracies are on
the run's test images (``test_subset`` applied), which the checks never see.

The study is a unit of work of the run folder (:func:`per_chip_rows`): its rows
are saved in ``per_chip.json`` with the :class:`PerChipConfig` they were
computed under, atomically, and loaded when the report is written again (a
resumed or repeated command); a changed ``per_chip`` recomputes them.
"""

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uswim_jax._protocol import has_closed_form
from uswim_jax._tree import crossbar_size
from uswim_jax.chip_programming import (
    PerChipConfig,
    batch_counts,
    chip_summary,
    cycles_for_count,
    fixed_count_at_cost,
    program_chips,
)
from uswim_jax.experiment import units
from uswim_jax.experiment.config import Setting, _methods_for
from uswim_jax.experiment.pipeline import _test_arrays
from uswim_jax.experiment.sensitivities import method_order
from uswim_jax.experiment.store import RunStore
from uswim_jax.keys import key_stream
from uswim_jax.selection import mask_from_order

#: per_chip.csv's columns (cycles normalized, accuracies and shares in %).
COLUMNS = (
    "method",
    "batch_fraction",
    "checks_mean",
    "check_inferences_mean",
    "cycles_mean",
    "cycles_median",
    "cycles_p95",
    "cycles_max",
    "overshoot",
    "test_mean",
    "test_p5",
    "never_reached",
    "fixed_cycles",
    "fixed_test_mean",
    "fixed_test_p5",
)


def with_per_chip(config: Any, **changes) -> Any:
    """``config`` with the per-chip study on: :class:`PerChipConfig` with
    ``changes``, under the run's largest uniform sigma (else its first
    state-dependent setting) unless ``changes`` names the setting."""
    if config.sigmas:
        where = {"sigma": max(config.sigmas), "s": None}
    else:
        where = {"sigma": config.s_sigma, "s": config.s_values[0]}
    pc = PerChipConfig(**{**where, **changes})
    return dataclasses.replace(config, per_chip=pc)


@functools.partial(
    jax.jit,
    static_argnames=("apply_fn", "num_trials", "chunk_size", "eval_batch_size"),
)
def _chips_jit(
    key, params, x_cal, y_cal, x, y, device, order, counts, rule, cal_ref, *,
    apply_fn, num_trials, chunk_size, eval_batch_size,
):  # fmt: skip
    return program_chips(
        key, apply_fn, params, x_cal, y_cal, x, y, device, order, counts,
        num_trials, rule, chunk_size=chunk_size, eval_batch_size=eval_batch_size,
        calibration_reference=cal_ref,
    )  # fmt: skip


def calibration_split(config: Any, train_data: Any) -> tuple[Any, Any, bool]:
    """The last ``config.per_chip.calibration_size`` training images and labels,
    and whether the model was trained without them (``train_subset`` leaves
    them out)."""
    n_cal = config.per_chip.calibration_size
    n = len(train_data)
    if n_cal >= n:
        raise ValueError(
            f"per_chip.calibration_size must be below the {n} training images, "
            f"got {n_cal}"
        )
    used = min(config.train.train_subset or n, n)
    x, y = train_data
    return jnp.asarray(x[n - n_cal :]), jnp.asarray(y[n - n_cal :]), used <= n - n_cal


def run_per_chip(
    out: dict[str, Any], train_data: Any, test_data: Any, *, log=print
) -> list[dict[str, Any]]:
    """The study's rows (one per method and batch size, :data:`COLUMNS`) for a
    finished run ``out`` (what :func:`uswim_jax.experiment.run` returns) with
    the data it ran on."""
    config = out["config"]
    x, y = _test_arrays(config, test_data)  # the test images the sweeps used
    pc = config.per_chip
    params, sens = out["params"], out["sensitivities"]
    setting = Setting(pc.sigma, pc.s, config.verified_ratio)
    device = units._mc_device(setting, config)
    if not has_closed_form(device):
        raise ValueError(
            "per_chip needs a Gaussian device model (programming='gaussian')"
        )
    x_cal, y_cal, _ = calibration_split(config, train_data)
    n = crossbar_size(params, device.crossbar)
    budget = int(round(pc.budget * n))
    schedules = [
        batch_counts(n, max(1, int(round(g * n))), budget) for g in pc.batch_fractions
    ]
    length = max(len(c) for c in schedules)  # padded with the budget: one compile
    schedules = [np.pad(c, (0, length - len(c)), mode="edge") for c in schedules]
    key = key_stream(config.seed, "trials")
    common = {
        "apply_fn": out["apply_fn"],
        "num_trials": config.num_trials,
        "chunk_size": config.chunk_size,
        "eval_batch_size": config.eval_batch_size,
    }
    every = jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), params)
    cal_ref = units._evaluate_jit(
        key, params, x_cal, y_cal, device, every, **common
    ).accuracies
    rule = pc.rule()
    rows = []
    for m in _methods_for(setting, config.methods):
        order = method_order(
            m, params, sens, setting, device, config.seed,
            first_order=config.first_order, k_power=config.k_power,
        )  # fmt: skip
        method_rows = []
        for g, counts in zip(pc.batch_fractions, schedules, strict=True):
            log(f"per-chip programming: {m}, batches of {100 * g:g} %")
            r = _chips_jit(
                key, params, x_cal, y_cal, x, y, device, order, jnp.asarray(counts),
                rule, cal_ref, **common,
            )  # fmt: skip
            s = chip_summary(jax.device_get(r))
            c = fixed_count_at_cost(device, params, order, s["cycles_mean"])
            mask = mask_from_order(order, params, count=c, predicate=device.crossbar)
            fixed = 100.0 * np.asarray(
                units._evaluate_jit(
                    key, params, x, y, device, mask, **common
                ).accuracies,
                np.float64,
            )
            method_rows.append(
                {
                    "method": m,
                    "batch_fraction": g,
                    **s,
                    "fixed_cycles": cycles_for_count(device, params, order, c),
                    "fixed_test_mean": float(fixed.mean()),
                    "fixed_test_p5": float(np.percentile(fixed, 5)),
                }
            )
        finest = min(method_rows, key=lambda row: row["batch_fraction"])
        for row in method_rows:
            row["overshoot"] = row["cycles_mean"] - finest["cycles_mean"]
        rows += method_rows
    return rows


def per_chip_csv(rows: list[dict[str, Any]]) -> str:
    lines = [",".join(COLUMNS)]
    for row in rows:
        lines.append(
            ",".join(
                str(row[c]) if isinstance(row[c], str) else f"{row[c]:.6g}"
                for c in COLUMNS
            )
        )
    return "\n".join(lines) + "\n"


def per_chip_markdown(
    rows: list[dict[str, Any]], config: Any, num_train: int, held_out: bool
) -> str:
    """The ``summary.md`` section of the study."""
    pc = config.per_chip
    setting = Setting(pc.sigma, pc.s, config.verified_ratio)
    thr = rows[0]["threshold"] if rows else float("nan")
    seen = (
        "held out from training"
        if held_out
        else "also used in training (train_subset does not leave them out)"
    )
    lines = [
        f"## Per-chip programming ({setting.name})",
        "",
        f"- {config.num_trials} chips (chip t = trial t of the sweeps above, the "
        "same noise draw). Each chip is written, then write-verified in batches "
        "along the method's order; after the plain write and after each batch it "
        f"is checked on a calibration split of {pc.calibration_size:,} images "
        f"(the last of the {num_train:,} training images, {seen}; never the test "
        "images) and stops at the first check that meets the rule: "
        f"{pc.rule().describe()}, i.e. calibration accuracy >= {thr:.2f} % "
        f"(the margin is taken from the mean over the chips). Budget: at most "
        f"{100 * pc.budget:g} % of the weights verified; a chip that does not "
        "meet the rule by then stops there and counts as 'never'.",
        "- NWC per chip: its cycles when it stopped (nothing after the stop), "
        "normalized by exhaustive write-verify; overshoot: mean NWC minus that of "
        "the finest batch size; checks: accuracy checks per chip (mean), each one "
        "inference per calibration image; test: accuracy on the test images when "
        "the chip stopped. Fixed budget: every chip verified to the same count, "
        "the largest whose NWC does not exceed the per-chip mean, no checks.",
        "",
        "| method | batch | checks | check inferences | NWC mean | median | p95 "
        "| max | overshoot | test mean | test p5 | never | fixed NWC "
        "| fixed test mean | fixed test p5 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {100 * r['batch_fraction']:g} % "
            f"| {r['checks_mean']:.1f} | {r['check_inferences_mean']:,.0f} "
            f"| {r['cycles_mean']:.3f} | {r['cycles_median']:.3f} "
            f"| {r['cycles_p95']:.3f} | {r['cycles_max']:.3f} "
            f"| {r['overshoot']:+.3f} | {r['test_mean']:.2f} | {r['test_p5']:.2f} "
            f"| {r['never_reached']:.0f} % | {r['fixed_cycles']:.3f} "
            f"| {r['fixed_test_mean']:.2f} | {r['fixed_test_p5']:.2f} |"
        )
    return "\n".join(lines) + "\n"


#: The study's file in the run folder: ``{"per_chip": PerChipConfig as JSON,
#: "rows": the rows of :func:`run_per_chip`}``.
RECORD = "per_chip.json"


def per_chip_rows(
    out: dict[str, Any], train_data: Any, test_data: Any,
    run_dir: str | Path | RunStore, *, log=print,
) -> list[dict[str, Any]]:  # fmt: skip
    """The rows of :func:`run_per_chip`, a unit of work of the run folder: read
    from :data:`RECORD` when it holds the rows of ``out["config"].per_chip``,
    else computed and saved there (atomically), so a repeated or resumed command
    does not run the study again.

    Raises:
        CorruptFileError: :data:`RECORD` cannot be read (the message says to
            delete it; the same command then recomputes the study).
    """
    store = run_dir if isinstance(run_dir, RunStore) else RunStore(run_dir)
    study = json.loads(json.dumps(dataclasses.asdict(out["config"].per_chip)))
    saved = store.read_json(RECORD)
    if saved is not None and saved.get("per_chip") == study:
        return saved["rows"]
    if saved is not None:
        log(f"per-chip study: {RECORD} holds other per_chip settings; recomputing")
    rows = run_per_chip(out, train_data, test_data, log=log)
    store.write_json(RECORD, {"per_chip": study, "rows": rows})
    return rows


def per_chip_section(
    out: dict[str, Any], train_data: Any, test_data: Any,
    run_dir: str | Path | RunStore, *, log=print,
) -> str:  # fmt: skip
    """The study of ``out["config"].per_chip`` (:func:`per_chip_rows`: computed
    once per run folder), written as ``per_chip.csv`` into ``run_dir``; returns
    the markdown section."""
    from uswim_jax._io import atomic_write_text

    config = out["config"]
    store = run_dir if isinstance(run_dir, RunStore) else RunStore(run_dir)
    rows = per_chip_rows(out, train_data, test_data, store, log=log)
    atomic_write_text(store.root / "per_chip.csv", per_chip_csv(rows))
    _, _, held_out = calibration_split(config, train_data)
    return per_chip_markdown(rows, config, len(train_data), held_out)
