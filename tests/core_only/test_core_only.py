"""The core with JAX and NumPy alone: ``make test-floor`` runs this file in a
fresh venv holding only the oldest jax/jaxlib/numpy that pyproject.toml allows
(no flax, no optax), with the package installed ``--no-deps``; the default suite
runs it too. A plain-lax CNN through evaluate, the one-pass curvature, the
scores, the selection and a sweep."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from _user_models import KERNEL_COUNT, build, make_data

import uswim_jax as uj


def test_the_core_imports_no_framework():
    """A fresh interpreter that imports the core holds no flax, optax or
    tensorflow_datasets (whether or not they are installed)."""
    code = "import sys, uswim_jax; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    top = {m.split(".")[0] for m in out.stdout.split()}
    assert "uswim_jax" in top
    assert not {"flax", "optax", "equinox", "tensorflow_datasets"} & top


def test_evaluate_curvature_selection_and_sweep_on_plain_lax():
    apply_fn, params, _, _ = build("lax", jax.random.key(0))
    x, y = make_data(apply_fn, params, jax.random.key(1), n=16)
    assert uj.crossbar_size(params) == KERNEL_COUNT
    device = uj.UniformVariation(sigma=3.0, sigma_verified=0.0)
    stats = uj.evaluate(jax.random.key(2), apply_fn, params, x, y, device, None, 4)
    assert float(stats.mean) < 1.0  # the noise reaches the model

    hess, grad = uj.obd_over_dataset(apply_fn, params, x, y)
    assert float(jnp.min(hess["dense2"]["w"])) >= 0  # p(1 - p) >= 0, last layer
    order = uj.global_order(uj.swim_score(params, hess, grad))
    assert sorted(np.asarray(order).tolist()) == list(range(KERNEL_COUNT))
    every = uj.mask_from_order(order, params, fraction=1.0)

    # sigma_verified = 0: verifying everything gives back the clean model
    exact = uj.evaluate(jax.random.key(2), apply_fn, params, x, y, device, every, 4)
    np.testing.assert_array_equal(exact.accuracies, 1.0)
    counts = jnp.asarray([0, KERNEL_COUNT], jnp.int32)
    ends = {"reference": exact.accuracies, "baseline": stats.accuracies}
    curve = uj.sweep(
        jax.random.key(2), apply_fn, params, x, y, device, order, counts, 4, **ends
    )
    # the steps are computed by the scan; they match evaluate at each budget
    np.testing.assert_array_equal(curve.accuracies[0], stats.accuracies)
    np.testing.assert_array_equal(curve.accuracies[1], 1.0)
