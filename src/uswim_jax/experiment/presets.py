"""What ``make`` (``experiments/*/configs``) and the ``uswim sweep`` command line
share: the sizes of a run, :data:`QUICK` (a few-minute smoke run of every stage:
``--quick``) and :data:`FULL` (the dense grid with 100 trials, meant for a GPU:
``--full``), the default being the config itself; and the knobs of the LeNet
reproductions beside the sizes (:func:`reproduction`: the authors' rules and
:data:`EVAL_BATCH_SIZE`), which ``uswim sweep --quick`` takes too, so it runs
the config of ``make reproduce-mnist ARGS=--quick`` (up to the label)."""

import dataclasses

from uswim_jax.experiment.config import FULL_FRACTIONS, ExperimentConfig

#: ``--quick``: the training fields it sets.
QUICK_TRAIN = {"epochs": 2, "train_subset": 2048}
#: ``--quick``: the experiment fields it sets.
QUICK = {
    "sigmas": (0.2,),
    "s_values": (3.0,),
    "fractions": (0.001, 0.005, 0.01, 0.05, 0.3),
    "num_trials": 8,
    "test_subset": 500,
    "curvature_subset": 2048,
    "estimator_subset": 128,
    "hutchinson_probes": 8,
}
#: ``--full``: the experiment fields it sets.
FULL = {"fractions": FULL_FRACTIONS, "num_trials": 100}
#: Images per batch of the LeNet Monte Carlo sweeps (measured faster than the
#: library default of 20 by ``python -m benchmarks.sweep_batch``).
EVAL_BATCH_SIZE = 40


def authors_rules(weight_bits: int | None) -> dict[str, str]:
    """The authors' second-derivative rules (docs/method.md §8): the
    average-pool rule h / k (no effect on a model without an average pool), and
    on a quantized model (``weight_bits`` not None) the Q-layer scale rule
    h * a."""
    rules = {"avg_pool": "authors"}
    if weight_bits is not None:
        rules["q_scale"] = "authors"
    return rules


def reproduction(weight_bits: int | None) -> dict[str, object]:
    """The experiment fields the LeNet reproductions (MNIST, Fashion-MNIST) set
    beside their sizes: :func:`authors_rules` and :data:`EVAL_BATCH_SIZE`."""
    return {**authors_rules(weight_bits), "eval_batch_size": EVAL_BATCH_SIZE}


def quick(config: ExperimentConfig, **changes) -> ExperimentConfig:
    """``config`` at the :data:`QUICK` size (``changes`` win), labelled
    ``quick``."""
    train = dataclasses.replace(config.train, **QUICK_TRAIN)
    return dataclasses.replace(
        config, **{"train": train, **QUICK, "label": "quick", **changes}
    )


def full(config: ExperimentConfig, **changes) -> ExperimentConfig:
    """``config`` at the :data:`FULL` size (``changes`` win), labelled
    ``full``."""
    return dataclasses.replace(config, **{**FULL, "label": "full", **changes})
