"""Write-verify for conductance-level devices, and what it costs.

The loop, per device (all devices of a leaf at once, in one bounded
``lax.while_loop``):

1. write: ``G = max(aim + offset + write_std(G_target) z, 0)`` (a stuck device
   stays at its stuck value), with ``aim = G_target`` at first;
2. read: ``R = G + read_std z'`` at ``read_delay`` seconds after the write;
3. accept when ``|R - G_target| <= tol``, with ``tol = acceptance * g_max``
   (``relative_to="range"``), ``acceptance * G_target``
   (``relative_to="target"``) or ``acceptance * write_std(G_target)``
   (``relative_to="write_std"``: a band in units of the device's own
   one-write spread, the same number of tries at every state);
4. otherwise re-program, aiming at ``aim - correction * (R - G_target)``, and
   read again, up to ``max_iterations`` writes in all (first write included);
   a device still outside the band then has failed (counted, not raised).

Every device runs the loop with its own draws, so the loop also yields what
each device *would* cost if verified: a device that is not verified keeps its
first write, and exhaustive write-verify costs the sum over every device of
its iterations in the same run (common random numbers).

Cost. One iteration is one write pulse of ``pulse_width`` s and energy
``write_energy`` J, plus, for a verified device, one read of ``read_time`` s
and ``read_energy`` J. The times add up device by device (a row-parallel
array divides them by the number of devices it programs at once). The
defaults are assumptions, not measurements: ``read_time = 250 ns`` is the read
time of the PCM fit (Nandakumar et al., ICECS 2019, ``t_read``); no public
source gives verify-pulse widths or energies for these devices, so
``pulse_width = 100 ns``, ``write_energy = 10 pJ`` and ``read_energy = 1 pJ``
are round numbers to override.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uswim_jax import _random
from uswim_jax.devices.faults import apply_stuck
from uswim_jax.devices.presets import DevicePreset, _check_number

#: ``relative_to`` values of :class:`VerifyLoop`.
RELATIVE_TO = ("range", "target", "write_std")


@dataclasses.dataclass(frozen=True)
class VerifyLoop:
    """The write-verify loop's settings (see the module docstring).

    Args:
        acceptance: half-width of the acceptance band, as a fraction of
            ``g_max`` or of the target (>= 0; default 0.01).
        relative_to: ``"range"`` (fraction of ``g_max``), ``"target"`` or
            ``"write_std"`` (fraction of the preset's one-write std at the
            target).
        max_iterations: writes per device at most, first write included
            (int >= 1; default 20).
        correction: fraction of the read error the next aim removes, in
            [0, 1] (0: plain retries at the target; default 0.5).
        read_delay: time of the verify read after a write, s (> 0; sets the
            read noise through the preset's ``read_std``; default 1e-6).

    Raises:
        ValueError: naming the argument that is out of range.
    """

    acceptance: float = 0.01
    relative_to: str = "range"
    max_iterations: int = 20
    correction: float = 0.5
    read_delay: float = 1e-6

    def __post_init__(self):
        _check_number("acceptance", self.acceptance)
        if self.relative_to not in RELATIVE_TO:
            raise ValueError(
                f"relative_to must be one of {RELATIVE_TO}, got {self.relative_to!r}"
            )
        mi = self.max_iterations
        if isinstance(mi, bool) or not isinstance(mi, int | np.integer) or mi < 1:
            raise ValueError(f"max_iterations must be an int >= 1, got {mi!r}")
        _check_number("correction", self.correction)
        if self.correction > 1:
            raise ValueError(f"correction must lie in [0, 1], got {self.correction!r}")
        _check_number("read_delay", self.read_delay, positive=True)

    def tolerance(
        self, g_target: jax.Array, g_max: float, write_std: jax.Array | None = None
    ) -> jax.Array:
        """The acceptance half-width per device, uS (``write_std``, the
        preset's one-write std at ``g_target``, is needed for
        ``relative_to="write_std"``)."""
        dt = g_target.dtype
        a = jnp.asarray(self.acceptance, dt)
        if self.relative_to == "target":
            return a * jnp.abs(g_target)
        if self.relative_to == "write_std":
            if write_std is None:
                raise ValueError("relative_to='write_std' needs the write std")
            return a * jnp.broadcast_to(write_std, jnp.shape(g_target))
        return jnp.full(jnp.shape(g_target), a * jnp.asarray(g_max, dt))

    def residual_std(self, write_std: jax.Array, tol: jax.Array) -> jax.Array:
        """The std a converged device keeps, uS, when reads are exact and
        each write is a fresh ``N(aim, write_std^2)``: the write's normal
        truncated to the band ``[-tol, tol]``,
        ``write_std sqrt(1 - 2 c phi(c) / (2 Phi(c) - 1))`` with ``c = tol /
        write_std`` (``write_std`` when the band is wider than a few stds,
        ``tol / sqrt(3)`` in the limit of a narrow one). An estimate for
        selection scores: read noise, re-aiming, clipping at 0 uS and offsets
        are left out."""
        dt = jnp.result_type(write_std, tol)
        ws = jnp.asarray(write_std, dt)
        tol = jnp.asarray(tol, dt)
        c = tol / jnp.where(ws > 0, ws, jnp.ones((), dt))
        phi = jnp.exp(-0.5 * c * c) / jnp.asarray(np.sqrt(2 * np.pi), dt)
        mass = jax.scipy.special.erf(c / jnp.asarray(np.sqrt(2.0), dt))
        frac = 1 - 2 * c * phi / jnp.where(mass > 0, mass, jnp.ones((), dt))
        # A narrow band: the series c^2 / 3 (1 - 2 c^2 / 15) of the variance
        # (the formula cancels in float32 there).
        small = c < jnp.asarray(0.1, dt)
        series = c * c / 3 * (1 - 2 * c * c / 15)
        out = ws * jnp.sqrt(jnp.where(small, series, jnp.clip(frac, 0, 1)))
        return jnp.where(ws > 0, out, jnp.zeros((), dt))


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Time and energy of programming (see the module docstring for what the
    defaults are).

    Args:
        pulse_width: one write pulse, s (>= 0; default 100e-9, assumed).
        read_time: one verify read, s (>= 0; default 250e-9).
        write_energy: one write pulse, J (>= 0; default 10e-12, assumed).
        read_energy: one verify read, J (>= 0; default 1e-12, assumed).

    Raises:
        ValueError: naming a negative or non-finite argument.
    """

    pulse_width: float = 100e-9
    read_time: float = 250e-9
    write_energy: float = 10e-12
    read_energy: float = 1e-12

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _check_number(f.name, getattr(self, f.name))


class ProgrammingCost(NamedTuple):
    """What programming one chip cost (scalar float32 arrays)."""

    writes: jax.Array  # write pulses
    reads: jax.Array  # verify reads
    time_s: jax.Array  # writes * pulse_width + reads * read_time
    energy_j: jax.Array  # writes * write_energy + reads * read_energy


def programming_cost(writes: Any, reads: Any, cost: CostModel) -> ProgrammingCost:
    """The :class:`ProgrammingCost` of ``writes`` pulses and ``reads`` reads."""
    w = jnp.asarray(writes, jnp.float32)
    r = jnp.asarray(reads, jnp.float32)
    f = jnp.float32
    return ProgrammingCost(
        writes=w,
        reads=r,
        time_s=w * f(cost.pulse_width) + r * f(cost.read_time),
        energy_j=w * f(cost.write_energy) + r * f(cost.read_energy),
    )


class LoopResult(NamedTuple):
    """Per-device outcome of :func:`verify_devices` (arrays like the target)."""

    first: jax.Array  # conductance after the first write, uS
    verified: jax.Array  # conductance at the end of the loop, uS
    iterations: jax.Array  # int32 writes the loop spent on the device (>= 1)
    converged: jax.Array  # bool: the loop's last read was inside the band


def verify_devices(
    key: jax.Array,
    preset: DevicePreset,
    loop: VerifyLoop,
    g_target: jax.Array,
    offset: jax.Array,
    stuck: jax.Array,
    g_range: tuple[float, float],
) -> LoopResult:
    """Runs the write-verify loop on every device (see the module docstring).

    Iteration ``k`` (``k = 0`` is the first write) draws its write and read
    noise from ``fold_in(key, k)``.

    Args:
        key: the write key (cycle-to-cycle noise); consumed.
        preset: the device preset (write and read noise).
        loop: the loop settings.
        g_target: target conductances, uS, any shape.
        offset: per-device fixed write offsets, uS, like ``g_target``.
        stuck: per-device stuck state (:mod:`uswim_jax.devices.faults`).
        g_range: ``(g_min, g_max)`` uS, the stuck values.

    Returns:
        A :class:`LoopResult`.
    """
    dt = g_target.dtype
    shape = jnp.shape(g_target)
    std = preset._write_std(g_target)
    tol = loop.tolerance(g_target, g_range[1], std)
    zero = jnp.zeros((), dt)
    corr = jnp.asarray(loop.correction, dt)

    def write_read(k, aim):
        wk, rk = jax.random.split(jax.random.fold_in(key, k))
        g = aim + offset + std * _random.normal(wk, shape, dt)
        g = apply_stuck(jnp.maximum(g, zero), stuck, *g_range)
        rs = preset._read_std(g, g, loop.read_delay)
        r = jnp.maximum(g + rs * _random.normal(rk, shape, dt), zero)
        return g, r

    g0, r0 = write_read(0, g_target)
    ok0 = jnp.abs(r0 - g_target) <= tol
    state = (
        jnp.ones((), jnp.int32),
        g_target,
        g0,
        r0,
        jnp.ones(shape, jnp.int32),
        ok0,
    )
    cap = loop.max_iterations

    def active(s):
        return ~s[5] & (s[4] < cap)

    def cond(s):
        return (s[0] < cap) & jnp.any(active(s))

    def body(s):
        k, aim, g, r, it, ok = s
        act = active(s)
        new_aim = aim - corr * (r - g_target)
        g1, r1 = write_read(k, new_aim)
        ok1 = jnp.abs(r1 - g_target) <= tol
        return (
            k + 1,
            jnp.where(act, new_aim, aim),
            jnp.where(act, g1, g),
            jnp.where(act, r1, r),
            it + act.astype(jnp.int32),
            jnp.where(act, ok1, ok),
        )

    _, _, g, _, it, ok = jax.lax.while_loop(cond, body, state)
    return LoopResult(first=g0, verified=g, iterations=it, converged=ok)
