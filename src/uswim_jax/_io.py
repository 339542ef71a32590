"""Atomic file writes: a reader (or a run killed mid-write) never sees half a file.
Also the hash of the package's source and the host CPU, which name the code and
the machine behind an artefact."""

import functools
import hashlib
import io
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from uswim_jax._distributed import is_writer


def atomic_write_bytes(
    path: str | os.PathLike, data: bytes, *, writer_only: bool = True
) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same folder and
    ``os.replace``. Only process 0 of a distributed run writes, unless
    ``writer_only`` is false (a file of this machine's own, not a shared
    output)."""
    if writer_only and not is_writer():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(
    path: str | os.PathLike, text: str, *, writer_only: bool = True
) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"), writer_only=writer_only)


def atomic_write_json(
    path: str | os.PathLike, obj: Any, *, writer_only: bool = True
) -> None:
    """Writes ``obj`` as indented, key-sorted JSON, atomically (see
    :func:`atomic_write_bytes` for ``writer_only``)."""
    atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=True) + "\n", writer_only=writer_only
    )


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """The bytes of ``np.savez(**arrays)``."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def remove_stale_temp_files(folder: str | os.PathLike) -> int:
    """Deletes the temporary files that :func:`atomic_write_bytes` left under
    ``folder`` when its process was killed (their writer is no longer running).
    Returns how many were removed (none on the processes that do not write:
    another host's writer is not theirs to judge)."""
    if not is_writer():
        return 0
    removed = 0
    for tmp in Path(folder).rglob(".*.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and _alive(pid):
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@functools.cache
def source_hash() -> str:
    """First 12 hex digits of the SHA-256 over the ``uswim_jax`` package's
    ``.py`` files (relative paths and contents, sorted by path): which code
    produced an artefact. Computed once per process."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


#: The vector instruction sets named in a :func:`host_cpu` record (as Linux's
#: ``/proc/cpuinfo`` spells them: x86 ``flags``, Arm ``Features``).
VECTOR_ISA = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "asimd",
    "sve",
    "sve2",
)


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """``{"model", "vector_isa"}`` from the text of ``/proc/cpuinfo``: the first
    processor's model name (x86 ``model name``, Arm ``Model`` or ``CPU part``)
    and which of :data:`VECTOR_ISA` its flags list, in that order."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        name = name.strip()
        if sep and name not in fields:
            fields[name] = value.strip()
    model = next(
        (fields[k] for k in ("model name", "Model", "CPU part") if fields.get(k)),
        None,
    )
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return {"model": model, "vector_isa": [f for f in VECTOR_ISA if f in flags]}


@functools.cache
def host_cpu() -> dict[str, Any]:
    """The CPU this process runs on: ``{"model", "vector_isa"}``. XLA compiles
    float arithmetic for the host's vector instructions, so on another
    instruction set the same program rounds differently (and training turns
    that into other weights): a run folder records this beside the packages.
    Read from ``/proc/cpuinfo`` (Linux); elsewhere the model is
    :func:`platform.processor` and ``vector_isa`` is ``None`` (unknown)."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return {"model": platform.processor() or None, "vector_isa": None}
