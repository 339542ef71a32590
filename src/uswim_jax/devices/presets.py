"""Device presets from published measurements: what one write of a device
does, how its conductance moves after programming, and how noisy a read is.

Every preset is a frozen dataclass with the same methods, all in uS and
seconds (``g`` below is ``G / g_max``):

- ``write_std(g_target)``: std of one write's error (cycle-to-cycle), uS;
- ``drift_nu(g_target)``: ``(mean, std)`` of the per-device drift exponent
  ``nu`` of ``G(t) = G(t0) (t / t0)^(-nu)`` (zeros: no drift);
- ``relaxation(g_target, t)``: ``(shift, std)`` of the conductance change from
  the programmed value to time ``t``, uS (one standard-normal draw per device,
  scaled by ``std(t)``, so a device keeps its direction as ``t`` grows);
- ``read_std(g_now, g_prog, t)``: std of one read at time ``t``, uS.

``t`` is the time since programming ended; ``t0`` is the time the programmed
state refers to (the drift model's reference time). The programmed state is
the state at ``t0``: for ``t <= t0`` there is no drift.

Presets (:func:`device_preset` by name):

- ``"pcm"``: :class:`PCMPreset`, Nandakumar et al., ICECS 2019, with the
  coefficients of IBM aihwkit's ``PCMLikeNoiseModel``.
- ``"rram"``: :class:`RRAMWanPreset`, Wan et al., Nature 608, 504 (2022), with
  the polynomial fits of aihwkit's ``ReRamWan2022NoiseModel``.
- ``"hfox"``: :class:`HfOxPreset`, CMO/HfOx RRAM (IBM Research Zurich;
  Falcone et al., in review), with the fits of aihwkit's
  ``ReRamCMONoiseModel``.
- ``"authors"``: :class:`FourLevelPreset`, the SWIM/U-SWIM authors' 4-level
  state-dependent device (Yan et al., DAC 2022; TCAD 2024).

The coefficients are facts from the papers as fitted in aihwkit's public
source (docs/devices.md lists them with what each preset leaves out); the
code is ours.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uswim_jax.device import LevelTableVariation, StateDependentVariation
from uswim_jax.devices.conductance import check_conductances

#: Preset names accepted by :func:`device_preset`.
PRESET_NAMES = ("pcm", "rram", "hfox", "authors")

#: Wan et al. 2022 polynomial fits (aihwkit), ascending powers of G / 40 uS,
#: std of the deviation from the target in uS at 1 s, 1 day and 2 days.
WAN_TIMES = (1.0, 86400.0, 172800.0)
WAN_COEFFS = (
    (0.348, 16.030, -43.853, 45.393, -16.815),
    (0.701, 22.086, -50.773, 47.095, -16.458),
    (0.782, 20.274, -43.507, 37.062, -11.934),
)
#: CMO/HfOx residual std after write-verify (aihwkit), ``c0 + c1 G`` uS, per
#: acceptance range (fraction of the target conductance).
HFOX_RESIDUAL = {0.002: (0.00081107, 0.00106879), 0.02: (0.0112185391, 0.01129027418)}


def _poly(c: tuple[float, ...], x: jax.Array) -> jax.Array:
    out = jnp.full(jnp.shape(x), c[-1], x.dtype)
    for ci in reversed(c[:-1]):
        out = out * x + jnp.asarray(ci, x.dtype)
    return out


def _arr(x: Any) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _check_number(name: str, v: Any, *, positive: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float | np.floating):
        raise ValueError(f"{name} must be a number, got {v!r}")
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        rule = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be finite and {rule}, got {v!r}")


def check_times(name: str, t: Any) -> None:
    """Raises ``ValueError`` naming ``name`` unless a concrete ``t`` (seconds)
    is finite and > 0. Traced values are not checked."""
    if isinstance(t, jax.core.Tracer):
        return
    arr = np.asarray(t, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be finite times > 0 s, got {t!r}")


class DevicePreset:
    """Shared behaviour of the presets (not instantiated directly)."""

    g_max: float
    g_min: float
    t0: float

    def _g(self, g: jax.Array) -> jax.Array:
        return jnp.clip(g / jnp.asarray(self.g_max, g.dtype), 0, 1)

    def _write_std(self, g: jax.Array) -> jax.Array:
        raise NotImplementedError

    def _drift_nu(self, g: jax.Array) -> tuple[jax.Array, jax.Array]:
        z = jnp.zeros(jnp.shape(g), g.dtype)
        return z, z

    def _relaxation(self, g: jax.Array, t: Any) -> tuple[jax.Array, jax.Array]:
        z = jnp.zeros(jnp.shape(g), g.dtype)
        return z, z

    def _read_std(self, g_now: jax.Array, g_prog: jax.Array, t: Any) -> jax.Array:
        return jnp.zeros(jnp.shape(g_now), g_now.dtype)

    def write_std(self, g_target: Any) -> jax.Array:
        """Std of one write's error, uS, for target conductances in
        ``[0, g_max]`` uS.

        Raises:
            ValueError: naming ``g_target`` if a concrete value is outside
                ``[0, g_max]`` or not finite.
        """
        check_conductances("g_target", g_target, upper=self.g_max)
        return self._write_std(_arr(g_target))

    def drift_nu(self, g_target: Any) -> tuple[jax.Array, jax.Array]:
        """``(mean, std)`` of the drift exponent for targets in
        ``[0, g_max]`` uS (zeros for a preset without drift).

        Raises:
            ValueError: naming ``g_target`` if out of range.
        """
        check_conductances("g_target", g_target, upper=self.g_max)
        return self._drift_nu(_arr(g_target))

    def relaxation(self, g_target: Any, t: Any) -> tuple[jax.Array, jax.Array]:
        """``(shift, std)`` in uS of the conductance change from programming
        to ``t`` seconds (zeros for a preset without relaxation).

        Raises:
            ValueError: naming ``g_target`` or ``t`` if out of range.
        """
        check_conductances("g_target", g_target, upper=self.g_max)
        check_times("t", t)
        return self._relaxation(_arr(g_target), t)

    def read_std(self, g_now: Any, g_prog: Any, t: Any) -> jax.Array:
        """Std of one read at ``t`` seconds, uS, of a device now at ``g_now``
        programmed to ``g_prog`` (both >= 0 uS).

        Raises:
            ValueError: naming ``g_now``, ``g_prog`` or ``t`` if out of range.
        """
        check_conductances("g_now", g_now)
        check_conductances("g_prog", g_prog)
        check_times("t", t)
        return self._read_std(_arr(g_now), _arr(g_prog), t)

    @property
    def has_time_effects(self) -> bool:
        """Whether conductances change after programming (drift/relaxation)."""
        return True

    def verify_defaults(self) -> dict[str, Any]:
        """The :class:`~uswim_jax.devices.verify.VerifyLoop` settings a
        :class:`~uswim_jax.devices.model.ConductanceDevice` uses when given no
        loop (empty: the loop's own defaults)."""
        return {}


def _check_range(p: Any) -> None:
    _check_number("g_max", p.g_max, positive=True)
    _check_number("g_min", p.g_min)
    if p.g_max <= p.g_min:
        raise ValueError(f"g_max ({p.g_max!r} uS) must exceed g_min ({p.g_min!r} uS)")
    _check_number("t0", p.t0, positive=True)


@dataclasses.dataclass(frozen=True)
class PCMPreset(DevicePreset):
    """PCM, Nandakumar et al., "Phase-change memory models for deep learning
    training and inference", ICECS 2019, as fitted in aihwkit's
    ``PCMLikeNoiseModel``.

    With ``g = G_target / g_max``:

    - write std ``(0.26348 + 1.9650 g - 1.1731 g^2) * g_max / 25`` uS (the fit
      is for ``g_max = 25`` uS; another ``g_max`` scales it, as aihwkit does);
    - drift exponent ``nu = |mu + sd z|`` per device with
      ``mu = clip(-0.0155 ln g + 0.0244, 0.049, 0.1)`` and
      ``sd = clip(-0.0125 ln g - 0.0059, 0.008, 0.045)`` (``g >= 1e-7``),
      reference time ``t0 = 20`` s;
    - 1/f read noise std ``|G(t)| Q sqrt(ln((t + t_read) / (2 t_read)))``,
      ``Q = min(0.0088 / max(g_prog^0.65, 1e-3), 0.2)``, ``t_read = 250`` ns
      (the log is taken as 0 for ``t < t_read``).

    Args:
        g_max: conductance range top, uS (default 25).
        g_min: bottom, uS (default 0).
        t0: drift reference time, s (default 20).
        t_read: 1/f read noise time constant, s (default 250e-9).

    Raises:
        ValueError: naming the argument for a non-finite or out-of-range value.
    """

    g_max: float = 25.0
    g_min: float = 0.0
    t0: float = 20.0
    t_read: float = 250e-9

    def __post_init__(self):
        _check_range(self)
        _check_number("t_read", self.t_read, positive=True)

    def _write_std(self, g):
        c = (0.26348, 1.9650, -1.1731)
        return _poly(c, self._g(g)) * jnp.asarray(self.g_max / 25.0, g.dtype)

    def _drift_nu(self, g):
        lg = jnp.log(jnp.maximum(self._g(g), jnp.asarray(1e-7, g.dtype)))
        c = lambda v: jnp.asarray(v, g.dtype)  # noqa: E731
        mu = jnp.clip(c(-0.0155) * lg + c(0.0244), c(0.049), c(0.1))
        sd = jnp.clip(c(-0.0125) * lg - c(0.0059), c(0.008), c(0.045))
        return mu, sd

    def _read_std(self, g_now, g_prog, t):
        dt = g_now.dtype
        gp = self._g(g_prog)
        q = jnp.minimum(
            jnp.asarray(0.0088, dt) / jnp.maximum(gp**0.65, jnp.asarray(1e-3, dt)),
            jnp.asarray(0.2, dt),
        )
        t = jnp.asarray(t, dt)
        tr = jnp.asarray(self.t_read, dt)
        log = jnp.maximum(jnp.log((t + tr) / (2 * tr)), jnp.zeros((), dt))
        return jnp.abs(g_now) * q * jnp.sqrt(log)


@dataclasses.dataclass(frozen=True)
class RRAMWanPreset(DevicePreset):
    """RRAM, Wan et al., "A compute-in-memory chip based on resistive
    random-access memory", Nature 608, 504-512 (2022), Extended Data Fig. 3d,
    as fitted by aihwkit's ``ReRamWan2022NoiseModel`` (4th-order polynomials
    read off the published figure, so a fit of curves, not the authors' own
    coefficients).

    The fits give the std of the deviation from the target (after the paper's
    own iterative write-verify) at 1 s, 1 day and 2 days, in uS, as
    polynomials of ``g = G / g_max`` (reference ``g_max = 40`` uS; another
    ``g_max`` scales them): :data:`WAN_COEFFS` at :data:`WAN_TIMES`. Here:

    - write std = the 1 s fit (one write's error: the paper's programmed
      spread is taken as what a single write leaves);
    - relaxation: zero mean, std ``sqrt(s(t)^2 - s(1 s)^2)`` with ``s(t)^2``
      interpolated linearly in ``ln t`` between the three times, ``s(1 s)``
      before 1 s and held at 2 days after (the data stop there); the 2-day fit
      lies up to 0.03 uS below the 1-day fit for ``g < 0.15`` and is taken as
      ``max`` of the two (a spread that does not shrink);
    - no drift exponent and no read noise (not in the data).

    Args:
        g_max: range top, uS (default 40).
        g_min: bottom, uS (default 0).
        t0: time of the programmed state, s (default 1).

    Raises:
        ValueError: naming the argument for an out-of-range value.
    """

    g_max: float = 40.0
    g_min: float = 0.0
    t0: float = 1.0

    def __post_init__(self):
        _check_range(self)

    def _sigmas(self, g):
        x = self._g(g)
        scale = jnp.asarray(self.g_max / 40.0, g.dtype)
        s = [
            jnp.maximum(_poly(c, x), jnp.zeros((), g.dtype)) * scale for c in WAN_COEFFS
        ]
        s[2] = jnp.maximum(s[2], s[1])
        return s

    def _write_std(self, g):
        return self._sigmas(g)[0]

    def _relaxation(self, g, t):
        dt = g.dtype
        s1, sd1, sd2 = self._sigmas(g)
        lt = jnp.log(jnp.clip(jnp.asarray(t, dt), 1.0, WAN_TIMES[2]))
        l1, l2 = math.log(WAN_TIMES[1]), math.log(WAN_TIMES[2])
        f1 = jnp.clip(lt / jnp.asarray(l1, dt), 0, 1)
        f2 = jnp.clip((lt - jnp.asarray(l1, dt)) / jnp.asarray(l2 - l1, dt), 0, 1)
        var = jnp.where(
            lt <= jnp.asarray(l1, dt),
            s1**2 + f1 * (sd1**2 - s1**2),
            sd1**2 + f2 * (sd2**2 - sd1**2),
        )
        std = jnp.sqrt(jnp.maximum(var - s1**2, jnp.zeros((), dt)))
        return jnp.zeros(jnp.shape(g), dt), std


@dataclasses.dataclass(frozen=True)
class HfOxPreset(DevicePreset):
    """CMO/HfOx RRAM (IBM Research Zurich; Falcone et al., in review), as
    fitted in aihwkit's ``ReRamCMONoiseModel``; conductances 9-88.19 uS.

    - Residual std after write-verify, per acceptance range (fraction of the
      target): ``0.00081107 + 0.00106879 G`` uS at 0.2 % and
      ``0.0112185391 + 0.01129027418 G`` at 2 % (:data:`HFOX_RESIDUAL`,
      :meth:`residual_std`). A loop that accepts ``|G - G_target| <= a
      G_target`` leaves a residual close to uniform in that band, std
      ``a G / sqrt(3)`` = ``0.001155 G`` and ``0.01155 G``: the fits are what
      :class:`~uswim_jax.devices.verify.VerifyLoop` with
      ``relative_to="target"`` produces (docs/devices.md gives the measured
      comparison).
    - One write's std is not in the source: ``write_rel_std`` (default 0.1,
      10 % of the target) is an assumption; it sets the iteration counts, not
      the residual, as long as it is well above the acceptance band.
    - Relaxation: mean shift ``-0.08900206 ln t`` uS and std
      ``0.04201137 ln t + 0.41183342`` uS, independent of ``G``, with ``t``
      taken as at least 1 s.
    - Read noise std ``0.0277316483 log10(G) sqrt(ln((t + t_read) /
      (2 t_read)))`` uS, ``t_read = 1`` us (``G`` taken as at least 1 uS, the
      log as 0 for ``t < t_read``).

    Args:
        g_max: range top, uS (default 88.19).
        g_min: bottom, uS (default 9).
        t0: time of the programmed state, s (default 1).
        write_rel_std: one write's std as a fraction of the target (>= 0).
        t_read: read noise time constant, s (default 1e-6).

    Raises:
        ValueError: naming the argument for an out-of-range value.
    """

    g_max: float = 88.19
    g_min: float = 9.0
    t0: float = 1.0
    write_rel_std: float = 0.1
    t_read: float = 1e-6

    def __post_init__(self):
        _check_range(self)
        _check_number("write_rel_std", self.write_rel_std)
        _check_number("t_read", self.t_read, positive=True)

    def _write_std(self, g):
        return jnp.asarray(self.write_rel_std, g.dtype) * jnp.abs(g)

    def _relaxation(self, g, t):
        dt = g.dtype
        lt = jnp.log(jnp.maximum(jnp.asarray(t, dt), jnp.ones((), dt)))
        shift = jnp.asarray(-0.08900206, dt) * lt
        std = jnp.asarray(0.04201137, dt) * lt + jnp.asarray(0.41183342, dt)
        ones = jnp.ones(jnp.shape(g), dt)
        return shift * ones, std * ones

    def _read_std(self, g_now, g_prog, t):
        dt = g_now.dtype
        t = jnp.asarray(t, dt)
        tr = jnp.asarray(self.t_read, dt)
        log = jnp.maximum(jnp.log((t + tr) / (2 * tr)), jnp.zeros((), dt))
        lg = jnp.log10(jnp.maximum(g_now, jnp.ones((), dt)))
        return jnp.asarray(0.0277316483, dt) * lg * jnp.sqrt(log)

    def residual_std(self, g: Any, acceptance: float) -> jax.Array:
        """The measured residual std after write-verify, uS, at an acceptance
        range the source has (0.002 or 0.02).

        Raises:
            ValueError: naming ``acceptance`` for another value, or ``g`` out
                of range.
        """
        if acceptance not in HFOX_RESIDUAL:
            raise ValueError(
                f"acceptance must be one of {sorted(HFOX_RESIDUAL)} (the measured "
                f"ranges), got {acceptance!r}"
            )
        check_conductances("g", g, upper=self.g_max)
        g = _arr(g)
        c0, c1 = HFOX_RESIDUAL[acceptance]
        return jnp.asarray(c0, g.dtype) + jnp.asarray(c1, g.dtype) * g


@dataclasses.dataclass(frozen=True)
class FourLevelPreset(DevicePreset):
    """The SWIM/U-SWIM authors' 4-level state-dependent device (Yan, Hu, Shi,
    DAC 2022 and IEEE TCAD 2024; docs/method.md §2.4), as a conductance preset.

    A device's state is ``g = (G - g_min) / (g_max - g_min)``; a middle state
    (``0.25 < g < 0.75``, levels 1 and 2 of a 4-level cell) has ``s`` times the
    std of an extreme state, and every std is divided by
    ``sqrt(0.4 s^2 + 0.6)`` (so the mean variance is ``sigma^2`` when 40 % of
    the devices are in a middle state). One write's std is
    ``sigma * multiplier * level_step`` with ``level_step = (g_max - g_min) /
    (levels - 1)`` (the rule is :meth:`table`, the library's one copy of it).
    No drift, relaxation or read noise. Its default verify loop
    (:meth:`verify_defaults`) leaves ``verified_ratio`` times a write's std,
    as the authors' ``sigma_verified = sigma / 10``.

    Unlike the authors' code, the state is the device's own conductance, not
    the weight's magnitude ``|W| / max|W_l|`` (they coincide for a weight's
    active device on an analog pair; the other device of the pair, at
    ``g_min``, is an extreme state).

    Args:
        sigma: std of one write in level steps (default 0.3, the authors').
        s: middle-state std ratio (> 0, default 2).
        levels: levels per device (default 4).
        g_max, g_min: range, uS (defaults 25 and 0).
        t0: time of the programmed state, s (default 1).
        verified_ratio: std a verified device keeps, as a fraction of one
            write's, in (0, 1) (default 0.1, the authors').

    Raises:
        ValueError: naming the argument for an out-of-range value.
    """

    sigma: float = 0.3
    s: float = 2.0
    levels: int = 4
    g_max: float = 25.0
    g_min: float = 0.0
    t0: float = 1.0
    verified_ratio: float = 0.1

    def __post_init__(self):
        _check_range(self)
        _check_number("sigma", self.sigma)
        _check_number("s", self.s, positive=True)
        if isinstance(self.levels, bool) or not isinstance(self.levels, int):
            raise ValueError(f"levels must be an int >= 2, got {self.levels!r}")
        if self.levels < 2:
            raise ValueError(f"levels must be an int >= 2, got {self.levels!r}")
        _check_number("verified_ratio", self.verified_ratio, positive=True)
        if self.verified_ratio >= 1:
            raise ValueError(
                f"verified_ratio must lie in (0, 1), got {self.verified_ratio!r}"
            )

    def table(self) -> LevelTableVariation:
        """The authors' rule as a level table (the one copy of it:
        :meth:`uswim_jax.StateDependentVariation.to_table`), in level steps
        of the device's own state ``(G - g_min) / (g_max - g_min)``."""
        return StateDependentVariation(
            self.sigma, self.verified_ratio * self.sigma, self.s
        ).to_table()

    def _write_std(self, g):
        dt = g.dtype
        x = (g - jnp.asarray(self.g_min, dt)) / jnp.asarray(self.g_max - self.g_min, dt)
        written, _ = self.table()._relative_std(x)
        step = (self.g_max - self.g_min) / (self.levels - 1)
        return jnp.asarray(step, dt) * written

    def verify_defaults(self) -> dict[str, Any]:
        """A loop that leaves the authors' verified std, ``verified_ratio``
        times a write's (0.03 level steps at the defaults, with the same state
        pattern), and converges.

        The model's writes are memoryless (each one a fresh ``N(aim,
        write_std^2)``, no read noise), so re-aiming cannot help
        (``correction = 0``: plain retries), and a band fixed in uS cannot give
        every state the same residual: the band is ``c`` times each device's
        own write std (``relative_to="write_std"``), with ``c`` such that the
        normal truncated to ``[-c, c]`` has std ``verified_ratio``
        (:meth:`~uswim_jax.devices.verify.VerifyLoop.residual_std`; ``c =
        0.1734`` at 0.1). A write lands in the band with ``p = erf(c /
        sqrt(2))`` (0.138: 7.3 writes on average, near the authors' assumed 10
        cycles per verify), and ``max_iterations`` is the smallest count that
        leaves at most 1e-4 of the devices unconverged, ``(1 - p)^n <= 1e-4``
        (63 at 0.1).

        The loop's own defaults (1 % of ``g_max`` = 0.25 uS, 10-13 times
        below one write's 1.7-3.4 uS, and ``correction = 0.5``, which adds
        variance to memoryless writes) accept a write with ``p`` of 5-10 %,
        so 20 writes leave about a third of the middle-state devices
        unconverged (docs/devices.md).
        """
        c = _truncated_band(self.verified_ratio)
        p = math.erf(c / math.sqrt(2.0))
        n = math.ceil(math.log(1e-4) / math.log1p(-p))
        return {
            "acceptance": c,
            "relative_to": "write_std",
            "correction": 0.0,
            "max_iterations": n,
        }

    @property
    def has_time_effects(self) -> bool:
        return False


def _truncated_band(ratio: float) -> float:
    """``c`` with ``std(Z | |Z| <= c) = ratio`` for a standard normal ``Z``
    (bisection; ``ratio`` in (0, 1))."""

    def std(c: float) -> float:
        phi = math.exp(-0.5 * c * c) / math.sqrt(2 * math.pi)
        return math.sqrt(max(1 - 2 * c * phi / math.erf(c / math.sqrt(2.0)), 0.0))

    lo, hi = 1e-9, 50.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if std(mid) < ratio else (lo, mid)
    return 0.5 * (lo + hi)


_CLASSES = {
    "pcm": PCMPreset,
    "rram": RRAMWanPreset,
    "hfox": HfOxPreset,
    "authors": FourLevelPreset,
}


def device_preset(name: str, **overrides: Any) -> DevicePreset:
    """A preset by name, with fields overridden.

    Args:
        name: one of :data:`PRESET_NAMES` (``"pcm"``, ``"rram"``, ``"hfox"``,
            ``"authors"``).
        **overrides: fields of the preset's class (e.g. ``g_max=20.0``).

    Returns:
        The preset.

    Raises:
        ValueError: naming ``name`` for an unknown preset, or the field for an
            unknown or out-of-range override.

    Examples:
        >>> p = device_preset("pcm")
        >>> round(float(p.write_std(25.0)), 4)  # 0.26348 + 1.9650 - 1.1731
        1.0554
    """
    if name not in _CLASSES:
        raise ValueError(f"name must be one of {PRESET_NAMES}, got {name!r}")
    cls = _CLASSES[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"{cls.__name__} has no field {', '.join(unknown)} (fields: "
            f"{', '.join(sorted(fields))})"
        )
    return cls(**overrides)
