"""The im2col convolution path (``conv_impl="im2col"``): the same function as
XLA's convolution, and the same Monte Carlo accuracies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import uswim_jax as u
from uswim_jax.models import build_model
from uswim_jax.models._layers import Dense, conv, max_pool2, to_chwn
from uswim_jax.models.resnet import BasicBlock
from uswim_jax.montecarlo import noisy_accuracy, run_trials, trial_keys

CONV_CASES = [  # kernel, stride, padding
    (3, 1, 1),
    (3, 2, 1),  # ResNet's downsampling 3x3
    (1, 2, 0),  # ResNet's 1x1 shortcut
    (1, 1, 0),
    (3, 2, 0),
    (5, 1, 2),
]


@pytest.mark.parametrize("k, stride, padding", CONV_CASES)
@pytest.mark.parametrize("layout", ["NHWC", "CHWN"])
def test_im2col_conv_equals_xla_conv(k, stride, padding, layout):
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (3, 9, 10, 4), jnp.float64)
        w = jax.random.normal(jax.random.key(1), (k, k, 4, 5), jnp.float64)
        ref = conv(x, w, stride, padding, "xla")
        xin = to_chwn(x) if layout == "CHWN" else x
        out = conv(xin, w, stride, padding, "im2col", layout)
        xla = conv(xin, w, stride, padding, "xla", layout)
        if layout == "CHWN":
            out, xla = to_chwn(out), to_chwn(xla)
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(xla, ref)


@pytest.mark.parametrize(
    "h, w, k, padding", [(1, 1, 5, 2), (2, 1, 3, 1), (4, 2, 5, 2), (3, 3, 3, 2)]
)
def test_chwn_stride_1_on_images_narrower_than_the_kernel(h, w, k, padding):
    """The CHWN stride-1 path pads no right columns (windows read the next
    row's left padding) and adds enough bottom rows for the last window."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (2, h, w, 3), jnp.float64)
        kernel = jax.random.normal(jax.random.key(1), (k, k, 3, 4), jnp.float64)
        ref = conv(x, kernel, 1, padding, "xla")
        out = to_chwn(conv(to_chwn(x), kernel, 1, padding, "im2col", "CHWN"))
        np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("size", [8, 7])
def test_chwn_max_pool_equals_nhwc(size):
    x = jax.random.normal(jax.random.key(2), (2, size, size, 3))
    np.testing.assert_array_equal(
        to_chwn(max_pool2(to_chwn(x), "CHWN")), max_pool2(x, "NHWC")
    )


def _f64(tree):
    return jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), tree)


@pytest.mark.parametrize("name", ["lenet"])  # ConvNet: same layers, slow in f64
def test_im2col_models_equal_xla_models(name):
    ref, fast = build_model(name), build_model(name, conv_impl="im2col")
    params = ref.init(jax.random.key(0))
    # the same params pytree, whichever implementation
    assert jax.tree.structure(params) == jax.tree.structure(
        jax.eval_shape(fast.init, jax.random.key(0))
    )
    with jax.enable_x64(True):
        p = _f64(params)
        x = jax.random.normal(jax.random.key(1), (2, *ref.input_shape), jnp.float64)
        np.testing.assert_allclose(
            fast.apply_fn(p, x), ref.apply_fn(p, x), rtol=1e-10, atol=1e-12
        )


def test_dense_fn_layout_is_the_same_function():
    """``Dense(layout="FN")`` on (F, N) or CHWN input: the same params as
    ``Dense`` on the NHWC-flattened input, and the transposed output."""
    x = jax.random.normal(jax.random.key(4), (3, 4, 5, 6))  # NHWC
    flat = jnp.reshape(x, (3, -1))
    ref = Dense(7)
    params = ref.init(jax.random.key(0), flat)
    chwn = to_chwn(x)
    for layer, inp in ((Dense(7, layout="FN"), chwn), (Dense(7, layout="FN"), flat.T)):
        assert jax.tree.map(jnp.shape, layer.init(jax.random.key(0), inp)) == (
            jax.tree.map(jnp.shape, params)
        )
        with jax.enable_x64(True):
            p = _f64(params)
            out = layer.apply(p, jnp.asarray(inp, jnp.float64))
            want = ref.apply(p, jnp.asarray(flat, jnp.float64))
            np.testing.assert_allclose(out.T, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="layout"):
        Dense(7, layout="NCHW").init(jax.random.key(0), flat)


def test_im2col_convnet_equals_xla_convnet_float32():
    ref, fast = build_model("convnet"), build_model("convnet", conv_impl="im2col")
    params = ref.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, *ref.input_shape))
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(
            fast.apply_fn(params, x), ref.apply_fn(params, x), rtol=1e-4, atol=1e-5
        )


def test_im2col_resnet_block_with_stride_2_shortcut():
    """A downsampling BasicBlock: 3x3 stride 2 pad 1 and 1x1 stride 2 pad 0."""
    ref, fast = BasicBlock(8, 2), BasicBlock(8, 2, conv_impl="im2col")
    x32 = jax.random.normal(jax.random.key(3), (2, 8, 8, 4))
    params = ref.init(jax.random.key(0), x32, False)
    with jax.enable_x64(True):
        p, x = _f64(params), jnp.asarray(x32, jnp.float64)
        np.testing.assert_allclose(
            fast.apply(p, x, False), ref.apply(p, x, False), rtol=1e-10, atol=1e-12
        )


def test_bad_conv_impl_is_a_clear_error():
    with pytest.raises(ValueError, match="conv_impl"):
        build_model("lenet", conv_impl="fft")


DEVICE = u.UniformVariation(0.5, 0.05)


def _lenet_problem(n=16):
    model = build_model("lenet")
    params = model.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (n, 28, 28, 1))
    y = jnp.argmax(model.apply_fn(params, x), -1).astype(jnp.int32)
    return model, params, x, y


def test_fast_evaluate_gives_the_default_accuracies_float64():
    """Float64: the two paths differ by ~1e-15 in the logits, far below any gap
    between the top two logits, so every prediction and accuracy is equal. (In
    float32 the paths sum in different orders, ~1e-7 relative, so an image whose
    top two logits are that close could flip; float64 makes the test exact.)
    (``evaluate`` itself runs the device model in float32, so this runs its two
    steps, ``run_trials`` over ``noisy_accuracy``, on float64 params.)"""
    model, params, x, y = _lenet_problem()
    fast = build_model("lenet", conv_impl="im2col")
    std = DEVICE.effective_std(params, None)
    keys = trial_keys(jax.random.key(7), 4)
    with jax.enable_x64(True):
        p, s = _f64(params), _f64(std)
        xd, yd = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.int64)

        def accs(apply_fn, chunk_size, eval_batch_size):
            def trial(k):
                return noisy_accuracy(
                    k, apply_fn, p, s, xd, yd, eval_batch_size=eval_batch_size
                )

            return run_trials(keys, trial, chunk_size=chunk_size)

        ref = accs(model.apply_fn, None, None)
        out = accs(fast.apply_fn, 2, 8)
    np.testing.assert_array_equal(out, ref)


def test_auto_chunk_batches_trials_for_xla_convolutions_too():
    """Convolutions with per-trial kernels are rewritten as matmuls against the
    stacked kernels (``uswim_jax._trialbatch``), so ``"auto"`` batches several
    trials for the plain XLA-convolution model as for the im2col one."""
    from uswim_jax.montecarlo import auto_chunk_size

    model, params, x, _ = _lenet_problem()
    assert auto_chunk_size(model.apply_fn, params, x, 20, 8) > 1
    fast = build_model("lenet", conv_impl="im2col")
    assert auto_chunk_size(fast.apply_fn, params, x, 20, 8) > 1
