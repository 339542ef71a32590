"""The deep-network study end to end on generated data (a ResNet-18 of width
2): the padded images, the budget table's counts (they sum to each method's
verified weights at its target), the diagonal check (the one-pass diagonal
over the GGN's images equals the run's own when the two image sets are the
same) and the layer groups of the real ResNet-18."""

import dataclasses

import jax
import numpy as np
import pytest

from experiments._studies import pad_to, ratio_range
from experiments.deep import run
from experiments.deep.configs import default
from experiments.mnist.run_test import _fake
from uswim_jax.models import build_model
from uswim_jax.sensitivity_report import crossbar_arrays


def test_default_configs():
    for get in (default.get_config, default.get_quick_config, default.get_full_config):
        c = get()
        assert [ds for ds, _ in c.bases] == ["mnist", "fashion_mnist"]
        for _, cfg in c.bases:
            assert cfg.train.model == "resnet18"
            assert set(cfg.methods) == set(default.METHODS)
    main = default.get_config()
    assert {cfg.train.width for _, cfg in main.bases} == {16}
    assert main.bases[0][1].sigmas == (0.05, 0.1, 0.15, 0.2, 0.3)
    assert {cfg.train.width for _, cfg in default.get_full_config().bases} == {64}


def test_pad_and_ratio_helpers():
    ds = _fake(4, 0)
    padded = pad_to(32)(ds)
    assert padded.images.shape == (4, 32, 32, 1) and padded.name == "synthetic-32x32"
    np.testing.assert_array_equal(padded.images[:, 2:30, 2:30], ds.images)
    assert padded.images[:, :2].max() == 0 and padded.images[:, 30:].max() == 0
    with pytest.raises(ValueError, match="do not fit"):
        pad_to(16)(ds)
    assert ratio_range((0.4, 0.3, 0.5), (0.2, 0.1, 0.25)) == pytest.approx((2, 1.2, 5))
    v, lo, hi = ratio_range((0.0, 0.0, 0.1), (0.0, 0.0, 0.1))
    assert np.isnan(v) and lo == 0 and hi == np.inf


def test_resnet_groups_cover_every_layer():
    model = build_model("resnet18", width=4, input_shape=(32, 32, 1))
    layers = crossbar_arrays(model.init(jax.random.key(0)))
    groups = {run.resnet_group(p) for p in layers}
    assert groups == {
        "stem",
        "stage 1",
        "stage 2",
        "stage 3",
        "stage 4",
        "shortcuts (1x1)",
        "head",
    }
    assert run.resnet_group("params/BasicBlock_7/Conv_1/kernel") == "stage 4"


def test_study_end_to_end(tmp_path):
    base = dataclasses.replace(
        default.get_quick_config().bases[0][1],
        train=dataclasses.replace(
            default.get_quick_config().bases[0][1].train,
            width=2,
            train_subset=None,
            batch_size=32,
        ),
        sigmas=(0.2,),
        s_values=(3.0,),
        s_sigma=0.2,
        fractions=(0.05, 0.5),
        num_trials=2,
        methods=("magnitude", "swim", "uswim", "eloss-ggn"),
        test_subset=32,
        curvature_subset=32,
        estimator_subset=32,  # the same images: the two one-pass diagonals agree
        label="test",
    )
    config = default.StudyConfig((("mnist", base),))
    datasets = {"mnist": (_fake(64, 0), _fake(32, 1))}
    out = run.run(
        config,
        tmp_path / "w",
        results_dir=tmp_path / "r",
        datasets=datasets,
        progress=False,
        log=lambda *a: None,
    )
    o = out["outs"][("mnist", "run")]
    assert o["dataset"] == "synthetic-32x32"
    n = o["num_weights"]
    keys = {(r["setting"], r["method"]) for r in out["budget"]}
    assert len(keys) == 2 * 3 + 1  # uniform: 3 methods, state: 4
    for key in keys:
        rows = [r for r in out["budget"] if (r["setting"], r["method"]) == key]
        count = round(rows[0]["budget_fraction"] * n)
        assert sum(r["verified"] for r in rows) == count
        assert sum(r["size"] for r in rows) == n
        assert all(0 <= r["coverage"] <= 1 for r in rows)
        if count:
            assert sum(r["share"] for r in rows) == pytest.approx(1.0)
        curve = o["curves"][key]
        f = curve.cycles_to_target(run.BUDGET_MARGIN, verified_only=True).value
        assert count == round(min(f, 1.0) * n)
    by = {(r["a"], r["b"], r["layer"]): r for r in out["diagonal"]}
    same = by[(run.OBD, run.OBD_SAME, "overall")]
    assert same["spearman"] == pytest.approx(1.0) and same["top1%"] == 1.0
    ggn = [r for r in out["diagonal"] if r["b"] == run.GGN]
    assert ggn and all(
        -1 <= r["spearman"] <= 1 for r in ggn if r["spearman"] == r["spearman"]
    )
    for f in run.REPORT_FILES:
        assert (tmp_path / "r" / f).is_file(), f
    text = (tmp_path / "w" / "study.md").read_text()
    assert "Where the verified budget goes" in text and "weak link" in text
