"""The deep-network study on generated data: the padded images, the budget
table's counts (they sum to each method's verified weights at its target), the
diagonal check (the one-pass diagonal over the GGN's images equals the run's
own when the two image sets are the same), the layer groups of the real
ResNet-18; end to end on LeNet in the default suite, on a ResNet-18 of width 2
when slow tests run."""

import jax
import numpy as np
import pytest

from experiments import readme
from experiments._studies import pad_to, ratio_range
from experiments.deep import run
from experiments.deep.configs import default
from experiments.mnist.run_test import _fake
from uswim_jax._tree import path_str
from uswim_jax.experiment import ExperimentConfig
from uswim_jax.models import build_model
from uswim_jax.sweep import Curve
from uswim_jax.train import TrainConfig


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


def _kernel_paths(model) -> list[str]:
    """The crossbar layer paths of a model, from its shapes alone (no compile)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    return [
        path_str(p)
        for p, leaf in jax.tree_util.tree_leaves_with_path(shapes)
        if path_str(p).endswith("kernel") and len(leaf.shape) >= 2
    ]


def test_resnet_groups_cover_every_layer():
    paths = _kernel_paths(build_model("resnet18", width=4, input_shape=(32, 32, 1)))
    assert len(paths) == 21
    assert {run.resnet_group(p) for p in paths} == set(run.RESNET_GROUPS)
    assert run.resnet_group("params/BasicBlock_7/Conv_1/kernel") == "stage 4"
    assert run.resnet_group("params/BasicBlock_2/Conv_2/kernel") == "shortcuts (1x1)"


def _base(train: TrainConfig, **kw) -> ExperimentConfig:
    return ExperimentConfig(
        **{
            "train": train,
            "sigmas": (0.2,),
            "s_values": (3.0,),
            "s_sigma": 0.2,
            "fractions": (0.05, 0.5),
            "num_trials": 2,
            "methods": ("magnitude", "swim", "uswim", "eloss-ggn"),
            "test_subset": 32,
            "curvature_subset": 32,
            # the same images: the two one-pass diagonals agree
            "estimator_subset": 32,
            "label": "test",
            **kw,
        }
    )


def _check_study(out, tmp_path, dataset):
    o = out["outs"][("mnist", "run")]
    assert o["dataset"] == dataset
    n = o["num_weights"]
    keys = {(r["setting"], r["method"]) for r in out["budget"]}
    assert len(keys) == 3 + 4  # uniform: 3 methods, state: U-SWIM too
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
    ggn = [r["spearman"] for r in out["diagonal"] if r["b"] == run.GGN]
    assert ggn and all(-1 <= s <= 1 for s in ggn if s == s)
    for f in run.REPORT_FILES:
        assert (tmp_path / "r" / f).is_file(), f
    text = (tmp_path / "w" / "study.md").read_text()
    assert "Where the verified budget goes" in text and "weak link" in text
    assert "Who wins at 0.5 pp" in text and "fewest cycles" in text
    section = readme.deep_results(tmp_path / "r")
    assert dataset in section and "Spearman" in section


def test_study_end_to_end_on_lenet(tmp_path):
    """The study's driver and report on a small model (LeNet, one group per
    layer): the budget counts, the diagonal check, the README section."""
    config = default.StudyConfig(
        (("mnist", _base(TrainConfig(epochs=1, batch_size=32))),)
    )
    out = run.run_study(
        config,
        tmp_path / "w",
        title="test",
        group=lambda p: p.split("/")[1],
        preprocess=None,
        results_dir=tmp_path / "r",
        datasets={"mnist": (_fake(64, 0), _fake(32, 1))},
        progress=False,
        log=lambda *a: None,
    )
    _check_study(out, tmp_path, "synthetic")


@pytest.mark.slow
def test_resnet_study_end_to_end(tmp_path):
    """The study itself: a ResNet-18 of width 2 on the padded images."""
    train = TrainConfig(model="resnet18", width=2, epochs=1, batch_size=32)
    config = default.StudyConfig((("mnist", _base(train)),))
    out = run.run(
        config,
        tmp_path / "w",
        results_dir=tmp_path / "r",
        datasets={"mnist": (_fake(64, 0), _fake(32, 1))},
        progress=False,
        log=lambda *a: None,
    )
    _check_study(out, tmp_path, "synthetic-32x32")
    groups = {r["group"] for r in out["budget"]}
    assert groups == set(run.RESNET_GROUPS)


def _curve(acc_at_steps):
    """A two-step curve whose four trials all have these accuracies (the
    exhaustive reference 1, nothing verified 0.5)."""
    a = np.asarray(acc_at_steps, float)[:, None] * np.ones((1, 4))
    return Curve(
        np.array([1, 2]),
        np.array([0.1, 0.5]),
        np.array([0.19, 0.55]),
        np.array([0.1, 0.5]),
        a,
        np.ones(4),
        np.full(4, 0.5),
        np.array([0.1, 0.0]),
    )


def test_comparison_names_the_cheapest_method():
    s = "uniform sigma=0.1"
    out = {
        "settings": [s, "uniform sigma=0.2"],
        "curves": {
            (s, "swim"): _curve([0.9, 1.0]),
            (s, "magnitude"): _curve([1.0, 1.0]),
            (s, "random"): _curve([0.5, 0.9]),
        },
    }
    (line,) = run.comparison_lines(out)
    assert "fewest cycles: magnitude" in line
    assert "swim not fewer than magnitude" in line
    assert "swim fewer than random" in line
