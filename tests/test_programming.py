"""Tests of the pulse-level write-verify process and cycle accounting
(uswim_jax.programming).

Statistical tests are probabilistic, with fixed keys and ``5 * SE`` bounds (or
wide regression bands for the calibrated defaults); no value depends on PRNG
bits.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import uswim_jax
from uswim_jax import (
    DEFAULT_SIGMA_VERIFIED,
    PulseModel,
    UniformVariation,
    program,
    program_devices,
    program_init,
    program_loop,
    program_step,
    write_cycles,
)
from uswim_jax.programming import program_active, program_failed

K = 5.0

# jitted once per shape and static configuration: eager while_loops retrace
program = jax.jit(program)
program_devices = jax.jit(program_devices, static_argnames="dtype")


def small_params():
    return {
        "Conv_0": {
            "kernel": jnp.linspace(-1.0, 1.0, 54).reshape(3, 3, 1, 6),
            "bias": jnp.ones(6),
        },
        "Dense_0": {"kernel": jnp.linspace(-0.5, 0.3, 20).reshape(4, 5)},
        "LayerNorm_0": {"scale": jnp.ones(5)},
    }


def all_verified(params, value=True):
    return jax.tree.map(lambda x: jnp.full(x.shape, value, jnp.bool_), params)


def reference_loop(key, state, model):
    """Plain Python step-by-step version of program_loop."""
    step = jax.jit(program_step)
    history = [state]
    for t in range(model.max_pulses - 1):
        if not bool(jnp.any(program_active(state, model))):
            break
        state, _ = step(jax.random.fold_in(key, t), state, model)
        history.append(state)
    return state, history


# ---------------------------------------------------------------------------
# the process
# ---------------------------------------------------------------------------


def test_noiseless_device_converges_in_one_pulse(key):
    model = PulseModel(sigma=0.0, pulse_sigma=0.0, read_sigma=0.0)
    st = program_devices(key, model, jnp.ones((1000,), jnp.bool_))
    np.testing.assert_array_equal(st.pulses, 1)
    assert not np.any(program_failed(st))
    np.testing.assert_array_equal(st.error, 0.0)
    params = small_params()
    res = program(key, params, model, all_verified(params))
    chex.assert_trees_all_equal(res.params, params)
    assert all(bool(jnp.all(p <= 1)) for p in jax.tree.leaves(res.pulses))


def test_deterministic_geometric_convergence(key):
    """Without pulse and read noise, e_k = (1 - step)^k e_0: the pulse count is
    known in closed form."""
    with jax.enable_x64(True):
        model = PulseModel(sigma=0.3, tolerance=0.03, step=0.25, pulse_sigma=0.0)
        model = dataclasses.replace(model, read_sigma=0.0)
        st = program_devices(key, model, jnp.ones((2000,), jnp.bool_), jnp.float64)
        init = program_init(
            jax.random.split(key)[0], model, jnp.ones((2000,), bool), jnp.float64
        )
        e0 = np.abs(np.asarray(init.error, np.float64))
        k = np.where(e0 <= 0.03, 0, np.ceil(np.log(0.03 / e0) / np.log(0.75)))
        np.testing.assert_array_equal(np.asarray(st.pulses), 1 + k)
        assert np.all(np.abs(np.asarray(st.error)) <= 0.03)


def test_pulse_cap_and_failures_flagged(key):
    model = PulseModel(tolerance=1e-4, max_pulses=3)
    verify = jnp.arange(5000) % 2 == 0
    st = program_devices(key, model, verify)
    pulses = np.asarray(st.pulses)
    failed = np.asarray(program_failed(st))
    v = np.asarray(verify)
    assert pulses.max() <= 3
    np.testing.assert_array_equal(pulses[~v], 1)
    assert not failed[~v].any()
    assert failed[v].mean() > 0.5  # most cannot reach 1e-4 in 2 pulses
    np.testing.assert_array_equal(pulses[failed], 3)
    np.testing.assert_array_equal(failed, v & (np.abs(np.asarray(st.measured)) > 1e-4))
    # a tolerance below any achievable read: every verified device fails, no raise
    st0 = program_devices(key, dataclasses.replace(model, tolerance=0.0), verify)
    np.testing.assert_array_equal(np.asarray(program_failed(st0)), v)
    params = small_params()
    res = program(key, params, model, all_verified(params))
    assert all(bool(jnp.all(p <= 3)) for p in jax.tree.leaves(res.pulses))
    assert bool(jnp.any(res.failed["Dense_0"]["kernel"]))


def test_tighter_tolerance_more_pulses_smaller_residual(key):
    n = 100_000
    verify = jnp.ones((n,), jnp.bool_)
    loose = program_devices(key, PulseModel(tolerance=0.06), verify)
    tight = program_devices(key, PulseModel(tolerance=0.02), verify)
    p_l, p_t = (np.asarray(s.pulses, np.float64) for s in (loose, tight))
    se = np.sqrt((p_l.var() + p_t.var()) / n)
    assert p_t.mean() - p_l.mean() > K * se
    r_l, r_t = (float(jnp.std(s.error)) for s in (loose, tight))
    assert r_t < r_l - K * (r_l + r_t) / np.sqrt(2 * n)


def test_unverified_devices_written_once(key):
    n = 100_000
    model = PulseModel(sigma=0.2)
    st = program_devices(key, model, jnp.zeros((n,), jnp.bool_))
    np.testing.assert_array_equal(st.pulses, 1)
    err = np.asarray(st.error, np.float64)
    assert abs(err.std() - 0.2) < K * 0.2 / np.sqrt(2 * n)


def test_defaults_are_calibrated(key):
    """Regression band around the calibration (results/calibration/)."""
    st = program_devices(key, PulseModel(), jnp.ones((200_000,), jnp.bool_))
    resid = float(jnp.std(st.error))
    assert resid == pytest.approx(DEFAULT_SIGMA_VERIFIED, rel=0.05)
    assert float(jnp.mean(st.pulses.astype(jnp.float32))) == pytest.approx(10, rel=0.1)
    assert float(jnp.mean(program_failed(st).astype(jnp.float32))) < 1e-3


def test_weight_residual_matches_gaussian_model(key, getkey):
    """A verified weight's error std is close to the Gaussian sigma_verified."""
    w = jax.random.normal(getkey(), (200, 300))
    params = {"kernel": w}
    res = program(key, params, PulseModel(), all_verified(params))
    _, sv = UniformVariation(0.3, DEFAULT_SIGMA_VERIFIED).std(params)
    ratio = float(jnp.std(res.params["kernel"] - w) / sv["kernel"][0, 0])
    assert ratio == pytest.approx(1.0, rel=0.05)


def test_loop_equals_python_reference(key):
    with jax.enable_x64(True):
        model = PulseModel(max_pulses=30)
        verify = jnp.arange(64) % 3 != 0
        init_key, loop_key = jax.random.split(key)
        state = program_init(init_key, model, verify, jnp.float64)
        got = jax.jit(program_loop)(loop_key, state, model)
        want, history = reference_loop(loop_key, state, model)
        np.testing.assert_allclose(got.error, want.error, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(got.pulses, want.pulses)
        np.testing.assert_array_equal(got.converged, want.converged)
        assert int(got.iteration) == int(want.iteration) == len(history) - 1
        # the same through program_devices
        chex.assert_trees_all_close(
            program_devices(key, model, verify, jnp.float64), got, rtol=1e-12
        )
        # converged never goes back to False; pulses never decrease
        for a, b in zip(history[:-1], history[1:], strict=True):
            assert np.all(np.asarray(b.converged) >= np.asarray(a.converged))
            assert np.all(np.asarray(b.pulses) >= np.asarray(a.pulses))


def test_vmap_over_keys(key):
    params = small_params()
    model = PulseModel()
    verified = jax.tree.map(lambda x: x > 0, params)
    keys = jax.random.split(key, 3)
    batched = jax.jit(jax.vmap(lambda k: program(k, params, model, verified)))(keys)
    for i in range(3):
        single = program(keys[i], params, model, verified)
        chex.assert_trees_all_close(
            jax.tree.map(lambda x, i=i: x[i], batched), single, rtol=1e-6, atol=1e-6
        )
    k0 = batched.params["Dense_0"]["kernel"]
    assert not np.allclose(k0[0], k0[1])


def test_sigma_sweep_traces_once(key):
    params = small_params()
    verified = all_verified(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(model):
        return program(key, params, model, verified)

    outs = [run(PulseModel(sigma=s)) for s in (0.1, 0.2, 0.3)]
    for m, tol in ((PulseModel(tolerance=0.05), 0.05), (PulseModel(step=0.5), None)):
        run(m)
        del tol
    mean_pulses = [float(jnp.mean(o.pulses["Dense_0"]["kernel"])) for o in outs]
    assert mean_pulses[0] < mean_pulses[2]


# ---------------------------------------------------------------------------
# program on pytrees
# ---------------------------------------------------------------------------


def test_program_pytree_shapes_mask_and_off_crossbar(key):
    params = small_params()
    model = PulseModel(device_bits=2)
    verified = jax.tree.map(lambda x: x > 0, params)
    res = program(key, params, model, verified)
    chex.assert_trees_all_equal_shapes(res.params, params)
    chex.assert_trees_all_equal_dtypes(res.params, params)
    for path in (("Conv_0", "bias"), ("LayerNorm_0", "scale")):
        leaf = params[path[0]][path[1]]
        np.testing.assert_array_equal(res.params[path[0]][path[1]], leaf)
        assert res.pulses[path[0]][path[1]].shape == (*leaf.shape, 4)
        assert not np.any(res.pulses[path[0]][path[1]])
    for name in ("Conv_0", "Dense_0"):
        w = params[name]["kernel"]
        p = np.asarray(res.pulses[name]["kernel"])
        m = np.asarray(verified[name]["kernel"])
        assert p.shape == (*w.shape, 4)
        np.testing.assert_array_equal(p[~m], 1)  # unverified: one write each
        assert p[m].mean() > 2
        assert not np.allclose(res.params[name]["kernel"], w)
    np.testing.assert_allclose(
        jax.jit(uswim_jax.perturb)(key, params, model, verified)["Dense_0"]["kernel"],
        res.params["Dense_0"]["kernel"],
        rtol=1e-6,
        atol=1e-7,
    )
    none = program(key, params, model)
    assert all(int(jnp.max(p, initial=0)) <= 1 for p in jax.tree.leaves(none.pulses))


def test_program_dtypes(key):
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), small_params())
    res = program(key, params, PulseModel(), all_verified(params))
    chex.assert_trees_all_equal_dtypes(res.params, params)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda x: x.astype(jnp.float64), small_params())
        res = program(key, params, PulseModel(), all_verified(params))
        chex.assert_trees_all_equal_dtypes(res.params, params)


def test_no_crossbar_leaves_is_refused(key):
    # programming that touches nothing is never what was meant (issue 12)
    with pytest.raises(ValueError, match="no leaf of params is on the crossbar"):
        program(key, {"bias": jnp.ones(3)}, PulseModel())


# ---------------------------------------------------------------------------
# cycle accounting (pulse model)
# ---------------------------------------------------------------------------


def test_pulse_write_cycles(key):
    params = small_params()
    model = PulseModel()
    n_dev = (54 + 20) * 8
    everything = all_verified(params)
    full = program(key, params, model, everything)
    c_full = write_cycles(model, everything, result=full)
    assert float(c_full.normalized) == pytest.approx(1.0)
    assert float(c_full.normalized_verified_only) == pytest.approx(1.0)
    assert float(c_full.total) == sum(
        int(jnp.sum(p)) for p in jax.tree.leaves(full.pulses)
    )

    none = program(key, params, model)
    c_none = write_cycles(model, None, result=none)
    assert float(c_none.total) == n_dev
    assert float(c_none.verify) == 0.0
    assert float(c_none.normalized) == pytest.approx(1 / 10)  # nominal 10 per device

    half = jax.tree.map(lambda x: x > 0, params)
    res = program(key, params, model, half)
    c = write_cycles(model, half, result=res, exhaustive=c_full.total)
    assert float(c.exhaustive) == float(c_full.total)
    assert 0 < float(c.normalized_verified_only) < float(c.normalized) < 1
    assert float(c.total - c.verify) == pytest.approx(
        8
        * sum(
            int(jnp.sum(~m))
            for m in (half["Conv_0"]["kernel"], half["Dense_0"]["kernel"])
        )
    )
    # jit-traceable
    c_jit = jax.jit(lambda r: uswim_jax.pulse_write_cycles(r, half))(res)
    assert float(c_jit.total) == float(c.total)


def test_write_cycles_dispatch_gaussian():
    c = write_cycles(UniformVariation(0.3, 0.03, verify_cycles=10.0), 0.1)
    assert float(c.normalized) == pytest.approx(0.19)
    assert float(c.normalized_verified_only) == pytest.approx(0.1)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"sigma": -0.1}, "sigma"),
        ({"tolerance": -1e-3}, "tolerance"),
        ({"read_sigma": -1.0}, "read_sigma"),
        ({"pulse_sigma": -1.0}, "pulse_sigma"),
        ({"step": 0.0}, "step"),
        ({"max_pulses": 0}, "max_pulses"),
        ({"weight_bits": 8, "device_bits": 3}, "weight_bits"),
    ],
)
def test_bad_model_raises(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PulseModel(**kwargs)


def test_bad_mask_and_missing_result_raise(key):
    params = small_params()
    bad = {"Conv_0": params["Conv_0"]}
    with pytest.raises(ValueError, match="verified"):
        program(key, params, PulseModel(), bad)
    with pytest.raises(ValueError, match="result"):
        write_cycles(PulseModel(), None)
    res = program(key, params, PulseModel())
    with pytest.raises(ValueError, match="verified"):
        write_cycles(PulseModel(), bad, result=res)
