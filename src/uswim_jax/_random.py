"""Random draws of any shape, drawn as one flat vector and reshaped.

``normal(key, shape, dtype)`` returns the values of ``jax.random.normal(key,
shape, dtype)``, and likewise :func:`uniform`, :func:`bernoulli` and
:func:`rademacher`: for the Threefry keys JAX uses by default, the counters of a
draw run over the flattened (row-major) index, so a flat draw reshaped holds the
same numbers (``tests/test_random.py`` checks it on the installed JAX). What
changes is compile time: XLA builds the counters of a multi-dimensional draw
from one iota per axis, and on CPU that program compiles slowly. On JAX 0.10.2
(2 CPU cores) a normal draw of a 3x3x4x8 kernel compiled in 2.7 s against 0.17 s
flat, and a 3x3x64x64x2x1 device array in 0.9 s against 0.2 s. A device model
draws several such arrays per crossbar leaf; ``python -m
benchmarks.draw_compile`` compiles the device models' programs both ways. The
draws are the same, but the programs around them fuse differently, so a
programmed chip may change in its last float bit.
"""

import math
from collections.abc import Sequence
from typing import Any

import jax


def _size(shape: Sequence[int]) -> int:
    return math.prod(int(d) for d in shape)


def normal(key: jax.Array, shape: Sequence[int], dtype: Any = float) -> jax.Array:
    """``jax.random.normal(key, shape, dtype)``, drawn flat."""
    return jax.random.normal(key, (_size(shape),), dtype).reshape(shape)


def uniform(
    key: jax.Array,
    shape: Sequence[int],
    dtype: Any = float,
    minval: Any = 0.0,
    maxval: Any = 1.0,
) -> jax.Array:
    """``jax.random.uniform(key, shape, dtype, minval, maxval)``, drawn flat
    (scalar bounds)."""
    return jax.random.uniform(key, (_size(shape),), dtype, minval, maxval).reshape(
        shape
    )


def bernoulli(key: jax.Array, p: Any, shape: Sequence[int]) -> jax.Array:
    """``jax.random.bernoulli(key, p, shape)``, drawn flat (scalar ``p``)."""
    return jax.random.bernoulli(key, p, (_size(shape),)).reshape(shape)


def rademacher(key: jax.Array, shape: Sequence[int], dtype: Any = int) -> jax.Array:
    """``jax.random.rademacher(key, shape, dtype)``, drawn flat."""
    return jax.random.rademacher(key, (_size(shape),), dtype).reshape(shape)
