"""ConductanceDevice as a device model: the protocol, its invariants (same key,
same chip; several read times on one chip; the loop's own cycle counts) and
users' models (plain lax, flax linen, flax nnx, equinox)."""

import _user_models as um
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import uswim_jax
from uswim_jax import DeviceModel
from uswim_jax._protocol import require_device_model
from uswim_jax.devices import (
    BitSlicedPair,
    ConductanceDevice,
    RRAMWanPreset,
    VerifyLoop,
    device_preset,
)


def _params():
    w = jnp.linspace(-1.0, 1.0, 48, dtype=jnp.float32).reshape(6, 8)
    return {"dense": {"kernel": w, "bias": jnp.arange(8, dtype=jnp.float32)}}


def _all(params, value):
    return jax.tree.map(lambda a: jnp.full(a.shape, value), params)


@pytest.mark.parametrize("name", ["pcm", "rram", "hfox", "authors"])
def test_each_preset_model_satisfies_the_protocol(name):
    dev = ConductanceDevice(device_preset(name))
    assert isinstance(dev, DeviceModel)
    require_device_model("device", dev)
    assert dev.devices_per_weight == 2
    sliced = ConductanceDevice(
        device_preset(name),
        mapping=BitSlicedPair(dev.preset.g_max, dev.preset.g_min, 8, 2),
    )
    assert sliced.devices_per_weight == 8


def test_program_invariants_and_the_loops_own_cycles():
    params = _params()
    dev = ConductanceDevice(
        device_preset("pcm"), t=3600.0, stuck_off=0.02, drift_compensation=True
    )
    every = _all(params, True)
    prog = jax.jit(lambda k, v: dev.program(k, params, v))
    cost = jax.jit(lambda k, v: dev.program_with_cost(k, params, v))
    a = prog(jax.random.key(0), every)
    b = prog(jax.random.key(0), every)
    jax.tree.map(np.testing.assert_array_equal, a, b)  # same key, same chip
    np.testing.assert_array_equal(a["dense"]["bias"], params["dense"]["bias"])
    assert a["dense"]["kernel"].dtype == jnp.float32
    res = cost(jax.random.key(0), every)
    jax.tree.map(np.testing.assert_array_equal, res.params, a)
    n_dev = 48 * 2
    # everything verified: the cost is the exhaustive cost of the same run
    assert float(res.cycles.total) == float(res.cycles.exhaustive)
    assert float(res.cycles.normalized) == 1.0
    assert n_dev <= float(res.cycles.total) <= n_dev * dev.verify.max_iterations
    none = cost(jax.random.key(0), None)
    assert float(none.cycles.total) == n_dev and float(none.cycles.verify) == 0.0
    # the exhaustive count does not depend on the mask (same draws)
    assert float(none.cycles.exhaustive) == float(res.cycles.exhaustive)
    assert int(none.failed) == 0
    with pytest.raises(ValueError, match="key"):
        dev.write_cycles(every, params)
    cyc = jax.jit(lambda k: dev.write_cycles(every, params, key=k))(jax.random.key(0))
    assert float(cyc.total) == float(res.cycles.total)


def test_several_times_on_one_chip_agree_with_the_single_time_calls():
    params = _params()
    dev = ConductanceDevice(device_preset("pcm"), drift_compensation=True)
    times = (1.0, 3600.0, 86400.0)
    half = {"dense": {"kernel": params["dense"]["kernel"] > 0, "bias": None}}
    half["dense"]["bias"] = jnp.zeros(8, bool)
    stacked = jax.jit(lambda k: dev.program_at_times(k, params, half, times))(
        jax.random.key(1)
    )
    for i, t in enumerate(times):
        d = dev.at(t)
        one = jax.jit(lambda k, d=d: d.program(k, params, half))(jax.random.key(1))
        # Two XLA programs: the same draws and formulas, but fusion may round
        # differently, so equal to a few float32 ulps of the layer's scale,
        # not bit for bit (benchmarks.draw_compile counts the differences).
        want = np.asarray(one["dense"]["kernel"])
        ulp = np.finfo(np.float32).eps * float(np.max(np.abs(want)))
        np.testing.assert_allclose(
            stacked["dense"]["kernel"][i], want, rtol=0, atol=4 * ulp
        )
    with pytest.raises(ValueError, match="times"):
        dev.program_at_times(jax.random.key(1), params, None, [0.0])


def test_chip_cost_counts_time_and_energy_from_the_iterations():
    params = _params()
    dev = ConductanceDevice(RRAMWanPreset(), verify=VerifyLoop(acceptance=0.005))
    chip = jax.jit(lambda k: dev.program_chip(k, params, _all(params, True)))(
        jax.random.key(2)
    )
    c = dev.chip_cost(chip)
    it = float(np.sum(np.asarray(chip["dense/kernel"].iterations)))
    assert float(c.cost.writes) == it and float(c.cost.reads) == it
    want = it * (dev.cost.pulse_width + dev.cost.read_time)
    assert float(c.cost.time_s) == pytest.approx(want, rel=1e-6)
    want_e = it * (dev.cost.write_energy + dev.cost.read_energy)
    assert float(c.cost.energy_j) == pytest.approx(want_e, rel=1e-6)


@pytest.mark.parametrize(
    "kind",
    [k if k == "lax" else pytest.param(k, marks=pytest.mark.slow) for k in um.KINDS],
)
def test_users_models_program_and_run(kind):
    apply_fn, params, _, _ = um.build(kind, jax.random.key(0))
    x, y = um.make_data(apply_fn, params, jax.random.key(1), n=16)
    dev = ConductanceDevice(device_preset("rram"), t=86400.0)
    every = jax.tree.map(lambda a: jnp.ones(jnp.shape(a), bool), params)

    @jax.jit
    def accuracy(k, verified):
        noisy = dev.program(k, params, verified)
        return jnp.mean((jnp.argmax(apply_fn(noisy, x), -1) == y).astype(jnp.float32))

    acc = float(accuracy(jax.random.key(3), every))
    assert 0.0 <= acc <= 1.0
    noisy = jax.jit(lambda k: dev.program(k, params, None))(jax.random.key(3))
    assert jax.tree.structure(noisy) == jax.tree.structure(params)
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(noisy), jax.tree.leaves(params), strict=True)
    ]
    assert sum(changed) == 4  # the four kernels, no bias


def test_runs_through_evaluate():
    apply_fn, params, _, _ = um.build("lax", jax.random.key(0))
    x, y = um.make_data(apply_fn, params, jax.random.key(1), n=16)
    dev = ConductanceDevice(device_preset("hfox"))
    stats = uswim_jax.evaluate(
        jax.random.key(2), apply_fn, params, x, y, dev, num_trials=2, chunk_size=1
    )
    assert stats.accuracies.shape == (2,)


def test_read_time_and_compensation_are_traced_leaves():
    # a sweep over t and the switch compiles once and equals the eager calls
    params = _params()
    traces = []

    @jax.jit
    def prog(k, dev):
        traces.append(1)
        return dev.program(k, params)

    key = jax.random.key(4)
    for t, comp in ((1.0, False), (3600.0, True), (2.6e6, True)):
        dev = ConductanceDevice(device_preset("pcm"), t=t, drift_compensation=comp)
        got = prog(key, dev)
        want = dev.program(key, params)
        np.testing.assert_allclose(
            got["dense"]["kernel"], want["dense"]["kernel"], rtol=1e-6, atol=1e-7
        )
    assert len(traces) == 1
    with pytest.raises(ValueError, match="drift_compensation"):
        ConductanceDevice(drift_compensation=1)
