"""``make reproduce-devices``: the grid, the assumed-cycle pricing, the report
and the README section from made-up curves (fast), and the driver end to end
on generated data with a resume (slow)."""

import dataclasses
import json

import numpy as np
import pytest

from experiments import readme
from experiments.common import csv_text
from experiments.devices import run
from experiments.devices.configs import default
from experiments.fashion_mnist.configs.default import model_config as fashion_config
from experiments.mnist.configs.default import model_config as mnist_config
from uswim_jax.sweep import Curve


def test_default_grid_is_the_issues():
    c = default.get_config()
    assert [n for n, _ in c.models] == ["mnist", "fashion-mnist"]
    # the reproductions' float LeNet, so their run folders can be reused
    assert c.models[0][1] == mnist_config("lenet", None)
    assert c.models[1][1] == fashion_config("lenet", None)
    assert c.presets == ("pcm", "rram")
    assert c.times == (1.0, 3600.0, 86400.0, 30 * 86400.0)
    assert c.compensation == (False, True)
    assert {"random", "magnitude", "swim", "uswim"} <= set(c.methods)
    assert any(m.startswith("eloss-") for m in c.methods)
    q = default.get_quick_config()
    assert q.presets == c.presets and q.methods == c.methods
    assert q.num_trials < c.num_trials
    with pytest.raises(ValueError, match="presets"):
        dataclasses.replace(c, presets=("flash",))
    with pytest.raises(ValueError, match="times"):
        dataclasses.replace(c, times=(3600.0, 1.0))
    with pytest.raises(ValueError, match="plot_fractions"):
        dataclasses.replace(c, plot_fractions=(0.5,))


def test_main_refuses_the_per_chip_flag(capsys):
    from experiments.devices import main

    assert main.main(["--quick", "--per-chip", "0.5"]) == 2
    assert "--per-chip" in capsys.readouterr().err


def _curve(fractions, accs, ref, base, cycles):
    f = np.asarray(fractions, np.float32)
    return Curve(
        counts=np.round(f * 1000).astype(np.int32),
        fractions=f,
        cycles=np.asarray(cycles, np.float32),
        cycles_verified_only=f,
        accuracies=np.asarray(accs, np.float32),
        reference=np.asarray(ref, np.float32),
        baseline=np.asarray(base, np.float32),
        baseline_cycles=np.asarray([0.5, 0.0], np.float32),
    )


def test_assumed_curve_prices_ten_cycles_per_verified_device():
    c = _curve([0.1, 0.5], [[0.9, 0.9], [0.95, 0.95]], [1, 1], [0.8, 0.8], [0.6, 0.8])
    a = run.assumed_curve(c)
    np.testing.assert_allclose(a.cycles, [0.19, 0.55], rtol=1e-6)
    np.testing.assert_allclose(a.baseline_cycles, [0.1, 0.0], rtol=1e-6)
    # the same accuracies: the assumed curve crosses a margin at the same
    # fraction, so its NWC is the Gaussian price of that fraction
    g = 100 * (1 - 0.95)  # reached exactly at the second budget
    assert a.cycles_to_target(g).value == pytest.approx(0.55, rel=1e-5)
    assert c.cycles_to_target(g).value == pytest.approx(0.8, rel=1e-5)


def _fake_outs(config):
    outs = []
    for name, _ in config.models:
        curves = {}
        for p in config.presets:
            for t in config.times:
                for comp in config.compensation:
                    s = run.setting_name(p, t, comp)
                    drop = 0.01 * np.log10(t + 1) * (0.5 if comp else 1.0)
                    for i, m in enumerate(config.methods):
                        accs = [
                            [0.9 - drop + 0.01 * i] * config.num_trials,
                            [0.95 - drop] * config.num_trials,
                        ]
                        curves[(s, m)] = _curve(
                            config.fractions,
                            accs,
                            [0.96 - drop] * config.num_trials,
                            [0.7 - drop] * config.num_trials,
                            [0.4, 0.6],
                        )
        cost = {
            "devices": 1000,
            "writes_per_device": 2.5,
            "failed_fraction": 0.001,
            "time_per_device_s": 1e-6,
            "energy_per_device_j": 3e-11,
            "time_per_chip_s": 1e-3,
            "energy_per_chip_j": 3e-8,
        }
        outs.append(
            {
                "name": name,
                "label": "float LeNet",
                "dataset": "synthetic",
                "dataset_source": "generated",
                "num_test": 10,
                "num_weights": 500,
                "clean_accuracy": 0.97,
                "curves": curves,
                "costs": dict.fromkeys(config.presets, cost),
                "seconds": dict.fromkeys(config.presets, 1.0),
                "cpu_seconds": dict.fromkeys(config.presets, 2.0),
            }
        )
    return outs


def test_report_csvs_plot_and_readme_section(tmp_path):
    config = dataclasses.replace(
        default.get_quick_config(), fractions=(0.01, 0.1), num_trials=2
    )
    outs = _fake_outs(config)
    text = run.devices_markdown(config, outs)
    for p in config.presets:
        assert f"### `{p}`" in text
    assert "## Answers" in text and "2.50 writes per device" in text
    rows = run.speed_rows(config, outs)
    n_cells = len(config.models) * len(config.presets) * len(config.times) * 2
    assert len(rows) == n_cells * len(config.methods) * len(run.MARGINS)
    # loop cycles 0.6 vs the assumed 0.19 at the 10 % budget: the loop's
    # speedup is the smaller one wherever both reach the margin
    both = [r for r in rows if r["speedup_loop"] > 0 and r["speedup_assumed10"] > 0]
    assert both and all(r["speedup_loop"] < r["speedup_assumed10"] for r in both)
    (tmp_path / "devices_speedups.csv").write_text(csv_text(rows))
    (tmp_path / "devices_cost.csv").write_text(csv_text(run.cost_rows(config, outs)))
    (tmp_path / "manifest.json").write_text(json.dumps({"config": config.to_json()}))
    section = readme.devices_results(tmp_path)
    assert section.count("\n| ") == 1 + n_cells  # the header, one row per cell
    assert "2.50 writes per device" in section
    assert "2 programmed chips" in section and "1%, 10% verified" in section
    png = tmp_path / "t.png"
    run.plot_time(config, outs, "pcm", png)
    assert png.stat().st_size > 1000


@pytest.mark.slow
def test_driver_end_to_end_on_generated_data_resumes(tmp_path, monkeypatch):
    from experiments.mnist.run_test import _fake
    from uswim_jax.experiment import units
    from uswim_jax.train import TrainConfig

    base = dataclasses.replace(
        mnist_config("lenet", None),
        train=TrainConfig(model="lenet", dataset="mnist", epochs=1, batch_size=32),
        curvature_subset=64,
        estimator_subset=32,
    )
    config = dataclasses.replace(
        default.get_quick_config(),
        models=(("mnist", base),),
        presets=("pcm",),
        times=(1.0, 86400.0),
        methods=("random", "uswim", "eloss-obd"),
        num_trials=2,
        test_subset=32,
        chunk_size=2,
        eval_batch_size=32,
        cost_chips=1,
    )
    datasets = {"mnist": (_fake(256, 0), _fake(64, 1))}
    out = run.run(
        config, tmp_path / "w", results_dir=tmp_path / "r", datasets=datasets,
        reuse=None, progress=False, log=lambda *a: None,
    )  # fmt: skip
    for f in (*run.REPORT_FILES, "accuracy_vs_time_pcm.png"):
        assert (tmp_path / "r" / f).is_file()
    o = out["outs"][0]
    assert len(o["curves"]) == 2 * 2 * 3  # times x switch x methods
    for c in o["curves"].values():
        cyc = np.asarray(c.cycles)
        assert np.all(np.diff(cyc) >= -1e-6) and np.all((cyc > 0) & (cyc <= 1))
    assert 1 <= o["costs"]["pcm"]["writes_per_device"] <= 20

    def boom(*a, **k):
        raise AssertionError("a finished unit of work was recomputed")

    monkeypatch.setattr(units, "_sweep_jit", boom)
    monkeypatch.setattr(units, "_evaluate_jit", boom)
    again = run.run(
        config, tmp_path / "w", datasets=datasets, reuse=None, progress=False,
        log=lambda *a: None,
    )  # fmt: skip
    assert (
        again["summary"].split("Wall time")[0] == out["summary"].split("Wall time")[0]
    )
