"""Training with optax: a jitted step, a progress bar, checkpoints every epoch,
resume from the run folder. Deterministic from the seed.

Recipes as the authors (docs/method.md §9): Adam 1e-3 for LeNet and the ConvNet; SGD
0.01, momentum 0.9, weight decay 5e-4 with cosine annealing for ResNet-18; batch
128. Each epoch visits a fresh permutation of the training set in full batches
(the last partial batch is dropped, so batch-norm never sees a tiny batch).
"""

import dataclasses
import functools
import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from uswim_jax._checks import check_dataset
from uswim_jax.data import DATASETS, Dataset, load
from uswim_jax.data._load import SPECS
from uswim_jax.keys import host_rng, key_stream
from uswim_jax.models import MODELS, Model, build_model

CHECKPOINT = "checkpoint.ckpt"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What to train and how. ``None`` fields take the model's recipe."""

    model: str = "lenet"
    dataset: str = "mnist"
    epochs: int = 20
    batch_size: int = 128
    seed: int = 0
    optimizer: str | None = None
    learning_rate: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.9
    weight_bits: int | None = None
    augment: bool = False
    train_subset: int | None = None
    # ResNet-18's base channel count (None: 64); left out of ``to_json`` when
    # unset so run folders made before the field existed keep their hash.
    width: int | None = None

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(
                f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}"
            )
        if self.dataset not in DATASETS:
            raise ValueError(
                f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}"
            )
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.optimizer not in (None, "adam", "sgd"):
            raise ValueError(
                f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}"
            )
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.train_subset is not None and (
            not isinstance(self.train_subset, int) or self.train_subset < 1
        ):
            raise ValueError(f"train_subset must be >= 1, got {self.train_subset}")
        if self.weight_bits is not None and (
            not isinstance(self.weight_bits, int)
            or isinstance(self.weight_bits, bool)
            or not 2 <= self.weight_bits <= 16
        ):
            raise ValueError(
                f"weight_bits must be an integer in [2, 16], got {self.weight_bits!r}"
            )
        for name in ("weight_decay", "momentum"):
            v = getattr(self, name)
            if v is not None and not (
                isinstance(v, int | float) and math.isfinite(v) and v >= 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if (
            not isinstance(self.seed, int)
            or isinstance(self.seed, bool)
            or not 0 <= self.seed < 2**32
        ):
            raise ValueError(
                f"seed must be an integer in [0, 2**32), got {self.seed!r}"
            )
        if self.width is not None and (
            self.model != "resnet18"
            or not isinstance(self.width, int)
            or isinstance(self.width, bool)
            or self.width < 1
        ):
            raise ValueError(
                f"width must be a positive integer and needs model 'resnet18', "
                f"got width={self.width!r} with model {self.model!r}"
            )

    def resolved(self) -> "TrainConfig":
        """The config with the model's recipe filled in."""
        sgd = self.model == "resnet18"
        return dataclasses.replace(
            self,
            optimizer=self.optimizer or ("sgd" if sgd else "adam"),
            learning_rate=self.learning_rate or (0.01 if sgd else 1e-3),
            weight_decay=(
                self.weight_decay
                if self.weight_decay is not None
                else (5e-4 if sgd else 0.0)
            ),
        )

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d.get("width") is None:
            d.pop("width", None)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrainConfig":
        return cls(**d)


class TrainState(NamedTuple):
    params: Any  # the variables dict
    opt_state: Any
    epoch: jax.Array  # int32 scalar: completed epochs


class TrainResult(NamedTuple):
    model: Model
    params: Any
    history: list[dict[str, float]]
    test_accuracy: float
    dataset: str  # what was trained on, e.g. "mnist-10k"


def make_optimizer(config: TrainConfig, steps_per_epoch: int):
    """The optax transformation of the (resolved) config."""
    c = config.resolved()
    if c.optimizer == "adam":
        tx = optax.adam(c.learning_rate)
    else:
        schedule = optax.cosine_decay_schedule(
            c.learning_rate, decay_steps=max(1, c.epochs * steps_per_epoch)
        )
        tx = optax.sgd(schedule, momentum=c.momentum)
    if c.weight_decay:
        # PyTorch's SGD weight decay: added to the gradient before the update.
        tx = optax.chain(optax.add_decayed_weights(c.weight_decay), tx)
    return tx


def augment_batch(key: jax.Array, x: jax.Array, pad: int = 4) -> jax.Array:
    """Random horizontal flip and random crop with ``pad`` pixels of zero
    padding, per image. The key is consumed."""
    flip_key, crop_key = jax.random.split(key)
    n, h, w, c = x.shape
    flip = jax.random.bernoulli(flip_key, 0.5, (n,))
    x = jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
    zero = jnp.zeros((), offsets.dtype)
    return jax.vmap(
        lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], zero), (h, w, c))
    )(padded, offsets)


def make_train_step(model: Model, tx, augment: bool):
    """A pure training step ``(params, opt_state, x, y, key) -> (params,
    opt_state, loss, accuracy)``; the caller jits it."""

    def step(params, opt_state, x, y, key):
        if augment:
            x = augment_batch(key, x)

        def loss_fn(p):
            logits, stats = model.train_apply({**params, "params": p}, x)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, (logits, stats)

        (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params["params"]
        )
        updates, opt_state = tx.update(grads, opt_state, params["params"])
        new = {**params, "params": optax.apply_updates(params["params"], updates)}
        if stats:
            new["batch_stats"] = stats
        acc = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
        return new, opt_state, loss, acc

    return step


def accuracy(
    apply_fn, params: Any, x: np.ndarray, y: np.ndarray, batch_size: int = 1000
) -> float:
    """Clean test accuracy in [0, 1], evaluated in batches (the last one padded)."""
    if len(x) == 0:
        raise ValueError("accuracy needs at least one sample")
    correct = 0
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        n = len(xb)
        if n < batch_size and len(x) > batch_size:
            xb = np.concatenate(
                [xb, np.zeros((batch_size - n, *xb.shape[1:]), xb.dtype)]
            )
        pred = np.asarray(_predict(params, xb, apply_fn=apply_fn))[:n]
        correct += int(np.sum(pred == y[i : i + n]))
    return correct / len(x)


@functools.partial(jax.jit, static_argnames="apply_fn")
def _predict(params: Any, xb: Any, *, apply_fn) -> jax.Array:
    """Predicted classes; one compilation per (equal) ``apply_fn`` and shape."""
    return jnp.argmax(apply_fn(params, xb), -1)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _init_state(model: Model, tx, seed: int) -> TrainState:
    params = model.init(key_stream(seed, "init"))
    return TrainState(params, tx.init(params["params"]), jnp.zeros((), jnp.int32))


def _run_config(config: TrainConfig) -> dict[str, Any]:
    return {"train": config.to_json()}


def check_train_inputs(
    config: TrainConfig, train_data: Dataset, test_data: Dataset
) -> tuple[Model, Dataset]:
    """Checks a training config against its data without writing anything.

    Args:
        config: what to train.
        train_data, test_data: the data it will see.

    Returns:
        The model :func:`train` builds, and the training data it trains on (the
        first ``config.train_subset`` samples when set).

    Raises:
        ValueError: bad data (empty, NaN, labels out of range), test images of
            another shape than the training images, a model that does not take
            the images, or a batch larger than the training set.
    """
    c = config.resolved()
    if c.train_subset is not None:
        train_data = train_data.take(c.train_subset)
    check_dataset("train_data", train_data)
    check_dataset("test_data", test_data)
    shape_train = tuple(np.shape(train_data.images)[1:])
    shape_test = tuple(np.shape(test_data.images)[1:])
    if shape_train != shape_test:
        raise ValueError(
            f"test_data images have shape {shape_test}, train_data {shape_train}"
        )
    if len(train_data) < c.batch_size:
        raise ValueError(
            f"batch_size {c.batch_size} is larger than the training set "
            f"({len(train_data)} samples)"
        )
    model = build_model(
        c.model,
        num_classes=train_data.num_classes,
        input_shape=shape_train,
        weight_bits=c.weight_bits,
        width=c.width,
    )
    return model, train_data


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    train_data: Dataset | None = None,
    test_data: Dataset | None = None,
    progress: bool = True,
) -> TrainResult:
    """Trains (or resumes, or reuses) a model in ``run_dir``.

    The folder gets ``config.json``, ``manifest.json``, ``checkpoint.ckpt`` (after
    every epoch, atomically), ``history.json`` and ``metrics.json``. Calling again
    with the same config resumes from the last finished epoch; a finished run is
    loaded, not retrained. A different config in the same folder is refused.

    Args:
        config: what to train.
        run_dir: the run folder.
        train_data, test_data: arrays to use instead of ``data.load``.
        progress: show a progress bar.

    Returns:
        The model, trained params, per-epoch history, clean test accuracy and the
        name of the dataset actually used (e.g. ``mnist-10k``).

    Raises:
        ValueError: as :func:`check_train_inputs` (nothing is written then), or
            a run folder holding a different config.
    """
    c = config.resolved()
    if train_data is None:
        train_data = load(c.dataset, "train")
    if test_data is None:
        test_data = load(c.dataset, "test")
    # Everything is checked before the run folder is touched, so a corrected
    # command can reuse the folder.
    model, train_data = check_train_inputs(c, train_data, test_data)
    # Imported here: uswim_jax.experiment imports this module.
    from uswim_jax.experiment.store import RunStore, manifest

    store = RunStore(run_dir).open(
        _run_config(config),
        manifest(
            seed=c.seed, dataset=train_data.name, dataset_source=train_data.source
        ),
    )
    x_train, y_train = train_data
    x_test, y_test = test_data
    steps = len(x_train) // c.batch_size
    tx = make_optimizer(c, steps)
    state = _init_state(model, tx, c.seed)
    history: list[dict[str, float]] = []
    saved = store.load_checkpoint(state, CHECKPOINT)
    if saved is not None:
        state = saved
        history = (store.read_json("history.json") or [])[: int(state.epoch)]

    # optax relies on standard dtype promotion; keep it even when a caller (or
    # the test suite) runs with jax_numpy_dtype_promotion="strict".
    with jax.numpy_dtype_promotion("standard"):
        params = _train_epochs(
            c, model, tx, state, history, store, train_data, test_data, progress
        )
    test_acc = accuracy(model.apply_fn, params, x_test, y_test)
    store.write_json(
        "metrics.json",
        {
            "test_accuracy": test_acc,
            "dataset": test_data.name,
            "dataset_source": test_data.source,
            "num_test": len(test_data),
            "num_train": len(x_train),
            "num_weights": model.num_weights(params),
            "epochs": c.epochs,
        },
    )
    return TrainResult(model, params, history, test_acc, train_data.name)


def _train_epochs(c, model, tx, state, history, store, train_data, test_data, progress):
    """The epoch loop of :func:`train`; appends to ``history`` and saves it and
    the checkpoint in ``store`` after every epoch; returns params."""
    x_train, y_train = train_data
    x_test, y_test = test_data
    steps = len(x_train) // c.batch_size
    step = jax.jit(make_train_step(model, tx, c.augment), donate_argnums=(0, 1))
    aug_key = key_stream(c.seed, "augment")
    order_key = key_stream(c.seed, "data_order")
    params, opt_state = state.params, state.opt_state
    for epoch in range(int(state.epoch), c.epochs):
        perm = host_rng(jax.random.fold_in(order_key, epoch)).permutation(len(x_train))
        bar = _progress(steps, f"epoch {epoch + 1}/{c.epochs}", progress)
        losses, accs = [], []
        for i in range(steps):
            idx = perm[i * c.batch_size : (i + 1) * c.batch_size]
            key = jax.random.fold_in(aug_key, epoch * steps + i)
            params, opt_state, loss, acc = step(
                params, opt_state, x_train[idx], y_train[idx], key
            )
            losses.append(loss)
            accs.append(acc)
            if bar is not None:
                bar.update(1)
                if i % 10 == 0 or i == steps - 1:
                    bar.set_postfix(loss=f"{float(loss):.4f}", acc=f"{float(acc):.3f}")
        if bar is not None:
            bar.close()
        test_acc = accuracy(model.apply_fn, params, x_test, y_test)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(jax.device_get(losses))),
                "train_accuracy": float(np.mean(jax.device_get(accs))),
                "test_accuracy": test_acc,
            }
        )
        if progress:
            h = history[-1]
            print(
                f"epoch {epoch + 1}/{c.epochs}: loss {h['train_loss']:.4f}, train "
                f"acc {100 * h['train_accuracy']:.2f}%, test acc "
                f"{100 * test_acc:.2f}% ({test_data.name})",
                flush=True,
            )
        # History first: a kill between the two writes only repeats an epoch.
        store.write_json("history.json", history)
        store.save_checkpoint(
            TrainState(params, opt_state, jnp.asarray(epoch + 1, jnp.int32)),
            CHECKPOINT,
        )
    return params


def load_run(run_dir: str | os.PathLike) -> tuple[Model, Any, TrainConfig]:
    """The model, trained params and config of a finished training run.

    Raises:
        FileNotFoundError: not a run folder, or no checkpoint yet.
        CorruptFileError: a file of the folder (e.g. the checkpoint) is damaged
            (``uswim_jax.experiment.store``; a ``ValueError``).
    """
    from uswim_jax.experiment.store import RunStore

    store = RunStore(run_dir)
    record = store.read_json("config.json")
    if record is None:
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json)")
    try:
        config = TrainConfig.from_json(record["config"]["train"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{store.root / 'config.json'} is not a training config ({e})"
        ) from e
    c = config.resolved()
    spec = SPECS[c.dataset]
    model = build_model(
        c.model,
        num_classes=spec.num_classes,
        input_shape=spec.shape,
        weight_bits=c.weight_bits,
        width=c.width,
    )
    tx = make_optimizer(c, 1)
    state = store.load_checkpoint(_init_state(model, tx, c.seed), CHECKPOINT)
    if state is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet")
    return model, state.params, config
