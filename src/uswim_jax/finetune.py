"""Noise-aware fine-tuning, the authors' in-situ-training baseline
(docs/method.md §7.4, their ``retrain.py``): start from the trained model and
train on with SGD (lr 1e-4,
momentum 0.9), drawing a fresh device-noise instance (sigma_dev on every crossbar
weight, nothing verified) for every mini-batch; the gradient at the noisy
weights updates the clean ones. The fine-tuned model is then programmed like any
other, so its accuracy can be set against selective write-verify at equal
programming cost (with nothing verified it costs the plain writes alone).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from uswim_jax.data import Dataset
from uswim_jax.keys import host_rng, key_stream


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """``steps`` mini-batches of ``batch_size`` with SGD(``learning_rate``,
    ``momentum``) under ``device`` noise (a Gaussian device model)."""

    steps: int = 1000
    batch_size: int = 128
    learning_rate: float = 1e-4
    momentum: float = 0.9
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


def noise_aware_finetune(
    model: Any,
    params: Any,
    train_data: Dataset,
    device: Any,
    config: FinetuneConfig,
) -> tuple[Any, list[float]]:
    """Fine-tunes ``params`` (a Flax variables dict of ``model``) under device
    noise; returns the new params and the loss of every 100th step.

    Each step draws ``device.perturb(fold_in(key, step), params)`` (nothing
    verified), evaluates the loss at the noisy weights in training mode and
    applies the gradient, taken through the noisy forward pass with the noise
    held fixed, to the clean weights. Batch-norm statistics are updated from the
    noisy forward pass, as in the authors' loop.
    """
    x, y = train_data
    n = len(x)
    if n < config.batch_size:
        raise ValueError(
            f"batch_size {config.batch_size} is larger than the training set ({n})"
        )
    tx = optax.sgd(config.learning_rate, momentum=config.momentum)
    base_key = key_stream(config.seed, "finetune")
    order_key = key_stream(config.seed, "finetune_order")

    def step(p, opt_state, xb, yb, k):
        def loss_fn(weights):
            full = {**p, "params": weights}
            noisy = device.perturb(k, full, None)
            # Noise held fixed: gradient of the loss at the noisy weights.
            noisy = jax.tree.map(
                lambda w, v: w + jax.lax.stop_gradient(v - w), full, noisy
            )
            logits, stats = model.train_apply(noisy, xb)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
            return loss, stats

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(p["params"])
        updates, opt_state = tx.update(grads, opt_state, p["params"])
        new = {**p, "params": optax.apply_updates(p["params"], updates)}
        if stats:
            new["batch_stats"] = stats
        return new, opt_state, loss

    losses = []
    with jax.numpy_dtype_promotion("standard"):
        jstep = jax.jit(step)
        opt_state = tx.init(params["params"])
        steps_per_epoch = n // config.batch_size
        perm = None
        for i in range(config.steps):
            e, j = divmod(i, steps_per_epoch)
            if j == 0:
                perm = host_rng(jax.random.fold_in(order_key, e)).permutation(n)
            idx = perm[j * config.batch_size : (j + 1) * config.batch_size]
            params, opt_state, loss = jstep(
                params,
                opt_state,
                jnp.asarray(x[idx]),
                jnp.asarray(y[idx]),
                jax.random.fold_in(base_key, i),
            )
            if i % 100 == 0 or i == config.steps - 1:
                losses.append(float(loss))
    return params, losses
