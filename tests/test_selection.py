"""Tests for sensitivity scores, the global order and masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import uswim_jax as uj


def toy_params():
    return {
        "Conv_0": {
            "kernel": jnp.array([[[[0.5, -2.0]]], [[[1.0, 0.25]]]]),  # (2,1,1,2)
            "bias": jnp.array([3.0, -4.0]),
        },
        "Dense_0": {
            "kernel": jnp.array([[0.1, -0.4, 0.2], [0.3, 0.05, -0.35]]),
            "bias": jnp.array([9.0, 9.0, 9.0]),
        },
    }


def like(params, fill):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return treedef.unflatten(
        [jnp.full(x.shape, f) for x, f in zip(leaves, fill, strict=True)]
    )


def test_normalized_derivatives():
    params = toy_params()
    hess = jax.tree_util.tree_map(jnp.ones_like, params)
    grad = jax.tree_util.tree_map(lambda x: 2 * jnp.ones_like(x), params)
    h_hat, g_hat = uj.normalized_derivatives(params, hess, grad)
    np.testing.assert_allclose(h_hat["Conv_0"]["kernel"], 4.0)  # max|W| = 2
    np.testing.assert_allclose(g_hat["Conv_0"]["kernel"], 4.0)
    np.testing.assert_allclose(h_hat["Dense_0"]["kernel"], 0.16, rtol=1e-6)
    np.testing.assert_allclose(g_hat["Dense_0"]["kernel"], 0.8, rtol=1e-6)
    np.testing.assert_array_equal(h_hat["Conv_0"]["bias"], 0.0)  # off the crossbar
    _, none = uj.normalized_derivatives(params, hess)
    assert none is None


def test_swim_score_formula():
    params = toy_params()
    key = jax.random.key(0)
    hess = jax.tree_util.tree_map(lambda x: jax.random.uniform(key, x.shape), params)
    grad = jax.tree_util.tree_map(lambda x: -0.3 * jnp.ones_like(x), params)
    alpha = 10.0
    got = uj.swim_score(params, hess, grad, alpha=alpha)
    for layer in ("Conv_0", "Dense_0"):
        w, h, g = params[layer]["kernel"], hess[layer]["kernel"], grad[layer]["kernel"]
        s = jnp.max(jnp.abs(w))
        want = alpha * jnp.abs(s**2 * h + 2 * s * g) + jnp.abs(w) / s
        np.testing.assert_allclose(got[layer]["kernel"], want, rtol=1e-6)
        np.testing.assert_array_equal(got[layer]["bias"], 0.0)
    no_first = uj.swim_score(params, hess, grad, alpha=alpha, first_order=False)
    assert_same = uj.swim_score(params, hess, None, alpha=alpha)
    for a, b in zip(
        jax.tree_util.tree_leaves(no_first),
        jax.tree_util.tree_leaves(assert_same),
        strict=True,
    ):
        np.testing.assert_allclose(a, b)


def test_uswim_score_state_multiplier():
    params = toy_params()
    hess = jax.tree_util.tree_map(jnp.ones_like, params)
    k = uj.state_multiplier(params, 3.0)
    # |W|/max: conv 0.25 (not > .25), 1, .5, .125 ; dense .25, 1, .5, .75, .125, .875
    np.testing.assert_array_equal(
        k["Conv_0"]["kernel"].ravel(), jnp.array([1.0, 1.0, 3.0, 1.0])
    )
    np.testing.assert_array_equal(
        k["Dense_0"]["kernel"].ravel(), jnp.array([1.0, 1.0, 3.0, 1.0, 1.0, 1.0])
    )
    np.testing.assert_array_equal(k["Conv_0"]["bias"], 1.0)
    base = uj.swim_score(params, hess, alpha=1.0)
    same = uj.uswim_score(params, hess, s=1.0, alpha=1.0)
    np.testing.assert_allclose(same["Conv_0"]["kernel"], base["Conv_0"]["kernel"])
    lin = uj.uswim_score(params, hess, s=3.0, alpha=1.0)
    sq = uj.uswim_score(params, hess, s=3.0, alpha=1.0, k_power=2)
    w = params["Conv_0"]["kernel"]
    h_hat = 4.0
    w_hat = jnp.abs(w) / 2.0
    kk = k["Conv_0"]["kernel"]
    np.testing.assert_allclose(lin["Conv_0"]["kernel"], kk * h_hat + w_hat)
    np.testing.assert_allclose(sq["Conv_0"]["kernel"], kk**2 * h_hat + w_hat)
    custom = jax.tree_util.tree_map(lambda x: 2 * jnp.ones_like(x), params)
    over = uj.uswim_score(params, hess, s=3.0, alpha=1.0, multiplier=custom)
    np.testing.assert_allclose(over["Conv_0"]["kernel"], 2 * h_hat + w_hat)
    with pytest.raises(ValueError, match="k_power"):
        uj.uswim_score(params, hess, s=2.0, k_power=3)


def test_expected_loss_score():
    hess = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([[4.0]])}
    got = uj.expected_loss_score(hess, 0.3, 0.1)
    np.testing.assert_allclose(got["a"], 0.5 * jnp.array([1.0, 2.0]) * 0.08, rtol=1e-6)
    sw = {"a": jnp.array([1.0, 0.0]), "b": jnp.array([[2.0]])}
    got = uj.expected_loss_score(hess, sw, 0.0)
    np.testing.assert_allclose(got["a"], jnp.array([0.5, 0.0]))
    np.testing.assert_allclose(got["b"], jnp.array([[8.0]]))
    with pytest.raises(ValueError, match="std"):
        uj.expected_loss_score(hess, jnp.ones(3), 0.1)


def test_magnitude_and_random_scores(key, getkey):
    params = toy_params()
    mag = uj.magnitude_score(params)
    assert float(jnp.max(mag["Conv_0"]["kernel"])) == 1.0
    assert float(jnp.max(mag["Dense_0"]["kernel"])) == 1.0
    np.testing.assert_array_equal(mag["Dense_0"]["bias"], 0.0)
    r1 = uj.random_score(key, params)
    r2 = uj.random_score(key, params)
    r3 = uj.random_score(getkey(), params)
    np.testing.assert_array_equal(r1["Dense_0"]["kernel"], r2["Dense_0"]["kernel"])
    assert not np.array_equal(r1["Dense_0"]["kernel"], r3["Dense_0"]["kernel"])
    assert np.all((r1["Dense_0"]["kernel"] >= 0) & (r1["Dense_0"]["kernel"] < 1))
    np.testing.assert_array_equal(r1["Conv_0"]["bias"], 0.0)


def test_global_order_descending_stable_across_layers():
    params = toy_params()
    scores = like(params, [0.0, 1.0, 0.0, 2.0])  # conv bias, conv k, dense b, dense k
    scores["Conv_0"]["kernel"] = jnp.array([[[[1.0, 5.0]]], [[[1.0, 0.0]]]])
    scores["Dense_0"]["kernel"] = jnp.array([[2.0, 7.0, 1.0], [jnp.nan, 5.0, 2.0]])
    order = np.asarray(uj.global_order(scores))
    # flat: conv kernel [1,5,1,0] then dense kernel [2,7,1,nan,5,2]
    assert order.tolist() == [5, 1, 8, 4, 9, 0, 2, 6, 3, 7]
    assert order.dtype == np.int32
    with pytest.raises(ValueError, match="crossbar"):
        uj.global_order({"bias": jnp.ones(3)})


def test_mask_from_order_counts_fractions_and_errors():
    params = toy_params()
    scores = uj.magnitude_score(params)
    order = uj.global_order(scores)
    n = uj.crossbar_size(params)
    assert n == 10
    m = uj.mask_from_order(order, params, count=3)
    assert sum(int(jnp.sum(x)) for x in jax.tree_util.tree_leaves(m)) == 3
    assert not bool(jnp.any(m["Conv_0"]["bias"]))
    assert m["Conv_0"]["kernel"].dtype == jnp.bool_
    # the largest normalised magnitudes: conv |-2| and dense |-0.4| (both 1.0), then
    # dense 0.35 (0.875)
    assert bool(m["Conv_0"]["kernel"][0, 0, 0, 1]) and bool(
        m["Dense_0"]["kernel"][0, 1]
    )
    assert bool(m["Dense_0"]["kernel"][1, 2])
    f = uj.mask_from_order(order, params, fraction=0.25)  # round(2.5) = 2 (even)
    assert sum(int(jnp.sum(x)) for x in jax.tree_util.tree_leaves(f)) == 2
    full = uj.mask_from_order(order, params, fraction=1.0)
    assert bool(jnp.all(full["Dense_0"]["kernel"]))
    sel = uj.select(scores, count=3)
    for a, b in zip(
        jax.tree_util.tree_leaves(sel), jax.tree_util.tree_leaves(m), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="exactly one"):
        uj.mask_from_order(order, params)
    with pytest.raises(ValueError, match="exactly one"):
        uj.mask_from_order(order, params, fraction=0.1, count=1)
    with pytest.raises(ValueError, match="fraction"):
        uj.mask_from_order(order, params, fraction=1.5)
    with pytest.raises(ValueError, match="count"):
        uj.mask_from_order(order, params, count=11)
    with pytest.raises(ValueError, match="order"):
        uj.mask_from_order(order[:5], params, count=1)


def test_mask_budget_sweep_under_jit_does_not_retrace():
    params = toy_params()
    order = uj.global_order(uj.magnitude_score(params))
    traces = []

    def f(order, fraction):
        traces.append(1)
        return uj.mask_from_order(order, params, fraction=fraction)

    jf = jax.jit(f)
    counts = []
    for frac in (0.0, 0.3, 0.5, 1.0):
        m = jf(order, jnp.float32(frac))
        counts.append(sum(int(jnp.sum(x)) for x in jax.tree_util.tree_leaves(m)))
    assert counts == [0, 3, 5, 10]
    assert len(traces) == 1


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.floats(-5, 5, allow_nan=False, allow_subnormal=False, width=32),
        min_size=6,
        max_size=6,
    ),
    st.lists(st.integers(0, 10), min_size=2, max_size=2),
)
def test_masks_nest(values, counts):
    params = toy_params()
    scores = like(params, [0.0, 0.0, 0.0, 0.0])
    scores["Conv_0"]["kernel"] = jnp.array(values[:4], jnp.float32).reshape(2, 1, 1, 2)
    scores["Dense_0"]["kernel"] = jnp.array(values[:6], jnp.float32).reshape(2, 3)
    order = uj.global_order(scores)
    lo, hi = sorted(counts)
    m_lo = uj.mask_from_order(order, params, count=lo)
    m_hi = uj.mask_from_order(order, params, count=hi)
    for a, b in zip(
        jax.tree_util.tree_leaves(m_lo), jax.tree_util.tree_leaves(m_hi), strict=True
    ):
        assert not bool(jnp.any(a & ~b))
    # the selected weights are the top-`lo` scores
    flat = np.concatenate(
        [np.ravel(scores["Conv_0"]["kernel"]), np.ravel(scores["Dense_0"]["kernel"])]
    )
    sel = np.concatenate(
        [np.ravel(m_lo["Conv_0"]["kernel"]), np.ravel(m_lo["Dense_0"]["kernel"])]
    )
    if 0 < lo < 10:
        assert flat[sel].min() >= flat[~sel].max()


def test_end_to_end_with_obd(key):
    """obd_over_dataset -> swim_score -> mask, on a plain-function model."""
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "Dense_0": {"kernel": jax.random.normal(k1, (4, 5)), "bias": jnp.zeros(5)},
        "Dense_1": {"kernel": jax.random.normal(k2, (5, 3)), "bias": jnp.zeros(3)},
    }

    def apply(p, x):
        h = jnp.tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None])
        return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"][None]

    x = jax.random.normal(k3, (20, 4))
    y = jnp.arange(20) % 3
    hess, grad = uj.obd_over_dataset(apply, params, x, y, batch_size=8)
    scores = uj.swim_score(params, hess, grad)
    mask = uj.select(scores, fraction=0.1)
    assert sum(int(jnp.sum(v)) for v in jax.tree_util.tree_leaves(mask)) == 4  # of 35
