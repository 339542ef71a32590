"""A device model on measured conductances: :class:`ConductanceDevice`.

It implements the device-model protocol (:class:`uswim_jax.DeviceModel`), so
the Monte Carlo engine runs it like the Gaussian models, and adds what a
hardware study needs on top: reads at several times on the same programmed
chips, the per-device outcome of the verify loop, and its time and energy.

What one call ``program(key, params, verified)`` does, per crossbar leaf:

1. map the weights to target conductances (:mod:`.conductance`, scale
   ``max|W_l|``);
2. draw the chip's fixed properties from the chip key: stuck devices, d2d
   offsets, drift exponents (:mod:`.faults`, :mod:`.drift`);
3. write every device once; run the verify loop on the devices of verified
   weights (:mod:`.verify`);
4. move the conductances to the read time ``t`` (drift, relaxation) and read
   them once with fresh read noise; optionally rescale each layer by global
   drift compensation (:mod:`.drift`);
5. map the read conductances back to weights.

Keys. A leaf's key is ``leaf_key(key, path)`` (as the Gaussian models), and
from it: ``fold_in(., 0)`` the chip (unless the model has its own
``chip_key``, then ``leaf_key(chip_key, path)``: one fixed chip for every
trial), ``fold_in(., 1)`` the writes, ``fold_in(., 2)`` the relaxation
direction, ``fold_in(fold_in(., 3), bits(t))`` the reads at ``t`` (so reads at
different times are independent and each equals the single-time call),
``fold_in(., 4)`` the drift-compensation reference read.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uswim_jax import _random
from uswim_jax._checks import check_finite_tree, is_concrete
from uswim_jax._protocol import Programmed, WriteCycles
from uswim_jax._tree import (
    CrossbarPredicate,
    check_crossbar,
    default_crossbar,
    on_crossbar,
    path_str,
)
from uswim_jax.device import DEVICE_FIX, leaf_key, verified_mask
from uswim_jax.devices.conductance import (
    ConductanceMap,
    DifferentialPair,
    layer_scale,
)
from uswim_jax.devices.drift import compensation_scale, conductance_at, draw_nu, read
from uswim_jax.devices.faults import (
    check_fault_fractions,
    d2d_offsets,
    stuck_state,
)
from uswim_jax.devices.presets import (
    DevicePreset,
    PCMPreset,
    _check_number,
    check_times,
)
from uswim_jax.devices.verify import (
    CostModel,
    ProgrammingCost,
    VerifyLoop,
    programming_cost,
    verify_devices,
)

PyTree = Any


class LeafChip(NamedTuple):
    """One crossbar leaf of a programmed chip; device arrays have shape
    ``(*leaf.shape, S, 2)`` (see :mod:`.conductance`)."""

    target: jax.Array  # target conductances, uS
    programmed: jax.Array  # conductances after programming (the state at t0), uS
    iterations: jax.Array  # int32 writes spent (1 for unverified devices)
    iterations_if_verified: jax.Array  # int32 writes the loop spent on the device
    converged: jax.Array  # bool: the loop ended inside the acceptance band
    verify: jax.Array  # bool: the device was write-verified
    stuck: jax.Array  # int8 stuck state (.faults)
    nu: jax.Array  # drift exponents
    z_relax: jax.Array  # relaxation directions
    scale: jax.Array  # () the layer's max|W_l|


class ChipCost(NamedTuple):
    """What programming one chip cost, and what verifying everything would
    have cost in the same run."""

    cycles: WriteCycles
    cost: ProgrammingCost
    exhaustive: ProgrammingCost
    failed: jax.Array  # () int32 verified devices that did not converge


def _float_dtype(x: Any) -> Any:
    dt = jnp.result_type(x)
    return dt if jnp.issubdtype(dt, jnp.floating) else jnp.result_type(float)


def _time_bits(t: Any) -> jax.Array:
    return jax.lax.bitcast_convert_type(jnp.asarray(t, jnp.float32), jnp.uint32)


@dataclasses.dataclass(frozen=True)
class ConductanceDevice:
    """A device model on conductances from a preset (see the module docstring).

    Args:
        preset: the device physics (:mod:`.presets`; default PCM).
        mapping: weights to conductances (default
            ``DifferentialPair(preset.g_max, preset.g_min)``); its range must
            be the preset's.
        verify: the write-verify loop's settings (default
            ``VerifyLoop(**preset.verify_defaults())``: the loop's own
            defaults, except for the ``authors`` preset).
        cost: time and energy per write and read.
        t: read time, s since programming (> 0; default ``preset.t0``). A
            pytree leaf, like ``drift_compensation`` and ``chip_key``: under
            ``jax.jit`` they are traced, so changing them does not recompile.
        stuck_on: fraction of devices stuck at ``g_max``.
        stuck_off: fraction of devices stuck at ``g_min``.
        d2d: std of the fixed per-device write offset, uS (>= 0).
        drift_compensation: rescale each layer by global drift compensation.
        chip_key: ``None`` (every call draws a new chip from its key) or a
            ``jax.random`` key fixing the chip (stuck devices, offsets, drift
            exponents) for every call.
        crossbar: the crossbar predicate.

    Raises:
        ValueError: naming the argument that is out of range, a mapping whose
            range differs from the preset's, or ``relative_to="target"`` with
            ``g_min = 0`` (a device at 0 uS could never be accepted).
    """

    preset: DevicePreset = PCMPreset()
    mapping: ConductanceMap | None = None
    verify: VerifyLoop | None = None
    cost: CostModel = CostModel()
    t: float | None = None
    stuck_on: float = 0.0
    stuck_off: float = 0.0
    d2d: float = 0.0
    drift_compensation: bool = False
    chip_key: Any = None
    crossbar: CrossbarPredicate = default_crossbar

    def __post_init__(self):
        p = self.preset
        if not isinstance(p, DevicePreset):
            raise ValueError(
                f"preset must be a device preset (uswim_jax.device_preset(name)), "
                f"got {type(p).__name__}"
            )
        if self.mapping is None:
            object.__setattr__(self, "mapping", DifferentialPair(p.g_max, p.g_min))
        m = self.mapping
        if not isinstance(m, ConductanceMap):
            raise ValueError(
                f"mapping must be a DifferentialPair or BitSlicedPair, got {m!r}"
            )
        if (m.g_max, m.g_min) != (p.g_max, p.g_min):
            raise ValueError(
                f"mapping range [{m.g_min}, {m.g_max}] uS differs from the preset's "
                f"[{p.g_min}, {p.g_max}] uS; set both (device_preset(name, "
                f"g_max=..., g_min=...))"
            )
        if self.verify is None:
            object.__setattr__(self, "verify", VerifyLoop(**p.verify_defaults()))
        if not isinstance(self.verify, VerifyLoop):
            raise ValueError(f"verify must be a VerifyLoop, got {self.verify!r}")
        if not isinstance(self.cost, CostModel):
            raise ValueError(f"cost must be a CostModel, got {self.cost!r}")
        if self.verify.relative_to == "target" and p.g_min == 0:
            raise ValueError(
                "verify.relative_to='target' needs g_min > 0: a device targeted at "
                "0 uS has an empty acceptance band (use relative_to='range')"
            )
        if self.t is None:
            object.__setattr__(self, "t", float(p.t0))
        # t and drift_compensation are pytree leaves (traced under jit, so a
        # sweep over them does not recompile); only concrete values are checked.
        if is_concrete(self.t):
            _check_number("t", self.t, positive=True)
        check_fault_fractions(self.stuck_on, self.stuck_off)
        _check_number("d2d", self.d2d)
        comp = self.drift_compensation
        if is_concrete(comp) and not isinstance(comp, bool | np.bool_):
            raise ValueError(f"drift_compensation must be a bool, got {comp!r}")
        if not callable(self.crossbar):
            raise ValueError(
                f"crossbar must be a callable predicate, got {self.crossbar!r}"
            )

    # ------------------------------------------------------------ protocol

    @property
    def devices_per_weight(self) -> int:
        """Devices per weight: 2 per pair, times the slices."""
        return self.mapping.devices_per_weight

    def at(self, t: float) -> "ConductanceDevice":
        """The same model read at ``t`` seconds."""
        return dataclasses.replace(self, t=t)

    def program(
        self, key: jax.Array, params: PyTree, verified: PyTree | None = None
    ) -> PyTree:
        """The params one chip holds when read at ``self.t`` after writing
        ``params`` (write-verifying the weights in ``verified``).

        Args:
            key: a ``jax.random`` key; consumed.
            params: any pytree of arrays.
            verified: ``None`` or a boolean pytree like ``params``.

        Returns:
            A pytree like ``params`` (off-crossbar leaves unchanged).

        Raises:
            ValueError: naming ``params`` (NaN, no crossbar leaf) or
                ``verified`` (structure) on bad input.
        """
        chip = self.program_chip(key, params, verified)
        return self.read_chip(key, params, chip)

    def program_with_cost(
        self, key: jax.Array, params: PyTree, verified: PyTree | None = None
    ) -> Programmed:
        """``program(key, params, verified)`` (the same draws) with the write
        cycles the loop spent and its failures.

        ``cycles.exhaustive`` is what write-verifying every crossbar device
        costs in this same run (each device's own iteration count).
        """
        chip = self.program_chip(key, params, verified)
        c = self.chip_cost(chip)
        return Programmed(
            params=self.read_chip(key, params, chip), cycles=c.cycles, failed=c.failed
        )

    def write_cycles(
        self,
        verified: PyTree | None,
        params: PyTree | None = None,
        *,
        key: jax.Array | None = None,
    ) -> WriteCycles:
        """The write cycles of the run ``program(key, params, verified)``
        (an outcome of the draw, so ``key`` and ``params`` are required).

        Raises:
            ValueError: naming ``key`` or ``params`` when missing.
        """
        if key is None:
            raise ValueError(
                "key is required: the verify loop's cost is the outcome of a run"
            )
        if params is None:
            raise ValueError("params is required (the loop counts device writes)")
        return self.chip_cost(self.program_chip(key, params, verified)).cycles

    # ------------------------------------------------------------ scores

    def _leaf_weight_std(self, w: jax.Array):
        """``(written, verified, zero)``: the stds of :meth:`weight_std` for
        one crossbar leaf, and the written std of a zero weight of it."""
        pr, m, loop = self.preset, self.mapping, self.verify
        scale = layer_scale(w)
        target = m.encode(w, scale)
        ws = pr._write_std(target)
        vs = loop.residual_std(ws, loop.tolerance(target, m.g_max, ws))
        sw = jnp.asarray(m._slice_weights(), w.dtype)
        unit = scale / jnp.asarray(m.g_max - m.g_min, w.dtype)

        def total(std):
            k = sw.reshape((1,) * (std.ndim - 2) + (-1, 1))
            return unit * jnp.sqrt(jnp.sum((k * std) ** 2, axis=(-2, -1)))

        g0 = jnp.full((m.num_slices, 2), m.g_min, w.dtype)
        return total(ws), total(vs), total(pr._write_std(g0))

    def _map_scores(self, params: PyTree, fn, off) -> PyTree:
        check_crossbar("params", params, self.crossbar, fix=DEVICE_FIX)
        check_finite_tree("params", params)

        def leaf(p, x):
            if not on_crossbar(self.crossbar, path_str(p), x):
                return off(jnp.shape(x), _float_dtype(x))
            return fn(*self._leaf_weight_std(jnp.asarray(x).astype(_float_dtype(x))))

        return jax.tree_util.tree_map_with_path(leaf, params)

    def weight_std(self, params: PyTree) -> tuple[PyTree, PyTree]:
        """Estimated std of each weight's programming error at ``t0``,
        written once and write-verified, in the weight's units (for selection
        scores: :func:`uswim_jax.expected_loss_score`).

        A weight's error is ``max|W_l| sum_i w_i (e+_i - e-_i) / (g_max -
        g_min)`` over its devices (:mod:`.conductance`), so its std is that
        sum's with each device's std: one write's ``preset.write_std`` at the
        target, or, verified, :meth:`VerifyLoop.residual_std` of that write
        std in the loop's band. An estimate: re-aiming, clipping at 0 uS,
        faults and offsets are left out, and so are read noise and what
        happens after ``t0`` (drift, relaxation), which a verified weight
        suffers as much as a written one (so the difference ``written^2 -
        verified^2`` the expected-loss score uses hardly depends on them). Not
        :class:`uswim_jax.ClosedFormStd`: the programmed weights are not
        ``params + std * z``.

        Returns:
            ``(written, verified)``: pytrees like ``params`` (zeros off the
            crossbar).

        Raises:
            ValueError: naming ``params`` (NaN, no crossbar leaf).
        """
        treedef = jax.tree.structure(params)
        pairs = treedef.flatten_up_to(
            self._map_scores(
                params,
                lambda a, b, _: (a, b),
                lambda shape, dt: (jnp.zeros(shape, dt), jnp.zeros(shape, dt)),
            )
        )
        return (
            treedef.unflatten([a for a, _ in pairs]),
            treedef.unflatten([b for _, b in pairs]),
        )

    def state_multiplier(self, params: PyTree) -> PyTree:
        """U-SWIM's multiplier ``k`` from this device's own std: each
        weight's written std (:meth:`weight_std`) over that of a zero weight
        of its layer (both devices at ``g_min``), so ``k = 1`` at 0 as the
        authors' extreme states (ones off the crossbar, and where a zero
        weight's std is 0).

        Returns:
            A pytree like ``params`` (:func:`uswim_jax.uswim_score`'s
            ``multiplier``).

        Raises:
            ValueError: naming ``params`` (NaN, no crossbar leaf).
        """

        def ratio(written, _, zero):
            ok = zero > 0
            return jnp.where(ok, written / jnp.where(ok, zero, 1), 1).astype(
                written.dtype
            )

        return self._map_scores(params, ratio, jnp.ones)

    # ------------------------------------------------------------ stages

    def _leaves(self, params: PyTree) -> list[tuple[str, Any]]:
        return [
            (path_str(p), x)
            for p, x in jax.tree_util.tree_leaves_with_path(params)
            if on_crossbar(self.crossbar, path_str(p), x)
        ]

    def program_chip(
        self, key: jax.Array, params: PyTree, verified: PyTree | None = None
    ) -> dict[str, LeafChip]:
        """Programs one chip: the :class:`LeafChip` of every crossbar leaf,
        by path.

        Args:
            key: a ``jax.random`` key; consumed.
            params: any pytree of arrays.
            verified: ``None`` or a boolean pytree like ``params``.

        Returns:
            ``{path: LeafChip}`` (a pytree).

        Raises:
            ValueError: as :meth:`program`.
        """
        check_crossbar("params", params, self.crossbar, fix=DEVICE_FIX)
        check_finite_tree("params", params)
        mask = verified_mask(params, verified)
        flat_mask = jax.tree.structure(params).flatten_up_to(mask)
        out = {}
        pairs = jax.tree_util.tree_leaves_with_path(params)
        for (p, x), m in zip(pairs, flat_mask, strict=True):
            path = path_str(p)
            if on_crossbar(self.crossbar, path, x):
                out[path] = self._program_leaf(key, path, jnp.asarray(x), m)
        return out

    def _program_leaf(self, key, path, w, mask) -> LeafChip:
        pr, m = self.preset, self.mapping
        dt = _float_dtype(w)
        w = w.astype(dt)
        scale = layer_scale(w)
        target = m.encode(w, scale)
        shape = target.shape
        lk = leaf_key(key, path)
        ck = (
            jax.random.fold_in(lk, 0)
            if self.chip_key is None
            else leaf_key(self.chip_key, path)
        )
        if self.stuck_on or self.stuck_off:
            stuck = stuck_state(
                jax.random.fold_in(ck, 0), shape, self.stuck_on, self.stuck_off
            )
        else:
            stuck = jnp.zeros(shape, jnp.int8)
        offset = d2d_offsets(jax.random.fold_in(ck, 1), shape, self.d2d, dt)
        nu = draw_nu(jax.random.fold_in(ck, 2), pr, target)
        z_relax = _random.normal(jax.random.fold_in(lk, 2), shape, dt)
        verify = jnp.broadcast_to(jnp.asarray(mask)[..., None, None], shape)
        res = verify_devices(
            jax.random.fold_in(lk, 1),
            pr,
            self.verify,
            target,
            offset,
            stuck,
            (m.g_min, m.g_max),
        )
        return LeafChip(
            target=target,
            programmed=jnp.where(verify, res.verified, res.first),
            iterations=jnp.where(verify, res.iterations, 1),
            iterations_if_verified=res.iterations,
            converged=res.converged,
            verify=verify,
            stuck=stuck,
            nu=nu,
            z_relax=z_relax,
            scale=scale,
        )

    def _read_leaf(self, key, path, chip: LeafChip, t) -> jax.Array:
        pr, m = self.preset, self.mapping
        lk = leaf_key(key, path)
        tk = jax.random.fold_in(jax.random.fold_in(lk, 3), _time_bits(t))
        g_t = conductance_at(pr, chip.programmed, chip.target, chip.nu, chip.z_relax, t)
        w = m._decode(
            read(jax.random.fold_in(tk, 0), pr, g_t, chip.programmed, t), chip.scale
        )
        comp = self.drift_compensation
        if isinstance(comp, bool | np.bool_) and not comp:
            return w
        g0 = conductance_at(
            pr, chip.programmed, chip.target, chip.nu, chip.z_relax, pr.t0
        )
        ref = read(jax.random.fold_in(lk, 4), pr, g0, chip.programmed, pr.t0)
        cal = read(jax.random.fold_in(tk, 1), pr, g_t, chip.programmed, t)
        alpha = compensation_scale(
            m._decode(ref, chip.scale), m._decode(cal, chip.scale)
        )
        return jnp.where(jnp.asarray(comp), alpha * w, w)

    def read_chip(
        self,
        key: jax.Array,
        params: PyTree,
        chip: dict[str, LeafChip],
        t: Any = None,
    ) -> PyTree:
        """The params a programmed chip gives when read at ``t``.

        Args:
            key: the key given to :meth:`program_chip` (the reads at ``t`` come
                from it, see the module docstring).
            params: the params that were programmed (structure, off-crossbar
                leaves, dtypes).
            chip: from :meth:`program_chip`.
            t: read time, s (> 0; default ``self.t``).

        Returns:
            A pytree like ``params``.

        Raises:
            ValueError: naming ``t`` if not > 0.
        """
        t = self.t if t is None else t
        check_times("t", t)

        def visit(p, x):
            path = path_str(p)
            if path not in chip:
                return x
            return self._read_leaf(key, path, chip[path], t).astype(_float_dtype(x))

        return jax.tree_util.tree_map_with_path(visit, params)

    def program_at_times(
        self,
        key: jax.Array,
        params: PyTree,
        verified: PyTree | None,
        times: Any,
    ) -> PyTree:
        """One programmed chip per key, read at every time in ``times``.

        Entry ``i`` is ``self.at(times[i]).program(key, params, verified)``:
        the same chip and draws, with the reads at each time drawn afresh.
        The values agree to the last float bit, not always in it: this is
        another XLA program, which may fuse the same arithmetic differently
        (``python -m benchmarks.draw_compile`` counts the weights that
        differ).

        Args:
            key: a ``jax.random`` key; consumed.
            params: any pytree of arrays.
            verified: ``None`` or a boolean pytree like ``params``.
            times: 1-D sequence of read times, s (> 0, concrete).

        Returns:
            A pytree like ``params`` whose leaves have a leading axis of
            ``len(times)``.

        Raises:
            ValueError: naming ``times`` if not a non-empty 1-D sequence of
                times > 0.
        """
        ts = np.asarray(times, dtype=np.float64)
        if ts.ndim != 1 or ts.size == 0:
            raise ValueError(f"times must be a non-empty 1-D sequence, got {times!r}")
        check_times("times", ts)
        chip = self.program_chip(key, params, verified)
        reads = [self.read_chip(key, params, chip, float(t)) for t in ts]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *reads)

    def chip_cost(self, chip: dict[str, LeafChip]) -> ChipCost:
        """Write cycles, time and energy of a programmed chip, and of
        write-verifying every device in the same run."""
        f32 = jnp.float32
        zero = jnp.zeros((), f32)
        leaves = list(chip.values())
        total = sum((jnp.sum(c.iterations, dtype=f32) for c in leaves), zero)
        verify = sum(
            (jnp.sum(jnp.where(c.verify, c.iterations, 0), dtype=f32) for c in leaves),
            zero,
        )
        every = sum(
            (jnp.sum(c.iterations_if_verified, dtype=f32) for c in leaves), zero
        )
        failed = sum(
            (jnp.sum(c.verify & ~c.converged, dtype=jnp.int32) for c in leaves),
            jnp.zeros((), jnp.int32),
        )
        return ChipCost(
            cycles=WriteCycles(total=total, verify=verify, exhaustive=every),
            cost=programming_cost(total, verify, self.cost),
            exhaustive=programming_cost(every, every, self.cost),
            failed=failed,
        )


jax.tree_util.register_dataclass(
    ConductanceDevice,
    data_fields=["chip_key", "t", "drift_compensation"],
    meta_fields=[
        "preset",
        "mapping",
        "verify",
        "cost",
        "stuck_on",
        "stuck_off",
        "d2d",
        "crossbar",
    ],
)
