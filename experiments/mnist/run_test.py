"""End to end on generated data: every stage runs and writes its report."""

import json

import numpy as np

from experiments.mnist import run
from uswim_jax.data import Dataset
from uswim_jax.experiment import ExperimentConfig
from uswim_jax.train import TrainConfig


def _fake(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = rng.random((n, 28, 28, 1), dtype=np.float32) * 0.1
    x[np.arange(n), 2 * y + 3, 2 * y + 3, 0] = 1.0  # one bright pixel per class
    return Dataset(x, y, "synthetic", "generated", "train", 10)


def test_run_end_to_end_and_resume(tmp_path):
    config = ExperimentConfig(
        train=TrainConfig(epochs=1, batch_size=32),
        sigmas=(0.2,),
        s_values=(3.0,),
        fractions=(0.01, 0.1),
        num_trials=2,
        test_subset=64,
        curvature_subset=64,
        estimator_subset=16,
        hutchinson_probes=2,
        label="test",
    )
    kw = {"train_data": _fake(128, 0), "test_data": _fake(64, 1), "progress": False}
    out = run.run(config, tmp_path / "w", results_dir=tmp_path / "r", **kw)
    for name in run.REPORT_FILES:
        assert (tmp_path / "r" / name).is_file(), name
    text = (tmp_path / "r" / "summary.md").read_text()
    assert "synthetic" in text and "## state s=3 sigma=0.3" in text
    assert "U-SWIM speedup over SWIM" in text
    csv = (tmp_path / "w" / "curves.csv").read_text()
    # 1 uniform setting x 7 methods + 1 state setting x 8 methods, 2 steps each
    assert len(csv.strip().splitlines()) == 1 + 15 * 2
    # A rerun resumes: nothing is recomputed and the CSV is byte-identical.
    again = run.run(config, tmp_path / "w", **kw)
    assert (tmp_path / "w" / "curves.csv").read_text() == csv
    assert set(again["curves"]) == set(out["curves"])
    info = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert info["dataset"] == "synthetic"
