"""The trial-batching interpreter (``uswim_jax._trialbatch``) against the plain
path (``jax.vmap`` of ``apply_fn`` over stacked params), and ``evaluate`` /
``sweep`` on users' own models against the pre-change path (``vmap`` of the
single-trial ``noisy_accuracy``).

Convolution configurations are compared in float64, where the rewrite's other
summation order leaves differences at the 1e-15 level."""

import logging

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jax import lax
from jax.extend import core as jcore

import uswim_jax as uj
from uswim_jax import _chunking
from uswim_jax._trialbatch import TrialBatched, trial_batched
from uswim_jax.models import build_model
from uswim_jax.montecarlo import evaluate, noisy_accuracy, trial_keys
from uswim_jax.selection import mask_from_order

RTOL = 1e-10  # float64


def _f64(tree):
    return jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), tree)


def _crossbar(path, leaf):
    """Kernels of every framework: flax ``kernel``, equinox ``weight``, our
    ``w``; nnx paths end in ``/value``."""
    return np.ndim(leaf) >= 2 and any(
        s in ("kernel", "weight", "w") for s in path.split("/")
    )


def _plain(apply_fn, stacked, x, batched=None):
    leaves, tree = jax.tree.flatten(stacked)
    flags = [True] * len(leaves) if batched is None else tree.flatten_up_to(batched)
    axes = jax.tree.unflatten(tree, [0 if f else None for f in flags])
    return jax.jit(jax.vmap(apply_fn, in_axes=(axes, None)))(stacked, x)


def _batched(apply_fn, stacked, x, batched=None, conv_patch_rows=None):
    leaves, tree = jax.tree.flatten(stacked)
    flags = [True] * len(leaves) if batched is None else tree.flatten_up_to(batched)
    one = jax.tree.unflatten(
        tree,
        [
            jax.ShapeDtypeStruct(a.shape[1:] if f else a.shape, a.dtype)
            for a, f in zip(leaves, flags, strict=True)
        ],
    )
    tb = TrialBatched(apply_fn, one, x, batched, conv_patch_rows)
    return jax.jit(tb)(stacked, x)


# -- convolutions ------------------------------------------------------------


@st.composite
def conv_configs(draw):
    d = draw(st.integers(1, 3))
    sp = "HWD"[:d]
    lhs = "".join(draw(st.permutations(["N", "C", *sp])))
    rhs = "".join(draw(st.permutations(["O", "I", *sp])))
    out = "".join(draw(st.permutations(["N", "C", *sp])))
    g = draw(st.integers(1, 3))
    cfg = {
        "d": d,
        "dn": (lhs, rhs, out),
        "groups": g,
        "cg": draw(st.integers(1, 2)),
        "og": draw(st.integers(1, 2)),
        "size": [draw(st.integers(2, 6 if d < 3 else 4)) for _ in range(d)],
        "kernel": [draw(st.integers(1, 3)) for _ in range(d)],
        "strides": tuple(draw(st.integers(1, 3)) for _ in range(d)),
        "padding": tuple(
            (draw(st.integers(-1, 2)), draw(st.integers(-1, 2))) for _ in range(d)
        ),
        "lhs_dilation": tuple(draw(st.integers(1, 2)) for _ in range(d)),
        "rhs_dilation": tuple(draw(st.integers(1, 2)) for _ in range(d)),
        "shared_lhs": draw(st.booleans()),
    }
    for s, k, (lo, hi), ld, rd in zip(
        cfg["size"],
        cfg["kernel"],
        cfg["padding"],
        cfg["lhs_dilation"],
        cfg["rhs_dilation"],
        strict=True,
    ):
        assume((s - 1) * ld + 1 + lo + hi >= (k - 1) * rd + 1)
    return cfg


def _conv_problem(cfg, trials=3):
    lhs_s, rhs_s, _ = cfg["dn"]
    sp = "HWD"[: cfg["d"]]
    c, o = cfg["groups"] * cfg["cg"], cfg["groups"] * cfg["og"]
    lhs_dims = {"N": 2, "C": c, **dict(zip(sp, cfg["size"], strict=True))}
    rhs_dims = {"O": o, "I": cfg["cg"], **dict(zip(sp, cfg["kernel"], strict=True))}
    lhs_shape = tuple(lhs_dims[ch] for ch in lhs_s)
    rhs_shape = tuple(rhs_dims[ch] for ch in rhs_s)
    x = jax.random.normal(jax.random.key(0), (trials, *lhs_shape), jnp.float64)
    k = jax.random.normal(jax.random.key(1), (trials, *rhs_shape), jnp.float64)

    def conv(lhs, rhs):
        return lax.conv_general_dilated(
            lhs,
            rhs,
            cfg["strides"],
            cfg["padding"],
            lhs_dilation=cfg["lhs_dilation"],
            rhs_dilation=cfg["rhs_dilation"],
            dimension_numbers=cfg["dn"],
            feature_group_count=cfg["groups"],
        )

    return x, k, conv


@settings(max_examples=15, deadline=None)
@given(conv_configs(), st.sampled_from([None, 0]))
def test_conv_rewrite_matches_vmap(cfg, rows):
    """Any rank, layout, stride, padding (negative too), lhs/rhs dilation and
    feature grouping, with the input shared by the trials or per trial, followed
    by an elementwise step in the rewrite's physical layout and a reduction;
    im2col everywhere (``conv_patch_rows=None``) or, for a per-trial input, one
    XLA convolution per trial (``0``)."""
    with jax.enable_x64(True):
        x, k, conv = _conv_problem(cfg)

        def apply_fn(p, xi):
            lhs = xi if cfg["shared_lhs"] else p["x"]
            y = jnp.tanh(conv(lhs, p["k"])) * 2.0
            return jnp.sum(y, axis=0)

        if cfg["shared_lhs"]:
            stacked, xi, batched = {"k": k}, x[0], None
        else:
            stacked, xi, batched = {"k": k, "x": x}, jnp.zeros(()), None
        want = _plain(apply_fn, stacked, xi, batched)
        got = _batched(apply_fn, stacked, xi, batched, rows)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL)


def test_conv_rewrite_has_no_convolution_left():
    """The rewrite is what runs: no ``conv_general_dilated`` in the batched
    program, and the shared input's patches are built once (no trial axis)."""
    x = jnp.ones((2, 6, 6, 3))
    k = jnp.ones((4, 3, 3, 3, 5))

    def f(p, xi):
        return lax.conv_general_dilated(
            xi, p, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    tb = trial_batched(f, k[0], x)
    text = str(jax.make_jaxpr(tb)(k, x))
    assert "conv_general_dilated" not in text
    # (kh*kw*C, H*(W+1)*N) patches, shared: stride 1 takes the flat shifted
    # slices of the input padded on the left of W only
    assert "f32[27,84]" in text


# -- dense, wrappers, fallback ------------------------------------------------


@pytest.mark.parametrize("out_layout", ["NHWC", "NCHW", "HWNC"])
@pytest.mark.parametrize("kernel_side", ["rhs", "lhs"])
@pytest.mark.parametrize("shared_kernel", [False, True])
def test_dense_after_conv_keeps_the_trunk_layout(
    out_layout, kernel_side, shared_kernel
):
    """A conv output (kept in the rewrite's images-minor layout) flattened by a
    reshape and fed to a dense kernel, on either side of the ``dot_general``,
    per trial or shared; then a reshape that splits an axis (not a merge: runs
    in the logical layout) and a second dense layer."""
    with jax.enable_x64(True):
        kx, kc, kd, ke = jax.random.split(jax.random.key(5), 4)
        x = jax.random.normal(kx, (4, 5, 6, 2), jnp.float64)  # NHWC
        conv_k = jax.random.normal(kc, (3, 3, 3, 2, 3), jnp.float64)
        dense = jax.random.normal(kd, (3, 5 * 6 * 3, 8), jnp.float64)
        dense2 = jax.random.normal(ke, (3, 4, 3), jnp.float64)

        def f(p, xi):
            y = lax.conv_general_dilated(
                xi, p["c"], (1, 1), "SAME",
                dimension_numbers=("NHWC", "HWIO", out_layout),
            )  # fmt: skip
            if out_layout == "NCHW":
                y = jnp.transpose(y, (0, 2, 3, 1))
            elif out_layout == "HWNC":
                y = jnp.transpose(y, (2, 0, 1, 3))
            y = jnp.reshape(y, (y.shape[0], -1))  # (N, H*W*C)
            if kernel_side == "rhs":
                z = jnp.tanh(y @ p["d"])  # (N, 8)
            else:
                z = jnp.tanh(p["d"].T @ y.T).T
            z = jnp.reshape(z, (z.shape[0], 2, 4))  # a split: logical layout
            return jnp.einsum("nab,bc->nac", z, p["e"])

        stacked = {"c": conv_k, "d": dense, "e": dense2}
        flags = {"c": True, "d": not shared_kernel, "e": True}
        if shared_kernel:
            stacked["d"] = dense[0]
        want = _plain(f, stacked, x, flags)
        got = _batched(f, stacked, x, flags)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL)


def test_dot_general_odd_dims_and_shared_operands():
    """Contraction over several and non-trailing dims, batch dims, and either
    operand shared."""
    with jax.enable_x64(True):
        kx, kw = jax.random.split(jax.random.key(3))
        x = jax.random.normal(kx, (5, 3, 4, 2), jnp.float64)
        w = jax.random.normal(kw, (3, 2, 3, 4, 7), jnp.float64)  # T=3

        def f(p, xi):
            a = lax.dot_general(xi, p["w"], (((1, 3), (1, 0)), ((2,), (2,))))
            b = lax.dot_general(p["w"], xi, (((1,), (1,)), ((), ())))
            return jnp.sum(a) + jnp.sum(b, axis=(1, 2))

        want = _plain(f, {"w": w}, x)
        got = _batched(f, {"w": w}, x)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL)
        # shared weight, per-trial input
        stacked = {"w": w[0], "x": jnp.stack([x, 2 * x, -x])}
        flags = {"w": False, "x": True}
        g = lambda p, _: f({"w": p["w"]}, p["x"])  # noqa: E731
        np.testing.assert_allclose(
            _batched(g, stacked, jnp.zeros(()), flags),
            _plain(g, stacked, jnp.zeros(()), flags),
            rtol=RTOL,
            atol=RTOL,
        )


def test_wrapped_in_jit_custom_jvp_custom_vjp_and_remat():
    """Call primitives are interpreted (and their convolutions rewritten)."""

    @jax.custom_jvp
    def act(v):
        return jnp.maximum(v, 0.0)

    act.defjvp(lambda p, t: (act(p[0]), t[0] * (p[0] > 0)))

    @jax.custom_vjp
    def scale(v):
        return 2.0 * v

    scale.defvjp(lambda v: (scale(v), None), lambda _, g: (2.0 * g,))

    @jax.jit
    def conv(xi, kern):
        return lax.conv_general_dilated(
            xi, kern, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    @jax.checkpoint
    def f(p, xi):
        return jnp.mean(scale(act(conv(xi, p["kernel"]))), axis=(1, 2))

    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3), jnp.float64)
        k = jax.random.normal(jax.random.key(1), (4, 3, 3, 3, 6), jnp.float64)
        tb = trial_batched(f, {"kernel": k[0]}, x)
        assert "conv_general_dilated" not in str(jax.make_jaxpr(tb)({"kernel": k}, x))
        np.testing.assert_allclose(
            tb({"kernel": k}, x), _plain(f, {"kernel": k}, x), rtol=RTOL, atol=RTOL
        )


def _big_transposes(jaxpr, min_size):
    """Transposes in ``jaxpr`` (recursively) of arrays of at least ``min_size``
    elements."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "transpose":
            if np.prod(eqn.invars[0].aval.shape) >= min_size:
                found.append(eqn.invars[0].aval.shape)
        for sub in jcore.jaxprs_in_params(eqn.params):
            found += _big_transposes(getattr(sub, "jaxpr", sub), min_size)
    return found


def test_unit_axes_squeeze_and_broadcast_keep_the_trunk_layout():
    """The per-sample style (equinox: a ``(C, H, W)`` module ``vmap``-ed over the
    images) wraps each layer in size-1 axes: ``x[None]``, reshapes that add or
    drop them, ``squeeze``, a broadcast bias and an image-minor pooling. All of
    them keep the conv output's images-minor layout: the same values as the
    plain path and no transpose of an activation."""
    with jax.enable_x64(True):
        kx, kc, kb, kd = jax.random.split(jax.random.key(7), 4)
        x = jax.random.normal(kx, (6, 2, 7, 7), jnp.float64)  # NCHW
        conv_k = jax.random.normal(kc, (3, 5, 2, 3, 3), jnp.float64)  # OIHW
        bias = jax.random.normal(kb, (3, 5, 1, 1), jnp.float64)
        dense = jax.random.normal(kd, (3, 4, 5 * 3 * 3), jnp.float64)

        def one(p, xi):  # one (C, H, W) image
            y = lax.conv_general_dilated(
                xi[None], p["c"], (1, 1), "SAME",
                dimension_numbers=("NCHW", "OIHW", "NCHW"),
            )[0]  # fmt: skip
            y = jnp.tanh(y + p["b"])
            y = jnp.transpose(y, (1, 2, 0))[None]  # (1, H, W, C)
            y = lax.reduce_window(
                y, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
            )
            y = jnp.squeeze(y, 0)
            y = jnp.reshape(jnp.transpose(y, (2, 0, 1)), (1, -1, 1))
            return p["d"] @ jnp.reshape(y, (-1,))

        def f(p, xs):
            return jax.vmap(lambda xi: one(p, xi))(xs)

        stacked = {"c": conv_k, "b": bias, "d": dense}
        np.testing.assert_allclose(
            _batched(f, stacked, x), _plain(f, stacked, x), rtol=RTOL, atol=RTOL
        )
        one_trial = jax.tree.map(lambda a: a[0], stacked)
        jaxpr = jax.make_jaxpr(trial_batched(f, one_trial, x))(stacked, x).jaxpr
        # activations are >= 3 trials x 5 channels x 3 x 3 x 6 images; the
        # kernels' and the output's transposes are smaller
        assert _big_transposes(jaxpr, 3 * 5 * 9 * 6) == []


@pytest.mark.parametrize(
    "shape",
    [
        (4, 1, 5, 6, 3),  # a size-1 axis inserted
        (1, 4, 5, 6, 1, 3, 1),  # several
        (4, 30, 1, 3),  # merged and inserted
        (4, 1, 90),  # merged across the layout: a merged axis with its own rows
        (1, 4, 5, 18),
        (4, 5, 2, 3, 3),  # a split: runs in the logical layout
    ],
)
def test_reshapes_with_size_one_axes(shape):
    """Reshapes of a conv output (images-minor layout) that insert size-1 axes,
    merge and split, then a squeeze of every size-1 axis and a dense layer."""
    with jax.enable_x64(True):
        kx, kc, kd = jax.random.split(jax.random.key(9), 3)
        x = jax.random.normal(kx, (4, 5, 6, 2), jnp.float64)  # NHWC
        conv_k = jax.random.normal(kc, (3, 3, 3, 2, 3), jnp.float64)
        dense = jax.random.normal(kd, (3, 90, 4), jnp.float64)

        def f(p, xi):
            y = lax.conv_general_dilated(
                xi, p["c"], (1, 1), "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )  # fmt: skip
            y = jnp.reshape(y, shape)
            y = lax.squeeze(y, [i for i, n in enumerate(shape) if n == 1])
            return jnp.reshape(y, (4, 90)) @ p["d"]

        stacked = {"c": conv_k, "d": dense}
        np.testing.assert_allclose(
            _batched(f, stacked, x), _plain(f, stacked, x), rtol=RTOL, atol=RTOL
        )


def test_fallback_is_correct_and_logs_once(caplog):
    """A primitive with no rewrite (``cumsum``, twice) and a convolution the
    rewrite does not cover (``batch_group_count=2``) run under ``jax.vmap``'s
    rule, with one debug line per primitive."""

    def f(p, xi):
        y = lax.conv_general_dilated(
            xi,
            p["k"],
            (1,),
            "VALID",
            dimension_numbers=("NCH", "OIH", "NCH"),
            batch_group_count=2,
        )
        y = lax.cumsum(lax.cumsum(y, axis=2), axis=1)
        return y

    x = jax.random.normal(jax.random.key(0), (4, 3, 7))
    k = jax.random.normal(jax.random.key(1), (3, 4, 3, 2))
    with caplog.at_level(logging.DEBUG, logger="uswim_jax._trialbatch"):
        got = _batched(f, {"k": k}, x)
    np.testing.assert_allclose(got, _plain(f, {"k": k}, x), rtol=1e-6, atol=1e-6)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("cumsum" in m for m in lines) == 1
    assert sum("conv_general_dilated" in m and "batch_group" in m for m in lines) == 1


# -- users' models through evaluate and sweep --------------------------------
# Not tests/_user_models.py's four-ways CNN (one function, average pools,
# VALID padding, NHWC everywhere): these LeNets differ on purpose in what the
# rewrite must carry through the trunk layout: max pools, SAME padding, a
# BatchNorm in eval mode (nnx) and NCHW images (equinox).

H = 12  # image side of the tiny LeNets


def _lenet_lax(key):
    ks = jax.random.split(key, 4)
    s = 0.3
    p = {
        "c1": {"w": s * jax.random.normal(ks[0], (3, 3, 1, 4)), "b": jnp.zeros(4)},
        "c2": {"w": s * jax.random.normal(ks[1], (3, 3, 4, 6)), "b": jnp.zeros(6)},
        "d1": {"w": s * jax.random.normal(ks[2], (6 * 3 * 3, 16)), "b": jnp.zeros(16)},
        "d2": {"w": s * jax.random.normal(ks[3], (16, 10)), "b": jnp.zeros(10)},
    }

    def conv(x, c):
        y = lax.conv_general_dilated(
            x, c["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jax.nn.relu(y + c["b"][None, None, None, :])

    def pool(x):
        return lax.reduce_window(
            x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
        )

    def apply_fn(p, x):
        x = pool(conv(pool(conv(x, p["c1"])), p["c2"]))
        x = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["d1"]["w"] + p["d1"]["b"][None])
        return x @ p["d2"]["w"] + p["d2"]["b"][None]

    return p, apply_fn, "NHWC"


class _LinenLeNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        for f in (4, 6):
            x = nn.max_pool(nn.relu(nn.Conv(f, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


def _lenet_linen(key):
    m = _LinenLeNet()
    params = m.init(key, jnp.zeros((1, H, H, 1), jnp.float32))
    return params, m.apply, "NHWC"


class _NnxLeNet(nnx.Module):
    def __init__(self, rngs):
        self.c1 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.c2 = nnx.Conv(4, 6, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(6, rngs=rngs)
        self.d1 = nnx.Linear(6 * 3 * 3, 16, rngs=rngs)
        self.d2 = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        x = nn.max_pool(nnx.relu(self.c1(x)), (2, 2), (2, 2))
        x = nn.max_pool(nnx.relu(self.bn(self.c2(x))), (2, 2), (2, 2))
        return self.d2(nnx.relu(self.d1(x.reshape(x.shape[0], -1))))


def _lenet_nnx(key):
    m = _NnxLeNet(nnx.Rngs(params=key))
    m.eval()
    graphdef, state = nnx.split(m)
    return state, lambda s, x: nnx.merge(graphdef, s)(x), "NHWC"


class _EqxLeNet(eqx.Module):
    c1: eqx.nn.Conv2d
    c2: eqx.nn.Conv2d
    d1: eqx.nn.Linear
    d2: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 4)
        self.c1 = eqx.nn.Conv2d(1, 4, 3, padding=1, key=k[0])
        self.c2 = eqx.nn.Conv2d(4, 6, 3, padding=1, key=k[1])
        self.d1 = eqx.nn.Linear(6 * 3 * 3, 16, key=k[2])
        self.d2 = eqx.nn.Linear(16, 10, key=k[3])

    def __call__(self, x):  # one (C, H, W) image
        pool = eqx.nn.MaxPool2d(2, 2)
        x = pool(jax.nn.relu(self.c1(x)))
        x = pool(jax.nn.relu(self.c2(x)))
        return self.d2(jax.nn.relu(self.d1(x.reshape(-1))))


def _lenet_eqx(key):
    params, static = eqx.partition(_EqxLeNet(key), eqx.is_array)
    return params, lambda p, x: jax.vmap(eqx.combine(p, static))(x), "NCHW"


BUILDERS = {
    "lax": _lenet_lax,
    "linen": _lenet_linen,
    "nnx": _lenet_nnx,
    "equinox": _lenet_eqx,
}


def _data(layout, n=24):
    kx, ky = jax.random.split(jax.random.key(7))
    x = jax.random.normal(kx, (n, H, H, 1), jnp.float64)
    if layout == "NCHW":
        x = jnp.transpose(x, (0, 3, 1, 2))
    return x, jax.random.randint(ky, (n,), 0, 10)


def _old_path(key, apply_fn, params, x, y, device, num_trials, batch, mask=None):
    """The pre-change evaluate: ``vmap`` of the single-trial noisy forward."""
    std = device.effective_std(params, mask)

    @jax.jit
    def run(key, params, x, y):
        return jax.vmap(
            lambda k: noisy_accuracy(
                k,
                apply_fn,
                params,
                std,
                x,
                y,
                crossbar=device.crossbar,
                eval_batch_size=batch,
            )
        )(trial_keys(key, num_trials))

    return run(key, params, x, y)


def _check_evaluate(params, apply_fn, x, num_trials=5, batch=10):
    # labels: the noise-free predictions, so that the noise lowers accuracy
    y = jnp.argmax(apply_fn(params, x), axis=-1)
    device = uj.UniformVariation(0.6, 0.06, crossbar=_crossbar)
    key = jax.random.key(11)

    def run(chunk):
        f = jax.jit(
            lambda key, params, x, y: (
                evaluate(
                    key,
                    apply_fn,
                    params,
                    x,
                    y,
                    device,
                    None,
                    num_trials,
                    chunk_size=chunk,
                    eval_batch_size=batch,
                ).accuracies
            )
        )
        return np.asarray(f(key, params, x, y))

    got = {c: run(c) for c in (1, 3)}
    want = np.asarray(_old_path(key, apply_fn, params, x, y, device, num_trials, batch))
    np.testing.assert_array_equal(got[1], got[3])
    np.testing.assert_array_equal(got[3], want)
    assert len(set(want.tolist())) > 1  # the noise does something


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_evaluate_user_lenet_matches_old_path(kind):
    """Per-trial accuracies do not depend on the chunk size and equal the
    pre-change path's, on LeNets written with plain lax, flax.linen, flax.nnx
    (split state, with a BatchNorm in eval mode) and equinox (NCHW, vmapped
    over images). Float64, so the rewrite's summation order cannot flip an
    argmax."""
    with jax.enable_x64(True):
        params, apply_fn, layout = BUILDERS[kind](jax.random.key(0))
        x, _ = _data(layout)
        _check_evaluate(_f64(params), apply_fn, x)


def test_evaluate_float32_logits_and_argmax():
    """Float32: logits within float32 tolerance of the plain path and the same
    argmax on a fixed set of images."""
    params, apply_fn, _ = _lenet_linen(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(7), (64, H, H, 1))
    stacked = jax.tree.map(
        lambda w: w[None] * (1 + 0.1 * jnp.arange(4.0).reshape((4,) + (1,) * w.ndim)),
        params,
    )
    want = _plain(apply_fn, stacked, x)
    got = _batched(apply_fn, stacked, x)
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_array_equal(jnp.argmax(got, -1), jnp.argmax(want, -1))


@pytest.mark.slow
def test_sweep_user_model_matches_evaluate():
    """``sweep`` on a user's model (plain lax) gives, at every step, exactly
    the accuracies of the pre-change single-trial path with that step's mask."""
    with jax.enable_x64(True):
        params, apply_fn, layout = _lenet_lax(jax.random.key(0))
        params = _f64(params)
        x, _ = _data(layout)
        y = jnp.argmax(apply_fn(params, x), axis=-1)
        device = uj.UniformVariation(0.3, 0.03, crossbar=_crossbar)
        order = uj.global_order(
            jax.tree.map(jnp.abs, params), predicate=device.crossbar
        )
        n = uj.crossbar_size(params, device.crossbar)
        counts = jnp.asarray([0, n // 2], jnp.int32)
        key = jax.random.key(5)
        run = jax.jit(
            lambda key, params, x, y, counts: (
                uj.sweep(
                    key,
                    apply_fn,
                    params,
                    x,
                    y,
                    device,
                    order,
                    counts,
                    4,
                    chunk_size=3,
                    eval_batch_size=10,
                ).accuracies
            )
        )
        accs = np.asarray(run(key, params, x, y, counts))
        for i, c in enumerate(np.asarray(counts)):
            mask = mask_from_order(
                order, params, count=int(c), predicate=device.crossbar
            )
            want = _old_path(key, apply_fn, params, x, y, device, 4, 10, mask)
            np.testing.assert_array_equal(accs[i], np.asarray(want))


@pytest.mark.slow
def test_evaluate_project_resnet_matches_old_path():
    """The project's ResNet-18 (flax.linen, BatchNorm, strided shortcuts; width
    4, 16x16 input) with XLA convolutions, in float32 (the project's models
    compute in float32): logits within float32 tolerance of the plain path, and
    the same per-trial accuracies as the pre-change path for chunk sizes 1 and
    3 on a fixed set."""
    model = build_model("resnet18", input_shape=(16, 16, 3), width=4)
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (12, 16, 16, 3))
    flags = uj.crossbar_flags(params)
    stacked = jax.tree.map(
        lambda w, f: jnp.stack([w, 1.1 * w, 0.9 * w]) if f else w, params, flags
    )
    want = _plain(model.apply_fn, stacked, x, flags)
    got = _batched(model.apply_fn, stacked, x, flags)
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_array_equal(jnp.argmax(got, -1), jnp.argmax(want, -1))
    _check_evaluate(params, model.apply_fn, x, num_trials=4, batch=6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convnet", "resnet18"])
def test_evaluate_project_models_slow(name):
    """The project's ConvNet and ResNet-18 at 32x32 (ResNet width 8)."""
    kw = {"width": 8} if name == "resnet18" else {}
    model = build_model(name, **kw)
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
    _check_evaluate(params, model.apply_fn, x, num_trials=4, batch=4)


# -------------------------------------------- multiply-accumulates by kind


def _macs(apply_fn, params, flags, shape):
    """The multiply-accumulates by kind of one trial over images of
    ``shape``, as ``chunk_size="auto"`` reads them (``_chunking._one_trial``)."""
    x = jnp.zeros(shape)
    return _chunking._one_trial(apply_fn, params, x, shape[0], flags)[1]


def _kinds_model(wrap):
    """Five products, one of each way trial batching can meet one, each with
    its own hand count per image (``x``: 6x6x2 NHWC): a convolution with a
    per-trial kernel ``k`` (4x4 outputs of 4 features from 3x3x2 windows:
    1152), a convolution with a shared kernel ``f`` on the images (864), a
    convolution with a shared kernel ``g`` on the first's per-trial output
    (4x4x2 from 4 features: 128), a dense layer with a per-trial kernel ``w``
    on the images (72 -> 5: 360) and a product of two per-trial activations
    (5x5 from 1: 25). ``wrap`` wraps the dense layer and the product."""
    dn = ("NHWC", "HWIO", "NHWC")

    def conv(a, k):
        return lax.conv_general_dilated(a, k, (1, 1), "VALID", dimension_numbers=dn)

    def head(h, w):
        d = h.reshape(h.shape[0], -1) @ w
        return jnp.einsum("nik,njk->nij", d[:, :, None], d[:, :, None]).sum((1, 2))

    head = wrap(head)

    def apply_fn(p, x):
        c = conv(x, p["k"])
        g = conv(c, p["g"])
        f = conv(x, p["f"])
        return jnp.stack([g.sum((1, 2, 3)), f.sum((1, 2, 3)) + head(x, p["w"])], -1)

    params = {
        "k": jnp.ones((3, 3, 2, 4)),
        "f": jnp.ones((3, 3, 2, 3)),
        "g": jnp.ones((1, 1, 4, 2)),
        "w": jnp.ones((72, 5)),
    }
    flags = {"k": True, "f": False, "g": False, "w": True}
    want = {"shared": 864, "per_trial_kernel_conv": 1152, "per_trial": 128 + 360 + 25}
    return apply_fn, params, flags, want


def _custom_jvp(f):
    g = jax.custom_jvp(f)
    g.defjvp(lambda primals, tangents: (f(*primals), f(*primals)))
    return g


@pytest.mark.parametrize(
    "wrap",
    [lambda f: f, jax.jit, _custom_jvp, jax.checkpoint],
    ids=["plain", "jit", "custom_jvp", "remat"],
)
def test_macs_are_counted_by_how_trial_batching_runs_them(wrap):
    """The multiply-accumulates by kind (``TrialBatched.apply_jaxpr``, what
    ``chunk_size="auto"`` reads): each product counted once, as the kind it
    runs as, also inside ``jit``, ``custom_jvp`` and ``checkpoint``; per
    image, so 3 images count 3 times one."""
    apply_fn, params, flags, want = _kinds_model(wrap)
    for n in (1, 3):
        got = _macs(apply_fn, params, flags, (n, 6, 6, 2))
        assert got == {k: n * v for k, v in want.items()}
    # every leaf per trial: nothing is shared, and the shared-kernel
    # convolutions now have per-trial kernels
    got = _macs(apply_fn, params, jax.tree.map(lambda _: True, flags), (3, 6, 6, 2))
    assert got == {
        "shared": 0,
        "per_trial_kernel_conv": 3 * (1152 + 864 + 128),
        "per_trial": 3 * (360 + 25),
    }


def test_macs_of_a_loop_count_its_body_once_per_step():
    """A ``scan`` whose carry reads a per-trial kernel runs under ``jax.vmap``'s
    batching rule: its body's products count once per step, as each trial's
    own; the same loop on shared values counts as shared (a per-trial dense
    layer ``u`` after it, 5 -> 2, is each trial's own either way)."""

    def apply_fn(p, x):
        def step(h, _):
            return jnp.tanh(h @ p["w"]), None

        h, _ = lax.scan(step, x @ p["v"], None, length=4)
        return h @ p["u"]

    params = {"w": jnp.ones((5, 5)), "v": jnp.ones((3, 5)), "u": jnp.ones((5, 2))}
    loop = 2 * (15 + 4 * 25)
    got = _macs(apply_fn, params, {"w": True, "v": True, "u": True}, (2, 3))
    assert got == {"shared": 0, "per_trial_kernel_conv": 0, "per_trial": loop + 20}
    got = _macs(apply_fn, params, {"w": False, "v": False, "u": True}, (2, 3))
    assert got == {"shared": loop, "per_trial_kernel_conv": 0, "per_trial": 20}
