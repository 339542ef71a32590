"""The deep-network study (docs/studies.md, part 2), and the report that the
transformer study (``experiments/vit``) shares: one run folder per dataset
(``workdir/<dataset>/run``, the pipeline's own report in it), then

- ``study.md``: per dataset, the speedup table (every setting, every method,
  at 0.5 pp), where the verified budget goes (per layer group, the share of the
  verified weights at each method's 0.5 pp target) and how well the one-pass
  diagonal ranks the weights against the exact GGN diagonal per layer
  (Spearman, top-k overlap; :func:`uswim_jax.sensitivity_report.compare_estimators`);
- ``budget.csv``: the per-layer verified counts behind the budget table
  (:func:`uswim_jax.experiment.budget.layer_budget`);
- ``diagonal.csv``: the estimator comparison rows, per layer and overall.

The one-pass diagonal is compared twice: as the run uses it (over
``curvature_subset`` training images) and recomputed over the GGN's own
``estimator_subset`` images, so that the second comparison measures the
approximation alone, not the different images.
"""

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from experiments._studies import finish, pad_to, run_grid
from experiments.common import csv_text
from experiments.deep.configs.default import StudyConfig
from uswim_jax import curvature, data
from uswim_jax.experiment import method_order, sensitivity_sizes
from uswim_jax.experiment.budget import group_budget, layer_budget
from uswim_jax.experiment.config import _methods_for
from uswim_jax.sensitivity_report import compare_estimators

REPORT_FILES = ("study.md", "budget.csv", "diagonal.csv", "manifest.json")
#: The margin (pp below exhaustive) at which the budget is broken down.
BUDGET_MARGIN = 0.5
#: Top-k fractions of the diagonal comparison.
TOPK = (0.01, 0.05, 0.1, 0.2)
#: The estimator names of the diagonal comparison.
OBD, OBD_SAME, GGN = "one-pass", "one-pass (GGN's images)", "GGN"


#: The layer groups of :func:`resnet_group`, in the order the report lists them.
RESNET_GROUPS = (
    "stem",
    "stage 1",
    "stage 2",
    "stage 3",
    "stage 4",
    "shortcuts (1x1)",
    "head",
)


def resnet_group(path: str) -> str:
    """The layer group of a ResNet-18 crossbar layer: the stem conv, the four
    stages' 3x3 convs (two basic blocks each), the 1x1 shortcut convs, the
    dense head."""
    m = re.search(r"BasicBlock_(\d+)/Conv_(\d+)", path)
    if m:
        if m.group(2) == "2":
            return "shortcuts (1x1)"
        return f"stage {int(m.group(1)) // 2 + 1}"
    if "Dense" in path:
        return "head"
    return "stem"


def _short(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("params", "kernel")]
    return "/".join(parts) or path


def budget_rows(out: dict, cfg, group: Callable[[str], str]) -> list[dict]:
    """Per (setting, method) and crossbar layer: the verified weights at the
    method's :data:`BUDGET_MARGIN` target (its NWC-v there, which is the
    verified fraction under Gaussian programming)."""
    params, sens = out["params"], out["sensitivities"]
    rows = []
    for s in cfg.settings():
        for m in _methods_for(s, cfg.methods):
            curve = out["curves"][(s.name, m)]
            f = curve.cycles_to_target(BUDGET_MARGIN, verified_only=True).value
            order = method_order(
                m,
                params,
                sens,
                s,
                s.device(cfg.verify_cycles),
                cfg.seed,
                first_order=cfg.first_order,
                k_power=cfg.k_power,
            )
            n = int(np.asarray(order).shape[0])
            count = int(round(min(f, 1.0) * n))
            per_layer = layer_budget(order, params, count)
            for layer, (v, size) in per_layer.items():
                rows.append(
                    {
                        "dataset": out["dataset"],
                        "setting": s.name,
                        "method": m,
                        "budget_fraction": count / n,
                        "layer": _short(layer),
                        "group": group(layer),
                        "size": size,
                        "verified": v,
                        "share": v / count if count else 0.0,
                        "coverage": v / size,
                    }
                )
    return rows


def diagonal_rows(out: dict, cfg, train_data: data.Dataset, log=print) -> list[dict]:
    """The one-pass diagonal (as the run computed it, and over the GGN's
    images) against the exact GGN diagonal, per layer and overall."""
    sens = out["sensitivities"]
    if "ggn" not in sens:
        return []
    _, m = sensitivity_sizes(cfg, len(train_data))
    t0 = time.perf_counter()
    same, _ = curvature.obd_over_dataset(
        out["apply_fn"],
        out["params"],
        train_data.images[:m],
        train_data.labels[:m],
        avg_pool=cfg.avg_pool,
        q_scale=cfg.q_scale,
    )
    log(
        f"  one-pass diagonal over the GGN's {m} images: "
        f"{time.perf_counter() - t0:.1f} s"
    )
    rows = compare_estimators(
        {OBD: sens["obd"], OBD_SAME: same, GGN: sens["ggn"]},
        out["params"],
        fractions=TOPK,
    )
    return [{"dataset": out["dataset"], **r, "layer": _short(r["layer"])} for r in rows]


def _budget_table(rows: list[dict], order: tuple[str, ...] = ()) -> list[str]:
    groups = sorted(
        dict.fromkeys(r["group"] for r in rows),
        key=lambda g: order.index(g) if g in order else len(order),
    )
    first = (rows[0]["setting"], rows[0]["method"])
    sizes = {g: 0 for g in groups}
    for r in rows:
        if (r["setting"], r["method"]) == first:
            sizes[r["group"]] += r["size"]
    total = sum(sizes.values())
    lines = [
        "| setting | method | verified % | " + " | ".join(groups) + " |",
        "|---|---|---:|" + "---:|" * len(groups),
        "| (share of the weights) | | | "
        + " | ".join(f"{100 * sizes[g] / total:.1f}" for g in groups)
        + " |",
    ]
    for key in dict.fromkeys((r["setting"], r["method"]) for r in rows):
        mine = [r for r in rows if (r["setting"], r["method"]) == key]
        got = group_budget(
            {r["layer"]: (r["verified"], r["size"]) for r in mine},
            {r["layer"]: r["group"] for r in mine}.__getitem__,
        )
        count = sum(v for v, _ in got.values())
        cells = [f"{100 * got[g][0] / count:.1f}" if count else "-" for g in groups]
        lines.append(
            f"| {key[0]} | {key[1]} | {100 * mine[0]['budget_fraction']:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _diagonal_table(rows: list[dict]) -> list[str]:
    pairs = [(OBD_SAME, GGN), (OBD, GGN)]
    tops = [k for k in rows[0] if k.startswith("top")]
    head = ["layer", "weights"] + [
        f"{c} {'same images' if a == OBD_SAME else 'as run'}"
        for a, _ in pairs
        for c in ("Spearman", *(f"{k[3:]} top-k" for k in tops))
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    by = {(r["a"], r["b"], r["layer"]): r for r in rows}
    for layer in dict.fromkeys(r["layer"] for r in rows):
        cells = [layer]
        for i, (a, b) in enumerate(pairs):
            r = by[(a, b, layer)]
            if i == 0:
                cells.append(f"{r['n']:,}")
            cells.append(f"{r['spearman']:.3f}")
            cells += [f"{r[k]:.2f}" for k in tops]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def comparison_lines(out: dict, margin: float = BUDGET_MARGIN) -> list[str]:
    """Per setting, at ``margin``: the method that needs the fewest write
    cycles (NWC), and whether SWIM (and U-SWIM, under state-dependent
    variation) needs fewer than magnitude and random."""
    nwc: dict[str, dict[str, float]] = {}
    for (setting, method), curve in out["curves"].items():
        nwc.setdefault(setting, {})[method] = curve.cycles_to_target(margin).value
    lines = []
    for setting in out["settings"]:
        got = nwc.get(setting, {})
        if not got:
            continue
        best = min(got, key=got.get)
        parts = [f"fewest cycles: {best} (NWC {got[best]:.3f})"]
        for m in ("swim", "uswim"):
            if m not in got:
                continue
            for other in ("magnitude", "random"):
                if other in got:
                    word = "fewer" if got[m] < got[other] else "not fewer"
                    parts.append(
                        f"{m} {word} than {other} ({got[m]:.3f} vs {got[other]:.3f})"
                    )
        lines.append(f"- {setting}: " + "; ".join(parts))
    return lines


def _speedup_table(folder: Path, label: str) -> list[str]:
    from experiments.readme import _model_table

    return _model_table(folder, label)


def study_markdown(
    title: str,
    outs: dict,
    workdir: Path,
    budget: list[dict],
    diagonal: list[dict],
    configs: dict,
    order: tuple[str, ...] = (),
) -> str:
    lines = [f"# {title}", ""]
    for (group, name), out in outs.items():
        cfg = configs[(group, name)]
        t = cfg.train
        label = f"{t.model}" + (f" (width {t.width})" if t.width else "")
        lines += [
            f"## {out['dataset']}",
            "",
            f"Run folder `{group}/{name}/` (its own report, with the accuracy at "
            "each budget, every margin and the choices line, is there). "
            "Speedups, then where the budget goes, then the diagonal check.",
            "",
            *_speedup_table(workdir / group / name, label),
            f"Who wins at {BUDGET_MARGIN:g} pp (normalized write cycles to get "
            "within the margin of exhaustive write-verify; lower is better):",
            "",
            *comparison_lines(out),
            "",
            f"### Where the verified budget goes ({out['dataset']})",
            "",
            f"Each method at its {BUDGET_MARGIN:g} pp target (the verified fraction "
            "it needs there, NWC-v, interpolated between budget points, rounded to "
            "weights): the share (%) of the verified weights in each layer group; "
            "the first row is each group's share of all crossbar weights. A share "
            "above the weight share means the method concentrates its budget "
            "there. Per-layer counts in `budget.csv`.",
            "",
            *_budget_table(
                [r for r in budget if r["dataset"] == out["dataset"]], order
            ),
            "",
        ]
        mine = [r for r in diagonal if r["dataset"] == out["dataset"]]
        if mine:
            n_curv, n_est = sensitivity_sizes(cfg, out["num_train"])
            lines += [
                f"### Is the one-pass diagonal the weak link? ({out['dataset']})",
                "",
                "The one-pass (Becker-LeCun) diagonal against the exact GGN "
                f"diagonal over {n_est:,} training images: rank agreement per layer "
                "(Spearman) and the share of the GGN's top-k weights that the "
                "one-pass diagonal also puts in its top k; 'same images' recomputes "
                "the one-pass diagonal over the GGN's images (the approximation "
                f"alone), 'as run' is the run's one-pass diagonal over "
                f"{n_curv:,} images. Every pair in `diagonal.csv`.",
                "",
                *_diagonal_table(mine),
                "",
            ]
    return "\n".join(lines)


def run_study(
    config: StudyConfig,
    workdir: str | os.PathLike,
    *,
    title: str,
    group: Callable[[str], str],
    preprocess: Callable[[data.Dataset], data.Dataset] | None,
    order: tuple[str, ...] = (),
    results_dir: str | os.PathLike | None = None,
    datasets: dict[str, tuple[data.Dataset, data.Dataset]] | None = None,
    progress: bool = True,
    log=print,
) -> dict:
    """Runs (or resumes) every run of ``config`` and writes the study report
    (:data:`REPORT_FILES`) in ``workdir`` and a copy in ``results_dir`` (with
    each run's text files). Returns ``{"outs", "budget", "diagonal",
    "summary"}``."""
    start = time.perf_counter()
    workdir = Path(workdir)
    runs = config.runs()
    loaded = dict(datasets or {})
    for _, _, cfg in runs:
        ds = cfg.train.dataset
        if ds not in loaded:
            loaded[ds] = (data.load(ds, "train"), data.load(ds, "test"))
    outs = run_grid(
        runs,
        workdir,
        results_dir=results_dir,
        datasets=loaded,
        preprocess=preprocess,
        progress=progress,
        log=log,
    )
    budget, diagonal, configs = [], [], {}
    for g, name, cfg in runs:
        out = outs[(g, name)]
        train_data = loaded[cfg.train.dataset][0]
        if preprocess is not None:
            train_data = preprocess(train_data)
        out["num_train"] = len(train_data)
        configs[(g, name)] = cfg
        budget += budget_rows(out, cfg, group)
        diagonal += diagonal_rows(out, cfg, train_data, log)
    text = finish(
        workdir,
        runs,
        outs,
        start,
        {
            "study.md": study_markdown(
                title, outs, workdir, budget, diagonal, configs, order
            ),
            "budget.csv": csv_text(budget),
            "diagonal.csv": csv_text(diagonal),
        },
        results_dir=results_dir,
    )
    return {"outs": outs, "budget": budget, "diagonal": diagonal, "summary": text}


def study_runner(
    title: str,
    group: Callable[[str], str],
    preprocess: Callable[[StudyConfig], Callable | None],
    order: tuple[str, ...] = (),
) -> Callable[..., dict]:
    """The ``run`` of a study (what ``experiments.common.main`` calls):
    :func:`run_study` with this title, layer groups (listed in ``order``) and
    preprocessing (``preprocess(config)``: the dataset map, or None)."""

    def run(
        config: StudyConfig,
        workdir: str | os.PathLike,
        *,
        results_dir: str | os.PathLike | None = None,
        datasets: dict[str, tuple[data.Dataset, data.Dataset]] | None = None,
        progress: bool = True,
        log=print,
    ) -> dict:
        return run_study(
            config,
            workdir,
            title=title,
            group=group,
            preprocess=preprocess(config),
            order=order,
            results_dir=results_dir,
            datasets=datasets,
            progress=progress,
            log=log,
        )

    run.__doc__ = f"{title}: runs (or resumes) the study (:func:`run_study`)."
    return run


#: The deep-network study: ResNet-18 on the datasets padded to 32x32.
run = study_runner(
    "Selective write-verify on a deep network: ResNet-18",
    resnet_group,
    lambda c: pad_to(c.image_size),
    RESNET_GROUPS,
)
