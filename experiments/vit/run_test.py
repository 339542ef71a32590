"""The transformer study: every crossbar layer of the ViT has a role, and (slow)
the study end to end on generated data, where each method's verified weights
add up over the roles."""

import dataclasses

import jax
import numpy as np
import pytest

from experiments.mnist.run_test import _fake
from experiments.vit import run
from experiments.vit.configs import default
from uswim_jax._tree import path_str
from uswim_jax.models import build_model


def test_default_configs():
    for get in (default.get_config, default.get_quick_config, default.get_full_config):
        c = get()
        assert [ds for ds, _ in c.bases] == ["mnist", "fashion_mnist"]
        assert {cfg.train.model for _, cfg in c.bases} == {"vit"}


def test_every_vit_layer_has_a_role():
    shapes = jax.eval_shape(build_model("vit").init, jax.random.key(0))
    roles = {}
    for p, leaf in jax.tree_util.tree_leaves_with_path(shapes):
        path = path_str(p)
        if path.endswith("kernel") and len(leaf.shape) >= 2:
            size = int(np.prod(leaf.shape))
            roles[run.vit_group(path)] = roles.get(run.vit_group(path), 0) + size
    assert set(roles) == {
        "patch embedding",
        "query",
        "key",
        "value",
        "attention output",
        "MLP in",
        "MLP out",
        "head",
    }
    assert roles["query"] == roles["key"] == roles["value"] == 6 * 64 * 64
    assert sum(roles.values()) == 200_384
    with pytest.raises(ValueError, match="no ViT layer group"):
        run.vit_group("params/block0/norm1/scale")


@pytest.mark.slow
def test_vit_study_end_to_end(tmp_path):
    base = dataclasses.replace(
        default.get_quick_config().bases[0][1],
        train=dataclasses.replace(
            default.get_quick_config().bases[0][1].train,
            train_subset=None,
            batch_size=32,
        ),
        fractions=(0.05, 0.5),
        num_trials=2,
        methods=("magnitude", "swim", "eloss-ggn"),
        test_subset=32,
        curvature_subset=32,
        estimator_subset=16,
        label="test",
    )
    config = default.StudyConfig((("mnist", base),), image_size=28)
    out = run.run(
        config,
        tmp_path / "w",
        datasets={"mnist": (_fake(64, 0), _fake(32, 1))},
        progress=False,
        log=lambda *a: None,
    )
    assert {r["group"] for r in out["budget"]} >= {"query", "MLP in", "head"}
    text = (tmp_path / "w" / "study.md").read_text()
    assert "attention output" in text and "weak link" in text
