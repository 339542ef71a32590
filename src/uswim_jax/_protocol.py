"""The device-model protocol: the one interface every variation or programming
model implements, and what it returns.

A device model says what a chip holds after ``params`` are written to it and
what writing them cost. The Monte Carlo engine and the sweep need nothing else:

- :class:`DeviceModel` (required): ``crossbar`` (the leaf predicate),
  ``devices_per_weight``, ``program(key, params, verified)`` (the programmed
  params of one chip) and ``program_with_cost(key, params, verified)`` (the same
  params with the :class:`WriteCycles` of that run, as a :class:`Programmed`),
  and ``write_cycles(verified, params, *, key=None)``.
- :class:`ClosedFormStd` (optional): ``std(params)`` and
  ``effective_std(params, verified)`` for models whose programmed params are
  ``params + std * z`` with ``z = noise_like(key, params, crossbar)``. Such a
  model promises, bit for bit and for every key,
  ``program(key, params, verified) == add_noise(params, effective_std(params,
  verified), noise_like(key, params, crossbar), crossbar)``, and that its cost
  does not depend on the draw:
  ``program_with_cost(key, params, verified).cycles == write_cycles(verified,
  params)``. An engine may then draw ``z`` once and rescale it (the fast path).

Both are ``typing.Protocol`` classes, checkable with ``isinstance`` (which checks
that the members exist, not their signatures); :func:`require_device_model`
turns a failed check into a ``ValueError`` naming the argument. See
docs/device.md and docs/architecture.md.
"""

import warnings
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax

PyTree = Any


class WriteCycles(NamedTuple):
    """Programming cost of a write-verify scheme, in write cycles.

    ``normalized`` = total / exhaustive counts the single writes of unverified
    weights; ``normalized_verified_only`` = verify / exhaustive does not
    (docs/method.md §2.5). All fields are scalar arrays, so this is jit-traceable and
    can be carried through ``lax.scan``.
    """

    total: jax.Array  # () plain writes + verify cycles
    verify: jax.Array  # () cycles spent on verified devices only
    exhaustive: jax.Array  # () cycles of write-verifying every crossbar device

    @property
    def normalized(self) -> jax.Array:
        """Normalized write cycles, plain writes of unverified weights counted."""
        return self.total / self.exhaustive

    @property
    def normalized_verified_only(self) -> jax.Array:
        """Normalized write cycles counting verified devices only."""
        return self.verify / self.exhaustive


class Programmed(NamedTuple):
    """One programming run: what the chip holds and what writing it cost.

    A pytree (a ``NamedTuple``), so it can be returned from ``jit`` and stacked
    by ``vmap`` over keys.
    """

    params: PyTree  # programmed params, a pytree like the input params
    cycles: WriteCycles  # the cost of this run
    failed: jax.Array  # () int32: verified devices that did not converge (0 if none)


@runtime_checkable
class DeviceModel(Protocol):
    """What every device model implements (see the module docstring).

    ``verified`` arguments are ``None`` (nothing verified) or a pytree like
    ``params`` of booleans or 0/1 numbers, True where the weight is
    write-verified; leaves off the crossbar ignore it. Keys are consumed.
    """

    #: ``crossbar(path, leaf) -> bool``: the leaves programmed onto the crossbar;
    #: the model leaves all other leaves exact.
    crossbar: Any

    @property
    def devices_per_weight(self) -> int:
        """Devices holding one weight (``N // m`` for bit slicing)."""
        ...

    def program(self, key: jax.Array, params: PyTree, verified: Any = None) -> PyTree:
        """The params one chip holds after writing ``params`` (write-verifying
        the weights in ``verified``): same structure, shapes and dtypes, leaves
        off the crossbar unchanged. The same key gives the same result."""
        ...

    def program_with_cost(
        self, key: jax.Array, params: PyTree, verified: Any = None
    ) -> Programmed:
        """``program(key, params, verified)`` (the same draws, bit for bit) with
        the cost of that run and its failure count."""
        ...

    def write_cycles(
        self, verified: Any, params: PyTree | None = None, *, key: Any = None
    ) -> WriteCycles:
        """The cost of programming ``params`` with ``verified``. A model whose
        cost does not depend on the draw returns it exactly and ignores ``key``;
        a stochastic process returns the cost of the run ``program(key, params,
        verified)`` and needs ``key``."""
        ...


@runtime_checkable
class ClosedFormStd(Protocol):
    """Optional: a model whose programming error is ``std * z`` with a
    closed-form per-weight std (the Gaussian models). See the module docstring
    for what it promises."""

    def std(self, params: PyTree) -> tuple[PyTree, PyTree]:
        """``(std_written, std_verified)``, pytrees like ``params``, zero off the
        crossbar."""
        ...

    def effective_std(self, params: PyTree, verified: Any = None) -> PyTree:
        """``std_verified`` where verified, ``std_written`` elsewhere."""
        ...


def require_device_model(name: str, value: Any) -> None:
    """Raises a ``ValueError`` naming ``name`` unless ``value`` has every member
    of :class:`DeviceModel`.

    Args:
        name: the argument's name, for the message.
        value: the object to check.

    Raises:
        ValueError: naming ``name`` and the missing members.
    """
    members = (
        "crossbar",
        "devices_per_weight",
        "program",
        "program_with_cost",
        "write_cycles",
    )
    missing = [m for m in members if not hasattr(value, m)]
    if missing:
        raise ValueError(
            f"{name} must be a device model (uswim_jax.DeviceModel: "
            f"{', '.join(members)}); {type(value).__name__} has no "
            f"{', '.join(missing)}"
        )
    if not callable(value.crossbar):
        raise ValueError(
            f"{name}.crossbar must be a callable predicate, got {value.crossbar!r}"
        )


def resolve_device_model(device_model: Any, device: Any, fn: str) -> Any:
    """The device model of an engine call that takes ``device_model=`` and, for
    one release, the old keyword ``device=`` (with a ``DeprecationWarning``),
    checked with :func:`require_device_model`.

    Args:
        device_model: the value given as ``device_model`` (or positionally).
        device: the value given as the deprecated ``device`` keyword, or ``None``.
        fn: the calling function's name, for the messages.

    Returns:
        The device model.

    Raises:
        ValueError: when both are given, or the model fails
            :func:`require_device_model`.
    """
    if device is not None:
        if device_model is not None:
            raise ValueError(
                f"{fn}: pass the device model once, as device_model= (device= is "
                "its deprecated name)"
            )
        warnings.warn(
            f"{fn}(device=...) is deprecated; pass device_model=... (device= "
            "will be removed in the next release)",
            DeprecationWarning,
            stacklevel=3,
        )
        device_model = device
    require_device_model("device_model", device_model)
    return device_model


def has_closed_form(model: Any) -> bool:
    """Whether ``model`` offers the optional :class:`ClosedFormStd` members
    (``std``, ``effective_std``), i.e. whether an engine may take the fast path
    (draw ``z`` once per trial and rescale it)."""
    return isinstance(model, ClosedFormStd)
