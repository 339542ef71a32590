"""The driver shared by the studies beyond the papers' setting
(``experiments/uswim_scan``, ``experiments/deep``, ``experiments/vit``;
docs/studies.md): a grid of pipeline runs, one run folder each under
``workdir/<group>/<name>``, where the runs of a group (one dataset) share one
trained model and its sensitivities.

Each run is :func:`experiments.common.reproduce` (resumable; its own report in
its folder, whose text files, :data:`RUN_FILES`, are copied to
``results_dir/<group>/<name>``: the plots stay in the run folder). A later run
of a group starts from a copy of the first earlier run's ``train/`` folder with the same
training config, and of its ``sensitivities.npz`` when the sensitivities do not
depend on what differs (the ablations' rule, ``experiments.ablations.run``).
"""

import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from experiments.common import reproduce, seed_run_folder
from uswim_jax import data
from uswim_jax._io import atomic_write_json, atomic_write_text
from uswim_jax.experiment import ExperimentConfig, manifest

#: One run of a study: ``(group, name, config)``; the group is the folder of
#: the runs that share a trained model (one dataset).
Run = tuple[str, str, ExperimentConfig]

#: The files of each run's report copied to ``results_dir`` (not its plots).
RUN_FILES = (
    "summary.md",
    "curves.csv",
    "speedups.csv",
    "references.csv",
    "run_info.json",
    "config.json",
    "manifest.json",
)


def pad_to(size: int) -> Callable[[data.Dataset], data.Dataset]:
    """Zero-pads a dataset's square images to ``size`` x ``size`` (centred, as
    the 28x28 digits are padded to ResNet's 32x32); the name gets
    ``-{size}x{size}`` so a padded run folder is never mistaken for an unpadded
    one."""

    def apply(ds: data.Dataset) -> data.Dataset:
        n, h, w, c = ds.images.shape
        if h > size or w > size:
            raise ValueError(f"images of {h}x{w} do not fit in {size}x{size}")
        top, left = (size - h) // 2, (size - w) // 2
        pad = ((0, 0), (top, size - h - top), (left, size - w - left), (0, 0))
        images = np.pad(ds.images, pad).astype(np.float32)
        return dataclasses.replace(ds, images=images, name=f"{ds.name}-{size}x{size}")

    return apply


def run_grid(
    runs: list[Run],
    workdir: str | os.PathLike,
    *,
    results_dir: str | os.PathLike | None = None,
    datasets: dict[str, tuple[data.Dataset, data.Dataset]] | None = None,
    preprocess: Callable[[data.Dataset], data.Dataset] | None = None,
    progress: bool = True,
    log=print,
) -> dict[tuple[str, str], dict]:
    """Runs (or resumes) every run in order; returns ``{(group, name): out}``
    (``out`` as :func:`experiments.common.reproduce` returns it).

    ``datasets``: ``{train.dataset: (train, test)}`` to use instead of loading
    (generated data in tests); each dataset is loaded once otherwise.
    ``preprocess`` maps both splits before anything sees them (e.g.
    :func:`pad_to`)."""
    seen = set()
    for group, name, _ in runs:
        if (group, name) in seen:
            raise ValueError(f"run {group}/{name} appears twice")
        seen.add((group, name))
    workdir = Path(workdir)
    loaded = dict(datasets or {})
    earlier: dict[str, list[tuple[str, ExperimentConfig]]] = {}
    outs = {}
    for group, name, cfg in runs:
        ds = cfg.train.dataset
        if ds not in loaded:
            loaded[ds] = (data.load(ds, "train"), data.load(ds, "test"))
        train_data, test_data = loaded[ds]
        prior = earlier.setdefault(group, [])
        seed_run_folder(workdir / group, prior, workdir / group / name, cfg)
        prior.append((name, cfg))
        log(f"== {group}/{name}")
        outs[(group, name)] = reproduce(
            cfg,
            workdir / group / name,
            train_data=train_data,
            test_data=test_data,
            preprocess=preprocess,
            progress=progress,
        )
        if results_dir is not None:
            dst = Path(results_dir) / group / name
            dst.mkdir(parents=True, exist_ok=True)
            for f in RUN_FILES:
                shutil.copyfile(workdir / group / name / f, dst / f)
    return outs


def finish(
    workdir: Path,
    runs: list[Run],
    outs: dict[tuple[str, str], dict],
    start: float,
    texts: dict[str, str],
    *,
    results_dir: str | os.PathLike | None = None,
) -> str:
    """Writes a study's report: ``texts`` (``{file name: text}``, the first
    one the Markdown summary, which gets the wall and pipeline times appended)
    and ``manifest.json`` (every run's config) in ``workdir``, and copies them
    to ``results_dir``. Returns the summary text."""
    names = list(texts)
    texts = dict(texts)
    texts[names[0]] += (
        f"\nwall time of this invocation {time.perf_counter() - start:.0f} s; "
        "pipeline time summed over the runs and all invocations of their folders "
        f"{sum(o['seconds_total'] for o in outs.values()):.0f} s.\n"
    )
    for name, text in texts.items():
        atomic_write_text(workdir / name, text)
    atomic_write_json(
        workdir / "manifest.json",
        manifest(
            seed=runs[0][2].seed,
            runs=[
                {"group": g, "name": n, **c.to_json(), **c.execution_json()}
                for g, n, c in runs
            ],
        ),
    )
    if results_dir is not None:
        results_dir = Path(results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        for name in [*names, "manifest.json"]:
            shutil.copyfile(workdir / name, results_dir / name)
    return texts[names[0]]


def ratio_range(
    a: tuple[float, float, float], b: tuple[float, float, float]
) -> tuple[float, float, float]:
    """``a / b`` of two cycles-to-target ``(value, low, high)`` with its range
    ``(a.low / b.high, a.high / b.low)``: the two ends of each range taken
    together (a conservative range: it ignores that the two curves share their
    trial keys). ``inf`` where a denominator is 0, NaN for 0 / 0."""

    def div(x: float, y: float) -> float:
        if y > 0:
            return x / y
        return float("nan") if x == 0 else float("inf")

    return div(a[0], b[0]), div(a[1], b[2]), div(a[2], b[1])
