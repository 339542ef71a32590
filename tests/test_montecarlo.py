"""Monte Carlo engine: trial keys, chunking, sharding, statistics."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _toy import mlp_apply, toy_problem

import uswim_jax as u
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


def test_sharded_equals_unsharded():
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
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout
