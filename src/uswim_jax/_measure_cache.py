"""``"measure"``'s and ``"layers"``' choices kept in a file, shared by the
processes of a machine.

Under :func:`uswim_jax.conv_paths`' ``"measure"`` (the default on
accelerators) a model's whole trial-batched forward pass is timed under each
candidate policy the first time it is traced in a process: one compilation per
candidate, seconds on LeNet and up to minutes on a large model. Under
``"layers"`` (also one of ``"measure"``'s candidates) each convolution shape is
timed along every path. Each choice is also written to a JSON file, and a later
process on the same machine reads it instead of timing again.

- The file is ``$USWIM_CONV_CACHE``, default
  ``~/.cache/uswim_jax/conv_measure.json``; an empty ``USWIM_CONV_CACHE`` means
  no file (every process measures).
- An entry's key is everything the timing depends on: the signature the
  in-process cache uses (for a model: backend, device kind, the program's text,
  the shapes and dtypes, which leaves carry trials, the patch-row threshold;
  for a convolution: backend, device kind, the primitive's params and its
  operands' shapes, layouts and dtypes), the JAX and jaxlib versions, and the
  package's source hash (``source_hash``, as run folders record it): any
  change to the code measures again.
- A choice read from the file shows in :func:`uswim_jax.conv_path_log` with
  ``"cached"`` (the file) and ``"reused": True`` (its ``"seconds"`` were spent
  by the process that measured). Delete the file to measure again, e.g. after
  the machine's load changed.
- An unreadable or malformed file counts as empty and is rewritten; an entry of
  the wrong form counts as missing; a file that cannot be written is left
  alone. Each says so in one warning per file and process.
- The file is written through a temporary file and a rename, so a process that
  reads it while another writes sees the old file or the new one. Every
  process of a multi-process run writes its own timing (each host keeps its
  machine's file); where processes share one file, the last rename wins and a
  lost entry is measured again by a later process.

"""

import datetime
import hashlib
import json
import os
import warnings
from pathlib import Path

import jax
import jaxlib

from uswim_jax._io import atomic_write_json, source_hash

#: The file's format; a file of another format counts as empty.
FORMAT = 1
_WARNED: set = set()


def cache_file() -> Path | None:
    """The cache file, or ``None`` when ``USWIM_CONV_CACHE`` is empty."""
    env = os.environ.get("USWIM_CONV_CACHE")
    if env is None:
        return Path.home() / ".cache" / "uswim_jax" / "conv_measure.json"
    return Path(env) if env else None


def _key(sig: str) -> str:
    versions = (jax.__version__, jaxlib.__version__, source_hash())
    return hashlib.sha256(repr((sig, versions)).encode()).hexdigest()


def _warn_once(path: Path, what: str) -> None:
    if (path, what) not in _WARNED:
        _WARNED.add((path, what))
        warnings.warn(f"conv path cache {path}: {what}", RuntimeWarning, stacklevel=4)


def _entries(path: Path) -> dict:
    """The file's entries; ``{}`` (with a warning) when it is unreadable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        _warn_once(path, f"not read ({e}); measuring")
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not (
        isinstance(data, dict)
        and data.get("format") == FORMAT
        and isinstance(data.get("entries"), dict)
    ):
        _warn_once(path, "malformed, counted as empty (it will be rewritten)")
        return {}
    return data["entries"]


def lookup(sig: str, candidates) -> dict | None:
    """The stored measurement under signature ``sig`` (``"path"``, ``"ms"``,
    ``"seconds"``, ``"measured"``, ``"cached"``, and a model's ``"model"``), or
    ``None``. An entry whose path or timings are not among ``candidates``
    counts as missing."""
    path = cache_file()
    if path is None:
        return None
    entry = _entries(path).get(_key(sig))
    if entry is None:
        return None
    ok = (
        isinstance(entry, dict)
        and entry.get("path") in candidates
        and isinstance(entry.get("ms"), dict)
        and set(entry["ms"]) <= set(candidates)
        and all(isinstance(v, (int, float)) for v in entry["ms"].values())
        and isinstance(entry.get("model", ""), str)
        and isinstance(entry.get("seconds"), (int, float))
    )
    if not ok:
        _warn_once(path, "an entry of the wrong form, measuring again")
        return None
    return {**entry, "cached": str(path)}


def remember(sig: str, measurement: dict) -> None:
    """Adds ``measurement`` (``"path"``, ``"ms"``, ``"seconds"``, and a
    model's ``"model"``) under ``sig``, rewriting the file atomically."""
    path = cache_file()
    if path is None:
        return
    entry = {
        k: measurement[k]
        for k in ("model", "path", "ms", "seconds")
        if k in measurement
    }
    entry["measured"] = datetime.datetime.now(datetime.UTC).isoformat(
        timespec="seconds"
    )
    entries = _entries(path)
    entries[_key(sig)] = entry
    try:
        # Every process writes its own timing: each host of a multi-host run
        # keeps its own machine's file (processes sharing one file: the last
        # rename wins, and a lost entry is measured again later).
        atomic_write_json(
            path, {"format": FORMAT, "entries": entries}, writer_only=False
        )
    except OSError as e:
        _warn_once(path, f"not written ({e})")
