"""The device-model protocol (uswim_jax.DeviceModel, uswim_jax.ClosedFormStd).

Every model of the package, and a model written here only against the protocol,
pass the same behavioural checks; the Gaussian models' closed form reproduces
their programmed params bit for bit; the cost accounting has its invariants. No
value depends on PRNG bits.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import _user_models
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import uswim_jax
from uswim_jax import (
    ClosedFormStd,
    DeviceModel,
    LevelTableVariation,
    Programmed,
    PulseModel,
    StateDependentVariation,
    UniformVariation,
    WriteCycles,
    add_noise,
    noise_like,
)
from uswim_jax._protocol import require_device_model
from uswim_jax._tree import path_str

# ---------------------------------------------------------------------------
# a device model written only against the protocol
# ---------------------------------------------------------------------------


def _is_kernel(path: str, leaf: Any) -> bool:
    return path.endswith("kernel") and np.ndim(leaf) >= 2


@dataclasses.dataclass(frozen=True)
class LogNormal:
    """Multiplicative lognormal programming error, ``w * exp(sigma * z)``, one
    device per weight, ``verify_cycles`` per verified weight: a model with no
    additive closed form, written with nothing but jax and the protocol's
    return types."""

    sigma: float
    sigma_verified: float
    verify_cycles: float = 10.0
    crossbar: Callable[[str, Any], bool] = _is_kernel
    devices_per_weight: int = 1

    def _masks(self, params, verified):
        if verified is None:
            return jax.tree.map(lambda w: jnp.zeros(jnp.shape(w), bool), params)
        return jax.tree.map(lambda m: jnp.asarray(m).astype(bool), verified)

    def program(self, key, params, verified=None):
        masks = self._masks(params, verified)

        def leaf(path, w, m):
            p = path_str(path)
            if not self.crossbar(p, w):
                return w
            k = jax.random.fold_in(key, len(p))
            z = jax.random.normal(k, (w.size,), w.dtype).reshape(w.shape)  # flat
            s = jnp.where(m, self.sigma_verified, self.sigma).astype(w.dtype)
            return (w * jnp.exp(s * z)).astype(w.dtype)

        return jax.tree_util.tree_map_with_path(leaf, params, masks)

    def write_cycles(self, verified, params=None, *, key=None):
        masks = self._masks(params, verified)
        nv, n = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)
        flat = jax.tree_util.tree_leaves_with_path(params)
        for (path, w), m in zip(flat, jax.tree.leaves(masks), strict=True):
            if self.crossbar(path_str(path), w):
                nv = nv + jnp.sum(m, dtype=jnp.float32)
                n = n + jnp.float32(w.size)
        c = jnp.float32(self.verify_cycles)
        return WriteCycles(total=nv * c + (n - nv), verify=nv * c, exhaustive=n * c)

    def program_with_cost(self, key, params, verified=None):
        return Programmed(
            self.program(key, params, verified),
            self.write_cycles(verified, params),
            jnp.zeros((), jnp.int32),
        )


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


def small_params(dtype=jnp.float32):
    w1 = jnp.linspace(-1.0, 2.0, 12, dtype=dtype).reshape(3, 4)
    w2 = jnp.linspace(-0.3, 0.2, 24, dtype=dtype).reshape(2, 2, 1, 6)
    return {
        "Dense_0": {"kernel": w1, "bias": jnp.full((4,), 0.5, dtype)},
        "Conv_0": {"kernel": w2, "bias": jnp.zeros(6, dtype)},
        "BatchNorm_0": {"scale": jnp.ones(5, dtype)},
        "step": jnp.asarray(3, jnp.int32),
    }


def half_mask(params):
    # every other weight verified (off-crossbar leaves ignore the mask)
    return jax.tree.map(
        lambda w: (np.arange(np.size(w)) % 2 == 0).reshape(np.shape(w)), params
    )


def all_mask(params):
    return jax.tree.map(lambda w: np.ones(np.shape(w), bool), params)


TABLE = jnp.array([1.0, 2.0, 0.5, 1.5])

MODELS = {
    "uniform": lambda s: UniformVariation(s, s / 10),
    "state": lambda s: StateDependentVariation(s, s / 10, s=3.0),
    "table": lambda s: LevelTableVariation(s, s / 10, TABLE),
    "pulse": lambda s: PulseModel(sigma=s, read_sigma=s / 30),
    "lognormal": lambda s: LogNormal(s, s / 10, crossbar=uswim_jax.default_crossbar),
}
GAUSSIAN = ("uniform", "state", "table")


def tree_equal(a, b) -> bool:
    """Same structure, dtypes and values (NaN-free inputs)."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def crossbar_leaves(model, tree):
    flat = jax.tree_util.tree_leaves_with_path(tree)
    return [w for p, w in flat if model.crossbar(path_str(p), w)]


def off_leaves(model, tree):
    flat = jax.tree_util.tree_leaves_with_path(tree)
    return [w for p, w in flat if not model.crossbar(path_str(p), w)]


def check_protocol(model, params, key) -> None:
    """The behaviour every device model owes the engine, which calls it under
    ``jit`` and ``vmap``."""
    assert isinstance(model, DeviceModel)
    require_device_model("device_model", model)
    assert isinstance(model.devices_per_weight, int) and model.devices_per_weight >= 1
    k2 = jax.random.fold_in(key, 1)

    @jax.jit
    def calls(verified):
        return (
            model.program(key, params, verified),
            model.program(k2, params, verified),
            model.program_with_cost(key, params, verified),
            model.write_cycles(verified, params, key=key),
        )

    for verified in (None, half_mask(params), all_mask(params)):
        out, other, res, cycles = calls(verified)
        # same structure, shapes and dtypes; off-crossbar leaves exact
        assert jax.tree.structure(out) == jax.tree.structure(params)
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(params), strict=True):
            assert a.shape == jnp.shape(b) and a.dtype == jnp.result_type(b)
        assert tree_equal(off_leaves(model, out), off_leaves(model, params))
        # the crossbar leaves are programmed with noise
        noisy, clean = crossbar_leaves(model, out), crossbar_leaves(model, params)
        assert noisy
        assert all(not np.array_equal(a, b) for a, b in zip(noisy, clean, strict=True))
        # same key -> same chip; another key -> another chip
        assert tree_equal(calls(verified)[0], out)
        assert not tree_equal(crossbar_leaves(model, other), noisy)
        # program_with_cost: the same draws, and a scalar cost
        assert isinstance(res, Programmed) and isinstance(res.cycles, WriteCycles)
        assert tree_equal(res.params, out)
        assert all(jnp.shape(c) == () for c in res.cycles)
        assert jnp.shape(res.failed) == () and res.failed.dtype == jnp.int32
        assert tree_equal(res.cycles, cycles)
    # a vmapped batch of trials is the trials one by one
    verified = half_mask(params)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(3))
    batch = jax.jit(jax.vmap(model.program_with_cost, in_axes=(0, None, None)))(
        keys, params, verified
    )
    single = jax.jit(model.program_with_cost)
    for t in (0, 2):
        one = single(keys[t], params, verified)
        row = jax.tree.map(lambda x, t=t: np.asarray(x)[t], batch)
        np.testing.assert_allclose(row.cycles, one.cycles, rtol=1e-6)
        assert int(row.failed) == int(one.failed)
        pairs = zip(
            jax.tree.leaves(row.params), jax.tree.leaves(one.params), strict=True
        )
        for a, b in pairs:
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------
# every model implements the protocol
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_implements_the_protocol(name, key):
    check_protocol(MODELS[name](0.2), small_params(), key)


def _user_kernel(path, leaf):
    # conv and dense kernels of the four frameworks (nnx paths end in "/value")
    names = path.split("/")
    if names[-1] == "value":
        names = names[:-1]
    return names[-1] in ("kernel", "weight", "w") and np.ndim(leaf) >= 2


@pytest.mark.parametrize("kind", _user_models.KINDS)
@pytest.mark.parametrize("name", ["uniform", "pulse", "lognormal"])
def test_protocol_on_user_models(kind, name, key):
    # the protocol on the params of each framework (one compile per case; the
    # full checks run on small_params above)
    params = _user_models.build(kind, jax.random.key(3)).params
    model = dataclasses.replace(MODELS[name](0.2), crossbar=_user_kernel)
    assert isinstance(model, DeviceModel)
    n = uswim_jax.crossbar_size(params, model.crossbar)
    assert n == _user_models.KERNEL_COUNT
    verified = half_mask(params)

    @jax.jit
    def calls(k):
        return (
            model.program(k, params, verified),
            model.program_with_cost(k, params, verified),
            model.write_cycles(None, params, key=k),
        )

    out, res, none = calls(key)
    assert jax.tree.structure(out) == jax.tree.structure(params)
    assert tree_equal(res.params, out)
    assert tree_equal(off_leaves(model, out), off_leaves(model, params))
    noisy, clean = crossbar_leaves(model, out), crossbar_leaves(model, params)
    assert len(noisy) == 4
    assert all(not np.array_equal(a, b) for a, b in zip(noisy, clean, strict=True))
    assert float(none.total) == n * model.devices_per_weight
    assert float(res.cycles.verify) > 0.0


def test_closed_form_is_optional():
    for name in GAUSSIAN:
        assert isinstance(MODELS[name](0.2), ClosedFormStd)
    assert not isinstance(MODELS["pulse"](0.2), ClosedFormStd)
    assert not isinstance(MODELS["lognormal"](0.2), ClosedFormStd)


def test_user_model_through_module_perturb(key):
    model, params = LogNormal(0.2, 0.02), small_params()
    mask = half_mask(params)
    assert tree_equal(
        uswim_jax.perturb(key, params, model, mask), model.program(key, params, mask)
    )


def test_perturb_is_program(key):
    params = small_params()
    for name in (*GAUSSIAN, "pulse"):
        model = MODELS[name](0.2)
        mask = half_mask(params)
        assert tree_equal(
            model.perturb(key, params, mask), model.program(key, params, mask)
        )


def test_pulse_program_is_the_process(key):
    model, params = PulseModel(sigma=0.2), small_params()
    mask = half_mask(params)
    res = uswim_jax.program(key, params, model, mask)
    got = model.program_with_cost(key, params, mask)
    assert tree_equal(got.params, res.params)
    assert tree_equal(got.cycles, uswim_jax.pulse_write_cycles(res, mask))
    failed = sum(int(jnp.sum(f)) for f in jax.tree.leaves(res.failed))
    assert int(got.failed) == failed


def test_pulse_failures_are_counted(key):
    # one pulse allowed: every verified device whose first read is out of
    # tolerance fails; unverified devices never do
    model, params = PulseModel(sigma=0.3, max_pulses=1), small_params()
    got = model.program_with_cost(key, params, all_mask(params))
    n_dev = uswim_jax.crossbar_size(params) * model.devices_per_weight
    assert 0 < int(got.failed) <= n_dev
    assert int(model.program_with_cost(key, params, None).failed) == 0


# ---------------------------------------------------------------------------
# sigma = 0 -> identity
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_zero_noise_is_identity(name, key):
    params = small_params()
    model = MODELS[name](0.0)

    @jax.jit
    def calls(verified):
        return (
            model.program(key, params, verified),
            model.program_with_cost(key, params, verified).params,
        )

    for verified in (None, half_mask(params), all_mask(params)):
        out, res = calls(verified)
        assert tree_equal(out, params) and tree_equal(res, params)


# ---------------------------------------------------------------------------
# the Gaussian closed form, bit for bit
# ---------------------------------------------------------------------------


def _with_bias(path, leaf):
    return path.endswith("kernel") or path.endswith("bias")


@pytest.mark.parametrize("name", GAUSSIAN)
@pytest.mark.parametrize(
    "dtype, crossbar",
    [("float32", uswim_jax.default_crossbar), ("float64", _with_bias)],
)
def test_program_is_the_closed_form(name, dtype, crossbar, key):
    with jax.enable_x64(dtype == "float64"):
        params = small_params(jnp.dtype(dtype))
        model = dataclasses.replace(MODELS[name](0.2), crossbar=crossbar)

        def closed_form(model, k, verified):
            # what an engine's fast path does: the stds once, one draw per trial
            z = noise_like(k, params, model.crossbar)
            std = model.effective_std(params, verified)
            sw, sv = model.std(params)
            mask = uswim_jax.device.verified_mask(params, verified)
            picked = jax.tree.map(lambda m, a, b: jnp.where(m, b, a), mask, sw, sv)
            return (
                add_noise(params, std, z, model.crossbar),
                add_noise(params, picked, z, model.crossbar),
            )

        # jitted separately, with the model as a traced pytree
        program = jax.jit(lambda m, k, v: m.program(k, params, v))
        fast = jax.jit(closed_form)
        for i, verified in enumerate((None, half_mask(params), all_mask(params))):
            k = jax.random.fold_in(key, i)
            got = program(model, k, verified)
            a, b = fast(model, k, verified)
            assert tree_equal(got, a) and tree_equal(got, b)
        # and eagerly
        verified = half_mask(params)
        got = model.program(key, params, verified)
        assert tree_equal(got, closed_form(model, key, verified)[0])


@pytest.mark.parametrize("name", GAUSSIAN)
def test_gaussian_cost_does_not_depend_on_the_draw(name, key):
    params, model = small_params(), MODELS[name](0.2)
    mask = half_mask(params)
    for i in range(3):
        got = model.program_with_cost(jax.random.fold_in(key, i), params, mask)
        assert tree_equal(got.cycles, model.write_cycles(mask, params))
        assert int(got.failed) == 0


def test_add_noise_exact_where_std_is_zero(key):
    tiny = np.float32(1e-40)  # subnormal
    w = jnp.array([[-0.0, tiny], [1.0, -2.0]], jnp.float32)
    params = {"kernel": w, "count": jnp.asarray(7, jnp.int32)}
    z = noise_like(key, params)
    zero = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.float32), params)
    out = add_noise(params, zero, z)
    assert out["count"] is params["count"]
    np.testing.assert_array_equal(
        np.asarray(out["kernel"]).view(np.uint32), np.asarray(w).view(np.uint32)
    )
    std = {"kernel": jnp.array([[0.0, 0.0], [0.5, 0.0]]), "count": zero["count"]}
    out = add_noise(params, std, z)
    assert float(out["kernel"][1, 0]) == float(1.0 + 0.5 * z["kernel"][1, 0])
    np.testing.assert_array_equal(
        np.asarray(out["kernel"])[[0, 0, 1], [0, 1, 1]].view(np.uint32),
        np.asarray(w)[[0, 0, 1], [0, 1, 1]].view(np.uint32),
    )


# ---------------------------------------------------------------------------
# write cycles
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_write_cycles_invariants(name, key):
    params, model = small_params(), MODELS[name](0.2)
    cycles = jax.jit(model.write_cycles)
    none = cycles(None, params, key=key)
    assert float(none.verify) == 0.0 and float(none.normalized_verified_only) == 0.0
    n = uswim_jax.crossbar_size(params, model.crossbar)
    assert float(none.total) == n * model.devices_per_weight  # one write a device
    full = cycles(all_mask(params), params, key=key)
    if name == "pulse":  # the exhaustive cost is estimated from the same run
        assert float(full.normalized) == pytest.approx(1.0, rel=1e-6)
        assert float(full.normalized_verified_only) == pytest.approx(1.0, rel=1e-6)
    else:
        assert float(full.normalized) == 1.0
        assert float(full.normalized_verified_only) == 1.0

    # nested masks along one order: cycles never decrease (same key)
    scores = uswim_jax.random_score(key, params, predicate=model.crossbar)
    order = uswim_jax.global_order(scores)

    @jax.jit
    def at(count):
        mask = uswim_jax.mask_from_order(
            order, params, count=count, predicate=model.crossbar
        )
        return model.write_cycles(mask, params, key=key)

    prev = None
    for count in range(0, n + 1, 4):
        c = at(jnp.int32(count))
        assert float(c.total) >= float(c.verify) >= 0.0
        if prev is not None:
            assert float(c.total) >= float(prev.total)
            assert float(c.verify) >= float(prev.verify)
            assert float(c.normalized_verified_only) > float(
                prev.normalized_verified_only
            )
        prev = c
    assert tree_equal(at(jnp.int32(0)), none)


def test_pulse_write_cycles_needs_a_key():
    params = small_params()
    with pytest.raises(ValueError, match="key"):
        PulseModel().write_cycles(None, params)
    with pytest.raises(ValueError, match="params"):
        PulseModel().write_cycles(None, key=jax.random.key(0))


def test_gaussian_write_cycles_ignores_the_key(key):
    params, model = small_params(), UniformVariation(0.3, 0.03)
    mask = half_mask(params)
    assert tree_equal(
        model.write_cycles(mask, params, key=key), model.write_cycles(mask, params)
    )


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


def test_require_device_model_names_the_argument():
    with pytest.raises(ValueError, match="device_model.*program_with_cost"):
        require_device_model("device_model", object())

    @dataclasses.dataclass(frozen=True)
    class NoPredicate(LogNormal):
        crossbar: Any = "kernel"

    with pytest.raises(ValueError, match=r"device_model\.crossbar"):
        require_device_model("device_model", NoPredicate(0.1, 0.01))
    assert not isinstance(object(), DeviceModel)


# ---------------------------------------------------------------------------
# the engine (evaluate, sweep) runs any device model
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Multiplicative:
    """``w * (1 + sigma * z)`` (``sigma_verified`` where verified), one device
    per weight; a verified weight costs ``verify_cycles`` plus 0 or 1 extra
    cycles drawn at random, so the cost is an outcome of the run. Written only
    against the protocol."""

    sigma: float
    sigma_verified: float
    verify_cycles: float = 4.0
    crossbar: Callable[[str, Any], bool] = _is_kernel
    devices_per_weight: int = 1

    def program_with_cost(self, key, params, verified=None):
        if verified is None:
            verified = jax.tree.map(lambda w: jnp.zeros(jnp.shape(w), bool), params)
        noise_key, cost_key = jax.random.split(key)
        flat = jax.tree_util.tree_leaves_with_path(params)
        masks = jax.tree.leaves(verified)
        out, total, verify, n = [], 0.0, 0.0, 0.0
        for i, ((path, w), m) in enumerate(zip(flat, masks, strict=True)):
            if not self.crossbar(path_str(path), w):
                out.append(w)
                continue
            m = jnp.asarray(m).astype(bool)
            # drawn flat, as docs/device.md advises: the same values as a draw of
            # w.shape, and much faster to compile
            z = jax.random.normal(jax.random.fold_in(noise_key, i), (w.size,), w.dtype)
            z = z.reshape(w.shape)
            s = jnp.where(m, self.sigma_verified, self.sigma).astype(w.dtype)
            out.append(w * (1 + s * z))
            extra = jax.random.bernoulli(
                jax.random.fold_in(cost_key, i), 0.5, (w.size,)
            )
            extra = extra.reshape(w.shape)
            v = jnp.sum(
                jnp.where(m, self.verify_cycles + extra.astype(jnp.float32), 0.0),
                dtype=jnp.float32,
            )
            verify = verify + v
            total = total + v + jnp.sum(~m, dtype=jnp.float32)
            n = n + w.size
        cycles = WriteCycles(
            total=jnp.float32(0) + total,
            verify=jnp.float32(0) + verify,
            exhaustive=jnp.float32(n * (self.verify_cycles + 0.5)),
        )
        return Programmed(
            jax.tree.unflatten(jax.tree.structure(params), out),
            cycles,
            jnp.zeros((), jnp.int32),
        )

    def program(self, key, params, verified=None):
        return self.program_with_cost(key, params, verified).params

    def write_cycles(self, verified, params=None, *, key=None):
        return self.program_with_cost(key, params, verified).cycles


@dataclasses.dataclass(frozen=True)
class Opaque:
    """Any device model with its closed form hidden: the engine must take the
    generic path (program per trial)."""

    inner: Any

    @property
    def crossbar(self):
        return self.inner.crossbar

    @property
    def devices_per_weight(self):
        return self.inner.devices_per_weight

    def program(self, key, params, verified=None):
        return self.inner.program(key, params, verified)

    def program_with_cost(self, key, params, verified=None):
        return self.inner.program_with_cost(key, params, verified)

    def write_cycles(self, verified, params=None, *, key=None):
        return self.inner.write_cycles(verified, params, key=key)


def _accuracy(apply_fn, params, x, y):
    return float(np.mean(np.asarray(jnp.argmax(apply_fn(params, x), -1) == y)))


def _mlp_problem(dtype=jnp.float32):
    from _toy import mlp_apply, toy_problem

    params, x, y = toy_problem(n=64)
    cast = lambda t: jax.tree.map(lambda a: a.astype(dtype), t)
    order = uswim_jax.global_order(uswim_jax.magnitude_score(params))
    labels = y.astype(jnp.int64) if dtype == jnp.float64 else y  # argmax's dtype
    return mlp_apply, cast(params), x.astype(dtype), labels, order


def check_engine(model, apply_fn, params, x, y, order, key, num_trials=5):
    """evaluate and sweep under ``model``: trial t is the chip
    ``model.program(fold_in(key, t), ...)``; same key -> same result; a prefix
    of trials is stable; the sweep's steps are evaluate's, its cycles the mean
    run cost over the exhaustive cost of the run with split(key)[1]."""
    n = int(order.shape[0])
    counts = jnp.asarray([0, n // 3, n], jnp.int32)
    masks = [uswim_jax.mask_from_order(order, params, count=int(c)) for c in counts]

    @functools.partial(jax.jit, static_argnums=(2, 3))
    def ev(k, m, trials, chunk):
        return uswim_jax.evaluate(
            k, apply_fn, params, x, y, model, m, trials, chunk_size=chunk
        ).accuracies

    cost = jax.jit(lambda k, m: model.program_with_cost(k, params, m))
    acc = np.asarray(ev(key, masks[1], num_trials, 2))
    np.testing.assert_array_equal(acc, ev(key, masks[1], num_trials, 2))
    np.testing.assert_array_equal(acc, ev(key, masks[1], num_trials, None))
    np.testing.assert_array_equal(acc[:2], ev(key, masks[1], 2, 2))  # a prefix
    for t in (0, num_trials - 1):
        chip = cost(jax.random.fold_in(key, t), masks[1]).params
        assert acc[t] == pytest.approx(_accuracy(apply_fn, chip, x, y), abs=1e-6)
    curve = jax.jit(
        lambda k: uswim_jax.sweep(
            k, apply_fn, params, x, y, model, order, counts, num_trials, chunk_size=2
        )
    )(key)
    ex = float(cost(jax.random.split(key)[1], masks[-1]).cycles.total)
    for k, m in enumerate(masks):
        direct = ev(key, m, num_trials, 2)
        np.testing.assert_array_equal(curve.accuracies[k], direct)
        runs = [cost(jax.random.fold_in(key, t), m).cycles for t in range(num_trials)]
        want = np.mean([float(r.total) for r in runs]) / ex
        assert float(curve.cycles[k]) == pytest.approx(want, rel=1e-5)
    np.testing.assert_array_equal(curve.accuracies[-1], curve.reference)
    np.testing.assert_array_equal(curve.accuracies[0], curve.baseline)
    return acc, curve


def test_user_model_runs_through_evaluate_and_sweep(key):
    apply_fn, params, x, y, order = _mlp_problem()
    model = Multiplicative(0.8, 0.05, crossbar=uswim_jax.default_crossbar)
    assert not isinstance(model, ClosedFormStd)
    acc, curve = check_engine(model, apply_fn, params, x, y, order, key)
    assert acc.std() > 0  # the noise reaches the model
    # the cost is stochastic: more verified weights, more cycles, about 1 at the end
    assert np.all(np.diff(np.asarray(curve.cycles)) > 0)
    assert float(curve.cycles[-1]) == pytest.approx(1.0, rel=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", _user_models.KINDS)
def test_user_model_on_every_framework(kind, key):
    apply_fn, params, _, _ = _user_models.build(kind, jax.random.key(0))
    x, y = _user_models.make_data(apply_fn, params, jax.random.key(1), n=16)
    order = uswim_jax.global_order(uswim_jax.magnitude_score(params))
    model = Multiplicative(0.8, 0.05, crossbar=uswim_jax.default_crossbar)
    check_engine(model, apply_fn, params, x, y, order, key, 3)


def test_user_model_on_a_lax_cnn(key):
    apply_fn, params, _, _ = _user_models.build("lax", jax.random.key(0))
    x, y = _user_models.make_data(apply_fn, params, jax.random.key(1), n=16)
    order = uswim_jax.global_order(uswim_jax.magnitude_score(params))
    check_engine(
        Multiplicative(0.8, 0.05, crossbar=uswim_jax.default_crossbar),
        apply_fn,
        params,
        x,
        y,
        order,
        key,
        3,
    )


def test_pulse_model_runs_through_evaluate(key):
    apply_fn, params, x, y, order = _mlp_problem()
    check_engine(PulseModel(sigma=0.8), apply_fn, params, x, y, order, key, 3)


@pytest.mark.parametrize("name", GAUSSIAN)
def test_generic_path_is_the_fast_path_in_float64(name, key):
    """A closed-form model with its closed form hidden goes through the generic
    path (program per trial): the same accuracies, bit for bit in float64, and
    the same cycles."""
    with jax.enable_x64(True):
        apply_fn, params, x, y, order = _mlp_problem(jnp.float64)
        fast = MODELS[name](0.7)
        slow = Opaque(fast)
        assert isinstance(fast, ClosedFormStd) and not isinstance(slow, ClosedFormStd)
        n = int(order.shape[0])
        counts = jnp.asarray([0, n // 4, n // 2, n], jnp.int32)
        mask = uswim_jax.mask_from_order(order, params, count=n // 2)
        runs = [
            uswim_jax.evaluate(key, apply_fn, params, x, y, m, mask, 6, chunk_size=4)
            for m in (fast, slow)
        ]
        np.testing.assert_array_equal(runs[0].accuracies, runs[1].accuracies)
        a, b = (
            uswim_jax.sweep(key, apply_fn, params, x, y, m, order, counts, 6)
            for m in (fast, slow)
        )
        for field in ("accuracies", "reference", "baseline"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        for field in ("cycles", "cycles_verified_only", "baseline_cycles"):
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-6)


def test_device_keyword_is_deprecated(key):
    apply_fn, params, x, y, order = _mlp_problem()
    model = UniformVariation(0.7, 0.07)
    new = uswim_jax.evaluate(key, apply_fn, params, x, y, device_model=model)
    with pytest.warns(DeprecationWarning, match="device_model"):
        old = uswim_jax.evaluate(key, apply_fn, params, x, y, device=model)
    np.testing.assert_array_equal(new.accuracies, old.accuracies)
    counts = jnp.asarray([0, 8], jnp.int32)
    with pytest.warns(DeprecationWarning, match="device_model"):
        curve = uswim_jax.sweep(
            key,
            apply_fn,
            params,
            x,
            y,
            device=model,
            order=order,
            counts=counts,
            num_trials=3,
        )
    assert curve.accuracies.shape == (2, 3)
    with pytest.raises(ValueError, match="once"):
        uswim_jax.evaluate(key, apply_fn, params, x, y, model, device=model)


@pytest.mark.parametrize("bad", [None, object(), jax.devices()[0], "uniform"])
def test_engine_refuses_what_is_not_a_device_model(bad, key):
    apply_fn, params, x, y, order = _mlp_problem()
    counts = jnp.asarray([0], jnp.int32)
    with pytest.raises(ValueError, match="device_model must be a device model"):
        uswim_jax.evaluate(key, apply_fn, params, x, y, bad)
    with pytest.raises(ValueError, match="device_model must be a device model"):
        uswim_jax.sweep(key, apply_fn, params, x, y, bad, order, counts, 2)
