"""Selective write-verify under the pulse-level programming model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _toy import mlp_apply, toy_problem

from uswim_jax import selection
from uswim_jax.programming import PulseModel, program
from uswim_jax.pulse_sweep import exhaustive_pulses, pulse_sweep, pulse_trials


@pytest.fixture(scope="module")
def problem():
    return toy_problem()


def test_trial_is_the_programming_process(problem, key):
    """Trial t programs with fold_in(key, t): its accuracy is that of
    program(fold_in(key, t), ...) and its cost the pulses that run spent."""
    params, x, y = problem
    model = PulseModel(sigma=0.5)
    mask = jax.tree.map(lambda w: jnp.ones(w.shape, bool), params)
    out = jax.jit(lambda k: pulse_trials(k, mlp_apply, params, x, y, model, mask, 3))(
        key
    )
    assert out.shape == (3, 3)
    res = program(jax.random.fold_in(key, 1), params, model, mask)
    acc = jnp.mean(jnp.argmax(mlp_apply(res.params, x), -1) == y)
    np.testing.assert_allclose(out[1, 0], acc, rtol=1e-6)
    pulses = sum(int(jnp.sum(p)) for p in jax.tree.leaves(res.pulses))
    assert int(out[1, 1]) == pulses == int(out[1, 2])  # all verified


def test_sweep_cycles_and_end_points(problem, key):
    params, x, y = problem
    model = PulseModel(sigma=1.0)
    order = selection.global_order(selection.magnitude_score(params))
    n = int(order.shape[0])
    counts = jnp.asarray([0, n // 4, n // 2, n], jnp.int32)
    curve = jax.jit(
        lambda k: pulse_sweep(k, mlp_apply, params, x, y, model, order, counts, 8)
    )(key)
    cyc = np.asarray(curve.cycles)
    assert np.all(np.diff(cyc) > 0)
    # nothing verified: one write per device; everything verified: about 1
    np.testing.assert_allclose(cyc[0], float(curve.baseline_cycles[0]), rtol=1e-6)
    np.testing.assert_allclose(cyc[-1], 1.0, rtol=0.05)
    np.testing.assert_allclose(curve.cycles_verified_only[0], 0.0)
    # common random numbers: the last step equals the reference trial by trial
    np.testing.assert_allclose(curve.accuracies[-1], curve.reference, rtol=1e-6)
    np.testing.assert_allclose(curve.accuracies[0], curve.baseline, rtol=1e-6)
    # verifying everything beats verifying nothing at sigma = 1
    assert float(np.mean(curve.reference)) > float(np.mean(curve.baseline))


def test_exhaustive_pulses_matches_calibration(problem, key):
    """About 10 pulses per device at the calibrated defaults (sigma 0.3)."""
    params, _, _ = problem
    model = PulseModel()
    n_dev = 8 * sum(int(np.size(params[k]["kernel"])) for k in ("l1", "l2"))
    per = float(exhaustive_pulses(key, params, model)) / n_dev
    assert 8.0 < per < 12.0


def test_auto_chunk_gives_the_same_trials(problem, key):
    """chunk_size="auto" only groups trials: per-trial results equal those of
    explicit chunk sizes, for the trials and for the whole sweep."""
    params, x, y = problem
    model = PulseModel(sigma=0.5)
    mask = jax.tree.map(lambda w: jnp.ones(w.shape, bool), params)
    outs = [
        pulse_trials(key, mlp_apply, params, x, y, model, mask, 6, chunk_size=c)
        for c in ("auto", 1, None)
    ]
    for other in outs[1:]:
        np.testing.assert_allclose(outs[0], other, rtol=1e-6)
    order = selection.global_order(selection.magnitude_score(params))
    counts = jnp.asarray([0, int(order.shape[0]) // 2], jnp.int32)
    curves = [
        pulse_sweep(key, mlp_apply, params, x, y, model, order, counts, 6, chunk_size=c)
        for c in ("auto", 4)
    ]
    np.testing.assert_allclose(curves[0].accuracies, curves[1].accuracies, rtol=1e-6)
    np.testing.assert_allclose(curves[0].cycles, curves[1].cycles, rtol=1e-6)
