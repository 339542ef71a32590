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
