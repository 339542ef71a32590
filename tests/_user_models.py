"""One tiny LeNet-like CNN written the four ways a user brings a model: plain lax
(a dict of arrays and a function), Flax linen, Flax NNX (split state) and equinox
(partitioned module).

All four compute the same function from the same weights (drawn from ``key``):
conv 3x3 (1 -> 4) -> relu -> 2x2 average pool -> conv 3x3 (4 -> 8) -> relu ->
flatten (H, W, C order) -> dense 72 -> 16 -> relu -> dense 16 -> 4, on NHWC
inputs of shape ``INPUT_SHAPE``. So their clean logits agree, their crossbar
holds ``KERNEL_COUNT`` weights, and their curvature agrees up to the layout of
each leaf (equinox stores conv kernels OIHW and dense weights (out, in)).

Usage::

    apply_fn, params, input_shape, num_classes = build("nnx", jax.random.key(0))
    x, y = make_data(apply_fn, params, jax.random.key(1), n=16)
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("lax", "linen", "nnx", "equinox")
INPUT_SHAPE = (12, 12, 1)
NUM_CLASSES = 4
HIDDEN = 16
#: Crossbar weights: the two conv kernels and the two dense kernels.
KERNEL_COUNT = 3 * 3 * 1 * 4 + 3 * 3 * 4 * 8 + 3 * 3 * 8 * HIDDEN + HIDDEN * 4


class UserModel(NamedTuple):
    """What :func:`build` returns; unpacks as ``apply_fn, params, input_shape,
    num_classes``."""

    apply_fn: Any
    params: Any
    input_shape: tuple[int, int, int]
    num_classes: int


def weights(key: jax.Array) -> dict[str, np.ndarray]:
    """The shared weights in lax/linen layout (HWIO kernels, (in, out) dense),
    He-scaled normal draws from a NumPy generator seeded by ``key``'s data (no
    JAX op, so nothing compiles)."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)))
    shapes = {
        "conv1": (3, 3, 1, 4),
        "conv2": (3, 3, 4, 8),
        "dense1": (3 * 3 * 8, HIDDEN),
        "dense2": (HIDDEN, NUM_CLASSES),
    }
    out = {}
    for name, shape in shapes.items():
        fan_in = int(np.prod(shape[:-1]))
        out[name] = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        out[name + "_b"] = 0.1 * rng.standard_normal(shape[-1:])
    return {k: v.astype(np.float32) for k, v in out.items()}


def _pool(h: jax.Array) -> jax.Array:
    """2x2 average pool, stride 2, on NHWC."""
    s = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return s / 4.0


# ------------------------------------------------------------------ plain lax


def _lax_apply(params: dict, x: jax.Array) -> jax.Array:
    def conv(h, layer):
        out = jax.lax.conv_general_dilated(
            h, layer["w"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return out + layer["b"][None, None, None, :]

    h = _pool(jax.nn.relu(conv(x, params["conv1"])))
    h = jax.nn.relu(conv(h, params["conv2"]))
    h = h.reshape(h.shape[0], -1)
    h = jax.nn.relu(h @ params["dense1"]["w"] + params["dense1"]["b"][None, :])
    return h @ params["dense2"]["w"] + params["dense2"]["b"][None, :]


def _build_lax(w: dict) -> tuple[Any, Any]:
    params = {
        name: {"w": jnp.asarray(w[name]), "b": jnp.asarray(w[name + "_b"])}
        for name in ("conv1", "conv2", "dense1", "dense2")
    }
    return _lax_apply, params


# --------------------------------------------------------------- flax.linen


def _const(value: np.ndarray):
    return lambda *_: jnp.asarray(value)


def _build_linen(w: dict) -> tuple[Any, Any]:
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            def conv(name, feats):
                return nn.Conv(
                    feats,
                    (3, 3),
                    padding="VALID",
                    kernel_init=_const(w[name]),
                    bias_init=_const(w[name + "_b"]),
                )

            def dense(name, feats):
                return nn.Dense(
                    feats, kernel_init=_const(w[name]), bias_init=_const(w[name + "_b"])
                )

            h = _pool(nn.relu(conv("conv1", 4)(x)))
            h = nn.relu(conv("conv2", 8)(h))
            h = h.reshape(h.shape[0], -1)
            h = nn.relu(dense("dense1", HIDDEN)(h))
            return dense("dense2", NUM_CLASSES)(h)

    net = Net()
    variables = net.init(jax.random.key(0), jnp.zeros((1, *INPUT_SHAPE)))
    return net.apply, variables


# ----------------------------------------------------------------- flax.nnx


def _build_nnx(w: dict) -> tuple[Any, Any]:
    from flax import nnx

    def init(name):
        return {"kernel_init": _const(w[name]), "bias_init": _const(w[name + "_b"])}

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Conv(
                1, 4, (3, 3), padding="VALID", rngs=rngs, **init("conv1")
            )
            self.conv2 = nnx.Conv(
                4, 8, (3, 3), padding="VALID", rngs=rngs, **init("conv2")
            )
            self.dense1 = nnx.Linear(72, HIDDEN, rngs=rngs, **init("dense1"))
            self.dense2 = nnx.Linear(HIDDEN, NUM_CLASSES, rngs=rngs, **init("dense2"))

        def __call__(self, x):
            h = _pool(nnx.relu(self.conv1(x)))
            h = nnx.relu(self.conv2(h))
            h = h.reshape(h.shape[0], -1)
            return self.dense2(nnx.relu(self.dense1(h)))

    graphdef, state = nnx.split(Net(nnx.Rngs(0)))

    def apply_fn(s, x):
        return nnx.merge(graphdef, s)(x)

    return apply_fn, state


# ------------------------------------------------------------------ equinox


def _build_equinox(w: dict) -> tuple[Any, Any]:
    import equinox as eqx

    class Net(eqx.Module):
        conv1: eqx.nn.Conv2d
        conv2: eqx.nn.Conv2d
        dense1: eqx.nn.Linear
        dense2: eqx.nn.Linear

        def __call__(self, x):  # one HWC sample
            h = jnp.transpose(x, (2, 0, 1))  # CHW
            h = jax.nn.relu(self.conv1(h))
            h = _pool(jnp.transpose(h, (1, 2, 0))[None])[0]  # pool in HWC
            h = jax.nn.relu(self.conv2(jnp.transpose(h, (2, 0, 1))))
            h = jnp.transpose(h, (1, 2, 0)).reshape(-1)  # flatten in H, W, C order
            return self.dense2(jax.nn.relu(self.dense1(h)))

    keys = jax.random.split(jax.random.key(0), 4)
    net = Net(
        eqx.nn.Conv2d(1, 4, 3, key=keys[0]),
        eqx.nn.Conv2d(4, 8, 3, key=keys[1]),
        eqx.nn.Linear(72, HIDDEN, key=keys[2]),
        eqx.nn.Linear(HIDDEN, NUM_CLASSES, key=keys[3]),
    )
    conv = lambda a: jnp.asarray(np.transpose(a, (3, 2, 0, 1)))  # HWIO -> OIHW
    net = eqx.tree_at(
        lambda m: (
            m.conv1.weight,
            m.conv1.bias,
            m.conv2.weight,
            m.conv2.bias,
            m.dense1.weight,
            m.dense1.bias,
            m.dense2.weight,
            m.dense2.bias,
        ),
        net,
        (
            conv(w["conv1"]),
            jnp.asarray(w["conv1_b"]).reshape(4, 1, 1),
            conv(w["conv2"]),
            jnp.asarray(w["conv2_b"]).reshape(8, 1, 1),
            jnp.asarray(w["dense1"].T),
            jnp.asarray(w["dense1_b"]),
            jnp.asarray(w["dense2"].T),
            jnp.asarray(w["dense2_b"]),
        ),
    )
    params, static = eqx.partition(net, eqx.is_array)

    def apply_fn(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    return apply_fn, params


_BUILDERS = {
    "lax": _build_lax,
    "linen": _build_linen,
    "nnx": _build_nnx,
    "equinox": _build_equinox,
}


def build(kind: str, key: jax.Array) -> UserModel:
    """The tiny CNN written as ``kind`` (one of :data:`KINDS`), with weights
    drawn from ``key``; the same key gives the same function for every kind."""
    if kind not in _BUILDERS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    apply_fn, params = _BUILDERS[kind](weights(key))
    return UserModel(apply_fn, params, INPUT_SHAPE, NUM_CLASSES)


def make_data(
    apply_fn: Any, params: Any, key: jax.Array, n: int = 16
) -> tuple[jax.Array, jax.Array]:
    """``n`` random images (NHWC; equinox's ``apply_fn`` takes NHWC too) and the
    model's own clean predictions as labels (so the clean accuracy is 1 and
    noise can only lower it)."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)))
    x = jnp.asarray(rng.standard_normal((n, *INPUT_SHAPE)), jnp.float32)
    y = jnp.argmax(apply_fn(params, x), -1).astype(jnp.int32)
    return x, y
