"""The sweep report: the summary's tables and the accuracy plots."""

import numpy as np
import pytest

from uswim_jax import report
from uswim_jax.sweep import Curve


def _curve(fractions, diffs, t=16, seed=0, verify_cycles=10.0):
    """A curve whose trials differ a lot in absolute accuracy (a shared
    per-trial offset, as common random numbers give) but whose paired
    differences from exhaustive are ``diffs`` (pp) plus small noise."""
    rng = np.random.default_rng(seed)
    f = np.asarray(fractions, np.float64)
    ref = 0.9 + 0.05 * rng.standard_normal(t)
    acc = ref[None] + np.asarray(diffs)[:, None] / 100.0
    acc = acc + 0.001 * rng.standard_normal(acc.shape)
    plain = 1.0 / verify_cycles
    return Curve(
        counts=np.round(f * 1000).astype(np.int32),
        fractions=f,
        cycles=plain + (1 - plain) * f,
        cycles_verified_only=f,
        accuracies=acc,
        reference=ref,
        baseline=ref - 0.05,
        baseline_cycles=np.asarray([plain, 0.0]),
    )


def _info():
    return {
        "dataset": "synthetic",
        "model": "toy",
        "num_weights": 1000,
        "clean_accuracy": 0.9,
        "num_test": 100,
        "dataset_source": "generated",
    }


UNIFORM, STATE = "uniform sigma=0.3", "state s=3 sigma=0.3"
FRACTIONS = (0.003, 0.04, 0.25)


def _curves():
    diffs = (-4.0, -1.0, -0.1)
    return {
        (UNIFORM, "swim"): _curve(FRACTIONS, diffs),
        (STATE, "swim"): _curve(FRACTIONS, diffs, seed=1),
        (STATE, "uswim"): _curve(FRACTIONS, diffs, seed=2),
    }


def test_accuracy_table_has_the_budgets_that_were_run():
    text = report.summary_markdown(_info(), _curves())
    heads = [line for line in text.splitlines() if line.startswith("| method | 0")]
    assert heads == ["| method | 0.3% | 4% | 25% |"] * 2
    # The first swim row of the uniform section is its accuracy row: a value
    # in every column, none left empty ("-").
    row = next(line for line in text.splitlines() if line.startswith("| swim | "))
    cells = row.strip(" |").split(" | ")[1:]
    assert len(cells) == 3 and all("±" in c for c in cells)


def test_uniform_setting_says_uswim_equals_swim():
    text = report.summary_markdown(_info(), _curves())
    uniform, state = text.split(f"## {STATE}")
    assert "U-SWIM is not listed" in uniform
    assert "U-SWIM is not listed" not in state
    assert "U-SWIM speedup over SWIM" in state


def test_plot_band_is_the_paired_difference_the_table_uses():
    c = _curve(FRACTIONS, (-4.0, -1.0, -0.1))
    mean, low, high = report.paired_band(c)
    # Paired: the shared per-trial offset (5 pp) cancels; the unpaired CI of
    # curves.csv does not.
    rows = report.curve_rows("s", "m", c)
    unpaired = np.asarray([r[10] - r[9] for r in rows])
    assert np.all(high - low < unpaired / 10)
    # The band's edges are what cycles_to_target's range comes from: its low
    # end is where the upper edge first reaches -margin (between steps 0, 1).
    ct = c.cycles_to_target(2.0)
    x = np.asarray(c.cycles)
    w = (-2.0 - high[0]) / (high[1] - high[0])
    assert ct.low == pytest.approx(x[0] + w * (x[1] - x[0]))
    w = (-2.0 - low[0]) / (low[1] - low[0])
    assert ct.high == pytest.approx(x[0] + w * (x[1] - x[0]))


def test_write_report_writes_both_plots(tmp_path):
    curves = _curves()
    report.write_report(tmp_path, {**_info(), "curves": curves}, curves)
    for _, _, name in report.PLOT_AXES.values():
        assert (tmp_path / name).stat().st_size > 10_000
    with pytest.raises(ValueError, match="x_axis"):
        report.plot_curves(curves, tmp_path / "x.png", x_axis="log")


@pytest.mark.parametrize("x_axis", list(report.PLOT_AXES))
def test_plot_panels_say_what_they_show(x_axis):
    import matplotlib.pyplot as plt

    curves = _curves()
    fig = report._curves_figure(curves, x_axis, ("swim", "uswim"))
    try:
        uniform, state = fig.axes[:2]
        assert "U-SWIM = SWIM" in uniform.get_title()
        assert "U-SWIM" not in state.get_title()
        for ax in (uniform, state):
            assert ax.get_xlabel() == report.PLOT_AXES[x_axis][1]
            assert "exhaustive" in ax.get_ylabel()
        assert "paired" in fig.get_suptitle()
        # The drawn line is the paired mean, at the axis's cycles.
        c = curves[(UNIFORM, "swim")]
        line = uniform.get_lines()[0]
        field = report.PLOT_AXES[x_axis][0]
        np.testing.assert_allclose(line.get_xdata(), getattr(c, field))
        np.testing.assert_allclose(line.get_ydata(), c.paired_difference()[0])
    finally:
        plt.close(fig)
