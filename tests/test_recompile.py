"""No recompilation for equal models and options: ``Model`` compares and hashes
by value, and ``obd_over_dataset`` reuses one compiled per-batch step.

Compilations are counted with ``jax.monitoring`` (the backend-compile event that
every XLA compilation records), so these tests fail if a second call with an
equal model or the same options compiles anything.
"""

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from uswim_jax import curvature
from uswim_jax.models import build_model

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles():
    """Yields a list that collects the name of every function XLA compiles."""
    names: list[str] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        del duration
        if event == _COMPILE_EVENT:
            names.append(str(kwargs.get("fun_name")))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_models_compare_and_hash_by_value():
    a, b = build_model("lenet"), build_model("lenet")
    assert a is not b
    assert a == b and hash(a) == hash(b)
    assert a.apply_fn == b.apply_fn and hash(a.apply_fn) == hash(b.apply_fn)
    assert a != build_model("lenet", quant_scheme="signed", weight_bits=4)
    assert a != build_model("lenet", weight_bits=4)
    assert build_model("resnet18", width=8) != build_model("resnet18", width=16)
    # export of equal quantized models gives equal float models
    qa, qb = build_model("lenet", weight_bits=4), build_model("lenet", weight_bits=4)
    params = qa.init(jax.random.key(0))
    assert qa.export(params)[0] == qb.export(params)[0] == a
    other = dataclasses.replace(a, num_classes=7)
    assert other != a


@functools.partial(jax.jit, static_argnames="apply_fn")
def _logits(params, x, *, apply_fn):
    return apply_fn(params, x)


def test_static_apply_fn_of_an_equal_model_does_not_recompile():
    """How the experiment's jitted sweeps take the model: ``apply_fn`` static."""
    m1 = build_model("lenet")
    params = m1.init(jax.random.key(0))
    x = jnp.zeros((5, 28, 28, 1), jnp.float32)
    with count_compiles() as first:
        _logits(params, x, apply_fn=m1.apply_fn).block_until_ready()
    with count_compiles() as second:
        _logits(params, x, apply_fn=build_model("lenet").apply_fn).block_until_ready()
    assert second == []
    # the counter does see a compilation: a model that is not equal
    with count_compiles() as third:
        other = build_model("lenet", num_classes=10, weight_bits=4)
        _logits(params, x, apply_fn=other.apply_fn).block_until_ready()
    assert any("_logits" in n for n in third), third
    del first


def test_obd_over_dataset_second_call_does_not_recompile():
    m1 = build_model("lenet", weight_bits=4)
    params = m1.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    x = rng.random((10, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 10).astype(np.int32)
    kw = {"batch_size": 7, "q_scale": "authors"}  # a full and a partial batch
    with count_compiles() as first:
        h1, g1 = curvature.obd_over_dataset(m1.apply_fn, params, x, y, **kw)
        jax.block_until_ready((h1, g1))
    assert any("_obd_batch" in n for n in first), first
    m2 = build_model("lenet", weight_bits=4)  # equal, not the same object
    with count_compiles() as second:
        h2, g2 = curvature.obd_over_dataset(m2.apply_fn, params, x, y, **kw)
        jax.block_until_ready((h2, g2))
    assert second == [], second
    for a, b in zip(jax.tree.leaves((h1, g1)), jax.tree.leaves((h2, g2)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # another option is another compiled step
    with count_compiles() as third:
        curvature.obd_over_dataset(m2.apply_fn, params, x[:7], y[:7], batch_size=7)
    assert any("_obd_batch" in n for n in third), third


def test_clean_accuracy_of_an_equal_model_does_not_recompile():
    """``train.accuracy`` (called per epoch and per run) reuses its compiled
    forward pass for an equal model."""
    from uswim_jax.train import accuracy

    m1 = build_model("lenet", num_classes=7)  # shapes no other test uses
    params = m1.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    x = rng.random((6, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 7, 6).astype(np.int32)
    with count_compiles() as first:
        a1 = accuracy(m1.apply_fn, params, x, y)
    assert any("_predict" in n for n in first), first
    with count_compiles() as second:
        a2 = accuracy(build_model("lenet", num_classes=7).apply_fn, params, x, y)
    assert second == [] and a1 == a2
