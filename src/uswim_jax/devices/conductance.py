"""Weights to device conductances and back.

A crossbar layer ``W_l`` is stored on devices whose conductances are in
microsiemens (uS). The layer's scale is ``max|W_l|`` (as the SWIM/U-SWIM
authors and aihwkit's ``SinglePairConductanceConverter``): the largest weight
maps to ``g_max``, a zero weight to ``g_min`` on both devices.

Two mappings, one interface (:class:`ConductanceMap`):

- :class:`DifferentialPair`: one analog pair ``(G+, G-)`` per weight,
  ``G+ = g_min + (g_max - g_min) max(W, 0) / max|W_l|`` and
  ``G- = g_min + (g_max - g_min) max(-W, 0) / max|W_l|``, so
  ``W = max|W_l| (G+ - G-) / (g_max - g_min)``. No quantisation.
- :class:`BitSlicedPair`: ``|W|`` is quantised to ``N = weight_bits`` bits,
  ``q = min(round(|W| / max|W_l| * 2^N), 2^N - 1)``, and split into ``N / m``
  digits of ``m = device_bits`` bits (most significant first); digit ``i`` is
  held by a pair whose device on the weight's sign side has
  ``G = g_min + d_i (g_max - g_min) / (2^m - 1)`` (the other at ``g_min``), so
  ``W = max|W_l| sum_i 2^(-i m) (2^m - 1) (G+_i - G-_i) / (g_max - g_min)``.
  One level step is ``(g_max - g_min) / (2^m - 1)`` uS, worth ``2^(-i m)
  max|W_l|`` of the weight: the units of :mod:`uswim_jax.device`.

Conductances of one leaf ``w`` of shape ``s`` are an array of shape
``(*s, S, 2)``: ``S`` slices (1 for the analog pair) by ``(G+, G-)``.
:meth:`ConductanceMap.decode` inverts :meth:`ConductanceMap.encode` exactly up
to float rounding on the analog pair and up to quantisation on the sliced one.

References:
    Rasch et al., "Hardware-aware training for large-scale and diverse deep
    learning inference workloads using in-memory computing-based
    accelerators", Nature Communications 14, 5282 (2023) (the differential-pair
    mapping of aihwkit). Shafiee et al., "ISAAC", ISCA 2016 (bit slicing).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uswim_jax._checks import is_concrete
from uswim_jax.device import check_bits


def _check_range(g_max: Any, g_min: Any) -> None:
    for name, v in (("g_max", g_max), ("g_min", g_min)):
        if isinstance(v, bool) or not isinstance(v, int | float | np.floating):
            raise ValueError(f"{name} must be a number in uS, got {v!r}")
        if not np.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v!r}")
    if g_min < 0:
        raise ValueError(f"g_min must be >= 0 uS, got {g_min!r}")
    if g_max <= g_min:
        raise ValueError(f"g_max ({g_max!r} uS) must exceed g_min ({g_min!r} uS)")


def layer_scale(w: Any) -> jax.Array:
    """The layer's scale ``max|W_l|`` (0 for an empty or all-zero leaf), from
    ``stop_gradient(w)``."""
    a = jnp.abs(jax.lax.stop_gradient(jnp.asarray(w)))
    return jnp.max(a) if a.size else jnp.zeros((), a.dtype)


def check_conductances(name: str, g: Any, upper: float | None = None) -> None:
    """Raises ``ValueError`` naming ``name`` if a concrete array of
    conductances holds NaN/Inf, a negative value, or (with ``upper``) a value
    above ``upper`` uS. Traced values are not checked."""
    if not is_concrete(g):
        return
    arr = np.asarray(g)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite conductances in uS")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be >= 0 uS, got a minimum of {arr.min()!r}")
    if upper is not None and arr.size and arr.max() > upper:
        raise ValueError(
            f"{name} must be <= {upper!r} uS (g_max), got a maximum of {arr.max()!r}"
        )


class ConductanceMap:
    """Shared behaviour of the mappings (not instantiated directly)."""

    g_max: float
    g_min: float

    @property
    def num_slices(self) -> int:
        """Pairs per weight, ``S``."""
        raise NotImplementedError

    @property
    def devices_per_weight(self) -> int:
        """Devices per weight, ``2 S``."""
        return 2 * self.num_slices

    def _slice_weights(self) -> np.ndarray:
        """``(S,)`` weight of one full-range step ``g_max - g_min`` of each
        slice, in units of ``max|W_l|``."""
        raise NotImplementedError

    def _magnitudes(self, r: jax.Array) -> jax.Array:
        """``(*s, S)`` fraction of the range ``[g_min, g_max]`` of each slice's
        active device for normalised magnitudes ``r`` in [0, 1]."""
        raise NotImplementedError

    def encode(self, w: Any, scale: Any = None) -> jax.Array:
        """Target conductances of a leaf, uS, shape ``(*w.shape, S, 2)``.

        Args:
            w: one crossbar leaf (float array).
            scale: the layer's ``max|W_l|`` (default :func:`layer_scale`).

        Returns:
            ``G`` with ``G[..., i, 0] = G+`` and ``G[..., i, 1] = G-``.
        """
        w = jnp.asarray(w)
        dtype = w.dtype
        scale = layer_scale(w) if scale is None else jnp.asarray(scale, dtype)
        safe = jnp.where(scale > 0, scale, jnp.ones((), dtype))
        r = jnp.clip(jnp.abs(w) / safe, 0, 1)
        frac = self._magnitudes(r)  # (*s, S)
        pos = (w >= 0)[..., None]
        span = jnp.asarray(self.g_max - self.g_min, dtype)
        lo = jnp.asarray(self.g_min, dtype)
        active = lo + span * frac
        gp = jnp.where(pos, active, lo)
        gm = jnp.where(pos, lo, active)
        return jnp.stack([gp, gm], axis=-1)

    def decode(self, g: Any, scale: Any) -> jax.Array:
        """Weights from conductances (any values, programmed ones included).

        Args:
            g: conductances, uS, shape ``(*s, S, 2)``.
            scale: the layer's ``max|W_l|``.

        Returns:
            ``W`` of shape ``s``.

        Raises:
            ValueError: naming ``g`` if its last two axes are not ``(S, 2)``
                or a concrete value is negative or not finite.
        """
        g = jnp.asarray(g)
        if g.ndim < 2 or g.shape[-2:] != (self.num_slices, 2):
            raise ValueError(
                f"g must have trailing axes ({self.num_slices}, 2), got {g.shape}"
            )
        check_conductances("g", g)
        return self._decode(g, scale)

    def _decode(self, g: jax.Array, scale: Any) -> jax.Array:
        dtype = g.dtype
        diff = (g[..., 0] - g[..., 1]) / jnp.asarray(self.g_max - self.g_min, dtype)
        sw = jnp.asarray(self._slice_weights(), dtype)
        sw = sw.reshape((1,) * (diff.ndim - 1) + (-1,))
        return jnp.asarray(scale, dtype) * jnp.sum(diff * sw, axis=-1)

    def level_step(self) -> float:
        """One level step of a device, uS."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class DifferentialPair(ConductanceMap):
    """One analog pair ``(G+, G-)`` per weight (see the module docstring).

    Args:
        g_max: conductance of the largest weight, uS (> g_min).
        g_min: conductance of a zero weight, uS (>= 0).

    Raises:
        ValueError: naming ``g_max`` or ``g_min`` when not ``0 <= g_min <
            g_max`` (finite).

    Examples:
        >>> import jax.numpy as jnp
        >>> m = DifferentialPair(g_max=25.0)
        >>> g = m.encode(jnp.array([0.5, -1.0]))
        >>> [float(v) for v in g[0, 0]], [float(v) for v in g[1, 0]]
        ([12.5, 0.0], [0.0, 25.0])
    """

    g_max: float = 25.0
    g_min: float = 0.0

    def __post_init__(self):
        _check_range(self.g_max, self.g_min)

    @property
    def num_slices(self) -> int:
        return 1

    def _slice_weights(self):
        return np.ones(1)

    def _magnitudes(self, r):
        return r[..., None]

    def level_step(self) -> float:
        """The analog range ``g_max - g_min``, uS."""
        return float(self.g_max - self.g_min)


@dataclasses.dataclass(frozen=True)
class BitSlicedPair(ConductanceMap):
    """``N / m`` pairs of ``m``-bit multi-level cells per weight (see the
    module docstring).

    Args:
        g_max: conductance of the top level, uS (> g_min).
        g_min: conductance of level 0, uS (>= 0).
        weight_bits: bits ``N`` of a weight's magnitude.
        device_bits: bits ``m`` per device (divides ``N``).

    Raises:
        ValueError: naming the argument for an invalid range or bits.
    """

    g_max: float = 25.0
    g_min: float = 0.0
    weight_bits: int = 8
    device_bits: int = 2

    def __post_init__(self):
        _check_range(self.g_max, self.g_min)
        check_bits(self.weight_bits, self.device_bits)

    @property
    def num_slices(self) -> int:
        return self.weight_bits // self.device_bits

    @property
    def levels(self) -> int:
        """Levels per device, ``2^m``."""
        return 2**self.device_bits

    def _slice_weights(self):
        m = self.device_bits
        i = np.arange(1, self.num_slices + 1, dtype=np.float64)
        return 2.0 ** (-i * m) * (2**m - 1)

    def _magnitudes(self, r):
        n, m = self.weight_bits, self.device_bits
        top = 2**n - 1
        q = jnp.clip(jnp.round(r * jnp.asarray(2.0**n, r.dtype)), 0, top)
        q = q.astype(jnp.int32)
        shifts = [m * (self.num_slices - 1 - i) for i in range(n // m)]
        shifts = jnp.asarray(shifts, jnp.int32).reshape((1,) * q.ndim + (-1,))
        digits = (q[..., None] >> shifts) & (2**m - 1)
        return digits.astype(r.dtype) / jnp.asarray(2**m - 1, r.dtype)

    def level_step(self) -> float:
        """``(g_max - g_min) / (2^m - 1)``, uS."""
        return float(self.g_max - self.g_min) / (2**self.device_bits - 1)
