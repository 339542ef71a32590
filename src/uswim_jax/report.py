"""Run folders: config files with a content hash, and the manifest that says how
to reproduce a run."""

import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import jax

from uswim_jax._io import atomic_write_json


def canonical_json(obj: Any) -> str:
    """Key-sorted compact JSON: the text the config hash is taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def config_hash(config: Any) -> str:
    """First 12 hex digits of the SHA-256 of a config's canonical JSON (a
    dataclass or a dict)."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:12]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The checkout's commit, with ``+dirty`` when it has uncommitted changes;
    None outside a git checkout."""
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
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def manifest(*, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """What is needed to reproduce a run: package versions, backend, the threefry
    setting, seed, git commit, plus ``extra`` (e.g. the dataset name and source)."""
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
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "jax_threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "seed": seed,
        "git_commit": git_commit(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **extra,
    }


def prepare_run_dir(run_dir: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Creates ``run_dir`` with ``config.json``, or checks that an existing one
    holds the same config (so a rerun resumes instead of mixing two configs).

    Raises:
        ValueError: the folder holds a different config.
    """
    run_dir = Path(run_dir)
    cfg_file = run_dir / "config.json"
    new_hash = config_hash(config)
    if cfg_file.is_file():
        try:
            old = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_file} is not valid JSON ({e})") from e
        old_hash = config_hash(old.get("config", old))
        if old_hash != new_hash:
            changed = sorted(
                k
                for k in set(old.get("config", {})) | set(config)
                if old.get("config", {}).get(k) != config.get(k)
            )
            raise ValueError(
                f"run folder {run_dir} holds a different config (hash {old_hash}, "
                f"now {new_hash}; changed: {', '.join(changed)}). Pass a new run "
                "folder or delete the old one."
            )
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg_file, {"config": config, "hash": new_hash})
    return run_dir
