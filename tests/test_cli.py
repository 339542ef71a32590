"""The ``uswim`` command: help, one-line errors with exit status 2 or 1."""

import dataclasses

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
    code = cli.main(
        [
            "train",
            "--model",
            "convnet",
            "--dataset",
            "cifar10",
            "--run-dir",
            str(tmp_path / "r"),
        ]
    )
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


def _all_parsers(parser):
    """The parser and its subcommands' parsers, with their names."""
    import argparse

    out = [("uswim", parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += [(f"uswim {name}", p) for _, p in _all_parsers(sub)]
    return out


def test_every_flag_has_a_help_text():
    parsers = _all_parsers(cli.build_parser())
    assert {name for name, _ in parsers} >= {"uswim train", "uswim sweep"}
    for name, parser in parsers:
        for action in parser._actions:
            assert (action.help or "").strip(), (name, action.option_strings)


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_help_shows_defaults_and_which_model_takes_which_dataset(command, capsys):
    from uswim_jax.data import DATASETS

    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: lenet)" in out and "(default: mnist)" in out
    assert "(default: 0)" in out  # --seed: a falsy default is still shown
    table = out.split("models per dataset", 1)[1]
    for name in DATASETS:
        assert name in table
    assert "digits 8x8x1 resnet18" in table
    assert "mnist 28x28x1 lenet, resnet18" in table


def test_help_lists_every_method_name(capsys):
    from uswim_jax.experiment import METHODS

    with pytest.raises(SystemExit):
        cli.main(["sweep", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "from: " + ", ".join(METHODS) in out.replace("- ", "-")


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_model_that_does_not_take_the_dataset_is_refused_early(
    command, capsys, tmp_path, monkeypatch
):
    from uswim_jax import data

    def no_load(*args, **kwargs):
        raise AssertionError("data loaded before the model check")

    monkeypatch.setattr(data, "load", no_load)
    run = tmp_path / "r"
    code = cli.main(
        [command, "--model", "lenet", "--dataset", "digits", "--run-dir", str(run)]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "lenet" in err[0] and "digits" in err[0] and "resnet18" in err[0]
    assert not run.exists()


_NO_FLAX = """
import sys
sys.modules["flax"] = None  # what a core-only install looks like to `import flax`
from uswim_jax import cli
codes = []
for argv in (["--help"], ["train", "--help"], ["sweep", "--quick"]):
    try:
        codes.append(cli.main(argv))
    except SystemExit as e:
        codes.append(e.code)
print(codes)
"""


def test_core_only_install_says_which_extra_to_install(run_python):
    proc = run_python(_NO_FLAX, env={"USWIM_DEBUG": None}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    codes = eval(proc.stdout.strip().splitlines()[-1])
    assert len(codes) == 3 and all(c not in (0, None) for c in codes)
    err = proc.stderr.strip().splitlines()
    assert len(err) == 3, proc.stderr  # one line per command, no traceback
    for line in err:
        assert "pip install 'uswim_jax[experiments]'" in line and "flax" in line


@pytest.mark.parametrize("quantized", [False, True], ids=["lenet", "qlenet"])
def test_sweep_quick_is_make_reproduce_mnist_quick(
    monkeypatch, stub_data, tmp_path, quantized
):
    """``uswim sweep --quick`` and ``make reproduce-mnist ARGS=--quick`` read one
    definition (``experiment.presets``): the same config up to the label (which
    names the model), hence the same run; ``--quantized`` gives the QLeNet's."""
    import uswim_jax.experiment
    from experiments.mnist.configs import default

    class Built(Exception):
        pass

    def capture(config, run_dir, **kwargs):
        raise Built(config)

    stub_data(4)
    monkeypatch.setattr(uswim_jax.experiment, "run", capture)
    argv = ["sweep", "--quick", "--no-progress", "--run-dir", str(tmp_path / "run")]
    with pytest.raises(Built) as got:
        cli.main([*argv, *(["--quantized"] if quantized else [])])
    built = got.value.args[0]
    # make reproduce-mnist --quick runs the QLeNet and the float LeNet.
    (want,) = [
        c
        for c in default.get_quick_config()
        if (c.train.weight_bits is not None) == quantized
    ]
    assert built == dataclasses.replace(want, label=built.label)
    # A flag still wins over the preset.
    with pytest.raises(Built) as got:
        cli.main([*argv, "--avg-pool", "exact"])
    assert got.value.args[0].avg_pool == "exact"
