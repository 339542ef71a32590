"""Per-chip programming: each chip stops at the first batch meeting the rule
(against a brute-force loop over evaluate), stopping is monotone in the margin,
stopped chips cost nothing more, same key -> same result, and user models."""

import functools

import _user_models as um
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _toy import mlp_apply, toy_problem

import uswim_jax as u
from uswim_jax.chip_programming import (
    ChipRun,
    StopRule,
    batch_counts,
    chip_summary,
    fixed_count_at_cost,
    program_chips,
)
from uswim_jax.montecarlo import evaluate
from uswim_jax.selection import mask_from_order

DEVICE = u.UniformVariation(0.3, 0.03)
T = 12


@pytest.fixture(scope="module")
def problem():
    params, x, y = toy_problem(n=192)
    order = u.global_order(u.magnitude_score(params))
    # First 96 images: calibration; the rest: test.
    return params, (x[:96], y[:96]), (x[96:], y[96:]), order


@functools.partial(jax.jit, static_argnames=("apply_fn", "num_trials"))
def _run(key, params, cal, test, device, order, counts, *, apply_fn, num_trials, rule):
    return program_chips(
        key, apply_fn, params, *cal, *test, device, order, counts, num_trials, rule,
        chunk_size=5,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnames=("apply_fn", "num_trials"))
def _eval_at(key, params, x, y, device, order, count, *, apply_fn, num_trials):
    """Per-trial accuracies of evaluate with the first ``count`` of ``order``
    verified."""
    mask = mask_from_order(order, params, count=count)
    return evaluate(key, apply_fn, params, x, y, device, mask, num_trials).accuracies


def _toy(key, params, cal, test, device, order, counts, rule):
    return _run(key, params, cal, test, device, order, counts,
                apply_fn=mlp_apply, num_trials=T, rule=rule)  # fmt: skip


def _brute(key, params, cal, test, order, counts, rule):
    """The rule checked chip by chip with evaluate at every batch."""
    cal_acc = np.stack(
        [
            np.asarray(_eval_at(key, params, *cal, DEVICE, order, c,
                                apply_fn=mlp_apply, num_trials=T))
            for c in counts
        ]
    )  # fmt: skip
    every = jax.tree.map(lambda w: jnp.ones(w.shape, bool), params)
    ref = evaluate(key, mlp_apply, params, *cal, DEVICE, every, T).accuracies
    thr = float(rule.threshold(ref))
    stops, reached = [], []
    for t in range(T):
        hit = [b for b in range(len(counts)) if cal_acc[b, t] >= thr]
        stops.append(hit[0] if hit else len(counts) - 1)
        reached.append(bool(hit))
    return np.asarray(stops), np.asarray(reached), cal_acc, thr


def test_stops_at_first_batch_meeting_rule(problem):
    params, cal, test, order = problem
    n = u.crossbar_size(params)
    counts = batch_counts(n, 16)
    key = jax.random.key(3)
    rule = StopRule(margin=15.0)
    got = _toy(key, params, cal, test, DEVICE, order, jnp.asarray(counts), rule)
    stops, reached, cal_acc, thr = _brute(key, params, cal, test, order, counts, rule)
    assert float(got.threshold) == pytest.approx(thr, rel=1e-6)
    assert np.abs(cal_acc - thr).min() > 1e-4  # no tie the last bits could flip
    np.testing.assert_array_equal(got.stop_step, stops)
    np.testing.assert_array_equal(got.reached, reached)
    np.testing.assert_array_equal(got.calibration, cal_acc[stops, np.arange(T)])
    # Not a trivial case: chips stop at different batches, none at the first.
    assert len(set(stops.tolist())) > 1 and stops.min() > 0
    # Cycles are those of the mask each chip stopped at, counted once.
    for t in range(T):
        mask = mask_from_order(order, params, count=int(counts[stops[t]]))
        want = float(DEVICE.write_cycles(mask, params).normalized)
        assert float(got.cycles_spent[t]) == pytest.approx(want, rel=1e-6)
        # Test accuracy at the stop: the same chip (trial key) on the test split.
        direct = _eval_at(key, params, *test, DEVICE, order, counts[stops[t]],
                          apply_fn=mlp_apply, num_trials=T)  # fmt: skip
        assert float(got.test[t]) == float(direct[t])
    np.testing.assert_array_equal(got.checks, stops + 1)
    np.testing.assert_array_equal(got.check_inferences, (stops + 1) * 96)


def test_monotone_in_margin(problem):
    params, cal, test, order = problem
    counts = jnp.asarray(batch_counts(u.crossbar_size(params), 16))
    key = jax.random.key(4)
    prev = None
    for margin in (0.0, 1.0, 5.0, 15.0, 30.0):
        rule = StopRule(margin=margin)
        got = _toy(key, params, cal, test, DEVICE, order, counts, rule)
        if prev is not None:
            assert np.all(np.asarray(got.stop_step) <= np.asarray(prev.stop_step))
            assert np.all(np.asarray(got.reached) >= np.asarray(prev.reached))
            assert np.all(np.asarray(got.cycles_spent) <= np.asarray(prev.cycles_spent))
        prev = got
    # A margin of 100 pp is met before any verify.
    lo = _toy(key, params, cal, test, DEVICE, order, counts, StopRule(margin=100.0))
    assert np.all(np.asarray(lo.stop_step) == 0) and np.all(np.asarray(lo.reached))
    # A margin of 0 (the mean exhaustive accuracy) is out of reach for the chips
    # whose own exhaustive accuracy is below the mean: they run out at the
    # budget with every cycle spent.
    hi = _toy(key, params, cal, test, DEVICE, order, counts, StopRule(margin=0.0))
    never = ~np.asarray(hi.reached)
    below = np.asarray(hi.calibration_reference) < float(hi.threshold)
    np.testing.assert_array_equal(never, below)
    assert never.any()
    np.testing.assert_array_equal(np.asarray(hi.stop_step)[never], len(counts) - 1)
    np.testing.assert_allclose(np.asarray(hi.cycles_spent)[never], 1.0, rtol=1e-6)


def test_threshold():
    np.testing.assert_allclose(float(StopRule(target=0.9).threshold(None)), 0.9)
    ref = jnp.asarray([0.9, 1.0], jnp.float32)
    np.testing.assert_allclose(float(StopRule(margin=2.0).threshold(ref)), 0.93)


def test_stopped_chips_cost_nothing_more_and_same_key(problem):
    params, cal, test, order = problem
    n = u.crossbar_size(params)
    key = jax.random.key(5)
    rule = StopRule(margin=15.0)
    # The full budget first; then the same schedule cut at the earliest count a
    # chip stopped at (repeated counts keep the shape, so no recompile).
    full = jnp.asarray(batch_counts(n, 16))
    b = _toy(key, params, cal, test, DEVICE, order, full, rule)
    stops = np.asarray(full)[np.asarray(b.stop_step)]
    assert np.asarray(b.reached).any()
    cut = int(stops[np.asarray(b.reached)].min())
    short = jnp.asarray(np.minimum(np.asarray(full), cut))
    a = _toy(key, params, cal, test, DEVICE, order, short, rule)
    again = _toy(key, params, cal, test, DEVICE, order, short, rule)
    for f in ChipRun._fields:
        np.testing.assert_array_equal(getattr(a, f), getattr(again, f))
    # Chips that met the rule within the cut keep every number under the full
    # budget (no further cycles or checks); the others go on.
    done = np.asarray(a.reached)
    assert done.any() and not done.all()
    for f in ("stop_step", "reached", "cycles_spent", "calibration", "test"):
        np.testing.assert_array_equal(
            np.asarray(getattr(b, f))[done], np.asarray(getattr(a, f))[done]
        )
    # The others ran out at the cut in a; in b they spend more.
    assert np.all(np.asarray(a.cycles_spent)[~done] == np.asarray(a.cycles)[-1])
    assert np.all(np.asarray(b.cycles_spent)[~done] > np.asarray(a.cycles_spent)[~done])
    other = _toy(jax.random.key(6), params, cal, test, DEVICE, order, short, rule)
    assert not np.array_equal(other.calibration, a.calibration)


def test_summary_and_fixed_budget(problem):
    params, cal, test, order = problem
    n = u.crossbar_size(params)
    counts = jnp.asarray(batch_counts(n, 16))
    got = _toy(jax.random.key(3), params, cal, test, DEVICE, order, counts,
               StopRule(margin=1.0))  # fmt: skip
    s = chip_summary(got)
    cyc = np.asarray(got.cycles_spent)
    assert s["cycles_mean"] == pytest.approx(cyc.mean())
    assert s["cycles_max"] == pytest.approx(cyc.max())
    assert s["cycles_median"] <= s["cycles_p95"] <= s["cycles_max"]
    assert s["checks_mean"] == pytest.approx(np.mean(np.asarray(got.stop_step) + 1))
    c = fixed_count_at_cost(DEVICE, params, order, s["cycles_mean"])
    # Uniform variation, C = 10: cycles = 0.1 + 0.9 * count / n.
    assert c == int(np.floor((s["cycles_mean"] - 0.1) / 0.9 * n + 1e-4))


def test_bad_input(problem):
    params, cal, test, order = problem
    with pytest.raises(ValueError, match="exactly one"):
        StopRule()
    with pytest.raises(ValueError, match="exactly one"):
        StopRule(margin=1.0, target=0.9)
    with pytest.raises(ValueError, match="target"):
        StopRule(target=1.5)
    with pytest.raises(ValueError, match="margin"):
        StopRule(margin=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        batch_counts(10, 0)
    with pytest.raises(ValueError, match="budget"):
        batch_counts(10, 3, budget=11)
    np.testing.assert_array_equal(batch_counts(10, 4), [0, 4, 8, 10])
    np.testing.assert_array_equal(batch_counts(10, 5, budget=5), [0, 5])
    with pytest.raises(ValueError, match="counts"):
        program_chips(jax.random.key(0), mlp_apply, params, *cal, *test, DEVICE,
                      order, [0, 5, 3], 2, StopRule(margin=1.0))  # fmt: skip
    with pytest.raises(ValueError, match="rule"):
        program_chips(jax.random.key(0), mlp_apply, params, *cal, *test, DEVICE,
                      order, [0, 5], 2, 0.5)  # fmt: skip
    with pytest.raises(ValueError, match="device"):
        program_chips(jax.random.key(0), mlp_apply, params, *cal, *test, object(),
                      order, [0, 5], 2, StopRule(margin=1.0))  # fmt: skip


def _user_case(kind, cross_check):
    m = um.build(kind, jax.random.key(0))
    x, y = um.make_data(m.apply_fn, m.params, jax.random.key(1), n=48)
    order = u.global_order(u.magnitude_score(m.params))
    counts = jnp.asarray(batch_counts(um.KERNEL_COUNT, 256))
    dev = u.UniformVariation(0.5, 0.05)
    key = jax.random.key(7)
    cal, test = (x[:24], y[:24]), (x[24:], y[24:])
    runs = [
        _run(key, m.params, cal, test, dev, order, counts, apply_fn=m.apply_fn,
             num_trials=4, rule=StopRule(margin=margin))
        for margin in (1.0, 10.0)
    ]  # fmt: skip
    for got in runs:
        met = np.asarray(got.calibration) >= float(got.threshold)
        np.testing.assert_array_equal(met, np.asarray(got.reached))
    assert np.all(np.asarray(runs[1].stop_step) <= np.asarray(runs[0].stop_step))
    if cross_check:
        # Each chip at its stop is trial t of evaluate at that budget.
        for got in runs:
            for t in range(4):
                c = counts[int(got.stop_step[t])]
                for (xs, ys), acc in ((cal, got.calibration), (test, got.test)):
                    want = _eval_at(key, m.params, xs, ys, dev, order, c,
                                    apply_fn=m.apply_fn, num_trials=4)  # fmt: skip
                    assert float(acc[t]) == float(want[t])


def test_user_model_lax():
    _user_case("lax", cross_check=False)


@pytest.mark.slow
@pytest.mark.parametrize("kind", um.KINDS)
def test_user_models(kind):
    _user_case(kind, cross_check=True)


@pytest.mark.slow
def test_reproduce_report_section(tmp_path, monkeypatch):
    """End to end on generated data: the per-chip section and per_chip.csv are
    written when the config asks for them, the curves do not move, and a rerun
    reads the study back instead of running it again."""
    import dataclasses

    from _tiny_sweep import CONFIG as base
    from _tiny_sweep import fake_digits

    from experiments.common import model_name
    from experiments.mnist import run
    from uswim_jax.experiment import load_config
    from uswim_jax.experiment import per_chip as pc

    kw = {
        "train_data": fake_digits(160, 0),
        "test_data": fake_digits(64, 1),
        "progress": False,
    }
    on, off = tmp_path / "on", tmp_path / "off"  # the model's run: <folder>/<model>
    run.run(base, off, **kw)
    config = pc.with_per_chip(
        base, margin=1.0, calibration_size=32, batch_fractions=(0.02, 0.1)
    )
    assert config.to_json() == base.to_json()  # not part of the run's identity
    out = run.run(config, on, **kw)
    m = model_name(base)
    assert load_config(on / m) == config
    assert load_config(off / m).per_chip is None
    for name in ("curves.csv", "references.csv"):
        assert (on / name).read_text() == (off / name).read_text()
    assert not (off / m / "per_chip.csv").exists()
    assert "Per-chip" not in (off / "summary.md").read_text()
    text = (on / "summary.md").read_text()
    assert "## Per-chip programming (uniform sigma=0.3)" in text
    assert "32 images (the last of the 160 training images, also used" in text
    csv = (on / m / "per_chip.csv").read_text()
    lines = csv.splitlines()
    assert lines[0] == ",".join(pc.COLUMNS) and len(lines) == 1 + 2 * 2
    assert "Per-chip" in out["summary"]
    assert dataclasses.replace(config, per_chip=None) == base

    def again(*args, **kwargs):
        raise AssertionError("the per-chip study ran again on a rerun")

    monkeypatch.setattr(pc, "run_per_chip", again)

    def section(summary):  # the rest of the summary holds timings
        return summary.split("## Per-chip", 1)[1].split("\n## ", 1)[0]

    assert section(run.run(config, on, **kw)["summary"]) == section(text)
    assert (on / m / "per_chip.csv").read_text() == csv


def test_per_chip_config_is_off_by_default_and_not_hashed():
    from uswim_jax.chip_programming import PerChipConfig
    from uswim_jax.experiment import ExperimentConfig
    from uswim_jax.experiment.per_chip import with_per_chip

    base = ExperimentConfig()
    assert base.per_chip is None and "per_chip" not in base.execution_json()
    on = with_per_chip(base, margin=1.0)
    assert on.to_json() == base.to_json()
    assert on.execution_json()["per_chip"]["margin"] == 1.0
    assert (on.per_chip.sigma, on.per_chip.s) == (max(base.sigmas), None)
    assert PerChipConfig(target=0.9).rule() == StopRule(target=0.9)
    for bad, name in (
        ({"batch_fractions": ()}, "batch_fractions"),
        ({"batch_fractions": (0.0,)}, "batch_fractions"),
        ({"budget": 0.0}, "budget"),
        ({"calibration_size": 0}, "calibration_size"),
        ({"margin": -1.0}, "margin"),
        ({"s": 0.0}, "s must"),
    ):
        with pytest.raises(ValueError, match=name):
            PerChipConfig(**bad)
    with pytest.raises(ValueError, match="per_chip"):
        ExperimentConfig(per_chip={"margin": 1.0})


def test_per_chip_study_is_a_run_folder_unit(problem, tmp_path, monkeypatch):
    """The study's rows are computed once per run folder and read back when the
    report is written again (the same section and CSV, bit for bit); other
    per_chip settings recompute them; a damaged file is named."""
    from uswim_jax.data import Dataset
    from uswim_jax.experiment import ExperimentConfig
    from uswim_jax.experiment import per_chip as pc
    from uswim_jax.experiment.store import CorruptFileError

    params, (x_cal, y_cal), (x, y), _ = problem
    config = pc.with_per_chip(
        ExperimentConfig(sigmas=(0.3,), s_values=(), methods=("magnitude",),
                         num_trials=4),
        margin=1.0, calibration_size=32, batch_fractions=(0.1, 0.3),
    )  # fmt: skip
    train = Dataset(np.asarray(x_cal), np.asarray(y_cal), "toy", "generated",
                    "train", 4)  # fmt: skip
    test = Dataset(np.asarray(x), np.asarray(y), "toy", "generated", "test", 4)
    out = {"config": config, "params": params, "sensitivities": {},
           "apply_fn": mlp_apply}  # fmt: skip
    calls = []
    compute = pc.run_per_chip
    monkeypatch.setattr(
        pc, "run_per_chip", lambda *a, **k: calls.append(1) or compute(*a, **k)
    )
    quiet = {"log": lambda *a: None}
    first = pc.per_chip_section(out, train, test, tmp_path, **quiet)
    csv = (tmp_path / "per_chip.csv").read_text()
    assert len(calls) == 1 and (tmp_path / pc.RECORD).is_file()
    (tmp_path / "per_chip.csv").unlink()
    assert pc.per_chip_section(out, train, test, tmp_path, **quiet) == first
    assert (tmp_path / "per_chip.csv").read_text() == csv and len(calls) == 1
    other = {**out, "config": pc.with_per_chip(config, margin=50.0,
                                               calibration_size=32)}  # fmt: skip
    pc.per_chip_section(other, train, test, tmp_path, **quiet)
    assert len(calls) == 2
    (tmp_path / pc.RECORD).write_text("{")
    with pytest.raises(CorruptFileError, match=pc.RECORD):
        pc.per_chip_section(out, train, test, tmp_path, **quiet)
