"""End to end on generated data: the experiment runs and writes its summary."""

import numpy as np

from experiments.mnist import run
from uswim_jax.data import Dataset
from uswim_jax.train import TrainConfig


def _fake(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = rng.random((n, 28, 28, 1), dtype=np.float32) * 0.1
    x[np.arange(n), y, y, 0] = 1.0  # one bright pixel per class
    return Dataset(x, y, "synthetic", "generated", "train", 10)


def test_run_end_to_end(tmp_path):
    config = TrainConfig(epochs=1, batch_size=32)
    metrics = run.run(
        config,
        tmp_path / "w",
        results_dir=tmp_path / "r",
        train_data=_fake(256, 0),
        test_data=_fake(64, 1),
        progress=False,
    )
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    text = (tmp_path / "r" / "summary.md").read_text()
    assert "synthetic" in text and "clean test accuracy" in text
