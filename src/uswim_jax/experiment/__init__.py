"""The reproduction pipeline: train (or reuse) a model, compute sensitivities,
sweep every selection method under every device setting, and write a run folder.

Every finished unit of work (the trained model, the sensitivities, the
exhaustive/no-verify end points of each setting, each step chunk of a curve when
``steps_per_chunk`` is set, and each (setting, method) curve in ``curves/``) is
written atomically into the run folder as it completes; running the same command
again skips what is done, so a run killed at any moment (SIGINT or SIGKILL) loses
nothing already written. A different config in the same folder is refused (the
execution settings, :data:`EXECUTION_FIELDS`, are not part of it), and so is
different source code, JAX version, backend, PRNG setting or dataset
(``manifest.json``): results would not be byte-identical.

Modules: ``config`` (:class:`ExperimentConfig`, :class:`Setting`), ``sensitivities``
(curvature scores and method orders), ``units`` (the jitted drivers of each unit
of work), ``store`` (:class:`RunStore`: the run folder, its files, config hash
and resume check) and ``pipeline`` (:func:`run`).
"""

from uswim_jax.experiment.config import (
    ABLATION_DEFAULTS,
    ESTIMATORS,
    EXECUTION_FIELDS,
    FULL_FRACTIONS,
    METHODS,
    ExperimentConfig,
    Setting,
    load_config,
)
from uswim_jax.experiment.pipeline import run
from uswim_jax.experiment.sensitivities import (
    compute_sensitivities,
    method_order,
    sensitivity_sizes,
)
from uswim_jax.experiment.store import (
    CorruptFileError,
    RunStore,
    config_hash,
    manifest,
    source_hash,
)

__all__ = [
    "ABLATION_DEFAULTS",
    "ESTIMATORS",
    "EXECUTION_FIELDS",
    "FULL_FRACTIONS",
    "METHODS",
    "CorruptFileError",
    "ExperimentConfig",
    "RunStore",
    "Setting",
    "compute_sensitivities",
    "config_hash",
    "load_config",
    "manifest",
    "method_order",
    "run",
    "sensitivity_sizes",
    "source_hash",
]
