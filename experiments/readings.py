"""The README's readings: the sentences under a results table that say what it
shows (and the few results the docs quote, e.g. ``docs/studies.md``). Every
number in them is computed here from the same committed results files as the
table, so ``python -m experiments.readme --check`` fails when a
rerun moves one; a qualitative word that a rerun could make false (which orders
never stop early, which score leads) is computed too.

Each function returns the text of one ``<!-- BEGIN name -->`` section of the
README or a doc (``SECTIONS``, ``experiments.readme.DOCUMENTS``), or a line
saying what to run when its results are absent.
"""

import json
import statistics
from pathlib import Path

from experiments.readme import (
    ROOT,
    _names,
    _not_run,
    _read_csv,
    _span,
    scan_rows,
    study_diagonal,
)

#: The curvature-based orders (Hutchinson's estimate is reported apart).
CURVATURE = ("swim", "uswim", "eloss-obd", "eloss-ggn", "eloss-fisher")


def _count(names) -> list[tuple[str, int]]:
    """(name, how often) for ``names``, most often first, ties by name (so the
    text does not depend on set order)."""
    n = {}
    for m in names:
        n[m] = n.get(m, 0) + 1
    return sorted(n.items(), key=lambda kv: (-kv[1], kv[0]))


def _uniform_sigmas(sp) -> tuple[float, float]:
    """The lowest and highest uniform sigma among a study's settings."""
    sigmas = sorted(
        {float(s.split("=")[1]) for d in sp.values() for s, _ in d if "uniform" in s}
    )
    return sigmas[0], sigmas[-1]


def per_chip_reading(
    folder: Path = ROOT / "results" / "reproduce-mnist",
    command: str = "make reproduce-mnist",
) -> str:
    """What the per-chip study shows, at the 1 % batch (else the finest), for
    SWIM against the fixed budget, from each model's ``per_chip.csv``."""
    info = json.loads((folder / "run_info.json").read_text())
    models = [
        m
        for m in info.get("models", [])
        if (folder / m["name"] / "per_chip.csv").is_file()
    ]
    if not models:
        return f"Not run yet: `{command}` writes each model's `per_chip.csv`."
    from uswim_jax.experiment.config import load_config

    rows, budgets = {}, set()
    for m in models:
        rows[m["label"]] = [
            {k: (v if k == "method" else float(v)) for k, v in r.items()}
            for r in _read_csv(folder / m["name"] / "per_chip.csv")
        ]
        budgets.add(load_config(folder / m["name"]).per_chip.budget)
    batches = sorted({r["batch_fraction"] for rs in rows.values() for r in rs})
    shown = 0.01 if 0.01 in batches else batches[0]

    def at(method, batch=shown):
        return [
            r
            for rs in rows.values()
            for r in rs
            if r["method"] == method and r["batch_fraction"] == batch
        ]

    swim = at("swim")
    never = {
        m: [r["never_reached"] for r in at(m)]
        for m in sorted({r["method"] for rs in rows.values() for r in rs})
    }
    stuck = {m: v for m, v in never.items() if min(v) >= 90}
    ceiling = max(r["cycles_max"] for rs in rows.values() for r in rs)
    gains = [r["test_mean"] - r["fixed_test_mean"] for r in swim]
    best = max(
        (
            (label, r)
            for label, rs in rows.items()
            for r in rs
            if r["method"] == "swim" and r["batch_fraction"] == shown
        ),
        key=lambda lr: lr[1]["test_mean"] - lr[1]["fixed_test_mean"],
    )
    finest, coarsest = batches[0], batches[-1]
    stuck_text = _names(
        f"{m} ({_span(v, '.0f', ' %')})" for m, v in sorted(stuck.items())
    )
    return (
        f"Per chip (batches of {100 * shown:g} %), SWIM's mean chip costs "
        f"{_span([r['cycles_mean'] for r in swim])} NWC, its 95th percentile "
        f"{_span([r['cycles_p95'] for r in swim])} ({ceiling:.2f} is the "
        f"{_span([100 * b for b in budgets], 'g', ' %')} budget), and "
        f"{_span(never['swim'], '.0f', ' %')} of the chips never get within "
        "the margin by then. "
        + (
            "The orders that almost never stop a chip early (at least 90 % of "
            f"the chips reach the budget) are {stuck_text}. "
            if stuck
            else "Every order stops most chips before the budget. "
        )
        + f"Stopping per chip buys SWIM "
        f"{_span(gains)} points of test accuracy over the fixed budget of the "
        f"same mean cost (at most on the {best[0]}: "
        f"{best[1]['test_mean']:.2f} % against "
        f"{best[1]['fixed_test_mean']:.2f} %). Coarser batches cost up to "
        f"{max(r['overshoot'] for rs in rows.values() for r in rs):.2f} NWC "
        f"of overshoot while cutting SWIM's checks from "
        f"{_span([r['checks_mean'] for r in at('swim', finest)], '.0f')} "
        f"({100 * finest:g} % batches) to "
        f"{_span([r['checks_mean'] for r in at('swim', coarsest)], '.0f')} "
        f"({100 * coarsest:g} %) per chip. The checks run on training images "
        "the models were trained on."
    )


def _speedups(folder: Path) -> dict[str, dict[tuple[str, str], float]]:
    """Speedup (plain writes counted) at a 0.5 pp margin per dataset, keyed by
    (setting, method), from each ``*/run/speedups.csv`` of a study folder."""
    out = {}
    for run_dir in sorted(folder.glob("*/run")):
        dataset = json.loads((run_dir / "run_info.json").read_text())["dataset"]
        out[dataset] = {
            (r["setting"], r["method"]): float(r["speedup"])
            for r in _read_csv(run_dir / "speedups.csv")
            if float(r["margin_pp"]) == 0.5
        }
    return out


def _all(sp, setting, methods) -> list[float]:
    return [d[(setting, m)] for d in sp.values() for m in methods if (setting, m) in d]


def deep_reading(folder: Path = ROOT / "results" / "deep") -> str:
    """What the ResNet-18 study shows: the speedups at the lowest and highest
    uniform sigma, and how close the one-pass diagonal's score comes to the
    exact GGN diagonal's."""
    missing = _not_run(folder, "make reproduce-deep")
    if missing:
        return missing
    sp, diag = _speedups(folder), study_diagonal(folder)
    sigmas = _uniform_sigmas(sp)
    lo, hi = (f"uniform sigma={s:g}" for s in sigmas)
    gap = max(
        abs(d[(s, "eloss-obd")] - d[(s, "eloss-ggn")])
        for d in sp.values()
        for s, m in d
        if m == "eloss-obd" and (s, "eloss-ggn") in d
    )
    return (
        f"At sigma = {sigmas[0]:g}, SWIM and the expected-loss scores are within "
        f"0.5 pp with almost nothing verified: "
        f"{_span(_all(sp, lo, CURVATURE), '.1f', 'x')} of the 10x ceiling. At "
        f"sigma = {sigmas[-1]:g} the gain fades as the unverified network "
        f"collapses: {_span(_all(sp, hi, ['swim']), '.1f', 'x')} for SWIM, "
        f"{_span(_all(sp, hi, ['eloss-obd', 'eloss-ggn']), '.1f', 'x')} for the "
        f"expected-loss scores. The one-pass diagonal's expected-loss score is "
        f"within {gap:.1f}x of the exact GGN diagonal's at every setting (0.5 pp "
        f"margin, plain writes counted), and their overall Spearman correlation "
        f"is {_span([d['spearman'] for d in diag.values()])} (top-1 % overlap "
        f"{_span([d['top1%'] for d in diag.values()])})."
    )


def vit_reading(
    folder: Path = ROOT / "results" / "vit", deep: Path = ROOT / "results" / "deep"
) -> str:
    """What the ViT study shows: curvature against magnitude and random at the
    lowest uniform sigma, how the exact diagonal's score compares at the
    highest, and where SWIM's budget goes, from the study's CSVs."""
    missing = _not_run(folder, "make reproduce-vit")
    if missing:
        return missing
    sp, diag = _speedups(folder), study_diagonal(folder)
    deep = study_diagonal(deep) if (deep / "diagonal.csv").is_file() else {}
    sigmas = _uniform_sigmas(sp)
    lo, hi = (f"uniform sigma={s:g}" for s in sigmas)
    parts = []
    for dataset, d in sp.items():
        cur = max(d.get((lo, m), 0.0) for m in CURVATURE)
        base = max(d.get((lo, m), 0.0) for m in ("magnitude", "random"))
        parts.append(f"{cur:.1f}x against {base:.1f}x on {dataset}")
    lines = [
        f"At sigma = {sigmas[0]:g}, the best of SWIM and the expected-loss scores "
        f"against the best of magnitude and random: {'; '.join(parts)}."
    ]
    for dataset, d in sp.items():
        obd, ggn = d.get((hi, "eloss-obd")), d.get((hi, "eloss-ggn"))
        if obd is not None and ggn is not None:
            lines.append(
                f"At sigma = {sigmas[-1]:g} on {dataset}, the exact diagonal's "
                f"expected-loss score reaches {ggn:.1f}x, the one-pass "
                f"diagonal's {obd:.1f}x."
            )
    agree = (
        f"The one-pass diagonal agrees with the exact GGN diagonal with Spearman "
        f"{_span([v['spearman'] for v in diag.values()])} and top-1 % overlap "
        f"{_span([v['top1%'] for v in diag.values()])}"
    )
    if deep:
        agree += (
            f" (on the ResNet-18: {_span([v['spearman'] for v in deep.values()])} "
            f"and {_span([v['top1%'] for v in deep.values()])})"
        )
    lines.append(agree + ".")
    budget = [
        r
        for r in _read_csv(folder / "budget.csv")
        if r["method"] == "swim" and r["setting"] == lo
    ]
    for dataset in sorted({r["dataset"] for r in budget}):
        rows = [r for r in budget if r["dataset"] == dataset]
        verified = sum(float(r["verified"]) for r in rows)
        size = sum(float(r["size"]) for r in rows)
        groups = {}
        for r in rows:
            g = groups.setdefault(r["group"], [0.0, 0.0])
            g[0] += float(r["verified"])
            g[1] += float(r["size"])
        top = sorted(groups.items(), key=lambda kv: -kv[1][0])[:2]
        lines.append(
            f"Where SWIM's budget goes at sigma = {sigmas[0]:g} on {dataset}: "
            + ", ".join(
                f"{100 * v / verified:.0f} % "
                + ("of its verified weights " if i == 0 else "")
                + f"in the {g} ({100 * n / size:.1f} % of the weights)"
                for i, (g, (v, n)) in enumerate(top)
            )
            + "."
        )
    lines.append(
        f"Source: `results/{folder.name}/` (`speedups.csv` of each run, "
        "`diagonal.csv`, `budget.csv`), from `make reproduce-vit`."
    )
    return " ".join(lines[:-1]) + "\n\n" + lines[-1]


def scan_reading(folder: Path = ROOT / "results" / "uswim-scan") -> str:
    """How U-SWIM/SWIM moves with s on NWC (plain writes counted), its largest
    value there, and where the scan's widest range comes from."""
    missing = _not_run(folder, "make reproduce-uswim-scan")
    if missing:
        return missing
    from experiments.uswim_scan.run import CLAIM, _cell, _where

    rows = scan_rows(folder)
    nwc = [r for r in rows if r["basis"] == "nwc"]
    s_values = sorted({r["s"] for r in nwc})
    per_s, parts = {}, []
    for ds in dict.fromkeys(r["dataset"] for r in nwc):
        best = [
            max(r["ratio"] for r in nwc if r["dataset"] == ds and r["s"] == s)
            for s in s_values
        ]
        per_s[ds] = best
        parts.append(
            f"{ds} "
            + ", ".join(
                f"{b:.2f}x (s={s:g})" for b, s in zip(best, s_values, strict=True)
            )
        )
    grows = all(
        all(b <= c for b, c in zip(v[:-1], v[1:], strict=True)) for v in per_s.values()
    )
    rise = {ds: v[-1] - v[0] for ds, v in per_s.items()}
    fast = max(rise, key=rise.get)
    top = max(r["ratio"] for r in nwc)
    wide = max(rows, key=lambda r: r["ratio_high"] / max(r["ratio_low"], 1e-12))
    cheap = min(("swim", "uswim"), key=lambda m: wide[m])
    return (
        f"The largest U-SWIM/SWIM ratio on NWC (plain writes counted) at each s, "
        f"over sigma and the margins: {'; '.join(parts)}. "
        + (
            f"It grows with s on every dataset, most on {fast}"
            if grows
            else "It does not grow with s everywhere"
        )
        + f", and it stays at or below {top:.2f}x, "
        + (
            f"so the abstract's {CLAIM:g}x is not in this scan on NWC at any s or "
            "sigma. "
            if top < CLAIM
            else f"reaching the abstract's {CLAIM:g}x. "
        )
        + f"The widest range, {_cell(wide)} "
        f"({'NWC-v' if wide['basis'] == 'nwc_v' else 'NWC'} at "
        f"{wide['margin_pp']:g} pp, {wide['dataset']}, {_where(wide)}), comes "
        f"from a setting where {'U-SWIM' if cheap == 'uswim' else 'SWIM'} needs "
        f"{100 * wide[cheap]:.1f} % of exhaustive write-verify's "
        + ("verify cycles." if wide["basis"] == "nwc_v" else "cycles.")
    )


_TIMES = {1.0: "1 s", 3600.0: "1 h", 86400.0: "1 day", 2592000.0: "1 month"}


def devices_reading(folder: Path = ROOT / "results" / "reproduce-devices") -> str:
    """What the measured-device run shows: the loop's cost of exhaustive
    write-verify and the ceiling it sets, PCM's drift with and without
    compensation, and which score is best where verifying is needed."""
    missing = _not_run(folder, "make reproduce-devices")
    if missing:
        return missing
    from experiments.devices.run import verifying_needed

    rows = [
        {
            k: (
                float(v)
                if k not in ("model", "preset", "compensation", "method")
                else v
            )
            for k, v in r.items()
        }
        for r in _read_csv(folder / "devices_speedups.csv")
    ]
    costs = _read_csv(folder / "devices_cost.csv")
    presets = list(dict.fromkeys(c["preset"] for c in costs))
    writes = {
        p: [float(c["writes_per_device"]) for c in costs if c["preset"] == p]
        for p in presets
    }
    ratio = {
        p: statistics.median(
            r["speedup_loop"] / r["speedup_assumed10"]
            for r in rows
            if r["preset"] == p and r["speedup_assumed10"] > 0
        )
        for p in presets
    }
    out = [
        "- Priced by the verify loop, exhaustive write-verify costs "
        + ", ".join(f"{_span(writes[p])} writes per device on {p}" for p in presets)
        + ", not 10, so no selective scheme can save more than about "
        + " or ".join(f"{max(writes[p]):.1f}x ({p})" for p in presets)
        + ": the loop-priced speedups are a median "
        + " and ".join(f"{ratio[p]:.2f}x ({p})" for p in presets)
        + " of the same accuracies priced at 10 cycles per verify (every margin)."
    ]
    ends = {}
    for r in rows:
        if r["margin_pp"] == 0.5:
            ends[(r["model"], r["preset"], r["t_s"], r["compensation"])] = r
    times = sorted({k[2] for k in ends})
    first, last = times[0], times[-1]
    for model in dict.fromkeys(k[0] for k in ends):
        if (model, "pcm", first, "False") not in ends:
            continue
        at = {
            (t, c): ends[(model, "pcm", t, c)]
            for t in times
            for c in ("False", "True")
            if (model, "pcm", t, c) in ends
        }
        free = all(
            not verifying_needed(r["none_mean"], r["exhaustive_mean"], 0.5)
            for (t, c), r in at.items()
            if c == "True"
        )
        out.append(
            f"- PCM's drift on {model}, exhaustively verified: "
            f"{at[(first, 'False')]['exhaustive_mean']:.1f} % at "
            f"{_TIMES.get(first, f'{first:g} s')} and "
            f"{at[(last, 'False')]['exhaustive_mean']:.1f} % at "
            f"{_TIMES.get(last, f'{last:g} s')} without compensation, "
            f"{at[(last, 'True')]['exhaustive_mean']:.1f} % with per-layer drift "
            "compensation"
            + (
                "; with it, verifying nothing is within 0.5 pp at every time."
                if free
                else "."
            )
        )
    winners = {}  # cell -> the scores with the best loop-priced speedup
    for k, r0 in ends.items():
        if verifying_needed(r0["none_mean"], r0["exhaustive_mean"], 0.5):
            cell = [
                r
                for r in rows
                if r["margin_pp"] == 0.5
                and (r["model"], r["preset"], r["t_s"], r["compensation"]) == k
            ]
            top = max(r["speedup_loop"] for r in cell)
            winners[k] = {r["method"] for r in cell if r["speedup_loop"] == top}
    count = _count(m for ms in winners.values() for m in ms)
    curvature = sum(1 for ms in winners.values() if ms - {"magnitude", "random"})
    line = (
        f"- Where verifying is needed ({len(winners)} of {len(ends)} cells at "
        f"0.5 pp), a curvature-based score is best in {curvature}; per score "
        "(ties counted for each): " + ", ".join(f"{m} {n}" for m, n in count) + "."
    )
    mag = sorted({(k[0], k[1], k[2]) for k, ms in winners.items() if "magnitude" in ms})
    if mag:
        line += (
            " Magnitude is best on "
            + "; ".join(f"{m} {p} at {_TIMES.get(t, f'{t:g} s')}" for m, p, t in mag)
            + "."
        )
    out.append(line)
    return "\n".join(out)


def papers_reading(
    folders=(
        ROOT / "results" / "reproduce-mnist",
        ROOT / "results" / "reproduce-fashion-mnist",
    ),
) -> str:
    """What the reproduction runs show against the papers' claims, over every
    model of each folder: the verified fractions per kind of order, the
    Fashion-MNIST collapse, U-SWIM over SWIM, and which order leads."""
    cells, clean, none03, hutch = [], {}, {}, {}
    for folder in folders:
        if not (folder / "run_info.json").is_file():
            continue
        for m in json.loads((folder / "run_info.json").read_text())["models"]:
            sub = folder / m["name"]
            info = json.loads((sub / "run_info.json").read_text())
            ds = info["dataset"]
            clean.setdefault(ds, []).append(100 * info["clean_accuracy"])
            for r in _read_csv(sub / "references.csv"):
                if r["setting"].endswith("sigma=0.3"):
                    none03.setdefault(ds, []).append(float(r["none_mean"]))
            cfg = json.loads((sub / "config.json").read_text())["config"]["experiment"]
            hutch[info["num_weights"]] = cfg["hutchinson_probes"]
            for r in _read_csv(sub / "speedups.csv"):
                cells.append(
                    dict(
                        r,
                        dataset=ds,
                        model=m["label"],
                        margin=float(r["margin_pp"]),
                        speedup=float(r["speedup"]),
                        speedup_v=float(r["speedup_v"]),
                        nwc_v=float(r["nwc_v"]),
                    )
                )
    if not cells:
        return "Not run yet: `make reproduce-mnist` and `make reproduce-fashion-mnist`."
    datasets = list(dict.fromkeys(c["dataset"] for c in cells))
    at = [c for c in cells if c["margin"] == 0.5]
    first, rest = datasets[0], datasets[1:]

    def verified(methods, ds):
        return [
            100 / c["speedup_v"]
            for c in at
            if c["dataset"] == ds and c["method"] in methods and c["speedup_v"] > 0
        ]

    lines = [
        f"- At a 0.5 pp margin on {first}, the curvature-based orders (SWIM, U-SWIM, "
        f"the expected-loss scores with the one-pass, GGN and Fisher diagonals) "
        f"verify {_span(verified(CURVATURE, first), '.1f', ' %')} of the weights "
        f"(lowest at the lowest noise), magnitude and random "
        f"{_span(verified(('magnitude', 'random'), first), '.0f', ' %')}."
    ]
    for ds in rest:
        hard = [
            c["speedup"]
            for c in at
            if c["dataset"] == ds
            and c["setting"] in ("uniform sigma=0.2", "uniform sigma=0.3")
        ]
        lines[-1] += (
            f" On {ds} the unverified chip loses far more accuracy "
            f"({_span(none03.get(ds, [0]), '.0f', ' %')} at sigma = 0.3 against "
            f"{_span(clean[ds], '.0f', ' %')} clean), and the best order reaches "
            f"only {max(hard):.1f}x at sigma = 0.2–0.3 under uniform variation."
        )
    pairs = {}
    for c in cells:
        if c["method"] in ("swim", "uswim"):
            pairs.setdefault((c["dataset"], c["model"], c["setting"], c["margin"]), {})[
                c["method"]
            ] = c["nwc_v"]
    ratio = {
        k: v["swim"] / v["uswim"]
        for k, v in pairs.items()
        if len(v) == 2 and v["uswim"] > 0
    }
    by_s = {}
    for k, v in ratio.items():
        by_s.setdefault(k[2].split()[1], []).append(v)
    lines.append(
        f"- U-SWIM over SWIM in verify cycles, across {len(datasets)} datasets, "
        "every model and the 0.1/0.5/1 pp margins: "
        + _span(ratio.values(), ".1f", "x")
        + " ("
        + ", ".join(f"{s}: " + _span(v, ".1f", "x") for s, v in by_s.items())
        + "); "
        + f"U-SWIM ties or beats SWIM in {sum(v >= 1 for v in ratio.values())} of "
        f"{len(ratio)}."
    )
    groups = {}  # (dataset, model, setting) -> {method: speedup at 0.5 pp}
    for c in at:
        groups.setdefault((c["dataset"], c["model"], c["setting"]), {})[c["method"]] = (
            c["speedup"]
        )
    lead = _count(
        m for sp in groups.values() for m, v in sp.items() if v == max(sp.values())
    )
    n = len(groups)
    behind = [
        f"{ds} {model} {setting}: {sp['eloss-obd']:.2f}x against {sp['uswim']:.2f}x"
        for (ds, model, setting), sp in groups.items()
        if "eloss-obd" in sp and "uswim" in sp and sp["eloss-obd"] < sp["uswim"]
    ]
    h = [c["speedup"] for c in at if c["method"] == "eloss-hutchinson"]
    others = [c["speedup"] for c in at if c["method"] in CURVATURE]
    lines.append(
        f"- The best order at 0.5 pp (of {n} model and setting cells, ties counted "
        "for each): "
        + ", ".join(f"{m} {k}" for m, k in lead)
        + ". The expected-loss score with the one-pass diagonal is behind U-SWIM in "
        + (f"{len(behind)} cells ({'; '.join(behind)})" if behind else "no cell")
        + ". Hutchinson's estimate with "
        + ", ".join(f"{p} probes on {w:,} weights" for w, p in hutch.items())
        + f" reaches a median {statistics.median(h):.1f}x over these cells, the "
        f"other curvature orders {statistics.median(others):.1f}x (its noise: next "
        "section)."
    )
    return "\n".join(lines)


def _verified_pct(row: dict, margin: str = "0.5pp") -> str | None:
    """The share of the weights a method verifies to come within ``margin``
    (``NWC-v``), or ``None`` where no budget point reaches it."""
    try:
        return f"{100 * float(row[f'NWC-v@{margin}']):.0f} %"
    except ValueError:  # "-"
        return None


def deep_motivation(folder: Path = ROOT / "results" / "ablations") -> str:
    """The ablations' numbers that motivate the deep study
    (``docs/studies.md``): the narrow ResNet-18 at uniform sigma = 0.3, its
    accuracy unverified and SWIM's verified share at 0.5 pp, beside LeNet's."""
    missing = _not_run(folder, "make ablations")
    if missing:
        return missing
    rows = {
        r["variant"]: r
        for r in _read_csv(folder / "ablations.csv")
        if r["setting"] == "uniform sigma=0.3" and r["method"] == "swim"
    }
    resnet, lenet = rows.get("resnet-avg-pool-exact"), rows.get("base")
    if resnet is None or lenet is None:
        return f"Not in `results/{folder.name}/`: rerun `make ablations`."
    width = resnet["model"].split()[-1]
    r, le = _verified_pct(resnet), _verified_pct(lenet)
    return (
        f"In the ablations (`make ablations`), the width-{width} ResNet-18 at "
        f"sigma = 0.3 keeps {float(resnet['none_verified']):.1f} % accuracy "
        f"unverified ({float(resnet['exhaustive']):.1f} % with every weight "
        "verified), and SWIM "
        + (
            f"verifies {r} of the weights to come"
            if r
            else "does not come, at any budget point,"
        )
        + " within 0.5 pp of exhaustive write-verify. LeNet at the same sigma "
        + (f"needs {le}." if le else "does not reach it either.")
    )


SECTIONS = {
    "per-chip-reading": per_chip_reading,
    "deep-reading": deep_reading,
    "vit-reading": vit_reading,
    "uswim-scan-reading": scan_reading,
    "devices-reading": devices_reading,
    "papers-reading": papers_reading,
    "deep-motivation": deep_motivation,
}
