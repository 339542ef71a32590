"""A tiny MLP classifier on separable generated data, shared by the Monte Carlo
and sweep tests."""

import jax
import jax.numpy as jnp
import numpy as np


def mlp_apply(params, x):
    h = jnp.tanh(x @ params["l1"]["kernel"] + params["l1"]["bias"][None, :])
    return h @ params["l2"]["kernel"] + params["l2"]["bias"][None, :]


def toy_problem(n=256, d=8, hidden=16, classes=4, seed=0):
    """Params of a fixed random MLP, and data labelled by that MLP (so clean
    accuracy is 100 % and noise lowers it)."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = {
        "l1": {
            "kernel": jax.random.normal(k1, (d, hidden)) / np.sqrt(d),
            "bias": jnp.zeros(hidden),
        },
        "l2": {
            "kernel": jax.random.normal(k2, (hidden, classes)) / np.sqrt(hidden),
            "bias": jnp.zeros(classes),
        },
    }
    x = jax.random.normal(k3, (n, d))
    y = jnp.argmax(mlp_apply(params, x), -1).astype(jnp.int32)
    return params, x, y
