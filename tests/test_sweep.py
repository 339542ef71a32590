"""The selective write-verify sweep: scan vs loop, end points, cycles to target,
and a quadratic toy where the best selection is known in closed form."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _toy import mlp_apply, toy_problem

import uswim_jax as u
from uswim_jax.montecarlo import evaluate
from uswim_jax.selection import mask_from_order
from uswim_jax.sweep import Curve, counts_for_fractions, sweep

DEVICE = u.UniformVariation(0.6, 0.06)


@pytest.fixture(scope="module")
def problem():
    params, x, y = toy_problem()
    order = u.global_order(u.magnitude_score(params))
    return params, x, y, order


def test_scan_equals_python_loop_and_end_points(problem):
    params, x, y, order = problem
    n = u.crossbar_size(params)
    counts = jnp.asarray([0, 5, 40, n], jnp.int32)
    key = jax.random.key(2)
    curve = sweep(key, mlp_apply, params, x, y, DEVICE, order, counts, 12)
    for k, c in enumerate(counts):
        mask = mask_from_order(order, params, count=int(c))
        direct = evaluate(key, mlp_apply, params, x, y, DEVICE, mask, 12)
        np.testing.assert_array_equal(curve.accuracies[k], direct.accuracies)
        cyc = DEVICE.write_cycles(mask, params)
        assert float(curve.cycles[k]) == pytest.approx(float(cyc.normalized))
    none = evaluate(key, mlp_apply, params, x, y, DEVICE, None, 12)
    every = jax.tree.map(lambda w: jnp.ones(w.shape, bool), params)
    full = evaluate(key, mlp_apply, params, x, y, DEVICE, every, 12)
    np.testing.assert_array_equal(curve.accuracies[0], none.accuracies)
    np.testing.assert_array_equal(curve.accuracies[-1], full.accuracies)
    np.testing.assert_array_equal(curve.baseline, none.accuracies)
    np.testing.assert_array_equal(curve.reference, full.accuracies)
    assert float(curve.cycles[-1]) == pytest.approx(1.0)
    assert float(curve.cycles[0]) == pytest.approx(0.1)  # plain writes, C = 10
    assert float(curve.cycles_verified_only[0]) == 0.0


def test_budget_and_sigma_sweeps_do_not_retrace(problem):
    params, x, y, order = problem
    traces = []

    @jax.jit
    def run(key, device, counts):
        traces.append(1)
        return sweep(key, mlp_apply, params, x, y, device, order, counts, 4)

    run(jax.random.key(0), DEVICE, jnp.asarray([0, 10], jnp.int32))
    run(
        jax.random.key(0),
        u.UniformVariation(0.3, 0.03),
        jnp.asarray([3, 50], jnp.int32),
    )
    assert len(traces) == 1


def _synthetic_curve(diffs, cycles, t=4):
    """A curve whose paired differences are exactly ``diffs`` (in pp)."""
    ref = np.full((t,), 0.9)
    acc = ref[None] + np.asarray(diffs)[:, None] / 100.0
    return Curve(
        counts=np.arange(len(diffs)),
        fractions=np.asarray(cycles),
        cycles=np.asarray(cycles),
        cycles_verified_only=np.asarray(cycles),
        accuracies=acc,
        reference=ref,
        baseline=ref - 0.05,
        baseline_cycles=np.asarray([0.0, 0.0]),
    )


def test_cycles_to_target_interpolates():
    curve = _synthetic_curve([-3.0, -1.0, -0.2], [0.1, 0.2, 0.4])
    # -0.5 pp lies halfway between -1.0 (0.2) and -0.2 ... at 5/8 of the way
    ct = curve.cycles_to_target(0.5)
    assert ct.value == pytest.approx(0.2 + (0.5 / 0.8) * 0.2)
    assert ct.low == ct.high == pytest.approx(ct.value)  # no spread across trials
    assert ct.speedup == pytest.approx(1 / ct.value)
    # 0.1 pp is reached only at exhaustive write-verify (cycles 1)
    assert curve.cycles_to_target(0.1).value == pytest.approx(0.4 + 0.5 * 0.6)
    # from the no-verify point (-5 pp at cycles 0) to -3 at 0.1
    assert curve.cycles_to_target(4.0).value == pytest.approx(0.05)
    assert curve.cycles_to_target(6.0).value == 0.0
    assert math.isinf(curve.cycles_to_target(6.0).speedup)
    with pytest.raises(ValueError, match="margin"):
        curve.cycles_to_target(-1.0)


def test_counts_for_fractions_checks():
    np.testing.assert_array_equal(counts_for_fractions([0, 0.5, 1], 10), [0, 5, 10])
    for bad in ([1.5], [-0.1], [0.5, 0.2], []):
        with pytest.raises(ValueError, match="fractions"):
            counts_for_fractions(bad, 10)


def test_sweep_rejects_bad_counts(problem):
    params, x, y, order = problem
    with pytest.raises(ValueError, match="counts"):
        sweep(
            jax.random.key(0),
            mlp_apply,
            params,
            x,
            y,
            DEVICE,
            order,
            jnp.asarray([5, 3]),
            2,
        )
    with pytest.raises(ValueError, match="num_trials"):
        sweep(
            jax.random.key(0),
            mlp_apply,
            params,
            x,
            y,
            DEVICE,
            order,
            jnp.asarray([0]),
            0,
        )


def test_quadratic_toy_best_selection():
    """Loss 0.5 * sum h_i w_i^2 around the trained point, so E[dL] =
    0.5 * sum h_i std_i^2 exactly; the best k weights to verify are the top k of
    h_i * (std_written_i^2 - std_verified_i^2). Middle-state weights (noisier
    under U-SWIM's device) with moderate curvature beat large weights and
    high-curvature extreme weights."""
    with jax.enable_x64(True):
        w = jnp.asarray([[1.0, 0.9, 0.8, 0.5, 0.4, 0.6, 0.1, 0.05]])
        h = jnp.asarray([[0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 2.0, 2.0]])
        params = {"layer": {"kernel": w}}
        loss_fn = lambda p: 0.5 * jnp.sum(h * p["layer"]["kernel"] ** 2)
        hess = u.exact_diagonal(loss_fn, params)
        np.testing.assert_allclose(hess["layer"]["kernel"], h)
        device = u.StateDependentVariation(0.3, 0.03, 3.0)
        sw, sv = device.std(params)
        k = 3

        def expected_dl(mask):
            s = jnp.where(mask, sv["layer"]["kernel"], sw["layer"]["kernel"])
            return float(0.5 * jnp.sum(h * s**2))

        masks = []
        for idx in itertools.combinations(range(8), k):
            m = np.zeros((1, 8), bool)
            m[0, list(idx)] = True
            masks.append(m)
        best = min(masks, key=expected_dl)
        np.testing.assert_array_equal(best[0], [0, 0, 0, 1, 1, 1, 0, 0])

        def top(scores):
            return np.asarray(u.select(scores, count=k)["layer"]["kernel"])

        eloss = u.expected_loss_score(hess, sw, sv)
        uswim = u.uswim_score(params, hess, None, s=3.0)
        swim = u.swim_score(params, hess, None)
        mag = u.magnitude_score(params)
        np.testing.assert_array_equal(top(eloss), best)
        np.testing.assert_array_equal(top(uswim), best)
        assert expected_dl(top(mag)) > expected_dl(best)
        assert expected_dl(top(swim)) > expected_dl(best)


# ------------------------------------------- the pulse model through sweep


def test_pulse_sweep_cycles_and_end_points(problem, key):
    params, x, y, order = problem
    model = u.PulseModel(sigma=1.0)
    n = int(order.shape[0])
    counts = jnp.asarray([0, n // 4, n // 2, n], jnp.int32)
    curve = jax.jit(
        lambda k: sweep(k, mlp_apply, params, x, y, model, order, counts, 8)
    )(key)
    cyc = np.asarray(curve.cycles)
    assert np.all(np.diff(cyc) > 0)
    # nothing verified: one write per device; everything verified: about 1
    np.testing.assert_allclose(cyc[0], float(curve.baseline_cycles[0]), rtol=1e-6)
    np.testing.assert_allclose(cyc[-1], 1.0, rtol=0.05)
    np.testing.assert_allclose(curve.cycles_verified_only[0], 0.0)
    # common random numbers: the last step equals the reference trial by trial
    np.testing.assert_array_equal(curve.accuracies[-1], curve.reference)
    np.testing.assert_array_equal(curve.accuracies[0], curve.baseline)
    # verifying everything beats verifying nothing at sigma = 1
    assert float(np.mean(curve.reference)) > float(np.mean(curve.baseline))


def test_pulse_exhaustive_cost_matches_calibration(problem, key):
    """The exhaustive cost E is one all-verified run with split(key)[1]: about
    10 pulses per device at the calibrated defaults (sigma 0.3), and the
    no-verify point costs one pulse per device over E."""
    params, x, y, order = problem
    model = u.PulseModel()
    n_dev = 8 * u.crossbar_size(params)
    every = jax.tree.map(lambda w: jnp.ones(w.shape, bool), params)
    ex = float(
        model.program_with_cost(jax.random.split(key)[1], params, every).cycles.total
    )
    assert 8.0 < ex / n_dev < 12.0
    counts = jnp.asarray([0], jnp.int32)
    curve = sweep(key, mlp_apply, params, x, y, model, order, counts, 2)
    assert float(curve.baseline_cycles[0]) == pytest.approx(n_dev / ex, rel=1e-6)
    assert float(curve.baseline_cycles[1]) == 0.0


def test_pulse_auto_chunk_gives_the_same_trials(problem, key):
    """chunk_size="auto" only groups trials: per-trial results equal those of
    explicit chunk sizes, for evaluate and for the whole sweep."""
    params, x, y, order = problem
    model = u.PulseModel(sigma=0.5)
    mask = jax.tree.map(lambda w: jnp.ones(w.shape, bool), params)
    outs = [
        evaluate(key, mlp_apply, params, x, y, model, mask, 6, chunk_size=c).accuracies
        for c in ("auto", 1, None)
    ]
    for other in outs[1:]:
        np.testing.assert_array_equal(outs[0], other)
    counts = jnp.asarray([0, int(order.shape[0]) // 2], jnp.int32)
    curves = [
        sweep(key, mlp_apply, params, x, y, model, order, counts, 6, chunk_size=c)
        for c in ("auto", 4)
    ]
    np.testing.assert_array_equal(curves[0].accuracies, curves[1].accuracies)
    np.testing.assert_allclose(curves[0].cycles, curves[1].cycles, rtol=1e-6)
