"""Tests of the Gaussian device models (uswim_jax.device).

Statistical tests are probabilistic: with fixed keys they assert
``|estimate - truth| < 5 * standard error``; no value depends on PRNG bits.
"""

import dataclasses

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import uswim_jax
from uswim_jax import (
    LevelTableVariation,
    StateDependentVariation,
    UniformVariation,
    noise_like,
    slicing_factor,
)

K = 5.0  # standard errors allowed in statistical tests


def small_params():
    w1 = jnp.linspace(-1.0, 2.0, 12).reshape(3, 4)
    w2 = jnp.linspace(-0.3, 0.2, 10).reshape(2, 5)
    return {
        "Dense_0": {"kernel": w1, "bias": jnp.full((4,), 0.5)},
        "Dense_1": {"kernel": w2, "bias": jnp.zeros(5)},
        "BatchNorm_0": {"scale": jnp.ones(5)},
    }


def big_kernel(key, shape=(400, 500)):
    return {"layer": {"kernel": jax.random.normal(key, shape), "bias": jnp.ones(3)}}


def assert_std_close(samples, truth):
    """|std(samples) - truth| < K * SE, SE = truth / sqrt(2 n) for Gaussians."""
    samples = np.asarray(samples, np.float64).reshape(-1)
    n = samples.size
    est = samples.std()
    assert abs(est - truth) < K * truth / np.sqrt(2 * n), (est, truth)
    assert abs(samples.mean()) < K * truth / np.sqrt(n), (samples.mean(), truth)


# ---------------------------------------------------------------------------
# constants and exact stds
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, m, c", [(8, 1, 0.577346), (8, 2, 0.2582), (8, 4, 0.0626), (4, 4, 0.0625)]
)
def test_slicing_factor(n, m, c):
    assert slicing_factor(n, m) == pytest.approx(c, abs=5e-5)
    assert uswim_jax.place_values(n, m).shape == (n // m,)


def test_uniform_std_exact():
    with jax.enable_x64(True):
        params = jax.tree.map(lambda x: x.astype(jnp.float64), small_params())
        dev = UniformVariation(0.1, 0.02)
        sw, sv = dev.std(params)
        c = slicing_factor(8, 1)
        for name, mx in (("Dense_0", 2.0), ("Dense_1", 0.3)):
            np.testing.assert_allclose(sw[name]["kernel"], 0.1 * c * mx, rtol=1e-12)
            np.testing.assert_allclose(sv[name]["kernel"], 0.02 * c * mx, rtol=1e-12)
            assert sw[name]["bias"].shape == params[name]["bias"].shape
            assert not np.any(sw[name]["bias"]) and not np.any(sv[name]["bias"])
        assert not np.any(sw["BatchNorm_0"]["scale"])


def test_device_bits_change_the_factor():
    params = small_params()
    sw1, _ = UniformVariation(0.1, 0.0, 8, 1).std(params)
    sw2, _ = UniformVariation(0.1, 0.0, 8, 2).std(params)
    np.testing.assert_allclose(
        sw2["Dense_0"]["kernel"] / sw1["Dense_0"]["kernel"],
        slicing_factor(8, 2) / slicing_factor(8, 1),
        rtol=1e-6,
    )


# ---------------------------------------------------------------------------
# statistics of perturb
# ---------------------------------------------------------------------------


def test_uniform_empirical_std(key, getkey):
    params = big_kernel(getkey())
    w = params["layer"]["kernel"]
    dev = UniformVariation(0.1, 0.01)
    noisy = uswim_jax.perturb(key, params, dev)
    truth = 0.1 * 0.57735 * float(jnp.max(jnp.abs(w)))
    assert_std_close(noisy["layer"]["kernel"] - w, truth)


def test_verified_weights_get_sigma_verified(key, getkey):
    params = big_kernel(getkey())
    w = params["layer"]["kernel"]
    mask = {
        "layer": {
            "kernel": (jnp.arange(w.size).reshape(w.shape) % 3) == 0,
            "bias": jnp.zeros(3, jnp.bool_),
        }
    }
    dev = UniformVariation(0.2, 0.02)
    delta = np.asarray(dev.perturb(key, params, mask)["layer"]["kernel"] - w)
    m = np.asarray(mask["layer"]["kernel"])
    scale = 0.57735 * float(jnp.max(jnp.abs(w)))
    assert_std_close(delta[m], 0.02 * scale)
    assert_std_close(delta[~m], 0.2 * scale)
    # 0/1 floats work like booleans
    mask_f = jax.tree.map(lambda x: x.astype(jnp.float32), mask)
    again = dev.perturb(key, params, mask_f)["layer"]["kernel"] - w
    np.testing.assert_array_equal(again, delta)


@pytest.mark.parametrize(
    "s, mid, ext", [(2.0, 1.348, 0.674), (3.0, 1.464, 0.488), (5.0, 1.536, 0.307)]
)
def test_state_multipliers_match_method(s, mid, ext):
    dev = StateDependentVariation(0.1, 0.01, s)
    m, e = dev.multipliers()
    assert float(m) == pytest.approx(mid, abs=6e-4)
    assert float(e) == pytest.approx(ext, abs=6e-4)
    # mean variance is preserved when 40 % are in the middle state
    assert 0.4 * float(m) ** 2 + 0.6 * float(e) ** 2 == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("s", [2.0, 3.0, 5.0])
def test_state_dependent_empirical_std(key, getkey, s):
    params = big_kernel(getkey(), (300, 400))
    w = np.asarray(params["layer"]["kernel"])
    dev = StateDependentVariation(0.2, 0.02, s)
    verified = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.bool_), params)
    verified["layer"]["kernel"] = jnp.asarray(np.arange(w.size).reshape(w.shape) % 2)
    delta = np.asarray(dev.perturb(key, params, verified)["layer"]["kernel"]) - w
    r = np.abs(w) / np.abs(w).max()
    middle = (r > 0.25) & (r < 0.75)
    ver = np.asarray(verified["layer"]["kernel"]) == 1
    mid, ext = (float(x) for x in dev.multipliers())
    unit = 0.57735 * np.abs(w).max()
    for sel, mult in ((middle, mid), (~middle, ext)):
        assert_std_close(delta[sel & ~ver], 0.2 * mult * unit)
        assert_std_close(delta[sel & ver], 0.02 * mult * unit)


def test_state_rule_is_strict_at_thresholds():
    with jax.enable_x64(True):
        w = jnp.array([[0.0, 0.1, 0.25, 0.2500001, 0.5, 0.7499999, 0.75, -0.6, -1.0]])
        params = {"kernel": w}
        dev = StateDependentVariation(1.0, 0.5, 3.0)
        sw, sv = dev.std(params)
        mid, ext = (float(x) for x in dev.multipliers())
        c = slicing_factor(8, 1)
        middle = np.array([0, 0, 0, 1, 1, 1, 0, 1, 0], bool)
        expect = np.where(middle, mid, ext) * c
        np.testing.assert_allclose(sw["kernel"][0], expect, rtol=1e-12)
        np.testing.assert_allclose(sv["kernel"][0], 0.5 * expect, rtol=1e-12)
        # the table form of the preset agrees, boundaries included
        tw, tv = dev.to_table().std(params)
        np.testing.assert_allclose(tw["kernel"], sw["kernel"], rtol=1e-12)
        np.testing.assert_allclose(tv["kernel"], sv["kernel"], rtol=1e-12)


def test_s_equal_one_is_uniform():
    params = small_params()
    a = StateDependentVariation(0.1, 0.01, 1.0).std(params)
    b = UniformVariation(0.1, 0.01).std(params)
    chex.assert_trees_all_close(a, b, rtol=1e-6)


def test_level_table_general_form():
    with jax.enable_x64(True):
        w = jnp.array([[0.0, 0.2, 0.5, 0.6, 1.0]])
        table = LevelTableVariation(
            sigma=1.0,
            sigma_verified=0.1,
            multipliers=jnp.array([0.05, 0.12, 0.08]),
            edges=(0.2, 0.6),
            edge_side=("right", "left"),
            multipliers_verified=jnp.array([0.01, 0.02, 0.03]),
        )
        sw, sv = table.std({"kernel": w})
        c = slicing_factor(8, 1)
        # 0.2 -> bin 1 (right side of edge 0.2); 0.6 -> bin 1 (left side of 0.6)
        np.testing.assert_allclose(
            sw["kernel"][0], c * np.array([0.05, 0.12, 0.12, 0.12, 0.08]), rtol=1e-12
        )
        np.testing.assert_allclose(
            sv["kernel"][0],
            0.1 * c * np.array([0.01, 0.02, 0.02, 0.02, 0.03]),
            rtol=1e-12,
        )
        assert table.num_levels == 3


# ---------------------------------------------------------------------------
# invariants
# ---------------------------------------------------------------------------


def test_sigma_zero_is_identity(key):
    params = small_params()
    for dev in (
        UniformVariation(0.0, 0.0),
        StateDependentVariation(0.0, 0.0, 3.0),
    ):
        noisy = dev.perturb(key, params)
        chex.assert_trees_all_equal(noisy, params)


@settings(max_examples=20, deadline=None)
@given(
    w=st.sampled_from([(2, 3), (3, 2, 2)]).flatmap(
        lambda shape: hnp.arrays(
            np.float32, shape, elements=st.floats(-10, 10, width=32)
        )
    ),
    sigma=st.floats(0.0, 2.0),
    s=st.floats(0.1, 10.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_properties_std_nonnegative_and_sigma_zero_identity(w, sigma, s, seed):
    params = {"conv": {"kernel": jnp.asarray(w), "bias": jnp.asarray(w[0])}}
    for dev in (
        UniformVariation(sigma, sigma / 10),
        StateDependentVariation(sigma, sigma / 10, s),
    ):
        for tree in dev.std(params):
            assert all(bool(jnp.all(x >= 0)) for x in jax.tree.leaves(tree))
        zero = dataclasses.replace(dev, sigma=0.0, sigma_verified=0.0)
        out = zero.perturb(jax.random.key(seed), params)
        chex.assert_trees_all_equal(out, params)


def test_same_key_same_result_and_keys_differ(key, getkey):
    params = small_params()
    dev = StateDependentVariation(0.3, 0.03, 2.0)
    a = dev.perturb(key, params)
    b = dev.perturb(key, params)
    chex.assert_trees_all_equal(a, b)
    c = dev.perturb(getkey(), params)
    assert not np.allclose(a["Dense_0"]["kernel"], c["Dense_0"]["kernel"])


def test_off_crossbar_leaves_untouched(key):
    params = small_params()
    noisy = UniformVariation(0.5, 0.1).perturb(key, params)
    for name in ("Dense_0", "Dense_1"):
        np.testing.assert_array_equal(noisy[name]["bias"], params[name]["bias"])
        assert not np.allclose(noisy[name]["kernel"], params[name]["kernel"])
    np.testing.assert_array_equal(
        noisy["BatchNorm_0"]["scale"], params["BatchNorm_0"]["scale"]
    )


def test_custom_predicate(key):
    params = small_params()
    dev = UniformVariation(
        0.5, 0.1, crossbar=lambda path, x: path.startswith("Dense_1")
    )
    noisy = dev.perturb(key, params)
    np.testing.assert_array_equal(
        noisy["Dense_0"]["kernel"], params["Dense_0"]["kernel"]
    )
    # Dense_1's bias is on the crossbar now; its max is 0 so its std is 0
    assert not np.allclose(noisy["Dense_1"]["kernel"], params["Dense_1"]["kernel"])


def test_perturb_equals_std_times_noise_like(key):
    params = small_params()
    dev = StateDependentVariation(0.3, 0.03, 3.0)
    verified = jax.tree.map(lambda x: x > 0, params)
    sw, sv = dev.std(params)
    z = noise_like(key, params)
    manual = jax.tree.map(
        lambda w, m, a, b, n: w + jnp.where(m, b, a) * n, params, verified, sw, sv, z
    )
    chex.assert_trees_all_close(dev.perturb(key, params, verified), manual, rtol=1e-6)
    chex.assert_trees_all_equal(z["BatchNorm_0"], {"scale": jnp.zeros(5)})


def test_noise_is_one_flat_draw_per_dtype(key):
    """The crossbar leaves of one dtype are consecutive slices, in flatten
    order, of one standard-normal draw; off-crossbar leaves are zeros."""
    params = small_params()
    z = noise_like(key, params)
    zl = jax.tree.leaves(z)
    flags = jax.tree.leaves(uswim_jax.crossbar_flags(params))
    drawn = [a for a, f in zip(zl, flags, strict=True) if f]
    assert len(drawn) == 2
    sizes = [a.size for a in drawn]
    flat = jax.random.normal(
        uswim_jax.device.dtype_key(key, jnp.float32), (sum(sizes),), jnp.float32
    )
    np.testing.assert_array_equal(np.concatenate([np.ravel(a) for a in drawn]), flat)
    for a, f in zip(zl, flags, strict=True):
        if not f:
            assert not np.any(np.asarray(a))
    with jax.enable_x64(True):  # two dtypes: two draws, each of its own dtype
        mixed = {**params, "Extra": {"kernel": jnp.ones((3, 3), jnp.float64)}}
        zm = noise_like(key, mixed)
        assert zm["Extra"]["kernel"].dtype == jnp.float64
        np.testing.assert_array_equal(
            zm["Extra"]["kernel"].ravel(),
            jax.random.normal(
                uswim_jax.device.dtype_key(key, jnp.float64), (9,), jnp.float64
            ),
        )


def test_dtypes_preserved(key):
    perturb = jax.jit(uswim_jax.perturb)
    for dtype in (jnp.float16, jnp.bfloat16, jnp.float32):
        params = jax.tree.map(lambda x, d=dtype: x.astype(d), small_params())
        noisy = perturb(key, params, StateDependentVariation(0.3, 0.03, 2.0))
        chex.assert_trees_all_equal_dtypes(noisy, params)
        chex.assert_trees_all_equal_shapes(noisy, params)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda x: x.astype(jnp.float64), small_params())
        noisy = perturb(key, params, UniformVariation(0.3, 0.03))
        chex.assert_trees_all_equal_dtypes(noisy, params)


# ---------------------------------------------------------------------------
# transforms: jit, vmap, grad
# ---------------------------------------------------------------------------


def test_sigma_sweep_traces_once(key):
    params = small_params()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(dev):
        return dev.perturb(key, params)

    outs = [run(UniformVariation(s, s / 10)) for s in (0.1, 0.2, 0.3)]
    assert not np.allclose(outs[0]["Dense_0"]["kernel"], outs[1]["Dense_0"]["kernel"])

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run_s(dev):
        return dev.std(params)

    for s in (1.0, 2.0, 3.0, 5.0):
        run_s(StateDependentVariation(0.1, 0.01, s))


def test_vmap_over_sigma_equals_loop(key):
    params = small_params()
    sigmas = jnp.array([0.0, 0.1, 0.3])
    batched = jax.jit(
        jax.vmap(lambda s: UniformVariation(s, 0.01).perturb(key, params))
    )(sigmas)
    for i, s in enumerate([0.0, 0.1, 0.3]):
        single = UniformVariation(s, 0.01).perturb(key, params)
        chex.assert_trees_all_close(
            jax.tree.map(lambda x, i=i: x[i], batched), single, rtol=1e-6, atol=1e-6
        )


def test_vmap_over_keys_and_grad(key):
    params = small_params()
    dev = UniformVariation(0.3, 0.03)
    keys = jax.random.split(key, 4)
    out = jax.jit(jax.vmap(lambda k: dev.perturb(k, params)))(keys)
    assert out["Dense_0"]["kernel"].shape == (4, 3, 4)
    # the noise scale is a constant: d(perturb)/dW = 1
    g = jax.jit(jax.grad(lambda p: jnp.sum(dev.perturb(key, p)["Dense_0"]["kernel"])))(
        params
    )
    np.testing.assert_allclose(g["Dense_0"]["kernel"], 1.0)


def test_tree_ops_on_models_do_not_validate_placeholders():
    dev = StateDependentVariation(0.3, 0.03, 2.0)
    assert jax.tree.map(lambda x: None, dev).sigma is None
    leaves, treedef = jax.tree.flatten(dev)
    assert treedef.unflatten(leaves) == dev
    table = dev.to_table()
    assert jax.tree.map(lambda x: object(), table).edges == (0.25, 0.75)


# ---------------------------------------------------------------------------
# write cycles (Gaussian model)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_gaussian_write_cycles_fraction(p):
    dev = UniformVariation(0.3, 0.03, verify_cycles=10.0)
    c = uswim_jax.write_cycles(dev, p)
    assert float(c.normalized) == pytest.approx((p * 10 + (1 - p)) / 10, rel=1e-6)
    assert float(c.normalized_verified_only) == pytest.approx(p, abs=1e-7)


def test_gaussian_write_cycles_mask():
    params = small_params()
    dev = UniformVariation(0.3, 0.03, verify_cycles=4.0)
    verified = jax.tree.map(lambda x: x > 0, params)  # biases ignored
    c = dev.write_cycles(verified, params)
    nv = int(jnp.sum(params["Dense_0"]["kernel"] > 0)) + int(
        jnp.sum(params["Dense_1"]["kernel"] > 0)
    )
    n = 12 + 10
    assert float(c.verify) == nv * 8 * 4
    assert float(c.total) == nv * 8 * 4 + (n - nv) * 8
    assert float(c.exhaustive) == n * 8 * 4
    everything = jax.tree.map(lambda x: jnp.ones(x.shape, jnp.bool_), params)
    assert float(dev.write_cycles(everything, params).normalized) == 1.0
    assert float(dev.write_cycles(None, params).normalized) == pytest.approx(0.25)


def test_write_cycles_in_scan():
    dev = UniformVariation(0.3, 0.03)

    def body(acc, p):
        c = dev.write_cycles(p)
        return acc + c.total, c.normalized

    total, curve = jax.jit(lambda ps: jax.lax.scan(body, jnp.zeros(()), ps))(
        jnp.linspace(0.0, 1.0, 5)
    )
    np.testing.assert_allclose(curve[-1], 1.0, rtol=1e-6)
    assert np.all(np.diff(np.asarray(curve)) > 0)
    assert float(total) > 0


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: UniformVariation(-0.1, 0.01), "sigma"),
        (lambda: UniformVariation(0.1, -0.01), "sigma_verified"),
        (lambda: UniformVariation(float("nan"), 0.01), "sigma"),
        (lambda: StateDependentVariation(-1.0, 0.01, 2.0), "sigma"),
        (lambda: StateDependentVariation(0.1, 0.01, 0.0), "s must"),
        (lambda: StateDependentVariation(0.1, 0.01, -2.0), "s must"),
        (
            lambda: UniformVariation(0.1, 0.01, weight_bits=8, device_bits=3),
            "weight_bits",
        ),
        (lambda: UniformVariation(0.1, 0.01, weight_bits=0), "weight_bits"),
        (lambda: StateDependentVariation(0.1, 0.01, 2.0, device_bits=5), "weight_bits"),
        (lambda: UniformVariation(0.1, 0.01, verify_cycles=-1.0), "verify_cycles"),
        (lambda: LevelTableVariation(0.1, 0.01, jnp.ones(3)), "multipliers"),
        (lambda: LevelTableVariation(0.1, 0.01, -jnp.ones(4)), "multipliers"),
        (
            lambda: LevelTableVariation(0.1, 0.01, jnp.ones(3), edges=(0.6, 0.3)),
            "edges",
        ),
        (
            lambda: LevelTableVariation(0.1, 0.01, jnp.ones(4), edge_side="up"),
            "edge_side",
        ),
    ],
)
def test_bad_construction_raises(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_bad_mask_raises(key):
    params = small_params()
    dev = UniformVariation(0.1, 0.01)
    missing = {k: v for k, v in params.items() if k != "BatchNorm_0"}
    with pytest.raises(ValueError, match="verified"):
        dev.perturb(key, params, missing)
    wrong_shape = jax.tree.map(lambda x: jnp.zeros((*x.shape, 1), jnp.bool_), params)
    with pytest.raises(ValueError, match="verified"):
        uswim_jax.perturb(key, params, dev, wrong_shape)
    with pytest.raises(ValueError, match="verified"):
        dev.write_cycles(missing, params)
    with pytest.raises(ValueError, match="verified"):
        dev.write_cycles(1.5)


def test_nan_params_raise(key):
    params = small_params()
    params["Dense_0"]["kernel"] = params["Dense_0"]["kernel"].at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="params"):
        UniformVariation(0.1, 0.01).perturb(key, params)


def test_traced_sigma_is_not_validated(key):
    params = small_params()
    out = jax.jit(lambda s: UniformVariation(s, s).perturb(key, params))(0.1)
    assert out["Dense_0"]["kernel"].shape == (3, 4)
