"""Monte Carlo trials over every process's devices, with JAX's multi-controller
runtime (:func:`jax.distributed.initialize`).

Every process runs the same program (the same driver, the same ``evaluate`` or
``sweep`` call with the same key); the trial axis is split over a mesh of the
global devices, each device computes only its trials, and one all-gather inside
the program hands every process all the per-trial results in trial order.
Trial ``t`` uses ``fold_in(key, t)`` wherever it runs, so the results are the
same bits as one process with the same key, whatever the number of processes or
devices.

- :func:`initialize` starts the runtime (flags, environment variables, or JAX's
  own detection on SLURM, Open MPI and Cloud TPU).
- :func:`trial_mesh` turns an ``evaluate``/``sweep`` ``shard=`` argument into the
  mesh the trials are split over; :func:`run_on_mesh` runs them there.
- :func:`is_writer`, :func:`from_writer`, :func:`every_process`, :func:`barrier` and
  :func:`check_shared_folder` let a driver have only process 0 write its run
  folder while the others read it and take the same decisions
  (``uswim_jax._io``'s atomic writes are skipped on the other processes).
"""

import argparse
import os
import re
import secrets
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

#: The mesh axis :func:`global_trial_mesh` splits trials over.
TRIAL_AXIS = "trials"

#: Environment variables read by :func:`initialize` when its arguments are not
#: given. JAX itself reads ``JAX_COORDINATOR_ADDRESS`` (and detects SLURM, Open
#: MPI and TPU pods); the process count and id are read here under JAX's naming.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
#: Set to ``1`` to have the CLI and the drivers start the runtime (as
#: ``--distributed`` does).
ENV_REQUEST = "USWIM_DISTRIBUTED"

#: Seconds without a heartbeat after which JAX declares a process dead and
#: stops the others (JAX's default is 100).
DEFAULT_HEARTBEAT_TIMEOUT_S = 100

_ADDRESS = re.compile(r"^\[?[^\s\[\]]+\]?:\d{1,5}$")


def _int_arg(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or value < minimum
    ):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: int | list[int] | None = None,
    heartbeat_timeout_seconds: int = DEFAULT_HEARTBEAT_TIMEOUT_S,
    initialization_timeout: int = 300,
    env: Mapping[str, str] | None = None,
) -> None:
    """Starts JAX's distributed runtime for this process (once; a second call
    is a no-op).

    Arguments left ``None`` are read from ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; what is still unset is left to
    :func:`jax.distributed.initialize`, which detects SLURM, Open MPI and Cloud
    TPU pods. On CPU the cross-process collectives are gloo's (JAX's CPU
    collectives over TCP).

    Must run before any JAX computation in the process.

    Args:
        coordinator_address: ``host:port`` of process 0's coordinator service.
        num_processes: the number of processes.
        process_id: this process's id in ``[0, num_processes)``.
        local_device_ids: restricts this process to these local devices (GPUs).
        heartbeat_timeout_seconds: a process silent this long is declared dead
            and every other process is stopped.
        initialization_timeout: seconds to wait for every process to connect.
        env: the environment to read (default ``os.environ``).

    Raises:
        ValueError: a malformed argument or environment variable, named.
        RuntimeError: JAX already ran a computation in this process.
    """
    env = os.environ if env is None else env
    if jax.distributed.is_initialized():
        return
    if coordinator_address is None:
        coordinator_address = env.get(ENV_COORDINATOR) or None
    if coordinator_address is not None and not (
        isinstance(coordinator_address, str) and _ADDRESS.match(coordinator_address)
    ):
        raise ValueError(
            f"coordinator_address must be 'host:port', got {coordinator_address!r}"
        )
    if num_processes is None and env.get(ENV_NUM_PROCESSES):
        num_processes = env[ENV_NUM_PROCESSES]
    if num_processes is not None:
        num_processes = _int_arg("num_processes", num_processes, 1)
    if process_id is None and env.get(ENV_PROCESS_ID):
        process_id = env[ENV_PROCESS_ID]
    if process_id is not None:
        process_id = _int_arg("process_id", process_id, 0)
        if num_processes is not None and process_id >= num_processes:
            raise ValueError(
                f"process_id must be < num_processes ({num_processes}), "
                f"got {process_id}"
            )
    heartbeat_timeout_seconds = _int_arg(
        "heartbeat_timeout_seconds", heartbeat_timeout_seconds, 1
    )
    initialization_timeout = _int_arg(
        "initialization_timeout", initialization_timeout, 1
    )
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address,
            num_processes,
            process_id,
            local_device_ids=local_device_ids,
            heartbeat_timeout_seconds=heartbeat_timeout_seconds,
            initialization_timeout=initialization_timeout,
        )
    except RuntimeError as e:
        if "before" in str(e):
            raise RuntimeError(
                "uswim_jax._distributed.initialize must run before any JAX "
                f"computation in the process ({e})"
            ) from e
        raise
    except ValueError as e:
        raise ValueError(
            f"cannot start the distributed runtime: {e} (pass coordinator_address, "
            f"num_processes and process_id, or set {ENV_COORDINATOR}, "
            f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}, or run under SLURM, "
            "Open MPI or on a TPU pod)"
        ) from e


def requested(flag: bool = False, env: Mapping[str, str] | None = None) -> bool:
    """Whether the runtime was asked for: ``flag`` (``--distributed``) or
    ``USWIM_DISTRIBUTED`` set to ``1``/``true``/``yes``."""
    env = os.environ if env is None else env
    return bool(flag) or env.get(ENV_REQUEST, "").strip().lower() in (
        "1",
        "true",
        "yes",
    )


#: The ``argparse`` destinations :func:`add_arguments` adds.
ARGUMENTS = (
    "distributed",
    "coordinator_address",
    "num_processes",
    "process_id",
    "heartbeat_timeout",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--distributed``, ``--coordinator-address``, ``--num-processes``,
    ``--process-id`` and ``--heartbeat-timeout`` to a CLI parser (read back by
    :func:`initialize_from_args`)."""
    g = parser.add_argument_group("distributed (JAX multi-controller runtime)")
    g.add_argument(
        "--distributed",
        action="store_true",
        help=f"start JAX's distributed runtime (also: {ENV_REQUEST}=1) and split "
        "the Monte Carlo trials over every process's devices; only process 0 "
        "writes the run folder",
    )
    g.add_argument(
        "--coordinator-address",
        default=None,
        help=f"host:port of process 0 (default: {ENV_COORDINATOR}, or detected "
        "on SLURM/Open MPI/TPU)",
    )
    g.add_argument(
        "--num-processes",
        type=int,
        default=None,
        help=f"number of processes (default: {ENV_NUM_PROCESSES}, or detected)",
    )
    g.add_argument(
        "--process-id",
        type=int,
        default=None,
        help=f"this process's id (default: {ENV_PROCESS_ID}, or detected)",
    )
    g.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=DEFAULT_HEARTBEAT_TIMEOUT_S,
        metavar="SECONDS",
        help="a process silent this long is declared dead and JAX stops the others",
    )


def initialize_from_args(args: argparse.Namespace) -> bool:
    """Starts the runtime when ``args.distributed`` or ``USWIM_DISTRIBUTED`` asks
    for it (:func:`initialize` with the parsed flags); returns whether it did."""
    if not requested(getattr(args, "distributed", False)):
        return False
    initialize(
        getattr(args, "coordinator_address", None),
        getattr(args, "num_processes", None),
        getattr(args, "process_id", None),
        heartbeat_timeout_seconds=getattr(
            args, "heartbeat_timeout", DEFAULT_HEARTBEAT_TIMEOUT_S
        ),
    )
    return True


def is_writer() -> bool:
    """Whether this process writes shared outputs (run folders, reports):
    process 0 of a started runtime, or any process without one (checking does
    not start JAX's backend)."""
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def from_writer(value: Any) -> Any:
    """``value`` as process 0 has it, on every process (identity with one
    process). Use it for what must agree, e.g. params each process computed,
    or a choice made while a function is traced (it runs at once, also inside
    a trace). See :func:`every_process` for what ``value`` may be."""
    if jax.process_count() == 1:
        return value
    return every_process(value)[0]


def every_process(value: Any) -> list[Any]:
    """``value`` as each process has it, in process order, on every process: a
    pytree of arrays or Python numbers, of the same structure, shapes and
    dtypes on every process. Array leaves come back as NumPy arrays, Python
    numbers as the same type. The bits are copied (an all-gather), not summed:
    ``-0.0`` stays ``-0.0``. With one process it is ``[value]``. Every
    process must call it at the same point.

    Raises:
        ValueError: on every process, when the processes' values differ in
            structure, shapes or dtypes.
    """
    if jax.process_count() == 1:
        return [value]
    leaves, treedef = jax.tree.flatten(value)
    arrays = [np.ascontiguousarray(np.asarray(v)) for v in leaves]
    data = np.concatenate(
        [np.zeros(0, np.uint8)] + [a.reshape(-1).view(np.uint8) for a in arrays]
    )
    layout = repr((treedef, [(a.shape, a.dtype.str) for a in arrays]))
    header = np.asarray([data.size, zlib.crc32(layout.encode())], np.int64).view(
        np.uint8
    )
    headers = _every_process_bytes(header).view(np.int64)
    if (headers != headers[0]).any():
        raise ValueError(
            "every process must pass a value of the same structure, shapes and "
            f"dtypes; (bytes, layout checksum) per process: {headers.tolist()}"
        )
    rows = _every_process_bytes(data) if data.size else [data] * len(headers)
    out = []
    for row in rows:
        parts, start = [], 0
        for v, a in zip(leaves, arrays, strict=True):
            o = row[start : start + a.nbytes].copy().view(a.dtype).reshape(a.shape)
            start += a.nbytes
            parts.append(type(v)(o.item()) if isinstance(v, bool | int | float) else o)
        out.append(jax.tree.unflatten(treedef, parts))
    return out


def _every_process_bytes(buf: np.ndarray) -> np.ndarray:
    """``(process_count, n)`` uint8 whose row ``i`` is process ``i``'s 1-D
    uint8 ``buf`` (``n`` bytes on every process). An all-gather over every
    device built from ahead-of-time compiled programs: a compiled program runs
    at once, also while a function is being traced, where
    ``multihost_utils.process_allgather`` refuses to run."""
    devices = jax.devices()
    mesh = jax.sharding.Mesh(np.asarray(devices), ("all",))
    shards = [
        jax.jit(lambda b: b[None], out_shardings=jax.sharding.SingleDeviceSharding(d))
        .lower(buf)
        .compile()(buf)
        for d in devices
        if d.process_index == jax.process_index()
    ]
    spread = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("all"))
    every = jax.make_array_from_single_device_arrays(
        (len(devices), buf.size), spread, shards
    )
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    gather = jax.jit(lambda a: a, out_shardings=replicated)
    rows = np.asarray(gather.lower(every).compile()(every).addressable_data(0))
    first: dict[int, int] = {}
    for i, d in enumerate(devices):
        first.setdefault(d.process_index, i)
    return rows[[first[p] for p in range(jax.process_count())]]


def barrier(name: str) -> None:
    """Waits until every process reaches ``barrier(name)`` (no-op with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def check_shared_folder(folder: str | os.PathLike) -> None:
    """Checks that every process sees the files process 0 writes in ``folder``
    (a run folder must be on a filesystem all hosts mount: only process 0
    writes it, and every process reads it to decide what a resumed run still
    has to compute). No-op with one process; every process must call it.

    Raises:
        ValueError: on every process, naming those that do not see the folder.
    """
    if jax.process_count() == 1:
        return
    folder = Path(folder)
    probe = folder / ".uswim-shared-check"
    token = np.frombuffer(secrets.token_bytes(8), np.uint8)
    token = from_writer(token)
    if is_writer():
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(token.tobytes())
    barrier("uswim-shared-check-written")
    try:
        seen = probe.read_bytes() == token.tobytes()
    except OSError:
        seen = False
    ok = np.asarray(every_process(seen))
    barrier("uswim-shared-check-read")
    if is_writer():
        probe.unlink(missing_ok=True)
    if not ok.all():
        bad = [int(i) for i in np.flatnonzero(~ok)]
        raise ValueError(
            f"run folder {str(folder)!r} is not shared: process(es) {bad} do not "
            "see the files process 0 writes there; put it on a filesystem every "
            "host mounts"
        )


def global_trial_mesh(devices: Any = None) -> jax.sharding.Mesh:
    """A 1-D mesh (axis :data:`TRIAL_AXIS`) over ``devices``, default every
    device of every process (:func:`jax.devices`), ordered by process then
    device id."""
    if devices is None:
        devices = jax.devices()
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))
    if not devices:
        raise ValueError("devices must not be empty")
    return jax.sharding.Mesh(np.asarray(devices), (TRIAL_AXIS,))


def trial_mesh(shard: Any) -> jax.sharding.Mesh | None:
    """The mesh an ``evaluate``/``sweep`` ``shard=`` argument splits trials
    over, or ``None`` for the single-process path: a :class:`jax.sharding.Mesh`
    is used as given (trials split over all its axes); ``True`` with more than
    one process is :func:`global_trial_mesh`; anything else falsy or ``True`` in
    one process is ``None``.

    Raises:
        ValueError: ``shard`` is neither a bool nor a mesh.
    """
    if isinstance(shard, jax.sharding.Mesh):
        if shard.size == 0:
            raise ValueError("shard must be a mesh with at least one device")
        return shard
    if not isinstance(shard, bool | np.bool_):
        raise ValueError(
            f"shard must be a bool or a jax.sharding.Mesh, got {type(shard).__name__}"
        )
    if shard and jax.process_count() > 1:
        return global_trial_mesh()
    return None


def run_on_mesh(
    keys: jax.Array,
    per_device: Callable[[jax.Array], Any],
    mesh: jax.sharding.Mesh,
) -> Any:
    """``per_device(keys) -> (T, ...)`` with the trial axis split over every
    device of ``mesh`` (all its axes, ``jax.shard_map``): the keys are padded to
    a multiple of the mesh size (repeating the first ones, whose results are
    dropped), each device runs ``per_device`` on its block, and an all-gather
    inside the program gives every process all ``T`` results in trial order.

    Every process of the mesh must make the same call (multi-controller). In
    a trace the result is the global, replicated array; called eagerly it is
    this process's copy (an ordinary single-device array).
    """
    axes = tuple(mesh.axis_names)
    spec = jax.sharding.PartitionSpec(axes)
    t = keys.shape[0]
    n = mesh.size
    pad = -(-t // n) * n - t
    padded = jnp.concatenate([keys, keys[:pad]]) if pad else keys

    def block(k):
        out = per_device(k)
        return jax.tree.map(
            lambda a: jax.lax.all_gather(a, axes, axis=0, tiled=True), out
        )

    # check_vma=False: the trial-batched interpreter binds primitives directly,
    # mixing per-device values with replicated ones (params, images); the
    # all-gathered result is the same on every device, as out_specs=P() says.
    # jit: an eager shard_map dispatches op by op, each op one multi-process
    # program (minutes for a small model); under a driver's jit it is inlined.
    out = jax.jit(
        jax.shard_map(
            block,
            mesh=mesh,
            in_specs=spec,
            out_specs=jax.sharding.PartitionSpec(),
            check_vma=False,
        )
    )(padded)
    out = jax.tree.map(lambda a: a[:t], out)
    return jax.tree.map(_local_copy, out)


def _local_copy(a: Any) -> Any:
    if isinstance(a, jax.core.Tracer) or not isinstance(a, jax.Array):
        return a
    if a.is_fully_addressable:
        return a
    return a.addressable_data(0)
