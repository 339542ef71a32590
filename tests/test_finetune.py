"""Noise-aware fine-tuning (the authors' in-situ training baseline)."""

import jax
import numpy as np
import pytest

from uswim_jax.data import Dataset
from uswim_jax.device import UniformVariation
from uswim_jax.finetune import FinetuneConfig, noise_aware_finetune
from uswim_jax.models import build_model


def _data(n=64):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    return Dataset(x, y, "synthetic", "generated", "train", 10)


def test_finetune_moves_the_weights_deterministically():
    model = build_model("lenet")
    params = model.init(jax.random.key(0))
    cfg = FinetuneConfig(steps=3, batch_size=16, learning_rate=1e-2)
    dev = UniformVariation(0.3, 0.0)
    a, losses = noise_aware_finetune(model, params, _data(), dev, cfg)
    b, _ = noise_aware_finetune(model, params, _data(), dev, cfg)
    assert len(losses) == 2 and all(np.isfinite(losses))
    la, lb, l0 = (jax.tree.leaves(t) for t in (a, b, params))
    assert any(not np.allclose(u, v) for u, v in zip(la, l0, strict=True))
    for u, v in zip(la, lb, strict=True):
        np.testing.assert_array_equal(u, v)


def test_finetune_config_checks():
    with pytest.raises(ValueError, match="steps"):
        FinetuneConfig(steps=0)
    with pytest.raises(ValueError, match="learning_rate"):
        FinetuneConfig(learning_rate=0.0)
