"""The README's result sections are generated from the committed results files
(``python -m experiments.readme``), not typed."""

import pytest

from experiments import readings, readme


def test_readme_sections_match_the_results_files():
    texts = {doc: doc.read_text() for doc in readme.DOCUMENTS}
    for name in {**readme.SECTIONS, **readings.SECTIONS}:
        holders = [d for d, t in texts.items() if f"<!-- BEGIN {name} -->" in t]
        assert len(holders) == 1, (name, holders)
    for doc, text in texts.items():
        assert readme.render(text) == text, (
            f"{doc.name} is stale: run `python -m experiments.readme`"
        )


def test_check_names_the_stale_document(tmp_path, monkeypatch, capsys):
    doc = tmp_path / "studies.md"
    doc.write_text(
        "<!-- BEGIN deep-motivation -->\nold\n<!-- END deep-motivation -->\n"
    )
    monkeypatch.setattr(readme, "ROOT", tmp_path)
    monkeypatch.setattr(readme, "DOCUMENTS", (doc,))
    assert readme.main(["--check"]) == 1
    assert "studies.md stale" in capsys.readouterr().err
    assert readme.main([]) == 0 and "old" not in doc.read_text()
    assert readme.main(["--check"]) == 0


def test_draw_compile_line_says_which_draws_the_library_runs():
    def case(flat, shaped, library="flat", diff=0.0, moved=0.0):
        return {
            "flat": {"compile_s_median": flat},
            "shaped": {"compile_s_median": shaped},
            "flat_over_shaped_compile": flat / shaped,
            "library": library,
            "max_abs_diff": diff,
            "moved_fraction": moved,
        }

    d = {
        "trial_keys": 4,
        "cases": {
            "pulse": case(2.0, 4.0),
            "rram": case(9.0, 12.0, "flat", 3e-8, 0.068),
        },
    }
    line = readme.draw_compile_line(d)
    assert (
        "0.50x the time for one `PulseModel` chip of LeNet (2.0 s against 4.0 s)"
        in line
    )
    assert "0.75x the time for one `rram` chip of LeNet" in line
    assert "The library draws flat in the pulse and rram cases" in line
    assert "identical to the shaped draws' in the pulse case;" in line
    assert "in the rram case XLA fuses the two programs differently" in line
    assert "6.8 % (rram) of a chip's weights differ from the shaped draws'" in line
    assert "by at most 3.0e-08" in line
    assert "program_at_times" not in line  # no such check in this JSON
    del d["cases"]["rram"]
    assert "whose outputs are identical" in readme.draw_compile_line(d)
    d["cases"]["pulse"]["max_abs_diff"] = 1e-7  # not identical: not said
    assert "identical" not in readme.draw_compile_line(d)
    d["cases"]["pulse"]["library"] = "shaped"  # not a style the library draws
    with pytest.raises(ValueError, match="shaped"):
        readme.draw_compile_line(d)


def test_at_times_sentence_gives_each_preset_and_style():
    def row(flat, shaped, diff):
        return {
            "flat": {"moved_fraction": flat, "max_abs_diff": diff},
            "shaped": {"moved_fraction": shaped, "max_abs_diff": diff},
        }

    a = {
        "times_s": [1.0, 3600.0, 86400.0],
        "cases": {
            "pcm": row(0.0, 0.0, 0.0),
            "rram, compensated": row(0.0, 0.065, 3e-8),
        },
    }
    text = readme.at_times_sentence(a)
    assert "read at 1 s, 1 h, 1 day by `program_at_times`" in text
    assert "drawn flat / shaped: 0.0 % / 0.0 % (pcm) and 0.0 % / 6.5 % " in text
    assert "by at most 3.0e-08" in text and "not always in it" in text
    a["cases"]["rram, compensated"] = row(0.0, 0.0, 0.0)
    assert readme.at_times_sentence(a).endswith("of the weights differ.")
    d = {"trial_keys": 4, "cases": {}, "at_times": a}
    assert "`program_at_times`" in readme.draw_compile_line(d)


def test_deep_motivation_reads_the_ablations(tmp_path):
    folder = tmp_path / "ablations"
    folder.mkdir()
    head = "variant,model,setting,method,none_verified,exhaustive,NWC-v@0.5pp"
    rows = [
        "base,lenet,uniform sigma=0.3,swim,66.48,97.23,0.179",
        "base,lenet,uniform sigma=0.3,magnitude,66.48,97.23,0.965",
        "resnet-avg-pool-exact,resnet18 width 8,uniform sigma=0.3,swim,14.74,96.15,-",
        "resnet-avg-pool-exact,resnet18 width 8,state s=3 sigma=0.3,swim,9,96,0.5",
    ]
    (folder / "ablations.csv").write_text("\n".join([head, *rows]) + "\n")
    text = readings.deep_motivation(folder)
    assert "the width-8 ResNet-18 at sigma = 0.3 keeps 14.7 % accuracy" in text
    assert "(96.2 % with every weight verified)" in text
    assert "SWIM does not come, at any budget point, within 0.5 pp" in text
    assert text.endswith("LeNet at the same sigma needs 18 %.")
    assert readings.deep_motivation(tmp_path / "absent").startswith("Not run yet")


def test_per_chip_section_reads_each_models_per_chip_csv(tmp_path):
    import json

    from uswim_jax.experiment import ExperimentConfig
    from uswim_jax.experiment.per_chip import COLUMNS, with_per_chip
    from uswim_jax.experiment.store import RunStore

    folder = tmp_path / "reproduce-mnist"
    models = [
        {"name": "qlenet", "label": "4-bit QLeNet"},
        {"name": "lenet", "label": "LeNet"},
    ]
    (folder / "lenet").mkdir(parents=True)
    (folder / "qlenet").mkdir()
    (folder / "run_info.json").write_text(json.dumps({"models": models}))
    assert readme.per_chip_results(folder).startswith("Not run yet")
    # The run folder's config.json as the pipeline writes it.
    config = with_per_chip(
        ExperimentConfig(sigmas=(0.3,)), margin=0.5, batch_fractions=(0.005, 0.01)
    )
    RunStore(folder / "lenet").open(
        {"experiment": config.to_json()}, execution=config.execution_json()
    )
    rows = []
    for m, base in (("swim", 0.2), ("uswim", 0.1)):
        for b, extra in ((0.005, 0.0), (0.01, 0.01)):
            r = dict.fromkeys(COLUMNS, 1.0)
            r.update(method=m, batch_fraction=b, cycles_mean=base + extra)
            r.update(overshoot=extra, checks_mean=7.0 if b == 0.01 else 12.0)
            rows.append(r)
    csv = [",".join(COLUMNS)] + [",".join(str(r[c]) for c in COLUMNS) for r in rows]
    (folder / "lenet" / "per_chip.csv").write_text("\n".join(csv) + "\n")
    text = readme.per_chip_results(folder)
    assert "**LeNet**" in text and "QLeNet" not in text  # only models that ran it
    assert "within 0.5 pp" in text and "1,000 calibration images" in text
    table = [line for line in text.splitlines() if line.startswith("| ")][1:]
    # one row per method, at the 1 % batch
    assert [r.split(" | ")[0] for r in table] == ["| swim", "| uswim"]
    assert [r.split(" | ")[1] for r in table] == ["0.210", "0.110"]
    assert "batch size, uswim: 0.5 %: 12.0 checks" in text
    assert "1 %: 7.0 checks" in text and "overshoot +0.010 NWC" in text
    # The reading under the table computes its numbers from the same CSV.
    reading = readings.per_chip_reading(folder)
    assert "SWIM's mean chip costs 0.21 NWC" in reading
    assert "Every order stops most chips" in reading
    assert "buys SWIM 0.00 points" in reading  # test_mean == fixed_test_mean
    assert "checks from 12 (0.5 % batches) to 7 (1 %)" in reading
    stuck = dict(rows[-1], method="random", never_reached=100.0)
    csv.append(",".join(str(stuck[c]) for c in COLUMNS))
    (folder / "lenet" / "per_chip.csv").write_text("\n".join(csv) + "\n")
    reading = readings.per_chip_reading(folder)
    assert "never stop a chip early" in reading and "are random (100 %)." in reading


def test_byom_targets_name_the_cases_that_miss_them():
    def case(tps, xs, pct):
        return {"trials_per_s": tps, "x_serial": xs, "pct_of_matmul": pct}

    lines = readme._byom_targets(
        {
            "LeNet, a": case(50.0, 5.5, 35.0),
            "LeNet, b": case(39.0, 4.9, 31.0),
            "ResNet-18 width 16, project": case(3.0, 1.0, 39.9),
        }
    )
    assert lines == [
        "- LeNet, every variant: 39.0–50.0 trials/s (target 40: missed by LeNet, b).",
        "- LeNet, every variant: 4.90–5.50x its serial loop (target 5x: missed by "
        "LeNet, b).",
        "- LeNet, every variant: 31.0–35.0 % of the matmul rate (target 30 %: met).",
        "- ResNet-18 width 16, project: 39.9 % of the matmul rate (target 40 %: "
        "missed).",
    ]
    # the other models have no target: a line with each one's x serial, those
    # below their loops and the trials they ran at once; none when there are
    # only CNNs
    rnn = {**case(9, 1.2, 9), "auto_chunk_size": 1, "auto_eval_batch_size": 40}
    rnn["measure"] = {"ms_per_trial": {"1 x 40": 2.0, "4 x 40": 3.0, "1 x all": 1.0}}
    cases = {"ConvNet, project": case(1.0, 0.7, 50.0), "RNN, 28 steps": rnn}
    (line,) = readme._beyond_cnns(cases)
    assert line.startswith(
        "- Beyond CNNs (no target): RNN 1.20x their serial loops (at least the "
        "loop's speed on each), run one trial at a time."
    )
    assert "took 1.50x (RNN) the time per trial of one at a time." in line
    mlp = {**case(9, 0.9, 9), "auto_chunk_size": 4, "measure": {"ms_per_trial": {}}}
    (line,) = readme._beyond_cnns({**cases, "MLP, linen": mlp})
    assert "(below the loop on MLP), run trials at once: 1, 4." in line
    assert "took 1.50x (RNN) the" in line and "(MLP) the" not in line
    assert readme._beyond_cnns({"ConvNet, project": case(1.0, 0.7, 50.0)}) == []


def test_measured_sizes_line_names_the_cases_below_their_loops():
    def case(xs, xa, sec):
        return {"measure": {"x_serial": xs, "x_auto": xa, "measuring_s": sec}}

    (line,) = readme._measured({"a": case(1.2, 1.0, 2.0), "b": case(0.97, 1.3, 9.5)})
    assert "0.97–1.20x its serial loop (below its serial loop on b)" in line
    assert "1.00–1.30x the defaults" in line and "took 2.0–9.5 s" in line
    assert "can miss" not in line
    (line,) = readme._measured({"a": case(1.2, 0.8, 2.0), "b": case(1.1, 1.0, 2.0)})
    assert line.endswith("slower than the defaults by more than 10 % on a.")
    (line,) = readme._measured({"a": case(1.2, 1.0, 2.0)})
    assert "1.20x its serial loop (at least its serial loop's speed on every" in line


def test_cpu_performance_names_the_default_and_the_trials_that_differ(tmp_path):
    """The default line and the per-trial agreement come from the JSON: a case
    whose accuracies differ from the default's is named with its count."""
    import json

    def case(rate, pct, **kw):
        return {
            "num_trials": 100,
            "trials_per_s": rate,
            "gflops": rate,
            "pct_of_matmul": pct,
            "x_serial": rate / 10,
            "trials_differing_from_default": 0,
            "max_abs_acc_diff_vs_default": 0.0,
            **kw,
        }

    d = {
        "model": "lenet",
        "num_images": 2000,
        "num_trials": 100,
        "cpu_count": 2,
        "jax_version": "0",
        "load_average_start": [0.0],
        "matmul_gflops_each_round": [200.0],
        "cases": {
            "serial (jit one trial, Python loop)": case(10.0, 5.0),
            "evaluate default (chunk=auto, batch=auto)": case(
                50.0, 30.0, auto_chunk_size=5, auto_eval_batch_size=20
            ),
            "evaluate chunk=auto batch=None (all images)": case(
                25.0,
                15.0,
                trials_differing_from_default=2,
                max_abs_acc_diff_vs_default=0.0005,
            ),
            "evaluate chunk=5 batch=40": case(60.0, 36.0),
        },
    }
    path = tmp_path / "mc_throughput.json"
    path.write_text(json.dumps(d))
    text = readme.cpu_performance(path)
    assert "5 trials x 20 images here) runs 50.0 trials/s, 0.83x the best" in text
    assert "2.00x all images in one forward pass (25.0 trials/s)" in text
    assert "2 of 100 trials differ between the two" in text
    assert "differ from the default path's in `evaluate chunk=auto batch=None" in text
    assert "(2 trials, at most 0.0005)" in text
    assert "target 40 %: missed" in text


def test_sweep_performance_reports_the_paired_sweep_and_says_when_it_differs(
    tmp_path,
):
    import json
    import shutil

    src = readme.ROOT / "benchmarks" / "results" / "recompile.json"
    shutil.copy(src, tmp_path / "recompile.json")
    d = json.loads(src.read_text())
    p = d["sweep_vs_evaluates"]
    text = readme.sweep_performance(tmp_path)
    assert f"(x{p['sweep_over_evaluates']:.2f}); per-trial accuracies identical" in text
    p["accuracies_identical"] = False
    p["sweep_over_evaluates"] = 1.5
    (tmp_path / "recompile.json").write_text(json.dumps(d))
    text = readme.sweep_performance(tmp_path)
    assert "(x1.50); per-trial accuracies NOT identical" in text
    del d["sweep_vs_evaluates"]  # a JSON from before the paired timing
    (tmp_path / "recompile.json").write_text(json.dumps(d))
    assert "round robin" not in readme.sweep_performance(tmp_path)


def _study_folder(tmp_path):
    """A study folder as experiments.deep writes it: one run per dataset
    (``speedups.csv`` at two margins), the diagonal check and the budget split."""
    import json

    from experiments.deep.run import GGN, OBD_SAME

    folder = tmp_path / "study"
    speed = {"swim": (9.0, 1.2), "eloss-obd": (9.5, 2.0), "eloss-ggn": (9.9, 2.4)}
    speed |= {"magnitude": (3.0, 1.0), "random": (1.5, 1.0)}
    for i, dataset in enumerate(("mnist-10k", "fashion_mnist")):
        run = folder / dataset / "run"
        run.mkdir(parents=True)
        (run / "run_info.json").write_text(json.dumps({"dataset": dataset}))
        lines = ["setting,method,margin_pp,speedup"]
        for m, (low, high) in speed.items():
            for s, v in (("uniform sigma=0.05", low), ("uniform sigma=0.3", high)):
                lines += [f"{s},{m},0.5,{v + i / 10}", f"{s},{m},1.0,99"]
        (run / "speedups.csv").write_text("\n".join(lines) + "\n")
    rows = ["dataset,a,b,layer,n,spearman,top1%"]
    rows += [
        f"{d},{OBD_SAME},{GGN},overall,9,{r},0.5" for d, r in (("a", 0.8), ("b", 0.9))
    ]
    rows += [f"a,{OBD_SAME},{GGN},Conv_0,9,0.1,0.1"]  # a layer, not overall
    (folder / "diagonal.csv").write_text("\n".join(rows) + "\n")
    budget = ["dataset,setting,method,layer,group,size,verified"]
    budget += [
        "a,uniform sigma=0.05,swim,l0,embed,10,6",
        "a,uniform sigma=0.05,swim,l1,mlp,70,3",
        "a,uniform sigma=0.05,swim,l2,head,20,1",
        "a,uniform sigma=0.05,random,l0,embed,10,10",
    ]
    (folder / "budget.csv").write_text("\n".join(budget) + "\n")
    return folder


def test_study_readings_compute_their_numbers(tmp_path):
    folder = _study_folder(tmp_path)
    text = readings.deep_reading(folder)
    assert "At sigma = 0.05" in text and "9.0–10.0x of the 10x ceiling" in text
    assert "1.2–1.3x for SWIM, 2.0–2.5x for the expected-loss" in text
    assert "within 0.4x of the exact GGN" in text  # |9.5 - 9.9| at sigma 0.05
    assert "Spearman correlation is 0.80–0.90" in text
    text = readings.vit_reading(folder)
    assert "10.0x against 3.1x on fashion_mnist" in text
    assert "reaches 2.5x, the one-pass diagonal's 2.1x" in text
    assert "60 % of its verified weights in the embed (10.0 % of the weights)" in text
    assert "30 % in the mlp (70.0 % of the weights)" in text
    assert readings.deep_reading(tmp_path / "absent").startswith("Not run yet")


def test_scan_reading_computes_its_numbers(tmp_path):
    from experiments.uswim_scan.run import COLUMNS

    folder = tmp_path / "uswim-scan"
    folder.mkdir()
    lines = [",".join(COLUMNS)]
    for ds, ratios in (("a", (1.1, 1.5)), ("b", (1.0, 2.0))):
        for s, ratio in zip((2.0, 5.0), ratios, strict=True):
            for basis, low, high in (("nwc", 0.9, 3.0), ("nwc_v", 0.5, 9.0)):
                r = dict.fromkeys(COLUMNS, 0.5)
                r.update(dataset=ds, s=s, sigma=0.2, margin_pp=0.5, basis=basis)
                r.update(ratio=ratio, ratio_low=low * ratio, ratio_high=high * ratio)
                r.update(swim=0.3, uswim=0.3 / ratio)
                lines.append(",".join(str(r[c]) for c in COLUMNS))
    (folder / "scan.csv").write_text("\n".join(lines) + "\n")
    text = readings.scan_reading(folder)
    assert "a 1.10x (s=2), 1.50x (s=5); b 1.00x (s=2), 2.00x (s=5)" in text
    assert "grows with s on every dataset, most on b" in text
    assert "at or below 2.00x, so the abstract's 7x is not in this scan" in text
    # the widest range: NWC-v (high/low 18 against 3.3), U-SWIM the cheaper
    assert "(NWC-v at 0.5 pp, a, s=2, sigma=0.2)" in text
    assert "U-SWIM needs 27.3 % of exhaustive write-verify's verify cycles" in text


def test_devices_reading_computes_its_numbers(tmp_path):
    folder = tmp_path / "reproduce-devices"
    folder.mkdir()
    (folder / "devices_cost.csv").write_text(
        "model,preset,writes_per_device\nm,pcm,2.0\nm,rram,3.04\n"
    )
    head = "model,preset,t_s,compensation,method,margin_pp,none_mean,exhaustive_mean"
    lines = [head + ",speedup_loop,speedup_assumed10"]
    for preset, loop in (("pcm", 0.2), ("rram", 0.5)):
        for t, drop in ((1, 0.0), (3600, 4.0)):
            for comp in ("False", "True"):
                ex = 98.0 - (drop / 4 if comp == "True" else drop)
                none = ex - (0.2 if comp == "True" else 2.0)  # comp: within 0.5 pp
                for method, speed in (("magnitude", 4.0), ("swim", 5.0 + t / 3600)):
                    if preset == "rram" and t == 3600:
                        speed = 6.0 if method == "magnitude" else 5.0
                    for g in (0.5, 1.0):
                        lines.append(
                            f"m,{preset},{t},{comp},{method},{g},{none},{ex},"
                            f"{loop * speed},{speed}"
                        )
    (folder / "devices_speedups.csv").write_text("\n".join(lines) + "\n")
    text = readings.devices_reading(folder)
    assert "costs 2.00 writes per device on pcm, 3.04 writes per device on rram" in text
    assert "more than about 2.0x (pcm) or 3.0x (rram)" in text
    assert "a median 0.20x (pcm) and 0.50x (rram)" in text
    assert "98.0 % at 1 s and 94.0 % at 1 h without compensation, 97.0 % with" in text
    assert "verifying nothing is within 0.5 pp at every time" in text
    # needed: the 4 uncompensated cells; swim best in 3, magnitude in rram at 1 h
    assert "(4 of 8 cells at 0.5 pp), a curvature-based score is best in 3" in text
    assert "swim 3, magnitude 1" in text
    assert "Magnitude is best on m rram at 1 h." in text


def test_papers_reading_computes_its_numbers(tmp_path):
    import json

    def folder(name, dataset, clean, speed):
        root = tmp_path / name
        sub = root / "m"
        sub.mkdir(parents=True)
        (root / "run_info.json").write_text(
            json.dumps({"models": [{"name": "m", "label": "LeNet"}]})
        )
        info = {"dataset": dataset, "clean_accuracy": clean, "num_weights": 1000}
        (sub / "run_info.json").write_text(json.dumps(info))
        cfg = {"config": {"experiment": {"hutchinson_probes": 8}}}
        (sub / "config.json").write_text(json.dumps(cfg))
        (sub / "references.csv").write_text(
            "setting,none_mean\nuniform sigma=0.2,70\nuniform sigma=0.3,45\n"
            "state s=2 sigma=0.3,50\n"
        )
        lines = ["setting,method,margin_pp,speedup,speedup_v,nwc_v"]
        for setting, methods in speed.items():
            for method, (sp, v) in methods.items():
                for g in (0.5, 1.0):
                    lines.append(f"{setting},{method},{g},{sp},{v},{1 / v}")
        (sub / "speedups.csv").write_text("\n".join(lines) + "\n")
        return root

    a = folder(
        "a",
        "digits",
        0.98,
        {
            "uniform sigma=0.2": {"swim": (5.0, 20.0), "magnitude": (1.2, 1.25)},
            "state s=2 sigma=0.3": {
                "swim": (3.0, 4.0),
                "uswim": (4.0, 8.0),
                "eloss-obd": (3.5, 6.0),
                "eloss-hutchinson": (1.0, 1.0),
            },
        },
    )
    b = folder(
        "b",
        "clothes",
        0.9,
        {"uniform sigma=0.3": {"swim": (1.4, 1.5), "random": (1.1, 1.1)}},
    )
    text = readings.papers_reading((a, b))
    assert "on digits, the curvature-based orders" in text
    assert "verify 5.0–25.0 % of the weights" in text  # 100 / speedup_v
    assert "magnitude and random 80 %" in text
    assert "On clothes the unverified chip loses far more accuracy (45–50 % at " in text
    assert "against 90 % clean), and the best order reaches only 1.4x" in text
    assert (
        "1/0.5/1 pp margins: 2.0x (s=2: 2.0x); U-SWIM ties or beats SWIM in 2 of 2"
        in text.replace("0.1/", "1/")
    )
    assert "behind U-SWIM in 1 cells (digits LeNet state s=2 sigma=0.3: 3.50x " in text
    assert "ties counted for each): swim 2, uswim 1." in text
    assert "8 probes on 1,000 weights reaches a median 1.0x" in text


def test_reading_counts_break_ties_by_name():
    # the text must not depend on the order a set of winners is iterated in
    assert readings._count(["swim", "magnitude", "swim", "eloss-obd"]) == [
        ("swim", 2),
        ("eloss-obd", 1),
        ("magnitude", 1),
    ]
