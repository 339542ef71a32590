"""End to end on generated data: both models of the reproduction (the 4-bit
QLeNet with the authors' rules and the float LeNet) run every stage in their
own sub-folders, one report of both is written beside, and a rerun resumes."""

import csv
import io
import json

import numpy as np

from experiments import readme
from experiments.common import model_name
from experiments.mnist import run
from experiments.mnist.configs import default
from uswim_jax.data import Dataset
from uswim_jax.experiment import ExperimentConfig
from uswim_jax.train import TrainConfig


def _fake(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = rng.random((n, 28, 28, 1), dtype=np.float32) * 0.1
    x[np.arange(n), 2 * y + 3, 2 * y + 3, 0] = 1.0  # one bright pixel per class
    return Dataset(x, y, "synthetic", "generated", "train", 10)


def test_default_is_the_authors_qlenet_with_the_float_lenet_beside():
    for configs in (
        default.get_config(),
        default.get_quick_config(),
        default.get_full_config(),
    ):
        q, f = configs
        assert [model_name(c) for c in configs] == ["qlenet", "lenet"]
        assert q.train.model == f.train.model == "lenet"
        assert (q.train.weight_bits, f.train.weight_bits) == (4, None)
        assert (q.q_scale, q.avg_pool, q.first_order, q.k_power) == (
            "authors",
            "authors",
            True,
            1,
        )
        # Everything but the model and its rules is the same for both.
        assert q.train.epochs == f.train.epochs and q.fractions == f.fractions
        assert q.num_trials == f.num_trials and q.test_subset == f.test_subset
    assert {c.num_trials for c in default.get_full_config()} == {100}
    assert {c.test_subset for c in default.get_quick_config()} == {500}


def _config(weight_bits, **kw):
    return ExperimentConfig(
        train=TrainConfig(epochs=1, batch_size=32, weight_bits=weight_bits),
        sigmas=(0.2,),
        s_values=(3.0,),
        fractions=(0.01, 0.1),
        num_trials=2,
        methods=("magnitude", "swim", "uswim"),
        test_subset=64,
        curvature_subset=64,
        avg_pool="authors",
        label="test",
        **kw,
    )


def test_two_models_one_report_and_resume(tmp_path):
    configs = (_config(4, q_scale="authors"), _config(None))
    kw = {"train_data": _fake(128, 0), "test_data": _fake(64, 1), "progress": False}
    out = run.run(configs, tmp_path / "w", results_dir=tmp_path / "r", **kw)
    assert set(out["outs"]) == {"qlenet", "lenet"}
    for name in run.MODELS_REPORT_FILES:
        assert (tmp_path / "r" / name).is_file(), name
    for model in ("qlenet", "lenet"):
        for name in run.REPORT_FILES:
            # per_chip.csv is written only with --per-chip (off here).
            present = (tmp_path / "r" / model / name).is_file()
            assert present == (name != "per_chip.csv"), (model, name)
    w = tmp_path / "w"
    csv_text = (w / "curves.csv").read_text()
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    # Each model: 1 uniform setting x 2 methods + 1 state setting x 3, 2 steps.
    assert [r["model"] for r in rows] == ["qlenet"] * 10 + ["lenet"] * 10
    for model in ("qlenet", "lenet"):
        own = (w / model / "curves.csv").read_text().strip().split("\n")
        assert [f"{model},{line}" for line in own[1:]] == [
            line for line in csv_text.strip().split("\n") if line.startswith(model)
        ]
    for name in ("speedups.csv", "references.csv"):
        head = (w / name).read_text().split("\n", 1)[0]
        assert head.startswith("model,setting,"), name
    text = (tmp_path / "r" / "summary.md").read_text()
    assert "4-bit QLeNet" in text and "float LeNet" in text
    assert "Q-layer scale rule 'authors'" in text
    assert text.count("### state s=3 sigma=0.3") == 2
    assert text.count("U-SWIM speedup over SWIM") == 2
    info = json.loads((tmp_path / "r" / "run_info.json").read_text())
    assert [m["name"] for m in info["models"]] == ["qlenet", "lenet"]
    # The README's generator renders a table per model from the copy.
    section = readme.mnist_results(tmp_path / "r")
    assert "**4-bit QLeNet** (`qlenet/`)" in section
    assert "**float LeNet** (`lenet/`)" in section
    assert section.count("| setting | none % | exhaustive % |") == 2
    # A rerun resumes: nothing is recomputed and the CSVs are byte-identical.
    before = {n: (w / n).read_bytes() for n in ("curves.csv", "references.csv")}
    again = run.run(configs, w, **kw)
    assert {n: (w / n).read_bytes() for n in before} == before
    assert set(again["outs"]["qlenet"]["curves"]) == set(
        out["outs"]["qlenet"]["curves"]
    )
    manifest = json.loads((w / "lenet" / "manifest.json").read_text())
    assert manifest["dataset"] == "synthetic"
