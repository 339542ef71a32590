"""Step-chunk units of a sweep: chunks join to the whole curve, saved chunks are
reused instead of recomputed, and the finished curve replaces its chunks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _toy import mlp_apply, toy_problem

import uswim_jax as u
from uswim_jax.experiment import Setting, units


@pytest.fixture(scope="module")
def problem():
    params, x, y = toy_problem(n=64)
    device = u.UniformVariation(0.5, 0.05)
    order = u.global_order(u.magnitude_score(params))
    counts = jnp.asarray(u.counts_for_fractions([0.0, 0.1, 0.2, 0.5, 0.7, 1.0], 96))
    return params, x, y, device, order, counts


def _chunk(problem, counts):
    params, x, y, device, order, _ = problem
    ends = (jnp.zeros(8, jnp.float32), jnp.ones(8, jnp.float32))
    return units._sweep_jit(
        jax.random.key(3),
        params,
        x,
        y,
        device,
        order,
        counts,
        *ends,
        apply_fn=mlp_apply,
        num_trials=8,
        chunk_size=None,
        eval_batch_size=None,
    )


@pytest.mark.parametrize("per", [2, 4])
def test_chunks_join_to_the_whole_curve(problem, per):
    """A step's result does not depend on the other steps of its call (every
    step uses the same trial keys)."""
    counts = problem[-1]
    whole = jax.device_get(_chunk(problem, counts))
    slices = units._chunk_slices(len(counts), per)
    assert [s.start for s in slices] == list(range(0, len(counts), per))
    parts = [jax.device_get(_chunk(problem, counts[s])) for s in slices]
    joined = units._join_chunks(parts)
    for name in whole._fields:
        np.testing.assert_array_equal(
            np.asarray(getattr(joined, name)), np.asarray(getattr(whole, name)), name
        )


def test_saved_chunks_are_reused_and_removed_when_the_curve_is_done(problem, tmp_path):
    counts = problem[-1]
    setting = Setting(0.5)
    slices = units._chunk_slices(len(counts), 2)
    # A previous (killed) invocation finished chunk 1 only.
    done = jax.device_get(_chunk(problem, counts[slices[1]]))
    units._save_curve(units._chunk_file(tmp_path, setting, "swim", 1), done)
    calls = []

    def sweep_chunk(sl):
        calls.append(sl.start)
        return _chunk(problem, counts[sl])

    curve = units._sweep_in_chunks(tmp_path, setting, "swim", slices, sweep_chunk)
    assert calls == [slices[0].start, slices[2].start]  # chunk 1 was not redone
    whole = jax.device_get(_chunk(problem, counts))
    np.testing.assert_array_equal(curve.accuracies, whole.accuracies)
    saved = units._load_curve(units._curve_file(tmp_path, setting, "swim"))
    np.testing.assert_array_equal(saved.accuracies, whole.accuracies)
    assert not list((tmp_path / "chunks").glob("*__steps*.npz"))


def test_corrupt_chunk_is_reported(problem, tmp_path):
    setting = Setting(0.5)
    slices = units._chunk_slices(6, 3)
    units._chunk_file(tmp_path, setting, "swim", 0).parent.mkdir(parents=True)
    units._chunk_file(tmp_path, setting, "swim", 0).write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="corrupt curve file .*delete it"):
        units._sweep_in_chunks(tmp_path, setting, "swim", slices, lambda sl: None)


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path):
    import subprocess
    import sys

    from uswim_jax._io import remove_stale_temp_files

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    (tmp_path / "curves").mkdir()
    stale = tmp_path / "curves" / f".a.npz.tmp-{pid}"
    stale.write_bytes(b"half")
    keep = tmp_path / "curves" / "a.npz"
    keep.write_bytes(b"whole")
    assert remove_stale_temp_files(tmp_path) == 1
    assert not stale.exists() and keep.exists()


def test_git_commit_in_a_clean_and_a_dirty_checkout(tmp_path):
    import shutil
    import subprocess

    from uswim_jax.report import git_commit

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f.txt").write_text("one\n")
    subprocess.run([*git, "-C", str(tmp_path), "add", "f.txt"], check=True)
    subprocess.run([*git, "-C", str(tmp_path), "commit", "-qm", "x"], check=True)
    head = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "f.txt").write_text("two\n")
    assert git_commit(tmp_path) == head + "+dirty"
    assert git_commit(tmp_path.parent / "not-a-repo-at-all") is None


def test_an_interrupt_swallowed_by_a_destructor_is_delivered_again():
    """Python swallows a KeyboardInterrupt raised inside ``__del__`` (or a gc
    callback, where JAX has one); the CLI's guard delivers it again."""
    import os
    import signal
    import threading
    import time

    from uswim_jax._interrupt import reliable_interrupts

    class SlowToDelete:
        def __del__(self):
            time.sleep(0.5)  # the first SIGINT lands here and is swallowed

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with reliable_interrupts(retry_s=0.3):
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
            obj = SlowToDelete()
            del obj
            time.sleep(10)  # the second one ends this
    assert time.monotonic() - start < 5
    assert signal.getsignal(signal.SIGINT) is not None


def test_a_run_folder_made_by_other_source_code_is_refused(tmp_path):
    """The manifest records the hash of the package's source; a run folder
    whose manifest holds another hash (or none) is not resumed."""
    import json

    from uswim_jax import experiment
    from uswim_jax.data import Dataset
    from uswim_jax.experiment import ExperimentConfig
    from uswim_jax.report import manifest, prepare_run_dir, source_hash
    from uswim_jax.train import TrainConfig

    rng = np.random.default_rng(0)
    data = Dataset(
        rng.random((16, 28, 28, 1), dtype=np.float32),
        rng.integers(0, 10, 16).astype(np.int32),
        "synthetic",
        "generated",
        "train",
        10,
    )
    config = ExperimentConfig(train=TrainConfig(epochs=1, batch_size=8))
    h = source_hash()
    assert len(h) == 12 and int(h, 16) >= 0 and source_hash() == h
    assert manifest()["source_hash"] == h
    for old in ("0" * 12, None):
        prepare_run_dir(tmp_path, {"experiment": config.to_json()})
        m = manifest(dataset="synthetic", dataset_source="generated")
        m["source_hash"] = old
        (tmp_path / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(ValueError, match="source_hash.*Start afresh"):
            experiment.run(config, tmp_path, train_data=data, test_data=data)
        assert not (tmp_path / "train").exists()
