"""uswim_jax._random: flat draws hold exactly the values of JAX's shaped ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uswim_jax import _random

SHAPES = [(), (0,), (7,), (3, 4), (2, 1, 3, 2)]


def _pairs(shape, dtype):
    """(ours, jax.random's) for each draw, as functions of a key."""
    return {
        "normal": (
            lambda k: _random.normal(k, shape, dtype),
            lambda k: jax.random.normal(k, shape, dtype),
        ),
        "uniform": (
            lambda k: _random.uniform(k, shape, dtype, -2.0, 3.0),
            lambda k: jax.random.uniform(k, shape, dtype, -2.0, 3.0),
        ),
        "rademacher": (
            lambda k: _random.rademacher(k, shape, dtype),
            lambda k: jax.random.rademacher(k, shape, dtype),
        ),
    }


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_flat_draw_equals_the_shaped_draw(shape):
    key = jax.random.key(3)
    for name, (ours, theirs) in _pairs(shape, jnp.float32).items():
        a, b = ours(key), theirs(key)
        assert a.shape == b.shape == shape and a.dtype == b.dtype, name
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


def test_flat_draw_equals_the_shaped_draw_in_float64_and_under_vmap_and_jit():
    shape = (2, 3, 2)
    keys = jax.random.split(jax.random.key(11), 4)
    with jax.enable_x64(True):
        for name, (ours, theirs) in _pairs(shape, jnp.float64).items():
            a = jax.jit(jax.vmap(ours))(keys)
            b = jax.vmap(theirs)(keys)
            assert a.shape == (4, *shape) and a.dtype == b.dtype, name
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
    # distinct keys give distinct draws (the values are not a constant)
    z = jax.vmap(lambda k: _random.normal(k, shape))(keys)
    assert len({np.asarray(r).tobytes() for r in z}) == 4
