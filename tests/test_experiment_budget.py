"""Where a verification budget goes: per-layer counts of the first weights of
an order, and their sums over groups of layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uswim_jax import global_order
from uswim_jax.experiment.budget import group_budget, layer_budget


def _params():
    return {
        "a": {"kernel": jnp.zeros((2, 3))},  # 6 weights, flat indices 0-5
        "a_bias": jnp.zeros((3,)),  # off the crossbar
        "b": {"kernel": jnp.zeros((4, 1))},  # 4 weights, flat indices 6-9
    }


def test_counts_follow_the_order_and_sum_to_count():
    params = _params()
    order = np.array([9, 0, 8, 1, 2, 7, 3, 4, 5, 6])
    got = layer_budget(order, params, 3)
    assert got == {"a/kernel": (1, 6), "b/kernel": (2, 4)}
    for k in range(11):
        got = layer_budget(order, params, k)
        assert sum(v for v, _ in got.values()) == k
    assert layer_budget(order, params, 10) == {"a/kernel": (6, 6), "b/kernel": (4, 4)}


def test_matches_global_order_of_scores():
    params = _params()
    scores = jax.tree.map(jnp.zeros_like, params)
    scores["b"]["kernel"] = jnp.ones((4, 1))  # layer b first
    order = global_order(scores)
    assert layer_budget(order, params, 4) == {"a/kernel": (0, 6), "b/kernel": (4, 4)}
    assert layer_budget(order, params, 5) == {"a/kernel": (1, 6), "b/kernel": (4, 4)}


def test_group_budget_sums_layers():
    budget = {"x/1": (1, 5), "x/2": (2, 5), "y": (0, 3)}
    assert group_budget(budget, lambda p: p.split("/")[0]) == {
        "x": (3, 10),
        "y": (0, 3),
    }


def test_bad_order_or_count_is_refused():
    params = _params()
    with pytest.raises(ValueError, match="permutation"):
        layer_budget(np.arange(9), params, 1)
    with pytest.raises(ValueError, match="permutation"):
        layer_budget(np.zeros(10, int), params, 1)
    with pytest.raises(ValueError, match="count"):
        layer_budget(np.arange(10), params, 11)
