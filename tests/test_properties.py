"""Property tests (hypothesis) of the invariants the rest of the library leans on:

- device models: stds are non-negative, and sigma = 0 programs the weights
  exactly (the identity);
- selection: a mask holds round(p n) weights (half to even), the order is a
  permutation of the crossbar, masks nest as p grows;
- cost accounting: normalized write cycles are monotone in p and exhaustive
  write-verify costs exactly 1.

Shapes come from a small fixed set so that eager JAX ops are not recompiled
for every example.
"""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import uswim_jax as u

SHAPES = [
    {"conv": (2, 2, 1, 3), "dense": (6, 4)},
    {"conv": (3, 3, 2, 2), "dense": (5, 1)},
]

finite = st.floats(-4.0, 4.0, allow_nan=False, allow_subnormal=False, width=32)
sigma = st.floats(0.0, 2.0, allow_nan=False, allow_subnormal=False, width=32)
fraction = st.floats(0.0, 1.0, allow_nan=False, allow_subnormal=False)


@st.composite
def params_trees(draw):
    """A params pytree with two crossbar kernels and a bias, random values."""
    shapes = draw(st.sampled_from(SHAPES))
    tree = {}
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        values = draw(st.lists(finite, min_size=n, max_size=n))
        tree[name] = {
            "kernel": jnp.asarray(values, jnp.float32).reshape(shape),
            "bias": jnp.zeros(shape[-1], jnp.float32),
        }
    return tree


@st.composite
def devices(draw, zero=False):
    s = 0.0 if zero else draw(sigma)
    sv = 0.0 if zero else draw(sigma)
    bits = draw(st.sampled_from([(8, 1), (8, 2), (4, 4), (6, 3)]))
    kind = draw(st.sampled_from(["uniform", "state"]))
    if kind == "uniform":
        return u.UniformVariation(s, sv, weight_bits=bits[0], device_bits=bits[1])
    ratio = draw(st.floats(0.1, 6.0, allow_nan=False))
    return u.StateDependentVariation(
        s, sv, ratio, weight_bits=bits[0], device_bits=bits[1]
    )


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _count(mask) -> int:
    return sum(int(np.sum(m)) for m in _leaves(mask))


# ----------------------------------------------------------------- device models


@settings(max_examples=15, deadline=None)
@given(params_trees(), devices())
def test_std_is_nonnegative_and_zero_off_the_crossbar(params, device):
    sw, sv = device.std(params)
    for a in _leaves(sw) + _leaves(sv):
        assert np.all(np.isfinite(a)) and np.all(a >= 0)
    for tree in (sw, sv):
        for leaf in (tree["conv"]["bias"], tree["dense"]["bias"]):
            assert not np.any(np.asarray(leaf))


@settings(max_examples=12, deadline=None)
@given(params_trees(), devices(zero=True), st.integers(0, 2**31 - 1), st.booleans())
def test_sigma_zero_is_the_identity(params, device, seed, verify_all):
    verified = jax.tree.map(lambda x: jnp.full(x.shape, verify_all), params)
    noisy = device.perturb(jax.random.key(seed), params, verified)
    for a, b in zip(_leaves(noisy), _leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------- selection


@settings(max_examples=30, deadline=None)
@given(params_trees())
def test_order_is_a_permutation_of_the_crossbar(scores):
    order = np.asarray(u.global_order(scores))
    n = u.crossbar_size(scores)
    assert order.dtype == np.int32
    np.testing.assert_array_equal(np.sort(order), np.arange(n))


@settings(max_examples=20, deadline=None)
@given(params_trees(), fraction, fraction)
def test_mask_size_is_round_pn_and_masks_nest(scores, p1, p2):
    lo, hi = sorted((p1, p2))
    order = u.global_order(scores)
    n = u.crossbar_size(scores)
    m_lo = u.mask_from_order(order, scores, fraction=lo)
    m_hi = u.mask_from_order(order, scores, fraction=hi)
    assert _count(m_lo) == int(np.round(lo * n))  # round half to even
    assert _count(m_hi) == int(np.round(hi * n))
    for a, b in zip(_leaves(m_lo), _leaves(m_hi), strict=True):
        assert not np.any(a & ~b)  # nested
    # off the crossbar nothing is ever verified
    for m in (m_lo, m_hi):
        assert not np.any(np.asarray(m["dense"]["bias"]))


@settings(max_examples=30, deadline=None)
@given(st.lists(fraction, min_size=1, max_size=8), st.integers(1, 10**6))
def test_counts_for_fractions_is_round_pn_and_monotone(fractions, n):
    fractions = sorted(fractions)
    counts = u.counts_for_fractions(fractions, n)
    np.testing.assert_array_equal(counts, np.round(np.asarray(fractions) * n))
    assert np.all(np.diff(counts) >= 0)
    assert counts.min() >= 0 and counts.max() <= n


# ----------------------------------------------------------------- cost accounting


@settings(max_examples=20, deadline=None)
@given(
    params_trees(),
    st.lists(fraction, min_size=2, max_size=5),
    st.floats(1.0, 100.0, allow_nan=False),
    st.sampled_from([(8, 1), (8, 2), (4, 4)]),
)
def test_write_cycles_monotone_in_p_and_exhaustive_is_one(
    scores, fractions, verify_cycles, bits
):
    device = u.UniformVariation(
        0.1, 0.01, verify_cycles=verify_cycles, weight_bits=bits[0], device_bits=bits[1]
    )
    order = u.global_order(scores)
    costs, costs_v = [], []
    for p in sorted(fractions):
        c = device.write_cycles(u.mask_from_order(order, scores, fraction=p), scores)
        costs.append(float(c.normalized))
        costs_v.append(float(c.normalized_verified_only))
    assert all(b >= a for a, b in zip(costs, costs[1:], strict=False))
    assert all(b >= a for a, b in zip(costs_v, costs_v[1:], strict=False))
    every = u.mask_from_order(order, scores, fraction=1.0)
    full = device.write_cycles(every, scores)
    assert float(full.normalized) == 1.0
    assert float(full.normalized_verified_only) == 1.0
    none = device.write_cycles(None, scores)
    assert float(none.normalized_verified_only) == 0.0
    np.testing.assert_allclose(float(none.normalized), 1.0 / verify_cycles, rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(fraction, fraction, st.floats(1.0, 100.0, allow_nan=False))
def test_write_cycles_of_fractions_monotone_and_exhaustive_is_one(p1, p2, c):
    device = u.UniformVariation(0.1, 0.01, verify_cycles=c)
    lo, hi = sorted((p1, p2))
    a, b = device.write_cycles(lo), device.write_cycles(hi)
    assert float(b.normalized) >= float(a.normalized)
    assert float(device.write_cycles(1.0).normalized) == 1.0
