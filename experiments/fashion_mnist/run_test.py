"""End to end on generated data: every stage runs and writes its report."""

from experiments.fashion_mnist import main, run
from experiments.fashion_mnist.configs import default
from experiments.mnist.run_test import _fake
from uswim_jax.experiment import ExperimentConfig
from uswim_jax.train import TrainConfig


def test_configs_are_valid():
    for get in (default.get_config, default.get_quick_config, default.get_full_config):
        c = get()
        assert c.train.dataset == "fashion_mnist" and c.train.model == "lenet"
    assert default.get_config().test_subset == 2000


def test_run_end_to_end(tmp_path):
    config = ExperimentConfig(
        train=TrainConfig(dataset="fashion_mnist", epochs=1, batch_size=32),
        sigmas=(0.2,),
        s_values=(),
        fractions=(0.01, 0.1),
        num_trials=2,
        methods=("magnitude", "swim"),
        test_subset=48,
        curvature_subset=64,
        label="test",
    )
    kw = {"train_data": _fake(128, 0), "test_data": _fake(64, 1), "progress": False}
    run.run(config, tmp_path / "w", results_dir=tmp_path / "r", **kw)
    text = (tmp_path / "r" / "summary.md").read_text()
    assert "## uniform sigma=0.2" in text and "| swim |" in text
    assert "Monte Carlo over the first 48 of the 64 test images" in text


def test_main_reports_missing_data_in_one_line(tmp_path, monkeypatch, capsys):
    def fail(*a, **k):
        raise RuntimeError("no data\nanywhere")

    monkeypatch.setattr(run, "reproduce", fail)
    assert main.main(["--quick", "--workdir", str(tmp_path / "w")]) == 1
    assert capsys.readouterr().err.strip() == (
        "reproduce-fashion-mnist: error: no data anywhere"
    )
