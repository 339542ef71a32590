"""End to end on generated data: both models run every stage in their own
sub-folders, one report of both is written, and a rerun resumes (the two-model
run is slow; the float LeNet alone runs in the default suite)."""

import pytest

from experiments.common import model_name
from experiments.fashion_mnist import main, run
from experiments.fashion_mnist.configs import default
from experiments.mnist.configs import default as mnist_default
from experiments.mnist.run_test import _fake
from uswim_jax.experiment import ExperimentConfig
from uswim_jax.train import TrainConfig


def test_configs_are_the_mnist_models_on_fashion_mnist():
    for get in (default.get_config, default.get_quick_config, default.get_full_config):
        q, f = get()
        for c in (q, f):
            assert c.train.dataset == "fashion_mnist" and c.train.model == "lenet"
        assert [model_name(c) for c in (q, f)] == ["qlenet", "lenet"]
        assert (q.train.weight_bits, q.q_scale, q.avg_pool) == (4, "authors", "authors")
        assert f.train.weight_bits is None
        m = get.__name__
        mq, mf = getattr(mnist_default, m)()
        assert (q.q_scale, q.avg_pool, f.avg_pool) == (
            mq.q_scale,
            mq.avg_pool,
            mf.avg_pool,
        )
    assert {c.test_subset for c in default.get_config()} == {2000}
    assert {c.train.epochs for c in default.get_full_config()} == {20}


def _config(weight_bits, **kw):
    return ExperimentConfig(
        train=TrainConfig(
            dataset="fashion_mnist", epochs=1, batch_size=32, weight_bits=weight_bits
        ),
        sigmas=(0.2,),
        s_values=(),
        fractions=(0.01, 0.1),
        num_trials=2,
        methods=("magnitude", "swim"),
        test_subset=48,
        curvature_subset=64,
        label="test",
        **kw,
    )


def _end_to_end_and_resume(tmp_path, configs) -> str:
    """Runs ``configs`` into ``tmp_path/w`` (report copied to ``tmp_path/r``),
    checks the report files, reruns and checks that the rerun resumes (the same
    curves); returns summary.md."""
    kw = {"train_data": _fake(128, 0), "test_data": _fake(64, 1), "progress": False}
    run.run(configs, tmp_path / "w", results_dir=tmp_path / "r", **kw)
    text = (tmp_path / "r" / "summary.md").read_text()
    assert "Monte Carlo over the first 48 of the 64 test images" in text
    assert "## `lenet`: float LeNet" in text and "| swim |" in text
    for name in run.MODELS_REPORT_FILES:
        assert (tmp_path / "r" / name).is_file(), name
    curves = (tmp_path / "w" / "curves.csv").read_text()
    assert curves.startswith("model,setting,")
    run.run(configs, tmp_path / "w", **kw)
    assert (tmp_path / "w" / "curves.csv").read_text() == curves
    return text


@pytest.mark.slow
def test_run_end_to_end_and_resume(tmp_path):
    text = _end_to_end_and_resume(
        tmp_path, (_config(4, q_scale="authors"), _config(None))
    )
    assert "## `qlenet`: 4-bit QLeNet" in text
    assert text.count("### uniform sigma=0.2") == 2


def test_float_lenet_end_to_end_and_resume(tmp_path):
    """The default suite's variant of the two-model run above (slow; the
    MNIST reproduction's test runs two models in the default suite): the
    float LeNet alone."""
    text = _end_to_end_and_resume(tmp_path, (_config(None),))
    assert "qlenet" not in text and text.count("### uniform sigma=0.2") == 1


def test_main_reports_missing_data_in_one_line(tmp_path, monkeypatch, capsys):
    def fail(*a, **k):
        raise RuntimeError("no data\nanywhere")

    monkeypatch.setattr(run, "run", fail)
    assert main.main(["--quick", "--workdir", str(tmp_path / "w")]) == 1
    assert capsys.readouterr().err.strip() == (
        "reproduce-fashion-mnist: error: no data anywhere"
    )
