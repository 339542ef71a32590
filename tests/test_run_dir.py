"""A rejected command writes nothing to its run folder, so the corrected
command can use the same folder (instead of being refused as "a different
config")."""

import numpy as np
import pytest

from uswim_jax import cli, experiment
from uswim_jax.data import Dataset
from uswim_jax.experiment import ExperimentConfig
from uswim_jax.train import TrainConfig, train


def _fake(n, seed=0, shape=(28, 28, 1)):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = rng.random((n, *shape), dtype=np.float32)
    return Dataset(x, y, "synthetic", "generated", "train", 10)


@pytest.mark.parametrize(
    "train_shape, match",
    [((8, 8, 1), "28x28"), ((28, 28, 1), "test_data")],
    ids=["image shape", "test images unlike the training images"],
)
def test_train_refused_on_bad_images_writes_nothing(tmp_path, train_shape, match):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        train(
            TrainConfig(epochs=1, batch_size=8),
            run,
            train_data=_fake(16, shape=train_shape),
            test_data=_fake(8, 1, shape=(8, 8, 1)),
            progress=False,
        )
    assert not run.exists()


def test_experiment_refused_on_batch_size_writes_nothing(tmp_path):
    run = tmp_path / "run"
    config = ExperimentConfig(train=TrainConfig(epochs=1, batch_size=64))
    with pytest.raises(ValueError, match="batch_size"):
        experiment.run(
            config, run, train_data=_fake(16), test_data=_fake(8, 1), progress=False
        )
    assert not run.exists()


def test_rejected_then_corrected_command_in_the_same_run_dir(
    tmp_path, stub_data, capsys
):
    stub_data(32)
    run = str(tmp_path / "run")
    argv = ["train", "--epochs", "1", "--no-progress", "--run-dir", run]
    assert cli.main([*argv, "--batch-size", "64"]) == 1  # 32 training images
    assert "batch_size 64" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert cli.main([*argv, "--batch-size", "16"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert (tmp_path / "run" / "checkpoint.ckpt").is_file()


def test_rejected_then_corrected_sweep_gets_past_the_config_check(
    tmp_path, stub_data, monkeypatch, capsys
):
    from uswim_jax.experiment import pipeline

    class Trained(Exception):
        """Raised where the corrected sweep starts training."""

    def fake_train(*args, **kwargs):
        raise Trained

    stub_data(32)
    monkeypatch.setattr(pipeline, "train", fake_train)
    run = str(tmp_path / "run")
    argv = ["sweep", "--quick", "--no-progress", "--run-dir", run]
    assert cli.main([*argv, "--batch-size", "64"]) == 1
    assert "batch_size 64" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(Trained):
        cli.main([*argv, "--batch-size", "16"])
    assert (tmp_path / "run" / "config.json").is_file()
