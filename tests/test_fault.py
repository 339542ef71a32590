"""Fault tolerance and determinism of a real (tiny) sweep, run in subprocesses.

A sweep killed with SIGKILL part-way keeps every unit of work already written
(each is written atomically), and running the same command again finishes the
job with a ``curves.csv`` byte-identical to an uninterrupted run in another
folder. The resumed process computes every unit after the kill afresh, so the
comparison is also the check that two fresh processes give the same bytes
(a separate fresh run would repeat it at the cost of a whole sweep).

The subprocesses share a persistent XLA compilation cache (under
``.pytest_cache``), so only the first run of a session compiles; a cached
executable is the same program, so it does not change any result.
"""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).with_name("_tiny_sweep.py")
TIMEOUT = 300


@pytest.fixture(scope="module")
def env(request, tmp_path_factory):
    if getattr(request.config, "cache", None) is not None:
        cache = request.config.cache.mkdir("uswim-xla-cache")
    else:  # -p no:cacheprovider
        cache = tmp_path_factory.mktemp("uswim-xla-cache")
    e = dict(os.environ)
    e.update(
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    e.pop("USWIM_TEST_PAUSE", None)
    return e


def _run(run_dir: Path, env: dict) -> str:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("done")
    return proc.stdout


def _units(run_dir: Path) -> list[Path]:
    """Finished units in a run folder: step chunks and whole curves."""
    return sorted((run_dir / "chunks").glob("*__steps*.npz")) + sorted(
        (run_dir / "curves").glob("*.npz")
    )


def _start_and_kill(run_dir: Path, env: dict, after_units: int) -> list[Path]:
    """Starts the sweep, SIGKILLs it once ``after_units`` more units exist,
    and returns the units on disk after the kill."""
    before = len(_units(run_dir))
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(run_dir)],
        env={**env, "USWIM_TEST_PAUSE": "1.0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(_units(run_dir)) < before + after_units:
            assert proc.poll() is None, "the sweep ended before it was killed"
            assert time.monotonic() < deadline, "no unit of work was written"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "curves.csv").exists(), "killed before the report"
    units = _units(run_dir)
    for path in units:  # every unit on disk is whole
        with zipfile.ZipFile(path) as z:
            assert z.testzip() is None
        with np.load(path) as npz:
            assert "accuracies" in npz
    return units


_REFERENCE: dict[str, bytes] = {}


def _reference_csv(tmp_path_factory, env) -> bytes:
    """curves.csv of an uninterrupted run (made once per session, on first
    use, so that the killed run is the one that compiles)."""
    if "csv" not in _REFERENCE:
        run_dir = tmp_path_factory.mktemp("uninterrupted")
        _run(run_dir, env)
        # A curve's finished unit is curves/*.npz; its step chunks are gone.
        assert len(list((run_dir / "curves").glob("*.npz"))) == 2
        assert not list((run_dir / "chunks").glob("*__steps*.npz"))
        _REFERENCE["csv"] = (run_dir / "curves.csv").read_bytes()
        _REFERENCE["dir"] = str(run_dir)
    return _REFERENCE["csv"]


def test_sigkill_after_first_unit_then_resume_is_identical(
    tmp_path, tmp_path_factory, env
):
    run_dir = tmp_path / "killed"
    units = _start_and_kill(run_dir, env, after_units=1)
    assert len(units) >= 1
    out = _run(run_dir, env)
    assert "resuming:" in out  # the finished chunk was reused, not recomputed
    assert (run_dir / "curves.csv").read_bytes() == _reference_csv(
        tmp_path_factory, env
    )


def test_a_rerun_of_a_finished_run_recomputes_nothing(tmp_path_factory, env):
    reference = _reference_csv(tmp_path_factory, env)
    done = Path(_REFERENCE["dir"])
    out = _run(done, env)  # all done: recomputes nothing
    assert "resuming: 2 of 2 curves" in out
    assert (done / "curves.csv").read_bytes() == reference
    # The manifest says what reproduces the run.
    m = json.loads((done / "manifest.json").read_text())
    for k in ("uswim_jax", "jax", "jaxlib", "numpy"):
        assert m["packages"][k], k
    assert m["backend"] == "cpu"
    assert isinstance(m["jax_threefry_partitionable"], bool)
    assert m["seed"] == 0
    assert "git_commit" in m  # None outside a git checkout
    assert (m["dataset"], m["dataset_source"], m["num_test"]) == (
        "synthetic",
        "generated",
        32,
    )
    assert len(m["config_hash"]) == 12
    # How the convolutions ran: the CPU's rule, recorded per layer shape.
    assert m["conv_path_policy"] == "rule"
    paths = json.loads((done / "run_info.json").read_text())["conv_paths"]
    assert paths and all(r["policy"] == "rule" for r in paths)
    assert {r["path"] for r in paths} <= {"im2col", "per_trial"}


@pytest.mark.slow
def test_repeated_sigkill_then_resume_is_identical(tmp_path, tmp_path_factory, env):
    """Killed after each of the first four units, then finished."""
    run_dir = tmp_path / "killed-often"
    for _ in range(4):
        _start_and_kill(run_dir, env, after_units=1)
    _run(run_dir, env)
    assert (run_dir / "curves.csv").read_bytes() == _reference_csv(
        tmp_path_factory, env
    )


def _synthetic_mnist_cache(root: Path) -> None:
    """A data cache holding generated 'mnist' splits (what ``data.load`` reads
    first), so the CLI runs without any real dataset."""
    sys.path.insert(0, str(SCRIPT.parent))
    from _tiny_sweep import fake_digits

    from uswim_jax.data._load import _write_cache, cache_path

    for split, n, seed in (("train", 64, 0), ("test", 32, 1)):
        ds = fake_digits(n, seed)
        _write_cache(
            cache_path("mnist", split, root), ds.images, ds.labels, "synthetic", "gen"
        )


def test_cli_sigint_is_one_line_exit_130_and_keeps_the_folder(tmp_path, env):
    cache = tmp_path / "cache"
    _synthetic_mnist_cache(cache)
    run_dir = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "uswim_jax.cli",
        "sweep",
        "--run-dir",
        str(run_dir),
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--sigmas",
        "0.3",
        "--s-values",
        "",
        "--fractions",
        "0.1,0.3",
        "--trials",
        "2",
        "--methods",
        "random",
        "--test-subset",
        "32",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        argv,
        env={**env, "USWIM_DATA_DIR": str(cache)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (run_dir / "manifest.json").exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], err[-2000:]
    assert (run_dir / "config.json").is_file()  # the folder is kept to resume
