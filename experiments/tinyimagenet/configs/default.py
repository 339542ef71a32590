"""Configs of ``make reproduce-tinyimagenet``: the authors' ResNet-18 (CIFAR
stem, 64x64 inputs, 200 classes) on Tiny ImageNet (docs/method.md §9): SGD 0.01,
momentum 0.9, weight decay 5e-4, cosine annealing, batch 128, 20 epochs, random
crop (64, pad 4) and flip, ImageNet mean and std; the second-derivative pass over
the training set with augmentation, batch-norm in inference mode and the
authors' average-pool rule (h/k; k = 64 here).

Needs the data (``USWIM_TINY_IMAGENET_PATH`` pointing at the extracted
``tiny-imagenet-200`` folder) and a GPU; ``--quick`` runs every stage on CPU on
a small subset (``--synthetic`` without the data).
"""

import dataclasses

from experiments.cifar10.configs.default import model_config, quick
from uswim_jax.experiment import FULL_FRACTIONS, ExperimentConfig

DATASET = "tiny_imagenet"
MODELS = ("resnet18",)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def get_config() -> tuple[ExperimentConfig, ...]:
    """ResNet-18, 30 trials, 9 budget points (a GPU run)."""
    return (model_config("resnet18", DATASET),)


def get_quick_config() -> tuple[ExperimentConfig, ...]:
    return tuple(quick(c) for c in get_config())


def get_full_config() -> tuple[ExperimentConfig, ...]:
    """100 trials and the dense budget grid."""
    return tuple(
        dataclasses.replace(
            c, fractions=FULL_FRACTIONS, num_trials=100, label="full-resnet18"
        )
        for c in get_config()
    )
