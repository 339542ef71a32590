"""Helpers shared by the reproduction experiments (Fashion-MNIST, CIFAR-10, Tiny
ImageNet, the ablations): the flag parser of every ``main.py`` and the
train -> sensitivities -> sweeps -> report driver of every ``run.py``.

Every reproduction (MNIST included) writes its report through ``reproduce``.
"""

import argparse
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from uswim_jax import data
from uswim_jax._interrupt import reliable_interrupts
from uswim_jax.experiment import ExperimentConfig, sensitivity_sizes
from uswim_jax.experiment import run as run_experiment
from uswim_jax.report import write_report

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


__all__ = ["REPORT_FILES", "choices_line", "full_choices", "reproduce", "main"]


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
    if results_dir is not None:
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
    if args.quick:
        config, suffix = configs.get_quick_config(), "-quick"
    elif getattr(args, "full", False):
        config, suffix = configs.get_full_config(), "-full"
    else:
        config, suffix = configs.get_config(), ""
    if args.steps_per_chunk is not None:
        try:
            config = dataclasses.replace(config, steps_per_chunk=args.steps_per_chunk)
        except ValueError as e:
            p.error(str(e))
    if args.per_chip is not None:
        from uswim_jax.experiment.per_chip import with_per_chip

        try:
            config = with_per_chip(config, margin=args.per_chip)
        except ValueError as e:
            p.error(str(e))
    base = {"workdir", "results_dir", "quick", "full", "no_progress", "steps_per_chunk"}
    base.add("per_chip")
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
        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print()
    print(out["summary"])
    print(
        f"run folder: {workdir}" + (f"; report copied to {results}" if results else "")
    )
    return 0


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


def reproduce_models(
    configs,
    workdir: str | os.PathLike,
    *,
    results_dir: str | os.PathLike | None = None,
    train_data: data.Dataset | None = None,
    test_data: data.Dataset | None = None,
    preprocess: Callable[[data.Dataset], data.Dataset] | None = None,
    synthetic_spec: tuple[str, tuple[int, int, int], int] | None = None,
    progress: bool = True,
) -> dict:
    """:func:`reproduce` for each config (one per model) in
    ``workdir/<model>`` (reports copied to ``results_dir/<model>``). The data
    are loaded once; ``synthetic_spec = (name, shape, classes)`` generates them
    instead. Each config's ``test_subset`` also limits the test images seen in
    training. Returns ``{"outs": {model: info}, "summary": text}``."""
    if isinstance(configs, ExperimentConfig):
        configs = (configs,)
    outs, texts = {}, []
    for c in configs:
        tr, te = train_data, test_data
        if synthetic_spec is not None:
            name, shape, classes = synthetic_spec
            if tr is None:
                tr = synthetic(name, shape, classes, 512, 0, "train")
            if te is None:
                te = synthetic(name, shape, classes, 256, 1, "test")
        if tr is None:
            train_data = tr = data.load(c.train.dataset, "train")
        if te is None:
            test_data = te = data.load(c.train.dataset, "test")
        model = c.train.model
        out = reproduce(
            c,
            Path(workdir) / model,
            results_dir=None if results_dir is None else Path(results_dir) / model,
            train_data=tr,
            test_data=te,
            preprocess=preprocess,
            test_limit=c.test_subset,
            progress=progress,
        )
        outs[model] = out
        texts.append(out["summary"])
    return {"outs": outs, "summary": "\n\n".join(texts)}
