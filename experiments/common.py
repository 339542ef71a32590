"""Helpers shared by the reproduction experiments (MNIST, Fashion-MNIST,
CIFAR-10, Tiny ImageNet, the ablations): the flag parser of every ``main.py``
and the train -> sensitivities -> sweeps -> report driver of every ``run.py``.

Every reproduction writes each model's report through ``reproduce``; the
reproductions of several models (``reproduce_models``) run each in its own
sub-folder and add one report of them all beside (``write_models_report``).
"""

import argparse
import csv
import dataclasses
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from uswim_jax import _distributed, data
from uswim_jax._interrupt import reliable_interrupts
from uswim_jax._io import atomic_write_json, atomic_write_text
from uswim_jax.experiment import (
    ExperimentConfig,
    RunStore,
    manifest,
    sensitivity_sizes,
)
from uswim_jax.experiment import run as run_experiment
from uswim_jax.report import PLOT_AXES, plot_curves, write_report

REPORT_FILES = (
    "summary.md",
    "curves.csv",
    "speedups.csv",
    "references.csv",
    "run_info.json",
    "accuracy_vs_cycles.png",
    "accuracy_vs_verified_fraction.png",
    "config.json",
    "manifest.json",
    "per_chip.csv",
)


def choices_line(config: ExperimentConfig) -> str:
    return (
        f"run `{config.label}`: {config.num_trials} Monte Carlo trials per point, "
        f"budget points at {', '.join(f'{100 * f:g}%' for f in config.fractions)} "
        f"verified; sigma_verified = {config.verified_ratio:g} x sigma; a "
        f"write-verify costs {config.verify_cycles:g} cycles per device; seed "
        f"{config.seed}"
    )


__all__ = [
    "MODELS_REPORT_FILES",
    "REPORT_FILES",
    "choices_line",
    "full_choices",
    "main",
    "model_label",
    "model_name",
    "reproduce",
    "reproduce_models",
    "write_models_report",
]


def full_choices(config: ExperimentConfig, num_train: int, num_test_total: int) -> str:
    """The MNIST choices line plus what this run trained on and evaluated over,
    and the ablation switches that are not at their defaults."""
    t = config.train.resolved()
    n_test = min(config.test_subset or num_test_total, num_test_total)
    n_train = min(t.train_subset or num_train, num_train)
    n_curv, _ = sensitivity_sizes(config, num_train)
    parts = [
        choices_line(config),
        f"training: {t.model}"
        + (f" (width {t.width})" if t.width is not None else "")
        + (f" {t.weight_bits}-bit" if t.weight_bits is not None else "")
        + f", {t.optimizer} lr {t.learning_rate:g}, batch "
        f"{t.batch_size}, {t.epochs} epochs on {n_train:,} images"
        + (", with random crop and flip" if t.augment else ""),
        f"Monte Carlo over the first {n_test:,} of the {num_test_total:,} test images",
        f"one-pass diagonal over {n_curv:,} training images"
        + (" with the training augmentations" if config.curvature_augment else "")
        + f", average-pool rule '{config.avg_pool}'",
    ]
    if config.q_scale != "exact":
        parts.append(f"Q-layer scale rule '{config.q_scale}'")
    if not config.first_order:
        parts.append("first-order term off")
    if config.k_power != 1:
        parts.append(f"U-SWIM multiplier k^{config.k_power}")
    if config.programming != "gaussian":
        parts.append(f"{config.programming} programming model")
    return "; ".join(parts)


def reproduce(
    config: ExperimentConfig,
    workdir: str | os.PathLike,
    *,
    results_dir: str | os.PathLike | None = None,
    train_data: data.Dataset | None = None,
    test_data: data.Dataset | None = None,
    preprocess: Callable[[data.Dataset], data.Dataset] | None = None,
    test_limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Runs (or resumes) ``config`` in ``workdir``, writes the report there (and
    a copy to ``results_dir``). ``preprocess`` maps each split (e.g. CIFAR
    normalisation) before anything sees it; ``test_limit`` keeps only the first
    test images for everything, training-time evaluation included (quick runs).
    Returns the run's info with the summary text under ``"summary"``."""
    start = time.perf_counter()
    if train_data is None:
        train_data = data.load(config.train.dataset, "train")
    if test_data is None:
        test_data = data.load(config.train.dataset, "test")
    if test_limit is not None:
        test_data = test_data.take(test_limit)
    if preprocess is not None:
        train_data, test_data = preprocess(train_data), preprocess(test_data)
    out = run_experiment(
        config, workdir, train_data=train_data, test_data=test_data, progress=progress
    )
    choices = full_choices(config, len(train_data), len(test_data)) + (
        f"; pipeline time {out['seconds_total']:.0f} s over all invocations of "
        f"this run folder (this one: {time.perf_counter() - start:.0f} s)"
    )
    sections = ()
    if config.per_chip is not None:  # the per-chip study (off by default)
        from uswim_jax.experiment.per_chip import per_chip_section

        sections = (per_chip_section(out, train_data, test_data, workdir),)
    text = write_report(workdir, out, out["curves"], choices=choices, sections=sections)
    if results_dir is not None and _distributed.is_writer():
        results_dir = Path(results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        for name in REPORT_FILES:
            if (Path(workdir) / name).is_file():
                shutil.copyfile(Path(workdir) / name, results_dir / name)
    return {**out, "summary": text}


def synthetic_flag(p: argparse.ArgumentParser) -> None:
    """``--synthetic``: generated images instead of the dataset."""
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="generated images instead of the dataset (a smoke run without data)",
    )


def main(
    argv,
    *,
    prog: str,
    doc: str,
    run: Callable[..., dict],
    configs,
    extra_flags: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """The common ``main.py``: ``--workdir``, ``--results-dir``, ``--quick`` /
    ``--full`` (``configs.get_quick_config`` / ``get_full_config``),
    ``--steps-per-chunk``, ``--no-progress``; calls ``run(config, workdir,
    results_dir=..., progress=..., **extra)`` where ``extra`` holds the parsed
    ``extra_flags``. Ctrl-C prints one line and returns 130; the finished work
    stays in the run folder and the same command resumes it."""
    p = argparse.ArgumentParser(prog=prog, description=doc)
    p.add_argument(
        "--workdir", default=None, help=f"run folder (default runs/{prog}[-quick])"
    )
    p.add_argument(
        "--results-dir",
        default=None,
        help=f"also copy the report here (e.g. results/{prog}; -quick/-full "
        "is appended for those runs)",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a few-minute smoke run")
    if hasattr(configs, "get_full_config"):
        size.add_argument(
            "--full", action="store_true", help="the whole grid (meant for a GPU)"
        )
    p.add_argument(
        "--steps-per-chunk",
        type=int,
        default=None,
        help="save every N budget points of a curve as they finish (default: "
        "whole curves); not part of the run's identity, so a change resumes the run",
    )
    p.add_argument("--no-progress", action="store_true")
    _distributed.add_arguments(p)
    p.add_argument(
        "--per-chip",
        type=float,
        default=None,
        metavar="MARGIN",
        help="also program each chip in batches until it is within MARGIN pp of "
        "exhaustive write-verify on a calibration split, and report it "
        "(uswim_jax.chip_programming.PerChipConfig; off by default)",
    )
    if extra_flags is not None:
        extra_flags(p)
    args = p.parse_args(argv)
    try:  # before any JAX computation
        _distributed.initialize_from_args(args)
    except (ValueError, RuntimeError) as e:
        p.error(str(e))
    if args.quick:
        config, suffix = configs.get_quick_config(), "-quick"
    elif getattr(args, "full", False):
        config, suffix = configs.get_full_config(), "-full"
    else:
        config, suffix = configs.get_config(), ""
    if args.steps_per_chunk is not None:
        try:
            if isinstance(config, ExperimentConfig):
                config = dataclasses.replace(
                    config, steps_per_chunk=args.steps_per_chunk
                )
            else:  # one config per model
                config = tuple(
                    dataclasses.replace(c, steps_per_chunk=args.steps_per_chunk)
                    for c in config
                )
        except ValueError as e:
            p.error(str(e))
    if args.per_chip is not None:
        try:
            config = _with_per_chip(config, args.per_chip)
        except ValueError as e:
            p.error(str(e))
    base = {"workdir", "results_dir", "quick", "full", "no_progress", "steps_per_chunk"}
    base.add("per_chip")
    base.update(_distributed.ARGUMENTS)
    extra = {k: v for k, v in vars(args).items() if k not in base}
    workdir = args.workdir or f"runs/{prog}{suffix}"
    results = args.results_dir
    if results and suffix:
        results = results.rstrip("/") + suffix
    try:
        with reliable_interrupts():
            out = run(
                config,
                workdir,
                results_dir=results,
                progress=not args.no_progress,
                **extra,
            )
    except KeyboardInterrupt:
        print(
            f"{prog}: interrupted; finished work is kept in {workdir} (run the "
            "same command again to resume)",
            file=sys.stderr,
        )
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        who = (
            f" (process {jax.process_index()})"
            if jax.distributed.is_initialized()
            else ""
        )
        print(f"{prog}: error{who}: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    if _distributed.is_writer():
        print()
        print(out["summary"])
        print(
            f"run folder: {workdir}"
            + (f"; report copied to {results}" if results else "")
        )
    return 0


#: Config fields that decide the sensitivities (a variant that keeps them all
#: reuses the base's ``sensitivities.npz``).
SENSITIVITY_FIELDS = (
    "train",
    "curvature_subset",
    "estimator_subset",
    "hutchinson_probes",
    "avg_pool",
    "q_scale",
    "curvature_augment",
    "finetune_steps",
    "finetune_sigma",
    "seed",
)


def _same_source(folder: Path) -> bool:
    """Whether ``folder``'s run was made under this environment and source
    (:meth:`RunStore.check` against the folder's own config, so only the
    manifest is compared); a folder without a manifest counts as the same."""
    store = RunStore(folder)
    cfg = store.read_json("config.json")
    try:
        store.check({} if cfg is None else cfg.get("config", cfg), manifest())
    except ValueError:
        return False
    return True


def seed_run_folder(
    workdir: Path, earlier: list[tuple[str, ExperimentConfig]], vdir: Path, cfg
) -> None:
    """Copies into ``vdir`` the trained model of the first earlier run (a
    folder ``workdir/<name>``) with the same training config, and the
    sensitivities of the first with the same :data:`SENSITIVITY_FIELDS`, so
    ``cfg``'s run does not recompute them. Folders made by other source code
    or another environment are skipped: the run folder would refuse them."""
    for name, c in earlier:
        src = workdir / name / "train"
        if c.train == cfg.train and src.is_dir() and _same_source(src):
            if not (vdir / "train").exists():
                vdir.mkdir(parents=True, exist_ok=True)
                shutil.copytree(src, vdir / "train")
            break
    dst = vdir / "sensitivities.npz"
    for name, c in earlier:
        src = workdir / name / "sensitivities.npz"
        same = all(getattr(c, f) == getattr(cfg, f) for f in SENSITIVITY_FIELDS)
        if same and src.is_file() and not dst.exists() and _same_source(src.parent):
            vdir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            break


def csv_text(
    rows: list[dict], cols: list[str] | None = None, *, escape_commas: bool = False
) -> str:
    """``rows`` as CSV text: floats to 6 significant digits, everything else
    with ``str`` (commas in it turned into ``;`` with ``escape_commas``);
    ``cols`` defaults to the first row's keys; no rows give ``""``."""
    if not rows:
        return ""
    cols = list(rows[0]) if cols is None else cols

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.6g}"
        return str(v).replace(",", ";") if escape_commas else str(v)

    out = [",".join(cols), *(",".join(cell(r[c]) for c in cols) for r in rows)]
    return "\n".join(out) + "\n"


def _with_per_chip(config, margin: float):
    """``--per-chip MARGIN`` on one config or on each config of a
    several-model reproduction; refused for other experiments."""
    from uswim_jax.experiment.per_chip import with_per_chip

    if isinstance(config, ExperimentConfig):
        return with_per_chip(config, margin=margin)
    if isinstance(config, tuple) and all(
        isinstance(c, ExperimentConfig) for c in config
    ):
        return tuple(with_per_chip(c, margin=margin) for c in config)
    raise ValueError(
        f"--per-chip: this experiment ({type(config).__name__}) does not run the "
        "per-chip study; use it with make reproduce-mnist / reproduce-fashion-mnist "
        "or uswim sweep"
    )


def normalizer(
    mean: tuple[float, ...], std: tuple[float, ...]
) -> Callable[[data.Dataset], data.Dataset]:
    """Per-channel ``(x - mean) / std`` of a dataset's images (the authors'
    ``transforms.Normalize``). The random crop's zero padding then pads with the
    mean colour rather than black, a small departure from torchvision, which
    pads before normalising."""
    m = np.asarray(mean, np.float32)
    s = np.asarray(std, np.float32)

    def apply(ds: data.Dataset) -> data.Dataset:
        images = ((ds.images - m) / s).astype(np.float32)
        return dataclasses.replace(ds, images=images)

    return apply


def synthetic(
    name: str,
    shape: tuple[int, int, int],
    num_classes: int,
    n: int,
    seed: int,
    split: str,
) -> data.Dataset:
    """Generated images in [0, 1] with one bright class-dependent pixel per
    image (learnable in an epoch), for smoke runs and tests without the data."""
    rng = np.random.default_rng(seed)
    h, w, c = shape
    y = rng.integers(0, num_classes, n).astype(np.int32)
    x = rng.random((n, h, w, c), dtype=np.float32) * 0.1
    x[np.arange(n), y % h, (y // h) % w, :] = 1.0
    return data.Dataset(x, y, f"synthetic-{name}", "generated", split, num_classes)


def model_name(config: ExperimentConfig) -> str:
    """The sub-folder (and ``model`` column) of a config in a several-model
    report: the model's name, with a ``q`` in front for a quantized one (the
    authors' QLeNet is ``qlenet``)."""
    t = config.train
    return t.model if t.weight_bits is None else f"q{t.model}"


_DISPLAY = {"lenet": "LeNet", "convnet": "ConvNet", "resnet18": "ResNet-18"}


def model_label(config: ExperimentConfig) -> str:
    """How the reports name a config's model: ``4-bit QLeNet``, ``float
    LeNet``."""
    t = config.train
    name = _DISPLAY.get(t.model, t.model)
    if t.width is not None:
        name += f" (width {t.width})"
    return f"float {name}" if t.weight_bits is None else f"{t.weight_bits}-bit Q{name}"


def rules_line(config: ExperimentConfig) -> str:
    """The second-derivative rules a config runs with (docs/method.md §8)."""
    parts = [f"average-pool rule '{config.avg_pool}'"]
    if config.train.weight_bits is not None:
        parts.append(f"Q-layer scale rule '{config.q_scale}'")
    parts.append("first-order term " + ("on" if config.first_order else "off"))
    parts.append(f"U-SWIM multiplier k^{config.k_power}")
    return ", ".join(parts)


#: The files of a several-model report (beside one sub-folder per model, each
#: holding that model's :data:`REPORT_FILES`).
MODELS_REPORT_FILES = (
    "summary.md",
    "curves.csv",
    "speedups.csv",
    "references.csv",
    "run_info.json",
    *(name for _, _, name in PLOT_AXES.values()),
)


def _with_model_column(texts: dict[str, str]) -> str:
    """The CSV texts of several models as one, with a first ``model`` column
    (the models in the given order, each model's rows as they are)."""
    out = []
    for i, (name, text) in enumerate(texts.items()):
        head, *rows = text.strip("\n").split("\n")
        if i == 0:
            out.append(f"model,{head}")
        elif out[0] != f"model,{head}":
            raise ValueError(f"the CSV columns of {name} differ from the others'")
        out += [f"{name},{r}" for r in rows]
    return "\n".join(out) + "\n"


def _speedup_cell(rows: list[dict[str, str]], setting: str, method: str) -> str:
    for r in rows:
        if (
            r["setting"] == setting
            and r["method"] == method
            and r["margin_pp"] == "0.5"
        ):
            v = float(r["speedup"])
            return "not reached" if v == float("inf") or v != v else f"{v:.1f}x"
    return "= swim" if method == "uswim" and setting.startswith("uniform") else "-"


def write_models_report(
    workdir: str | os.PathLike,
    outs: dict[str, dict],
    configs: dict[str, ExperimentConfig],
) -> str:
    """One report of several models' runs, each in ``workdir/<name>`` with its
    own report: ``curves.csv``, ``speedups.csv`` and ``references.csv`` with a
    first ``model`` column (each model's rows as in its own file),
    ``summary.md`` (a side-by-side table, then each model's summary),
    ``run_info.json`` (each model's run info, in order, under ``models``) and
    the two plots of every model's panels. Returns the summary text."""
    workdir = Path(workdir)
    names = list(outs)
    for f in ("curves.csv", "speedups.csv", "references.csv"):
        texts = {n: (workdir / n / f).read_text() for n in names}
        atomic_write_text(workdir / f, _with_model_column(texts))
    first = outs[names[0]]
    lines = [
        f"# Selective write-verify on {first['dataset']}: "
        + ", ".join(model_label(configs[n]) for n in names),
        "",
        "Each model is its own run, in its own folder (`<name>/`, with its own "
        "report); the CSV files here hold every model's rows with a first "
        "`model` column, the plots a panel per model and setting.",
        "",
    ]
    for n in names:
        o, c = outs[n], configs[n]
        lines.append(
            f"- `{n}/`: {model_label(c)} ({o['num_weights']:,} crossbar weights), "
            f"clean test accuracy {100 * o['clean_accuracy']:.2f}%; "
            f"second-derivative rules: {rules_line(c)}"
        )
    speed = {
        n: list(csv.DictReader(io.StringIO((workdir / n / "speedups.csv").read_text())))
        for n in names
    }
    methods = [
        m for m in ("swim", "uswim") if any(m in c.methods for c in configs.values())
    ]
    settings = list(dict.fromkeys(s for n in names for s in outs[n]["settings"]))
    lines += [
        "",
        "## Side by side: speedup over exhaustive write-verify at 0.5 pp",
        "",
        "| setting | " + " | ".join(f"{n} {m}" for n in names for m in methods) + " |",
        "|---|" + "---:|" * (len(names) * len(methods)),
    ]
    for s in settings:
        cells = [_speedup_cell(speed[n], s, m) for n in names for m in methods]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines.append("")
    for n in names:
        text = outs[n]["summary"]
        body = text.split("\n", 1)[1] if text.startswith("# ") else text
        body = "\n".join(
            "#" + line if line.startswith("#") else line for line in body.split("\n")
        )
        lines += [f"## `{n}`: {model_label(configs[n])}", body.rstrip("\n"), ""]
    text = "\n".join(lines)
    atomic_write_text(workdir / "summary.md", text)
    info = {
        "models": [
            {
                "name": n,
                "label": model_label(configs[n]),
                **json.loads((workdir / n / "run_info.json").read_text()),
            }
            for n in names
        ],
        "seconds_total": sum(outs[n]["seconds_total"] for n in names),
    }
    atomic_write_json(workdir / "run_info.json", info)
    curves = {
        (f"{s} · {n}", m): c for n in names for (s, m), c in outs[n]["curves"].items()
    }
    methods_asked = tuple(dict.fromkeys(m for c in configs.values() for m in c.methods))
    for axis, (_, _, name) in PLOT_AXES.items():
        if not _distributed.is_writer():  # process 0 writes the run folder
            break
        tmp = workdir / f".{name}.tmp.png"
        plot_curves(curves, tmp, x_axis=axis, methods=methods_asked)
        os.replace(tmp, workdir / name)
    return text


def reproduce_models(
    configs,
    workdir: str | os.PathLike,
    *,
    results_dir: str | os.PathLike | None = None,
    train_data: data.Dataset | None = None,
    test_data: data.Dataset | None = None,
    preprocess: Callable[[data.Dataset], data.Dataset] | None = None,
    synthetic_spec: tuple[str, tuple[int, int, int], int] | None = None,
    limit_test: bool = True,
    progress: bool = True,
) -> dict:
    """:func:`reproduce` for each config (one per model) in
    ``workdir/<model_name>``, then the report of them all in ``workdir``
    (:func:`write_models_report`); a copy of everything goes to
    ``results_dir`` (each model's report under ``results_dir/<model_name>``).
    The data are loaded once; ``synthetic_spec = (name, shape, classes)``
    generates them instead. With ``limit_test``, each config's ``test_subset``
    also limits the test images seen in training (the Monte Carlo uses the
    first ``test_subset`` either way). Returns ``{"outs": {model_name: info}, "summary":
    text}``."""
    if isinstance(configs, ExperimentConfig):
        configs = (configs,)
    by_name = {}
    for c in configs:
        if model_name(c) in by_name:
            raise ValueError(
                f"configs: two configs of model {model_name(c)!r}; each model "
                "runs once in its own folder"
            )
        by_name[model_name(c)] = c
    outs = {}
    for name, c in by_name.items():
        tr, te = train_data, test_data
        if synthetic_spec is not None:
            sname, shape, classes = synthetic_spec
            if tr is None:
                tr = synthetic(sname, shape, classes, 512, 0, "train")
            if te is None:
                te = synthetic(sname, shape, classes, 256, 1, "test")
        if tr is None:
            train_data = tr = data.load(c.train.dataset, "train")
        if te is None:
            test_data = te = data.load(c.train.dataset, "test")
        outs[name] = reproduce(
            c,
            Path(workdir) / name,
            results_dir=None if results_dir is None else Path(results_dir) / name,
            train_data=tr,
            test_data=te,
            preprocess=preprocess,
            test_limit=c.test_subset if limit_test else None,
            progress=progress,
        )
    text = write_models_report(workdir, outs, by_name)
    if results_dir is not None and _distributed.is_writer():
        for f in MODELS_REPORT_FILES:
            shutil.copyfile(Path(workdir) / f, Path(results_dir) / f)
    return {"outs": outs, "summary": text}
