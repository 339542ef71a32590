"""CIFAR-10 configs follow the authors' recipes; the pipeline runs end to end on
generated 32x32x3 data (ConvNet here; ResNet-18 in the slow test)."""

import pytest

from experiments.cifar10 import run
from experiments.cifar10.configs import default
from experiments.common import synthetic
from uswim_jax.experiment import ExperimentConfig
from uswim_jax.train import TrainConfig


def test_configs_follow_the_recipes():
    convnet, resnet = default.get_config()
    assert convnet.train.resolved().optimizer == "adam"
    r = resnet.train.resolved()
    assert (r.optimizer, r.learning_rate, r.weight_decay) == ("sgd", 0.01, 5e-4)
    for c in (convnet, resnet):
        assert c.train.augment and c.curvature_augment and c.avg_pool == "authors"
        assert c.train.batch_size == 128 and c.train.epochs == 20
    for c in default.get_quick_config():
        assert c.train.train_subset == 512 and c.test_subset == 64
    assert all(c.num_trials == 100 for c in default.get_full_config())


def _tiny(model: str) -> ExperimentConfig:
    return ExperimentConfig(
        train=TrainConfig(
            model=model, dataset="cifar10", epochs=1, batch_size=32, augment=True
        ),
        sigmas=(0.3,),
        s_values=(),
        fractions=(0.1,),
        num_trials=2,
        methods=("swim",),
        test_subset=16,
        curvature_subset=64,
        curvature_augment=True,
        avg_pool="authors",
        label="test",
    )


def _data(shape=(32, 32, 3)):
    return {
        "train_data": synthetic("cifar10", shape, 10, 64, 0, "train"),
        "test_data": synthetic("cifar10", shape, 10, 32, 1, "test"),
    }


@pytest.mark.slow  # 60-75 s; the suite was at 15:18 on a slow 2-core machine
def test_convnet_end_to_end(tmp_path):
    out = run.run(
        (_tiny("convnet"),),
        tmp_path / "w",
        results_dir=tmp_path / "r",
        progress=False,
        **_data(),
    )
    assert set(out["outs"]) == {"convnet"}
    text = (tmp_path / "r" / "convnet" / "summary.md").read_text()
    assert "synthetic-cifar10" in text and "| swim |" in text
    assert "with the training augmentations" in text
    assert "Monte Carlo over the first 16 of the 16 test images" in text


@pytest.mark.slow
def test_resnet18_end_to_end(tmp_path):
    out = run.run(
        (_tiny("resnet18"),), tmp_path / "w", progress=False, **_data((8, 8, 3))
    )
    assert out["outs"]["resnet18"]["num_weights"] == 11_164_352
