"""The U-SWIM over SWIM scan end to end on generated data: one trained model
per dataset shared by its sigma runs, U-SWIM/SWIM read off the curves, s = 1
(U-SWIM's multiplier constant, so its order is SWIM's) giving exactly 1x, a
rerun resuming to the same report, and the 7x verdict on hand-made rows."""

import csv
import dataclasses
import io
import math

import jax
import numpy as np

from experiments import readme
from experiments.mnist.run_test import _fake
from experiments.uswim_scan import run
from experiments.uswim_scan.configs import default
from uswim_jax.experiment import ExperimentConfig, Setting
from uswim_jax.train import TrainConfig


def test_default_configs_cover_the_scan():
    c = default.get_config()
    runs = c.runs()
    assert {g for g, _, _ in runs} == {"mnist", "fashion_mnist"}
    assert c.s_values == (2.0, 3.0, 5.0, 8.0, 12.0) and c.sigmas == (0.2, 0.3, 0.5)
    for _, _, cfg in runs:
        assert cfg.methods == ("swim", "uswim") and cfg.sigmas == ()
        assert cfg.train.model == "lenet" and cfg.train.weight_bits is None
    # the reproductions' float LeNet training, so a trained model is comparable
    assert default.TRAIN["mnist"].epochs == 20
    assert default.TRAIN["fashion_mnist"].epochs == 10
    for get in (default.get_quick_config, default.get_full_config):
        assert len(get().runs()) >= 2


def _scan(**kw):
    base = ExperimentConfig(
        train=TrainConfig(epochs=1, batch_size=32),
        fractions=(0.01, 0.1, 0.5),
        num_trials=3,
        test_subset=64,
        curvature_subset=64,
        label="test",
    )
    return default.ScanConfig((("mnist", base),), **kw)


def test_scan_shares_training_and_ratio_is_one_at_s_one(tmp_path):
    config = _scan(sigmas=(0.3, 0.5), s_values=(1.0, 6.0))
    datasets = {"mnist": (_fake(128, 0), _fake(64, 1))}
    kw = {"datasets": datasets, "progress": False, "log": lambda *a: None}
    out = run.run(config, tmp_path / "w", results_dir=tmp_path / "r", **kw)
    w = tmp_path / "w"
    # one trained model: the second sigma's folder starts from the first's
    a, b = (w / "mnist" / n / "train" for n in ("sigma-0.3", "sigma-0.5"))
    assert (a / "checkpoint.ckpt").read_bytes() == (b / "checkpoint.ckpt").read_bytes()
    pa, pb = (out["outs"][("mnist", n)]["params"] for n in ("sigma-0.3", "sigma-0.5"))
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    rows = out["rows"]
    assert len(rows) == 2 * 2 * 3 * 2  # sigmas x s x margins x bases
    for r in rows:
        o = out["outs"][("mnist", f"sigma-{r['sigma']:g}")]
        name = Setting(r["sigma"], r["s"]).name
        v = r["basis"] == "nwc_v"
        sw = o["curves"][(name, "swim")].cycles_to_target(
            r["margin_pp"], verified_only=v
        )
        us = o["curves"][(name, "uswim")].cycles_to_target(
            r["margin_pp"], verified_only=v
        )
        assert r["swim"] == sw.value and r["uswim"] == us.value
        if us.value > 0:
            assert math.isclose(r["ratio"], sw.value / us.value)
            assert r["ratio_low"] <= r["ratio"] <= r["ratio_high"]
        if r["s"] == 1.0:  # a constant multiplier: U-SWIM's order is SWIM's
            assert (r["swim"], r["swim_low"], r["swim_high"]) == (
                r["uswim"],
                r["uswim_low"],
                r["uswim_high"],
            )
            assert r["ratio"] == 1.0 or (r["swim"] == 0 and math.isnan(r["ratio"]))
    # the CSV holds the rows; the report and its copies are written
    got = list(csv.DictReader(io.StringIO((w / "scan.csv").read_text())))
    assert len(got) == len(rows)
    assert {float(g["ratio"]) for g in got if float(g["s"]) == 1.0} <= {1.0}
    for f in run.REPORT_FILES:
        assert (tmp_path / "r" / f).is_file(), f
    assert (tmp_path / "r" / "mnist" / "sigma-0.5" / "speedups.csv").is_file()
    text = (w / "scan.md").read_text()
    assert "Does U-SWIM/SWIM reach 7x" in text
    section = readme.uswim_scan_results(tmp_path / "r")
    assert run.claim_line(rows) in section and "scan.md" in section
    # a rerun resumes: nothing recomputed, the same table
    again = run.run(config, tmp_path / "w", **kw)
    assert again["rows"] == rows


def _row(s, sigma, ratio, low=None, ds="d", basis="nwc_v", g=0.5):
    return {
        "dataset": ds,
        "basis": basis,
        "margin_pp": g,
        "s": s,
        "sigma": sigma,
        "ratio": ratio,
        "ratio_low": ratio if low is None else low,
        "ratio_high": ratio,
    }


def test_mildest_is_the_smallest_s_then_sigma_reaching_the_claim():
    rows = [
        _row(12, 0.2, 9.0),
        _row(5, 0.5, 7.5),
        _row(5, 0.3, 7.0, low=3.0),
        _row(2, 0.5, 6.9),
        _row(2, 0.5, 50.0, basis="nwc"),
    ]
    got = run.mildest(rows)
    assert (
        got[("d", "nwc_v", 0.5)]["s"] == 5 and got[("d", "nwc_v", 0.5)]["sigma"] == 0.3
    )
    assert got[("d", "nwc", 0.5)]["s"] == 2
    none = run.mildest([_row(2, 0.2, 6.99), _row(3, 0.2, float("nan"))])
    assert none == {("d", "nwc_v", 0.5): None}
    # the verdict names the largest ratio when nothing reaches 7x
    rows = [
        dict(_row(s, 0.3, r, g=g), **{})
        for s, r in ((2, 1.5), (8, 3.25))
        for g in (0.1, 0.5, 1.0)
    ]
    lines = run.verdict_lines(rows)
    assert len(lines) == 1 and "no setting reaches 7x" in lines[0]
    assert "3.25x" in lines[0] and "s=8, sigma=0.3" in lines[0]


def test_scan_config_rejects_empty_or_repeated_grids():
    base = _scan().bases
    for kw in ({"sigmas": ()}, {"s_values": ()}, {"sigmas": (0.3, 0.3)}):
        try:
            default.ScanConfig(base, **kw)
        except ValueError:
            continue
        raise AssertionError(kw)
    assert dataclasses.replace(_scan(), sigmas=(0.2,)).runs()[0][1] == "sigma-0.2"
