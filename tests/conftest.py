"""Key fixtures, a dataset stub for the command line, and a fresh Python
process for what must not share this one's JAX state. The JAX settings every
test runs under are in the repository's top-level ``conftest.py``."""

import itertools
import os
import subprocess
import sys

import jax
import pytest


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


@pytest.fixture
def stub_data(monkeypatch):
    """Returns ``use(n)``: from then on ``uswim_jax.data.load`` gives ``n``
    generated 28x28 digits (``_tiny_sweep.fake_digits``; the test split another
    draw) instead of reading a dataset."""
    from _tiny_sweep import fake_digits

    from uswim_jax import data

    def use(n: int) -> None:
        monkeypatch.setattr(
            data, "load", lambda name, split, path=None: fake_digits(n, split == "test")
        )

    return use


@pytest.fixture
def run_python():
    """Returns ``run(code, *, env=None, timeout=300)``: ``code`` run by this
    interpreter in a new process (``python -c``), as a ``CompletedProcess``
    with text output; ``env`` sets variables over this process's environment
    (``None`` removes one)."""

    def run(code: str, *, env: dict | None = None, timeout: float = 300):
        full = dict(os.environ)
        for k, v in (env or {}).items():
            if v is None:
                full.pop(k, None)
            else:
                full[k] = v
        return subprocess.run(
            [sys.executable, "-c", code],
            env=full,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def pytest_collection_modifyitems(config, items):
    if jax.default_backend() == "gpu":
        return
    skip = pytest.mark.skip(reason="needs an accelerator")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
