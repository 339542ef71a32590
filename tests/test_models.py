"""Model shapes, weight counts, quantization and input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uswim_jax.models import build_model, quantize, quantize_ste


@pytest.mark.parametrize(
    "name, classes, shape, weights",
    [
        ("lenet", 10, None, 105_918),
        ("convnet", 10, None, 6_397_632),
        ("resnet18", 10, None, 11_164_352),
        ("resnet18", 200, (64, 64, 3), 11_261_632),
        # width w on one input channel: 2724 w**2 conv weights in the stages,
        # 9 w in the stem, 8 w * classes in the head
        ("resnet18-8", 10, (28, 28, 1), 2724 * 64 + 9 * 8 + 8 * 8 * 10),
        ("resnet18-64", 10, (32, 32, 3), 11_164_352),
    ],
)
def test_output_shape_and_weight_count(name, classes, shape, weights):
    name, _, width = name.partition("-")
    kw = {"width": int(width)} if width else {}
    model = build_model(name, num_classes=classes, input_shape=shape, **kw)
    params = jax.eval_shape(model.init, jax.random.key(0))
    assert model.num_weights(params) == weights
    out = jax.eval_shape(model.apply_fn, params, jnp.zeros((3, *model.input_shape)))
    assert out.shape == (3, classes)


def test_lenet_layers_as_the_authors():
    model = build_model("lenet")
    params = model.init(jax.random.key(0))["params"]
    shapes = {k: v["kernel"].shape for k, v in params.items()}
    assert shapes == {
        "Conv_0": (3, 3, 1, 6),
        "Conv_1": (3, 3, 6, 16),
        "Dense_0": (784, 120),
        "Dense_1": (120, 84),
        "Dense_2": (84, 10),
    }
    assert all("bias" in v for v in params.values())


def test_resnet_has_batch_norm_state_and_inference_mode_is_pure():
    model = build_model("resnet18")
    params = model.init(jax.random.key(0))
    assert "batch_stats" in params
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    a = model.apply_fn(params, x)
    b = model.apply_fn(params, x)
    np.testing.assert_array_equal(a, b)
    _, stats = model.train_apply(params, x)
    changed = jax.tree.map(
        lambda u, v: bool(jnp.any(u != v)), stats, params["batch_stats"]
    )
    assert any(jax.tree.leaves(changed))


@pytest.mark.parametrize(
    "bits, scheme, max_levels", [(4, "swim", 33), (4, "signed", 15)]
)
def test_quantize_grid(bits, scheme, max_levels):
    w = jax.random.normal(jax.random.key(0), (1000,))
    q = quantize(w, bits, scheme)
    assert len(np.unique(np.asarray(q))) <= max_levels
    step = np.max(np.abs(np.asarray(w))) / (2.0**bits if scheme == "swim" else 7)
    assert np.max(np.abs(np.asarray(q - w))) <= step / 2 + 1e-6


def test_quantize_ste_passes_gradient_through():
    w = jnp.linspace(-1.0, 1.0, 7)
    g = jax.grad(lambda v: jnp.sum(quantize_ste(v, 4) * jnp.arange(7.0)))(w)
    np.testing.assert_allclose(g, np.arange(7.0))


def test_export_bakes_quantization():
    model = build_model("lenet", quantized=True)
    assert model.weight_bits == 4
    params = model.init(jax.random.key(0))
    float_model, qparams = model.export(params)
    assert float_model.weight_bits is None
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    np.testing.assert_allclose(
        model.apply_fn(params, x),
        float_model.apply_fn(qparams, x),
        rtol=1e-5,
        atol=1e-5,
    )
    # Biases are not quantized.
    np.testing.assert_array_equal(
        qparams["params"]["Dense_0"]["bias"], params["params"]["Dense_0"]["bias"]
    )


def test_wrong_input_shape_is_a_clear_error():
    model = build_model("lenet")
    params = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"x has shape \(2, 32, 32, 3\).*lenet"):
        model.apply_fn(params, jnp.zeros((2, 32, 32, 3)))
    with pytest.raises(ValueError, match="x has shape"):
        model.apply_fn(params, jnp.zeros((28, 28, 1)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "vgg"}, "unknown model"),
        ({"name": "lenet", "weight_bits": 1}, "weight_bits"),
        ({"name": "lenet", "quant_scheme": "x"}, "quant_scheme"),
        ({"name": "lenet", "input_shape": (32, 32, 1)}, "28x28"),
        ({"name": "lenet", "width": 8}, "width"),
        ({"name": "resnet18", "width": 0}, "width"),
    ],
)
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(**kwargs)
