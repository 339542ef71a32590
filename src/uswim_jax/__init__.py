"""uswim_jax: selective write-verify for computing-in-memory neural accelerators.

The core (device and programming models, curvature, selection, Monte Carlo, sweep)
imports only JAX and NumPy and works on any ``apply_fn(params, x) -> logits`` with
any params pytree. Models, datasets, training, reports and the CLI live in the
subpackages ``uswim_jax.models``, ``uswim_jax.data``, ``uswim_jax.train`` and
``uswim_jax.cli``, which need the ``experiments`` extra.
"""

from uswim_jax._tree import (
    CrossbarPredicate as CrossbarPredicate,
)
from uswim_jax._tree import (
    crossbar_flags as crossbar_flags,
)
from uswim_jax._tree import (
    crossbar_size as crossbar_size,
)
from uswim_jax._tree import (
    default_crossbar as default_crossbar,
)

# --- device and programming models ---
from uswim_jax.device import (
    DEFAULT_SIGMA as DEFAULT_SIGMA,
)
from uswim_jax.device import (
    DEFAULT_SIGMA_VERIFIED as DEFAULT_SIGMA_VERIFIED,
)
from uswim_jax.device import (
    DEFAULT_VERIFY_CYCLES as DEFAULT_VERIFY_CYCLES,
)
from uswim_jax.device import (
    ClosedFormStd as ClosedFormStd,
)
from uswim_jax.device import (
    DeviceModel as DeviceModel,
)
from uswim_jax.device import (
    GaussianVariation as GaussianVariation,
)
from uswim_jax.device import (
    LevelTableVariation as LevelTableVariation,
)
from uswim_jax.device import (
    Programmed as Programmed,
)
from uswim_jax.device import (
    StateDependentVariation as StateDependentVariation,
)
from uswim_jax.device import (
    UniformVariation as UniformVariation,
)
from uswim_jax.device import (
    WriteCycles as WriteCycles,
)
from uswim_jax.device import (
    add_noise as add_noise,
)
from uswim_jax.device import (
    gaussian_write_cycles as gaussian_write_cycles,
)
from uswim_jax.device import (
    noise_like as noise_like,
)
from uswim_jax.device import (
    perturb as perturb,
)
from uswim_jax.device import (
    place_values as place_values,
)
from uswim_jax.device import (
    slicing_factor as slicing_factor,
)
from uswim_jax.programming import (
    ProgramInfo as ProgramInfo,
)
from uswim_jax.programming import (
    ProgramResult as ProgramResult,
)
from uswim_jax.programming import (
    ProgramState as ProgramState,
)
from uswim_jax.programming import (
    PulseModel as PulseModel,
)
from uswim_jax.programming import (
    program as program,
)
from uswim_jax.programming import (
    program_devices as program_devices,
)
from uswim_jax.programming import (
    program_init as program_init,
)
from uswim_jax.programming import (
    program_loop as program_loop,
)
from uswim_jax.programming import (
    program_step as program_step,
)
from uswim_jax.programming import (
    pulse_write_cycles as pulse_write_cycles,
)
from uswim_jax.programming import (
    write_cycles as write_cycles,
)

# --- measured devices (docs/devices.md) ---
# isort: split
from uswim_jax.devices import BitSlicedPair as BitSlicedPair
from uswim_jax.devices import ConductanceDevice as ConductanceDevice
from uswim_jax.devices import CostModel as CostModel
from uswim_jax.devices import DifferentialPair as DifferentialPair
from uswim_jax.devices import VerifyLoop as VerifyLoop
from uswim_jax.devices import device_preset as device_preset

# --- curvature and selection ---
# isort: split
from uswim_jax.curvature import (
    exact_diagonal as exact_diagonal,
)
from uswim_jax.curvature import (
    fisher_diagonal as fisher_diagonal,
)
from uswim_jax.curvature import (
    ggn_diagonal as ggn_diagonal,
)
from uswim_jax.curvature import (
    hutchinson_diagonal as hutchinson_diagonal,
)
from uswim_jax.curvature import (
    make_loss_fn as make_loss_fn,
)
from uswim_jax.curvature import (
    obd_diagonal as obd_diagonal,
)
from uswim_jax.curvature import (
    obd_over_dataset as obd_over_dataset,
)
from uswim_jax.selection import (
    expected_loss_score as expected_loss_score,
)
from uswim_jax.selection import (
    global_order as global_order,
)
from uswim_jax.selection import (
    magnitude_score as magnitude_score,
)
from uswim_jax.selection import (
    mask_from_order as mask_from_order,
)
from uswim_jax.selection import (
    normalized_derivatives as normalized_derivatives,
)
from uswim_jax.selection import (
    random_score as random_score,
)
from uswim_jax.selection import (
    select as select,
)
from uswim_jax.selection import (
    state_multiplier as state_multiplier,
)
from uswim_jax.selection import (
    swim_score as swim_score,
)
from uswim_jax.selection import (
    uswim_score as uswim_score,
)

# --- Monte Carlo and sweep ---
# isort: split
from uswim_jax.montecarlo import MCStats as MCStats
from uswim_jax.montecarlo import conv_path_log as conv_path_log
from uswim_jax.montecarlo import conv_paths as conv_paths
from uswim_jax.montecarlo import evaluate as evaluate
from uswim_jax.montecarlo import measured_sizes_log as measured_sizes_log
from uswim_jax.sweep import MARGINS as MARGINS
from uswim_jax.sweep import Curve as Curve
from uswim_jax.sweep import CyclesToTarget as CyclesToTarget
from uswim_jax.sweep import counts_for_fractions as counts_for_fractions
from uswim_jax.sweep import sweep as sweep

# --- key streams ---
# isort: split
from uswim_jax.keys import KEY_STREAMS as KEY_STREAMS
from uswim_jax.keys import key_stream as key_stream

#: The public API: every name re-exported above.
__all__ = [
    "CrossbarPredicate",
    "crossbar_flags",
    "crossbar_size",
    "default_crossbar",
    "ClosedFormStd",
    "DeviceModel",
    "Programmed",
    "DEFAULT_SIGMA",
    "DEFAULT_SIGMA_VERIFIED",
    "DEFAULT_VERIFY_CYCLES",
    "GaussianVariation",
    "LevelTableVariation",
    "StateDependentVariation",
    "UniformVariation",
    "WriteCycles",
    "add_noise",
    "gaussian_write_cycles",
    "noise_like",
    "perturb",
    "place_values",
    "slicing_factor",
    "ProgramInfo",
    "ProgramResult",
    "ProgramState",
    "PulseModel",
    "program",
    "program_devices",
    "program_init",
    "program_loop",
    "program_step",
    "pulse_write_cycles",
    "write_cycles",
    "BitSlicedPair",
    "ConductanceDevice",
    "CostModel",
    "DifferentialPair",
    "VerifyLoop",
    "device_preset",
    "exact_diagonal",
    "fisher_diagonal",
    "ggn_diagonal",
    "hutchinson_diagonal",
    "make_loss_fn",
    "obd_diagonal",
    "obd_over_dataset",
    "expected_loss_score",
    "global_order",
    "magnitude_score",
    "mask_from_order",
    "normalized_derivatives",
    "random_score",
    "select",
    "state_multiplier",
    "swim_score",
    "uswim_score",
    "MCStats",
    "conv_path_log",
    "conv_paths",
    "measured_sizes_log",
    "evaluate",
    "MARGINS",
    "Curve",
    "CyclesToTarget",
    "counts_for_fractions",
    "sweep",
    "KEY_STREAMS",
    "key_stream",
]

__version__ = "0.1.0"
