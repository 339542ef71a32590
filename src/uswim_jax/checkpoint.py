"""Checkpoints: one file holding a pytree as msgpack, with a SHA-256 of the
payload so a truncated or damaged file is reported, never half-loaded."""

import hashlib
import os
from pathlib import Path
from typing import Any

from flax import serialization

from uswim_jax._io import atomic_write_bytes

_MAGIC = b"USWIMCKPT1\n"


class CorruptCheckpointError(ValueError):
    """The checkpoint file is damaged or not a checkpoint."""


def save(path: str | os.PathLike, tree: Any) -> None:
    """Writes ``tree`` (params, optimizer state, counters, ...) atomically."""
    payload = serialization.msgpack_serialize(serialization.to_state_dict(tree))
    digest = hashlib.sha256(payload).hexdigest().encode()
    atomic_write_bytes(path, _MAGIC + digest + b"\n" + payload)


def load(path: str | os.PathLike, target: Any) -> Any:
    """Reads a checkpoint into the structure of ``target``.

    Raises:
        FileNotFoundError: no such file.
        CorruptCheckpointError: bad header, checksum mismatch, or a payload that
            does not fit ``target``.
    """
    path = Path(path)
    data = path.read_bytes()
    header = len(_MAGIC) + 65
    if not data.startswith(_MAGIC) or len(data) < header:
        raise CorruptCheckpointError(f"{path} is not a uswim_jax checkpoint")
    digest, payload = data[len(_MAGIC) : header - 1], data[header:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CorruptCheckpointError(
            f"{path} is damaged (checksum mismatch); delete it to start over"
        )
    try:
        state = serialization.msgpack_restore(payload)
        return serialization.from_state_dict(target, state)
    except Exception as e:  # noqa: BLE001 - any decode failure means corrupt
        raise CorruptCheckpointError(
            f"{path} does not match the expected structure ({e})"
        ) from e
