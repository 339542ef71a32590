"""Regenerates the result sections of the README (and of the docs that quote
results, ``DOCUMENTS``) from the committed results files, so every number in
them comes from a command in the repo.

    python -m experiments.readme           # rewrite the sections
    python -m experiments.readme --check   # exit 1 if a document is stale

A section is the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->``.
"""

import argparse
import csv
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: Every file with generated sections.
DOCUMENTS = (README, ROOT / "docs" / "studies.md")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _x(v: str) -> str:
    f = float(v)
    if math.isinf(f):
        return "∞" if f > 0 else "-"
    return f"{f:.1f}x" if f < 100 else f"{f:.0f}x"


def _model_table(folder: Path, label: str) -> list[str]:
    """The speedup table of one model's run folder (or report copy)."""
    info = json.loads((folder / "run_info.json").read_text())
    cfg = json.loads((folder / "config.json").read_text())["config"]["experiment"]
    refs = {r["setting"]: r for r in _read_csv(folder / "references.csv")}
    rows = _read_csv(folder / "speedups.csv")
    from uswim_jax.experiment import METHODS

    present = {r["method"] for r in rows}
    methods = [m for m in METHODS if m in present]
    settings = [s for s in info["settings"] if s in refs]
    cell = {(r["setting"], r["method"], float(r["margin_pp"])): r for r in rows}
    lines = [
        f"{label} on **{info['dataset']}** ({info['num_test']} test images, clean "
        f"accuracy {100 * info['clean_accuracy']:.2f}%), {cfg['num_trials']} Monte "
        f"Carlo trials per point, budget points at "
        f"{', '.join(f'{100 * f:g}%' for f in cfg['fractions'])} verified. "
        "Each cell: speedup over exhaustive write-verify at a 0.5 pp margin, "
        "counting the plain writes of unverified weights (a verify costs "
        f"{cfg['verify_cycles']:g} cycles, so at most "
        f"{cfg['verify_cycles']:g}x) / counting verify cycles only."
        + (
            f" Pipeline time: {info['seconds_total'] / 60:.0f} min."
            if "seconds_total" in info
            else ""
        ),
        "",
        "| setting | none % | exhaustive % | " + " | ".join(methods) + " |",
        "|---|---:|---:|" + "---:|" * len(methods),
    ]
    for s in settings:
        ref = refs[s]
        cells = []
        for m in methods:
            r = cell.get((s, m, 0.5))
            if r is None:
                cells.append("= swim" if m == "uswim" else "")
            else:
                cells.append(f"{_x(r['speedup'])} / {_x(r['speedup_v'])}")
        lines.append(
            f"| {s} | {float(ref['none_mean']):.2f} | "
            f"{float(ref['exhaustive_mean']):.2f} | " + " | ".join(cells) + " |"
        )
    lines.append("")
    for s in settings:
        if (s, "swim", 0.5) in cell and (s, "uswim", 0.5) in cell:
            parts = []
            for g in (0.1, 0.5, 1.0):
                a = float(cell[(s, "swim", g)]["nwc_v"])
                b = float(cell[(s, "uswim", g)]["nwc_v"])
                ok = math.isfinite(a) and math.isfinite(b) and b > 0
                parts.append(f"{a / b:.2f}x at {g:g} pp" if ok else f"n/a at {g:g} pp")
            lines.append(f"- U-SWIM over SWIM, {s} (verify cycles): {', '.join(parts)}")
    lines.append("")
    return lines


def mnist_results(
    folder: Path = ROOT / "results" / "reproduce-mnist",
    command: str = "make reproduce-mnist",
) -> str:
    """Speedups at 0.5 pp per setting and method, from a reproduce-mnist run:
    one table per model of a several-model report (``run_info.json`` lists
    them under ``models``, each in its sub-folder), or the one table of a
    single-model run folder."""
    info = json.loads((folder / "run_info.json").read_text())
    if "models" in info:
        lines = []
        for model in info["models"]:
            lines += [f"**{model['label']}** (`{model['name']}/`)", ""]
            lines += _model_table(folder / model["name"], model["label"])
        source = (
            f"Source: `results/{folder.name}/` (`summary.md` has both models side "
            "by side, every margin, the confidence ranges and accuracy at each "
            "budget; each model's own report is in its sub-folder), from "
            f"`{command}`."
        )
    else:
        lines = _model_table(folder, "LeNet")
        source = (
            f"Source: `results/{folder.name}/` (`summary.md` has every margin, the "
            "confidence ranges and accuracy at each budget), from "
            f"`{command}`."
        )
    lines.append(source)
    return "\n".join(lines)


def per_chip_results(
    folder: Path = ROOT / "results" / "reproduce-mnist",
    command: str = "make reproduce-mnist",
) -> str:
    """The per-chip programming study of each model of a reproduce-mnist report
    (``per_chip.csv`` in the model's sub-folder): per method at the 1 % batch
    (else the finest), the cycles a chip spends until it is within the margin,
    against the fixed budget of the same mean cost, and the batch-size trade-off
    of U-SWIM (else SWIM)."""
    info = json.loads((folder / "run_info.json").read_text())
    models = info.get("models", [{"name": ".", "label": "LeNet"}])
    lines = []
    for model in models:
        path = folder / model["name"] / "per_chip.csv"
        if not path.is_file():
            continue
        from uswim_jax.experiment.config import Setting, load_config

        rows = _read_csv(path)
        config = load_config(folder / model["name"])
        pc = config.per_chip
        setting = Setting(pc.sigma, pc.s, config.verified_ratio).name
        batches = sorted({float(r["batch_fraction"]) for r in rows})
        shown = 0.01 if 0.01 in batches else batches[0]
        lines += [
            f"**{model['label']}** ({setting}; a chip stops at the first check "
            f"{pc.rule().describe()} on {pc.calibration_size:,} calibration images "
            f"of the training split, at most {100 * pc.budget:g} % verified; batches "
            f"of {100 * shown:g} % of the weights). NWC per chip (normalized write "
            "cycles, plain writes counted), test accuracy when it stops, and the "
            "fixed budget of the same mean NWC for every chip:",
            "",
            "| method | NWC mean | median | p95 | max | checks | never | test mean "
            "| test p5 | fixed NWC | fixed test mean | fixed test p5 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            if float(r["batch_fraction"]) != shown:
                continue
            f = {k: float(v) for k, v in r.items() if k != "method"}
            lines.append(
                f"| {r['method']} | {f['cycles_mean']:.3f} | {f['cycles_median']:.3f} "
                f"| {f['cycles_p95']:.3f} | {f['cycles_max']:.3f} "
                f"| {f['checks_mean']:.1f} | {f['never_reached']:.0f} % "
                f"| {f['test_mean']:.2f} | {f['test_p5']:.2f} "
                f"| {f['fixed_cycles']:.3f} | {f['fixed_test_mean']:.2f} "
                f"| {f['fixed_test_p5']:.2f} |"
            )
        methods = {r["method"] for r in rows}
        m = "uswim" if "uswim" in methods else "swim" if "swim" in methods else None
        if m is not None and len(batches) > 1:
            by = {float(r["batch_fraction"]): r for r in rows if r["method"] == m}
            parts = [
                f"{100 * b:g} %: {float(by[b]['checks_mean']):.1f} checks "
                f"({float(by[b]['check_inferences_mean']):,.0f} inferences), "
                f"overshoot {float(by[b]['overshoot']):+.3f} NWC"
                for b in batches
            ]
            lines += ["", f"- batch size, {m}: " + "; ".join(parts) + "."]
        lines.append("")
    if not lines:
        return (
            f"Not run yet: `{command}` writes `per_chip.csv` into each model's "
            f"folder of `results/{folder.name}/`."
        )
    lines.append(
        f"Source: `results/{folder.name}/*/per_chip.csv` and the per-chip section "
        f"of each model's `summary.md` (every batch size), from `{command}`."
    )
    return "\n".join(lines)


def sensitivity(folder: Path = ROOT / "results" / "sensitivity-lenet-mnist") -> str:
    """Overall rank agreement between curvature estimators on trained LeNet."""
    rows = [
        r
        for r in _read_csv(folder / "sensitivity_comparison.csv")
        if r["layer"] == "overall"
    ]
    tops = [k for k in rows[0] if k.startswith("top")]
    lines = [
        "| estimators | Spearman | "
        + " | ".join(f"{k[3:]} top-k overlap" for k in tops)
        + " |",
        "|---|---:|" + "---:|" * len(tops),
    ]
    for r in rows:
        lines.append(
            f"| {r['a']} vs {r['b']} | {float(r['spearman']):.3f} | "
            + " | ".join(f"{float(r[k]):.3f}" for k in tops)
            + " |"
        )
    meta = folder / "meta.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        lines += ["", m["note"]]
    return "\n".join(lines)


def curvature_cost(folder: Path = ROOT / "benchmarks" / "results") -> str:
    """Cost of each estimator in gradient passes, from the benchmark JSONs
    (this machine's CPU run, and the H200 run where one was made)."""
    runs = [
        ("CPU", folder / "curvature_cost.json"),
        ("H200", folder / "curvature_cost_h200.json"),
    ]
    runs = [(label, json.loads(p.read_text())) for label, p in runs if p.is_file()]
    names = list(runs[0][1]["results"])
    head = " | ".join(
        (
            f"{d.get('cpu_count', '?')}-core CPU"
            if d.get("backend") == "cpu"
            else str(d.get("device", label))
        )
        + f", batch {d['batch_size']}"
        for label, d in runs
    )
    lines = [f"| estimator | {head} |", "|---|" + "---:|" * len(runs)]
    for name in names:
        cells = []
        for _, d in runs:
            r = d["results"].get(name)
            cells.append("" if r is None else f"{r['gradient_passes']:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cost in gradient passes (median time / median time of one "
        "gradient of the batch loss), from `python -m "
        "benchmarks.curvature_cost`; Hutchinson per probe.",
    ]
    return "\n".join(lines)


def gpu_performance(
    path: Path = ROOT / "benchmarks" / "results" / "mc_gpu_h200.json",
) -> str:
    """Monte Carlo throughput on the accelerator, from ``benchmarks/gpu_mc.py``."""
    d = json.loads(path.read_text())
    peak = d["matmul_tflops_f32_default_precision"]
    lines = [
        f"On one {d['device']} (JAX {d['jax_version']}): dense matmul "
        f"{peak:.0f} TFLOP/s in float32 at JAX's default precision, "
        f"{d['matmul_tflops_bf16']:.0f} TFLOP/s in bfloat16.",
        "",
        "| model | images | trials | trials/s | TFLOP/s | % of f32 matmul | "
        "serial loop trials/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    if not any("conv_policy" in r for m in d["models"] for r in m["runs"]):
        for m in d["models"]:  # a run from before the conv-path policies
            for r in m["runs"]:
                lines.append(
                    f"| {m['model']} | {m['images']} | {r['trials']} | "
                    f"{r['trials_per_s']:.0f} | {r['tflops']:.1f} | "
                    f"{100 * r['tflops'] / peak:.1f} | "
                    f"{m['serial']['trials_per_s']:.0f} |"
                )
    else:
        lines[0] += f" Memory bandwidth {d['memory_gbs']:.0f} GB/s (`x + 1`)."
        lines[2:] = [
            "| model | images | trials | conv paths | trials/s | TFLOP/s | "
            "% of f32 matmul | % of memory roofline | x serial loop |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for m in d["models"]:
            roof = m["memory_roofline_trials_per_s"]
            for r in m["runs"]:
                chose = next((x["path"] for x in r["conv_paths"] if "model" in x), None)
                paths = f"`{r['conv_policy']}`" + (
                    f" (chose `{chose}`)" if chose else ""
                )
                lines.append(
                    f"| {m['model']} | {m['images']} | {r['trials']} | {paths} | "
                    f"{r['trials_per_s']:.0f} | {r['tflops']:.1f} | "
                    f"{100 * r['tflops'] / peak:.1f} | "
                    f"{100 * r['trials_per_s'] / roof:.0f} | "
                    f"{r['trials_per_s'] / m['serial']['trials_per_s']:.2f} |"
                )
        lines += ["", *gpu_targets(d)]
    lines += [
        "",
        "From `python -m benchmarks.gpu_mc` (FLOPs: matmuls and "
        "convolutions of the forward pass, counted from its jaxpr).",
    ]
    return "\n".join(lines)


def gpu_targets(d: dict) -> list[str]:
    """The accelerator targets of the fast-path issue against a ``gpu_mc`` run:
    every LeNet at 4x the 5,850 trials/s measured before the trial-batching
    transformation, ResNet-18 at 55 % of the float32 matmul rate."""
    out = []
    for m in d["models"]:
        best = max(
            (r for r in m["runs"] if r["conv_policy"] == "auto"),
            key=lambda r: r["trials_per_s"],
        )
        if m["model"].startswith("lenet"):
            got, want = best["trials_per_s"], 4 * 5850
            roof = m["memory_roofline_trials_per_s"]
            out.append(
                f"- {m['model']}: {got:,.0f} trials/s at {best['trials']} trials "
                f"(target {want:,}: {'met' if got >= want else 'missed'}); "
                f"{100 * got / roof:.0f} % of its memory roofline "
                f"({roof:,.0f} trials/s: {m['boundary_bytes_per_trial'] / 1e6:.0f} "
                "MB of matmul and convolution outputs per trial, written and "
                "read once)."
            )
        elif m["model"].startswith("resnet"):
            got = 100 * m["best_fraction_of_f32_matmul"]
            out.append(
                f"- {m['model']}: {got:.1f} % of the f32 matmul rate "
                f"(target 55 %: {'met' if got >= 55 else 'missed'})."
            )
    return out


#: What each case of ``benchmarks/draw_compile.py`` compiles, in words.
DRAW_CASES = {
    "pulse": "one `PulseModel` chip of LeNet",
    "normal 3x3x4x8": "one 3x3x4x8 normal draw",
    "pcm": "one `pcm` chip of LeNet",
    "rram": "one `rram` chip of LeNet",
}


def draw_compile_line(d: dict) -> str:
    """Flat against shaped noise draws' compile time, from
    ``benchmarks/draw_compile.py``, and which of them the library runs."""
    cases = d["cases"]
    times = [
        f"{c['flat_over_shaped_compile']:.2f}x the time for "
        f"{DRAW_CASES.get(n, n)} ({c['flat']['compile_s_median']:.1f} s against "
        f"{c['shaped']['compile_s_median']:.1f} s)"
        for n, c in cases.items()
    ]
    text = (
        "- Noise drawn flat (one `jax.random.normal` over an array, reshaped; "
        "the same numbers as a draw of the array's shape) compiles, vmapped "
        f"over {d['trial_keys']} trial keys, in {_names(times)}."
    )
    other = sorted({c["library"] for c in cases.values()} - {"flat"})
    if other:
        raise ValueError(f"draw_compile cases the library draws {other}: not described")
    exact = [n for n in cases if cases[n]["max_abs_diff"] == 0]
    moved = {n: cases[n] for n in cases if n not in exact}
    text += f" The library draws flat in the {_names(cases)} case" + (
        "s" if len(cases) > 1 else ""
    )
    if not moved:
        text += ", whose outputs are identical to the shaped draws'."
    else:
        if exact:
            text += (
                "; the outputs are identical to the shaped draws' in the "
                f"{_names(exact)} case" + ("s" if len(exact) > 1 else "")
            )
        shares = _names(
            f"{100 * c['moved_fraction']:.1f} % ({n})" for n, c in moved.items()
        )
        worst = max(c["max_abs_diff"] for c in moved.values())
        text += (
            f"; in the {_names(moved)} case"
            + ("s" if len(moved) > 1 else "")
            + f" XLA fuses the two programs differently and {shares} of a "
            f"chip's weights differ from the shaped draws', by at most {worst:.1e}."
        )
    if "at_times" in d:
        text += " " + at_times_sentence(d["at_times"])
    return (
        text + " Measured by `python -m benchmarks.draw_compile` "
        "(`benchmarks/results/draw_compile.json`)."
    )


def at_times_sentence(a: dict) -> str:
    """How far one chip read at several times by ``program_at_times`` is from
    the single-time calls, per preset and draw style (``draw_compile``'s
    ``"at_times"``)."""
    from experiments.devices.run import time_label

    times = ", ".join(time_label(t) for t in a["times_s"])
    styles = list(next(iter(a["cases"].values())))
    parts = []
    for name, row in a["cases"].items():
        share = " / ".join(f"{100 * row[s]['moved_fraction']:.1f} %" for s in styles)
        parts.append(f"{share} ({name})")
    worst = max(r["max_abs_diff"] for row in a["cases"].values() for r in row.values())
    exact = worst == 0
    return (
        f"One chip read at {times} by `program_at_times`, against the "
        "single-time calls, drawn " + " / ".join(styles) + ": "
        + _names(parts)
        + " of the weights differ"
        + ("." if exact else f", by at most {worst:.1e}: the stacked program is "
           "another XLA program, which may fuse the same arithmetic differently, "
           "so the two agree to the last float bit, not always in it.")
    )  # fmt: skip


def _names(items) -> str:
    """``a, b and c``."""
    m = list(items)
    return ", ".join(m[:-1]) + " and " + m[-1] if len(m) > 1 else "".join(m)


def op_profile_line(d: dict) -> str:
    """Where the time of one path goes, from ``benchmarks/op_profile.py``."""
    groups = d["groups"]

    def share(pred) -> float:
        return 100 * sum(g["share"] for k, g in groups.items() if pred(k))

    mm = share(lambda k: k.startswith("dot_general"))
    patches = share(lambda k: k.startswith("dynamic_update_slice"))
    chunk = share(lambda k: k.endswith("(per chunk)"))
    rest = 100 - mm - patches - chunk
    return (
        "- Where the time goes, `evaluate` with "
        + (
            f"its defaults ({d['chunk_size']} trials x {d['eval_batch_size']} images)"
            if d.get("sizes") == "evaluate's auto choice"
            else f"`chunk_size={d['chunk_size']}`, "
            f"`eval_batch_size={d['eval_batch_size']}`"
        )
        + " in XLA's profile of its own ops "
        f"({d['steady_s_min']:.2f} s, {d['pct_of_matmul']:.1f} % of the matmul "
        f"rate in that run): the matmuls take {mm:.0f} % of the op time and run "
        f"at {d['matmul_op_gflops']:.0f} GFLOP/s "
        f"({d['matmul_op_pct_of_matmul']:.0f} % of the matmul rate; LeNet's "
        f"contractions are 9 to 784 long); writing the im2col patches "
        f"{patches:.0f} %; padding, ReLU and pooling {rest:.0f} %; the noise draw "
        f"and the params-only work, once per chunk of trials, {chunk:.0f} % "
        "(`python -m benchmarks.op_profile`, `benchmarks/results/op_profile.json`)."
    )


def _byom_lenet_range(path: Path) -> str:
    """``; in benchmarks.byom's run ...`` with its LeNets' % of the matmul rate
    (each against the matmul rate of that run), or nothing."""
    d = _load(path)
    if d is None:
        return ""
    pct = [c["pct_of_matmul"] for n, c in d["cases"].items() if n.startswith("LeNet")]
    if not pct:
        return ""
    hit = sum(p >= 40 for p in pct)
    return (
        f"; in the `benchmarks.byom` run, with the same defaults, the {len(pct)} "
        f"LeNets ran at {min(pct):.1f}-{max(pct):.1f} % of that run's matmul rate, "
        f"{hit} of them at 40 % or more"
    )


def cpu_performance(
    path: Path = ROOT / "benchmarks" / "results" / "mc_throughput.json",
) -> str:
    """Monte Carlo throughput on the 2-core CPU, from
    ``benchmarks/mc_throughput.py``."""
    d = json.loads(path.read_text())
    rounds = d.get("matmul_gflops_each_round") or [
        d["matmul_gflops_before"],
        d["matmul_gflops_after"],
    ]
    lines = [
        f"{d['model']} over {d['num_images']:,} test images, "
        f"{d['num_trials']} trials, on {d['cpu_count']} CPU cores (JAX "
        f"{d['jax_version']}; load average {d['load_average_start'][0]:.1f} from "
        "other jobs, so compare rows, not absolute times). Dense float32 matmul "
        f"measured in the same run, before and after each round of cases: "
        f"{', '.join(f'{g:.0f}' for g in rounds)} GFLOP/s (the % column uses the "
        f"highest, {max(rounds):.0f}).",
        "",
        "| case | trials/s | GFLOP/s | % of matmul | x serial loop |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, c in d["cases"].items():
        note = (
            ""
            if c["num_trials"] == d["num_trials"]
            else (f" ({c['num_trials']} trials: all at once runs out of memory)")
        )
        lines.append(
            f"| {name}{note} | {c['trials_per_s']:.1f} | {c['gflops']:.1f} | "
            f"{c['pct_of_matmul']:.1f} | {c['x_serial']:.2f} |"
        )
    best = max(d["cases"].items(), key=lambda kv: kv[1]["pct_of_matmul"])
    lines += [
        "",
        f"- The best LeNet path, `{best[0]}`, runs at "
        f"{best[1]['pct_of_matmul']:.1f} % of the matmul rate (target 40 %: "
        f"{'met' if best[1]['pct_of_matmul'] >= 40 else 'missed'})"
        + _byom_lenet_range(path.parent / "byom.json")
        + ".",
    ]
    default = d["cases"].get("evaluate default (chunk=auto, batch=auto)")
    whole = d["cases"].get("evaluate chunk=auto batch=None (all images)")
    if default is not None and whole is not None:
        lines.append(
            f'- `evaluate`\'s default (`chunk_size="auto"`, '
            f'`eval_batch_size="auto"`: {default["auto_chunk_size"]} trials x '
            f"{default['auto_eval_batch_size']} images here) runs "
            f"{default['trials_per_s']:.1f} trials/s, "
            f"{default['trials_per_s'] / best[1]['trials_per_s']:.2f}x the best "
            f"case and {default['trials_per_s'] / whole['trials_per_s']:.2f}x all "
            f"images in one forward pass ({whole['trials_per_s']:.1f} trials/s); "
            + (
                f"{whole['trials_differing_from_default']} of "
                f"{whole['num_trials']} trials differ between the two (float32 "
                "summation order)."
                if whole["trials_differing_from_default"]
                else "the two give the same per-trial accuracies."
            )
        )
    draw = _load(path.parent / "noise_draw.json")
    if draw is not None:
        lines.append(
            "- The flat noise draw (one `jax.random.normal` per trial) takes "
            f"{draw['flat_over_per_leaf_steady']:.2f}x the steady time and "
            f"{draw['flat_over_per_leaf_compile']:.2f}x the compile time of one "
            "draw per leaf, and is "
            f"{100 * draw['flat_draw_share_of_evaluate']:.0f} % of `evaluate`'s "
            "steady time (`python -m benchmarks.noise_draw`, "
            "`benchmarks/results/noise_draw.json`)."
        )
    dc = _load(path.parent / "draw_compile.json")
    if dc is not None:
        lines.append(draw_compile_line(dc))
    prof = _load(path.parent / "op_profile.json")
    if prof is not None:
        lines.append(op_profile_line(prof))
    differ = [
        n for n, c in d["cases"].items() if c.get("trials_differing_from_default")
    ]
    same = (
        "every case gives the same per-trial accuracies as the default path"
        if not differ
        else "per-trial accuracies differ from the default path's in "
        + ", ".join(
            f"`{n}` ({d['cases'][n]['trials_differing_from_default']} trials, "
            f"at most {d['cases'][n]['max_abs_acc_diff_vs_default']:.4f})"
            for n in differ
        )
        + " (float32 summation order), and in no other case"
    )
    lines += [
        "",
        "From `python -m benchmarks.mc_throughput` "
        "(`benchmarks/results/mc_throughput.json`; `--grid C:B,...` picks "
        f"the chunk and image-batch sizes); {same}. For comparison, the issue "
        "that asked for this reports, on the same kind of machine, 2.8 trials/s "
        "for the authors' PyTorch code as shipped and 16.6 for the strongest "
        "plain PyTorch loop.",
    ]
    return "\n".join(lines)


def _span(values, fmt: str = ".2f", unit: str = "") -> str:
    """``lo–hi`` of ``values`` formatted with ``fmt`` (one number when both
    ends format alike), then ``unit``."""
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return f"{lo}{unit}" if lo == hi else f"{lo}–{hi}{unit}"


def _byom_targets(cases: dict) -> list[str]:
    """The issue's CPU targets against the byom cases: every LeNet at least 40
    trials/s, 5x its own serial loop and 30 % of the matmul rate; ResNet-18 at
    least 40 % of the matmul rate. Names the cases that miss one."""
    lenet = {n: c for n, c in cases.items() if n.startswith("LeNet")}
    resnet = {n: c for n, c in cases.items() if n.startswith("ResNet-18")}
    lines = []
    for key, label, target, unit, fmt in (
        ("trials_per_s", " trials/s", 40, "", ".1f"),
        ("x_serial", "x its serial loop", 5, "x", ".2f"),
        ("pct_of_matmul", " % of the matmul rate", 30, " %", ".1f"),
    ):
        if not lenet:
            break
        below = [n for n, c in lenet.items() if c[key] < target]
        verdict = "met" if not below else "missed by " + ", ".join(below)
        lines.append(
            f"- LeNet, every variant: {_span([c[key] for c in lenet.values()], fmt)}"
            f"{label} (target {target:g}{unit}: {verdict})."
        )
    for n, c in resnet.items():
        ok = "met" if c["pct_of_matmul"] >= 40 else "missed"
        lines.append(
            f"- {n}: {c['pct_of_matmul']:.1f} % of the matmul rate (target 40 %: {ok})."
        )
    return lines


#: Name prefixes of the byom cases that are convolutional networks.
CNN_CASES = ("LeNet", "ConvNet", "ResNet-18")


def _together_over_alone(case: dict) -> float | None:
    """A case run one trial at a time: the time per trial of the
    ``"measure"`` candidate that runs several trials at once over the same
    image batch, over the one-at-a-time candidate's (``None`` when either
    was not timed)."""
    b = case.get("auto_eval_batch_size") or "all"
    ms = case["measure"]["ms_per_trial"]
    alone = ms.get(f"1 x {b}")
    together = [
        v for k, v in ms.items() if k.endswith(f" x {b}") and not k.startswith("1 ")
    ]
    return together[0] / alone if alone and together else None


def _beyond_cnns(cases: dict) -> list[str]:
    """What the defaults give the cases that are not CNNs (no target), how
    many trials they ran at once, and what running them together instead
    measured."""
    other = {n: c for n, c in cases.items() if not n.startswith(CNN_CASES)}
    if not other:
        return []
    short = {n: n.split(",")[0] for n in other}
    each = ", ".join(f"{short[n]} {c['x_serial']:.2f}x" for n, c in other.items())
    below = [short[n] for n, c in other.items() if c["x_serial"] < 1]
    verdict = (
        "at least the loop's speed on each"
        if not below
        else "below the loop on " + ", ".join(below)
    )
    chunks = sorted({c["auto_chunk_size"] for c in other.values()})
    at_once = (
        "one trial at a time"
        if chunks == [1]
        else "trials at once: " + ", ".join(map(str, chunks))
    )
    ratios = {
        short[n]: r
        for n, c in other.items()
        if c["auto_chunk_size"] == 1 and (r := _together_over_alone(c)) is not None
    }
    measured = (
        " Several trials at once over the same images (timed among the "
        '"measure" candidates) took '
        + ", ".join(f"{r:.2f}x ({n})" for n, r in ratios.items())
        + " the time per trial of one at a time."
        if ratios
        else ""
    )
    return [
        f"- Beyond CNNs (no target): {each} their serial loops ({verdict}), "
        f"run {at_once}. Their matmuls are each trial's own (dense layers with "
        "per-trial kernels, products of per-trial activations): running trials "
        "together shares none of them (it only sets each trial's matmuls beside "
        "the others'), so on a CPU "
        '`chunk_size="auto"` runs such a model one trial at a time '
        f"(`_chunking.AUTO_OWN_MAC_SHARE`).{measured} A trial of these is "
        "already large matmuls over its images; the im2col rewrite, which turns "
        "small convolutions into large matmuls, is where LeNet's speed-up comes "
        "from."
    ]


def _measured(cases: dict) -> list[str]:
    """What ``chunk_size="measure"`` gave against the serial loops and the
    defaults, and what measuring cost, naming the cases below their loops."""
    m = {n: c["measure"] for n, c in cases.items()}
    below = [n for n, r in m.items() if r["x_serial"] < 1]
    verdict = (
        "at least its serial loop's speed on every model"
        if not below
        else "below its serial loop on " + ", ".join(below)
    )
    slower = [n for n, r in m.items() if r["x_auto"] < 0.9]
    missed = (
        " Timed on a loaded machine a choice can miss: slower than the "
        "defaults by more than 10 % on " + ", ".join(slower) + "."
        if slower
        else ""
    )
    return [
        '- `chunk_size="measure"` (the "measure" columns) times a few '
        "(trials at once, images per pass) candidates in its first call and "
        f"runs the fastest: {_span([r['x_serial'] for r in m.values()], '.2f', 'x')}"
        f" its serial loop ({verdict}), "
        f"{_span([r['x_auto'] for r in m.values()], '.2f', 'x')} the defaults; "
        f"measuring took {_span([r['measuring_s'] for r in m.values()], '.1f', ' s')}"
        " of the first call, once per model, shapes and machine (the choice is "
        "kept in a file that later processes read)." + missed
    ]


def byom_performance(path: Path = ROOT / "benchmarks" / "results" / "byom.json") -> str:
    """Monte Carlo throughput on users' own models (plain lax, flax.linen,
    flax.nnx, equinox) and the project's, from ``benchmarks/byom.py``."""
    d = json.loads(path.read_text())
    rounds = d["matmul_gflops_each_round"]
    given = {str(c["eval_batch_size"]) for c in d["cases"].values()}
    how = (
        'its defaults (`chunk_size="auto"`, `eval_batch_size="auto"`)'
        if given == {"auto"}
        else f'`chunk_size="auto"` and `eval_batch_size={", ".join(sorted(given))}`'
    )
    lines = [
        f"`evaluate` with {how} on {d['cpu_count']} CPU cores (JAX "
        f"{d['jax_version']}; load average {d['load_average_start'][0]:.1f} at the "
        f"start and {d['load_average_end'][0]:.1f} at the end from other jobs, so "
        "compare rows, not absolute times). Dense float32 matmul measured in the "
        f"same run, before and after each round: "
        f"{', '.join(f'{g:.0f}' for g in rounds)} GFLOP/s (the % column uses the "
        f'highest, {max(rounds):.0f}). "x serial" is against a Python loop '
        "over trials of the same jitted single-trial noisy forward pass. "
        '"compile s" is the time XLA spent compiling during `evaluate`\'s first '
        "call (JAX's own compile events); tracing and the first run come on top.",
        "",
        "| model | trials x images | per pass | trials/s | GFLOP/s | "
        "% of matmul | x serial loop | compile s | measure: per pass | "
        "trials/s | x serial loop |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in d["cases"].items():
        b = c.get("auto_eval_batch_size", c["eval_batch_size"])
        m = c["measure"]
        lines.append(
            f"| {name} | {c['num_trials']} x {c['num_images']:,} | "
            f"{c['auto_chunk_size']} x {b or 'all'} | "
            f"{c['trials_per_s']:.1f} | {c['gflops']:.1f} | "
            f"{c['pct_of_matmul']:.1f} | {c['x_serial']:.2f} | "
            f"{c['compile_s']:.1f} | {m['chosen']} | {m['trials_per_s']:.1f} | "
            f"{m['x_serial']:.2f} |"
        )
    lines += [
        "",
        *_byom_targets(d["cases"]),
        *_beyond_cnns(d["cases"]),
        *_measured(d["cases"]),
    ]
    lines += [
        "",
        "From `python -m benchmarks.byom` (`benchmarks/results/byom.json`). The "
        "same transformation (`uswim_jax._trialbatch`) runs for every model: no "
        "model-side changes, no special layers.",
    ]
    return "\n".join(lines)


def _conv_noise(cases: dict) -> float:
    """The largest relative spread of trials/s between policies that ran the
    same path in every layer shape (one program, so the spread is noise)."""
    worst = 0.0
    for c in cases.values():
        groups: dict = {}
        for r in c["policies"].values():
            sig = tuple(
                sorted((x["conv"], x["path"]) for x in r["layers"] if "conv" in x)
            )
            groups.setdefault(sig, []).append(r["trials_per_s"])
        for v in groups.values():
            worst = max(worst, max(v) / min(v) - 1)
    return worst


def conv_paths_performance(
    path: Path = ROOT / "benchmarks" / "results" / "conv_paths.json",
) -> str:
    """How trial-batched convolutions run, per policy, from
    ``benchmarks/conv_paths.py``."""
    d = json.loads(path.read_text())
    pols = d["policies"]
    lines = [
        "`evaluate` (its default sizes) under each `uswim_jax.conv_paths` policy on "
        + (
            f"{d['cpu_count']} CPU cores"
            if d["backend"] == "cpu"
            else f"one {d['device']}"
        )
        + f" (JAX {d['jax_version']}; load "
        f"average {d['load_average_start'][0]:.1f} at the start and "
        f"{d['load_average_end'][0]:.1f} at the end), trials/s, best of "
        f"{d['repeats']} "
        + (
            "rounds per model (round robin over its policies)"
            if "models_planned" in d  # written after every model
            else "round-robin rounds over every model and policy"
        )
        + (
            f", each sample the mean of as many back-to-back calls as last "
            f"{d['min_call_s']:g} s"
            if d.get("min_call_s")
            else ""
        )
        + (
            "; the float32 matmul rate, measured before the first model and "
            f"after each, ranged {min(peaks):.0f}–{max(peaks):.0f} GFLOP/s"
            if (peaks := d.get("matmul_gflops_before_and_after_each_model"))
            else ""
        )
        + f". The default here is `{d['auto_policy']}`."
        + (
            ""
            if d.get("complete", True)
            else f" The run stopped after {len(d['cases'])} of "
            f"{len(d['models_planned'])} models (its time limit); missing: "
            + ", ".join(m for m in d["models_planned"] if m not in d["cases"])
            + "."
        ),
        "",
        "| model | trials x images | per pass | "
        + " | ".join(f"`{p}`" for p in pols)
        + " | `measure` chose | measuring s | `layers` chose |",
        "|---|---:|---:|" + "---:|" * len(pols) + "---|---:|---|",
    ]
    differ = []
    for name, c in d["cases"].items():
        per = c["policies"]
        best = max(per[p]["trials_per_s"] for p in pols)
        cells = []
        for p in pols:
            v = f"{per[p]['trials_per_s']:.1f}"
            cells.append(f"**{v}**" if per[p]["trials_per_s"] == best else v)
        layers = ", ".join(
            f"{k} {v}" for k, v in sorted(per["layers"]["paths"].items())
        )
        measuring = (
            "reused"
            if per["measure"].get("measurement_reused")
            else f"{c['measuring_s']:.1f}"
        )
        lines.append(
            f"| {name} | {c['num_trials']} x {c['num_images']:,} | "
            f"{c['auto_chunk_size']} x {c['auto_eval_batch_size'] or 'all'} | "
            + " | ".join(cells)
            + f" | `{per['measure']['chosen']}` | {measuring} | "
            f"{layers} |"
        )
        differ += [
            f"{name} ({p})" for p in pols if per[p]["trials_differing_from_rule"]
        ]
    ratios = [c["policies"]["measure"]["x_rule"] for c in d["cases"].values()]
    greedy = [c["policies"]["layers"]["x_rule"] for c in d["cases"].values()]
    lines += [
        "",
        f"- `measure` against `rule`: x{_span(ratios, '.2f')} (per model, steady "
        "state; measuring is paid once per model and shapes, in this "
        "benchmark once per process since it keeps no file of the choices: "
        '"measuring s", "reused" where an earlier row traced to the same '
        "program).",
        f"- `layers` (each layer shape timed alone) against `rule`: "
        f"x{_span(greedy, '.2f')}.",
        "- Policies that ran the same path in every layer shape run one program; "
        f"their trials/s differ by up to {100 * _conv_noise(d['cases']):.0f} % "
        "in this run, the noise to read the other differences against.",
        "- Per-trial accuracies equal the rule's under every policy"
        + (f" except {', '.join(differ)}." if differ else "."),
        *_conv_fusion_line(path.parent / "conv_fusion.json"),
        "",
        "From `python -m benchmarks.conv_paths` (`benchmarks/results/conv_paths.json`"
        ", which also holds each layer shape's path, `measure`'s time per "
        "forward pass under each candidate and, under `layers`, each layer "
        "shape's time along every path). Bold: the fastest policy of the row; "
        '"`measure` chose" is the candidate it ran; "`layers` chose" counts '
        "layer shapes per path.",
    ]
    return "\n".join(lines)


def _conv_fusion_line(path: Path) -> list[str]:
    """What ``per_trial`` gains by keeping each trial's convolution beside its
    ReLU and pooling, from ``benchmarks/conv_fusion.py`` (nothing when it has
    not run)."""
    d = _load(path)
    if d is None:
        return []
    shapes = d["shapes"]
    top = max(shapes, key=lambda s: s["before_over_after"])
    return [
        "- `per_trial` keeps each trial's layers apart until a dense layer "
        "stacks the trials, so a convolution meets its ReLU and pooling: "
        f"{d['trials']} trials of ConvNet's layer shapes ran "
        f"x{_span([s['before_over_after'] for s in shapes], '.2f')} as fast so "
        "as with the convolution's output stacked first "
        f"(x{top['before_over_after']:.2f} on {top['shape']}; "
        "`python -m benchmarks.conv_fusion`, "
        "`benchmarks/results/conv_fusion.json`)."
    ]


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def sweep_performance(folder: Path = ROOT / "benchmarks" / "results") -> str:
    """A whole sweep against one-by-one evaluation, scaling and recompilation,
    from ``benchmarks/{sweep_vs_serial,mc_scaling,recompile}.py``."""
    lines = []
    d = _load(folder / "sweep_vs_serial.json")
    if d:
        same = "identical" if d["accuracies_identical"] else "NOT identical"
        lines += [
            f"A whole sweep, {d['num_steps']} budget steps x {d['num_trials']} "
            f"trials of {d['model']} over {d['num_images']:,} test images "
            f"(chunks of {d['chunk_size'] or 'all'} trials x "
            f"{d['eval_batch_size'] or 'all'} images; "
            f"{d['cpu_count']} CPU cores, load average "
            f"{d['load_average_start'][0]:.1f}), four ways in one run; per-trial "
            f"accuracies {same} across them:",
            "",
            "| way | calls | s | trial evaluations/s | time / sweep's |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, c in d["cases"].items():
            lines.append(
                f"| {name} | {c['calls']} | {c['steady_s_min']:.1f} | "
                f"{c['trial_evals_per_s']:.1f} | {c['sweep_speedup']:.2f} |"
            )
        lines.append("")
    d = _load(folder / "mc_scaling.json")
    if d:
        s = d["summary"]
        for group, unit, per in (("trials", "trial", 1e3), ("images", "image", 1e3)):
            g = s.get(group)
            if not g:
                continue
            rss = [v for v in g["peak_rss_run_mb"] if v]
            xs = [c[group] for c in d["cases"] if c["group"] == group]
            each = [per * v for v in g["s_per_x"]]
            c0 = next(c for c in d["cases"] if c["group"] == group)
            fixed = (
                f"{c0['images']:,} images"
                if group == "trials"
                else f"{c0['trials']} trials"
            )
            lines.append(
                f"- {group.capitalize()} {min(xs):,} to {max(xs):,} (LeNet, "
                f"{fixed}): {per * g['fit']['slope']:.2f} ms per {unit} (least "
                f"squares, R^2 {g['fit']['r2']:.3f}; time ~ {group}^"
                f"{g['fit']['loglog_exponent']:.2f}; each point "
                f"{min(each):.2f}-{max(each):.2f} ms per {unit}); peak RSS "
                f"{min(rss):.0f}-{max(rss):.0f} MB, XLA temp "
                f"x{g['xla_temp_spread']:.2f}"
                + (
                    f" chunked vs x{g['xla_temp_unchunked_spread']:.1f} unchunked."
                    if g.get("xla_temp_unchunked_spread")
                    else "."
                )
            )
        if "models" in s:
            lines += [
                "",
                "| model | weights | MFLOP/image | ms per trial-image | GFLOP/s | "
                "compile s | peak RSS MB |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            for name, m in s["models"].items():
                lines.append(
                    f"| {name} | {m['num_weights']:,} | "
                    f"{m['flops_per_image'] / 1e6:.1f} | "
                    f"{1e3 * m['s_per_trial_image']:.3f} | {m['gflops']:.1f} | "
                    f"{m['compile_s']:.0f} | {m['peak_rss_run_mb'] or 0:.0f} |"
                )
        lines.append("")
    d = _load(folder / "recompile.json")
    if d:
        w = d["drivers"]["sweep"]
        e = d["drivers"]["evaluate"]
        ctl = d["control_static_sigma"]
        lines.append(
            f"- Compile vs run ({d['num_images']} images): the jitted sweep's first "
            f"call took {w['first_call_s']:.1f} s, {w['compile_s']:.1f} s of it "
            f"XLA compilation; later calls {w['run_s_steady_median']:.1f} s. "
            f"Over {len(d['sigmas'])} sigmas x "
            f"{len(d['budget_fraction_spans'])} budgets ({w['loop_calls']} "
            f"calls) it compiled {w['loop_compiles_driver']} times and traced "
            f"{w['loop_traces_driver']} times (`evaluate`: "
            f"{e['loop_compiles_driver']} compiles in {e['loop_calls']} calls)"
            + (
                f"; the control with sigma static compiled {ctl['compiles']} "
                f"times for {len(ctl['sigmas'])} sigmas."
                if ctl
                else "."
            )
        )
        p = d.get("sweep_vs_evaluates")
        if p:
            t = p["timings"]
            same = "identical" if p["accuracies_identical"] else "NOT identical"
            lines.append(
                f"- The same sweep against its {p['evaluations']} evaluations "
                f"made one `evaluate` call each (the steps, exhaustive and no "
                f"write-verify), in round robin in that run: "
                f"{t['sweep']['steady_s_min']:.2f} s against "
                f"{t['evaluate per step']['steady_s_min']:.2f} s "
                f"(x{p['sweep_over_evaluates']:.2f}); per-trial accuracies {same}."
            )
        lines.append("")
    lines.append(
        "From `python -m benchmarks.sweep_vs_serial`, `benchmarks.mc_scaling` "
        "(one subprocess per case; peak RSS during the runs) and "
        "`benchmarks.recompile` (JSON in `benchmarks/results/`)."
    )
    return "\n".join(lines)


def fashion_results() -> str:
    """The same table for ``make reproduce-fashion-mnist``."""
    return mnist_results(
        ROOT / "results" / "reproduce-fashion-mnist", "make reproduce-fashion-mnist"
    )


def _speedup(v: str) -> str:
    """A speedup cell; 0 means the margin was not reached before exhaustive."""
    return _x(v) if float(v) > 0 else "-"


def devices_results(folder: Path = ROOT / "results" / "reproduce-devices") -> str:
    """Selective write-verify on the PCM and RRAM presets over time, from
    ``make reproduce-devices``: per model, preset, read time and
    drift-compensation switch, the end points and the best score's speedup
    at 0.5 pp from the loop's own cycles beside the assumed 10 per verify;
    then what exhaustive write-verify costs per device."""
    missing = _not_run(folder, "make reproduce-devices")
    if missing:
        return missing
    from experiments.devices.run import verifying_needed

    rows = _read_csv(folder / "devices_speedups.csv")
    costs = _read_csv(folder / "devices_cost.csv")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {}
    for r in rows:
        if float(r["margin_pp"]) != 0.5:
            continue
        k = (r["model"], r["preset"], float(r["t_s"]), r["compensation"])
        cell.setdefault(k, []).append(r)
    names = {3600.0: "1 h", 86400.0: "1 day", 2592000.0: "1 month"}
    cfg = json.loads((folder / "manifest.json").read_text())["config"]
    lines = [
        f"Float LeNet, {cfg['num_trials']} programmed chips (Monte Carlo trials) "
        f"per point over the first {cfg['test_subset']} test images, budgets at "
        f"{', '.join(f'{100 * f:g}%' for f in cfg['fractions'])} verified; each "
        "preset's default verify loop (docs/devices.md). Per read time and "
        "drift-compensation switch: the end points, the best score at a 0.5 pp "
        "margin and its speedup over exhaustive write-verify with cycles counted "
        "by the loop, beside the same accuracies priced at 10 cycles per verified "
        "device (the Gaussian model's assumption).",
        "",
        "| model | preset | t | comp | none % | exhaustive % | best score at "
        "0.5 pp | speedup, loop cycles | speedup, 10 cycles assumed |",
        "|---|---|---|---|---:|---:|---|---:|---:|",
    ]
    for (model, preset, t, comp), rs in cell.items():
        best = max(rs, key=lambda r: float(r["speedup_loop"]))
        none, ex = float(best["none_mean"]), float(best["exhaustive_mean"])
        needed = verifying_needed(none, ex, 0.5)
        lines.append(
            f"| {model} | {preset} | {names.get(t, f'{t:g} s')} | "
            f"{'yes' if comp == 'True' else 'no'} | {none:.2f} | {ex:.2f} | "
            f"{best['method'] if needed else 'not needed (none within 0.5 pp)'} | "
            f"{_speedup(best['speedup_loop'])} | "
            f"{_speedup(best['speedup_assumed10'])} |"
        )
    lines += ["", "Exhaustive write-verify, from the loop's own counts:", ""]
    for c in costs:
        lines.append(
            f"- {c['model']}, `{c['preset']}`: {float(c['writes_per_device']):.2f} "
            f"writes per device, {100 * float(c['failed_fraction']):.2f}% of "
            f"devices unconverged after the loop's cap, "
            f"{1e9 * float(c['time_per_device_s']):.0f} ns and "
            f"{1e12 * float(c['energy_per_device_j']):.1f} pJ per device "
            "(assumed pulse costs)."
        )
    lines += [
        "",
        f"Scores compared: {', '.join(methods)}. Source: `results/{folder.name}/` "
        "(`devices.md` has every score, time and switch with both cycle counts, "
        "`devices_speedups.csv` the 0.1/0.5/1 pp margins, one accuracy-against-"
        "time plot per preset), from `make reproduce-devices`.",
    ]
    return "\n".join(lines)


def _not_run(folder: Path, command: str) -> str | None:
    if folder.is_dir():
        return None
    return f"Not run yet: `{command}` writes `results/{folder.name}/`."


def scan_rows(folder: Path) -> list[dict]:
    """The rows of a scan's ``scan.csv``, numbers as floats."""
    return [
        {k: (v if k in ("dataset", "basis") else float(v)) for k, v in r.items()}
        for r in _read_csv(folder / "scan.csv")
    ]


def uswim_scan_results(folder: Path = ROOT / "results" / "uswim-scan") -> str:
    """U-SWIM over SWIM across the s x sigma scan: the 7x verdict per dataset,
    from ``make reproduce-uswim-scan`` (docs/studies.md, part 4)."""
    command = "make reproduce-uswim-scan"
    missing = _not_run(folder, command)
    if missing:
        return missing
    from experiments.uswim_scan.run import claim_line, verdict_lines

    rows = scan_rows(folder)
    return "\n".join(
        [
            claim_line(rows),
            "",
            *verdict_lines(rows),
            "",
            f"Source: `results/{folder.name}/scan.md` (every setting, both bases, "
            f"the ranges; `scan.png`), from `{command}`.",
        ]
    )


def study_diagonal(folder: Path) -> dict[str, dict[str, float]]:
    """Overall agreement of the one-pass diagonal (on the GGN's images) with
    the exact GGN diagonal per dataset (Spearman and the top-k overlaps), from
    a study's ``diagonal.csv``; empty without one."""
    from experiments.deep.run import GGN, OBD_SAME

    if not (folder / "diagonal.csv").is_file():
        return {}
    return {
        r["dataset"]: {k: float(v) for k, v in r.items() if k[:3] in ("spe", "top")}
        for r in _read_csv(folder / "diagonal.csv")
        if (r["a"], r["b"], r["layer"]) == (OBD_SAME, GGN, "overall")
    }


def _study_results(folder: Path, command: str) -> str:
    missing = _not_run(folder, command)
    if missing:
        return missing
    diag = study_diagonal(folder)
    lines = []
    for run_dir in sorted(folder.glob("*/run")):
        info = json.loads((run_dir / "run_info.json").read_text())
        t = json.loads((run_dir / "config.json").read_text())["config"]["experiment"]
        t = t["train"]
        label = t["model"] + (f" (width {t['width']})" if t.get("width") else "")
        lines += [f"**{label}, {info['dataset']}**", ""]
        lines += _model_table(run_dir, label)
        r = diag.get(info["dataset"])
        if r is not None:
            tops = [k for k in r if k.startswith("top")]
            lines += [
                f"- one-pass diagonal vs the exact GGN diagonal (same "
                f"images, all crossbar weights): Spearman "
                f"{r['spearman']:.3f}, top-k overlap "
                + ", ".join(f"{r[k]:.2f} at {k[3:]}" for k in tops),
                "",
            ]
    lines.append(
        f"Source: `results/{folder.name}/study.md` (where the budget goes per "
        f"layer group, the per-layer diagonal check), from `{command}`."
    )
    return "\n".join(lines)


def deep_results(folder: Path = ROOT / "results" / "deep") -> str:
    """ResNet-18 on the padded datasets (docs/studies.md, part 2)."""
    return _study_results(folder, "make reproduce-deep")


def vit_results(folder: Path = ROOT / "results" / "vit") -> str:
    """The small ViT (docs/studies.md, part 3(c))."""
    return _study_results(folder, "make reproduce-vit")


SECTIONS: dict[str, Callable[[], str]] = {
    "devices-results": devices_results,
    "fashion-results": fashion_results,
    "cpu-performance": cpu_performance,
    "byom-performance": byom_performance,
    "conv-paths": conv_paths_performance,
    "sweep-performance": sweep_performance,
    "gpu-performance": gpu_performance,
    "mnist-results": mnist_results,
    "per-chip-results": per_chip_results,
    "sensitivity": sensitivity,
    "curvature-cost": curvature_cost,
    "uswim-scan-results": uswim_scan_results,
    "deep-results": deep_results,
    "vit-results": vit_results,
}


def render(text: str) -> str:
    """``text`` with every known section regenerated (the results sections
    here, their readings in ``experiments.readings``)."""
    from experiments.readings import SECTIONS as READINGS

    for name, fn in {**SECTIONS, **READINGS}.items():
        begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
        if begin not in text:
            continue
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{fn()}\n{end}{tail}"
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="experiments.readme", description=__doc__)
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    stale = []
    for doc in DOCUMENTS:
        old = doc.read_text()
        new = render(old)
        if new == old:
            continue
        if args.check:
            stale.append(doc.relative_to(ROOT).as_posix())
        else:
            doc.write_text(new)
    if stale:
        print(
            f"{', '.join(stale)} stale: run `python -m experiments.readme`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
