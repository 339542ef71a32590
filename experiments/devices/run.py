"""``make reproduce-devices``: selective write-verify on measured devices.

Per model (a sub-folder of ``workdir``, a :class:`RunStore` run folder, so an
interrupted run resumes and loses nothing): the trained LeNet and its
sensitivities (copied from the reproduction's run folder under ``reuse`` when
its config is the same, else trained and computed here, as the pipeline
does), then for every preset, read time and drift-compensation switch one
setting, a :class:`uswim_jax.devices.ConductanceDevice`, and per method one
programmed sweep (:func:`uswim_jax.sweep`, jitted by the pipeline's
``units._sweep_jit``; the device's ``t`` and ``drift_compensation`` are pytree
leaves, so the settings of one preset share one compilation). Every setting
uses the same trial keys: the chips (stuck devices, drift exponents, writes,
loop) are the same at every ``t`` and switch, only the reads differ.

Cycles come from the loop (``WriteCycles`` of each programmed chip); the
report sets them beside the Gaussian model's assumed ``verify_cycles = 10``
per verified device at the same verified fractions.
"""

import dataclasses
import math
import os
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import csv_text, model_label, seed_run_folder
from experiments.devices.configs.default import DevicesConfig
from uswim_jax import crossbar_size, data, selection
from uswim_jax._io import atomic_write_json, atomic_write_text
from uswim_jax.device import gaussian_write_cycles
from uswim_jax.devices import ConductanceDevice, device_preset
from uswim_jax.experiment import (
    ExperimentConfig,
    Setting,
    load_config,
    manifest,
    method_order,
    pipeline,
    units,
)
from uswim_jax.experiment.store import RunStore, config_hash, step_slices
from uswim_jax.keys import key_stream
from uswim_jax.montecarlo import trial_keys
from uswim_jax.stats import mean_ci95
from uswim_jax.sweep import counts_for_fractions
from uswim_jax.train import accuracy, train

REPORT_FILES = (
    "devices.md",
    "devices.csv",
    "devices_speedups.csv",
    "devices_cost.csv",
    "manifest.json",
)
MARGINS = (0.1, 0.5, 1.0)
#: The Gaussian model's assumed cost of one verified device, in write cycles.
ASSUMED_VERIFY_CYCLES = 10.0
#: Where each model's reproduction keeps its LeNet (``reuse/<this>``).
REUSE_FOLDERS = {
    "mnist": "reproduce-mnist/lenet",
    "fashion-mnist": "reproduce-fashion-mnist/lenet",
}


def setting_name(preset: str, t: float, comp: bool) -> str:
    return f"{preset} t={t:g}s" + (" comp" if comp else "")


def time_label(t: float) -> str:
    """``1 h``, ``1 day``, ``1 month``, else seconds: how reports name a read time."""
    for v, name in ((2592000.0, "1 month"), (86400.0, "1 day"), (3600.0, "1 h")):
        if t == v:
            return name
    return f"{t:g} s"


def _reuse(src: Path, dst: Path, cfg: ExperimentConfig, log) -> None:
    """Copies the reproduction's trained model (same training config) and its
    sensitivities (same sensitivity config), as the ablations seed a variant
    (``experiments.common.seed_run_folder``)."""
    if not (src / "config.json").is_file():
        return
    try:
        other = load_config(src)
    except (ValueError, KeyError, TypeError) as e:
        log(f"not reusing {src}: {e}")
        return
    had = {n: (dst / n).exists() for n in ("train", "sensitivities.npz")}
    seed_run_folder(src.parent, [(src.name, other)], dst, cfg)
    for n, before in had.items():
        if not before and (dst / n).exists():
            log(f"reused {src / n}")


def _device(preset: str, t: float, comp: bool) -> ConductanceDevice:
    return ConductanceDevice(device_preset(preset), t=t, drift_compensation=comp)


def device_order(method: str, params, sens, dev: ConductanceDevice, seed: int):
    """The verification order of ``method`` on ``dev``: random, magnitude and
    SWIM as the pipeline (:func:`uswim_jax.experiment.method_order`); U-SWIM
    with its multiplier from the device's own std
    (``dev.state_multiplier``), not the 4-bin rule; the expected-loss scores
    with the device's estimated written and verified stds
    (``dev.weight_std``)."""
    if method == "uswim":
        k = dev.state_multiplier(params)
        scores = selection.uswim_score(
            params, sens["obd"], sens["obd_grad"], multiplier=k
        )
    elif method.startswith("eloss-"):
        sw, sv = dev.weight_std(params)
        scores = selection.expected_loss_score(sens[method[6:]], sw, sv)
    else:  # no device dependence: the pipeline's orders (same random key)
        return method_order(method, params, sens, Setting(0.3), None, seed)
    return selection.global_order(scores)


def assumed_curve(curve, verify_cycles: float = ASSUMED_VERIFY_CYCLES):
    """``curve`` with its cycles replaced by the Gaussian model's
    (:func:`uswim_jax.device.gaussian_write_cycles`: a verified device costs
    ``verify_cycles``, a plain write 1) at the same verified fractions."""
    f = np.asarray(curve.fractions, np.float64)
    cyc = gaussian_write_cycles(f, 1, 1, verify_cycles)
    none = gaussian_write_cycles(0.0, 1, 1, verify_cycles)
    return curve._replace(
        cycles=np.asarray(cyc.normalized, np.float64),
        cycles_verified_only=np.asarray(cyc.normalized_verified_only, np.float64),
        baseline_cycles=np.asarray(
            [none.normalized, none.normalized_verified_only], np.float64
        ),
    )


def _jit_cost():
    @jax.jit
    def cost(keys, params, dev):
        every = jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), params)

        def one(k):
            chip = dev.program_chip(k, params, every)
            c = dev.chip_cost(chip)
            return (
                c.cycles.exhaustive,
                c.exhaustive.time_s,
                c.exhaustive.energy_j,
                c.failed,
            )

        return jax.vmap(one)(keys)

    return cost


_COST = _jit_cost()


def chip_costs(key, params, dev: ConductanceDevice, chips: int) -> dict:
    """What write-verifying every device of the first ``chips`` trials' chips
    cost (the loop's own counts), per device and per chip."""
    writes, secs, joules, failed = jax.device_get(
        _COST(trial_keys(key, chips), params, dev)
    )
    n = crossbar_size(params, dev.crossbar) * dev.devices_per_weight
    return {
        "devices": n,
        "writes_per_device": float(np.mean(writes)) / n,
        "failed_fraction": float(np.mean(failed)) / n,
        "time_per_device_s": float(np.mean(secs)) / n,
        "energy_per_device_j": float(np.mean(joules)) / n,
        "time_per_chip_s": float(np.mean(secs)),
        "energy_per_chip_j": float(np.mean(joules)),
    }


def _model(
    name: str,
    base: ExperimentConfig,
    config: DevicesConfig,
    store: RunStore,
    train_data,
    test_data,
    progress: bool,
    log,
) -> dict:
    """One model: trained params, sensitivities, every curve and the costs."""
    cfg = dataclasses.replace(
        base,
        methods=config.methods,
        num_trials=config.num_trials,
        test_subset=config.test_subset,
        chunk_size=config.chunk_size,
        eval_batch_size=config.eval_batch_size,
    )
    result = train(
        cfg.train, store.root / "train", train_data=train_data,
        test_data=test_data, progress=progress,
    )  # fmt: skip
    model, params = result.model.export(result.params)
    x, y = pipeline._test_arrays(cfg, test_data)
    clean = accuracy(model.apply_fn, params, np.asarray(x), np.asarray(y))
    sens = pipeline._sensitivities(store, model, params, train_data, cfg, log)
    common = pipeline._static_args(model, cfg)
    common["shard"] = False
    n = model.num_weights(params)
    counts = jnp.asarray(counts_for_fractions(config.fractions, n))
    slices = step_slices(int(counts.shape[0]), config.steps_per_chunk)
    key = key_stream(config.seed, "trials")
    # all-True and all-False masks of one structure: one compilation for both
    every = jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), params)
    none = jax.tree.map(lambda w: jnp.zeros(jnp.shape(w), bool), params)
    curves, ends, costs, seconds, cpu = {}, {}, {}, {}, {}
    for preset in config.presets:
        t0, c0 = time.perf_counter(), time.process_time()
        first = _device(preset, config.times[0], config.compensation[0])
        orders = {}
        for m in config.methods:
            orders[m] = device_order(m, params, sens, first, config.seed)
        got = store.read_json(f"cost_{preset}.json")
        if got is None:
            got = chip_costs(key, params, first, config.cost_chips)
            store.write_json(f"cost_{preset}.json", got)
        costs[preset] = got
        for t in config.times:
            for comp in config.compensation:
                s = setting_name(preset, t, comp)
                dev = _device(preset, t, comp)
                e = store.load_ends(s)
                if e is None:
                    e = jax.device_get(
                        tuple(
                            units._evaluate_jit(
                                key, params, x, y, dev, v, **common
                            ).accuracies
                            for v in (every, none)
                        )
                    )
                    store.save_ends(s, *e)
                ends[s] = e
                for m in config.methods:

                    def compute(steps, dev=dev, order=orders[m], e=e):
                        return units._sweep_jit(
                            key, params, x, y, dev, order, counts[steps], *e,
                            **common,
                        )  # fmt: skip

                    curves[(s, m)] = store.curve(s, m, slices, compute)
                log(
                    f"   {name} {s}: done ({time.perf_counter() - t0:.0f} s wall, "
                    f"{time.process_time() - c0:.0f} s CPU so far)"
                )
        seconds[preset] = time.perf_counter() - t0
        cpu[preset] = time.process_time() - c0
    return {
        "name": name,
        "label": model_label(cfg),
        "dataset": test_data.name,
        "dataset_source": test_data.source,
        "num_test": int(len(y)),
        "num_weights": int(n),
        "clean_accuracy": float(clean),
        "curves": curves,
        "costs": costs,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "config": cfg,
    }


# ------------------------------------------------------------------ report


def verifying_needed(none_mean: float, exhaustive_mean: float, margin: float) -> bool:
    """Whether a chip with nothing verified is more than ``margin`` pp below
    exhaustive write-verify (otherwise every score ties at the plain writes'
    cost, and no score is "best")."""
    return exhaustive_mean - none_mean > margin


def _cell(curve, margin: float) -> tuple[float, float]:
    """(NWC, speedup) to get within ``margin`` pp of exhaustive."""
    t = curve.cycles_to_target(margin)
    return t.value, (t.speedup if math.isfinite(t.speedup) else 0.0)


def speed_rows(config: DevicesConfig, outs: list[dict]) -> list[dict]:
    rows = []
    for o in outs:
        for (s, m), c in o["curves"].items():
            preset, rest = s.split(" ", 1)
            t = float(rest.split("=")[1].split("s")[0])
            ref = 100 * np.asarray(c.reference, np.float64)
            base = 100 * np.asarray(c.baseline, np.float64)
            for g in MARGINS:
                nwc, sp = _cell(c, g)
                nwc_a, sp_a = _cell(assumed_curve(c), g)
                rows.append(
                    {
                        "model": o["name"],
                        "preset": preset,
                        "t_s": t,
                        "compensation": "comp" in rest,
                        "method": m,
                        "margin_pp": g,
                        "none_mean": float(base.mean()),
                        "exhaustive_mean": float(ref.mean()),
                        "nwc_loop": nwc,
                        "speedup_loop": sp,
                        "nwc_assumed10": nwc_a,
                        "speedup_assumed10": sp_a,
                    }
                )
    return rows


def curve_rows(outs: list[dict]) -> list[dict]:
    rows = []
    for o in outs:
        for (s, m), c in o["curves"].items():
            acc = 100 * np.asarray(c.accuracies, np.float64)
            mean, half = mean_ci95(acc, axis=1)
            cyc = np.asarray(c.cycles, np.float64)
            for i, f in enumerate(np.asarray(c.fractions, np.float64)):
                rows.append(
                    {
                        "model": o["name"],
                        "setting": s,
                        "method": m,
                        "fraction": float(f),
                        "nwc_loop": float(cyc[i]),
                        "acc_mean": float(mean[i]),
                        "acc_ci95": float(half[i]),
                    }
                )
    return rows


def cost_rows(config: DevicesConfig, outs: list[dict]) -> list[dict]:
    return [
        {"model": o["name"], "preset": p, **o["costs"][p]}
        for o in outs
        for p in config.presets
    ]


def _loop_line(preset: str) -> str:
    v = _device(preset, 1.0, False).verify
    band = {"range": "g_max", "target": "the target", "write_std": "a write's std"}
    return (
        f"accept within {100 * v.acceptance:g} % of {band[v.relative_to]}, "
        f"up to {v.max_iterations} writes, correction {v.correction:g}"
    )


def _sp(v: float) -> str:
    return f"{v:.1f}x" if v > 0 else "-"


def devices_markdown(config: DevicesConfig, outs: list[dict], extra: str = "") -> str:
    rows = speed_rows(config, outs)
    by = {
        (
            r["model"],
            r["preset"],
            r["t_s"],
            r["compensation"],
            r["method"],
            r["margin_pp"],
        ): r
        for r in rows
    }
    lines = [
        "# Selective write-verify on measured devices",
        "",
        f"- presets {', '.join(f'`{p}`' for p in config.presets)} "
        "(`uswim_jax.device_preset`, docs/devices.md) on a differential pair, "
        "each with its default verify loop ("
        + "; ".join(f"{p}: {_loop_line(p)}" for p in config.presets)
        + "), read at "
        + ", ".join(time_label(t) for t in config.times)
        + " after programming, without / with global drift compensation ('comp')",
        f"- {config.num_trials} Monte Carlo trials (one programmed chip each; "
        "the same chips at every time and switch) over the first "
        f"{config.test_subset} test images; budgets "
        + ", ".join(f"{100 * f:g}%" for f in config.fractions)
        + " verified; seed "
        f"{config.seed}",
        "- NWC = normalized write cycles from the loop's own counts (plain "
        "writes included; 1 = every device verified in the same run), speedup "
        "= 1 / NWC to get within the margin of exhaustive write-verify "
        "(interpolated between budgets; '-' = not reached before exhaustive); "
        f"'assumed' = the same accuracies priced as the Gaussian model does, "
        f"{ASSUMED_VERIFY_CYCLES:g} cycles per verified device",
        "- U-SWIM's multiplier is the device's own written std over a zero "
        "weight's (`ConductanceDevice.state_multiplier`); eloss uses the "
        "device's estimated written/verified stds (`ConductanceDevice.weight_std`)",
        "",
    ]
    for o in outs:
        lines += [
            f"## {o['label']} on {o['dataset']}",
            "",
            f"{o['num_weights']:,} crossbar weights, clean accuracy "
            f"{100 * o['clean_accuracy']:.2f}% on {o['num_test']} test images "
            f"(source: {o['dataset_source']}).",
            "",
        ]
        for p in config.presets:
            c = o["costs"][p]
            lines += [
                f"### `{p}`",
                "",
                f"Exhaustive write-verify, from the loop ({config.cost_chips} "
                f"chips, {c['devices']:,} devices): {c['writes_per_device']:.2f} "
                f"writes per device, {100 * c['failed_fraction']:.2f}% of devices "
                f"unconverged, {1e9 * c['time_per_device_s']:.0f} ns and "
                f"{1e12 * c['energy_per_device_j']:.1f} pJ per device "
                f"({1e3 * c['time_per_chip_s']:.2f} ms, "
                f"{1e6 * c['energy_per_chip_j']:.2f} uJ per chip, serial; the "
                "CostModel defaults are assumptions).",
                "",
                "Speedup at 0.5 pp, loop / assumed:",
                "",
                "| t | comp | none % | exhaustive % | "
                + " | ".join(config.methods)
                + " |",
                "|---|---|---:|---:|" + "---:|" * len(config.methods),
            ]
            for t in config.times:
                for comp in config.compensation:
                    r0 = by[(o["name"], p, t, comp, config.methods[0], 0.5)]
                    cells = []
                    for m in config.methods:
                        r = by[(o["name"], p, t, comp, m, 0.5)]
                        cells.append(
                            f"{_sp(r['speedup_loop'])} / {_sp(r['speedup_assumed10'])}"
                        )
                    lines.append(
                        f"| {time_label(t)} | {'yes' if comp else 'no'} | "
                        f"{r0['none_mean']:.2f} | {r0['exhaustive_mean']:.2f} | "
                        + " | ".join(cells)
                        + " |"
                    )
            lines.append("")
    lines += answers(config, outs, rows)
    if extra:
        lines += ["", extra]
    lines.append("")
    return "\n".join(lines)


def answers(config: DevicesConfig, outs: list[dict], rows: list[dict]) -> list[str]:
    """The three questions of the study, answered from the numbers above."""
    lines = ["## Answers", ""]
    # 1. does selective write-verify still pay off as drift and reads add
    # error that verify cannot remove?
    lines.append(
        "Does selective write-verify still pay off over time? Per model, preset "
        "and switch, at each read time: what exhaustive write-verify is worth "
        "(exhaustive - none, pp) and the best score's speedup at 0.5 pp from "
        "the loop's cycles ('not needed' where none is already within 0.5 pp):"
    )
    lines.append("")
    for o in outs:
        for p in config.presets:
            for comp in config.compensation:
                parts = []
                for t in config.times:
                    rs = [
                        r
                        for r in rows
                        if (r["model"], r["preset"], r["t_s"], r["compensation"])
                        == (o["name"], p, t, comp)
                        and r["margin_pp"] == 0.5
                    ]
                    best = max(rs, key=lambda r: r["speedup_loop"])
                    gap = best["exhaustive_mean"] - best["none_mean"]
                    what = (
                        "not needed"
                        if not verifying_needed(
                            best["none_mean"], best["exhaustive_mean"], 0.5
                        )
                        else f"{best['method']} {_sp(best['speedup_loop'])}"
                    )
                    parts.append(f"{time_label(t)} {gap:+.2f} pp, {what}")
                lines.append(
                    f"- {o['name']}, `{p}`, {'with' if comp else 'without'} "
                    "compensation: " + "; ".join(parts) + "."
                )
    # 2. which score wins?
    lines += [
        "",
        "Which score is best when the variation is state-dependent by physics "
        "(0.5 pp, loop cycles, cells where verifying is needed)?",
        "",
    ]
    for p in config.presets:
        cells: dict = {}
        for r in rows:
            needed = r["exhaustive_mean"] - r["none_mean"] > 0.5
            if r["preset"] == p and r["margin_pp"] == 0.5 and needed:
                k = (r["model"], r["t_s"], r["compensation"])
                cells.setdefault(k, {})[r["method"]] = r["speedup_loop"]
        wins = dict.fromkeys(config.methods, 0)
        for sp in cells.values():
            top = max(sp.values())
            for m, v in sp.items():
                wins[m] += int(top > 0 and v == top)  # ties: each wins
        means = {m: np.mean([sp[m] for sp in cells.values()]) for m in config.methods}
        lines.append(
            f"- `{p}`: "
            + (
                "best (ties shared) in "
                + ", ".join(f"{m} {wins[m]}" for m in config.methods)
                + f" of {len(cells)} (model, time, switch) cells; mean speedup "
                + ", ".join(f"{m} {v:.2f}x" for m, v in means.items())
                + " ('-' counted as 0)."
                if cells
                else "no cell where verifying is needed."
            )
        )
    # 3. what the loop costs against the assumption
    lines += [
        "",
        "What does exhaustive write-verify really cost per device, and how much "
        "does pricing by the loop change the speedups?",
        "",
    ]
    for p in config.presets:
        ratios = [
            r["speedup_loop"] / r["speedup_assumed10"]
            for r in rows
            if r["preset"] == p and r["speedup_loop"] > 0 and r["speedup_assumed10"] > 0
        ]
        c = outs[0]["costs"][p]
        lines.append(
            f"- `{p}`: exhaustive write-verify costs {c['writes_per_device']:.2f} "
            f"writes per device by the loop (the Gaussian model assumes "
            f"{ASSUMED_VERIFY_CYCLES:g}); loop-cycle speedups are "
            + (
                f"{np.min(ratios):.2f}-{np.max(ratios):.2f}x (median "
                f"{np.median(ratios):.2f}x) the assumed ones over every cell "
                "and margin reached by both."
                if ratios
                else "not comparable (no margin reached by both)."
            )
        )
    return lines


def plot_time(config: DevicesConfig, outs: list[dict], preset: str, path: Path):
    """Accuracy against read time, one panel per model: SWIM at the plot
    budgets, none and exhaustive; solid without, dashed with compensation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    method = "swim" if "swim" in config.methods else config.methods[0]
    fig, axes = plt.subplots(1, len(outs), figsize=(5 * len(outs), 3.6), squeeze=False)
    ts = np.asarray(config.times)
    for ax, o in zip(axes[0], outs, strict=True):
        for comp in config.compensation:
            ls = "--" if comp else "-"
            series = {"none": [], "exhaustive": []}
            for f in config.plot_fractions:
                series[f"{method} {100 * f:g}%"] = []
            for t in config.times:
                c = o["curves"][(setting_name(preset, t, comp), method)]
                series["none"].append(100 * np.mean(c.baseline))
                series["exhaustive"].append(100 * np.mean(c.reference))
                fr = np.asarray(c.fractions)
                for f in config.plot_fractions:
                    i = int(np.argmin(np.abs(fr - f)))
                    series[f"{method} {100 * f:g}%"].append(
                        100 * np.mean(np.asarray(c.accuracies)[i])
                    )
            for i, (label, v) in enumerate(series.items()):
                ax.plot(
                    ts, v, ls, color=f"C{i}", marker="o", ms=3,
                    label=label + (" (comp)" if comp else ""),
                )  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("time since programming (s)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{preset}: {o['label']} on {o['dataset']}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(
    config: DevicesConfig,
    workdir: str | os.PathLike,
    *,
    results_dir: str | os.PathLike | None = None,
    datasets: dict | None = None,
    reuse: str | os.PathLike | None = "runs",
    progress: bool = True,
    log=print,
) -> dict:
    """Runs (or resumes) every model under ``workdir`` and writes the report.

    Args:
        config: the grid.
        workdir: the run folder (one sub-folder per model).
        results_dir: also copy the report there.
        datasets: ``{name: (train, test)}`` instead of ``data.load`` (tests).
        reuse: where the reproductions' run folders are (``reuse/<model's
            folder>``, :data:`REUSE_FOLDERS`); None: train here.
        progress: progress bars of training.

    Returns:
        A dict with the per-model outputs and the report under ``"summary"``.
    """
    start = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    outs = []
    for name, base in config.models:
        if datasets is not None:
            train_data, test_data = datasets[name]
        else:
            train_data = data.load(base.train.dataset, "train")
            test_data = data.load(base.train.dataset, "test")
        folder = workdir / name
        if reuse is not None and name in REUSE_FOLDERS:
            _reuse(Path(reuse) / REUSE_FOLDERS[name], folder, base, log)
        identity = {"devices": config.to_json(), "model": name}
        store = RunStore(folder).open(
            identity,
            manifest(
                seed=config.seed,
                dataset=test_data.name,
                dataset_source=test_data.source,
                config_hash=config_hash(identity),
            ),
            log=log,
        )
        log(f"== {name}")
        outs.append(
            _model(name, base, config, store, train_data, test_data, progress, log)
        )
    wall = time.perf_counter() - start
    extra = (
        f"Wall time of this invocation {wall:.0f} s (finished work in the run "
        "folders is reused); per preset: "
        + "; ".join(
            f"{o['name']} "
            + ", ".join(
                f"{p} {s:.0f} s ({o['cpu_seconds'][p]:.0f} s CPU)"
                for p, s in o["seconds"].items()
            )
            for o in outs
        )
        + "."
    )
    text = devices_markdown(config, outs, extra)
    atomic_write_text(workdir / "devices.md", text)
    atomic_write_text(workdir / "devices.csv", csv_text(curve_rows(outs)))
    atomic_write_text(
        workdir / "devices_speedups.csv", csv_text(speed_rows(config, outs))
    )
    atomic_write_text(workdir / "devices_cost.csv", csv_text(cost_rows(config, outs)))
    atomic_write_json(
        workdir / "manifest.json",
        manifest(seed=config.seed, config=config.to_json()),
    )
    pngs = []
    for p in config.presets:
        png = workdir / f"accuracy_vs_time_{p}.png"
        plot_time(config, outs, p, png)
        pngs.append(png.name)
    if results_dir is not None:
        results_dir = Path(results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        for name in (*REPORT_FILES, *pngs):
            shutil.copyfile(workdir / name, results_dir / name)
    return {"outs": outs, "summary": text}
