"""Tests for the curvature estimators (float64 exactness, statistics, models
defined outside the package)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from jax.flatten_util import ravel_pytree

import uswim_jax as uj
from uswim_jax.models import build_model, quantize, quantize_ste

RTOL = 1e-10

# The library never jits; tests jit what they test (docs/architecture.md).
obd = jax.jit(
    uj.obd_diagonal,
    static_argnums=0,
    static_argnames=("loss", "avg_pool", "q_scale", "predicate", "fuse_elementwise"),
)
exact_diagonal = jax.jit(
    uj.exact_diagonal, static_argnums=0, static_argnames="chunk_size"
)
hutchinson = jax.jit(
    uj.hutchinson_diagonal, static_argnums=(1, 3), static_argnames="chunk_size"
)
ggn = jax.jit(uj.ggn_diagonal, static_argnums=0, static_argnames=("loss", "chunk_size"))
fisher = jax.jit(
    uj.fisher_diagonal, static_argnums=0, static_argnames=("loss", "chunk_size")
)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def assert_trees_close(a, b, rtol=RTOL, atol=1e-12):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ------------------------------------------------------------------ plain MLP


def init_mlp(key, sizes):
    params = {}
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        k1, k2, key = jax.random.split(key, 3)
        params[f"dense{i}"] = {
            "kernel": jax.random.normal(k1, (m, n), jnp.float64) / np.sqrt(m),
            "bias": 0.1 * jax.random.normal(k2, (n,), jnp.float64),
        }
    return params


def make_mlp(act):
    def apply(params, x):
        n = len(params)
        a = x
        for i in range(n):
            z = a @ params[f"dense{i}"]["kernel"] + params[f"dense{i}"]["bias"][None]
            a = act(z) if i < n - 1 else z
        return a

    return apply


def mlp_hand(params, x, act, act_deriv):
    n = len(params)
    acts, pre = [x], []
    a = x
    for i in range(n):
        z = a @ params[f"dense{i}"]["kernel"] + params[f"dense{i}"]["bias"][None]
        pre.append(z)
        a = act(z)
        acts.append(a)
    p = jax.nn.softmax(pre[-1], axis=-1)
    h = p * (1 - p)
    out = {}
    for i in reversed(range(n)):
        w = params[f"dense{i}"]["kernel"]
        out[f"dense{i}"] = {"kernel": (acts[i] ** 2).T @ h, "bias": h.sum(0)}
        if i > 0:
            h = (h @ (w**2).T) * act_deriv(pre[i - 1]) ** 2
    return out


def data(key, n=6, d=3, c=4):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, d), jnp.float64)
    y = jax.random.randint(ky, (n,), 0, c)
    return x, y


def test_obd_equals_hand_recursion_tanh_mlp(key):
    params = init_mlp(key, [3, 5, 4, 4])
    x, y = data(jax.random.fold_in(key, 1))
    got = obd(make_mlp(jnp.tanh), params, x, y)
    want = mlp_hand(params, x, jnp.tanh, lambda z: 1 - jnp.tanh(z) ** 2)
    assert_trees_close(got, want)


@jax.custom_vjp
def vjp_tanh(x):
    return jnp.tanh(x)


vjp_tanh.defvjp(lambda x: (jnp.tanh(x), x), lambda x, g: (g * (1 - jnp.tanh(x) ** 2),))


def test_obd_descends_into_calls(key):
    """jit, custom_vjp and checkpoint (remat) calls give the plain answer."""
    params = init_mlp(key, [3, 5, 4, 4])
    x, y = data(jax.random.fold_in(key, 1))
    dense = jax.jit(lambda a, w, b: a @ w + b[None])

    def apply(p, x):
        a = dense(x, p["dense0"]["kernel"], p["dense0"]["bias"])
        a = vjp_tanh(a)
        layer = jax.checkpoint(lambda a, w, b: jnp.tanh(a @ w + b[None]))
        a = layer(a, p["dense1"]["kernel"], p["dense1"]["bias"])
        a = jax.checkpoint(jnp.tanh)(a)  # an elementwise call: fused
        return dense(a, p["dense2"]["kernel"], p["dense2"]["bias"])

    def plain(p, x):
        a = jnp.tanh(x @ p["dense0"]["kernel"] + p["dense0"]["bias"][None])
        a = jnp.tanh(jnp.tanh(a @ p["dense1"]["kernel"] + p["dense1"]["bias"][None]))
        return a @ p["dense2"]["kernel"] + p["dense2"]["bias"][None]

    assert_trees_close(obd(apply, params, x, y), obd(plain, params, x, y))
    assert_trees_close(
        obd(apply, params, x, y, fuse_elementwise=False),
        obd(plain, params, x, y, fuse_elementwise=False),
    )


def test_obd_fuses_inline_activation(key):
    """Flax's GELU is written inline (fan-out inside); fused, d = gelu'(z)."""
    params = init_mlp(key, [3, 5, 4])
    x, y = data(jax.random.fold_in(key, 1))
    gelu_d = jax.vmap(jax.vmap(jax.grad(jax.nn.gelu)))
    apply = make_mlp(jax.nn.gelu)
    want = mlp_hand(params, x, jax.nn.gelu, gelu_d)
    assert_trees_close(obd(apply, params, x, y), want)
    unfused = obd(apply, params, x, y, fuse_elementwise=False)
    k0 = unfused["dense0"]["kernel"]
    assert not np.allclose(k0, want["dense0"]["kernel"], rtol=1e-3)
    # the last layer does not depend on how the activation is differentiated
    np.testing.assert_allclose(unfused["dense1"]["kernel"], want["dense1"]["kernel"])


def test_obd_last_layer_equals_exact_hessian(key):
    params = init_mlp(key, [3, 5, 4])
    x, y = data(jax.random.fold_in(key, 1))
    apply = make_mlp(jnp.tanh)
    got = obd(apply, params, x, y)
    exact = exact_diagonal(uj.make_loss_fn(apply, x, y), params)
    assert_trees_close(got["dense1"], exact["dense1"])
    # earlier layers are only an approximation of the exact diagonal
    assert not np.allclose(got["dense0"]["kernel"], exact["dense0"]["kernel"])


def test_obd_squared_error_linear_model_is_exact(key):
    params = init_mlp(key, [3, 2])
    x, _ = data(key)
    t = jax.random.normal(jax.random.fold_in(key, 2), (6, 2), jnp.float64)
    apply = make_mlp(jnp.tanh)
    got = obd(apply, params, x, t, loss="squared_error")
    exact = exact_diagonal(uj.make_loss_fn(apply, x, t, loss="squared_error"), params)
    assert_trees_close(got, exact)


# ------------------------------------------------------------------ small CNN

PAD = ((1, 1), (1, 1))


class SmallCNN(nn.Module):
    """conv-BN-ReLU-maxpool, grouped conv-BN + residual, strided conv, dense."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), padding=PAD, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=True, name="bn1")(x)
        x = nn.relu(x)
        skip = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.Conv(4, (3, 3), padding=PAD, feature_group_count=2, name="conv2")(skip)
        x = nn.BatchNorm(use_running_average=True, name="bn2")(x)
        x = nn.relu(x + skip)
        x = nn.Conv(3, (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)), name="conv3")(
            x
        )
        x = nn.relu(x)
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(3, name="dense")(x)


@functools.cache
def cnn_setup(seed=0):
    key = jax.random.key(seed)
    model = SmallCNN()
    x = jax.random.normal(key, (5, 8, 8, 2), jnp.float64)
    y = jnp.array([0, 1, 2, 1, 0])
    with jax.numpy_dtype_promotion("standard"):
        variables = jax.jit(model.init)(jax.random.key(0), x)
    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    keys = jax.random.split(jax.random.fold_in(key, 7), len(leaves))
    leaves = [
        leaf + 0.3 * jax.random.normal(k, leaf.shape, jnp.float64)
        for leaf, k in zip(leaves, keys, strict=True)
    ]
    variables = treedef.unflatten(leaves)
    variables["batch_stats"] = jax.tree_util.tree_map(
        jnp.abs, variables["batch_stats"]
    )  # variances must be positive; means may be anything
    return model, variables, x, y


def conv(x, w, strides=(1, 1), padding=PAD, groups=1):
    return lax.conv_general_dilated(
        x,
        w,
        strides,
        padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def maxpool_route(z, h):
    """Routes h (B, H/2, W/2, C) to the argmax of each 2x2 window of z."""
    b, hh, ww, c = z.shape
    win = z.reshape(b, hh // 2, 2, ww // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
    win = win.reshape(b, hh // 2, ww // 2, c, 4)
    onehot = jnp.arange(4).reshape(1, 1, 1, 1, 4) == jnp.argmax(win, axis=-1)[..., None]
    onehot = onehot.astype(h.dtype)
    routed = (onehot * h[..., None]).reshape(b, hh // 2, ww // 2, c, 2, 2)
    return routed.transpose(0, 1, 4, 2, 5, 3).reshape(b, hh, ww, c)


def cnn_hand(variables, x):
    """The layer rules of docs/method.md §4.1, written out as per-layer VJPs."""
    p, s = variables["params"], variables["batch_stats"]
    eps = 1e-5
    bc = lambda v: v.reshape(1, 1, 1, -1)

    def bn_fwd(c, name):
        r = lax.rsqrt(s[name]["var"] + eps)
        return (c - bc(s[name]["mean"])) * bc(p[name]["scale"] * r) + bc(
            p[name]["bias"]
        )

    def bn_back(c, name, h):
        mean, var = bc(s[name]["mean"]), bc(s[name]["var"])
        scale = bc(p[name]["scale"])
        r = lax.rsqrt(var + eps)
        axes = (0, 1, 2)
        d_var = (c - mean) * scale * (-0.5) * (var + eps) ** -1.5
        grads = {
            "scale": jnp.sum(h * ((c - mean) * r) ** 2, axes),
            "bias": jnp.sum(h, axes),
        }
        stats = {
            "mean": jnp.sum(h * (scale * r) ** 2, axes),
            "var": jnp.sum(h * d_var**2, axes),
        }
        return h * (scale * r) ** 2, grads, stats

    def conv_back(a, name, h, **kw):
        w = p[name]["kernel"]
        hw = jax.vjp(lambda k: conv(a**2, k, **kw), w)[1](h)[0]
        ha = jax.vjp(lambda u: conv(u, w**2, **kw), a)[1](h)[0]
        return ha, {"kernel": hw, "bias": jnp.sum(h, (0, 1, 2))}

    # forward
    c1 = conv(x, p["conv1"]["kernel"]) + bc(p["conv1"]["bias"])
    b1 = bn_fwd(c1, "bn1")
    r1 = jax.nn.relu(b1)
    skip = lax.reduce_window(r1, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    c2 = conv(skip, p["conv2"]["kernel"], groups=2) + bc(p["conv2"]["bias"])
    b2 = bn_fwd(c2, "bn2")
    s2 = b2 + skip
    r2 = jax.nn.relu(s2)
    kw3 = {"strides": (2, 2), "padding": ((0, 1), (0, 1))}
    c3 = conv(r2, p["conv3"]["kernel"], **kw3) + bc(p["conv3"]["bias"])
    r3 = jax.nn.relu(c3)
    f = r3.reshape(r3.shape[0], -1)
    z = f @ p["dense"]["kernel"] + p["dense"]["bias"][None]
    # backward
    pr = jax.nn.softmax(z, axis=-1)
    h = pr * (1 - pr)
    out_p, out_s = {}, {}
    out_p["dense"] = {"kernel": (f**2).T @ h, "bias": h.sum(0)}
    h = (h @ (p["dense"]["kernel"] ** 2).T).reshape(r3.shape)
    h = jnp.where(c3 > 0, h, 0.0)
    h, out_p["conv3"] = conv_back(r2, "conv3", h, **kw3)
    h = jnp.where(s2 > 0, h, 0.0)
    h_skip = h  # residual branch
    h, out_p["bn2"], out_s["bn2"] = bn_back(c2, "bn2", h)
    h, out_p["conv2"] = conv_back(skip, "conv2", h, groups=2)
    h = h + h_skip
    h = maxpool_route(r1, h)
    h = jnp.where(b1 > 0, h, 0.0)
    h, out_p["bn1"], out_s["bn1"] = bn_back(c1, "bn1", h)
    _, out_p["conv1"] = conv_back(x, "conv1", h)
    return {"params": out_p, "batch_stats": out_s}


def test_obd_equals_hand_recursion_cnn():
    model, variables, x, y = cnn_setup()
    got = obd(model.apply, variables, x, y)
    assert_trees_close(got, jax.jit(cnn_hand)(variables, x))


def test_obd_cnn_last_layer_exact():
    model, variables, x, y = cnn_setup()
    got = obd(model.apply, variables, x, y)  # compiled by the test above
    loss = uj.make_loss_fn(model.apply, x, y)

    def last_layer_loss(dense):
        return loss({**variables, "params": {**variables["params"], "dense": dense}})

    exact = exact_diagonal(last_layer_loss, variables["params"]["dense"])
    assert_trees_close(got["params"]["dense"], exact)


def test_obd_traces_under_jit_once(key):
    params = init_mlp(key, [3, 5, 4])
    x, y = data(key)
    apply = make_mlp(jnp.tanh)
    eager = uj.obd_diagonal(apply, params, x, y)  # no jit anywhere
    traces = []

    def f(p, x, y):
        traces.append(1)
        return uj.obd_diagonal(apply, p, x, y)

    jitted = jax.jit(f)
    assert_trees_close(jitted(params, x, y), eager)
    jitted(params, x + 1.0, y)  # new data, same shapes: no re-trace
    assert len(traces) == 1


def avgpool_model(params, x):
    z = conv(x, params["conv"]["kernel"]) + params["conv"]["bias"].reshape(1, 1, 1, -1)
    z = jnp.tanh(z)
    z = lax.reduce_window(z, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0
    z = jnp.mean(z, axis=(1, 2))
    return z @ params["dense"]["kernel"] + params["dense"]["bias"][None]


def test_avg_pool_authors_quirk(key):
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "conv": {
            "kernel": jax.random.normal(k1, (3, 3, 2, 3), jnp.float64),
            "bias": jnp.zeros(3, jnp.float64),
        },
        "dense": {
            "kernel": jax.random.normal(k2, (3, 4), jnp.float64),
            "bias": jnp.zeros(4, jnp.float64),
        },
    }
    x = jax.random.normal(k3, (3, 4, 4, 2), jnp.float64)
    y = jnp.array([0, 1, 3])
    exact = obd(avgpool_model, params, x, y)
    authors = obd(avgpool_model, params, x, y, avg_pool="authors")
    # two average pools of k = 4 each: the authors' h/k instead of h/k^2 is 4 * 4
    np.testing.assert_allclose(authors["conv"]["kernel"], 16 * exact["conv"]["kernel"])
    np.testing.assert_allclose(authors["dense"]["kernel"], exact["dense"]["kernel"])


# ------------------------------------------------- the authors' Q-layer scale


def _ste_mlp(bits):
    """A tanh MLP whose kernels go through the straight-through quantizer."""

    def apply(params, x):
        n = len(params)
        a = x
        for i in range(n):
            w = quantize_ste(params[f"dense{i}"]["kernel"], bits)
            z = a @ w + params[f"dense{i}"]["bias"][None]
            a = jnp.tanh(z) if i < n - 1 else z
        return a

    return apply


def _q_mlp_hand(params, x, bits, quirk):
    """The authors' recursion written out for a Q-layer MLP: layer ``i``
    computes ``(a * s_i) @ Q(W_i / s_i)`` with ``s_i = max|W_i|``; the exact
    rule carries ``h`` through ``a * s_i`` with ``s_i**2``, the authors' with
    ``s_i``. Raw (unnormalised) ``d2L/dW2``: the layer's own diagonal is the
    same either way."""
    n = len(params)
    ws, scales = [], []
    for i in range(n):
        w = params[f"dense{i}"]["kernel"]
        s = jnp.max(jnp.abs(w))
        scales.append(s)
        w_hat = w / s if bits is None else quantize(w / s, bits)
        ws.append(w_hat)
    acts, pre = [x], []
    a = x
    for i in range(n):
        z = (a * scales[i]) @ ws[i] + params[f"dense{i}"]["bias"][None]
        pre.append(z)
        a = jnp.tanh(z) if i < n - 1 else z
        acts.append(a)
    p = jax.nn.softmax(pre[-1], axis=-1)
    h = p * (1 - p)
    out = {}
    for i in reversed(range(n)):
        s = scales[i]
        # d2L/dW_hat2 = ((a s)**2)^T h, and d2L/dW2 = d2L/dW_hat2 / s**2
        w_hat_diag = ((acts[i] * s) ** 2).T @ h
        out[f"dense{i}"] = {"kernel": w_hat_diag / s**2, "bias": h.sum(0)}
        if i > 0:
            h_in = h @ (ws[i] ** 2).T  # h of the op's input a * s
            h_in = h_in * (s if quirk else s**2)  # through the multiply by s
            h = h_in * (1 - jnp.tanh(pre[i - 1]) ** 2) ** 2
    return out


@pytest.mark.parametrize("bits", [None, 4])
def test_q_scale_authors_equals_hand_recursion(key, bits):
    """Float and STE-quantized kernels (4-bit, the authors' QLeNet grid): the
    authors' rule divides each earlier layer's h by max|W| of every later layer;
    the exact rule is unchanged and equals the plain hand recursion."""
    params = init_mlp(key, [3, 5, 4, 4])
    x, y = data(jax.random.fold_in(key, 1))
    apply = _ste_mlp(bits)
    exact = obd(apply, params, x, y)
    assert_trees_close(obd(apply, params, x, y, q_scale="exact"), exact)
    assert_trees_close(exact, _q_mlp_hand(params, x, bits, quirk=False))
    if bits is None:
        want = mlp_hand(params, x, jnp.tanh, lambda z: 1 - jnp.tanh(z) ** 2)
        assert_trees_close(exact, want)
    got = obd(apply, params, x, y, q_scale="authors")
    assert_trees_close(got, _q_mlp_hand(params, x, bits, quirk=True))
    # the last layer is untouched, the first one is not
    assert_trees_close(got["dense2"], exact["dense2"])
    assert not np.allclose(got["dense0"]["kernel"], exact["dense0"]["kernel"])


def _cnn_q(params, x):
    z = conv(x, params["c0"]["kernel"]) + params["c0"]["bias"].reshape(1, 1, 1, -1)
    a1 = jnp.tanh(z)
    z = conv(a1, quantize_ste(params["c1"]["kernel"], 4), strides=(2, 2))
    a2 = jnp.tanh(z)
    flat = jnp.reshape(a2, (a2.shape[0], -1))
    kernel = jnp.reshape(params["dense"]["kernel"], (-1, 3))  # stored 2-D as (.., 3)
    return flat @ kernel + params["dense"]["bias"][None]


def test_q_scale_authors_conv_mlp_hand(key):
    """conv -> tanh -> strided conv (STE-quantized) -> tanh -> reshape -> dense,
    against the layer-by-layer rules of docs/method.md §4.1 (VJPs with squared
    operands) with the authors' division by max|W| at each data-side input."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    params = {
        "c0": {
            "kernel": jax.random.normal(k1, (3, 3, 2, 3), jnp.float64) / 3,
            "bias": 0.1 * jnp.ones(3, jnp.float64),
        },
        "c1": {"kernel": jax.random.normal(k2, (3, 3, 3, 2), jnp.float64) / 4},
        "dense": {
            "kernel": jax.random.normal(k3, (8, 3), jnp.float64) / 3,
            "bias": jnp.zeros(3, jnp.float64),
        },
    }
    x = jax.random.normal(k4, (3, 4, 4, 2), jnp.float64)
    y = jnp.array([0, 1, 2])

    def hand(quirk):
        w0 = params["c0"]["kernel"]
        w1 = quantize(params["c1"]["kernel"], 4)
        wd = params["dense"]["kernel"]
        s1 = jnp.max(jnp.abs(params["c1"]["kernel"]))
        sd = jnp.max(jnp.abs(wd))
        z0 = conv(x, w0) + params["c0"]["bias"].reshape(1, 1, 1, -1)
        a1 = jnp.tanh(z0)
        z1 = conv(a1, w1, strides=(2, 2))
        a2 = jnp.tanh(z1)
        flat = a2.reshape(a2.shape[0], -1)
        z = flat @ wd + params["dense"]["bias"][None]
        p = jax.nn.softmax(z)
        h = p * (1 - p)
        out = {"dense": {"kernel": (flat**2).T @ h, "bias": h.sum(0)}}
        h = (h @ (wd**2).T) / (sd if quirk else 1.0)
        h = h.reshape(a2.shape) * (1 - jnp.tanh(z1) ** 2) ** 2
        (hw1,) = jax.vjp(lambda w: conv(a1**2, w, strides=(2, 2)), w1)[1](h)
        (ha1,) = jax.vjp(lambda u: conv(u, w1**2, strides=(2, 2)), a1)[1](h)
        out["c1"] = {"kernel": hw1}
        h = ha1 / (s1 if quirk else 1.0) * (1 - jnp.tanh(z0) ** 2) ** 2
        (hw0,) = jax.vjp(lambda w: conv(x**2, w), w0)[1](h)
        out["c0"] = {"kernel": hw0, "bias": h.sum((0, 1, 2))}
        return out

    assert_trees_close(obd(_cnn_q, params, x, y), hand(False))
    assert_trees_close(obd(_cnn_q, params, x, y, q_scale="authors"), hand(True))


def test_q_scale_authors_lenet_layer_ratios(key):
    """The 4-bit LeNet (QLeNet, the layers' STE quantizer in the graph): under
    the authors' rule layer j's diagonal (kernel and bias) is the exact one over
    the product of max|W_l| of every later layer l."""
    model = build_model("lenet", weight_bits=4)
    params = model.module.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    x = jax.random.uniform(key, (4, 28, 28, 1), jnp.float64)
    y = jnp.arange(4)
    exact = obd(model.apply_fn, params, x, y)
    got = obd(model.apply_fn, params, x, y, q_scale="authors")
    layers = ["Conv_0", "Conv_1", "Dense_0", "Dense_1", "Dense_2"]
    p = params["params"]
    scales = [float(jnp.max(jnp.abs(p[n]["kernel"]))) for n in layers]
    for j, name in enumerate(layers):
        ratio = 1.0 / float(np.prod(scales[j + 1 :]))
        for leaf in ("kernel", "bias"):
            np.testing.assert_allclose(
                got["params"][name][leaf],
                ratio * exact["params"][name][leaf],
                rtol=1e-9,
                atol=1e-300,
            )


# ------------------------------------------------------- models from elsewhere


class NNXMLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(3, 5, param_dtype=jnp.float64, rngs=rngs)
        self.l2 = nnx.Linear(5, 4, param_dtype=jnp.float64, rngs=rngs)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


def test_obd_flax_nnx_module(key):
    model = NNXMLP(nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    apply = lambda st, x: nnx.merge(graphdef, st)(x)
    x, y = data(key)
    hess_state = obd(apply, state, x, y)
    hess = nnx.merge(graphdef, hess_state)
    plain = {
        "dense0": {"kernel": model.l1.kernel[...], "bias": model.l1.bias[...]},
        "dense1": {"kernel": model.l2.kernel[...], "bias": model.l2.bias[...]},
    }
    want = mlp_hand(plain, x, jnp.tanh, lambda z: 1 - jnp.tanh(z) ** 2)
    np.testing.assert_allclose(hess.l1.kernel[...], want["dense0"]["kernel"], RTOL)
    np.testing.assert_allclose(hess.l2.bias[...], want["dense1"]["bias"], RTOL)


def test_unsupported_primitive_raises(key):
    params = init_mlp(key, [3, 3, 4])
    x, y = data(key)

    def looped(p, x):  # a trip count known only at run time
        def body(c):
            return c[0] + 1, jnp.tanh(c[1] @ p["dense0"]["kernel"])

        _, a = lax.while_loop(lambda c: c[0] < jnp.sum(x > 0), body, (0, x))
        return a @ p["dense1"]["kernel"]

    with pytest.raises(NotImplementedError, match="'while'.*hutchinson_diagonal"):
        uj.obd_diagonal(looped, params, x, y)


# ------------------------------------------------------------------ cond


def _branches(p):
    """Three heads on a shared hidden layer, each through its own params."""
    return [
        lambda a: jnp.tanh(a) @ p["dense1"]["kernel"],
        lambda a: jax.nn.sigmoid(a) @ p["dense2"]["kernel"] + p["dense2"]["bias"][None],
        lambda a: jnp.sin(a) ** 2 @ p["dense1"]["kernel"],
    ]


def _branched(style):
    """``style``: ``"cond"`` (``lax.cond`` on the sign of the batch's mean
    input: head 0 or 1), ``"switch"`` (``lax.switch`` over all three heads on
    ``round(mean)``, clamped), ``"jit"`` (the ``cond`` inside a jitted call),
    or an int: that head alone, no ``cond``."""

    def apply(p, x):
        a = x @ p["dense0"]["kernel"] + p["dense0"]["bias"][None]
        heads = _branches(p)
        if style == "switch":
            return lax.switch(jnp.round(jnp.mean(x)).astype(jnp.int32), heads, a)
        if isinstance(style, int):
            return heads[style](a)
        pick = lambda a: lax.cond(jnp.mean(x) > 0, heads[0], heads[1], a)
        return jax.jit(pick)(a) if style == "jit" else pick(a)

    return apply


def _cond_setup(key, shift):
    params = init_mlp(key, [3, 5, 4])
    params["dense2"] = init_mlp(jax.random.fold_in(key, 2), [5, 4])["dense0"]
    x, y = data(jax.random.fold_in(key, 1))
    return params, x - jnp.mean(x) + shift, y


@pytest.mark.parametrize("shift", [0.7, -0.7])
@pytest.mark.parametrize("style", ["cond", "jit"])
def test_obd_through_a_cond_is_that_of_the_taken_branch(key, style, shift):
    """A ``cond`` gets the one-pass diagonal of the same model with the taken
    branch written in its place, for either branch; the other branch's params
    get exactly zero; on the taken head, the exact Hessian diagonal."""
    params, x, y = _cond_setup(key, shift)
    got = obd(_branched(style), params, x, y)
    taken = 0 if shift > 0 else 1
    assert (float(jnp.mean(x)) > 0) == (taken == 0)
    assert_trees_close(got, obd(_branched(taken), params, x, y))
    head, idle = ("dense1", "dense2") if taken == 0 else ("dense2", "dense1")
    assert float(jnp.min(got["dense0"]["kernel"])) > 0
    assert not np.any(np.asarray(got[idle]["kernel"]))
    loss = uj.make_loss_fn(_branched(style), x, y)
    exact = exact_diagonal(
        lambda k: loss({**params, head: {**params[head], "kernel": k}}),
        params[head]["kernel"],
    )
    assert_trees_close(got[head]["kernel"], exact)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_obd_through_a_switch_follows_its_index(key, index):
    """``lax.switch`` over three heads: the diagonal on each head's kernel is
    the exact Hessian diagonal where the index takes it, zero elsewhere
    (heads 0 and 2 share a kernel, so it is nonzero under either)."""
    params, x, y = _cond_setup(key, float(index))
    got = obd(_branched("switch"), params, x, y)
    loss = uj.make_loss_fn(_branched("switch"), x, y)
    name = "dense2" if index == 1 else "dense1"
    exact = exact_diagonal(
        lambda k: loss({**params, name: {**params[name], "kernel": k}}),
        params[name]["kernel"],
    )
    assert_trees_close(got[name]["kernel"], exact)
    other = "dense1" if index == 1 else "dense2"
    assert not np.any(np.asarray(got[other]["kernel"]))


def test_obd_through_cond_in_flax_and_equinox(key):
    """The same branched model written with ``flax.linen``'s ``nn.cond``,
    ``flax.nnx``'s ``nnx.cond`` and an equinox module calling ``lax.cond``
    gets, layer for layer, the plain ``lax`` version's diagonal."""
    import equinox as eqx

    params, x, y = _cond_setup(key, 0.7)
    want = obd(_branched("cond"), params, x, y)
    f64 = {"param_dtype": jnp.float64}

    class Linen(nn.Module):
        @nn.compact
        def __call__(self, x):
            a = nn.Dense(5, name="dense0", **f64)(x)
            up = lambda m, a: nn.Dense(4, use_bias=False, name="dense1", **f64)(
                jnp.tanh(a)
            )
            down = lambda m, a: nn.Dense(4, name="dense2", **f64)(jax.nn.sigmoid(a))
            return nn.cond(jnp.mean(x) > 0, up, down, self, a)

    variables = {  # built by hand: nn.cond's branches cannot init different layers
        "params": {
            "dense0": params["dense0"],
            "dense1": {"kernel": params["dense1"]["kernel"]},
            "dense2": params["dense2"],
        }
    }
    got = obd(Linen().apply, variables, x, y)["params"]
    assert_trees_close(got["dense0"], want["dense0"])
    assert_trees_close(got["dense1"]["kernel"], want["dense1"]["kernel"])
    assert_trees_close(got["dense2"], want["dense2"])

    class Nnx(nnx.Module):
        def __init__(self, rngs):
            self.l0 = nnx.Linear(3, 5, rngs=rngs, **f64)
            self.l1 = nnx.Linear(5, 4, use_bias=False, rngs=rngs, **f64)
            self.l2 = nnx.Linear(5, 4, rngs=rngs, **f64)

        def __call__(self, x):
            a = self.l0(x)
            return nnx.cond(
                jnp.mean(x) > 0,
                lambda m, a: m.l1(jnp.tanh(a)),
                lambda m, a: m.l2(jax.nn.sigmoid(a)),
                self,
                a,
            )

    model = Nnx(nnx.Rngs(0))
    for layer, name in (
        (model.l0, "dense0"),
        (model.l1, "dense1"),
        (model.l2, "dense2"),
    ):
        for k, v in params[name].items():
            if getattr(layer, k) is not None:  # dense1 has no bias here
                getattr(layer, k)[...] = v
    graphdef, state = nnx.split(model)
    got = nnx.merge(
        graphdef, obd(lambda st, x: nnx.merge(graphdef, st)(x), state, x, y)
    )
    np.testing.assert_allclose(got.l0.kernel[...], want["dense0"]["kernel"], RTOL)
    np.testing.assert_allclose(got.l1.kernel[...], want["dense1"]["kernel"], RTOL)
    assert not np.any(np.asarray(got.l2.kernel[...]))

    class Eqx(eqx.Module):  # per-sample layers, vmapped over the batch
        l0: eqx.nn.Linear
        l1: eqx.nn.Linear
        l2: eqx.nn.Linear

        def __call__(self, x):
            a = jax.vmap(self.l0)(x)
            return lax.cond(
                jnp.mean(x) > 0,
                lambda a: jax.vmap(self.l1)(jnp.tanh(a)),
                lambda a: jax.vmap(self.l2)(jax.nn.sigmoid(a)),
                a,
            )

    ks = jax.random.split(key, 3)
    m = Eqx(
        eqx.nn.Linear(3, 5, key=ks[0], dtype=jnp.float64),
        eqx.nn.Linear(5, 4, use_bias=False, key=ks[1], dtype=jnp.float64),
        eqx.nn.Linear(5, 4, key=ks[2], dtype=jnp.float64),
    )
    m = eqx.tree_at(
        lambda m: (m.l0.weight, m.l0.bias, m.l1.weight, m.l2.weight, m.l2.bias),
        m,
        (
            params["dense0"]["kernel"].T,
            params["dense0"]["bias"],
            params["dense1"]["kernel"].T,
            params["dense2"]["kernel"].T,
            params["dense2"]["bias"],
        ),
    )
    got = obd(lambda m, x: m(x), m, x, y)
    np.testing.assert_allclose(got.l0.weight.T, want["dense0"]["kernel"], RTOL)
    np.testing.assert_allclose(got.l1.weight.T, want["dense1"]["kernel"], RTOL)
    assert not np.any(np.asarray(got.l2.weight))


def _rnn(loop, reverse=False):
    """An Elman RNN over ``x`` (N, T, D): ``a_t = tanh(a_{t-1} W + x_t U + b)``,
    logits from the mean of the states and the last one; ``loop`` is
    ``"scan"``, ``"fori"`` (``lax.fori_loop`` with static bounds) or
    ``"python"`` (the same arithmetic, unrolled by hand)."""

    def cell(p, a, xt):
        return jnp.tanh(a @ p["rec"]["kernel"] + xt @ p["inp"]["kernel"] + p["b"][None])

    def apply(p, x):
        steps = list(range(x.shape[1]))
        steps = steps[::-1] if reverse else steps
        a0 = jnp.zeros((x.shape[0], p["b"].shape[0]), x.dtype)
        if loop == "scan":
            xs = jnp.swapaxes(x, 0, 1)
            step = lambda a, xt: (cell(p, a, xt),) * 2
            a, states = lax.scan(step, a0, xs, reverse=reverse)
            mean = states.mean(0)
        elif loop == "fori":
            assert not reverse
            body = lambda t, c: (cell(p, c[0], x[:, t]), c[1] + cell(p, c[0], x[:, t]))
            a, total = lax.fori_loop(0, len(steps), body, (a0, a0))
            mean = total / len(steps)
        else:
            a, states = a0, []
            for t in steps:
                a = cell(p, a, x[:, t])
                states.append(a)
            mean = sum(states) / len(states)
        return jnp.concatenate([a, mean], -1) @ p["out"]["kernel"]

    return apply


def _rnn_setup(key):
    ks = jax.random.split(key, 5)
    h, d, c = 5, 3, 4
    params = {
        "rec": {"kernel": jax.random.normal(ks[0], (h, h), jnp.float64) / h},
        "inp": {"kernel": jax.random.normal(ks[1], (d, h), jnp.float64)},
        "b": 0.1 * jax.random.normal(ks[2], (h,), jnp.float64),
        "out": {"kernel": jax.random.normal(ks[3], (2 * h, c), jnp.float64)},
    }
    x = jax.random.normal(ks[4], (7, 4, d), jnp.float64)
    y = jnp.argmax(_rnn("python")(params, x), -1)
    return params, x, y


@pytest.mark.parametrize(
    ("loop", "reverse"), [("scan", False), ("scan", True), ("fori", False)]
)
def test_obd_unrolls_a_scan_as_a_python_loop(key, loop, reverse):
    """A recurrent model written with ``lax.scan`` (forward or reverse) or a
    static ``fori_loop`` gets the one-pass diagonal of the same model written
    as a Python loop; on the output layer, the exact Hessian diagonal."""
    params, x, y = _rnn_setup(key)
    got = obd(_rnn(loop, reverse), params, x, y)
    want = obd(_rnn("python", reverse), params, x, y)
    assert_trees_close(got, want)
    assert float(jnp.min(got["rec"]["kernel"])) > 0  # h reached through the carry
    loss = uj.make_loss_fn(_rnn(loop, reverse), x, y)
    exact = exact_diagonal(lambda out: loss({**params, "out": out}), params["out"])
    assert_trees_close(got["out"], exact)


def test_obd_of_flax_rnn_equals_the_cell_looped_by_hand(key):
    """Flax linen's ``nn.RNN`` (a scan over the cell) against the same cell
    called once per step in a Python loop, with the same params."""
    import flax.linen as fnn

    f64 = {"param_dtype": jnp.float64}

    class ByScan(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            h = fnn.RNN(fnn.SimpleCell(5, **f64))(x)
            return fnn.Dense(4, name="out", **f64)(h[:, -1])

    class ByLoop(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            cell = fnn.SimpleCell(5, name="SimpleCell_0", **f64)
            carry = cell.initialize_carry(jax.random.key(0), x[:, 0].shape)
            for t in range(x.shape[1]):
                carry, y = cell(carry, x[:, t])
            return fnn.Dense(4, name="out", **f64)(y)

    x = jax.random.normal(key, (6, 4, 3), jnp.float64)
    variables = ByScan().init(jax.random.key(0), x)
    y = jnp.argmax(ByScan().apply(variables, x), -1)
    np.testing.assert_allclose(
        ByLoop().apply(variables, x), ByScan().apply(variables, x), rtol=1e-12
    )  # the same function, the same params
    got = obd(ByScan().apply, variables, x, y)
    assert_trees_close(got, obd(ByLoop().apply, variables, x, y))


def test_obd_unrolls_a_scan_inside_a_jitted_call_and_nested(key):
    params, x, y = _rnn_setup(key)
    inner = jax.jit(_rnn("scan"))

    def nested(p, x):  # a scan over two halves of the batch, each a jitted scan
        halves = jnp.stack([x[:3], x[3:6]])
        _, out = lax.scan(lambda c, xh: (c, inner(p, xh)), 0.0, halves)
        return jnp.concatenate([out.reshape(6, -1), inner(p, x[6:])])

    got = obd(nested, params, x, y)
    want = obd(_rnn("python"), params, x, y)
    assert_trees_close(got, want)


def test_control_flow_off_the_param_path_is_fine(key):
    params = init_mlp(key, [3, 4])
    x, y = data(key)

    def apply(p, x):
        x = lax.fori_loop(0, 2, lambda i, a: a * 0.5, x)
        return make_mlp(jnp.tanh)(p, x)

    got = obd(apply, params, x, y)
    want = mlp_hand(params, x * 0.25, jnp.tanh, None)
    assert_trees_close(got, want)


def test_obd_bad_arguments(key):
    params = init_mlp(key, [3, 4])
    x, y = data(key)
    with pytest.raises(ValueError, match="loss"):
        obd(make_mlp(jnp.tanh), params, x, y, loss="hinge")
    with pytest.raises(ValueError, match="avg_pool"):
        obd(make_mlp(jnp.tanh), params, x, y, avg_pool="nope")
    with pytest.raises(ValueError, match="q_scale"):
        obd(make_mlp(jnp.tanh), params, x, y, q_scale="squared")
    with pytest.raises(ValueError, match="q_scale"):
        uj.obd_over_dataset(make_mlp(jnp.tanh), params, x, y, q_scale="squared")


def test_obd_over_dataset(key):
    params = init_mlp(key, [3, 5, 4])
    x, y = data(key, n=10)
    apply = make_mlp(jnp.tanh)
    hess, grad = uj.obd_over_dataset(apply, params, x, y, batch_size=5)
    assert_trees_close(hess, obd(apply, params, x, y))
    want = None
    for s in range(0, 10, 5):
        g = jax.grad(
            uj.make_loss_fn(apply, x[s : s + 5], y[s : s + 5], reduction="mean")
        )(params)
        want = g if want is None else jax.tree_util.tree_map(jnp.add, want, g)
    assert_trees_close(grad, want)


# ------------------------------------------------- Hutchinson, exact, GGN, Fisher


def test_exact_diagonal_equals_hessian(key):
    params = init_mlp(key, [3, 4, 2])
    x, y = data(key, c=2)
    loss = uj.make_loss_fn(make_mlp(jnp.tanh), x, y)
    flat, unravel = ravel_pytree(params)
    want = unravel(jnp.diag(jax.jit(jax.hessian(lambda v: loss(unravel(v))))(flat)))
    assert_trees_close(exact_diagonal(loss, params, chunk_size=7), want)
    assert_trees_close(exact_diagonal(loss, params, chunk_size=None), want)


def test_hutchinson_within_five_standard_errors(key):
    """Probabilistic (fixed seed): every entry within 5 standard errors."""
    params = init_mlp(key, [3, 4, 2])
    x, y = data(key, c=2)
    loss = uj.make_loss_fn(make_mlp(jnp.tanh), x, y)
    exact = exact_diagonal(loss, params)
    est, se = hutchinson(jax.random.key(3), loss, params, 1000, chunk_size=250)
    for e, s, t in zip(
        *(jax.tree_util.tree_leaves(a) for a in (est, se, exact)), strict=True
    ):
        assert np.all(np.abs(e - t) <= 5 * s + 1e-12)


def test_hutchinson_chunking_does_not_change_the_estimate(key):
    def loss(p):
        v = jnp.concatenate([p["a"], p["b"].ravel()])
        return jnp.sum(v**4) + jnp.sum(v) ** 2 * jnp.sum(v**2)

    params = {"a": jnp.array([0.3, -1.0, 2.0]), "b": jnp.array([[0.5, -0.7]])}
    est, se = hutchinson(key, loss, params, 37)
    est_c, se_c = hutchinson(key, loss, params, 37, chunk_size=8)  # 4 x 8 + 5
    assert_trees_close(est_c, est, rtol=1e-9)
    assert_trees_close(se_c, se, rtol=1e-7)
    assert float(jnp.min(se["a"])) > 0


def test_hutchinson_exact_on_diagonal_quadratic(key):
    d = {"a": jnp.array([1.0, 2.0, 3.0]), "b": jnp.array([[0.5, -1.0]])}
    loss = lambda p: (
        0.5
        * sum(
            jnp.sum(dd * pp**2)
            for dd, pp in zip(
                jax.tree_util.tree_leaves(d), jax.tree_util.tree_leaves(p), strict=True
            )
        )
    )
    params = jax.tree_util.tree_map(jnp.ones_like, d)
    for n, chunk in ((1, None), (5, 2), (8, None)):
        est, se = hutchinson(key, loss, params, n, chunk_size=chunk)
        assert_trees_close(est, d)
        if n > 1:
            assert_trees_close(se, jax.tree_util.tree_map(jnp.zeros_like, d))


def test_ggn_relu_equals_exact_and_tanh_equals_jacobian_formula(key):
    params = init_mlp(key, [3, 4, 3])
    x, y = data(key, c=3)
    relu_apply = make_mlp(jax.nn.relu)
    exact = exact_diagonal(uj.make_loss_fn(relu_apply, x, y), params)
    assert_trees_close(ggn(relu_apply, params, x, y), exact)
    apply = make_mlp(jnp.tanh)
    flat, unravel = ravel_pytree(params)
    jac = jax.jacobian(lambda v: apply(unravel(v), x))(flat)  # (N, C, P)
    p = jax.nn.softmax(apply(params, x), axis=-1)
    hz = jax.vmap(lambda q: jnp.diag(q) - jnp.outer(q, q))(p)
    ggn_want = jnp.einsum("ncp,ncd,ndp->p", jac, hz, jac)
    assert_trees_close(ggn(apply, params, x, y, chunk_size=4), unravel(ggn_want))


def test_fisher_is_sum_of_squared_per_example_gradients(key):
    params = init_mlp(key, [3, 4, 3])
    x, y = data(key, n=5, c=3)
    apply = make_mlp(jnp.tanh)
    want = None
    for i in range(5):
        g = jax.grad(uj.make_loss_fn(apply, x[i : i + 1], y[i : i + 1]))(params)
        g = jax.tree_util.tree_map(jnp.square, g)
        want = g if want is None else jax.tree_util.tree_map(jnp.add, want, g)
    assert_trees_close(fisher(apply, params, x, y, chunk_size=2), want)
