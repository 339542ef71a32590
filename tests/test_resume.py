"""The run-folder store: step chunks join to the whole curve, saved chunks are
reused instead of recomputed, the finished curve replaces its chunks, corrupt
files are one clear error, and a run folder refuses other source code."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _toy import mlp_apply, toy_problem

import uswim_jax as u
from uswim_jax.experiment import CorruptFileError, RunStore
from uswim_jax.experiment.store import join_steps, step_slices
from uswim_jax.sweep import sweep

SETTING = "uniform sigma=0.5"


@pytest.fixture(scope="module")
def problem():
    params, x, y = toy_problem(n=64)
    device = u.UniformVariation(0.5, 0.05)
    order = u.global_order(u.magnitude_score(params))
    counts = jnp.asarray(u.counts_for_fractions([0.0, 0.1, 0.2, 0.5, 0.7, 1.0], 96))
    return params, x, y, device, order, counts


@functools.partial(jax.jit, static_argnames=("chunk_size", "eval_batch_size"))
def _sweep(params, x, y, device, order, counts, chunk_size, eval_batch_size):
    return sweep(
        jax.random.key(3),
        mlp_apply,
        params,
        x,
        y,
        device,
        order,
        counts,
        8,
        chunk_size=chunk_size,
        eval_batch_size=eval_batch_size,
        reference=jnp.zeros(8, jnp.float32),
        baseline=jnp.ones(8, jnp.float32),
    )


def _chunk(problem, counts, chunk_size=None, eval_batch_size=None):
    params, x, y, device, order, _ = problem
    return _sweep(params, x, y, device, order, counts, chunk_size, eval_batch_size)


@pytest.mark.parametrize("per", [2, 4])
def test_chunks_join_to_the_whole_curve(problem, per):
    """A step's result does not depend on the other steps of its call (every
    step uses the same trial keys)."""
    counts = problem[-1]
    whole = jax.device_get(_chunk(problem, counts))
    slices = step_slices(len(counts), per)
    assert [s.start for s in slices] == list(range(0, len(counts), per))
    parts = [jax.device_get(_chunk(problem, counts[s])) for s in slices]
    joined = join_steps(parts)
    for name in whole._fields:
        np.testing.assert_array_equal(
            np.asarray(getattr(joined, name)), np.asarray(getattr(whole, name)), name
        )


def test_saved_chunks_are_reused_and_removed_when_the_curve_is_done(problem, tmp_path):
    counts = problem[-1]
    store = RunStore(tmp_path)
    slices = step_slices(len(counts), 2)
    # A previous (killed) invocation finished chunk 1 only.
    store.save_chunk(SETTING, "swim", slices[1], _chunk(problem, counts[slices[1]]))
    assert store.chunks_left(SETTING, "swim", slices) == 2
    calls = []

    def compute(sl):
        calls.append(sl.start)
        return _chunk(problem, counts[sl])

    curve = store.curve(SETTING, "swim", slices, compute)
    assert calls == [slices[0].start, slices[2].start]  # chunk 1 was not redone
    whole = jax.device_get(_chunk(problem, counts))
    np.testing.assert_array_equal(curve.accuracies, whole.accuracies)
    saved = store.load_curve(SETTING, "swim")
    np.testing.assert_array_equal(saved.accuracies, whole.accuracies)
    assert not list((tmp_path / "chunks").glob("*__steps*.npz"))
    assert store.chunks_left(SETTING, "swim", slices) == 0
    # A finished curve is loaded, not recomputed.
    assert store.curve(SETTING, "swim", slices, None).accuracies.shape == (6, 8)


def test_chunks_are_named_by_step_range(problem, tmp_path):
    """A chunk file holds a step range, so chunks saved with another
    ``steps_per_chunk`` are recomputed, never mistaken for other steps; the
    curve is the same either way, and every stale chunk goes with it."""
    counts = problem[-1]
    store = RunStore(tmp_path)
    old = step_slices(len(counts), 4)  # killed with steps_per_chunk=4
    store.save_chunk(SETTING, "swim", old[0], _chunk(problem, counts[old[0]]))
    new = step_slices(len(counts), 3)
    assert store.chunks_left(SETTING, "swim", new) == 2
    curve = store.curve(SETTING, "swim", new, lambda sl: _chunk(problem, counts[sl]))
    whole = jax.device_get(_chunk(problem, counts))
    np.testing.assert_array_equal(curve.accuracies, whole.accuracies)
    assert not list((tmp_path / "chunks").glob("*__steps*.npz"))


def test_execution_knobs_do_not_change_the_accuracies(problem):
    """Trials per chunk and images per batch change how the work is batched,
    not the noise draws; on this problem the accuracies are identical (they
    could only differ where float32 op order flips a prediction)."""
    counts = problem[-1]
    whole = jax.device_get(_chunk(problem, counts))
    for knobs in ({"chunk_size": 3}, {"eval_batch_size": 16}, {"chunk_size": 8}):
        other = jax.device_get(_chunk(problem, counts, **knobs))
        np.testing.assert_array_equal(other.accuracies, whole.accuracies, str(knobs))


@pytest.mark.parametrize(
    "content", [b"", b"garbage", b"PK\x03\x04 truncated zip", b"\x93NUMPY"]
)
def test_a_corrupt_file_is_one_clear_error(problem, tmp_path, content):
    store = RunStore(tmp_path)
    steps = slice(0, 3)
    paths = {
        "curve": store.chunk_path(SETTING, "swim", steps),
        "end points": store.ends_path(SETTING),
        "sensitivities": tmp_path / "sensitivities.npz",
        "checkpoint": tmp_path / "checkpoint.ckpt",
        "JSON": tmp_path / "run_info.json",
    }
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    params = problem[0]
    loads = {
        "curve": lambda: store.curve(SETTING, "swim", [steps, slice(3, 6)], None),
        "end points": lambda: store.load_ends(SETTING),
        "sensitivities": lambda: store.load_trees("sensitivities", params, ["obd"]),
        "checkpoint": lambda: store.load_checkpoint(params),
        "JSON": lambda: store.read_json("run_info.json"),
    }
    for what, load in loads.items():
        with pytest.raises(
            CorruptFileError, match=f"corrupt {what} file .*{paths[what].name}.*delete"
        ):
            load()


def test_saved_artefacts_load_back(problem, tmp_path):
    params = problem[0]
    store = RunStore(tmp_path)
    assert store.load_ends(SETTING) is None
    assert store.load_trees("sensitivities", params, ["obd"]) is None
    assert store.load_checkpoint(params) is None
    store.save_ends(SETTING, np.arange(3.0), np.zeros(3))
    ref, base = store.load_ends(SETTING)
    np.testing.assert_array_equal(ref, np.arange(3.0))
    store.save_trees("sensitivities", {"obd": params})
    got = store.load_trees("sensitivities", params, ["obd"])
    for a, b in zip(jax.tree.leaves(got["obd"]), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    # A missing estimator means "not computed yet", not corrupt.
    assert store.load_trees("sensitivities", params, ["obd", "ggn"]) is None
    store.save_checkpoint(params)
    back = store.load_checkpoint(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_open_refuses_another_config_and_resumes_changed_execution(tmp_path):
    store = RunStore(tmp_path / "run")
    logged = []
    store.open({"a": 1}, execution={"chunk_size": 5}, log=logged.append)
    assert store.read_json("config.json")["execution"] == {"chunk_size": 5}
    store.open({"a": 1}, execution={"chunk_size": 10}, log=logged.append)
    assert store.read_json("config.json")["execution"] == {"chunk_size": 10}
    assert len(logged) == 1 and "chunk_size 5 -> 10" in logged[0]
    with pytest.raises(ValueError, match="different config.*changed: a"):
        store.open({"a": 2})


def test_old_run_folder_with_conv_impl_loads_and_resumes(tmp_path):
    """A run folder written when the config had ``conv_impl`` (an execution
    setting, now removed): ``load_config`` ignores it with a DeprecationWarning
    and the same run opens again (the change is logged, nothing refused)."""
    from _tiny_sweep import CONFIG

    from uswim_jax import experiment

    store = RunStore(tmp_path)
    identity = {"experiment": CONFIG.to_json()}
    store.open(identity, execution={**CONFIG.execution_json(), "conv_impl": "xla"})
    with pytest.warns(DeprecationWarning, match="conv_impl='xla'.*ignored"):
        assert experiment.load_config(tmp_path) == CONFIG
    logged = []
    store.open(identity, execution=CONFIG.execution_json(), log=logged.append)
    assert len(logged) == 1 and "conv_impl 'xla' -> None" in logged[0], logged
    assert "conv_impl" not in store.read_json("config.json")["execution"]


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


def _head(repo) -> str:
    import subprocess

    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_git_commit_in_a_clean_and_a_dirty_checkout(tmp_path):
    import shutil
    import subprocess

    from uswim_jax.experiment.store import git_commit

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f.txt").write_text("one\n")
    subprocess.run([*git, "-C", str(tmp_path), "add", "f.txt"], check=True)
    subprocess.run([*git, "-C", str(tmp_path), "commit", "-qm", "x"], check=True)
    head = _head(tmp_path)
    assert git_commit(tmp_path) == head
    (tmp_path / "f.txt").write_text("two\n")
    assert git_commit(tmp_path) == head + "+dirty"
    # A report copied over a committed one under results/ is an output of the
    # run, not a change of the code: the checkout stays clean.
    subprocess.run(["git", "-C", str(tmp_path), "checkout", "-q", "f.txt"], check=True)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.csv").write_text("a\n")
    subprocess.run([*git, "-C", str(tmp_path), "add", "results/r.csv"], check=True)
    subprocess.run([*git, "-C", str(tmp_path), "commit", "-qm", "r"], check=True)
    head = _head(tmp_path)
    (tmp_path / "results" / "r.csv").write_text("b\n")
    assert git_commit(tmp_path / "results") == head
    assert git_commit(tmp_path) == head
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
    from uswim_jax.experiment import ExperimentConfig, RunStore, manifest, source_hash
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
        RunStore(tmp_path).open({"experiment": config.to_json()})
        m = manifest(dataset="synthetic", dataset_source="generated")
        m["source_hash"] = old
        (tmp_path / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(ValueError, match="source_hash.*Start afresh"):
            experiment.run(config, tmp_path, train_data=data, test_data=data)
        assert not (tmp_path / "train").exists()


@pytest.mark.slow
def test_a_changed_execution_knob_resumes_the_same_run(tmp_path):
    """Chunk sizes and the image batch are not part of the run's identity: a
    rerun with other values resumes the folder (nothing finished is
    recomputed), and a curve recomputed under them has the same accuracies on
    this fixed set (they change float32 op order only)."""
    import dataclasses

    from _tiny_sweep import CONFIG, fake_digits

    from uswim_jax import experiment

    data = {"train_data": fake_digits(64, 0), "test_data": fake_digits(32, 1)}
    first = experiment.run(CONFIG, tmp_path, progress=False, log=print, **data)
    other = dataclasses.replace(
        CONFIG, chunk_size=1, eval_batch_size=8, steps_per_chunk=2
    )
    logged = []
    again = experiment.run(other, tmp_path, progress=False, log=logged.append, **data)
    assert any("resuming: 2 of 2 curves" in line for line in logged), logged
    assert any("chunk_size None -> 1" in line for line in logged), logged
    assert experiment.load_config(tmp_path) == other
    # One curve recomputed under the other knobs, the end points with it.
    store = RunStore(tmp_path)
    store.curve_path("uniform sigma=0.3", "swim").unlink()
    store.ends_path("uniform sigma=0.3").unlink()
    redone = experiment.run(other, tmp_path, progress=False, log=print, **data)
    for k in first["curves"]:
        for a, b in ((first, again), (first, redone)):
            np.testing.assert_array_equal(
                a["curves"][k].accuracies, b["curves"][k].accuracies, str(k)
            )
            np.testing.assert_array_equal(
                a["curves"][k].reference, b["curves"][k].reference, str(k)
            )


def test_run_info_conv_paths_keep_shapes_this_invocation_did_not_trace():
    from uswim_jax.experiment.pipeline import _merged_conv_paths

    old = [
        {"conv": "a", "path": "im2col"},
        {"conv": "b", "path": "im2col"},
        {"model": "m", "policy": "measure", "path": "rule"},
    ]
    new = [{"conv": "b", "path": "per_trial"}]
    merged = _merged_conv_paths(old, new)
    assert merged == [old[0], old[2], new[0]]  # b as it ran now; a, m kept
    assert _merged_conv_paths(old, []) == old  # a resume that traced nothing
    assert _merged_conv_paths([], new) == new


def test_the_manifest_names_the_host_cpu_and_another_cpu_resumes(tmp_path):
    """``manifest.json`` records the CPU's model and vector instruction sets
    (``/proc/cpuinfo``'s x86 ``flags`` or Arm ``Features``); a folder started
    on another CPU resumes, as under other convolution paths (only the
    rounding changes), while another source hash is still refused."""
    import json

    from uswim_jax._io import VECTOR_ISA, host_cpu, parse_cpuinfo
    from uswim_jax.experiment import RunStore, manifest

    x86 = (
        "processor\t: 0\nmodel name\t: AMD EPYC 9B14\n"
        "flags\t\t: fpu sse4_2 avx2 avx fma avx512f avx512_bf16 popcnt\n\n"
        "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n"
    )
    got = parse_cpuinfo(x86)
    assert got == {
        "model": "AMD EPYC 9B14",
        "vector_isa": ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16"],
    }
    arm = "processor\t: 0\nFeatures\t: fp asimd sve aes\nCPU part\t: 0xd40\n"
    assert parse_cpuinfo(arm) == {"model": "0xd40", "vector_isa": ["asimd", "sve"]}
    assert parse_cpuinfo("") == {"model": None, "vector_isa": []}
    cpu = host_cpu()
    assert set(cpu) == {"model", "vector_isa"}
    assert cpu["vector_isa"] is None or set(cpu["vector_isa"]) <= set(VECTOR_ISA)

    m = manifest(dataset="synthetic", dataset_source="generated")
    assert m["cpu"] == cpu
    old = {**m, "cpu": {"model": "another", "vector_isa": ["avx512f"]}}
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    RunStore(tmp_path).check({"a": 1}, m)  # resumes
    (tmp_path / "manifest.json").write_text(json.dumps({**old, "source_hash": "0"}))
    with pytest.raises(ValueError, match="source_hash"):
        RunStore(tmp_path).check({"a": 1}, m)
