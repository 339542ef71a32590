"""Tests for the estimator comparison report (non-core)."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uswim_jax import sensitivity_report as sr


def random_tree(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "Conv_0": {
            "kernel": jax.random.normal(k1, (3, 3, 2, 4)),
            "bias": jnp.zeros(4),
        },
        "Dense_0": {
            "kernel": jax.random.normal(k2, (20, 10)),
            "bias": jax.random.normal(k3, (10,)),
        },
    }


def test_spearman_and_overlap_basics():
    a = np.arange(100.0)
    assert sr.spearman(a, a**3) == pytest.approx(1.0)
    assert sr.spearman(a, -a) == pytest.approx(-1.0)
    assert sr.topk_overlap(a, a, 0.1) == 1.0
    assert sr.topk_overlap(a, -a, 0.1) == 0.0
    # ties get average ranks
    np.testing.assert_allclose(sr._rankdata(np.array([3.0, 1.0, 3.0])), [2.5, 1.0, 2.5])


def test_compare_estimators_rows(key, getkey):
    params = random_tree(key)
    s1 = jax.tree_util.tree_map(jnp.abs, random_tree(getkey()))
    scores = {"obd": s1, "same": s1, "neg": jax.tree_util.tree_map(lambda x: -x, s1)}
    rows = sr.compare_estimators(scores, params)
    assert len(rows) == 3 * 3  # 3 pairs x (2 layers + overall)
    by = {(r["a"], r["b"], r["layer"]): r for r in rows}
    r = by[("obd", "same", "overall")]
    assert r["n"] == 72 + 200
    assert r["spearman"] == pytest.approx(1.0)
    assert all(r[f"top{p}%"] == 1.0 for p in (1, 5, 10, 20))
    assert by[("obd", "neg", "Dense_0/kernel")]["spearman"] == pytest.approx(-1.0)
    assert by[("obd", "neg", "Dense_0/kernel")]["top20%"] == 0.0
    with pytest.raises(ValueError, match="two"):
        sr.compare_estimators({"obd": s1}, params)
    with pytest.raises(ValueError, match="match"):
        sr.compare_estimators({"a": s1, "b": {"Conv_0": s1["Conv_0"]}}, params)


def test_write_sensitivity_report(tmp_path, key, getkey):
    params = random_tree(key)
    scores = {name: random_tree(getkey()) for name in ("obd", "hutchinson", "fisher")}
    paths = sr.write_sensitivity_report(scores, params, tmp_path / "out")
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9
    assert set(rows[0]) >= {"a", "b", "layer", "spearman", "top1%", "top20%"}
    with open(paths["markdown"]) as f:
        text = f.read()
    assert "| obd | hutchinson | overall |" in text
    assert (tmp_path / "out" / "sensitivity_histograms.png").stat().st_size > 0
