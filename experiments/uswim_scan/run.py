"""The U-SWIM over SWIM scan (docs/studies.md, part 4): the float LeNet on each
dataset, one run folder per sigma (``workdir/<dataset>/sigma-<sigma>``, every s
of the scan in it, SWIM and U-SWIM), the runs of a dataset sharing one trained
model and its sensitivities (``experiments._studies.run_grid``).

The report (``scan.md``, ``scan.csv``, ``scan.png``) gives U-SWIM/SWIM, the
ratio of SWIM's normalized write cycles to U-SWIM's at each margin, on two
bases: NWC (plain writes of unverified weights counted, so each method costs at
least 1 / verify_cycles and the ratio is at most verify_cycles / 1) and NWC-v
(verified devices only, no floor), each with the range the two methods' 95 %
ranges give (:func:`experiments._studies.ratio_range`); and, per dataset,
basis and margin, the mildest setting (smallest s, then smallest sigma) at
which U-SWIM/SWIM reaches 7x, or that none does.
"""

import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from experiments._studies import finish, ratio_range, run_grid
from experiments.uswim_scan.configs.default import ScanConfig
from uswim_jax import data
from uswim_jax.experiment import Setting
from uswim_jax.stats import MARGINS, mean_ci95

REPORT_FILES = ("scan.md", "scan.csv", "scan.png", "manifest.json")
#: The claim under test: U-SWIM needs 7x fewer write cycles than SWIM.
CLAIM = 7.0
BASES = ("nwc", "nwc_v")
COLUMNS = (
    "dataset",
    "sigma",
    "s",
    "margin_pp",
    "basis",
    "swim",
    "swim_low",
    "swim_high",
    "uswim",
    "uswim_low",
    "uswim_high",
    "ratio",
    "ratio_low",
    "ratio_high",
    "none_verified",
    "exhaustive",
)


def scan_rows(config: ScanConfig, outs: dict[tuple[str, str], dict]) -> list[dict]:
    """One row per (dataset, sigma, s, margin, basis) that ran."""
    rows = []
    for group, name, cfg in config.runs():
        out = outs.get((group, name))
        if out is None:
            continue
        for s in cfg.s_values:
            setting = Setting(cfg.s_sigma, s, cfg.verified_ratio).name
            sw, us = out["curves"][(setting, "swim")], out["curves"][(setting, "uswim")]
            none = mean_ci95(100.0 * np.asarray(sw.baseline, np.float64))[0]
            full = mean_ci95(100.0 * np.asarray(sw.reference, np.float64))[0]
            for g in MARGINS:
                for basis in BASES:
                    v = basis == "nwc_v"
                    a = tuple(map(float, sw.cycles_to_target(g, verified_only=v)))
                    b = tuple(map(float, us.cycles_to_target(g, verified_only=v)))
                    r = ratio_range(a, b)
                    rows.append(
                        {
                            "dataset": out["dataset"],
                            "sigma": float(cfg.s_sigma),
                            "s": float(s),
                            "margin_pp": g,
                            "basis": basis,
                            "swim": a[0],
                            "swim_low": a[1],
                            "swim_high": a[2],
                            "uswim": b[0],
                            "uswim_low": b[1],
                            "uswim_high": b[2],
                            "ratio": r[0],
                            "ratio_low": r[1],
                            "ratio_high": r[2],
                            "none_verified": float(none),
                            "exhaustive": float(full),
                        }
                    )
    return rows


def mildest(
    rows: list[dict], threshold: float = CLAIM
) -> dict[tuple[str, str, float], dict | None]:
    """Per (dataset, basis, margin): the row of the mildest setting (smallest
    s, then smallest sigma) whose U-SWIM/SWIM point estimate is at least
    ``threshold``, or None when no setting reaches it."""
    out: dict[tuple[str, str, float], dict | None] = {}
    for r in sorted(rows, key=lambda r: (r["s"], r["sigma"])):
        key = (r["dataset"], r["basis"], r["margin_pp"])
        out.setdefault(key, None)
        if out[key] is None and r["ratio"] >= threshold:
            out[key] = r
    return out


def _num(v: float) -> float:
    """NaN (0 / 0) sorts below every ratio."""
    return -math.inf if math.isnan(v) else v


def _x(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    return "∞" if math.isinf(v) else f"{v:.2f}x"


def _cell(r: dict) -> str:
    return f"{_x(r['ratio'])} [{_x(r['ratio_low'])}, {_x(r['ratio_high'])}]"


def _where(r: dict) -> str:
    return f"s={r['s']:g}, sigma={r['sigma']:g}"


def verdict_lines(rows: list[dict], threshold: float = CLAIM) -> list[str]:
    """The answer, one line per dataset and basis: the mildest setting at
    which U-SWIM/SWIM reaches ``threshold`` at each margin, or that none
    does, with the largest ratio seen."""
    first = mildest(rows, threshold)
    lines = []
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    for ds in datasets:
        for basis in BASES:
            mine = [r for r in rows if r["dataset"] == ds and r["basis"] == basis]
            if not mine:
                continue
            parts = []
            for g in MARGINS:
                at = [r for r in mine if r["margin_pp"] == g]
                best = max(at, key=lambda r: (_num(r["ratio"]), -r["s"]))
                hit = first[(ds, basis, g)]
                if hit is None:
                    parts.append(
                        f"at {g:g} pp no setting reaches {threshold:g}x (largest "
                        f"{_cell(best)} at {_where(best)})"
                    )
                else:
                    sure = (
                        " (its range's low end too)"
                        if hit["ratio_low"] >= threshold
                        else ""
                    )
                    parts.append(
                        f"at {g:g} pp the mildest is {_where(hit)}: {_cell(hit)}{sure}"
                    )
            label = "NWC" if basis == "nwc" else "NWC-v (verified devices only)"
            lines.append(f"- **{ds}**, {label}: " + "; ".join(parts) + ".")
    return lines


def claim_line(rows: list[dict], threshold: float = CLAIM) -> str:
    """One sentence: does any setting of the scan reach ``threshold`` (on
    either basis, at any margin), and the largest U-SWIM/SWIM seen."""
    best = max(rows, key=lambda r: _num(r["ratio"]))
    where = (
        f"{_cell(best)} on {'NWC' if best['basis'] == 'nwc' else 'NWC-v'} at "
        f"{best['margin_pp']:g} pp, {best['dataset']}, {_where(best)}"
    )
    hits = [r for r in rows if r["ratio"] >= threshold]
    if not hits:
        return (
            f"No setting of the scan gives U-SWIM {threshold:g}x over SWIM (the "
            f"U-SWIM abstract's claim is not reproduced here): the largest ratio "
            f"is {where}."
        )
    return (
        f"{len(hits)} of {len(rows)} (setting, margin, basis) cells reach "
        f"{threshold:g}x; the largest ratio is {where}."
    )


def scan_markdown(config: ScanConfig, rows: list[dict], outs: dict) -> str:
    first = next(iter(outs.values()))
    cfg0 = config.runs()[0][2]
    lines = [
        "# U-SWIM over SWIM: a scan of the non-uniformity s and the noise sigma",
        "",
        f"- model: {first['model']} ({first['num_weights']:,} crossbar weights), "
        "one trained model per dataset shared by every setting; datasets: "
        + ", ".join(
            f"**{o['dataset']}** (clean accuracy {100 * o['clean_accuracy']:.2f}% "
            f"on {o['num_test']} test images)"
            for (g, n), o in outs.items()
            if n == config.runs()[0][1]
        ),
        f"- settings: U-SWIM's state-dependent variation at s in "
        f"{{{', '.join(f'{s:g}' for s in config.s_values)}}} x sigma in "
        f"{{{', '.join(f'{s:g}' for s in config.sigmas)}}}, sigma_verified = "
        f"{cfg0.verified_ratio:g} sigma, a write-verify costs "
        f"{cfg0.verify_cycles:g} cycles; {cfg0.num_trials} Monte Carlo trials "
        f"per point, budget points at "
        f"{', '.join(f'{100 * f:g}%' for f in cfg0.fractions)} verified (every "
        "run's own report, with its choices line, is in its folder)",
        "- U-SWIM/SWIM = SWIM's cycles to target / U-SWIM's, at a margin (pp "
        "below exhaustive write-verify). NWC counts the plain writes of "
        "unverified weights, so it is at least 1 / verify_cycles for either "
        f"method and the ratio at most {cfg0.verify_cycles:g}x; NWC-v counts "
        "verified devices only. In brackets: the range from the two methods' "
        "95 % ranges (conservative: it ignores that the trials are paired); n/a "
        "where both need nothing verified, ∞ where only U-SWIM does.",
        "",
        f"## Does U-SWIM/SWIM reach {CLAIM:g}x (the U-SWIM abstract's claim)?",
        "",
        claim_line(rows),
        "",
        *verdict_lines(rows),
        "",
    ]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        for basis in BASES:
            mine = [r for r in rows if r["dataset"] == ds and r["basis"] == basis]
            head = ["sigma", "s", "none %", "exhaustive %"] + [
                f"{g:g} pp" for g in MARGINS
            ]
            lines += [
                f"## {ds}: U-SWIM/SWIM on {'NWC' if basis == 'nwc' else 'NWC-v'}",
                "",
                "| " + " | ".join(head) + " |",
                "|" + "---:|" * len(head),
            ]
            keys = dict.fromkeys((r["sigma"], r["s"]) for r in mine)
            for sigma, s in keys:
                at = {
                    r["margin_pp"]: r
                    for r in mine
                    if (r["sigma"], r["s"]) == (sigma, s)
                }
                r0 = at[MARGINS[0]]
                lines.append(
                    f"| {sigma:g} | {s:g} | {r0['none_verified']:.2f} | "
                    f"{r0['exhaustive']:.2f} | "
                    + " | ".join(_cell(at[g]) for g in MARGINS)
                    + " |"
                )
            lines.append("")
    return "\n".join(lines)


def _fmt(v) -> str:
    # repr: the shortest text that reads back as the same float
    return repr(float(v)) if isinstance(v, float) else str(v)


def scan_csv(rows: list[dict]) -> str:
    out = [",".join(COLUMNS)]
    out += [",".join(_fmt(r[c]) for c in COLUMNS) for r in rows]
    return "\n".join(out) + "\n"


def plot_scan(rows: list[dict], path: Path, margin: float = 0.5) -> None:
    """U-SWIM/SWIM against s at ``margin``, one line per sigma; a panel per
    dataset (columns) and basis (rows); the claim's 7x dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(
        2, len(datasets), figsize=(4 * len(datasets), 6), squeeze=False, dpi=80
    )
    for j, ds in enumerate(datasets):
        for i, basis in enumerate(BASES):
            ax = axes[i][j]
            mine = [
                r
                for r in rows
                if r["dataset"] == ds
                and r["basis"] == basis
                and r["margin_pp"] == margin
            ]
            for sigma in dict.fromkeys(r["sigma"] for r in mine):
                pts = sorted((r["s"], r["ratio"]) for r in mine if r["sigma"] == sigma)
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"sigma {sigma:g}")
            ax.axhline(CLAIM, ls="--", c="gray", lw=1)
            ax.set_xscale("log")
            ticks = sorted({r["s"] for r in mine})
            ax.set_xticks(ticks, labels=[f"{s:g}" for s in ticks])
            ax.minorticks_off()
            ax.set_title(f"{ds}, {'NWC' if basis == 'nwc' else 'NWC-v'}", fontsize=9)
            ax.set_xlabel("s")
            ax.set_ylabel(f"U-SWIM/SWIM at {margin:g} pp")
            ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def run(
    config: ScanConfig,
    workdir: str | os.PathLike,
    *,
    results_dir: str | os.PathLike | None = None,
    datasets: dict[str, tuple[data.Dataset, data.Dataset]] | None = None,
    progress: bool = True,
    log=print,
) -> dict:
    """Runs (or resumes) every run of the scan under ``workdir`` and writes the
    scan report there (and a copy, with every run's report, to
    ``results_dir``). ``datasets``: ``{name: (train, test)}`` instead of
    loading. Returns ``{"outs", "rows", "summary"}``."""
    start = time.perf_counter()
    workdir = Path(workdir)
    outs = run_grid(
        config.runs(),
        workdir,
        results_dir=results_dir,
        datasets=datasets,
        progress=progress,
        log=log,
    )
    rows = scan_rows(config, outs)
    scan_png = workdir / "scan.png"
    plot_scan(rows, scan_png)
    text = finish(
        workdir,
        config.runs(),
        outs,
        start,
        {"scan.md": scan_markdown(config, rows, outs), "scan.csv": scan_csv(rows)},
        results_dir=results_dir,
    )
    if results_dir is not None:
        shutil.copyfile(scan_png, Path(results_dir) / "scan.png")
    return {"outs": outs, "rows": rows, "summary": text}
