"""Bad input everywhere: the public API raises a ``ValueError`` naming the
argument (before anything is written), and the ``uswim`` CLI prints one line on
stderr, exits non-zero and leaves no partial output."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _toy import mlp_apply, toy_problem

import uswim_jax as u
from uswim_jax import checkpoint, cli, data, experiment
from uswim_jax.data import Dataset
from uswim_jax.experiment import ExperimentConfig, RunStore
from uswim_jax.models import build_model
from uswim_jax.train import TrainConfig, train

PARAMS, X, Y = toy_problem(n=16)
KEY = jax.random.key(0)
DEV = u.UniformVariation(0.2, 0.02)
ORDER = u.global_order(u.magnitude_score(PARAMS))
N = u.crossbar_size(PARAMS)


def _with(tree, path, fn):
    """A copy of ``tree`` with the leaf at ``path`` replaced by ``fn(leaf)``."""
    tree = jax.tree.map(lambda a: a, tree)
    node = tree
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = fn(node[path[-1]])
    return tree


NAN_PARAMS = _with(PARAMS, ("l1", "kernel"), lambda a: a.at[0, 0].set(jnp.nan))
INF_PARAMS = _with(PARAMS, ("l2", "bias"), lambda a: a.at[0].set(jnp.inf))
BAD_MASK = _with(
    jax.tree.map(lambda a: jnp.ones(a.shape, bool), PARAMS),
    ("l1", "kernel"),
    lambda a: jnp.ones((3, 3), bool),
)
NAN_TREE = jax.tree.map(lambda a: a * jnp.nan, PARAMS)


def _evaluate(params=PARAMS, x=X, y=Y, verified=None, trials=2):
    return u.evaluate(KEY, mlp_apply, params, x, y, DEV, verified, trials)


def _sweep(params=PARAMS, x=X, y=Y, order=ORDER, counts=(0, 10)):
    return u.sweep(KEY, mlp_apply, params, x, y, DEV, order, jnp.asarray(counts), 2)


def _fake(n, seed=0, shape=(28, 28, 1)):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = rng.random((n, *shape), dtype=np.float32)
    return Dataset(x, y, "synthetic", "generated", "train", 10)


# (call, text the message must contain: the argument's name)
API_CASES = {
    # Monte Carlo and sweep
    "evaluate NaN params": (lambda: _evaluate(params=NAN_PARAMS), "params"),
    "evaluate Inf params": (lambda: _evaluate(params=INF_PARAMS), "params"),
    "evaluate empty x": (lambda: _evaluate(x=X[:0], y=Y[:0]), "x"),
    "evaluate mismatched y": (lambda: _evaluate(y=Y[:3]), "y"),
    "evaluate mismatched mask": (lambda: _evaluate(verified=BAD_MASK), "verified"),
    "evaluate mask missing leaf": (
        lambda: _evaluate(verified={"l1": PARAMS["l1"]}),
        "verified",
    ),
    "evaluate 0 trials": (lambda: _evaluate(trials=0), "num_trials"),
    "sweep NaN params": (lambda: _sweep(params=NAN_PARAMS), "params"),
    "sweep NaN x": (lambda: _sweep(x=X.at[0, 0].set(jnp.nan)), "x"),
    "sweep empty x": (lambda: _sweep(x=X[:0], y=Y[:0]), "x"),
    "sweep count above n": (lambda: _sweep(counts=(0, N + 1)), "counts"),
    "sweep decreasing counts": (lambda: _sweep(counts=(5, 1)), "counts"),
    "sweep short order": (lambda: _sweep(order=ORDER[:5]), "order"),
    "sweep float order": (lambda: _sweep(order=ORDER.astype(jnp.float32)), "order"),
    "fractions 1.5": (lambda: u.counts_for_fractions([0.1, 1.5], 10), "fractions"),
    "fractions -0.1": (lambda: u.counts_for_fractions([-0.1], 10), "fractions"),
    "fractions NaN": (lambda: u.counts_for_fractions([float("nan")], 10), "fractions"),
    "cycles_to_target margin": (
        lambda: _sweep().cycles_to_target(-1.0),
        "margin",
    ),
    # selection
    "mask fraction 1.5": (
        lambda: u.mask_from_order(ORDER, PARAMS, fraction=1.5),
        "fraction",
    ),
    "mask fraction -0.5": (
        lambda: u.mask_from_order(ORDER, PARAMS, fraction=-0.5),
        "fraction",
    ),
    "mask count -1": (lambda: u.mask_from_order(ORDER, PARAMS, count=-1), "count"),
    "select fraction 1.5": (
        lambda: u.select(u.magnitude_score(PARAMS), fraction=1.5),
        "fraction",
    ),
    "swim NaN hess": (lambda: u.swim_score(PARAMS, NAN_TREE, PARAMS), "hess"),
    "swim NaN grad": (lambda: u.swim_score(PARAMS, PARAMS, NAN_TREE), "grad"),
    "swim mismatched hess": (
        lambda: u.swim_score(PARAMS, {"l1": PARAMS["l1"]}, PARAMS),
        "hess",
    ),
    "uswim negative s": (lambda: u.uswim_score(PARAMS, PARAMS, PARAMS, s=-1.0), "s"),
    "uswim k_power 3": (
        lambda: u.uswim_score(PARAMS, PARAMS, PARAMS, k_power=3),
        "k_power",
    ),
    "expected_loss NaN hess": (
        lambda: u.expected_loss_score(NAN_TREE, 0.1, 0.01),
        "hess",
    ),
    # device models
    "negative sigma": (lambda: u.UniformVariation(-0.1, 0.01), "sigma"),
    "NaN sigma": (lambda: u.UniformVariation(float("nan"), 0.01), "sigma"),
    "Inf sigma": (lambda: u.UniformVariation(float("inf"), 0.01), "sigma"),
    "negative sigma_verified": (
        lambda: u.UniformVariation(0.1, -0.01),
        "sigma_verified",
    ),
    "weight_bits 7, device_bits 2": (
        lambda: u.UniformVariation(0.1, 0.01, weight_bits=7, device_bits=2),
        "weight_bits",
    ),
    "weight_bits 0": (
        lambda: u.UniformVariation(0.1, 0.01, weight_bits=0),
        "weight_bits",
    ),
    "device_bits 0": (lambda: u.slicing_factor(8, 0), "device_bits"),
    "verify_cycles 0": (
        lambda: u.UniformVariation(0.1, 0.01, verify_cycles=0.0),
        "verify_cycles",
    ),
    "state-dependent s < 0": (
        lambda: u.StateDependentVariation(0.1, 0.01, -2.0),
        "s",
    ),
    "perturb NaN params": (lambda: u.perturb(KEY, NAN_PARAMS, DEV), "params"),
    "perturb mismatched mask": (
        lambda: DEV.perturb(KEY, PARAMS, BAD_MASK),
        "verified",
    ),
    "write_cycles mismatched mask": (
        lambda: DEV.write_cycles(BAD_MASK, PARAMS),
        "verified",
    ),
    "pulse negative sigma": (lambda: u.PulseModel(sigma=-1.0), "sigma"),
    # curvature
    "obd empty x": (lambda: u.obd_over_dataset(mlp_apply, PARAMS, X[:0], Y[:0]), "x"),
    "obd NaN params": (
        lambda: u.obd_over_dataset(mlp_apply, NAN_PARAMS, X, Y),
        "params",
    ),
    "obd mismatched y": (lambda: u.obd_over_dataset(mlp_apply, PARAMS, X, Y[:3]), "y"),
    "ggn empty x": (lambda: u.ggn_diagonal(mlp_apply, PARAMS, X[:0], Y[:0]), "x"),
    "fisher mismatched y": (
        lambda: u.fisher_diagonal(mlp_apply, PARAMS, X, Y[:3]),
        "y",
    ),
    "loss_fn empty x": (lambda: u.make_loss_fn(mlp_apply, X[:0], Y[:0]), "x"),
    "hutchinson 0 probes": (
        lambda: u.hutchinson_diagonal(
            KEY, u.make_loss_fn(mlp_apply, X, Y), PARAMS, num_probes=0
        ),
        "num_probes",
    ),
    "exact NaN params": (
        lambda: u.exact_diagonal(u.make_loss_fn(mlp_apply, X, Y), NAN_PARAMS),
        "params",
    ),
    # models and data
    "unknown model": (lambda: build_model("vgg"), "model"),
    "model weight_bits 1": (lambda: build_model("lenet", weight_bits=1), "weight_bits"),
    "model num_classes 1": (lambda: build_model("lenet", num_classes=1), "num_classes"),
    "lenet on 32x32": (
        lambda: build_model("lenet", input_shape=(32, 32, 3)),
        "lenet",
    ),
    "unknown dataset": (lambda: data.load("imagenet", "train"), "dataset"),
    "unknown split": (lambda: data.load("mnist", "val"), "split"),
    "unknown source": (lambda: data.load("mnist", "train", sources=("web",)), "source"),
    # configs
    "train epochs 0": (lambda: TrainConfig(epochs=0), "epochs"),
    "train batch_size 0": (lambda: TrainConfig(batch_size=0), "batch_size"),
    "train weight_bits 40": (lambda: TrainConfig(weight_bits=40), "weight_bits"),
    "train lr < 0": (lambda: TrainConfig(learning_rate=-1.0), "learning_rate"),
    "train unknown model": (lambda: TrainConfig(model="vgg"), "model"),
    "train unknown dataset": (lambda: TrainConfig(dataset="imagenet"), "dataset"),
    "train optimizer": (lambda: TrainConfig(optimizer="rmsprop"), "optimizer"),
    "unknown method": (lambda: ExperimentConfig(methods=("swim", "foo")), "method"),
    "no methods": (lambda: ExperimentConfig(methods=()), "methods"),
    "config fraction 1.5": (
        lambda: ExperimentConfig(fractions=(0.1, 1.5)),
        "fractions",
    ),
    "config negative sigma": (lambda: ExperimentConfig(sigmas=(-0.1,)), "sigmas"),
    "config Inf sigma": (lambda: ExperimentConfig(sigmas=(float("inf"),)), "sigmas"),
    "config s = 0": (lambda: ExperimentConfig(s_values=(0.0,)), "s_values"),
    "config no setting": (
        lambda: ExperimentConfig(sigmas=(), s_values=()),
        "sigmas",
    ),
    "config trials 0": (lambda: ExperimentConfig(num_trials=0), "num_trials"),
    "config steps_per_chunk 0": (
        lambda: ExperimentConfig(steps_per_chunk=0),
        "steps_per_chunk",
    ),
    "config verify_cycles 0": (
        lambda: ExperimentConfig(verify_cycles=0.0),
        "verify_cycles",
    ),
    "config verified_ratio 2": (
        lambda: ExperimentConfig(verified_ratio=2.0),
        "verified_ratio",
    ),
    "config test_subset 0": (lambda: ExperimentConfig(test_subset=0), "test_subset"),
    "config seed -1": (lambda: ExperimentConfig(seed=-1), "seed"),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_public_api_rejects_bad_input(case):
    call, name = API_CASES[case]
    with pytest.raises(ValueError, match=name):
        call()


# ----------------------------------------------------------------- run folders

TINY = ExperimentConfig(
    train=TrainConfig(epochs=1, batch_size=8),
    sigmas=(0.3,),
    s_values=(),
    fractions=(0.1,),
    methods=("random",),
    num_trials=2,
)


def _bad_data_cases():
    good = _fake(16)
    nan = _fake(16)
    nan.images[0, 0, 0, 0] = np.nan
    labels = _fake(16)
    labels.labels[0] = 10
    return {
        "empty train_data": ({"train_data": good.take(0)}, "train_data"),
        "empty test_data": ({"test_data": good.take(0)}, "test_data"),
        "NaN images": ({"train_data": nan}, "train_data"),
        "labels out of range": ({"test_data": labels}, "test_data"),
        "wrong image shape": (
            {"train_data": _fake(16, shape=(32, 32, 3)), "test_data": _fake(16)},
            "shape",
        ),
        "train set smaller than a batch": ({"train_data": good.take(4)}, "batch_size"),
    }


@pytest.mark.parametrize("case", list(_bad_data_cases()))
def test_experiment_run_rejects_bad_data_and_writes_nothing(case, tmp_path):
    kwargs, name = _bad_data_cases()[case]
    kwargs = {"train_data": _fake(16), "test_data": _fake(16, 1), **kwargs}
    with pytest.raises(ValueError, match=name):
        experiment.run(TINY, tmp_path / "run", progress=False, **kwargs)
    assert not (tmp_path / "run").exists()  # not even config.json


@pytest.mark.parametrize("case", ["empty train_data", "NaN images"])
def test_train_rejects_bad_data_and_writes_nothing(case, tmp_path):
    kwargs, name = _bad_data_cases()[case]
    kwargs = {"train_data": _fake(16), "test_data": _fake(16, 1), **kwargs}
    with pytest.raises(ValueError, match=name):
        train(TINY.train, tmp_path / "run", progress=False, **kwargs)
    assert not (tmp_path / "run").exists()


def test_changed_config_is_refused_with_how_to_start_anew(tmp_path):
    RunStore(tmp_path).open({"experiment": TINY.to_json()})
    other = dataclasses.replace(TINY, num_trials=3)
    with pytest.raises(ValueError, match="different config.*new run folder"):
        experiment.run(other, tmp_path, train_data=_fake(16), test_data=_fake(16, 1))


def test_changed_environment_is_refused(tmp_path):
    RunStore(tmp_path).open({"experiment": TINY.to_json()})
    (tmp_path / "manifest.json").write_text(
        json.dumps({"packages": {"jax": "0.0.1"}, "backend": "cpu"})
    )
    with pytest.raises(ValueError, match="packages.jax.*new run folder"):
        experiment.run(TINY, tmp_path, train_data=_fake(16), test_data=_fake(16, 1))
    assert not (tmp_path / "train").exists()


def test_execution_fields_are_not_part_of_the_config_hash():
    chunked = dataclasses.replace(
        TINY, steps_per_chunk=2, chunk_size=3, eval_batch_size=7
    )
    assert chunked.to_json() == TINY.to_json()
    assert chunked.execution_json() == {
        "chunk_size": 3,
        "eval_batch_size": 7,
        "steps_per_chunk": 2,
    }


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    checkpoint.save(tmp_path / "a.ckpt", {"w": np.ones(3)})
    raw = (tmp_path / "a.ckpt").read_bytes()
    (tmp_path / "a.ckpt").write_bytes(raw[:-2])
    with pytest.raises(checkpoint.CorruptCheckpointError, match="damaged"):
        checkpoint.load(tmp_path / "a.ckpt", {"w": np.ones(3)})


# ----------------------------------------------------------------- the CLI


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "error" in err[0] or "interrupted" in err[0]
    return err[0]


@pytest.mark.parametrize(
    "flags, text",
    [
        (["--fractions", "0.1,1.5"], "fractions"),
        (["--fractions", "0.5,0.1"], "fractions"),
        (["--sigmas", "-0.1"], "sigmas"),
        (["--sigmas", "nan"], "sigmas"),
        (["--sigmas", "a,b"], "numbers"),
        (["--s-values", "0"], "s_values"),
        (["--s-values", "", "--sigmas", ""], "sigmas"),
        (["--methods", "swim,foo"], "foo"),
        (["--trials", "0"], "positive"),
        (["--steps-per-chunk", "0"], "positive"),
        (["--model", "vgg"], "vgg"),
        (["--dataset", "imagenet"], "imagenet"),
    ],
)
def test_cli_sweep_bad_flags_exit_2_nothing_written(flags, text, capsys, tmp_path):
    run_dir = tmp_path / "run"
    try:
        code = cli.main(["sweep", "--run-dir", str(run_dir), *flags])
    except SystemExit as e:  # argparse errors
        code = e.code
    assert code == 2
    assert text in _one_line_error(capsys)
    assert not run_dir.exists()


def test_cli_sweep_corrupt_cache_exit_1_nothing_written(capsys, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "mnist_train.npz").write_bytes(b"not a zip file")
    monkeypatch.setenv("USWIM_DATA_DIR", str(cache))
    monkeypatch.delenv("USWIM_MNIST_PATH", raising=False)
    code = cli.main(["sweep", "--quick", "--run-dir", str(tmp_path / "run")])
    assert code == 1
    assert "corrupt cache file" in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_cli_sensitivity_corrupt_checkpoint_exit_1(capsys, tmp_path):
    run_dir = tmp_path / "trained"
    RunStore(run_dir).open({"train": TrainConfig(epochs=1).to_json()})
    (run_dir / "checkpoint.ckpt").write_bytes(b"USWIMCKPT1\n" + b"0" * 64 + b"\nxx")
    code = cli.main(["sensitivity", "--run-dir", str(run_dir)])
    assert code == 1
    assert "checksum" in _one_line_error(capsys)
    assert not (run_dir / "sensitivity").exists()


def test_cli_sensitivity_not_a_run_folder_exit_1(capsys, tmp_path):
    code = cli.main(["sensitivity", "--run-dir", str(tmp_path / "nothing")])
    assert code == 1
    assert "not a run folder" in _one_line_error(capsys)


def test_cli_interrupt_is_one_line_and_exit_130(capsys, monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "run", interrupted)
    monkeypatch.setattr(data, "load", lambda *a, **k: _fake(16))
    code = cli.main(["sweep", "--quick", "--run-dir", str(tmp_path / "run")])
    assert code == 130
    assert "interrupted" in _one_line_error(capsys)


def test_reproduce_mnist_interrupt_is_one_line_and_exit_130(capsys, monkeypatch):
    from experiments.mnist import main, run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "run", interrupted)
    assert main.main(["--quick", "--no-progress"]) == 130
    assert "interrupted" in _one_line_error(capsys)


def test_reproduce_mnist_bad_steps_per_chunk_exit_2(capsys, tmp_path):
    from experiments.mnist import main

    with pytest.raises(SystemExit) as e:
        main.main(["--steps-per-chunk", "0", "--workdir", str(tmp_path / "w")])
    assert e.value.code == 2
    assert "steps_per_chunk" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
