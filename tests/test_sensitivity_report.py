"""Tests for the estimator comparison report (non-core)."""

import csv
import os

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


@pytest.mark.parametrize("names", [("obd", "hutchinson", "ggn", "fisher"), ("a", "b")])
def test_plot_with_exact_zeros_negative_and_empty_scores(tmp_path, names, getkey):
    """Exact zeros (shared by every estimator), Hutchinson-like negative
    estimates, an all-zero estimator and only two estimators all plot."""
    params = random_tree(getkey())
    scores = {}
    for i, name in enumerate(names):
        tree = jax.tree.map(jnp.abs, random_tree(getkey()))
        tree["Dense_0"]["kernel"] = tree["Dense_0"]["kernel"].at[:5].set(0.0)
        if name == "hutchinson":
            tree = jax.tree.map(lambda a: a - 0.5, tree)
        if i == len(names) - 1 and len(names) > 2:
            tree = jax.tree.map(jnp.zeros_like, tree)
        scores[name] = tree
    paths = sr.write_sensitivity_report(scores, params, tmp_path / "out")
    assert os.path.getsize(paths["histogram"]) > 10_000


def test_figure_counts_zeros_shares_x_and_shows_the_tables_spearman(getkey):
    import matplotlib.pyplot as plt

    params = random_tree(getkey())
    names = ("obd", "hutchinson", "ggn", "fisher")
    scores = {}
    for name in names:
        tree = jax.tree.map(jnp.abs, random_tree(getkey()))
        tree["Dense_0"]["kernel"] = tree["Dense_0"]["kernel"].at[:5].set(0.0)
        scores[name] = tree
    scores["ggn"]["Conv_0"]["kernel"] = scores["ggn"]["Conv_0"]["kernel"] * 1e-3
    rows = sr.compare_estimators(scores, params)
    arrays = {
        k: np.concatenate(list(sr.crossbar_arrays(v).values()))
        for k, v in scores.items()
    }
    n = len(arrays["obd"])  # 72 conv + 200 dense weights; 50 zeros each
    fig = sr._figure(arrays, rows, bins=20)
    try:
        top, bottom = fig.subfigs
        hist = top.axes
        titles = [ax.get_title() for ax in hist]
        for name, title in zip(names, titles, strict=True):
            assert title.splitlines()[0] == sr._label(name)
            assert title.splitlines()[-1].startswith(
                f"50 exact zeros ({100 * 50 / n:.1f} %)"
            ), title
        assert len({ax.get_xlim() for ax in hist}) == 1  # shared x range
        text = " ".join(t.get_text() for ax in bottom.axes for t in ax.texts)
        for a, b in (("obd", "ggn"), ("obd", "hutchinson"), ("ggn", "hutchinson")):
            rho = next(
                r["spearman"]
                for r in rows
                if r["layer"] == "overall" and (r["a"], r["b"]) in ((a, b), (b, a))
            )
            assert f"Spearman {rho:.3f}" in text
        assert "50 are exactly 0 under every estimator" in top.get_suptitle()
    finally:
        plt.close(fig)
