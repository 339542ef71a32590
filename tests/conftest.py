"""Strict JAX settings for the whole suite, and key fixtures."""

import itertools

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def key():
    """A fixed typed key."""
    return jax.random.key(0)


@pytest.fixture
def getkey():
    """Returns a function giving a fresh key each call (fold-in counter)."""
    counter = itertools.count()
    base = jax.random.key(1234)
    return lambda: jax.random.fold_in(base, next(counter))


def pytest_collection_modifyitems(config, items):
    if jax.default_backend() == "gpu":
        return
    skip = pytest.mark.skip(reason="needs an accelerator")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
