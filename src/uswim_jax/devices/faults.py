"""Per-chip device properties: stuck-at faults and device-to-device variation.

These are drawn from a chip's own key, so they are fixed for a chip: the same
chip programmed again (a new write key) keeps its stuck devices and its
per-device offsets, while cycle-to-cycle noise (every write, every read) is
new each time.

- Stuck-at faults: each device is independently stuck-off (at ``g_min``) with
  probability ``stuck_off`` and stuck-on (at ``g_max``) with probability
  ``stuck_on``; a stuck device ignores writes.
- Device-to-device variation: a fixed offset ``d2d * z`` uS per device added
  to every write of it (a write-verify loop with ``correction > 0`` learns it
  away; a single write keeps it).

References:
    Lammie et al., "MemTorch: An open-source simulation framework for
    memristive deep learning systems", Neurocomputing 485, 124 (2022) (device
    faults as stuck-at-on/off devices, the model used here).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uswim_jax import _random

#: Stuck state codes.
FREE, STUCK_OFF, STUCK_ON = 0, 1, 2


def check_fault_fractions(stuck_on: Any, stuck_off: Any) -> None:
    """Raises ``ValueError`` naming the argument unless both fractions are
    numbers in [0, 1] with ``stuck_on + stuck_off <= 1``."""
    for name, v in (("stuck_on", stuck_on), ("stuck_off", stuck_off)):
        if isinstance(v, bool) or not isinstance(v, int | float | np.floating):
            raise ValueError(f"{name} must be a fraction in [0, 1], got {v!r}")
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be a fraction in [0, 1], got {v!r}")
    if stuck_on + stuck_off > 1.0:
        raise ValueError(
            f"stuck_on + stuck_off must be <= 1, got {stuck_on!r} + {stuck_off!r}"
        )


def stuck_state(
    key: jax.Array, shape: tuple[int, ...], stuck_on: float, stuck_off: float
) -> jax.Array:
    """Per-device stuck state: :data:`FREE`, :data:`STUCK_OFF` or
    :data:`STUCK_ON` (int8), from one uniform draw per device.

    Args:
        key: the chip's key.
        shape: the device array's shape.
        stuck_on: probability of stuck-on, in [0, 1].
        stuck_off: probability of stuck-off, in [0, 1].

    Returns:
        An int8 array of ``shape``.

    Raises:
        ValueError: naming the fraction that is out of range.
    """
    check_fault_fractions(stuck_on, stuck_off)
    u = _random.uniform(key, shape, jnp.float32)
    off = u < jnp.float32(stuck_off)
    on = u >= jnp.float32(1.0 - stuck_on)
    state = jnp.where(off, STUCK_OFF, jnp.where(on, STUCK_ON, FREE))
    return state.astype(jnp.int8)


def apply_stuck(
    g: jax.Array, state: jax.Array, g_min: float, g_max: float
) -> jax.Array:
    """``g`` with stuck devices at ``g_min`` (off) or ``g_max`` (on)."""
    dt = g.dtype
    g = jnp.where(state == STUCK_OFF, jnp.asarray(g_min, dt), g)
    return jnp.where(state == STUCK_ON, jnp.asarray(g_max, dt), g)


def d2d_offsets(
    key: jax.Array, shape: tuple[int, ...], d2d: float, dtype: Any
) -> jax.Array:
    """Per-device fixed write offsets ``d2d * z``, uS (zeros for ``d2d = 0``).

    Args:
        key: the chip's key.
        shape: the device array's shape.
        d2d: std of the offsets, uS (>= 0).
        dtype: float dtype.

    Returns:
        An array of ``shape``.
    """
    if d2d == 0:
        return jnp.zeros(shape, dtype)
    return jnp.asarray(d2d, dtype) * _random.normal(key, shape, dtype)
