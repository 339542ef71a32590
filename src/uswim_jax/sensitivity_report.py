"""Compare sensitivity estimators: rank correlation and top-k overlap.

Not part of the core: it works on host NumPy arrays, writes files and imports
matplotlib lazily. Given scores from several estimators (one pytree like the params
each), it compares every pair on the crossbar leaves, per layer and overall:

- Spearman's rank correlation (average ranks for ties);
- top-k overlap ``|top_k(a) & top_k(b)| / k`` for ``k`` = 1, 5, 10, 20 % of the
  weights (top-k taken by descending score, ties kept in index order, as
  :func:`uswim_jax.global_order`).

:func:`write_sensitivity_report` writes ``sensitivity_comparison.csv``,
``sensitivity_comparison.md`` and ``sensitivity_histograms.png``.
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


def _histograms(arrays: dict[str, np.ndarray], path: str, bins: int) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is an optional extra
        return None
    fig, axes = plt.subplots(
        len(arrays), 1, figsize=(6, 2.2 * len(arrays)), squeeze=False
    )
    for ax, (name, x) in zip(axes[:, 0], arrays.items(), strict=True):
        mag = np.abs(x[np.isfinite(x)])
        pos = mag[mag > 0]
        if pos.size:
            ax.hist(np.log10(pos), bins=bins)
        ax.set_title(f"{name}  ({mag.size - pos.size} zeros)", fontsize=9)
        ax.set_xlabel("log10 |score|")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
    png = _histograms(
        overall_arrays, os.path.join(outdir, "sensitivity_histograms.png"), bins
    )
    if png is not None:
        paths["histogram"] = png
    return paths
