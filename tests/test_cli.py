"""The ``uswim`` command: help, one-line errors with exit status 2 or 1."""

import pytest

from uswim_jax import cli


def test_help_lists_train(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    assert "train" in capsys.readouterr().out


def test_subcommand_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    assert "--epochs" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nonsense"],
        ["train", "--epochs", "zero"],
        ["train", "--epochs", "0"],
        ["train", "--model", "vgg"],
        ["train", "--dataset", "imagenet"],
    ],
)
def test_bad_arguments_one_line_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error" in err


def test_bad_value_after_parsing_exit_2(capsys, tmp_path):
    code = cli.main(["train", "--weight-bits", "40", "--run-dir", str(tmp_path)])
    assert code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_missing_data_one_line_exit_1(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("USWIM_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    code = cli.main(["train", "--dataset", "cifar10", "--run-dir", str(tmp_path / "r")])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not load 'cifar10'" in err[0]
    assert not (tmp_path / "r").exists()


def _captured_sweep_config(argv, monkeypatch):
    """The ExperimentConfig ``uswim sweep`` would run, without running it."""
    from uswim_jax import data, experiment

    class Stop(Exception):
        pass

    seen = {}

    def fake_run(config, run_dir, **kwargs):
        seen["config"] = config
        raise Stop

    monkeypatch.setattr(experiment, "run", fake_run)
    monkeypatch.setattr(data, "load", lambda *a, **k: None)
    with pytest.raises(Stop):
        cli.main(["sweep", *argv])
    return seen["config"]


def test_sweep_flags_reach_the_config(monkeypatch, tmp_path):
    config = _captured_sweep_config(
        [
            "--quantized",
            "--lr",
            "0.01",
            "--q-scale",
            "authors",
            "--avg-pool",
            "authors",
            "--no-first-order",
            "--k-power",
            "2",
            "--run-dir",
            str(tmp_path / "r"),
        ],
        monkeypatch,
    )
    assert config.train.weight_bits == 4  # the authors' QLeNet
    assert config.train.learning_rate == 0.01
    assert (config.q_scale, config.avg_pool) == ("authors", "authors")
    assert not config.first_order and config.k_power == 2


def test_sweep_defaults_are_the_library_defaults(monkeypatch, tmp_path):
    from uswim_jax.experiment import ExperimentConfig

    config = _captured_sweep_config(["--run-dir", str(tmp_path / "r")], monkeypatch)
    base = ExperimentConfig()
    for name in ("first_order", "k_power", "avg_pool", "q_scale", "num_trials"):
        assert getattr(config, name) == getattr(base, name)
    assert config.train.weight_bits is None and config.train.epochs == 20


def test_q_scale_quirk_without_quantization_exit_2(capsys, tmp_path):
    code = cli.main(["sweep", "--q-scale", "authors", "--run-dir", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "quantized" in err[0]
    assert not (tmp_path / "r").exists()
