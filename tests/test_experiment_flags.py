"""The ablation switches of ExperimentConfig and how the pipeline uses them."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _toy import mlp_apply, toy_problem

from uswim_jax import curvature, selection
from uswim_jax.experiment import ExperimentConfig, Setting, config_hash, method_order
from uswim_jax.experiment.units import _mc_device
from uswim_jax.programming import PulseModel


def test_defaults_keep_the_config_hash():
    """At their defaults the switches are absent from the JSON, so run folders
    made before they existed keep their hash (and resume)."""
    c = ExperimentConfig()
    d = c.to_json()
    for k in ("first_order", "k_power", "avg_pool", "q_scale", "curvature_augment"):
        assert k not in d
    assert "width" not in d["train"]  # a new TrainConfig field, unset
    changed = dataclasses.replace(c, k_power=2).to_json()
    assert changed["k_power"] == 2
    assert config_hash(changed) != config_hash(d)


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"k_power": 3}, "k_power"),
        ({"avg_pool": "mean"}, "avg_pool"),
        ({"q_scale": "squared"}, "q_scale"),
        ({"q_scale": "authors"}, "quantized"),  # float model: no Q layers
        ({"programming": "spice"}, "programming"),
        ({"first_order": 1}, "first_order"),
        ({"programming": "pulse"}, "s_values"),
        ({"finetune_steps": -1}, "finetune_steps"),
        ({"finetune_sigma": -0.1}, "finetune_sigma"),
    ],
)
def test_bad_flags_are_refused(kw, name):
    with pytest.raises(ValueError, match=name):
        ExperimentConfig(**kw)


def test_pulse_device_and_order():
    params, _, _ = toy_problem()
    c = ExperimentConfig(programming="pulse", s_values=())
    s = Setting(0.3, None, 0.1)
    dev = _mc_device(s, c)
    assert isinstance(dev, PulseModel)
    np.testing.assert_allclose(float(dev.tolerance), 0.0305, rtol=1e-6)
    sens = {"obd": jax.tree.map(jnp.abs, params)}
    # expected-loss orders under the pulse model use the Gaussian equivalent
    a = method_order("eloss-obd", params, sens, s, dev, 0)
    b = method_order("eloss-obd", params, sens, s, s.device(10.0), 0)
    np.testing.assert_array_equal(a, b)


def test_first_order_and_k_power_reach_the_scores():
    params, x, y = toy_problem()
    h, g = curvature.obd_over_dataset(mlp_apply, params, x, y)
    sens = {"obd": h, "obd_grad": g}
    s = Setting(0.3, 3.0, 0.1)
    dev = s.device(10.0)
    for fo in (True, False):
        got = method_order("swim", params, sens, s, dev, 0, first_order=fo)
        want = selection.global_order(
            selection.swim_score(params, h, g, first_order=fo)
        )
        np.testing.assert_array_equal(got, want)
    got = method_order("uswim", params, sens, s, dev, 0, k_power=2)
    want = selection.global_order(selection.uswim_score(params, h, g, s=3.0, k_power=2))
    np.testing.assert_array_equal(got, want)


def test_obd_over_dataset_with_augmentation(key):
    params, x, y = toy_problem(n=64)
    plain = curvature.obd_over_dataset(mlp_apply, params, x, y, batch_size=16)
    same = curvature.obd_over_dataset(
        mlp_apply, params, x, y, batch_size=16, augment=lambda k, xb: xb, key=key
    )
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(same), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    seen = []

    def flip(k, xb):
        seen.append(xb.shape)
        return -xb

    flipped = curvature.obd_over_dataset(
        mlp_apply, params, x, y, batch_size=16, augment=flip, key=key
    )
    assert seen  # traced inside the jitted step
    ha, hb = plain[0]["l2"]["kernel"], flipped[0]["l2"]["kernel"]
    assert not np.allclose(ha, hb)
    with pytest.raises(ValueError, match="key"):
        curvature.obd_over_dataset(mlp_apply, params, x, y, augment=flip)


def test_q_scale_reaches_the_sensitivities():
    """``q_scale="authors"`` (quantized models only) changes the one-pass
    diagonal of every layer but the last, and the width reaches the model."""
    from uswim_jax.experiment import compute_sensitivities
    from uswim_jax.models import build_model
    from uswim_jax.train import TrainConfig

    model = build_model("lenet", weight_bits=4)
    params = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    x = rng.random((8, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 8).astype(np.int32)
    out = {}
    for rule in ("exact", "authors"):
        c = ExperimentConfig(
            train=TrainConfig(weight_bits=4), q_scale=rule, methods=("swim",)
        )
        out[rule] = compute_sensitivities(
            model.apply_fn, params, (x, y), c, log=lambda *a: None
        )["obd"]["params"]
    np.testing.assert_array_equal(
        out["exact"]["Dense_2"]["kernel"], out["authors"]["Dense_2"]["kernel"]
    )
    assert not np.allclose(
        out["exact"]["Conv_0"]["kernel"], out["authors"]["Conv_0"]["kernel"]
    )
    wide = ExperimentConfig(train=TrainConfig(model="resnet18", width=8))
    assert wide.to_json()["train"]["width"] == 8


def test_train_subset_limits_every_sensitivity_pass():
    """The sensitivities of a model trained on ``train_subset`` images use
    those images only, exactly as if the training set held no others."""
    from uswim_jax.experiment import compute_sensitivities
    from uswim_jax.train import TrainConfig

    params, x, y = toy_problem(n=32)
    x, y = np.asarray(x), np.asarray(y)
    methods = ("swim", "eloss-ggn", "eloss-fisher")
    quiet = {"log": lambda *a: None}
    subset = ExperimentConfig(train=TrainConfig(train_subset=8), methods=methods)
    got = compute_sensitivities(mlp_apply, params, (x, y), subset, **quiet)
    want = compute_sensitivities(
        mlp_apply, params, (x[:8], y[:8]), ExperimentConfig(methods=methods), **quiet
    )
    full = compute_sensitivities(
        mlp_apply, params, (x, y), ExperimentConfig(methods=methods), **quiet
    )
    for name in ("obd", "obd_grad", "ggn", "fisher"):
        for a, b, c in zip(
            jax.tree.leaves(got[name]),
            jax.tree.leaves(want[name]),
            jax.tree.leaves(full[name]),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)
            assert not np.allclose(a, c)
