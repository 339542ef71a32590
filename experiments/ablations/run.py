"""The ablations: one trained LeNet, a base run that follows the authors' code,
and one run per variant (each in its own folder under ``workdir``, resumable like
every reproduction run), summarised in one report (``ablations.md``,
``ablations.csv``, ``ablation_pairs.csv``).

Trained models are shared: a variant folder starts from a copy of the ``train/``
folder of the first earlier variant with the same training config (so it is
loaded, not retrained), and from that variant's sensitivities when the variant
does not change how they are computed. Variants on another model than the
base's (the quantized LeNet of the Q-layer scale pair, the ResNet-18 of the
average-pool pair) get their own section; each configured pair of variants is
compared order by order (Spearman, per-layer verified fractions, accuracy
against budget).
"""

import dataclasses
import math
import os
import shutil
import time
from pathlib import Path

import jax
import numpy as np

from experiments.ablations.configs.default import AblationConfig
from experiments.common import csv_text, full_choices, seed_run_folder
from uswim_jax import data, selection
from uswim_jax._io import atomic_write_json, atomic_write_text
from uswim_jax.experiment import ExperimentConfig, manifest
from uswim_jax.experiment import run as run_experiment
from uswim_jax.report import write_report
from uswim_jax.sensitivity_report import crossbar_arrays, spearman, topk_overlap
from uswim_jax.stats import mean_ci95

REPORT_FILES = ("ablations.md", "ablations.csv", "ablation_pairs.csv", "manifest.json")
MARGINS = (0.5, 1.0)
AT_FRACTIONS = (0.01, 0.05)
#: Budgets at which the pairs' per-layer verified fractions are reported.
PAIR_FRACTIONS = (0.01, 0.05, 0.2)


def _model_label(cfg: ExperimentConfig) -> str:
    t = cfg.train
    label = t.model
    if t.width is not None:
        label += f" width {t.width}"
    if t.weight_bits is not None:
        label += f" {t.weight_bits}-bit"
    return label


def _acc_cell(curve, f: float) -> str:
    fr = np.asarray(curve.fractions)
    k = np.flatnonzero(np.isclose(fr, f, atol=1e-6, rtol=1e-3))
    if not len(k):
        return "-"
    a = 100.0 * np.asarray(curve.accuracies, np.float64)[k[0]]
    mean, half = mean_ci95(a)
    return f"{mean:.2f} ± {half:.2f}"


def _nwc(curve, g: float, verified_only: bool = False) -> tuple[str, float]:
    ct = curve.cycles_to_target(g, verified_only=verified_only)
    if math.isinf(ct.value):
        return "not reached", math.inf
    return f"{ct.value:.3f}", ct.value


def ablation_rows(config: AblationConfig, outs: dict[str, dict]) -> list[dict]:
    """One row per (variant, setting, method) curve."""
    rows = []
    for v in config.variants:
        out = outs.get(v.name)
        if out is None:
            continue
        for (setting, method), curve in sorted(out["curves"].items()):
            ref = 100.0 * np.asarray(curve.reference, np.float64)
            base = 100.0 * np.asarray(curve.baseline, np.float64)
            row = {
                "variant": v.name,
                "model": _model_label(v.apply(config.base)),
                "setting": setting,
                "method": method,
                "steps": len(np.asarray(curve.fractions)),
                "none_verified": float(base.mean()),
                "exhaustive": float(ref.mean()),
            }
            for f in AT_FRACTIONS:
                row[f"acc@{100 * f:g}%"] = _acc_cell(curve, f)
            for g in MARGINS:
                text, value = _nwc(curve, g)
                row[f"NWC@{g:g}pp"] = text
                row[f"speedup@{g:g}pp"] = (
                    "-" if math.isinf(value) else f"{1.0 / value:.1f}x"
                )
                row[f"NWC-v@{g:g}pp"] = _nwc(curve, g, verified_only=True)[0]
            rows.append(row)
    return rows


def _table(rows: list[dict], cols: list[str]) -> list[str]:
    lines = [
        "| " + " | ".join(cols) + " |",
        "|---|---|---|" + "---:|" * (len(cols) - 3),
    ]
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            cells.append(f"{v:.2f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _model_groups(config: AblationConfig) -> list[list[str]]:
    """Variant names grouped by training config, the base's group first."""
    groups: dict = {}
    for v in config.variants:
        groups.setdefault(v.apply(config.base).train, []).append(v.name)
    return list(groups.values())


def _ordered_scores(
    out: dict, cfg: ExperimentConfig, first_order: bool | None = None
) -> dict[str, np.ndarray]:
    """SWIM's indicator per crossbar layer (uniform variation: no k); the
    first-order term as in ``cfg`` unless ``first_order`` is given."""
    sens = out["sensitivities"]
    fo = cfg.first_order if first_order is None else first_order
    scores = selection.swim_score(
        out["params"], sens["obd"], sens["obd_grad"], first_order=fo
    )
    return crossbar_arrays(scores)


def _layer_fractions(scores: dict[str, np.ndarray], f: float) -> dict[str, float]:
    """Per layer, the fraction of its weights among the global top ``f`` (the
    verified set of :func:`uswim_jax.global_order` at budget ``f``)."""
    flat = np.concatenate(list(scores.values()))
    k = int(np.round(f * len(flat)))
    key = np.where(np.isnan(flat), np.inf, -flat)
    chosen = np.zeros(len(flat), bool)
    chosen[np.argsort(key, kind="stable")[:k]] = True
    out, start = {}, 0
    for name, a in scores.items():
        out[name] = float(chosen[start : start + len(a)].mean())
        start += len(a)
    return out


def _short(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("params", "kernel")]
    return "/".join(parts) or path


def pair_analysis(
    config: AblationConfig, outs: dict[str, dict]
) -> tuple[list[str], list[dict]]:
    """For every configured pair ``(a, b)`` that ran: Spearman between their
    SWIM indicators, top-k overlap and per-layer verified fractions at
    ``PAIR_FRACTIONS``, and accuracy against budget side by side (paired
    difference ``b - a``, common random numbers). Returns markdown lines and
    CSV rows of the per-layer fractions."""
    lines: list[str] = []
    rows: list[dict] = []
    cfgs = {v.name: v.apply(config.base) for v in config.variants}
    for a, b in config.pairs:
        if a not in outs or b not in outs:
            continue
        oa, ob = outs[a], outs[b]
        sa, sb = _ordered_scores(oa, cfgs[a]), _ordered_scores(ob, cfgs[b])
        va, vb = np.concatenate(list(sa.values())), np.concatenate(list(sb.values()))
        same_params = all(
            np.array_equal(np.asarray(x), np.asarray(y))
            for x, y in zip(
                jax.tree.leaves(oa["params"]),
                jax.tree.leaves(ob["params"]),
                strict=True,
            )
        )
        ha = np.concatenate(list(_ordered_scores(oa, cfgs[a], False).values()))
        hb = np.concatenate(list(_ordered_scores(ob, cfgs[b], False).values()))
        lines += [
            "",
            f"### `{a}` against `{b}` ({_model_label(cfgs[a])})",
            "",
            f"- SWIM indicator (uniform variation), {len(va):,} crossbar weights"
            + ("" if same_params else " (**the two runs' params differ**)")
            + f": Spearman {spearman(va, vb):.4f}; verified sets shared at "
            + ", ".join(
                f"{100 * f:g}%: {100 * topk_overlap(va, vb, f):.1f}%"
                for f in PAIR_FRACTIONS
            )
            + f". The same indicator without the first-order term (h_hat alone, "
            f"which the quirks rescale layer by layer): Spearman "
            f"{spearman(ha, hb):.4f}",
            "",
            "Per-layer verified fraction (% of the layer's weights, layers in the "
            "params' order) at each budget:",
            "",
        ]
        head = ["layer", "weights"] + [
            f"{100 * f:g}% {n}" for f in PAIR_FRACTIONS for n in (a, b)
        ]
        lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        fa = {f: _layer_fractions(sa, f) for f in PAIR_FRACTIONS}
        fb = {f: _layer_fractions(sb, f) for f in PAIR_FRACTIONS}
        for layer, arr in sa.items():
            cells = [_short(layer), f"{len(arr):,}"]
            for f in PAIR_FRACTIONS:
                cells += [f"{100 * fa[f][layer]:.2f}", f"{100 * fb[f][layer]:.2f}"]
                rows.append(
                    {
                        "pair": f"{a}|{b}",
                        "layer": _short(layer),
                        "weights": len(arr),
                        "budget": f,
                        "verified_a": fa[f][layer],
                        "verified_b": fb[f][layer],
                    }
                )
            lines.append("| " + " | ".join(cells) + " |")
        for key in sorted(set(oa["curves"]) & set(ob["curves"])):
            ca, cb = oa["curves"][key], ob["curves"][key]
            acc_a = 100.0 * np.asarray(ca.accuracies, np.float64)
            acc_b = 100.0 * np.asarray(cb.accuracies, np.float64)
            if acc_a.shape != acc_b.shape:
                continue
            d = acc_b - acc_a
            t = d.shape[1]
            _, half = mean_ci95(d, axis=1)
            lines += [
                "",
                f"Accuracy (%) against budget, {key[0]}, {key[1]} (mean over "
                f"{t} trials; `{b}` - `{a}` paired, ± 95 % CI):",
                "",
                f"| verified | NWC | {a} | {b} | difference |",
                "|---:|---:|---:|---:|---:|",
            ]
            fr = np.asarray(ca.fractions, np.float64)
            cyc = np.asarray(ca.cycles, np.float64)
            for i in range(len(fr)):
                lines.append(
                    f"| {100 * fr[i]:.3g}% | {cyc[i]:.3f} | {acc_a[i].mean():.2f} | "
                    f"{acc_b[i].mean():.2f} | {d[i].mean():+.2f} ± {half[i]:.2f} |"
                )
            targets = []
            for g in MARGINS:
                targets.append(
                    f"within {g:g} pp of exhaustive: NWC {_nwc(ca, g)[0]} (`{a}`) "
                    f"vs {_nwc(cb, g)[0]} (`{b}`)"
                )
            lines += ["", "Cycles to target: " + "; ".join(targets) + "."]
    return lines, rows


def ablation_markdown(config: AblationConfig, outs: dict[str, dict], info) -> str:
    rows = ablation_rows(config, outs)
    cols = [
        "variant",
        "setting",
        "method",
        "steps",
        "none_verified",
        "exhaustive",
        *(f"acc@{100 * f:g}%" for f in AT_FRACTIONS),
        *(
            k
            for g in MARGINS
            for k in (f"NWC@{g:g}pp", f"speedup@{g:g}pp", f"NWC-v@{g:g}pp")
        ),
    ]
    b = config.base
    lines = [
        f"# Ablations on {info['dataset']}",
        "",
        f"- model: {info['model']} ({info['num_weights']:,} crossbar weights), "
        f"clean test accuracy {100 * info['clean_accuracy']:.2f}% on "
        f"{info['num_test']} test images of **{info['dataset']}** "
        f"(source: {info['dataset_source']})",
        f"- base run: {full_choices(b, info['num_train'], info['num_test_total'])}",
        "- each variant changes one thing from the base and runs only the "
        "settings and methods it can affect; the same trial keys serve every "
        "variant (common random numbers), so rows of one setting and method "
        "are paired. The two quirk pairs (Q-layer scale, average pool) need "
        "other models and have their own sections below; within a pair the "
        "trained model is shared and only the sensitivity rule differs.",
        "- accuracy in %, mean ± 95 % CI half-width over trials; `none_verified` "
        "and `exhaustive` are the mean accuracies with no / every weight "
        "write-verified; NWC = normalized write cycles to get within the margin "
        "(percentage points) of exhaustive write-verify (interpolated between "
        "steps; plain writes counted, so NWC >= 1 / verify_cycles); speedup = 1 / "
        "NWC; NWC-v counts verified devices only (the verified fraction under "
        "the Gaussian model).",
        "",
        "## Variants",
        "",
        "| variant | change | status |",
        "|---|---|---|",
    ]
    for v in config.variants:
        status = "done" if v.name in outs else "not run"
        lines.append(f"| {v.name} | {v.what} | {status} |")
    groups = _model_groups(config)
    lines += ["", f"## Results: {_model_label(config.base)} (the base's model)", ""]
    lines += _table([r for r in rows if r["variant"] in groups[0]], cols)
    cfgs = {v.name: v.apply(config.base) for v in config.variants}
    for group in groups[1:]:
        ran = [n for n in group if n in outs]
        if not ran:
            continue
        o, c = outs[ran[0]], cfgs[ran[0]]
        lines += [
            "",
            f"## Results: {_model_label(c)} ({', '.join(f'`{n}`' for n in group)})",
            "",
            f"- model: {o['model']} ({o['num_weights']:,} crossbar weights), clean "
            f"test accuracy {100 * o['clean_accuracy']:.2f}% on {o['num_test']} "
            "test images",
            f"- {full_choices(c, info['num_train'], info['num_test_total'])}",
            "",
        ]
        lines += _table([r for r in rows if r["variant"] in group], cols)
    pair_lines, _ = pair_analysis(config, outs)
    if pair_lines:
        lines += [
            "",
            "## The quirks' orders, pair by pair",
            "",
            "Each pair runs the same trained model with one sensitivity rule "
            "changed. SWIM's indicator ranks every crossbar weight; the verified "
            "set at budget f is its top f.",
        ]
        lines += pair_lines
    lines.append("")
    return "\n".join(lines)


def pairs_csv(config: AblationConfig, outs: dict[str, dict]) -> str:
    _, rows = pair_analysis(config, outs)
    cols = ["pair", "layer", "weights", "budget", "verified_a", "verified_b"]
    return csv_text(rows, cols) or ",".join(cols) + "\n"


def ablation_csv(config: AblationConfig, outs: dict[str, dict]) -> str:
    return csv_text(ablation_rows(config, outs), escape_commas=True)


def run(
    config: AblationConfig,
    workdir: str | os.PathLike,
    *,
    results_dir: str | os.PathLike | None = None,
    train_data: data.Dataset | None = None,
    test_data: data.Dataset | None = None,
    progress: bool = True,
    only: str | None = None,
    log=print,
) -> dict:
    """Runs (or resumes) the base and every variant under ``workdir`` and writes
    the table. ``only``: a comma-separated list of variant names to run (the
    base always runs, as it trains the shared model). Returns the info with the
    table under ``"summary"``."""
    start = time.perf_counter()
    names = [v.name for v in config.variants]
    wanted = set(names) if not only else {"base", *only.split(",")}
    unknown = wanted - set(names)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}; choose from {names}")
    if train_data is None:
        train_data = data.load(config.base.train.dataset, "train")
    if test_data is None:
        test_data = data.load(config.base.train.dataset, "test")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    outs: dict[str, dict] = {}
    earlier: list[tuple[str, ExperimentConfig]] = []
    for v in config.variants:
        cfg = v.apply(config.base)
        earlier.append((v.name, cfg))
        if v.name not in wanted:
            continue
        vdir = workdir / v.name
        seed_run_folder(workdir, earlier[:-1], vdir, cfg)
        log(f"== ablation {v.name}: {v.what}")
        t0 = time.perf_counter()
        out = run_experiment(
            cfg,
            vdir,
            train_data=train_data,
            test_data=test_data,
            progress=progress,
            log=log,
        )
        write_report(
            vdir,
            out,
            out["curves"],
            choices=full_choices(cfg, len(train_data), len(test_data)),
        )
        log(f"   {v.name}: {time.perf_counter() - t0:.0f} s")
        outs[v.name] = out
    info = {
        **{k: outs["base"][k] for k in ("model", "num_weights", "clean_accuracy")},
        **{k: outs["base"][k] for k in ("dataset", "dataset_source", "num_test")},
        "num_train": len(train_data),
        "num_test_total": len(test_data),
    }
    text = ablation_markdown(config, outs, info)
    text += (
        f"\nwall time of this invocation {time.perf_counter() - start:.0f} s "
        "(finished work in the run folders is reused); pipeline time summed over "
        "the variants and all invocations of their folders "
        f"{sum(o['seconds_total'] for o in outs.values()):.0f} s; per-variant "
        "reports in the variant folders.\n"
    )
    atomic_write_text(workdir / "ablations.md", text)
    atomic_write_text(workdir / "ablations.csv", ablation_csv(config, outs))
    atomic_write_text(workdir / "ablation_pairs.csv", pairs_csv(config, outs))
    atomic_write_json(
        workdir / "manifest.json",
        manifest(
            seed=config.base.seed,
            dataset=info["dataset"],
            dataset_source=info["dataset_source"],
            base={**config.base.to_json(), **config.base.execution_json()},
            variants=[dataclasses.asdict(v) for v in config.variants],
            pairs=[list(p) for p in config.pairs],
        ),
    )
    if results_dir is not None:
        results_dir = Path(results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        for name in REPORT_FILES:
            shutil.copyfile(workdir / name, results_dir / name)
    return {**info, "outs": outs, "summary": text}
