"""Real devices: measured conductance models, drift and read noise, faults,
and a write-verify loop that counts its own cost (docs/devices.md).

:class:`ConductanceDevice` implements the device-model protocol
(:class:`uswim_jax.DeviceModel`) on top of a preset (:func:`device_preset`:
``"pcm"``, ``"rram"``, ``"hfox"``, ``"authors"``), a weights-to-conductances
mapping (:class:`DifferentialPair`, :class:`BitSlicedPair`) and a verify loop
(:class:`VerifyLoop`, :class:`CostModel`). Units: uS, seconds, write cycles.
"""

from uswim_jax.devices.conductance import BitSlicedPair as BitSlicedPair
from uswim_jax.devices.conductance import ConductanceMap as ConductanceMap
from uswim_jax.devices.conductance import DifferentialPair as DifferentialPair
from uswim_jax.devices.conductance import layer_scale as layer_scale
from uswim_jax.devices.drift import compensation_scale as compensation_scale
from uswim_jax.devices.drift import conductance_at as conductance_at
from uswim_jax.devices.drift import drift_factor as drift_factor
from uswim_jax.devices.faults import stuck_state as stuck_state
from uswim_jax.devices.model import ChipCost as ChipCost
from uswim_jax.devices.model import ConductanceDevice as ConductanceDevice
from uswim_jax.devices.model import LeafChip as LeafChip
from uswim_jax.devices.presets import PRESET_NAMES as PRESET_NAMES
from uswim_jax.devices.presets import DevicePreset as DevicePreset
from uswim_jax.devices.presets import FourLevelPreset as FourLevelPreset
from uswim_jax.devices.presets import HfOxPreset as HfOxPreset
from uswim_jax.devices.presets import PCMPreset as PCMPreset
from uswim_jax.devices.presets import RRAMWanPreset as RRAMWanPreset
from uswim_jax.devices.presets import device_preset as device_preset
from uswim_jax.devices.verify import CostModel as CostModel
from uswim_jax.devices.verify import LoopResult as LoopResult
from uswim_jax.devices.verify import ProgrammingCost as ProgrammingCost
from uswim_jax.devices.verify import VerifyLoop as VerifyLoop
from uswim_jax.devices.verify import programming_cost as programming_cost
from uswim_jax.devices.verify import verify_devices as verify_devices

__all__ = [
    "BitSlicedPair",
    "ConductanceMap",
    "DifferentialPair",
    "layer_scale",
    "compensation_scale",
    "conductance_at",
    "drift_factor",
    "stuck_state",
    "ChipCost",
    "ConductanceDevice",
    "LeafChip",
    "PRESET_NAMES",
    "DevicePreset",
    "FourLevelPreset",
    "HfOxPreset",
    "PCMPreset",
    "RRAMWanPreset",
    "device_preset",
    "CostModel",
    "LoopResult",
    "ProgrammingCost",
    "VerifyLoop",
    "programming_cost",
    "verify_devices",
]
