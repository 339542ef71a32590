"""Tiny ImageNet configs follow the authors' ResNet-18 recipe; the pipeline runs
end to end on generated data with 200 classes (slow: ResNet-18 compiles for a
minute or more on CPU)."""

import dataclasses

import pytest

from experiments.common import synthetic
from experiments.tinyimagenet import run
from experiments.tinyimagenet.configs import default


def test_configs_follow_the_recipe():
    (c,) = default.get_config()
    assert c.train.model == "resnet18" and c.train.dataset == "tiny_imagenet"
    r = c.train.resolved()
    assert (r.optimizer, r.learning_rate, r.weight_decay) == ("sgd", 0.01, 5e-4)
    assert c.train.augment and c.curvature_augment and c.avg_pool == "authors"
    (q,) = default.get_quick_config()
    assert q.train.train_subset == 512 and q.num_trials == 2


@pytest.mark.slow
def test_resnet18_end_to_end(tmp_path):
    (q,) = default.get_quick_config()
    cfg = dataclasses.replace(
        q,
        train=dataclasses.replace(q.train, batch_size=32, train_subset=None),
        s_values=(),
        methods=("swim",),
        fractions=(0.1,),
        num_trials=2,
        test_subset=8,
        curvature_subset=32,
    )
    out = run.run(
        (cfg,),
        tmp_path / "w",
        results_dir=tmp_path / "r",
        progress=False,
        train_data=synthetic("tin", (16, 16, 3), 200, 64, 0, "train"),
        test_data=synthetic("tin", (16, 16, 3), 200, 16, 1, "test"),
    )
    assert out["outs"]["resnet18"]["num_weights"] == 11_261_632
    assert (tmp_path / "r" / "resnet18" / "summary.md").is_file()
