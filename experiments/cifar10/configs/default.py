"""Configs of ``make reproduce-cifar10``: the authors' ConvNet and ResNet-18 on
CIFAR-10 (docs/method.md §9), one :class:`ExperimentConfig` per model.

Training recipes (``TrainConfig.resolved``): ConvNet Adam 1e-3; ResNet-18 SGD
0.01, momentum 0.9, weight decay 5e-4, cosine annealing; batch 128, 20 epochs
(the code's ``--train_epoch`` default), random crop (pad 4) and horizontal flip,
inputs normalised with the CIFAR-10 mean and std. The second-derivative pass
runs over the whole training set with the training augmentations and batch-norm
in inference mode, with the authors' average-pool rule (h/k, docs/method.md
§8). Device settings and methods as ``make reproduce-mnist``.

The default and ``--full`` runs need the real data (TFDS or
``USWIM_CIFAR10_PATH``) and a GPU to finish in hours; ``--quick`` runs every
stage on CPU on a small subset (add ``--synthetic`` to run it without the
data).
"""

import dataclasses

from uswim_jax.experiment import FULL_FRACTIONS, ExperimentConfig
from uswim_jax.train import TrainConfig

DATASET = "cifar10"
MODELS = ("convnet", "resnet18")
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def model_config(model: str, dataset: str = DATASET) -> ExperimentConfig:
    """The default (GPU) run of one model."""
    return ExperimentConfig(
        train=TrainConfig(
            model=model, dataset=dataset, epochs=20, augment=True, seed=0
        ),
        fractions=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3),
        num_trials=30,
        curvature_augment=True,
        avg_pool="authors",
        eval_batch_size=1000,
        label=f"default-{model}",
    )


def quick(config: ExperimentConfig) -> ExperimentConfig:
    """The CPU smoke version of a config: 1 epoch on 512 images, 64 test images,
    one uniform and one state-dependent setting, 2 budget points, 2 trials,
    the cheap methods."""
    return dataclasses.replace(
        config,
        train=dataclasses.replace(config.train, epochs=1, train_subset=512),
        sigmas=(0.3,),
        s_values=(3.0,),
        fractions=(0.01, 0.1),
        num_trials=2,
        methods=("random", "magnitude", "swim", "uswim", "eloss-obd"),
        test_subset=64,
        curvature_subset=256,
        eval_batch_size=None,
        label=f"quick-{config.train.model}",
    )


def get_config() -> tuple[ExperimentConfig, ...]:
    """ConvNet and ResNet-18, 30 trials, 9 budget points (a GPU run)."""
    return tuple(model_config(m) for m in MODELS)


def get_quick_config() -> tuple[ExperimentConfig, ...]:
    return tuple(quick(c) for c in get_config())


def get_full_config() -> tuple[ExperimentConfig, ...]:
    """100 trials and the dense budget grid."""
    return tuple(
        dataclasses.replace(
            c,
            fractions=FULL_FRACTIONS,
            num_trials=100,
            label=c.label.replace("default", "full"),
        )
        for c in get_config()
    )
