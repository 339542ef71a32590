"""Compare sensitivity estimators: rank correlation and top-k overlap.

Not part of the core: it works on host NumPy arrays, writes files and imports
matplotlib lazily. Given scores from several estimators (one pytree like the params
each), it compares every pair on the crossbar leaves, per layer and overall:

- Spearman's rank correlation (average ranks for ties);
- top-k overlap ``|top_k(a) & top_k(b)| / k`` for ``k`` = 1, 5, 10, 20 % of the
  weights (top-k taken by descending score, ties kept in index order, as
  :func:`uswim_jax.global_order`).

:func:`write_sensitivity_report` writes ``sensitivity_comparison.csv``,
``sensitivity_comparison.md`` and ``sensitivity_histograms.png`` (a histogram of
each estimator's scores on a shared log axis with its exact zeros counted, and
per-weight log-log hexbins of the one-pass diagonal, the GGN and Hutchinson
against each other with their Spearman).
"""

import csv
import itertools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from uswim_jax._tree import CrossbarPredicate, check_crossbar, crossbar_flags, path_str

DEFAULT_FRACTIONS = (0.01, 0.05, 0.1, 0.2)


def crossbar_arrays(
    scores: Any, predicate: CrossbarPredicate | None = None
) -> dict[str, np.ndarray]:
    """``{layer path: raveled float64 scores}`` for the crossbar leaves."""
    flags = jax.tree_util.tree_leaves(crossbar_flags(scores, predicate))
    out = {}
    for (path, leaf), f in zip(
        jax.tree_util.tree_leaves_with_path(scores), flags, strict=True
    ):
        if f:
            out[path_str(path)] = np.asarray(leaf, dtype=np.float64).ravel()
    return out


def _rankdata(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    ranks = np.empty(len(a), dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_a)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(a)]])
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = 0.5 * (s + e - 1) + 1.0
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (NaN if either input is constant)."""
    ra, rb = _rankdata(np.asarray(a)), _rankdata(np.asarray(b))
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / denom) if denom > 0 else float("nan")


def _top(a: np.ndarray, k: int) -> np.ndarray:
    key = np.where(np.isnan(a), np.inf, -a)
    return np.argsort(key, kind="stable")[:k]


def topk_overlap(a: np.ndarray, b: np.ndarray, fraction: float) -> float:
    """``|top_k(a) & top_k(b)| / k`` with ``k = max(1, round(fraction * n))``."""
    n = len(a)
    k = max(1, int(round(fraction * n)))
    return len(np.intersect1d(_top(a, k), _top(b, k))) / k


def compare_estimators(
    scores: Mapping[str, Any],
    params: Any,
    *,
    predicate: CrossbarPredicate | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> list[dict[str, Any]]:
    """Spearman and top-k overlap for every pair of estimators.

    Args:
      scores: ``{estimator name: scores pytree like params}``; at least two.
      params: the params, which fix the crossbar leaves and their order.
      predicate: crossbar predicate (default: conv and dense kernels).
      fractions: the ``k`` of the top-k overlaps, as fractions of the weights.

    Returns:
      One row per (pair, layer) plus one per pair with layer ``"overall"`` (all
      crossbar weights concatenated): keys ``a``, ``b``, ``layer``, ``n``,
      ``spearman`` and ``top{100*f:g}%`` per fraction.

    Raises:
      ValueError: with fewer than two estimators, mismatched leaves, or params
        with no crossbar leaf.
    """
    if len(scores) < 2:
        raise ValueError("scores must hold at least two estimators")
    check_crossbar("params", params, predicate)
    layers = list(crossbar_arrays(params, predicate))
    arrays = {}
    for name, tree in scores.items():
        arr = crossbar_arrays(tree, predicate)
        if list(arr) != layers:
            raise ValueError(
                f"scores[{name!r}] crossbar leaves {list(arr)} do not match the "
                f"params' {layers}"
            )
        arrays[name] = arr
    rows = []
    for a, b in itertools.combinations(scores, 2):
        for layer in [*layers, "overall"]:
            if layer == "overall":
                xa = np.concatenate([arrays[a][k] for k in layers])
                xb = np.concatenate([arrays[b][k] for k in layers])
            else:
                xa, xb = arrays[a][layer], arrays[b][layer]
            row: dict[str, Any] = {
                "a": a,
                "b": b,
                "layer": layer,
                "n": len(xa),
                "spearman": spearman(xa, xb),
            }
            for f in fractions:
                row[f"top{100 * f:g}%"] = topk_overlap(xa, xb, f)
            rows.append(row)
    return rows


def _markdown(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: Estimators the scatter panels compare, when present (else the first three).
SCATTER_ESTIMATORS = ("obd", "ggn", "hutchinson")

_LABELS = {"obd": "one-pass (obd)"}


def _label(name: str) -> str:
    return _LABELS.get(name, name)


def _overall_spearman(rows: list[dict[str, Any]], a: str, b: str) -> float:
    for r in rows:
        if r["layer"] == "overall" and {r["a"], r["b"]} == {a, b}:
            return r["spearman"]
    raise KeyError((a, b))


def _plot(
    arrays: dict[str, np.ndarray], rows: list[dict[str, Any]], path: str, bins: int
) -> str | None:
    """Writes :func:`_figure` to ``path``; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is an optional extra
        return None
    fig = _figure(arrays, rows, bins)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _figure(arrays: dict[str, np.ndarray], rows: list[dict[str, Any]], bins: int):
    """Histograms of log10 |score| per estimator on one shared x range, with
    the exact zeros counted in the titles, and log-log hexbins of the
    estimators of :data:`SCATTER_ESTIMATORS` against each other with the
    overall Spearman of ``rows`` on each."""
    import matplotlib.pyplot as plt

    names = list(arrays)
    n = len(next(iter(arrays.values())))
    logs = {}
    for name, x in arrays.items():
        mag = np.abs(x[np.isfinite(x)])
        logs[name] = np.log10(mag[mag > 0])
    nonempty = [v for v in logs.values() if v.size]
    lo = min(v.min() for v in nonempty) if nonempty else -1.0
    hi = max(v.max() for v in nonempty) if nonempty else 1.0
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    picked = [e for e in SCATTER_ESTIMATORS if e in arrays]
    if len(picked) < 2:
        picked = names[:3]
    pairs = list(itertools.combinations(picked, 2))
    ncol = max(len(names), len(pairs))
    fig = plt.figure(figsize=(4.2 * ncol, 9.0), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=(1, 1.3))
    hist_axes = top.subplots(1, len(names), sharex=True, squeeze=False)[0]
    for ax, name in zip(hist_axes, names, strict=True):
        x = arrays[name]
        zeros = int(np.sum(x == 0))
        neg = int(np.sum(x < 0))
        ax.hist(logs[name], bins=edges, color="C0")
        title = f"{_label(name)}\n{zeros:,} exact zeros ({100 * zeros / n:.1f} %)"
        if neg:
            title += f", {neg:,} negative"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("log10 |score| (zeros left out)", fontsize=8)
        ax.tick_params(labelsize=7)
    hist_axes[0].set_ylabel("weights", fontsize=8)
    all_zero = np.logical_and.reduce([arrays[k] == 0 for k in names])
    head = f"Per-weight scores of {n:,} crossbar weights (x range shared)."
    if all_zero.any():
        head += (
            f" {int(all_zero.sum()):,} are exactly 0 under every estimator:\nthe "
            "loss does not depend on them on the images used (an input that is "
            "always 0, or a unit that never activates), so no estimator can rank "
            "them"
        )
    top.suptitle(head, fontsize=10)
    scatter_axes = bottom.subplots(1, max(len(pairs), 1), squeeze=False)[0]
    for ax, (a, b) in zip(scatter_axes, pairs, strict=False):
        xa, xb = np.abs(arrays[a]), np.abs(arrays[b])
        ok = np.isfinite(xa) & np.isfinite(xb) & (xa > 0) & (xb > 0)
        if ok.any():
            la, lb = np.log10(xa[ok]), np.log10(xb[ok])
            hb = ax.hexbin(la, lb, gridsize=50, bins="log", cmap="viridis", mincnt=1)
            lim = (min(la.min(), lb.min()), max(la.max(), lb.max()))
            ax.plot(lim, lim, color="r", lw=0.8, ls="--", label="equal")
            cb = bottom.colorbar(hb, ax=ax)
            cb.set_label("weights per cell", fontsize=8)
            cb.ax.tick_params(labelsize=7)
        rho = _overall_spearman(rows, a, b)
        ax.text(
            0.03,
            0.97,
            f"Spearman {rho:.3f} (all {n:,} weights, as the table)\n"
            f"shown: {int(ok.sum()):,} nonzero in both",
            transform=ax.transAxes,
            va="top",
            fontsize=9,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"},
        )
        ax.set_xlabel(f"log10 |{_label(a)}|", fontsize=8)
        ax.set_ylabel(f"log10 |{_label(b)}|", fontsize=8)
        ax.set_title(f"{_label(a)} vs {_label(b)}", fontsize=9)
        ax.tick_params(labelsize=7)
    bottom.suptitle("Per weight, log-log; dashed: equal scores", fontsize=10)
    return fig


def write_sensitivity_report(
    scores: Mapping[str, Any],
    params: Any,
    outdir: str | os.PathLike,
    *,
    predicate: CrossbarPredicate | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    bins: int = 50,
) -> dict[str, str]:
    """Writes the estimator comparison into ``outdir``.

    Args:
      scores: ``{estimator name: scores pytree like params}``.
      params: the params.
      outdir: output folder (created if missing).
      predicate: crossbar predicate.
      fractions: top-k fractions.
      bins: histogram bins.

    Returns:
      ``{"csv": path, "markdown": path, "histogram": path}`` (no ``histogram`` key
      when matplotlib is missing).

    Raises:
      ValueError: as :func:`compare_estimators`.
    """
    rows = compare_estimators(scores, params, predicate=predicate, fractions=fractions)
    os.makedirs(outdir, exist_ok=True)
    paths = {}
    csv_path = os.path.join(outdir, "sensitivity_comparison.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths["csv"] = csv_path
    md_path = os.path.join(outdir, "sensitivity_comparison.md")
    overall = [r for r in rows if r["layer"] == "overall"]
    with open(md_path, "w") as f:
        f.write("# Sensitivity estimators compared\n\n## Overall\n\n")
        f.write(_markdown(overall))
        f.write("\n## Per layer\n\n")
        f.write(_markdown(rows))
    paths["markdown"] = md_path
    overall_arrays = {
        name: np.concatenate(list(crossbar_arrays(tree, predicate).values()))
        for name, tree in scores.items()
    }
    png = _plot(
        overall_arrays, rows, os.path.join(outdir, "sensitivity_histograms.png"), bins
    )
    if png is not None:
        paths["histogram"] = png
    return paths
