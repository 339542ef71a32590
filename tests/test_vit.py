"""The small vision transformer: shapes, weight count, what is on the crossbar."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uswim_jax._tree import crossbar_flags, leaf_paths
from uswim_jax.models import build_model


def test_vit_shape_weight_count_and_crossbar_leaves():
    model = build_model("vit")
    params = jax.eval_shape(model.init, jax.random.key(0))
    # patch 7x7x1 -> 64, 6 blocks of 4 64x64 projections and a 64-128-64 MLP,
    # head 64 -> 10
    assert model.num_weights(params) == 49 * 64 + 6 * (4 * 64 * 64 + 2 * 64 * 128) + 640
    out = jax.eval_shape(model.apply_fn, params, jnp.zeros((3, 28, 28, 1)))
    assert out.shape == (3, 10)
    paths, marks = leaf_paths(params), jax.tree.leaves(crossbar_flags(params))
    flags = dict(zip(paths, marks, strict=True))
    on = {p for p, f in flags.items() if f}
    assert "params/embed/kernel" in on and "params/head/kernel" in on
    for name in ("query", "key", "value", "out"):
        assert f"params/block3/attn/{name}/kernel" in on
    assert "params/block0/mlp1/kernel" in on and "params/block0/mlp2/kernel" in on
    off = {p for p, f in flags.items() if not f}
    assert {"params/pos_embedding", "params/cls", "params/ln/scale"} <= off
    assert all(p.endswith("/kernel") for p in on)


def test_vit_quantized_export_is_the_same_function():
    model = build_model("vit", quantized=True)
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
    float_model, qparams = model.export(params)
    a = jax.jit(model.apply_fn)(params, x)
    np.testing.assert_allclose(a, jax.jit(float_model.apply_fn)(qparams, x), rtol=1e-5)


def test_vit_rejects_image_sizes_not_a_multiple_of_the_patch():
    with pytest.raises(ValueError, match="multiple of its patch"):
        build_model("vit", input_shape=(32, 32, 1))
