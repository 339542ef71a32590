"""A run folder and everything in it: :class:`RunStore`.

One object owns a run folder's paths and reads and writes every artefact in
it atomically (``uswim_jax._io``): the config (``config.json``, with its hash)
and the manifest (``manifest.json``: package versions, source hash, backend),
training checkpoints, fine-tuned params, sensitivities, the exhaustive and
no-verify end points of each device setting, step chunks and finished curves,
and small JSON records. A run killed at any moment (SIGINT or SIGKILL) leaves
only whole files, so the same command resumes it.

A file that cannot be read (damaged on disk, or written by hand) is never
half-used or silently recomputed: every read goes through one handler that
raises :class:`CorruptFileError` naming the file and saying to delete it; the
same command then recomputes that unit of work only (runs are deterministic,
so the numbers come out the same).

Layout of a run folder::

    config.json  manifest.json  run_info.json
    train/  config.json manifest.json checkpoint.ckpt history.json metrics.json
    finetuned.npz  sensitivities.npz
    chunks/<setting>__ends.npz                         the end points of a setting
    chunks/<setting>__<method>__steps<a>-<b>.npz       budget steps a..b-1 of a curve
    curves/<setting>__<method>.npz                     a finished curve
"""

import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np

from uswim_jax import checkpoint
from uswim_jax._distributed import is_writer
from uswim_jax._io import (
    atomic_write_bytes,
    atomic_write_json,
    host_cpu,
    npz_bytes,
    remove_stale_temp_files,
    source_hash,
)
from uswim_jax._trialbatch import conv_policy
from uswim_jax.sweep import Curve

T = TypeVar("T")

#: Manifest entries that must not change when a run is resumed: a different
#: value can change the results, so old and new work would not mix cleanly.
RESUME_KEYS = (
    "source_hash",
    "packages.uswim_jax",
    "packages.jax",
    "packages.jaxlib",
    "backend",
    "jax_threefry_partitionable",
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "dataset",
    "dataset_source",
    "num_test",
)

_PER_STEP = ("counts", "fractions", "cycles", "cycles_verified_only", "accuracies")


class CorruptFileError(ValueError):
    """A file of a run folder cannot be read; the message names it and says to
    delete it (the same command then recomputes that unit of work)."""


def canonical_json(obj: Any) -> str:
    """Key-sorted compact JSON: the text the config hash is taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def config_hash(config: Any) -> str:
    """First 12 hex digits of the SHA-256 of a config's canonical JSON (a
    dataclass or a dict)."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:12]


#: Folders of committed outputs (reports, benchmark JSON), relative to the
#: checkout's top: changes there do not count as a dirty checkout.
OUTPUT_DIRS = ("results", "benchmarks/results")


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The checkout's commit, with ``+dirty`` when it has uncommitted changes
    outside :data:`OUTPUT_DIRS` (a run that copies its report into
    ``results/`` does not make the next run of the same command dirty); None
    outside a git checkout."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ":(top)",
                *(f":(top,exclude){d}" for d in OUTPUT_DIRS),
            ],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def manifest(*, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """What is needed to reproduce a run: package versions, the hash of the
    package's source (:func:`source_hash`), the host CPU
    (:func:`uswim_jax._io.host_cpu`; not a resume key: like the convolution
    paths it changes only the rounding), backend, the threefry setting,
    the convolution-path policy (:func:`uswim_jax.conv_paths`), seed, git
    commit, plus ``extra`` (e.g. the dataset name and source)."""
    packages = {
        d: _version(d)
        for d in (
            "uswim_jax",
            "jax",
            "jaxlib",
            "numpy",
            "flax",
            "optax",
            "tensorflow-datasets",
        )
    }
    return {
        "packages": packages,
        "source_hash": source_hash(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": host_cpu(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "jax_threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "jax_enable_x64": bool(jax.config.jax_enable_x64),
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
        # how trial-batched convolutions run; not a resume key: like the chunk
        # sizes, the paths change only the float32 summation order
        "conv_path_policy": conv_policy(),
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "seed": seed,
        "git_commit": git_commit(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **extra,
    }


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def step_slices(num_steps: int, steps_per_chunk: int | None) -> list[slice]:
    """The budget-step ranges of a curve saved as separate units of work (one
    range when ``steps_per_chunk`` is None)."""
    per = steps_per_chunk or max(num_steps, 1)
    return [slice(i, min(i + per, num_steps)) for i in range(0, num_steps, per)]


def join_steps(parts: list[Curve]) -> Curve:
    """One curve from consecutive step chunks: the per-step fields are
    concatenated, the per-setting ones (reference, baseline) taken from the
    first chunk."""
    return parts[0]._replace(
        **{k: np.concatenate([getattr(p, k) for p in parts]) for k in _PER_STEP}
    )


def _safe(setting: str) -> str:
    return setting.replace(" ", "_").replace("=", "")


class RunStore:
    """A run folder: its paths, and atomic save/load of every artefact in it.

    Loads return None when the artefact is not there yet and raise
    :class:`CorruptFileError` when it cannot be read. Device settings are
    named by their ``name`` (e.g. ``"uniform sigma=0.3"``).

    Args:
        root: the run folder (created by :meth:`open`).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def sub(self, name: str) -> "RunStore":
        """The store of a sub-folder (e.g. ``train``)."""
        return RunStore(self.root / name)

    # ------------------------------------------------------------ identity

    def check(self, config: dict[str, Any], new_manifest: dict[str, Any]) -> None:
        """Checks, without writing anything, that this folder can hold a run of
        ``config`` made under ``new_manifest``: an existing manifest agrees on
        :data:`RESUME_KEYS` (keys absent from either side are skipped, except
        the source hash) and an existing ``config.json`` has the same hash.

        Raises:
            ValueError: either differs; the message names what changed and
                says to use a new run folder.
        """
        old = self.read_json("manifest.json")
        if old is not None:
            changed = [
                f"{k} {_get(old, k)!r} -> {_get(new_manifest, k)!r}"
                for k in RESUME_KEYS
                if _get(new_manifest, k) is not None
                and _get(old, k) != _get(new_manifest, k)
                # Older folders lack some keys; only the source hash is required.
                and (_get(old, k) is not None or k == "source_hash")
            ]
            if changed:
                raise ValueError(
                    f"run folder {self.root} was started under a different "
                    f"environment, data or source code ({'; '.join(changed)}), so "
                    "resuming would mix results that are not comparable. Start "
                    "afresh: pass a new run folder (--run-dir / --workdir) or "
                    "delete the old one."
                )
        old = self.read_json("config.json")
        if old is not None:
            old_config = old.get("config", old)
            old_hash, new_hash = config_hash(old_config), config_hash(config)
            if old_hash != new_hash:
                changed = sorted(
                    k
                    for k in set(old_config) | set(config)
                    if old_config.get(k) != config.get(k)
                )
                raise ValueError(
                    f"run folder {self.root} holds a different config (hash "
                    f"{old_hash}, now {new_hash}; changed: {', '.join(changed)}). "
                    "Pass a new run folder or delete the old one."
                )

    def open(
        self,
        config: dict[str, Any],
        new_manifest: dict[str, Any] | None = None,
        *,
        execution: dict[str, Any] | None = None,
        log: Callable[..., Any] | None = None,
    ) -> "RunStore":
        """Creates the folder for a run of ``config``, or resumes it.

        After :meth:`check` (nothing is written when it fails): writes
        ``config.json`` (``config``, its hash and the ``execution`` knobs, which
        are not hashed), removes the temporary files of writers that were
        killed, and writes ``new_manifest`` (when given).

        Args:
            config: what the run's results depend on (hashed).
            new_manifest: this invocation's :func:`manifest`.
            execution: settings recorded but not hashed (chunk sizes, the
                convolution path: ``ExperimentConfig.execution_json``); a change
                resumes the same run and is logged.
            log: where a changed ``execution`` is reported.

        Returns:
            ``self``.

        Raises:
            ValueError: as :meth:`check`.
        """
        self.check(config, new_manifest or {})
        old = self.read_json("config.json")
        record: dict[str, Any] = {"config": config, "hash": config_hash(config)}
        if execution is not None:
            record["execution"] = execution
            before = (old or {}).get("execution")
            if before is not None and before != execution and log is not None:
                changed = ", ".join(
                    f"{k} {before.get(k)!r} -> {execution.get(k)!r}"
                    for k in sorted(set(before) | set(execution))
                    if before.get(k) != execution.get(k)
                )
                log(
                    f"resuming with other execution settings ({changed}): they "
                    "are not part of the run's identity (docs/architecture.md)"
                )
        if old is None or old.get("execution") != record.get("execution"):
            atomic_write_json(self.root / "config.json", record)
        remove_stale_temp_files(self.root)  # left by a run killed mid-write
        if new_manifest is not None:
            atomic_write_json(self.root / "manifest.json", new_manifest)
        return self

    # ------------------------------------------------------------ reading

    def _read(self, path: Path, what: str, loader: Callable[[Path], T]) -> T | None:
        """The one handler of a file that cannot be read: ``loader(path)``, None
        when the file is absent, :class:`CorruptFileError` when it fails."""
        if not path.is_file():
            return None
        try:
            return loader(path)
        except (
            OSError,
            ValueError,
            KeyError,
            EOFError,
            zipfile.BadZipFile,
        ) as e:
            raise CorruptFileError(
                f"corrupt {what} file {path} ({e}); delete it and run the same "
                "command again (that unit of work is recomputed)"
            ) from e

    def read_json(self, name: str) -> Any:
        """``name`` (relative to the folder) parsed as JSON, or None."""
        return self._read(self.root / name, "JSON", lambda p: json.loads(p.read_text()))

    def write_json(self, name: str, obj: Any) -> None:
        """Writes ``obj`` as ``name`` (relative to the folder), atomically."""
        atomic_write_json(self.root / name, obj)

    def _arrays(self, path: Path, what: str, keys: tuple[str, ...]):
        def load(p):
            with open(p, "rb") as f, np.load(f) as z:
                return tuple(z[k] for k in keys)

        return self._read(path, what, load)

    # ------------------------------------------------------------ checkpoints

    def load_checkpoint(self, template: Any, name: str = "checkpoint.ckpt") -> Any:
        """The checkpoint ``name`` read into the structure of ``template``, or
        None when there is none."""
        return self._read(
            self.root / name, "checkpoint", lambda p: checkpoint.load(p, template)
        )

    def save_checkpoint(self, tree: Any, name: str = "checkpoint.ckpt") -> None:
        """Saves ``tree`` as the checkpoint ``name`` (with a checksum)."""
        checkpoint.save(self.root / name, tree)

    # ------------------------------------------------------------ pytrees

    def load_trees(
        self, name: str, template: Any, names: list[str]
    ) -> dict[str, Any] | None:
        """``{n: pytree shaped like template}`` for every ``n`` in ``names`` from
        ``<name>.npz``; None when the file is absent or lacks one of them."""
        treedef = jax.tree.structure(template)

        def load(p):
            with open(p, "rb") as f, np.load(f) as z:
                if not all(f"{n}/0" in z for n in names):
                    return None
                return {
                    n: treedef.unflatten(
                        [z[f"{n}/{i}"] for i in range(treedef.num_leaves)]
                    )
                    for n in names
                }

        return self._read(self.root / f"{name}.npz", name, load)

    def save_trees(self, name: str, trees: dict[str, Any]) -> None:
        """Saves ``{n: pytree}`` as ``<name>.npz`` (leaves in tree order)."""
        arrays = {
            f"{n}/{i}": np.asarray(leaf)
            for n, tree in trees.items()
            for i, leaf in enumerate(jax.tree.leaves(tree))
        }
        atomic_write_bytes(self.root / f"{name}.npz", npz_bytes(**arrays))

    # ------------------------------------------------------------ sweeps

    def curve_path(self, setting: str, method: str) -> Path:
        return self.root / "curves" / f"{_safe(setting)}__{method}.npz"

    def chunk_path(self, setting: str, method: str, steps: slice) -> Path:
        """The file of budget steps ``steps`` of a curve: named by the step
        range, so it does not depend on how many steps a chunk holds."""
        return (
            self.root
            / "chunks"
            / f"{_safe(setting)}__{method}__steps{steps.start:04d}-{steps.stop:04d}.npz"
        )

    def ends_path(self, setting: str) -> Path:
        return self.root / "chunks" / f"{_safe(setting)}__ends.npz"

    def _load_curve(self, path: Path) -> Curve | None:
        got = self._arrays(path, "curve", Curve._fields)
        return None if got is None else Curve(*got)

    def _save_curve(self, path: Path, curve: Curve) -> None:
        atomic_write_bytes(
            path, npz_bytes(**{k: np.asarray(v) for k, v in curve._asdict().items()})
        )

    def load_curve(self, setting: str, method: str) -> Curve | None:
        """The finished curve of (setting, method), or None."""
        return self._load_curve(self.curve_path(setting, method))

    def save_curve(self, setting: str, method: str, curve: Curve) -> None:
        """Saves the finished curve of (setting, method) and removes its step
        chunks."""
        self._save_curve(self.curve_path(setting, method), curve)
        self.remove_chunks(setting, method)

    def load_chunk(self, setting: str, method: str, steps: slice) -> Curve | None:
        """Budget steps ``steps`` of the curve of (setting, method), or None."""
        return self._load_curve(self.chunk_path(setting, method, steps))

    def save_chunk(self, setting: str, method: str, steps: slice, part: Curve):
        """Saves budget steps ``steps`` of the curve of (setting, method)."""
        self._save_curve(self.chunk_path(setting, method, steps), part)

    def remove_chunks(self, setting: str, method: str) -> None:
        """Removes every step chunk of (setting, method), whatever its range
        (process 0 only, as every write: another process must not remove them
        before process 0 has saved the curve)."""
        if not is_writer():
            return
        folder = self.root / "chunks"
        if folder.is_dir():
            for p in folder.glob(f"{_safe(setting)}__{method}__steps*.npz"):
                p.unlink(missing_ok=True)

    def load_ends(self, setting: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-trial accuracies of a setting with every weight verified
        (reference) and with none (baseline), or None."""
        return self._arrays(
            self.ends_path(setting), "end points", ("reference", "baseline")
        )

    def save_ends(self, setting: str, reference, baseline) -> None:
        atomic_write_bytes(
            self.ends_path(setting),
            npz_bytes(reference=np.asarray(reference), baseline=np.asarray(baseline)),
        )

    def curve(
        self,
        setting: str,
        method: str,
        slices: list[slice],
        compute: Callable[[slice], Curve],
        on_chunk: Callable[[], Any] | None = None,
    ) -> Curve:
        """The curve of (setting, method): loaded when finished; else each step
        chunk of ``slices`` is loaded when saved, or computed by
        ``compute(steps)`` and saved (``on_chunk()`` after each computed one);
        the joined curve is saved and its chunks removed.

        A step's result does not depend on the other steps of its call (every
        step uses the same trial keys), so the chunks join to the curve one call
        would give."""
        done = self.load_curve(setting, method)
        if done is not None:
            self.remove_chunks(setting, method)  # left when killed right after
            return done
        parts = []
        for sl in slices:
            part = self.load_chunk(setting, method, sl) if len(slices) > 1 else None
            if part is None:
                part = jax.device_get(compute(sl))
                if len(slices) > 1:
                    self.save_chunk(setting, method, sl, part)
                if on_chunk is not None:
                    on_chunk()
            parts.append(part)
        curve = join_steps(parts) if len(parts) > 1 else parts[0]
        self.save_curve(setting, method, curve)
        return curve

    def chunks_left(self, setting: str, method: str, slices: list[slice]) -> int:
        """How many of the step chunks of (setting, method) remain to compute
        (0 when the curve is finished)."""
        if self.curve_path(setting, method).is_file():
            return 0
        if len(slices) == 1:
            return 1
        return sum(not self.chunk_path(setting, method, s).is_file() for s in slices)
