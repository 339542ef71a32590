"""``chunk_size="measure"``: evaluate, sweep and program_chips time a few
``(chunk, image batch)`` candidates once per model, shapes and machine and run
the fastest; the trials do not depend on the choice, ties go to the rule, the
choice is kept (in memory and in the measurement file) and logged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _toy import mlp_apply, toy_problem

import uswim_jax as u
from uswim_jax import _chunking
from uswim_jax.chip_programming import StopRule, program_chips
from uswim_jax.montecarlo import evaluate


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path):
    """Each test measures afresh, into its own file, and leaves no record."""
    monkeypatch.setattr(_chunking, "_MEASURED_SIZES", {})
    monkeypatch.setattr(_chunking, "_SIZE_DECISIONS", {})
    monkeypatch.setenv("USWIM_CONV_CACHE", str(tmp_path / "measure.json"))


@pytest.fixture(scope="module")
def problem():
    return toy_problem()


DEVICE = u.UniformVariation(0.5, 0.05)


def _scripted_timing(monkeypatch, per_trial_s, cands):
    """The timing of ``measure_sizes`` replaced by one that gives the ``i``-th
    candidate (of ``cands``, in order) ``per_trial_s[i]`` seconds per trial
    (times its chunk), and records each candidate's leading params axis (the
    chunk, where every leaf is batched), in the order they came: the
    candidates timed in turns (``_time_calls``) or, where their params do not
    fit the memory at once, one at a time (``_time_call``)."""
    calls = []

    def chunk(ps):
        return max(np.shape(p)[0] for p in ps if np.ndim(p))

    def one(compiled, ps, *rest):
        calls.append(chunk(ps))
        i = len(calls) - 1
        return per_trial_s[i] * cands[i].chunk_size

    def turns(programs):
        out = {}
        for label, (_, (ps, *_)) in programs.items():
            calls.append(chunk(ps))
            i = len(calls) - 1
            out[label] = per_trial_s[i] * cands[i].chunk_size
        return out

    monkeypatch.setattr(_chunking, "_time_call", one)
    monkeypatch.setattr(_chunking, "_time_calls", turns)
    return calls


def _small_cache(monkeypatch):
    """A cache so small that the rule batches 40 images 16 at a time, so all
    images at once is a candidate too."""
    monkeypatch.setattr(_chunking, "_last_level_cache_bytes", lambda: 2**16)


def _f64_user_problem(kind: str):
    """The user model ``kind`` in float64 (call under ``jax.enable_x64``) on
    40 images labelled by its clean predictions: ``(apply_fn, params, x, y)``."""
    import _user_models as um

    with jax.enable_x64(False):  # built and drawn in float32, as users do
        apply_fn, params, _, _ = um.build(kind, jax.random.key(0))
        x, _ = um.make_data(apply_fn, params, jax.random.key(1), n=40)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    x = jnp.asarray(x, jnp.float64)
    y = jnp.argmax(apply_fn(params, x), -1).astype(jnp.int32)
    return apply_fn, params, x, y


@pytest.mark.parametrize("kind", ["lax", "linen", "nnx", "equinox"])
def test_measured_sizes_give_the_same_trials(kind, monkeypatch):
    """On a user's model written four ways, ``chunk_size="measure"`` gives the
    per-trial accuracies of all trials and images at once (float64), in
    evaluate and sweep (and program_chips on one of them); every candidate was
    timed, the rule's sizes first, and the one run is within the tie of the
    fastest."""
    _small_cache(monkeypatch)
    with jax.enable_x64(True):
        apply_fn, params, x, y = _f64_user_problem(kind)
        device = u.UniformVariation(1.0, 0.1)
        key = jax.random.key(4)
        whole = evaluate(
            key, apply_fn, params, x, y, device, None, 6, chunk_size=None,
            eval_batch_size=None,
        )  # fmt: skip
        got = evaluate(
            key, apply_fn, params, x, y, device, None, 6, chunk_size="measure"
        )
        np.testing.assert_array_equal(got.accuracies, whole.accuracies)
        assert np.std(np.asarray(whole.accuracies)) > 0  # the noise acts
        (record,) = u.measured_sizes_log()
        rule = _chunking.resolve_sizes(apply_fn, params, x, 6)
        assert record["candidates"][0] == _chunking._label(rule)
        assert "1 x all" in record["candidates"]  # a trial at a time, all images
        assert record["candidates"][-1] == "1 x all, vmap"  # a loop's program
        assert set(record["ms_per_trial"]) == set(record["candidates"])
        fastest = min(record["ms_per_trial"].values())
        assert record["ms_per_trial"][record["chosen"]] <= fastest * (
            1 + _chunking.CONV_TIE
        )
        assert record["seconds"] > 0 and not record["reused"]

        order = u.global_order(u.magnitude_score(params))
        counts = jnp.asarray([0, u.crossbar_size(params) // 2])
        a = u.sweep(
            key, apply_fn, params, x, y, device, order, counts, 6,
            chunk_size="measure",
        )  # fmt: skip
        w = u.sweep(
            key, apply_fn, params, x, y, device, order, counts, 6, chunk_size=None,
            eval_batch_size=None,
        )  # fmt: skip
        np.testing.assert_array_equal(a.accuracies, w.accuracies)
        if kind != "lax":  # program_chips resolves the sizes as sweep does
            return
        args = (key, apply_fn, params, x, y, x, y, device, order, counts, 6)
        runs = [
            program_chips(*args, StopRule(target=0.5), chunk_size=c, eval_batch_size=b)
            for c, b in (("measure", "auto"), (None, None))
        ]
        np.testing.assert_array_equal(runs[0].test, runs[1].test)
        np.testing.assert_array_equal(runs[0].stop_step, runs[1].stop_step)


@pytest.mark.parametrize("kind", ["linen", "equinox"])
def test_the_vmap_candidate_runs_a_loops_program(kind, monkeypatch):
    """Timed fastest, ``"1 x all, vmap"`` runs: evaluate and sweep trace the
    whole forward pass under ``jax.vmap`` (no trial-batched rewrite) and give
    the trials of every other way (float64). ``conv_paths("vmap")`` is that
    program for any chunk."""
    from uswim_jax import _trialbatch as tbm

    _small_cache(monkeypatch)
    vmapped = []
    plain_apply = tbm.TrialBatched._vmap_apply

    def counted(self, *args):
        vmapped.append(1)
        return plain_apply(self, *args)

    monkeypatch.setattr(tbm.TrialBatched, "_vmap_apply", counted)
    with jax.enable_x64(True):
        apply_fn, params, x, y = _f64_user_problem(kind)
        device = u.UniformVariation(1.0, 0.1)
        key = jax.random.key(4)
        cands = _chunking.size_candidates(apply_fn, params, x, 6)
        assert cands[-1] == _chunking.Sizes(1, None, "vmap")
        _scripted_timing(monkeypatch, [2.0] * (len(cands) - 1) + [1.0], cands)
        whole = evaluate(
            key, apply_fn, params, x, y, device, None, 6, chunk_size=None,
            eval_batch_size=None,
        )  # fmt: skip
        assert not vmapped
        got = evaluate(
            key, apply_fn, params, x, y, device, None, 6, chunk_size="measure"
        )
        log = u.measured_sizes_log()
        assert vmapped and log[0]["chosen"] == "1 x all, vmap", log
        np.testing.assert_array_equal(got.accuracies, whole.accuracies)
        order = u.global_order(u.magnitude_score(params))
        counts = jnp.asarray([0, u.crossbar_size(params) // 2])
        sweeps = [
            u.sweep(key, apply_fn, params, x, y, device, order, counts, 6, chunk_size=c)
            for c in ("measure", None)
        ]
        np.testing.assert_array_equal(sweeps[0].accuracies, sweeps[1].accuracies)
        n = len(vmapped)
        with u.conv_paths("vmap"):
            every = evaluate(key, apply_fn, params, x, y, device, None, 6, chunk_size=3)
        assert len(vmapped) > n
        np.testing.assert_array_equal(every.accuracies, whole.accuracies)


def test_measure_runs_the_fastest_and_the_rule_on_ties(problem, monkeypatch):
    """The candidate timed fastest runs; one within the tie of it that comes
    earlier (the rule's sizes first) wins instead."""
    _small_cache(monkeypatch)
    params, x, _ = problem
    cands = _chunking.size_candidates(mlp_apply, params, x, 12)
    assert len(cands) >= 3 and cands[0] == _chunking.resolve_sizes(
        mlp_apply, params, x, 12
    )
    times = [3.0] * len(cands)
    times[2] = 1.0
    calls = _scripted_timing(monkeypatch, times, cands)
    assert _chunking.measure_sizes(mlp_apply, params, x, 12) == cands[2]
    assert calls == [c.chunk_size for c in cands]  # each candidate timed once
    (record,) = u.measured_sizes_log()
    assert record["chosen"] == _chunking._label(cands[2])
    assert record["ms_per_trial"][_chunking._label(cands[0])] == pytest.approx(3e3)

    monkeypatch.setattr(_chunking, "_MEASURED_SIZES", {})
    monkeypatch.setenv("USWIM_CONV_CACHE", "")
    times = [1.0 + _chunking.CONV_TIE / 2] + [1.0] * (len(cands) - 1)
    _scripted_timing(monkeypatch, times, cands)
    assert _chunking.measure_sizes(mlp_apply, params, x, 12) == cands[0]


def test_measure_is_kept_per_model_and_in_the_file(problem, monkeypatch, tmp_path):
    """A second call with the same shapes times nothing (in-process, then from
    the file in a fresh process state, logged as ``"cached"``); other trial
    counts or another model measure again."""
    _small_cache(monkeypatch)
    params, x, y = problem
    calls = _scripted_timing(monkeypatch, [1.0] * 100, [_chunking.Sizes(1, None)] * 100)
    first = _chunking.measure_sizes(mlp_apply, params, x, 12)
    n = len(calls)
    assert _chunking.measure_sizes(mlp_apply, params, x, 12) == first
    assert len(calls) == n
    (record,) = u.measured_sizes_log(clear=True)
    assert not record["reused"] and "cached" not in record
    assert _chunking.measure_sizes(mlp_apply, params, x, 12) == first
    assert u.measured_sizes_log()[0]["reused"]

    monkeypatch.setattr(_chunking, "_MEASURED_SIZES", {})  # a new process
    monkeypatch.setattr(_chunking, "_SIZE_DECISIONS", {})
    assert _chunking.measure_sizes(mlp_apply, params, x, 12) == first
    assert len(calls) == n
    (record,) = u.measured_sizes_log()
    assert record["reused"] and record["cached"] == str(tmp_path / "measure.json")

    _chunking.measure_sizes(mlp_apply, params, x, 10)
    assert len(calls) > n
    n = len(calls)
    _chunking.measure_sizes(lambda p, xs: mlp_apply(p, 2 * xs), params, x, 12)
    assert len(calls) > n


def test_measure_candidates_follow_the_given_batch_and_the_memory(problem, monkeypatch):
    """A given ``eval_batch_size`` is kept (only the chunk is chosen); all
    images at once is no candidate where one trial of them overflows the
    memory budget; a chunk size that is neither a number nor a known word is
    refused by name."""
    _small_cache(monkeypatch)
    params, x, y = problem
    cands = _chunking.size_candidates(mlp_apply, params, x, 12, 8)
    assert {c.eval_batch_size for c in cands} == {8} and (1, 8, None) in cands
    assert not any(c.conv_path for c in cands)  # the loop's program: all images
    batches = [
        c.eval_batch_size for c in _chunking.size_candidates(mlp_apply, params, x, 12)
    ]
    assert None in batches
    monkeypatch.setattr(_chunking, "_free_memory_bytes", lambda device: 1)
    batches = [
        c.eval_batch_size for c in _chunking.size_candidates(mlp_apply, params, x, 12)
    ]
    assert None not in batches
    with pytest.raises(ValueError, match='"measure"'):
        evaluate(jax.random.key(0), mlp_apply, params, x, y, DEVICE, None, 3,
                 chunk_size="fastest")  # fmt: skip


@pytest.mark.parametrize("fits", [True, False])
def test_candidates_take_turns_where_their_params_fit(problem, monkeypatch, fits):
    """The candidates are timed in turns (every one's filled params held at
    once) where they fit the memory budget, else one at a time; each is timed
    once either way, and the same scripted times choose the same sizes."""
    _small_cache(monkeypatch)
    if not fits:  # the candidates' params together would not fit
        monkeypatch.setattr(_chunking, "_fits_at_once", lambda nbytes: False)
    params, x, _ = problem
    cands = _chunking.size_candidates(mlp_apply, params, x, 12)
    assert len(cands) >= 2
    times = [3.0] * len(cands)
    times[1] = 1.0
    calls = _scripted_timing(monkeypatch, times, cands)
    ways = []
    for name in ("_time_call", "_time_calls"):
        fake = getattr(_chunking, name)
        monkeypatch.setattr(
            _chunking,
            name,
            lambda *a, fake=fake, name=name: ways.append(name) or fake(*a),
        )
    assert _chunking.measure_sizes(mlp_apply, params, x, 12) == cands[1]
    assert calls == [c.chunk_size for c in cands]
    assert ways == (["_time_calls"] if fits else ["_time_call"] * len(cands))
