"""Conductance after programming: drift, relaxation, reads, and global drift
compensation. Times in seconds since programming ended, conductances in uS.

- Drift (PCM): ``G(t) = G(t0) (t / t0)^(-nu)`` with a per-device exponent
  ``nu``; the programmed state is the state at ``t0``, so ``G(t) = G(t0)`` for
  ``t <= t0`` (no drift before the reference time) and ``G`` decreases
  monotonically after it.
- Relaxation (RRAM): ``G(t) = G_drifted + shift(t) + std(t) z`` with one
  standard-normal ``z`` per device drawn at programming, the same at every
  ``t`` (see :mod:`uswim_jax.devices.presets`).
- Read: every read adds fresh noise of the preset's ``read_std`` (a new draw
  at every evaluation); conductances are clipped at 0 uS.
- Global drift compensation (as aihwkit's ``GlobalDriftCompensation``, one
  scale per layer here): a calibration read at ``t`` is compared with a
  reference read taken right after programming (at ``t0``); the layer's
  weights read at ``t`` are multiplied by ``sum|W_ref| / sum|W_cal(t)|``.

References:
    Le Gallo et al., "Collective structural relaxation in phase-change memory
    devices", Adv. Electron. Mater. 4, 1700627 (2018) (the power-law drift);
    Joshi et al., "Accurate deep neural network inference using computational
    phase-change memory", Nat. Commun. 11, 2473 (2020) (global drift
    compensation).
"""

from typing import Any

import jax
import jax.numpy as jnp

from uswim_jax import _random
from uswim_jax.devices.presets import DevicePreset, check_times


def drift_factor(nu: Any, t: Any, t0: Any) -> jax.Array:
    """``(max(t, t0) / t0)^(-nu)``: 1 at and before ``t0``, non-increasing in
    ``t`` for ``nu >= 0``.

    Args:
        nu: drift exponents (any shape, >= 0).
        t: time since programming, s (> 0).
        t0: reference time, s (> 0).

    Returns:
        An array like ``nu``.

    Raises:
        ValueError: naming ``t`` or ``t0`` if a concrete value is not > 0, or
            ``nu`` if a concrete value is negative.
    """
    check_times("t", t)
    check_times("t0", t0)
    nu = jnp.asarray(nu)
    if not isinstance(nu, jax.core.Tracer) and bool(jnp.any(nu < 0)):
        raise ValueError("nu must be >= 0")
    return _drift_factor(nu, t, t0)


def _drift_factor(nu: jax.Array, t: Any, t0: Any) -> jax.Array:
    dt = nu.dtype
    t = jnp.asarray(t, dt)
    t0 = jnp.asarray(t0, dt)
    return (jnp.maximum(t, t0) / t0) ** (-nu)


def draw_nu(key: jax.Array, preset: DevicePreset, g_target: jax.Array) -> jax.Array:
    """Per-device drift exponents ``|mu + sd z|`` (aihwkit's rule), zeros for
    a preset without drift.

    Args:
        key: a ``jax.random`` key (the chip's: ``nu`` is a device property).
        preset: the device preset.
        g_target: target conductances, uS.

    Returns:
        An array like ``g_target``.
    """
    mu, sd = preset._drift_nu(g_target)
    z = _random.normal(key, jnp.shape(g_target), g_target.dtype)
    return jnp.abs(mu + sd * z)


def conductance_at(
    preset: DevicePreset,
    g_prog: jax.Array,
    g_target: jax.Array,
    nu: jax.Array,
    z_relax: jax.Array,
    t: Any,
) -> jax.Array:
    """The true conductance at ``t`` (before the read noise), uS, clipped at 0.

    Args:
        preset: the device preset.
        g_prog: programmed conductances (the state at ``t0``), uS.
        g_target: their targets, uS (the relaxation fits depend on them).
        nu: drift exponents, like ``g_prog``.
        z_relax: one standard-normal draw per device, like ``g_prog``.
        t: time since programming, s.

    Returns:
        An array like ``g_prog``.
    """
    g = g_prog * _drift_factor(nu, t, preset.t0)
    shift, std = preset._relaxation(g_target, t)
    return jnp.maximum(g + shift + std * z_relax, jnp.zeros((), g.dtype))


def read(
    key: jax.Array, preset: DevicePreset, g_now: jax.Array, g_prog: jax.Array, t: Any
) -> jax.Array:
    """One read at ``t``: ``g_now`` plus fresh read noise, clipped at 0 uS.

    Args:
        key: a ``jax.random`` key (new for every read).
        preset: the device preset.
        g_now: true conductances at ``t``, uS.
        g_prog: programmed conductances, uS (PCM's 1/f noise depends on them).
        t: time since programming, s.

    Returns:
        An array like ``g_now``.
    """
    std = preset._read_std(g_now, g_prog, t)
    z = _random.normal(key, jnp.shape(g_now), g_now.dtype)
    return jnp.maximum(g_now + std * z, jnp.zeros((), g_now.dtype))


def compensation_scale(w_reference: jax.Array, w_calibration: jax.Array) -> jax.Array:
    """One layer's global drift compensation scale,
    ``sum|W_reference| / sum|W_calibration|`` (1 where the calibration read
    is all zero).

    Args:
        w_reference: the layer's weights read right after programming.
        w_calibration: the layer's weights read at the evaluation time.

    Returns:
        A scalar array.
    """
    dt = w_calibration.dtype
    ref = jnp.sum(jnp.abs(w_reference))
    cal = jnp.sum(jnp.abs(w_calibration))
    ok = cal > 0
    return jnp.where(ok, ref / jnp.where(ok, cal, jnp.ones((), dt)), jnp.ones((), dt))
