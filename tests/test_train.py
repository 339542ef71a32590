"""Training: lowers the loss, is deterministic, checkpoints and resumes."""

import json

import jax
import numpy as np
import pytest

from uswim_jax.data import Dataset
from uswim_jax.experiment import CorruptFileError
from uswim_jax.train import TrainConfig, augment_batch, load_run, train


def _task(n, seed, shape=(28, 28, 1)):
    """Ten classes, each a bright square at its own place, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = (rng.random((n, *shape)) * 0.3).astype(np.float32)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 5)
        x[i, 4 + 10 * r : 8 + 10 * r, 2 + 5 * col : 5 + 5 * col, :] = 1.0
    return Dataset(x, y, "synthetic", "generated", "train", 10)


@pytest.fixture(scope="module")
def task():
    return _task(512, 0), _task(128, 1)


def _params_equal(a, b):
    return all(
        np.array_equal(u, v)
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.fixture(scope="module")
def straight(task, tmp_path_factory):
    """Two epochs on ``task`` and their run folder."""
    tr, te = task
    folder = tmp_path_factory.mktemp("straight")
    config = TrainConfig(epochs=2, batch_size=64)
    kw = {"train_data": tr, "test_data": te, "progress": False}
    return train(config, folder, **kw), folder


def test_two_epochs_lower_the_loss(straight):
    """The default suite's check that training learns (the 4-epoch one below
    is slow): the second epoch's loss is below the first's, test accuracy above
    chance, and metrics.json says what ran."""
    result, folder = straight
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert result.test_accuracy > 0.1  # chance is 0.1
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["dataset"] == "synthetic" and metrics["num_weights"] == 105_918


@pytest.mark.slow
def test_training_lowers_the_loss(tmp_path, task):
    tr, te = task
    result = train(
        # 4 epochs: at 3 the loss halves for some seeds' draws and not others
        # (seed 0: 2.21 -> 1.26 at 3 epochs, 0.52 at 4; seeds 1, 2: below 0.12).
        TrainConfig(epochs=4, batch_size=64),
        tmp_path,
        train_data=tr,
        test_data=te,
        progress=False,
    )
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.test_accuracy > 0.5  # chance is 0.1
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["dataset"] == "synthetic" and metrics["num_weights"] == 105_918


def test_same_seed_same_params_and_resume_equals_straight_run(tmp_path, task, straight):
    tr, te = task
    kw = {"train_data": tr, "test_data": te, "progress": False}
    straight = straight[0]
    again = train(TrainConfig(epochs=2, batch_size=64), tmp_path / "b", **kw)
    assert _params_equal(straight.params, again.params)
    # Interrupted after one epoch: a run folder with a 1-epoch checkpoint, then
    # the 2-epoch config resumes from it.
    train(TrainConfig(epochs=1, batch_size=64), tmp_path / "c", **kw)
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["config"]["train"]["epochs"] = 2
    from uswim_jax.experiment import config_hash

    cfg["hash"] = config_hash(cfg["config"])
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    resumed = train(TrainConfig(epochs=2, batch_size=64), tmp_path / "c", **kw)
    assert _params_equal(straight.params, resumed.params)
    assert [h["epoch"] for h in resumed.history] == [1, 2]


def test_save_load_identical_params(tmp_path, task):
    tr, te = task
    result = train(
        TrainConfig(epochs=1, batch_size=64),
        tmp_path,
        train_data=tr,
        test_data=te,
        progress=False,
    )
    model, params, config = load_run(tmp_path)
    assert config.epochs == 1 and model.name == "lenet"
    assert _params_equal(result.params, params)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, task):
    tr, te = task
    train(
        TrainConfig(epochs=1, batch_size=64),
        tmp_path,
        train_data=tr,
        test_data=te,
        progress=False,
    )
    ckpt = tmp_path / "checkpoint.ckpt"
    raw = bytearray(ckpt.read_bytes())
    raw[-10] ^= 0xFF
    ckpt.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="checksum"):
        load_run(tmp_path)
    ckpt.write_bytes(b"hello")
    with pytest.raises(CorruptFileError, match="not a uswim_jax"):
        load_run(tmp_path)


def test_changed_config_is_refused(tmp_path, task):
    tr, te = task
    train(
        TrainConfig(epochs=1, batch_size=64),
        tmp_path,
        train_data=tr,
        test_data=te,
        progress=False,
    )
    with pytest.raises(ValueError, match="different config"):
        train(
            TrainConfig(epochs=1, batch_size=32),
            tmp_path,
            train_data=tr,
            test_data=te,
            progress=False,
        )


def test_batch_norm_model_trains(tmp_path):
    tr, te = _task(64, 0, (16, 16, 3)), _task(16, 1, (16, 16, 3))
    result = train(
        TrainConfig(
            model="resnet18",
            dataset="cifar10",
            epochs=1,
            batch_size=32,
            augment=True,
            width=8,
        ),
        tmp_path,
        train_data=tr,
        test_data=te,
        progress=False,
    )
    assert np.isfinite(result.history[0]["train_loss"])
    # The running statistics moved off their start (mean 0, variance 1).
    stats = jax.tree_util.tree_leaves_with_path(result.params["batch_stats"])
    means = [v for k, v in stats if "mean" in jax.tree_util.keystr(k)]
    assert means and all(float(np.abs(m).max()) > 0 for m in means)


def test_augment_keeps_shape_and_pixels():
    x = jax.random.uniform(jax.random.key(0), (8, 32, 32, 3))
    y = augment_batch(jax.random.key(1), x)
    assert y.shape == x.shape
    assert float(y.max()) <= float(x.max())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"model": "vgg"}, "unknown model"),
        ({"dataset": "imagenet"}, "unknown dataset"),
        ({"epochs": 0}, "epochs"),
        ({"optimizer": "rmsprop"}, "optimizer"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)
