"""Random draws of any shape, drawn as one flat vector and reshaped.

``normal(key, shape, dtype)`` returns the values of ``jax.random.normal(key,
shape, dtype)``, and likewise :func:`uniform` and :func:`rademacher`: for the
Threefry keys JAX uses by default, the counters of a draw run over the
flattened (row-major) index, so a flat draw reshaped holds the same numbers
(``tests/test_random.py`` checks it on the installed JAX). What changes is
compile time: XLA builds the counters of a multi-dimensional draw from one
iota per axis, and on CPU that program compiles slowly (``python -m
benchmarks.draw_compile`` measures both ways). The programs around a flat draw
may fuse differently, so values computed from it can change in their last
float bit (docs/device.md says where the package draws flat).
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


def rademacher(key: jax.Array, shape: Sequence[int], dtype: Any = int) -> jax.Array:
    """``jax.random.rademacher(key, shape, dtype)``, drawn flat."""
    return jax.random.rademacher(key, (_size(shape),), dtype).reshape(shape)
