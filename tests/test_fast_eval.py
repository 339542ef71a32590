"""The one fast path: the project's plain Flax models through the trial batching
of ``evaluate``/``sweep`` (``uswim_jax._trialbatch``), the same transformation
users' models get. Its convolutions (ResNet-18's strided 3x3 and 1x1 shortcuts
included) become im2col matmuls built from contiguous slices, and the images
stay on the minor axis through the dense layers; compared in float64 with
``jax.vmap`` of the model over the trials."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import uswim_jax as u
from uswim_jax._trialbatch import TrialBatched
from uswim_jax.models import build_model
from uswim_jax.models.resnet import BasicBlock
from uswim_jax.montecarlo import auto_chunk_size

RTOL = 1e-10  # float64

CONV_CASES = [  # kernel, stride, padding
    (3, 1, 1),
    (3, 2, 1),  # ResNet's downsampling 3x3
    (1, 2, 0),  # ResNet's 1x1 shortcut
    (1, 1, 0),
    (3, 2, 0),
    (5, 1, 2),
    (7, 7, 0),  # the ViT's patch embedding
]


def _f64(tree):
    return jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), tree)


def _stack(params, flags, trials=3):
    return jax.tree.map(
        lambda w, f: jnp.stack([w * (1 + 0.1 * t) for t in range(trials)]) if f else w,
        params,
        flags,
    )


def _both(apply_fn, stacked, x, flags):
    """``(trial batched, vmap)`` outputs and the batched program's jaxpr."""
    one = jax.tree.map(
        lambda a, f: jax.ShapeDtypeStruct(a.shape[1:] if f else a.shape, a.dtype),
        stacked,
        flags,
    )
    tb = TrialBatched(apply_fn, one, x, flags)
    axes = jax.tree.map(lambda f: 0 if f else None, flags)
    want = jax.jit(jax.vmap(apply_fn, in_axes=(axes, None)))(stacked, x)
    return jax.jit(tb)(stacked, x), want, jax.make_jaxpr(tb)(stacked, x)


def _eqns(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _eqns(getattr(sub, "jaxpr", sub))


@pytest.mark.parametrize("k, stride, padding", CONV_CASES)
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_strided_and_1x1_convs_take_the_contiguous_patch_path(
    k, stride, padding, shared, layout
):
    """Every window position's patch rows are one contiguous slice (a strided
    conv reads them from its input's phases), with the input shared by the
    trials or per trial: no convolution is left, and where windows overlap no
    strided slice either."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (2, 14, 15, 4), jnp.float64)
        w = jax.random.normal(jax.random.key(1), (3, k, k, 4, 5), jnp.float64)
        if layout == "NCHW":
            x = jnp.transpose(x, (0, 3, 1, 2))

        def apply_fn(p, xi):
            lhs = xi if shared else p["x"]
            return lax.conv_general_dilated(
                lhs,
                p["w"],
                (stride, stride),
                ((padding, padding),) * 2,
                dimension_numbers=(layout, "HWIO", layout),
            )

        stacked = {"w": w} if shared else {"w": w, "x": jnp.stack([x, -x, 2 * x])}
        flags = jax.tree.map(lambda _: True, stacked)
        got, want, jaxpr = _both(apply_fn, stacked, x if shared else x[0, 0], flags)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL)
        names = [e.primitive.name for e in _eqns(jaxpr.jaxpr)]
        assert "conv_general_dilated" not in names
        # overlapping windows: contiguous slices only (a stride at least the
        # window, the patch embedding, reads each element once by strided
        # slices)
        for e in _eqns(jaxpr.jaxpr):
            if e.primitive.name == "slice" and k > stride:
                assert not e.params["strides"] or set(e.params["strides"]) == {1}


def test_resnet_block_with_stride_2_shortcut():
    """A downsampling BasicBlock (3x3 stride 2 pad 1, 1x1 stride 2 pad 0,
    batch-norm in inference mode), per-trial kernels."""
    block = BasicBlock(8, 2)
    x32 = jax.random.normal(jax.random.key(3), (2, 8, 8, 4))
    params = block.init(jax.random.key(0), x32, False)
    with jax.enable_x64(True):
        p, x = _f64(params), jnp.asarray(x32, jnp.float64)
        flags = u.crossbar_flags(p)

        def apply_fn(v, xi):
            return block.apply(v, xi, False)

        got, want, _ = _both(apply_fn, _stack(p, flags), x, flags)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL)


def test_lenet_keeps_the_images_minor_through_the_dense_layers():
    """The plain LeNet: the conv trunk's ``(C, H, W, N)`` layout feeds the
    dense layers as it is (their kernels' rows gathered once per trial), so
    every dense matmul gives ``(T, features, N)`` and only the logits are
    transposed; the same function as ``vmap`` of the model."""
    model = build_model("lenet")
    params = model.init(jax.random.key(0))
    with jax.enable_x64(True):
        p = _f64(params)
        x = jax.random.normal(jax.random.key(1), (6, 28, 28, 1), jnp.float64)
        flags = u.crossbar_flags(p)
        got, want, jaxpr = _both(model.apply_fn, _stack(p, flags), x, flags)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL)
    dots = [e for e in _eqns(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    dense = [e.outvars[0].aval.shape for e in dots][-3:]
    assert dense == [(3, 120, 6), (3, 84, 6), (3, 10, 6)]


def test_build_model_conv_impl_is_a_clear_type_error():
    with pytest.raises(TypeError, match="no longer takes conv_impl"):
        build_model("lenet", conv_impl="im2col")


def test_auto_chunk_batches_trials():
    """Convolutions with per-trial kernels are rewritten as matmuls against the
    stacked kernels, so ``"auto"`` batches several trials."""
    model = build_model("lenet")
    params = model.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (16, 28, 28, 1))
    assert auto_chunk_size(model.apply_fn, params, x, 20, 8) > 1


@pytest.mark.parametrize(
    "name, kw, shape, low, high",
    [
        # conv 28x28x6 from 9 + 14x14x16 from 54; dense 784-120-84-10
        ("lenet", {}, (28, 28, 1), 105000 / 316680, 105000 / 316680),
        ("convnet", {}, (32, 32, 3), 0.0, 0.04),
        ("resnet18", {"width": 8}, (32, 32, 3), 0.0, 0.001),
        ("vit", {}, (28, 28, 1), 0.98, 1.0),
    ],
)
def test_own_mac_shares_of_the_project_models(name, kw, shape, low, high):
    """The shares ``chunk_size="auto"`` reads (``own_mac_share``) on the
    project's models, with the crossbar their device models use: LeNet's dense
    head exactly, the CNNs' (their convolutions have per-trial kernels) well
    under ``AUTO_OWN_MAC_SHARE`` and the vision transformer's (patch embedding
    the only convolution) above it: the choices ``AUTO_OWN_MAC_SHARE``'s
    comment says any threshold in (0.33, 0.98) makes."""
    from uswim_jax import _chunking

    model = build_model(name, **kw)
    params = model.init(jax.random.key(0))
    x = jnp.zeros((4, *shape))
    flags = u.crossbar_flags(params)
    share = _chunking.own_mac_share(model.apply_fn, params, x, 4, flags)
    assert low - 1e-12 <= share <= high + 1e-12
    one = share > _chunking.AUTO_OWN_MAC_SHARE
    assert (auto_chunk_size(model.apply_fn, params, x, 20, 4, flags) == 1) == one
    assert one == (name == "vit")
