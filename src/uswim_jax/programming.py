"""Write-verify as a process: program-and-verify pulses on bit-sliced devices, and
cycle accounting for both the Gaussian and the pulse model.

Units. A weight ``W`` of a crossbar leaf is bit-sliced onto ``N / m`` devices
(``N = weight_bits``, ``m = device_bits``); one level step of device ``i``
(``i = 1`` is the MSB device) is worth ``2^(-i*m) * max|W_l|``. All device errors
below are in level steps, as ``sigma`` in :mod:`uswim_jax.device`. The programmed
weight is ``W + max|W_l| * sum_i e_i 2^(-i*m)``, the same additive form as the
Gaussian model (quantisation of the target is not modelled).

The process, per device (all devices of all weights at once, in one bounded
``lax.while_loop``):

1. write once: ``e = sigma * z`` (1 pulse); read ``y = e + read_sigma * z'``;
2. a verified device whose read is outside the tolerance gets a pulse that aims
   to cancel the read error, with multiplicative pulse noise,
   ``e <- e - step * y * (1 + pulse_sigma * z'')``, and is read again;
3. it stops when ``|y| <= tolerance`` (converged) or after ``max_pulses`` pulses
   (failed: flagged, never raised). Unverified devices get the single write.

Shapes: ``n`` denotes any device-array shape; ``n_dev = N // m`` the trailing
device axis of per-weight outputs.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from uswim_jax import _random
from uswim_jax._checks import check_finite_tree, check_key
from uswim_jax._protocol import Programmed
from uswim_jax._tree import (
    CrossbarPredicate,
    check_crossbar,
    default_crossbar,
    on_crossbar,
    path_str,
)
from uswim_jax.device import (
    DEFAULT_SIGMA,
    DEFAULT_VERIFY_CYCLES,
    DEVICE_FIX,
    GaussianVariation,
    WriteCycles,
    _check_nonneg,
    _check_pos,
    _PerturbAlias,
    check_bits,
    place_values,
    verified_mask,
)

PyTree = Any

#: Defaults calibrated by ``python -m experiments.calibrate_programming`` so that,
#: with ``sigma = DEFAULT_SIGMA = 0.3``, a verified device's residual std is close
#: to ``DEFAULT_SIGMA_VERIFIED = 0.03`` and it takes about 10 pulses on average
#: (see results/calibration/).
DEFAULT_TOLERANCE = 0.0305
DEFAULT_STEP = 0.174
DEFAULT_PULSE_SIGMA = 0.2
DEFAULT_READ_SIGMA = 0.01
DEFAULT_MAX_PULSES = 50


@dataclasses.dataclass(frozen=True)
class PulseModel(_PerturbAlias):
    """Pulse-level write-verify process of one device (see the module docstring).

    Numeric parameters are pytree leaves (a sweep over them does not recompile);
    ``max_pulses``, the bits and the crossbar predicate are static.

    Args:
        sigma: std of the initial (single) write, level steps (>= 0).
        tolerance: a verified device stops when ``|read error| <= tolerance``,
            level steps (>= 0).
        step: fraction of the read error each pulse tries to remove (> 0).
        pulse_sigma: relative std of a pulse's effect (>= 0).
        read_sigma: std of the read noise, level steps (>= 0).
        max_pulses: pulse cap per device, initial write included (static, >= 1).
        weight_bits: bits per weight ``N`` (static).
        device_bits: bits per device ``m`` (static).
        crossbar: crossbar predicate ``(path, leaf) -> bool`` (static).

    Raises:
        ValueError: naming the argument for negative values, ``step <= 0``,
            ``max_pulses < 1`` or invalid bits.
    """

    sigma: ArrayLike = DEFAULT_SIGMA
    tolerance: ArrayLike = DEFAULT_TOLERANCE
    step: ArrayLike = DEFAULT_STEP
    pulse_sigma: ArrayLike = DEFAULT_PULSE_SIGMA
    read_sigma: ArrayLike = DEFAULT_READ_SIGMA
    max_pulses: int = DEFAULT_MAX_PULSES
    weight_bits: int = 8
    device_bits: int = 1
    crossbar: CrossbarPredicate = default_crossbar

    def __post_init__(self):
        check_bits(self.weight_bits, self.device_bits)
        for name in ("sigma", "tolerance", "pulse_sigma", "read_sigma"):
            _check_nonneg(name, getattr(self, name))
        _check_pos("step", self.step)
        mp = self.max_pulses
        if isinstance(mp, bool) or not isinstance(mp, int | np.integer) or mp < 1:
            raise ValueError(f"max_pulses must be an int >= 1, got {mp!r}")
        if not callable(self.crossbar):
            raise ValueError(
                f"crossbar must be a callable predicate, got {self.crossbar!r}"
            )

    @property
    def devices_per_weight(self) -> int:
        """``N // m`` devices per weight."""
        return self.weight_bits // self.device_bits

    def program(
        self, key: jax.Array, params: PyTree, verified: PyTree | None = None
    ) -> PyTree:
        """The programmed params alone, ``program(key, params, self,
        verified).params`` (the :class:`~uswim_jax.DeviceModel` protocol).

        Args:
            key: a ``jax.random`` key; the key is consumed.
            params: any pytree of arrays.
            verified: ``None`` or a boolean pytree like ``params``.

        Returns:
            A pytree like ``params``.

        Raises:
            ValueError: naming ``verified`` or ``params`` on bad input.
        """
        return program(key, params, self, verified).params

    def program_with_cost(
        self, key: jax.Array, params: PyTree, verified: PyTree | None = None
    ) -> Programmed:
        """One run of the pulse process: the programmed params (the same draws
        as :meth:`program`), the pulses it spent and its failures.

        The cost is that of this run (:func:`pulse_write_cycles` with its
        default ``exhaustive``, an estimate from this run's verified devices);
        a sweep normalizes instead by the ``total`` of one all-verified run.

        Args:
            key: a ``jax.random`` key; the key is consumed.
            params: any pytree of arrays.
            verified: ``None`` or a boolean pytree like ``params``.

        Returns:
            A :class:`~uswim_jax.Programmed`; ``failed`` counts the verified
            devices whose last read was outside the tolerance.

        Raises:
            ValueError: naming ``verified`` or ``params`` on bad input.
        """
        res = program(key, params, self, verified)
        failed = sum(
            (jnp.sum(f, dtype=jnp.int32) for f in jax.tree.leaves(res.failed)),
            jnp.zeros((), jnp.int32),
        )
        return Programmed(
            params=res.params,
            cycles=pulse_write_cycles(res, verified),
            failed=failed,
        )

    def write_cycles(
        self,
        verified: PyTree | None,
        params: PyTree | None = None,
        *,
        key: jax.Array | None = None,
    ) -> WriteCycles:
        """The pulses spent by the run ``program(key, params, verified)``: the
        cost of a stochastic process is an outcome of the draw, so ``key`` and
        ``params`` are required.

        Args:
            verified: ``None`` or a boolean pytree like ``params``.
            params: the params pytree.
            key: the run's ``jax.random`` key; the key is consumed.

        Returns:
            ``self.program_with_cost(key, params, verified).cycles``.

        Raises:
            ValueError: naming ``key`` or ``params`` when missing, or
                ``verified`` if it does not match ``params``.
        """
        if key is None:
            raise ValueError(
                "key is required: the pulse model's cost is the outcome of a run "
                "(or use program_with_cost, or write_cycles(model, verified, "
                "result=program(...)))"
            )
        if params is None:
            raise ValueError("params is required (the pulse model counts pulses)")
        return self.program_with_cost(key, params, verified).cycles


jax.tree_util.register_dataclass(
    PulseModel,
    data_fields=["sigma", "tolerance", "step", "pulse_sigma", "read_sigma"],
    meta_fields=["max_pulses", "weight_bits", "device_bits", "crossbar"],
)


class ProgramState(NamedTuple):
    """Carried state of the write-verify loop (one entry per device)."""

    error: jax.Array  # (*n,) float: true device error, level steps
    measured: jax.Array  # (*n,) float: last read of the error
    pulses: jax.Array  # (*n,) int32: pulses spent, initial write included
    converged: jax.Array  # (*n,) bool: last read within tolerance
    verify: jax.Array  # (*n,) bool: the device is write-verified
    iteration: jax.Array  # () int32: verify iterations done


class ProgramInfo(NamedTuple):
    """Diagnostics of one step (not carried)."""

    active: jax.Array  # () int32: devices pulsed in this step
    max_abs_measured: jax.Array  # () float: max |read| over verified devices after


def _param(model_value: Any, dtype: Any) -> jax.Array:
    return jnp.asarray(model_value).astype(dtype)


def program_init(
    key: jax.Array, model: PulseModel, verify: ArrayLike, dtype: Any = jnp.float32
) -> ProgramState:
    """The single write of every device, and its first read.

    Args:
        key: a ``jax.random`` key; the key is consumed.
        model: the :class:`PulseModel`.
        verify: boolean array, one entry per device: True = write-verify it.
        dtype: float dtype of the errors.

    Returns:
        A :class:`ProgramState` with ``pulses = 1`` everywhere.
    """
    verify = jnp.asarray(verify)
    verify = verify if verify.dtype == jnp.bool_ else verify != 0
    write_key, read_key = jax.random.split(key)
    shape = verify.shape
    error = _param(model.sigma, dtype) * _random.normal(write_key, shape, dtype)
    measured = error + _param(model.read_sigma, dtype) * _random.normal(
        read_key, shape, dtype
    )
    return ProgramState(
        error=error,
        measured=measured,
        pulses=jnp.ones(shape, jnp.int32),
        converged=jnp.abs(measured) <= _param(model.tolerance, dtype),
        verify=verify,
        iteration=jnp.zeros((), jnp.int32),
    )


def program_active(state: ProgramState, model: PulseModel) -> jax.Array:
    """Devices that still get pulses: verified, not converged, under the cap."""
    return state.verify & ~state.converged & (state.pulses < model.max_pulses)


def program_failed(state: ProgramState) -> jax.Array:
    """Verified devices whose last read is outside the tolerance."""
    return state.verify & ~state.converged


def program_step(
    key: jax.Array, state: ProgramState, model: PulseModel
) -> tuple[ProgramState, ProgramInfo]:
    """One program-and-verify pulse on every active device, then a read.

    Inactive devices are left unchanged (masked with ``jnp.where``), so the step
    is safe to apply after everything has converged.

    Args:
        key: a ``jax.random`` key; the key is consumed.
        state: the current :class:`ProgramState`.
        model: the :class:`PulseModel`.

    Returns:
        ``(new_state, info)``.
    """
    dtype = state.error.dtype
    active = program_active(state, model)
    pulse_key, read_key = jax.random.split(key)
    shape = state.error.shape
    z_pulse = _random.normal(pulse_key, shape, dtype)
    z_read = _random.normal(read_key, shape, dtype)
    delta = -_param(model.step, dtype) * state.measured
    new_error = state.error + delta * (1 + _param(model.pulse_sigma, dtype) * z_pulse)
    new_measured = new_error + _param(model.read_sigma, dtype) * z_read
    ok = jnp.abs(new_measured) <= _param(model.tolerance, dtype)
    new_state = ProgramState(
        error=jnp.where(active, new_error, state.error),
        measured=jnp.where(active, new_measured, state.measured),
        pulses=state.pulses + active.astype(jnp.int32),
        converged=jnp.where(active, ok, state.converged),
        verify=state.verify,
        iteration=state.iteration + 1,
    )
    shown = jnp.where(state.verify, jnp.abs(new_state.measured), jnp.zeros((), dtype))
    info = ProgramInfo(
        active=jnp.sum(active, dtype=jnp.int32),
        max_abs_measured=jnp.max(shown) if shown.size else jnp.zeros((), dtype),
    )
    return new_state, info


def program_loop(
    key: jax.Array, state: ProgramState, model: PulseModel
) -> ProgramState:
    """Runs :func:`program_step` until no device is active (at most
    ``max_pulses - 1`` steps), in one ``lax.while_loop``.

    Step ``t`` uses the key ``fold_in(key, t)``.

    Args:
        key: a ``jax.random`` key; the key is consumed.
        state: the state after :func:`program_init`.
        model: the :class:`PulseModel`.

    Returns:
        The final :class:`ProgramState`.
    """

    def cond(s):
        return (s.iteration < model.max_pulses - 1) & jnp.any(program_active(s, model))

    def body(s):
        return program_step(jax.random.fold_in(key, s.iteration), s, model)[0]

    return jax.lax.while_loop(cond, body, state)


def program_devices(
    key: jax.Array, model: PulseModel, verify: ArrayLike, dtype: Any = jnp.float32
) -> ProgramState:
    """Writes every device once and write-verifies those in ``verify``.

    Args:
        key: a ``jax.random`` key; the key is consumed.
        model: the :class:`PulseModel`.
        verify: boolean array, one entry per device.
        dtype: float dtype of the errors.

    Returns:
        The final :class:`ProgramState` (errors in level steps, pulses per device;
        failures are ``program_failed(state)``).
    """
    init_key, loop_key = jax.random.split(key)
    return program_loop(loop_key, program_init(init_key, model, verify, dtype), model)


class ProgramResult(NamedTuple):
    """Outcome of :func:`program`; every field is a pytree like ``params``."""

    params: PyTree  # programmed weights (off-crossbar leaves exact)
    pulses: PyTree  # (*leaf.shape, n_dev) int32 pulses per device (0 off-crossbar)
    failed: PyTree  # (*leaf.shape, n_dev) bool: verified device did not converge


def program(
    key: jax.Array,
    params: PyTree,
    model: PulseModel,
    verified: PyTree | None = None,
) -> ProgramResult:
    """Programs the crossbar leaves of ``params`` with the pulse process.

    All devices of all crossbar leaves run in one vectorised loop. Each device of
    a verified weight is write-verified; the others are written once.

    Args:
        key: a ``jax.random`` key; the key is consumed.
        params: any pytree of arrays.
        model: the :class:`PulseModel`.
        verified: ``None`` (nothing verified) or a pytree like ``params`` of
            booleans (True = write-verify this weight).

    Returns:
        A :class:`ProgramResult`.

    Raises:
        ValueError: naming ``verified`` if it does not match ``params``, or
            ``params`` if a concrete leaf holds NaN or Inf or no leaf is on the
            crossbar.
    """
    check_key("key", key)
    check_crossbar("params", params, model.crossbar, fix=DEVICE_FIX)
    check_finite_tree("params", params)
    mask = verified_mask(params, verified)
    n_dev = model.devices_per_weight
    pairs, treedef = jax.tree_util.tree_flatten_with_path(params)
    masks = treedef.flatten_up_to(mask)
    on = [on_crossbar(model.crossbar, path_str(p), x) for p, x in pairs]
    xs = [jnp.asarray(x) for _, x in pairs]
    cross = [x for x, o in zip(xs, on, strict=True) if o]

    def off_leaf(x):
        shape = (*x.shape, n_dev)
        return x, jnp.zeros(shape, jnp.int32), jnp.zeros(shape, jnp.bool_)

    if not cross:
        outs = [off_leaf(x) for x in xs]
    else:
        floats = [x.dtype for x in cross if jnp.issubdtype(x.dtype, jnp.floating)]
        dtype = max(floats, key=lambda d: np.dtype(d).itemsize, default=jnp.float32)
        verify = jnp.concatenate(
            [
                jnp.broadcast_to(m, x.shape).reshape(-1)
                for x, m, o in zip(xs, masks, on, strict=True)
                if o
            ]
        )
        verify = jnp.broadcast_to(verify[:, None], (verify.shape[0], n_dev))
        state = program_devices(key, model, verify, dtype)
        pv = jnp.asarray(place_values(model.weight_bits, model.device_bits), dtype)
        weight_err = jnp.sum(state.error * pv[None, :], axis=-1)
        failed = program_failed(state)
        outs, start = [], 0
        for x, o in zip(xs, on, strict=True):
            if not o:
                outs.append(off_leaf(x))
                continue
            size = int(np.prod(x.shape))
            sl = slice(start, start + size)
            start += size
            xd = jax.lax.stop_gradient(x).astype(dtype)
            scale = jnp.max(jnp.abs(xd)) if size else jnp.zeros((), dtype)
            err = (scale * weight_err[sl]).reshape(x.shape)
            outs.append(
                (
                    (x.astype(dtype) + err).astype(x.dtype),
                    state.pulses[sl].reshape((*x.shape, n_dev)),
                    failed[sl].reshape((*x.shape, n_dev)),
                )
            )
    return ProgramResult(
        params=treedef.unflatten([o[0] for o in outs]),
        pulses=treedef.unflatten([o[1] for o in outs]),
        failed=treedef.unflatten([o[2] for o in outs]),
    )


def pulse_write_cycles(
    result: ProgramResult,
    verified: PyTree | None,
    exhaustive: ArrayLike | None = None,
) -> WriteCycles:
    """Cycle count of a pulse-model run: the pulses actually spent.

    ``total`` sums every pulse (single writes of unverified weights included),
    ``verify`` only those of verified weights' devices. ``exhaustive`` defaults to
    an estimate, ``number of crossbar devices * mean pulses per verified device``
    (devices are i.i.d. in this model), or ``DEFAULT_VERIFY_CYCLES`` per device
    when nothing was verified; pass the ``total`` of an all-verified run to use a
    measured value instead.

    Args:
        result: the :class:`ProgramResult` of :func:`program`.
        verified: the mask given to :func:`program` (``None`` = nothing).
        exhaustive: cycles of exhaustive write-verify, or ``None`` to estimate.

    Returns:
        A :class:`WriteCycles`.

    Raises:
        ValueError: naming ``verified`` if it does not match ``result.params``.
    """
    mask = verified_mask(result.params, verified)
    f32 = jnp.float32
    zero = jnp.zeros((), f32)
    pl = jax.tree.leaves(result.pulses)
    ml = jax.tree.structure(result.params).flatten_up_to(mask)
    total = sum((jnp.sum(p, dtype=f32) for p in pl), zero)
    verify = sum(
        (
            jnp.sum(jnp.where(m[..., None], p, 0), dtype=f32)
            for p, m in zip(pl, ml, strict=True)
        ),
        zero,
    )
    n_devices = sum((jnp.sum(p > 0, dtype=f32) for p in pl), zero)
    n_vdev = sum(
        (
            jnp.sum((p > 0) & m[..., None], dtype=f32)
            for p, m in zip(pl, ml, strict=True)
        ),
        zero,
    )
    if exhaustive is None:
        mean = jnp.where(
            n_vdev > 0,
            verify / jnp.maximum(n_vdev, jnp.ones((), f32)),
            jnp.asarray(DEFAULT_VERIFY_CYCLES, f32),
        )
        exhaustive = n_devices * mean
    return WriteCycles(
        total=total, verify=verify, exhaustive=jnp.asarray(exhaustive, f32)
    )


def write_cycles(
    model: GaussianVariation | PulseModel,
    verified: PyTree | ArrayLike | None,
    params: PyTree | None = None,
    *,
    result: ProgramResult | None = None,
    exhaustive: ArrayLike | None = None,
) -> WriteCycles:
    """Write cycles of a selective write-verify scheme, under either model.

    Gaussian models (:class:`~uswim_jax.UniformVariation` and friends): each
    verified device costs ``model.verify_cycles``, each device of an unverified
    weight one write; ``verified`` is a mask like ``params``, or a fraction when
    ``params`` is ``None``. Pulse model: the pulses of ``result`` (from
    :func:`program`), see :func:`pulse_write_cycles`.

    ``.normalized`` and ``.normalized_verified_only`` of the result give the
    normalized write cycles with and without the plain writes.

    Args:
        model: a Gaussian device model or a :class:`PulseModel`.
        verified: the write-verify mask (or fraction, Gaussian model only).
        params: the params pytree (Gaussian model with a mask).
        result: the :class:`ProgramResult` (pulse model only).
        exhaustive: pulse model only, cycles of exhaustive write-verify.

    Returns:
        A :class:`WriteCycles`.

    Raises:
        ValueError: naming ``result`` when a pulse model comes without one, or
            ``verified`` on a bad mask or fraction.

    Examples:
        >>> from uswim_jax import UniformVariation
        >>> c = write_cycles(UniformVariation(0.3, 0.03), 0.1)
        >>> round(float(c.normalized), 3), round(float(c.normalized_verified_only), 3)
        (0.19, 0.1)
    """
    if isinstance(model, PulseModel):
        if result is None:
            raise ValueError("result (the ProgramResult of program) is required")
        return pulse_write_cycles(result, verified, exhaustive)
    return model.write_cycles(verified, params)
