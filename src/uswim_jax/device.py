"""Device variation models: what a weight becomes when it is written to a crossbar.

Every model is a frozen dataclass registered as a pytree: numeric parameters
(``sigma``, ``sigma_verified``, ``s``, multiplier tables, ``verify_cycles``) are
leaves, so sweeping them under ``jit`` or ``vmap`` never recompiles; structural
choices (bits, level edges, the crossbar predicate) are static.

Units. ``sigma`` is the std of one device's programming error in units of that
device's conductance level step (docs/method.md §2.2). A weight is bit-sliced onto
``N / m`` devices (``N = weight_bits``, ``m = device_bits``) with place values
``2^(-i*m)`` of the layer's range ``max|W_l|``, so the per-weight error std is::

    std(ΔW) = sigma * c(N, m) * max|W_l|,   c(N, m) = sqrt(sum_{i=1}^{N/m} 4^(-i*m))

with ``c(8, 1) = 0.57735``. A write-verified weight has the same form with
``sigma_verified``.

Which leaves are on the crossbar is decided by a predicate over leaf paths
(default :func:`uswim_jax.default_crossbar`: conv and dense kernels); all other
leaves stay exact (std 0, never perturbed).

``verified`` arguments are pytrees like ``params`` holding booleans (or 0/1
numbers): True means the weight is write-verified. Leaves off the crossbar ignore
it; ``None`` means nothing is verified.

Every model implements the device-model protocol (:class:`DeviceModel`:
``program``, ``program_with_cost``, ``write_cycles``, ``crossbar``,
``devices_per_weight``) and the optional closed form (:class:`ClosedFormStd`:
``std``, ``effective_std``): ``program(key, params, verified)`` is exactly
``add_noise(params, effective_std(params, verified), noise_like(key, params,
crossbar), crossbar)``, and the cost does not depend on the draw.

References:
    Yan, Hu, Shi. SWIM: Selective Write-Verify for Computing-in-Memory Neural
    Accelerators. DAC 2022 (arXiv 2202.08395). U-SWIM: Universal Selective
    Write-Verify, IEEE TCAD 2024 (arXiv 2401.05357). See docs/device.md.
"""

import dataclasses
import math
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from uswim_jax._checks import (
    check_finite_tree,
    check_key,
    check_same_structure,
)
from uswim_jax._protocol import ClosedFormStd as ClosedFormStd
from uswim_jax._protocol import DeviceModel as DeviceModel
from uswim_jax._protocol import Programmed as Programmed
from uswim_jax._protocol import WriteCycles as WriteCycles
from uswim_jax._tree import (
    CrossbarPredicate,
    check_crossbar,
    default_crossbar,
    map_crossbar,
    on_crossbar,
    path_str,
)

#: How to choose the crossbar leaves of a device model, for error messages.
DEVICE_FIX = "pass crossbar=... to the device model"

#: The authors' code defaults (docs/method.md §2.2): device std before and after
#: write-verify, in units of the device level step.
DEFAULT_SIGMA = 0.3
DEFAULT_SIGMA_VERIFIED = 0.03
#: Default cost of write-verifying one device, in write cycles (docs/method.md §2.5).
DEFAULT_VERIFY_CYCLES = 10.0

PyTree = Any


# ----------------------------------------------------------------------------
# bit slicing
# ----------------------------------------------------------------------------


def check_bits(weight_bits: Any, device_bits: Any) -> int:
    """Validates the bit-slicing parameters and returns ``N / m``.

    Args:
        weight_bits: bits per weight ``N`` (a positive int).
        device_bits: bits per device ``m`` (a positive int dividing ``N``).

    Returns:
        The number of devices per weight, ``N // m``.

    Raises:
        ValueError: naming ``weight_bits`` or ``device_bits`` when either is not a
            positive integer, or when ``weight_bits`` is not divisible by
            ``device_bits``.
    """
    for name, v in (("weight_bits", weight_bits), ("device_bits", device_bits)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if weight_bits % device_bits:
        raise ValueError(
            f"weight_bits ({weight_bits}) must be divisible by device_bits "
            f"({device_bits})"
        )
    return int(weight_bits) // int(device_bits)


def place_values(weight_bits: int = 8, device_bits: int = 1) -> np.ndarray:
    """Place value of one level step of each device, ``2^(-i*m)`` for
    ``i = 1..N/m`` (MSB device first), in units of ``max|W_l|``.

    Args:
        weight_bits: bits per weight ``N``.
        device_bits: bits per device ``m``.

    Returns:
        A float64 NumPy array of shape ``(N // m,)``.

    Raises:
        ValueError: if the bits are invalid (see :func:`check_bits`).
    """
    n = check_bits(weight_bits, device_bits)
    return 2.0 ** (-device_bits * np.arange(1, n + 1, dtype=np.float64))


def slicing_factor(weight_bits: int = 8, device_bits: int = 1) -> float:
    """``c(N, m) = sqrt(sum_{i=1}^{N/m} 4^(-i*m))`` (docs/method.md §2.2).

    The std of a weight's error, in units of ``max|W_l|``, when each of its
    ``N / m`` devices gets an independent unit-std error in its own level steps.

    Args:
        weight_bits: bits per weight ``N``.
        device_bits: bits per device ``m``.

    Returns:
        ``c(N, m)`` as a Python float; ``c(8, 1) = 0.57735``.

    Raises:
        ValueError: if the bits are invalid (see :func:`check_bits`).

    Examples:
        >>> round(slicing_factor(8, 1), 5)
        0.57735
    """
    return float(math.sqrt(np.sum(place_values(weight_bits, device_bits) ** 2)))


# ----------------------------------------------------------------------------
# pytree helpers
# ----------------------------------------------------------------------------


def _float_dtype(x: Any) -> Any:
    dt = jnp.result_type(x)
    return dt if jnp.issubdtype(dt, jnp.floating) else jnp.result_type(float)


def leaf_key(key: jax.Array, path: str) -> jax.Array:
    """A key derived from ``key`` and a leaf's path: ``fold_in(key,
    crc32(path))``. Kept for models that draw per leaf (the Gaussian models
    draw every crossbar leaf at once, see :func:`noise_like`).

    Args:
        key: a ``jax.random`` key.
        path: the leaf's ``"/"``-joined path (see ``uswim_jax._tree.path_str``).

    Returns:
        A key derived deterministically from ``key`` and ``path``.
    """
    return jax.random.fold_in(key, zlib.crc32(path.encode()) & 0x7FFFFFFF)


def dtype_key(key: jax.Array, dtype: Any) -> jax.Array:
    """The key of :func:`noise_like`'s draw for the crossbar leaves of one
    dtype: ``fold_in(key, crc32(dtype name))``."""
    name = np.dtype(dtype).name
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def noise_like(
    key: jax.Array, params: PyTree, predicate: CrossbarPredicate | None = None
) -> PyTree:
    """Standard-normal draws shaped like each crossbar leaf; zeros elsewhere.

    One flat draw per dtype: the crossbar leaves of each float dtype (float32
    for non-float leaves) are, in tree-flatten order, consecutive slices of one
    ``jax.random.normal(dtype_key(key, dtype), (their total size,), dtype)``, so
    a trial costs one random-number kernel, not one per leaf (a shorter
    compile). A leaf's draw therefore depends on the sizes of the crossbar
    leaves before it. With ``std = device.effective_std(params, verified)`` a
    noisy instance is ``add_noise(params, std, z, device.crossbar)``, which is
    exactly what ``device.program(key, params, verified)`` returns for the same
    key.

    Args:
        key: a ``jax.random`` key; the key is consumed.
        params: any pytree of arrays.
        predicate: ``predicate(path, leaf) -> bool`` choosing the crossbar leaves
            (default :func:`uswim_jax.default_crossbar`).

    Returns:
        A pytree like ``params``: N(0, 1) draws on crossbar leaves, zeros on the
        others.

    Raises:
        ValueError: if no leaf of ``params`` is on the crossbar.
    """
    check_key("key", key)
    check_crossbar("params", params, predicate)
    pairs, treedef = jax.tree_util.tree_flatten_with_path(params)
    dtypes = [_float_dtype(x) for _, x in pairs]
    on = [on_crossbar(predicate, path_str(p), x) for p, x in pairs]
    out = [jnp.zeros(jnp.shape(x), d) for (_, x), d in zip(pairs, dtypes, strict=True)]
    for dtype in dict.fromkeys(d for d, o in zip(dtypes, on, strict=True) if o):
        idx = [
            i
            for i, (d, o) in enumerate(zip(dtypes, on, strict=True))
            if o and d == dtype
        ]
        sizes = [int(np.prod(jnp.shape(pairs[i][1]))) for i in idx]
        flat = jax.random.normal(dtype_key(key, dtype), (sum(sizes),), dtype)
        start = 0
        for i, size in zip(idx, sizes, strict=True):
            out[i] = flat[start : start + size].reshape(jnp.shape(pairs[i][1]))
            start += size
    return treedef.unflatten(out)


def _noisy_leaf(w: Any, s: Any, n: Any) -> jax.Array:
    # where: an exact identity where s = 0 (no subnormal flush, -0.0 kept)
    return jnp.where(s > 0, w + s * n, w).astype(jnp.result_type(w))


def add_noise(
    params: PyTree,
    std: PyTree,
    z: PyTree,
    predicate: CrossbarPredicate | None = None,
) -> PyTree:
    """``params + std * z`` on the crossbar leaves, in each leaf's dtype.

    The one place the additive noise formula is written: every Gaussian model's
    :meth:`~GaussianVariation.program` is ``add_noise(params,
    effective_std(params, verified), noise_like(key, params, crossbar),
    crossbar)``, so an engine that draws ``z`` once and rescales it by another
    mask's std gets the same bits. Where ``std`` is 0 the weight is returned
    exactly (a ``where``, not ``w + 0 * z``); leaves off the crossbar are
    returned untouched (they may be of any dtype).

    Args:
        params: any pytree of arrays.
        std: a pytree like ``params`` of per-weight stds (see
            :meth:`GaussianVariation.effective_std`).
        z: a pytree like ``params`` of standard-normal draws (see
            :func:`noise_like`).
        predicate: the crossbar predicate (default
            :func:`uswim_jax.default_crossbar`); pass the model's ``crossbar``,
            the same one given to :func:`noise_like`.

    Returns:
        A pytree like ``params`` (same shapes and dtypes).
    """
    return map_crossbar(_noisy_leaf, params, std, z, predicate=predicate)


def _mask_leaf(v: Any) -> jax.Array:
    v = jnp.asarray(v)
    return v if v.dtype == jnp.bool_ else v != 0


def verified_mask(params: PyTree, verified: PyTree | None) -> PyTree:
    """Normalises a write-verify mask: ``None`` -> all False; 0/1 numbers -> bool.

    Args:
        params: the params pytree.
        verified: ``None`` or a pytree like ``params`` of booleans or 0/1 numbers.

    Returns:
        A pytree like ``params`` of boolean arrays broadcast to each leaf's shape.

    Raises:
        ValueError: naming ``verified`` if its structure or leaf shapes differ from
            ``params``.
    """
    if verified is None:
        return jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.bool_), params)
    check_same_structure("verified", verified, params, "params")
    return jax.tree.map(_mask_leaf, verified)


def _is_number_like(value: Any) -> bool:
    if isinstance(value, jax.core.Tracer):
        return False
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - anything not array-like is skipped
        return False
    return arr.dtype.kind in "biuf"


def _check_nonneg(name: str, value: Any) -> None:
    # Tolerant of tracers and of non-numeric placeholders (None, vmap axis specs,
    # ShapeDtypeStruct) that JAX may put in the fields when it unflattens.
    if _is_number_like(value):
        arr = np.asarray(value)
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")


def _check_pos(name: str, value: Any) -> None:
    if _is_number_like(value):
        arr = np.asarray(value)
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"{name} must be finite and > 0, got {value!r}")


# ----------------------------------------------------------------------------
# cycle accounting
# ----------------------------------------------------------------------------


def gaussian_write_cycles(
    n_verified: ArrayLike,
    n_weights: ArrayLike,
    devices_per_weight: int = 8,
    verify_cycles: ArrayLike = DEFAULT_VERIFY_CYCLES,
) -> WriteCycles:
    """Cycle count of the Gaussian model: each verified device costs
    ``verify_cycles``, each device of an unverified weight one write.

    Works with counts or with fractions (``n_weights=1``, ``n_verified=p``), then
    ``normalized = (p*C + (1-p)) / C`` and ``normalized_verified_only = p``.

    Args:
        n_verified: number (or fraction) of write-verified weights.
        n_weights: number of crossbar weights (1 for fractions).
        devices_per_weight: devices per weight, ``N // m``.
        verify_cycles: cost ``C`` of write-verifying one device, in cycles.

    Returns:
        A :class:`WriteCycles`.
    """
    nv = jnp.asarray(n_verified, jnp.float32)
    n = jnp.asarray(n_weights, jnp.float32)
    c = jnp.asarray(verify_cycles, jnp.float32)
    d = jnp.asarray(float(devices_per_weight), jnp.float32)
    verify = nv * d * c
    return WriteCycles(total=verify + (n - nv) * d, verify=verify, exhaustive=n * d * c)


# ----------------------------------------------------------------------------
# the models
# ----------------------------------------------------------------------------


class _PerturbAlias:
    """``perturb``, the earlier name of ``program``, for the library's models
    (the Gaussian ones and :class:`uswim_jax.PulseModel`); a model of your own
    needs only ``program`` (:func:`perturb` takes any model)."""

    def perturb(
        self, key: jax.Array, params: PyTree, verified: PyTree | None = None
    ) -> PyTree:
        """``self.program(key, params, verified)``, under its earlier name."""
        return self.program(key, params, verified)


class GaussianVariation(_PerturbAlias):
    """Shared behaviour of the Gaussian variation models (not instantiated).

    A subclass defines ``_relative_std(r)`` giving the written and verified stds
    in units of ``c(N, m) * max|W_l|`` for normalised magnitudes
    ``r = |W| / max|W_l|``.
    """

    weight_bits: int
    device_bits: int
    verify_cycles: Any
    crossbar: CrossbarPredicate

    def _relative_std(self, r: jax.Array) -> tuple[jax.Array, jax.Array]:
        raise NotImplementedError

    @property
    def devices_per_weight(self) -> int:
        """``N // m`` devices per weight."""
        return self.weight_bits // self.device_bits

    @property
    def factor(self) -> float:
        """``c(N, m)``, see :func:`slicing_factor`."""
        return slicing_factor(self.weight_bits, self.device_bits)

    def _leaf_std(self, w: Any) -> tuple[jax.Array, jax.Array]:
        w = jax.lax.stop_gradient(jnp.asarray(w))
        dtype = _float_dtype(w)
        a = jnp.abs(w).astype(dtype)
        scale = jnp.max(a) if a.size else jnp.zeros((), dtype)
        r = a / jnp.where(scale > 0, scale, jnp.ones((), dtype))
        rw, rv = self._relative_std(r)
        unit = scale * jnp.asarray(self.factor, dtype)
        sw = jnp.broadcast_to(jnp.asarray(rw).astype(dtype) * unit, a.shape)
        sv = jnp.broadcast_to(jnp.asarray(rv).astype(dtype) * unit, a.shape)
        return sw, sv

    def std(self, params: PyTree) -> tuple[PyTree, PyTree]:
        """Absolute per-weight noise stds, written and write-verified.

        The std is computed from ``stop_gradient(params)``: the noise scale is a
        constant with respect to the weights.

        Args:
            params: any pytree of arrays.

        Returns:
            ``(std_written, std_verified)``: two pytrees like ``params`` with the
            std of each weight (same dtype as the leaf, float32 for non-float
            leaves); zeros on leaves off the crossbar.

        Raises:
            ValueError: naming ``params`` if a concrete leaf holds NaN or Inf or
                if no leaf is on the crossbar.
        """
        check_crossbar("params", params, self.crossbar, fix=DEVICE_FIX)
        check_finite_tree("params", params)
        pairs = map_crossbar(
            self._leaf_std,
            params,
            predicate=self.crossbar,
            otherwise=lambda x: (
                jnp.zeros(jnp.shape(x), _float_dtype(x)),
                jnp.zeros(jnp.shape(x), _float_dtype(x)),
            ),
        )
        treedef = jax.tree.structure(params)
        flat = treedef.flatten_up_to(pairs)
        return (
            treedef.unflatten([p[0] for p in flat]),
            treedef.unflatten([p[1] for p in flat]),
        )

    def effective_std(self, params: PyTree, verified: PyTree | None = None) -> PyTree:
        """Per-weight std given a write-verify mask.

        Args:
            params: any pytree of arrays.
            verified: ``None`` or a pytree like ``params`` of booleans (True =
                write-verified).

        Returns:
            A pytree like ``params``: ``std_verified`` where verified,
            ``std_written`` elsewhere, zero off the crossbar.

        Raises:
            ValueError: naming ``verified`` if it does not match ``params``, or
                ``params`` if it holds NaN or Inf.
        """
        mask = verified_mask(params, verified)
        sw, sv = self.std(params)
        return jax.tree.map(lambda m, a, b: jnp.where(m, b, a), mask, sw, sv)

    def program(
        self, key: jax.Array, params: PyTree, verified: PyTree | None = None
    ) -> PyTree:
        """Draws one noisy instance of ``params`` as programmed on the crossbar
        (the :class:`~uswim_jax.DeviceModel` protocol).

        ``program(key, params, verified)`` is, bit for bit,
        ``add_noise(params, effective_std(params, verified), z, self.crossbar)``
        with ``z = noise_like(key, params, self.crossbar)``; leaves off the
        crossbar are returned untouched.

        Args:
            key: a ``jax.random`` key; the key is consumed.
            params: any pytree of arrays.
            verified: ``None`` (nothing verified) or a pytree like ``params`` of
                booleans, True where the weight is write-verified.

        Returns:
            A pytree like ``params`` (same shapes and dtypes).

        Raises:
            ValueError: naming ``verified`` if it does not match ``params``, or
                ``params`` if it holds NaN or Inf.
        """
        std = self.effective_std(params, verified)
        z = noise_like(key, params, self.crossbar)
        return add_noise(params, std, z, self.crossbar)

    def program_with_cost(
        self, key: jax.Array, params: PyTree, verified: PyTree | None = None
    ) -> Programmed:
        """:meth:`program` and its cost, which does not depend on the draw.

        Args:
            key: a ``jax.random`` key; the key is consumed.
            params: any pytree of arrays.
            verified: ``None`` or a boolean pytree like ``params``.

        Returns:
            ``Programmed(self.program(key, params, verified),
            self.write_cycles(verified, params), failed=0)``.

        Raises:
            ValueError: as :meth:`program`.
        """
        return Programmed(
            params=self.program(key, params, verified),
            cycles=self.write_cycles(verified, params),
            failed=jnp.zeros((), jnp.int32),
        )

    def write_cycles(
        self,
        verified: PyTree | ArrayLike | None,
        params: PyTree | None = None,
        *,
        key: Any = None,
    ) -> WriteCycles:
        """Programming cost under this model (``verify_cycles`` per verified
        device, one write per device of an unverified weight).

        The cost does not depend on the draw, so it is exact and the same for
        every key.

        Args:
            verified: with ``params``: a mask pytree like ``params`` (or ``None``);
                without: the fraction of weights verified, in [0, 1].
            params: the params pytree, or ``None`` to count in fractions.
            key: ignored (accepted for the :class:`~uswim_jax.DeviceModel`
                protocol, where a stochastic model's cost needs it).

        Returns:
            A :class:`WriteCycles` (counts over crossbar weights only).

        Raises:
            ValueError: naming ``verified`` if the mask does not match ``params``
                or a concrete fraction lies outside [0, 1], or ``params`` if no
                leaf is on the crossbar.
        """
        if params is None:
            if verified is None:
                verified = 0.0
            if _is_number_like(verified):
                arr = np.asarray(verified)
                if not np.all(np.isfinite(arr)) or np.any((arr < 0) | (arr > 1)):
                    raise ValueError(f"verified must lie in [0, 1], got {verified!r}")
            return gaussian_write_cycles(
                verified, 1.0, self.devices_per_weight, self.verify_cycles
            )
        check_crossbar("params", params, self.crossbar, fix=DEVICE_FIX)
        mask = verified_mask(params, verified)
        counts = map_crossbar(
            lambda x, m: (
                jnp.sum(m, dtype=jnp.float32),
                jnp.asarray(float(np.size(x)), jnp.float32),
            ),
            params,
            mask,
            predicate=self.crossbar,
            otherwise=lambda x, m: (jnp.zeros((), jnp.float32),) * 2,
        )
        flat = jax.tree.structure(params).flatten_up_to(counts)
        nv = sum((c[0] for c in flat), jnp.zeros((), jnp.float32))
        n = sum((c[1] for c in flat), jnp.zeros((), jnp.float32))
        return gaussian_write_cycles(nv, n, self.devices_per_weight, self.verify_cycles)


def _common_post_init(obj: Any) -> None:
    check_bits(obj.weight_bits, obj.device_bits)
    _check_nonneg("sigma", obj.sigma)
    _check_nonneg("sigma_verified", obj.sigma_verified)
    # A write-verify costs at least one cycle per device; 0 would make the
    # normalized cycles 0/0.
    _check_pos("verify_cycles", obj.verify_cycles)
    if not callable(obj.crossbar):
        raise ValueError(f"crossbar must be a callable predicate, got {obj.crossbar!r}")


_META = ("weight_bits", "device_bits", "crossbar")


@dataclasses.dataclass(frozen=True)
class UniformVariation(GaussianVariation):
    """SWIM's uniform model: every weight gets the same relative std.

    A written weight gets additive ``N(0, (sigma * c(N, m) * max|W_l|)^2)``, a
    write-verified one the same with ``sigma_verified`` (docs/method.md §2.2-2.3).

    Args:
        sigma: device std before write-verify, in device level steps (>= 0).
        sigma_verified: device std after write-verify, same units (>= 0).
        weight_bits: bits per weight ``N`` (static).
        device_bits: bits per device ``m`` (static, divides ``N``).
        verify_cycles: cycles to write-verify one device (cost model, >= 0).
        crossbar: predicate ``(path, leaf) -> bool`` choosing crossbar leaves
            (static).

    Raises:
        ValueError: naming the argument for a negative or non-finite ``sigma``,
            ``sigma_verified`` or ``verify_cycles``, or invalid bits.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> dev = UniformVariation(0.1, 0.01)
        >>> sw, sv = dev.std({"kernel": jnp.array([[1.0, -2.0]])})
        >>> round(float(sw["kernel"][0, 0]), 4)  # 0.1 * 0.57735 * 2
        0.1155
    """

    sigma: ArrayLike
    sigma_verified: ArrayLike
    weight_bits: int = 8
    device_bits: int = 1
    verify_cycles: ArrayLike = DEFAULT_VERIFY_CYCLES
    crossbar: CrossbarPredicate = default_crossbar

    def __post_init__(self):
        _common_post_init(self)

    def _relative_std(self, r):
        return jnp.asarray(self.sigma), jnp.asarray(self.sigma_verified)


jax.tree_util.register_dataclass(
    UniformVariation,
    data_fields=["sigma", "sigma_verified", "verify_cycles"],
    meta_fields=list(_META),
)


def _normalise_sides(edge_side: Any, n: int) -> tuple[str, ...]:
    sides = (edge_side,) * n if isinstance(edge_side, str) else tuple(edge_side)
    if len(sides) != n or any(s not in ("left", "right") for s in sides):
        raise ValueError(
            f"edge_side must be 'left', 'right' or a tuple of those, one per edge "
            f"({n}), got {edge_side!r}"
        )
    return sides


def level_index(
    r: jax.Array, edges: tuple[float, ...], edge_side: tuple[str, ...]
) -> jax.Array:
    """Bin (level) index of each normalised magnitude ``r``.

    Bin ``k`` lies between ``edges[k-1]`` and ``edges[k]``. A value exactly on
    ``edges[j]`` goes to the bin on ``edge_side[j]`` of it (``"left"``: bin ``j``,
    ``"right"``: bin ``j + 1``).

    Args:
        r: array of normalised magnitudes ``|W| / max|W_l|``.
        edges: ascending interior edges (static).
        edge_side: one of ``"left"``/``"right"`` per edge (static).

    Returns:
        An int32 array like ``r`` with values in ``0..len(edges)``.
    """
    idx = jnp.zeros(jnp.shape(r), jnp.int32)
    for e, side in zip(edges, edge_side, strict=True):
        e = jnp.asarray(e, r.dtype)
        above = (r > e) if side == "left" else (r >= e)
        idx = idx + above.astype(jnp.int32)
    return idx


@dataclasses.dataclass(frozen=True)
class LevelTableVariation(GaussianVariation):
    """State-dependent variation from a table: the weight's normalised magnitude
    ``r = |W| / max|W_l|`` picks a level (bin), the level a std multiplier.

    The written std of a weight in level ``k`` is
    ``sigma * multipliers[k] * c(N, m) * max|W_l|``; the verified one uses
    ``sigma_verified`` and ``multipliers_verified`` (default: ``multipliers``).
    To plug in measured device data, set ``sigma = 1`` and ``multipliers`` to the
    measured std of each conductance level in level steps (or ``sigma`` to a
    reference std and the table relative to it).

    Args:
        sigma: reference device std before write-verify, level steps (>= 0).
        sigma_verified: reference device std after write-verify (>= 0).
        multipliers: std multiplier per level, shape ``(len(edges) + 1,)`` (>= 0).
        edges: ascending interior level edges in [0, 1] (static).
        edge_side: which bin gets a value exactly on an edge, ``"left"`` or
            ``"right"``, one for all edges or one per edge (static).
        multipliers_verified: multipliers for verified weights, or ``None`` to
            reuse ``multipliers``.
        weight_bits: bits per weight ``N`` (static).
        device_bits: bits per device ``m`` (static).
        verify_cycles: cycles to write-verify one device.
        crossbar: crossbar predicate (static).

    Raises:
        ValueError: naming the argument for negative stds or multipliers, a table
            of the wrong length, edges not ascending in [0, 1], or invalid bits.
    """

    sigma: ArrayLike
    sigma_verified: ArrayLike
    multipliers: ArrayLike
    edges: tuple[float, ...] = (0.25, 0.5, 0.75)
    edge_side: Any = "right"
    multipliers_verified: ArrayLike | None = None
    weight_bits: int = 8
    device_bits: int = 1
    verify_cycles: ArrayLike = DEFAULT_VERIFY_CYCLES
    crossbar: CrossbarPredicate = default_crossbar

    def __post_init__(self):
        _common_post_init(self)
        edges = tuple(float(e) for e in self.edges)
        if any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=True)) or any(
            not 0.0 <= e <= 1.0 for e in edges
        ):
            raise ValueError(f"edges must be strictly ascending in [0, 1], got {edges}")
        object.__setattr__(self, "edges", edges)
        object.__setattr__(
            self, "edge_side", _normalise_sides(self.edge_side, len(edges))
        )
        for name in ("multipliers", "multipliers_verified"):
            value = getattr(self, name)
            if value is None:
                continue
            if (hasattr(value, "shape") or isinstance(value, list | tuple)) and (
                np.shape(value) != (len(edges) + 1,)
            ):
                raise ValueError(
                    f"{name} must have shape ({len(edges) + 1},) (one per level), "
                    f"got {np.shape(value)}"
                )
            _check_nonneg(name, value)

    @property
    def num_levels(self) -> int:
        """Number of levels, ``len(edges) + 1``."""
        return len(self.edges) + 1

    def _relative_std(self, r):
        idx = level_index(r, self.edges, self.edge_side)
        mw = jnp.asarray(self.multipliers)
        mv = mw if self.multipliers_verified is None else self.multipliers_verified
        mv = jnp.asarray(mv)
        sw = jnp.asarray(self.sigma).astype(r.dtype) * jnp.take(mw, idx).astype(r.dtype)
        sv = jnp.asarray(self.sigma_verified).astype(r.dtype) * jnp.take(
            mv, idx
        ).astype(r.dtype)
        return sw, sv


jax.tree_util.register_dataclass(
    LevelTableVariation,
    data_fields=[
        "sigma",
        "sigma_verified",
        "multipliers",
        "multipliers_verified",
        "verify_cycles",
    ],
    meta_fields=["edges", "edge_side", *_META],
)


@dataclasses.dataclass(frozen=True)
class StateDependentVariation(GaussianVariation):
    """U-SWIM's non-uniform model, as in the authors' code (docs/method.md §2.4).

    A weight is in a middle state when ``low < |W| / max|W_l| < high`` (strict,
    default 0.25 and 0.75) and then gets ``s`` times the std of an extreme-state
    weight; every std is divided by ``sqrt(f * s^2 + (1 - f))`` with
    ``f = middle_fraction = 0.4``, so the mean variance stays ``sigma^2`` when 40 %
    of weights are in a middle state. Written and verified weights share the
    pattern. ``s = 1`` gives :class:`UniformVariation`. Multipliers relative to
    ``sigma``: s=2 -> 1.348/0.674, s=3 -> 1.464/0.488, s=5 -> 1.536/0.307.

    This is a preset of :class:`LevelTableVariation` (see :meth:`to_table`) that
    keeps ``s`` as a leaf, so an ``s`` sweep does not recompile.

    Args:
        sigma: device std before write-verify, level steps (>= 0).
        sigma_verified: device std after write-verify (>= 0).
        s: middle-state std ratio (> 0).
        low: lower threshold on ``r`` (static), default 0.25.
        high: upper threshold on ``r`` (static), default 0.75.
        middle_fraction: assumed fraction of middle-state weights in the
            normalisation (static), default 0.4.
        weight_bits: bits per weight ``N`` (static).
        device_bits: bits per device ``m`` (static).
        verify_cycles: cycles to write-verify one device.
        crossbar: crossbar predicate (static).

    Raises:
        ValueError: naming the argument for ``s <= 0``, negative stds, thresholds
            not ``0 <= low < high <= 1``, ``middle_fraction`` outside [0, 1], or
            invalid bits.
    """

    sigma: ArrayLike
    sigma_verified: ArrayLike
    s: ArrayLike = 1.0
    low: float = 0.25
    high: float = 0.75
    middle_fraction: float = 0.4
    weight_bits: int = 8
    device_bits: int = 1
    verify_cycles: ArrayLike = DEFAULT_VERIFY_CYCLES
    crossbar: CrossbarPredicate = default_crossbar

    def __post_init__(self):
        _common_post_init(self)
        _check_pos("s", self.s)
        if not 0.0 <= self.low < self.high <= 1.0:
            raise ValueError(
                f"low and high must satisfy 0 <= low < high <= 1, got "
                f"low={self.low!r}, high={self.high!r}"
            )
        if not 0.0 <= self.middle_fraction <= 1.0:
            raise ValueError(
                f"middle_fraction must lie in [0, 1], got {self.middle_fraction!r}"
            )

    def multipliers(self, dtype: Any = None) -> tuple[jax.Array, jax.Array]:
        """``(middle, extreme)`` std multipliers relative to ``sigma``.

        Args:
            dtype: dtype of the result (default: that of ``s``).

        Returns:
            ``(s / norm, 1 / norm)`` with ``norm = sqrt(f s^2 + 1 - f)``.
        """
        s = jnp.asarray(self.s)
        s = s.astype(dtype if dtype is not None else _float_dtype(s))
        f = self.middle_fraction
        norm = jnp.sqrt(f * s * s + (1.0 - f))
        return s / norm, jnp.ones_like(s) / norm

    def middle_state(self, r: jax.Array) -> jax.Array:
        """True where ``low < r < high`` (the authors' strict rule)."""
        lo = jnp.asarray(self.low, r.dtype)
        hi = jnp.asarray(self.high, r.dtype)
        return (r > lo) & (r < hi)

    def _relative_std(self, r):
        mid, ext = self.multipliers(r.dtype)
        mult = jnp.where(self.middle_state(r), mid, ext)
        sw = jnp.asarray(self.sigma).astype(r.dtype) * mult
        sv = jnp.asarray(self.sigma_verified).astype(r.dtype) * mult
        return sw, sv

    def to_table(self) -> LevelTableVariation:
        """The equivalent :class:`LevelTableVariation` (levels ``[0, low]``,
        ``(low, high)``, ``[high, 1]``)."""
        mid, ext = self.multipliers()
        return LevelTableVariation(
            sigma=self.sigma,
            sigma_verified=self.sigma_verified,
            multipliers=jnp.stack([ext, mid, ext]),
            edges=(self.low, self.high),
            edge_side=("left", "right"),
            weight_bits=self.weight_bits,
            device_bits=self.device_bits,
            verify_cycles=self.verify_cycles,
            crossbar=self.crossbar,
        )


jax.tree_util.register_dataclass(
    StateDependentVariation,
    data_fields=["sigma", "sigma_verified", "s", "verify_cycles"],
    meta_fields=["low", "high", "middle_fraction", *_META],
)


def perturb(
    key: jax.Array,
    params: PyTree,
    device: Any,
    verified: PyTree | None = None,
) -> PyTree:
    """One noisy instance of ``params`` under ``device``:
    ``device.program(key, params, verified)``.

    Args:
        key: a ``jax.random`` key; the key is consumed.
        params: any pytree of arrays.
        device: any :class:`~uswim_jax.DeviceModel` (:class:`UniformVariation`,
            :class:`StateDependentVariation`, :class:`LevelTableVariation`, a
            :class:`uswim_jax.PulseModel`, which runs the pulse process, or a
            model of your own).
        verified: ``None`` or a boolean pytree like ``params`` (True = verified).

    Returns:
        A pytree like ``params``.

    Raises:
        ValueError: naming ``verified`` or ``params`` on bad input.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> params = {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}
        >>> noisy = perturb(jax.random.key(0), params, UniformVariation(0.0, 0.0))
        >>> bool(jnp.all(noisy["kernel"] == params["kernel"]))
        True
    """
    check_key("key", key)
    return device.program(key, params, verified)
