"""Monte Carlo engine: trial keys, chunking, sharding, statistics."""

import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _toy import mlp_apply, toy_problem

import uswim_jax as u
from uswim_jax import stats
from uswim_jax.montecarlo import evaluate, noisy_accuracy, summarize, trial_keys


@pytest.fixture(scope="module")
def problem():
    return toy_problem()


DEVICE = u.UniformVariation(0.5, 0.05)


def test_vmapped_trial_equals_trial_alone(problem):
    params, x, y = problem
    key = jax.random.key(3)
    res = evaluate(key, mlp_apply, params, x, y, DEVICE, None, 8)
    std = DEVICE.effective_std(params, None)
    for t in (0, 5, 7):
        alone = noisy_accuracy(jax.random.fold_in(key, t), mlp_apply, params, std, x, y)
        assert float(alone) == float(res.accuracies[t])
        # and the same as perturb + a plain forward pass
        noisy = u.perturb(jax.random.fold_in(key, t), params, DEVICE)
        acc = jnp.mean(jnp.argmax(mlp_apply(noisy, x), -1) == y)
        assert float(acc) == pytest.approx(float(alone), abs=1e-7)


def test_100_trials_are_a_prefix_of_1000(problem):
    params, x, y = problem
    key = jax.random.key(4)
    a = evaluate(key, mlp_apply, params, x, y, DEVICE, None, 100)
    b = evaluate(key, mlp_apply, params, x, y, DEVICE, None, 1000, chunk_size=250)
    np.testing.assert_array_equal(a.accuracies, b.accuracies[:100])


def test_chunked_equals_unchunked(problem):
    params, x, y = problem
    key = jax.random.key(5)
    a = evaluate(key, mlp_apply, params, x, y, DEVICE, None, 30)
    b = evaluate(key, mlp_apply, params, x, y, DEVICE, None, 30, chunk_size=7)
    c = evaluate(key, mlp_apply, params, x, y, DEVICE, None, 30, eval_batch_size=100)
    np.testing.assert_array_equal(a.accuracies, b.accuracies)
    np.testing.assert_array_equal(a.accuracies, c.accuracies)


def test_sigma_zero_gives_clean_accuracy_and_verify_helps(problem):
    params, x, y = problem
    key = jax.random.key(6)
    clean = evaluate(
        key, mlp_apply, params, x, y, u.UniformVariation(0.0, 0.0), None, 4
    )
    np.testing.assert_array_equal(clean.accuracies, np.ones(4))
    every = jax.tree.map(lambda w: jnp.ones(w.shape, bool), params)
    noisy = evaluate(key, mlp_apply, params, x, y, DEVICE, None, 200)
    verified = evaluate(key, mlp_apply, params, x, y, DEVICE, every, 200)
    assert float(verified.mean) > float(noisy.mean) + 5 * float(noisy.std) / np.sqrt(
        200
    )


def test_summary_statistics():
    acc = jnp.asarray(np.linspace(0.0, 1.0, 101), jnp.float32)
    s = summarize(acc)
    assert float(s.mean) == pytest.approx(0.5)
    assert float(s.std) == pytest.approx(
        np.std(np.linspace(0, 1, 101), ddof=1), rel=1e-5
    )
    assert float(s.p1) == pytest.approx(0.01, abs=1e-6)
    assert float(s.p5) == pytest.approx(0.05, abs=1e-6)
    half = 1.96 * float(s.std) / np.sqrt(101)
    np.testing.assert_allclose(s.ci95, [0.5 - half, 0.5 + half], rtol=1e-3)
    # one definition of the CI: the stats module's, in float64
    mean, half64 = stats.mean_ci95(np.linspace(0.0, 1.0, 101))
    assert stats.Z95 == pytest.approx(1.959963984540054, abs=0)
    np.testing.assert_allclose(s.ci95, [mean - half64, mean + half64], rtol=1e-6)
    assert stats.mean_ci95([0.3])[1] == 0.0


def test_trial_keys_fold_in():
    key = jax.random.key(0)
    ks = trial_keys(key, 3, start=2)
    for i, k in enumerate(ks):
        np.testing.assert_array_equal(
            jax.random.key_data(k), jax.random.key_data(jax.random.fold_in(key, i + 2))
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_trials": 0}, "num_trials"),
        ({"x": jnp.zeros((0, 8))}, "at least one sample"),
        ({"y": jnp.zeros((3,), jnp.int32)}, "y must have shape"),
        ({"verified": {"l1": True}}, "verified"),
        ({"x": jnp.full((256, 8), jnp.nan)}, "x contains NaN"),
    ],
)
def test_bad_input(problem, kwargs, match):
    params, x, y = problem
    args = {"x": x, "y": y, "verified": None, "num_trials": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        evaluate(
            jax.random.key(0),
            mlp_apply,
            params,
            args["x"],
            args["y"],
            DEVICE,
            args["verified"],
            args["num_trials"],
        )


def test_nan_params_rejected(problem):
    params, x, y = problem
    bad = jax.tree.map(lambda w: w, params)
    bad["l1"]["kernel"] = bad["l1"]["kernel"].at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="NaN"):
        evaluate(jax.random.key(0), mlp_apply, bad, x, y, DEVICE, None, 2)


def test_sharded_equals_unsharded(run_python):
    """Four forced CPU devices, in a separate process (the flag is global)."""
    here = os.path.dirname(__file__)
    code = textwrap.dedent(
        """
        import sys, jax, numpy as np
        sys.path.insert(0, {here!r})
        assert jax.local_device_count() == 4, jax.local_devices()
        import uswim_jax as u
        from uswim_jax.montecarlo import evaluate
        from _toy import mlp_apply, toy_problem
        params, x, y = toy_problem()
        dev = u.UniformVariation(0.5, 0.05)
        key = jax.random.key(9)
        a = evaluate(key, mlp_apply, params, x, y, dev, None, 30)
        b = evaluate(key, mlp_apply, params, x, y, dev, None, 30, shard=True)
        c = evaluate(key, mlp_apply, params, x, y, dev, None, 30, shard=True,
                     chunk_size=3)
        np.testing.assert_array_equal(a.accuracies, b.accuracies)
        np.testing.assert_array_equal(a.accuracies, c.accuracies)
        print("OK")
        """
    ).format(here=here)
    env = {
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    out = run_python(code, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout


def test_auto_chunk_gives_the_same_trials(problem, monkeypatch):
    """``chunk_size="auto"`` (the default) gives per-trial accuracies identical
    to explicit chunk sizes, also when the memory budget forces several chunks
    (a tiny free-memory figure makes the choice non-trivial)."""
    from uswim_jax import _chunking, montecarlo

    params, x, y = problem
    key = jax.random.key(11)
    ref = evaluate(key, mlp_apply, params, x, y, DEVICE, None, 30, chunk_size=None)
    for kw in ({}, {"chunk_size": "auto"}, {"chunk_size": 7}, {"chunk_size": 1}):
        got = evaluate(key, mlp_apply, params, x, y, DEVICE, None, 30, **kw)
        np.testing.assert_array_equal(got.accuracies, ref.accuracies, err_msg=kw)
    per_trial = 2 * (
        montecarlo.forward_bytes(mlp_apply, params, x)
        + 4 * sum(p.nbytes for p in jax.tree.leaves(params))
    )
    monkeypatch.setattr(
        _chunking, "_free_memory_bytes", lambda device: 2 * 7 * per_trial
    )
    # the memory bound: an MLP's matmuls are all each trial's own, so on CPU
    # "auto" would run it one trial at a time (own_mac_share); that rule off
    monkeypatch.setattr(_chunking, "AUTO_OWN_MAC_SHARE", 1.0)
    chunk = montecarlo.auto_chunk_size(mlp_apply, params, x, 30)
    assert chunk == 6  # 7 fit, 6 is the largest divisor of 30 in (3.5, 7]
    got = evaluate(key, mlp_apply, params, x, y, DEVICE, None, 30)
    np.testing.assert_array_equal(got.accuracies, ref.accuracies)
    with pytest.raises(ValueError, match="chunk_size"):
        evaluate(key, mlp_apply, params, x, y, DEVICE, None, 3, chunk_size="big")


@pytest.mark.parametrize(
    "args, kwargs, want",
    [
        ((100, 10, 10_000), {}, 100),  # everything fits
        ((100, 10, 35), {}, 2),  # 3 fit; 2 is the largest divisor in (1.5, 3]
        ((100, 10, 5), {}, 1),  # not even one fits: one at a time
        ((30, 10, 75), {}, 6),  # 7 fit; 6 divides 30
        ((97, 1, 10), {}, 10),  # prime: no divisor in (5, 10], uneven chunks
        ((100, 1, 10**9), {"block_bytes": 3, "cache_bytes": 16}, 5),  # cache: 5
        ((7, 1, 10**9), {"block_bytes": 3, "cache_bytes": 16}, 5),  # no divisor
        ((100, 1, 10**9), {"block_bytes": 50, "cache_bytes": 16}, 2),  # min_chunk
        ((100, 10, 15), {"block_bytes": 50, "cache_bytes": 16}, 1),  # memory wins
        ((1, 10, 15), {"block_bytes": 50, "cache_bytes": 16}, 1),  # one trial
        ((3, 1, 10**9), {"block_bytes": 1, "cache_bytes": 16}, 3),  # <= trials
    ],
)
def test_choose_chunk_size(args, kwargs, want):
    from uswim_jax.montecarlo import choose_chunk_size

    got = choose_chunk_size(*args, **kwargs)
    assert got == want
    t, trial, budget = args
    assert 1 <= got <= t
    assert got == 1 or got * trial <= budget


def test_choose_chunk_size_rejects_bad_sizes():
    from uswim_jax.montecarlo import choose_chunk_size

    with pytest.raises(ValueError):
        choose_chunk_size(0, 1, 1)
    with pytest.raises(ValueError):
        choose_chunk_size(10, 0, 1)
    with pytest.raises(ValueError, match="block_bytes"):
        choose_chunk_size(10, 1, 1, cache_bytes=16)


def test_forward_bytes_counts_live_values():
    """``x * 2`` then ``+ 1``: both 4,000-byte values are live at the add, the
    input is not counted; a third step after the first value dies stays at the
    same peak."""
    from uswim_jax.montecarlo import forward_bytes

    x = jax.ShapeDtypeStruct((1000,), jnp.float32)
    assert forward_bytes(lambda p, v: v * 2 + p, jnp.float32(1), x) == 8000
    assert forward_bytes(lambda p, v: ((v * 2) + p) * 3, jnp.float32(1), x) == 8000


def test_params_only_steps_run_once_before_the_batches():
    """``split_params_only`` moves the kernel transpose (params only, not
    larger than its input) into ``prepare`` and leaves the bias broadcast to the
    activations' shape (larger than the bias) in ``apply``; the function is the
    same."""
    from uswim_jax.montecarlo import split_params_only

    def f(p, x):
        return jnp.dot(jnp.transpose(p["w"]), x) + jnp.reshape(p["b"], (-1, 1))

    k1, k2 = jax.random.split(jax.random.key(0))
    p = {"w": jax.random.normal(k1, (6, 4)), "b": jnp.arange(4.0)}
    x = jax.random.normal(k2, (6, 50))
    prepare, apply = split_params_only(f, p, x)
    prepared = prepare(p)
    shapes = sorted(v.shape for v in prepared)
    assert (4, 6) in shapes  # the transposed kernel
    assert all(v.size <= 24 for v in prepared)  # no (4, 50) broadcast
    np.testing.assert_array_equal(apply(prepared, x), f(p, x))


# -- eval_batch_size="auto" ------------------------------------------------------


@pytest.mark.parametrize("kind", ["lax", "linen", "nnx", "equinox"])
def test_auto_image_batch_gives_the_same_trials(kind, monkeypatch):
    """``eval_batch_size="auto"`` (the default) with a cache small enough that
    it batches 23 images into 16 + 7 padded: per-trial accuracies of
    ``evaluate`` and ``sweep`` equal those over all images at once (float64,
    so padding and batching change no sum beyond 1e-15)."""
    import _user_models as um

    from uswim_jax import _chunking

    monkeypatch.setattr(_chunking, "_last_level_cache_bytes", lambda: 2**16)
    apply_fn, params, _, _ = um.build(kind, jax.random.key(0))
    x, _ = um.make_data(apply_fn, params, jax.random.key(1), n=23)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x = jnp.asarray(x, jnp.float64)
        y = jnp.argmax(apply_fn(params, x), -1).astype(jnp.int32)
        b = _chunking.auto_eval_batch_size(apply_fn, params, x, "auto")
        assert b == _chunking.AUTO_MIN_EVAL_BATCH  # 16: batches of 16 and 7
        device = u.UniformVariation(1.0, 0.1)
        key = jax.random.key(4)
        auto = evaluate(key, apply_fn, params, x, y, device, None, 6)
        whole = evaluate(
            key, apply_fn, params, x, y, device, None, 6, eval_batch_size=None
        )
        np.testing.assert_array_equal(auto.accuracies, whole.accuracies)
        assert np.std(np.asarray(whole.accuracies)) > 0  # the noise acts
        order = u.global_order(u.magnitude_score(params))
        counts = jnp.asarray([0, u.crossbar_size(params) // 2])
        a = u.sweep(key, apply_fn, params, x, y, device, order, counts, 6)
        w = u.sweep(
            key, apply_fn, params, x, y, device, order, counts, 6, eval_batch_size=None
        )
        np.testing.assert_array_equal(a.accuracies, w.accuracies)


def test_auto_image_batch_grows_with_the_cache_and_refuses_bad_values(problem):
    from uswim_jax import _chunking

    params, x, y = problem
    n = x.shape[0]
    assert _chunking.auto_eval_batch_size(mlp_apply, params, x, None) is None
    assert _chunking.auto_eval_batch_size(mlp_apply, params, x, 7) == 7
    b = _chunking.auto_eval_batch_size(mlp_apply, params, x, "auto")
    assert 1 <= b <= n
    # a cache share of one image's bytes per trial: the floor; a huge one: all
    tiny = _chunking.choose_eval_batch_size(n, 1000, 0, 5 * 1000)
    assert tiny == min(n, _chunking.AUTO_MIN_EVAL_BATCH)
    assert _chunking.choose_eval_batch_size(n, 1000, 0, 2**40) == n
    for bad in ("all", 0, -3, 2.5, True):
        with pytest.raises(ValueError, match="eval_batch_size"):
            evaluate(
                jax.random.key(0), mlp_apply, params, x, y, DEVICE, None, 2,
                eval_batch_size=bad,
            )  # fmt: skip


def test_auto_image_batch_on_lenet_is_the_fastest_measured_setting(monkeypatch):
    """With a 32 MiB last-level cache (the 2-core CI machine's), the project
    LeNet over 2,000 images gets 40 images x 4 trials, the fastest LeNet
    setting the calibration run measured (``_chunking.AUTO_CACHE_FRACTION``)."""
    from uswim_jax import _chunking
    from uswim_jax.models import build_model

    monkeypatch.setattr(_chunking, "_last_level_cache_bytes", lambda: 32 * 2**20)
    model = build_model("lenet")
    params = model.init(jax.random.key(0))
    x = jnp.zeros((2000, 28, 28, 1))
    b = _chunking.auto_eval_batch_size(model.apply_fn, params, x, "auto")
    assert b == 40
    assert u.montecarlo.auto_chunk_size(model.apply_fn, params, x, 100, b) == 4


def _user_mlp(kind: str):
    """A 32 -> 64 -> 4 MLP (layers ``l1``, ``l2``; 2,048 + 256 multiply-
    accumulates per image) written as plain lax, flax.linen, flax.nnx or
    equinox."""
    k1, k2 = jax.random.split(jax.random.key(0))
    if kind == "lax":
        params = {
            "l1": {"w": jax.random.normal(k1, (32, 64)) / 6},
            "l2": {"w": jax.random.normal(k2, (64, 4)) / 8},
        }
        return (lambda p, x: jnp.tanh(x @ p["l1"]["w"]) @ p["l2"]["w"]), params
    if kind == "linen":
        from flax import linen as nn

        class Mlp(nn.Module):
            @nn.compact
            def __call__(self, x):
                return nn.Dense(4, name="l2")(jnp.tanh(nn.Dense(64, name="l1")(x)))

        m = Mlp()
        return m.apply, m.init(k1, jnp.zeros((1, 32)))
    if kind == "nnx":
        from flax import nnx

        class Mlp(nnx.Module):
            def __init__(self, rngs):
                self.l1 = nnx.Linear(32, 64, rngs=rngs)
                self.l2 = nnx.Linear(64, 4, rngs=rngs)

            def __call__(self, x):
                return self.l2(jnp.tanh(self.l1(x)))

        graphdef, state = nnx.split(Mlp(nnx.Rngs(0)))
        return (lambda s, x: nnx.merge(graphdef, s)(x)), state
    import equinox as eqx

    class Mlp(eqx.Module):
        l1: eqx.nn.Linear
        l2: eqx.nn.Linear

        def __call__(self, x):  # one sample
            return self.l2(jnp.tanh(self.l1(x)))

    net = Mlp(eqx.nn.Linear(32, 64, key=k1), eqx.nn.Linear(64, 4, key=k2))
    params, static = eqx.partition(net, eqx.is_array)
    return (lambda p, x: jax.vmap(eqx.combine(p, static))(x)), params


def _kernels_of(*layers):
    """A crossbar predicate: the kernels (2-D leaves) of the named layers."""
    return lambda path, leaf: (
        np.ndim(leaf) >= 2 and any(name in path.split("/") for name in layers)
    )


@pytest.mark.parametrize("kind", ["lax", "linen", "nnx", "equinox"])
def test_auto_runs_an_mlp_one_trial_at_a_time_on_cpu(kind):
    """On CPU, ``chunk_size="auto"`` runs a model whose matmuls are each
    trial's own (an MLP on the crossbar) one trial at a time, in every
    framework; with its first layer off the crossbar, that layer (8/9 of the
    multiply-accumulates) is shared by all the trials of a chunk, and the chunk
    is the one the sizes give. ``"measure"`` still times that chunk beside one
    trial at a time, and the default gives the trials of one-chunk runs."""
    from uswim_jax import _chunking

    assert jax.default_backend() == "cpu"
    apply_fn, params = _user_mlp(kind)
    x = jax.random.normal(jax.random.key(1), (48, 32))
    y = jnp.argmax(apply_fn(params, x), -1)
    own = u.crossbar_flags(params, _kernels_of("l1", "l2"))
    assert _chunking.own_mac_share(apply_fn, params, x, 48, own) == 1.0
    assert _chunking.auto_chunk_size(apply_fn, params, x, 12, None, own) == 1
    sized = _chunking._sized_chunk(apply_fn, params, x, 12, 48, own, False)
    assert sized > 1
    cands = _chunking.size_candidates(apply_fn, params, x, 12, None, batched=own)
    assert cands[:2] == [(1, None, None), (sized, None, None)]

    head = u.crossbar_flags(params, _kernels_of("l2"))
    share = _chunking.own_mac_share(apply_fn, params, x, 48, head)
    assert share == pytest.approx(256 / (2048 + 256))
    got = _chunking.auto_chunk_size(apply_fn, params, x, 12, None, head)
    assert got == _chunking._sized_chunk(apply_fn, params, x, 12, 48, head, False)
    assert got > 1

    device = u.UniformVariation(0.3, 0.03, crossbar=_kernels_of("l1", "l2"))
    key = jax.random.key(2)
    ref = evaluate(key, apply_fn, params, x, y, device, None, 12, chunk_size=None)
    got = evaluate(key, apply_fn, params, x, y, device, None, 12)
    np.testing.assert_array_equal(got.accuracies, ref.accuracies)


@pytest.mark.parametrize("kind", ["lax", "linen", "nnx", "equinox"])
def test_auto_batches_the_trials_of_a_users_cnn(kind):
    """A CNN's convolutions have per-trial kernels (rewritten for the trials of
    a chunk together): the tiny user CNN's own share is its dense layers'
    (72 x 16 + 16 x 4 of 3,600 + 2,592 + 1,216 multiply-accumulates per
    image), the same in every framework, and ``"auto"`` batches its trials."""
    from _user_models import build

    from uswim_jax import _chunking

    apply_fn, params, _, _ = build(kind, jax.random.key(0))
    x = jnp.zeros((32, 12, 12, 1))
    flags = u.crossbar_flags(params)
    share = _chunking.own_mac_share(apply_fn, params, x, 32, flags)
    assert share == pytest.approx(1216 / (3600 + 2592 + 1216))
    got = _chunking.auto_chunk_size(apply_fn, params, x, 12, None, flags)
    assert got == _chunking._sized_chunk(apply_fn, params, x, 12, 32, flags, False)
    assert got > 1


def test_auto_image_batch_is_a_multiple_of_the_vector_width():
    """Batched images are a multiple of ``AUTO_BATCH_MULTIPLE`` (an exact
    divisor of the image count when one is near, else the last batch is
    padded); all images when they fit in one pass."""
    from uswim_jax._chunking import AUTO_BATCH_MULTIPLE as m
    from uswim_jax._chunking import choose_eval_batch_size

    for n in (23, 999, 1000, 2000, 4096, 10000):
        for cache in (2**20, 2**23, 2**25, 2**27):
            b = choose_eval_batch_size(n, 2**15, 2**16, cache)
            assert b == n or (b % m == 0 and b < n), (n, cache, b)
            big = (cache // 4 - 2**16) // 2**15
            assert b <= max(16, big, m) or b == n
    assert choose_eval_batch_size(2000, 2**15, 0, 2**40) == 2000  # all fit
    with pytest.raises(ValueError, match="multiple"):
        choose_eval_batch_size(100, 10, 0, 2**20, multiple=0)


def test_auto_image_batch_pads_less_than_a_vector_width_per_batch():
    """Where no batch near the cache-sized one divides the images, the batches
    are balanced: as many as the cache-sized batch needs, each padded by less
    than ``AUTO_BATCH_MULTIPLE`` images (500 images at most 448 a pass: two of
    256, not two of 448 with 396 padded)."""
    from uswim_jax._chunking import AUTO_BATCH_MULTIPLE as m
    from uswim_jax._chunking import choose_eval_batch_size

    assert choose_eval_batch_size(500, 2**14, 2**20, 32 * 2**20) == 256
    for n in range(17, 3000, 37):
        for cache in (2**21, 2**23, 2**25):
            b = choose_eval_batch_size(n, 2**12, 2**16, cache)
            if b == n:
                continue
            cap = max(16, (cache // 4 - 2**16) // 2**12)
            top = max(m, cap - cap % m)
            batches = -(-n // b)
            assert b % m == 0 and b <= top, (n, cache, b)
            assert batches == -(-n // top) or n % b == 0, (n, cache, b)
            assert batches * b - n < m * batches, (n, cache, b)


def test_automatic_sizes_trace_a_model_once_per_shape(problem):
    """The sizes ``"auto"`` needs are traced once per apply_fn and shapes:
    a repeated un-jitted ``evaluate`` does not trace the model again for
    them, and a new image shape or a new apply_fn is traced afresh."""
    from uswim_jax import _chunking

    params, x, y = problem
    calls = []

    def apply_fn(p, xs):
        calls.append(xs.shape)
        return mlp_apply(p, xs)

    first = _chunking.auto_eval_batch_size(apply_fn, params, x, "auto")
    c1 = _chunking.auto_chunk_size(apply_fn, params, x, 10, first)
    traced = len(calls)
    assert traced >= 2  # at 1 and at 64 (or all) images
    assert _chunking.auto_eval_batch_size(apply_fn, params, x, "auto") == first
    assert _chunking.auto_chunk_size(apply_fn, params, x, 10, first) == c1
    assert len(calls) == traced
    _chunking.auto_eval_batch_size(apply_fn, params, x[:-1], "auto")
    assert len(calls) == traced  # still traced at 1 and 64 images: known
    _chunking.auto_eval_batch_size(apply_fn, params, x[:40], "auto")
    assert calls[traced:] == [(40, x.shape[1])]  # 40 < 64 images: traced
    other = lambda p, xs: apply_fn(p, xs)  # noqa: E731
    n = len(calls)
    _chunking.auto_eval_batch_size(other, params, x, "auto")
    assert len(calls) > n


def test_resolved_sizes_are_the_image_batch_then_the_chunk_for_it(problem):
    """``resolve_sizes`` (what evaluate, sweep and program_chips call) resolves
    the image batch first and the chunk for that batch; given values pass,
    and no policy is set outside ``"measure"``."""
    from uswim_jax import _chunking

    params, x, _ = problem
    b = _chunking.auto_eval_batch_size(mlp_apply, params, x, "auto")
    c = _chunking.auto_chunk_size(mlp_apply, params, x, 10, b)
    assert _chunking.resolve_sizes(mlp_apply, params, x, 10) == (c, b, None)
    assert _chunking.resolve_sizes(mlp_apply, params, x, 10, 3, None) == (3, None, None)
    c_all = _chunking.auto_chunk_size(mlp_apply, params, x, 10, None)
    got = _chunking.resolve_sizes(mlp_apply, params, x, 10, "auto", None)
    assert got == (c_all, None, None)
    with pytest.raises(ValueError, match="eval_batch_size"):
        _chunking.resolve_sizes(mlp_apply, params, x, 10, 3, "all")
