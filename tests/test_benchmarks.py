"""The sweep, scaling and recompile benchmarks (``benchmarks/``): their cases
compute what they claim, on a toy model in seconds; the end-to-end runs of the
scripts on LeNet (generated data, smallest sizes) are marked slow because
compiling LeNet's noisy forward pass alone takes 10-15 s on the 2-core CPU.
No test asserts a speed."""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _toy import mlp_apply, toy_problem

import uswim_jax as u
from benchmarks import mc_scaling, recompile, sweep_vs_serial
from benchmarks._common import (
    MAX_CALLS_PER_SAMPLE,
    compile_log,
    first_call,
    linear_fit,
    model_flops,
    round_robin,
    timed_rounds,
)
from uswim_jax import _trialbatch
from uswim_jax.sweep import counts_for_fractions

DEVICE = u.UniformVariation(0.6, 0.06)


@pytest.fixture(scope="module")
def problem():
    params, x, y = toy_problem(n=64)
    order = u.global_order(u.magnitude_score(params))
    counts = counts_for_fractions([0.0, 0.2, 1.0], u.crossbar_size(params))
    return params, x, y, order, counts


def test_sweep_cases_give_the_same_trials(problem):
    """Sweep, evaluate x K and both serial loops use trial keys fold_in(key, t)
    at every step, so they give the same (K, T) accuracies (``evaluate x K`` is
    :func:`uswim_jax.evaluate` with each step's mask)."""
    params, x, y, order, counts = problem
    cases, calls = sweep_vs_serial.make_cases(
        mlp_apply, mlp_apply, params, x, y, DEVICE, order, counts, 6, 4, None
    )
    assert calls[sweep_vs_serial.SWEEP] == 1
    assert calls[sweep_vs_serial.SERIAL_XLA] == len(counts) * 6
    timings, accs = round_robin(cases, 1, log=lambda s: None)
    ref = np.asarray(accs[sweep_vs_serial.SWEEP])
    assert ref.shape == (len(counts), 6)
    for name, a in accs.items():
        np.testing.assert_array_equal(np.asarray(a), ref, err_msg=name)
        assert timings[name]["steady_s_min"] > 0
    # Noise matters (the check is not vacuous) and verifying everything helps.
    assert ref[0].mean() < ref[-1].mean()
    assert len(np.unique(ref[0])) > 1


def test_timed_rounds_repeat_short_calls_to_the_minimum_duration():
    """A sample of a call shorter than ``min_call_s`` is the mean of several
    back-to-back calls (at most ``MAX_CALLS_PER_SAMPLE``), fixed per case; a
    call longer than it runs once per round; ``opener`` adds one untimed call
    of the first case per round."""
    calls = {"fast": 0, "slow": 0}
    ready = jnp.zeros(())  # made here: a first jnp.zeros call compiles

    def case(name, seconds):
        def fn():
            calls[name] += 1
            if seconds:
                time.sleep(seconds)
            return ready

        return fn

    cases = {"fast": case("fast", 0.0), "slow": case("slow", 0.03)}
    times, ks = timed_rounds(cases, 3, min_call_s=0.02, opener=True)
    assert ks == {"fast": MAX_CALLS_PER_SAMPLE, "slow": 1}
    # one untimed call each to size the samples, then 3 rounds (+ the opener)
    assert calls == {"fast": 1 + 3 * (1 + MAX_CALLS_PER_SAMPLE), "slow": 1 + 3}
    assert len(times["fast"]) == len(times["slow"]) == 3
    assert min(times["slow"]) >= 0.03 > max(times["fast"])
    calls.update(fast=0, slow=0)
    times, ks = timed_rounds(cases, 2)  # min_call_s=0: one call a sample
    assert ks == {"fast": 1, "slow": 1} and calls == {"fast": 2, "slow": 2}


def test_model_flops_counts_every_contraction_by_hand():
    """2 x MACs of a grouped, strided, dilated NCHW convolution inside ``jit``,
    a dense layer with two contracting dims inside ``custom_jvp``, an
    elementwise op that counts nothing, and a scan, against the count by
    hand."""
    x = jnp.zeros((3, 4, 9, 9))  # N C H W
    w = jnp.zeros((6, 2, 3, 3))  # O I/groups H W, 2 groups
    d = jnp.zeros((6, 4, 5))  # contracts C=6 and W'=4 of the conv output

    @jax.custom_jvp
    def dense(h, d):
        return jnp.einsum("nchw,cwk->nhk", h, d)

    dense.defjvp(lambda primals, tangents: (dense(*primals), dense(*primals)))

    def f(p, x):
        h = jax.jit(
            lambda x: jax.lax.conv_general_dilated(
                x, p["w"], (2, 2), "VALID", rhs_dilation=(1, 1), feature_group_count=2,
                dimension_numbers=("NCHW", "OIHW", "NCHW"),
            )
        )(x)  # fmt: skip
        return jnp.tanh(dense(h, p["d"]))

    # conv: out 3x6x4x4, each output sums 2 input channels x 3x3 taps
    conv = 2 * (3 * 6 * 4 * 4) * (2 * 3 * 3)
    # dense: out 3x4x5, each output sums 6 channels x 4 columns
    dot = 2 * (3 * 4 * 5) * (6 * 4)
    assert model_flops(f, {"w": w, "d": d}, x) == conv + dot
    # a scan's body counts once per iteration: 7 steps of a (3, 5) x (5, 5) matmul
    r = jnp.zeros((5, 5))
    g = lambda r, h: jax.lax.scan(lambda c, _: (c @ r, None), h, None, length=7)[0]
    assert model_flops(g, r, jnp.zeros((3, 5))) == 7 * 2 * (3 * 5) * 5


def test_linear_fit_exact_and_noisy():
    fit = linear_fit([1, 2, 4, 8], [0.5 + 2 * t for t in (1, 2, 4, 8)])
    assert fit["slope"] == pytest.approx(2.0)
    assert fit["intercept"] == pytest.approx(0.5)
    assert fit["r2"] == pytest.approx(1.0)
    assert fit["max_rel_dev"] < 1e-9
    assert linear_fit([1, 10, 100], [3.0, 30.0, 300.0])["loglog_exponent"] == (
        pytest.approx(1.0)
    )
    bent = linear_fit([1, 2, 3, 4], [1.0, 1.0, 1.0, 4.0])
    assert bent["r2"] < 0.9 and bent["max_rel_dev"] > 0.3


def test_scaling_cases_and_summary():
    p = {**mc_scaling.QUICK, "unchunked": True, "models": ("lenet", "convnet")}
    cases = mc_scaling.make_cases(p, ("trials", "images", "models"), 5, 20)
    groups = [c["group"] for c in cases]
    assert groups.count("trials") == len(p["trials"])
    assert groups.count("images") == len(p["images"])
    assert groups.count("models") == len(p["models"])
    assert all(c["unchunked"] == "trials" for c in cases if c["group"] == "trials")
    fake = [
        {
            **c,
            "steady_s_min": 0.1 + 0.01 * c["trials"] * c["images"] / 100,
            "s_per_trial": 0.01,
            "gflops": 1.0,
            "flops_per_image": 1e6,
            "num_weights": 10,
            "compile_s": 1.0,
            "xla_temp_mb": 8.0,
            "xla_temp_unchunked_mb": 8.0 * c["trials"],
            "peak_rss_run_mb": 500.0,
        }
        for c in cases
    ]
    s = mc_scaling.summarize(fake)
    assert s["trials"]["fit"]["r2"] == pytest.approx(1.0)
    assert s["trials"]["xla_temp_spread"] == pytest.approx(1.0)
    assert s["trials"]["xla_temp_unchunked_spread"] == pytest.approx(
        s["trials"]["x_spread"]
    )
    assert set(s["models"]) == set(p["models"])


def test_compile_log_counts_compiles_not_cache_hits():
    """The benchmarks' compile counter: a traced sigma compiles once, a
    static one once per value."""
    log = compile_log()
    w = {"kernel": jnp.ones((3, 2))}

    @jax.jit
    def traced(key, device):
        return device.perturb(key, w)["kernel"].sum()

    m = log.mark()
    for s in (0.1, 0.2, 0.3):
        traced(jax.random.key(0), u.UniformVariation(s, s / 10)).block_until_ready()
    ev = log.since(m, "traced")
    assert ev["compile_count"] == 1 and ev["trace_count"] == 1
    assert traced._cache_size() == 1

    def static_sigma(key, s):
        return u.UniformVariation(s, s / 10).perturb(key, w)["kernel"].sum()

    static = jax.jit(static_sigma, static_argnums=1)
    m = log.mark()
    for s in (0.1, 0.2):
        static(jax.random.key(0), s).block_until_ready()
    assert log.since(m, "static_sigma")["compile_count"] == 2
    # first_call's compile seconds are XLA's: some for a new program, none for
    # a cached one, and never more than the call took.
    fresh = jax.jit(lambda v: jnp.sin(v) * 3.0)
    out, t, c = first_call(lambda: fresh(jnp.ones(5)))
    assert 0 < c <= t
    np.testing.assert_allclose(out, 3 * np.sin(1.0) * np.ones(5), rtol=1e-6)
    assert first_call(lambda: fresh(jnp.ones(5)))[2] == 0
    assert compile_log() is log


def test_scaling_case_in_process(monkeypatch, problem):
    """One scaling case end to end on the toy model: compile, memory analysis
    (chunked and not), timing and peak RSS."""
    params, x, y, _, _ = problem
    monkeypatch.setattr(
        mc_scaling, "build", lambda case: (mlp_apply, params, x, y, 1e3, 160)
    )
    case = mc_scaling.make_cases(
        {**mc_scaling.QUICK, "trials": (8,), "trial_images": 64, "unchunked": True},
        ("trials",),
        4,
        32,
    )[0]
    r = mc_scaling.run_case(case)
    assert r["steady_s_min"] > 0 and r["steady_runs"] >= case["repeats"]
    assert r["xla_temp_unchunked_mb"] >= r["xla_temp_mb"] >= 0
    assert r["peak_rss_run_mb"] is None or r["peak_rss_run_mb"] > 0
    assert 0 < r["mean_accuracy"] <= 1


def test_recompile_driver_loop_does_not_compile(problem):
    """The recompile benchmark's measurement on the toy model: new sigmas and
    budgets reuse the one compiled sweep."""
    params, x, y, order, counts = problem
    log = compile_log()
    static = {
        "apply_fn": mlp_apply,
        "num_trials": 4,
        "chunk_size": None,
        "eval_batch_size": None,
    }
    budgets = [jnp.asarray(counts), jnp.asarray(counts[::-1].cumsum() // 4)]
    settings = [
        (jax.random.key(0), params, x, y, u.UniformVariation(s, s / 10), order, b)
        + (None, None)  # no end points: the sweep computes them
        for s in (0.2, 0.6)
        for b in budgets
    ]
    r = recompile.measure_driver(log, recompile._sweep_jit, static, settings, 1)
    assert r["compiles_first_call"] == 1 and r["compile_s"] > 0
    assert r["loop_compiles_driver"] == r["loop_traces_driver"] == 0
    assert r["loop_compiles_all"] == 0
    assert r["cache_size_after_loop"] == r["cache_size_after_first"]
    # The settings differ: higher sigma, lower accuracy.
    assert r["loop_mean_accuracy"][0] > r["loop_mean_accuracy"][2]


@pytest.mark.slow
def test_sweep_vs_serial_script(tmp_path):
    out = sweep_vs_serial.main(
        ["--synthetic", "--images", "40", "--steps", "2", "--trials", "4"]
        + ["--repeats", "1", "--output", str(tmp_path / "s.json")]
    )
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["accuracies_identical"] and out["accuracies_identical"]
    assert set(saved["ratios"]) >= {"sweep_vs_evaluate_x_k", "batching_gain"}
    assert saved["cpu_count"] and saved["load_average_start"]


@pytest.mark.slow
def test_scaling_script_subprocess(tmp_path):
    out = mc_scaling.main(
        ["--groups", "trials", "--trials", "5,10", "--trial-images", "20"]
        + ["--repeats", "1", "--output", str(tmp_path / "m.json")]
    )
    cases = out["cases"]
    assert [c["trials"] for c in cases] == [5, 10]
    for c in cases:
        assert c["peak_rss_run_mb"] > 0 and c["xla_temp_mb"] >= 0
    assert "fit" in out["summary"]["trials"]


@pytest.mark.slow
def test_recompile_script(tmp_path):
    out = recompile.main(
        ["--synthetic", "--quick", "--images", "20", "--steps", "2"]
        + ["--output", str(tmp_path / "r.json")]
    )
    assert out["no_recompile"]
    assert out["control_static_sigma"]["compiles"] == 2
    paired = out["sweep_vs_evaluates"]
    assert paired["accuracies_identical"] and paired["evaluations"] == 2 + 2
    assert paired["sweep_over_evaluates"] > 0


def test_per_leaf_baseline_draws_standard_normals_on_the_crossbar_only():
    from benchmarks.noise_draw import per_leaf_noise

    params = {
        "conv": {"kernel": jnp.ones((3, 3, 4, 64)), "bias": jnp.ones((64,))},
        "dense": {"kernel": jnp.ones((256, 40)), "bias": jnp.ones((40,))},
    }
    z = per_leaf_noise(jax.random.key(0), params)
    flat = u.noise_like(jax.random.key(0), params)
    assert jax.tree.map(jnp.shape, z) == jax.tree.map(jnp.shape, flat)
    for layer in ("conv", "dense"):
        assert not np.any(np.asarray(z[layer]["bias"]))  # off the crossbar
    draws = np.concatenate(
        [np.ravel(z["conv"]["kernel"]), np.ravel(z["dense"]["kernel"])]
    )
    k = 5 / np.sqrt(draws.size)  # 5 sigma on the mean and on the variance
    assert abs(draws.mean()) < k and abs(draws.var() - 1) < k * np.sqrt(2)
    # each leaf has its own draw, not one repeated
    assert not np.allclose(
        np.ravel(z["conv"]["kernel"])[:100], np.ravel(z["dense"]["kernel"])[:100]
    )


@pytest.mark.slow
def test_noise_draw_script(tmp_path):
    from benchmarks import noise_draw

    out = noise_draw.main(
        ["--synthetic", "--images", "20", "--trials", "4", "--batch", "10"]
        + ["--repeats", "1", "--output", str(tmp_path / "n.json")]
    )
    saved = json.loads((tmp_path / "n.json").read_text())
    assert set(saved["cases"]) == set(out["cases"])
    assert len(saved["cases"]) == 3
    assert 0 < saved["flat_draw_share_of_evaluate"]


@pytest.mark.full_opt  # it times compiling, as users compile
def test_draw_compile_script(tmp_path):
    from benchmarks import draw_compile

    out = draw_compile.main(["--quick", "--output", str(tmp_path / "d.json")])
    saved = json.loads((tmp_path / "d.json").read_text())
    assert set(saved["cases"]) == set(out["cases"]) == {"pulse"}
    case = saved["cases"]["pulse"]
    for style in draw_compile.STYLES:
        assert case[style]["compile_s_median"] > 0
    # the same draws: the outputs agree to float32 rounding
    assert case["max_abs_diff"] < 1e-5
    # the shaped baseline is undone after its case
    assert draw_compile._random.normal.__module__ == "uswim_jax._random"


@pytest.mark.slow  # 32 small compiles
def test_draw_compile_at_times_compares_every_preset_in_both_styles(key):
    """The ``program_at_times`` check gives, per preset and compensation, the
    share of weights off the single-time calls in both styles, each within a
    few float32 ulps of the layer's scale (``tests/test_devices_model.py``
    allows 4); which weights move depends on how XLA fuses each program."""
    from benchmarks import draw_compile

    w = jnp.linspace(-1.0, 1.0, 48, dtype=jnp.float32).reshape(6, 8)
    params = {"dense": {"kernel": w, "bias": jnp.arange(8, dtype=jnp.float32)}}
    mask = {"dense": {"kernel": w > 0, "bias": jnp.zeros(8, bool)}}
    from uswim_jax import _random

    normal = _random.normal
    out = draw_compile.at_times(params, mask, key)
    assert _random.normal is normal  # the shaped baseline is undone
    assert list(out) == ["pcm", "pcm, compensated", "rram", "rram, compensated"]
    for row in out.values():
        assert set(row) == set(draw_compile.STYLES)
        for r in row.values():
            assert 0.0 <= r["moved_fraction"] <= 1.0
            assert r["max_abs_diff"] <= 4 * float(jnp.finfo(jnp.float32).eps)


def test_draw_compile_shaped_baseline_draws_the_same_numbers(key):
    """The shaped baseline (``uswim_jax._random``'s flat draws replaced by
    JAX's for a block, which the presets then call) draws the same numbers,
    and is undone after the block; there is no other baseline to ask for."""
    from benchmarks import draw_compile
    from uswim_jax import _random

    normal, uniform = _random.normal, _random.uniform
    with draw_compile.drawn("shaped", draw_compile.LIBRARY_DRAW):
        assert _random.normal is not normal
        got = _random.normal(key, (3, 4, 5))
        u = _random.uniform(key, (2, 3), minval=-1.0, maxval=2.0)
    assert _random.normal is normal and _random.uniform is uniform
    np.testing.assert_array_equal(got, normal(key, (3, 4, 5)))
    np.testing.assert_array_equal(u, uniform(key, (2, 3), minval=-1.0, maxval=2.0))
    with pytest.raises(ValueError, match="no way"):
        draw_compile.drawn("flat", "shaped")


@pytest.mark.slow
def test_gpu_script_smoke_on_cpu(tmp_path):
    """The prepared accelerator benchmark runs end to end at tiny sizes: every
    model (the project's LeNet and ResNet-18, the four user-written LeNets),
    its memory roofline, and the README section renders from its JSON."""
    from benchmarks import gpu_mc
    from experiments import readme

    path = tmp_path / "g.json"
    out = gpu_mc.main(["--smoke", "--out", str(path)])
    names = [m["model"] for m in out["models"]]
    assert names[0] == "lenet" and names[-1] == "resnet18" and len(names) == 6
    for m in out["models"]:
        assert m["memory_roofline_trials_per_s"] > 0
        assert {r["conv_policy"] for r in m["runs"]} >= {"auto"}
    text = readme.gpu_performance(path)
    assert "% of memory roofline" in text and "target 55 %" in text


def test_op_profile_attributes_xla_op_time_to_jax_primitives():
    """``benchmarks/op_profile``'s parsing on a tiny jitted loop: every op time
    traced is attributed to the primitive at its root, the loop itself (which
    contains the others) is left out, and the shares add up to one."""
    from benchmarks import op_profile

    a = jnp.ones((64, 64))

    def body(i, x):
        return jnp.tanh(x @ a)

    # a traced trip count: XLA cannot unroll the loop
    f = jax.jit(lambda x, n: jax.lax.fori_loop(0, n, body, x))
    compiled = f.lower(a, 5).compile()
    ops = op_profile.hlo_ops(compiled.as_text())
    assert any(o["primitive"] == "dot_general" for o in ops.values())
    assert any(o["opcode"] == "while" for o in ops.values())
    res = op_profile.breakdown(ops, op_profile.profile(lambda: compiled(a, 5), 2), 2)
    assert res["op_seconds"] > 0
    assert all(r["opcode"] not in op_profile.CONTAINERS for r in res["ops"])
    assert any(k.startswith("dot_general") for k in res["groups"])
    assert sum(g["share"] for g in res["groups"].values()) == pytest.approx(1.0)
    assert {r["calls"] for r in res["ops"] if r["primitive"] == "dot_general"} == {5}


@pytest.mark.slow
def test_op_profile_script(tmp_path):
    from benchmarks import op_profile

    out = op_profile.main(
        ["--quick", "--images", "40", "--trials", "4", "--chunk", "2", "--batch", "20"]
        + ["--output", str(tmp_path / "o.json")]
    )
    assert out["matmul_op_gflops"] > 0 and 0 < out["pct_of_matmul"] < 100
    from experiments import readme

    assert "im2col patches" in readme.op_profile_line(out)


def test_conv_paths_script(tmp_path):
    """The conv-path benchmark runs every policy on a user's LeNet, records the
    paths each layer took, and its README section reads the JSON."""
    from benchmarks import conv_paths

    out = conv_paths.main(
        ["--quick", "--repeats", "1", "--only", "LeNet, plain lax"]
        + ["--output", str(tmp_path / "c.json")]
    )
    case = out["cases"]["LeNet, plain lax"]
    assert set(case["policies"]) == set(conv_paths.POLICIES)
    for r in case["policies"].values():
        assert r["trials_per_s"] > 0 and r["trials_differing_from_rule"] == 0
        assert sum(r["paths"].values()) == 2  # two convolutions
        assert 0 < r["compile_s"] < r["first_call_s"]  # each policy compiles
    layers = case["policies"]["layers"]["layers"]
    assert all("ms" in layer for layer in layers)  # each layer shape timed
    measure = case["policies"]["measure"]
    assert measure["chosen"] in _trialbatch.MEASURE_CANDIDATES
    assert measure["measuring_s"] > 0
    from experiments import readme

    text = readme.conv_paths_performance(tmp_path / "c.json")
    assert "| LeNet, plain lax | 8 x 80 |" in text
    assert out["complete"] and "stopped" not in text
    # a run its time limit stopped: the section says which models are missing
    cut = {**out, "complete": False, "models_planned": [*out["models_planned"], "X"]}
    (tmp_path / "cut.json").write_text(json.dumps(cut))
    text = readme.conv_paths_performance(tmp_path / "cut.json")
    assert "stopped after 1 of 2 models (its time limit); missing: X." in text


def test_conv_fusion_script(tmp_path):
    """Both orders of stacking give the same values (the script checks) and
    every layer shape gets a time for each."""
    from benchmarks import conv_fusion

    out = conv_fusion.main(
        ["--quick", "--repeats", "1", "--output", str(tmp_path / "f.json")]
    )
    saved = json.loads((tmp_path / "f.json").read_text())
    assert len(saved["shapes"]) == len(out["shapes"]) == 3
    for s in saved["shapes"]:
        assert set(s["ms"]) == {"stacked after", "stacked before"}
        assert all(np.isfinite(v) and v > 0 for v in s["ms"].values())
        # the ratio is of the two times recorded beside it, the fastest calls
        ms = s["ms"]
        assert s["before_over_after"] == pytest.approx(
            ms["stacked before"] / ms["stacked after"]
        )
        for k, t in s["timings"].items():
            assert ms[k] == pytest.approx(1e3 * t["steady_s_min"])
