"""Monte Carlo trials over two local processes with JAX's distributed runtime
(``uswim_jax._distributed``): the per-trial accuracies of ``evaluate`` and
``sweep`` are the same bits as one process with one device.

The two-process tests run this file as a script (``python
tests/test_distributed.py worker PROCESS_ID PORT OUT_DIR``), each process with
two forced CPU devices, gloo collectives and the coordinator on 127.0.0.1.
"""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import uswim_jax as u  # noqa: E402
from uswim_jax import _distributed  # noqa: E402
from uswim_jax._io import atomic_write_text  # noqa: E402
from uswim_jax.montecarlo import evaluate  # noqa: E402
from uswim_jax.sweep import counts_for_fractions, sweep  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
#: Not a multiple of the 4 global devices, so the padding is exercised.
TRIALS = 7
FRACTIONS = (0.0, 0.05, 0.3)
TIMEOUT_S = 150
#: The tiny pipeline (training, curvature, sweeps) in three processes at once
#: takes 4 min on the 2-core machine when it is busy, longer when busier.
PIPELINE_TIMEOUT_S = 1200


def _mlp(n: int = 32, d: int = 8, hidden: int = 16, classes: int = 4):
    """The toy MLP of ``tests/_toy.py`` with NumPy weights and data (labels
    from its clean logits), so building it runs no JAX op."""
    from _toy import mlp_apply

    rng = np.random.default_rng(0)
    params = {
        "l1": {
            "kernel": (rng.standard_normal((d, hidden)) / np.sqrt(d)).astype(
                np.float32
            ),
            "bias": np.zeros(hidden, np.float32),
        },
        "l2": {
            "kernel": (rng.standard_normal((hidden, classes)) / np.sqrt(hidden)).astype(
                np.float32
            ),
            "bias": np.zeros(classes, np.float32),
        },
    }
    x = rng.standard_normal((n, d)).astype(np.float32)
    h = np.tanh(x @ params["l1"]["kernel"])
    y = np.argmax(h @ params["l2"]["kernel"], -1).astype(np.int32)
    return mlp_apply, params, x, y


def _problem(kind: str):
    """``"mlp"``: the toy MLP (plain lax, compiles in seconds), with a random
    verification order; a kind of ``tests/_user_models.py``: its small CNN,
    with the magnitude order."""
    dev = u.UniformVariation(0.5, 0.05)
    if kind == "mlp":
        apply_fn, params, x, y = _mlp()
        n = u.crossbar_size(params, dev.crossbar)
        order = np.random.default_rng(1).permutation(n).astype(np.int32)
    else:
        import _user_models as um

        apply_fn, params, _, _ = um.build(kind, jax.random.key(0))
        x, y = um.make_data(apply_fn, params, jax.random.key(1), n=16)
        order = u.global_order(u.magnitude_score(params))
        n = u.crossbar_size(params, dev.crossbar)
    counts = counts_for_fractions(FRACTIONS, n)
    return apply_fn, params, x, y, dev, order, counts


def _results(kind: str, shard, mesh_shard, eager: bool) -> dict[str, np.ndarray]:
    """Per-trial accuracies of a jitted sweep (its curve, reference and
    baseline, as the drivers run it) with ``shard`` and of an evaluate with
    ``mesh_shard``: in the same jitted program, or ``eager``-ly (slower: op by
    op around the trials)."""
    apply_fn, params, x, y, dev, order, counts = _problem(kind)
    key = jax.random.key(5)

    def ev(k, p):
        return evaluate(
            k, apply_fn, p, x, y, dev, None, TRIALS, chunk_size=None,
            shard=mesh_shard,
        )  # fmt: skip

    @jax.jit
    def jitted(k, p):
        curve = sweep(
            k, apply_fn, p, x, y, dev, order, counts, TRIALS, chunk_size=2,
            shard=shard,
        )  # fmt: skip
        return curve, (None if eager else ev(k, p))

    curve, stats = jitted(key, params)
    if eager:
        stats = ev(key, params)
    out = {
        "sweep": np.asarray(curve.accuracies),
        "sweep_reference": np.asarray(curve.reference),
        "sweep_baseline": np.asarray(curve.baseline),
        "evaluate": np.asarray(stats.accuracies),
        "evaluate_mean": np.asarray(stats.mean),
    }
    if kind == "mlp":  # the generic path (a model without a closed form)
        pulse = u.PulseModel(sigma=1.5, max_pulses=8)

        @jax.jit
        def pulsed(k, p):
            return sweep(
                k, apply_fn, p, x, y, pulse, order, counts, TRIALS, chunk_size=2,
                shard=shard,
            )  # fmt: skip

        c = pulsed(key, params)
        out["pulse_sweep"] = np.asarray(c.accuracies)
        out["pulse_cycles"] = np.asarray(c.cycles)
    return out


def _tiny_cnn():
    """One 3x3 convolution and a dense head on 8x8x1 inputs (NumPy), so the
    conv-path policies compile in moments."""
    from jax import lax

    def apply_fn(p, x):
        h = lax.conv_general_dilated(
            x,
            p["conv"]["kernel"],
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return jax.numpy.tanh(h).mean(axis=(1, 2)) @ p["head"]["kernel"]

    rng = np.random.default_rng(2)
    params = {
        "conv": {
            "kernel": (0.5 * rng.standard_normal((3, 3, 1, 4))).astype(np.float32)
        },
        "head": {"kernel": rng.standard_normal((4, 3)).astype(np.float32)},
    }
    x = rng.standard_normal((16, 8, 8, 1)).astype(np.float32)
    y = np.argmax(np.asarray(apply_fn(params, x)), -1).astype(np.int32)
    return apply_fn, params, x, y


def _measured_paths(policy: str, process_id: int):
    """Per-trial accuracies and the conv path log of ``evaluate`` on
    :func:`_tiny_cnn` under ``policy`` (``"measure"`` or ``"layers"``), the
    trials split over every process. Process 1's timings are made up so that
    its own choice is the last candidate, which process 0's timing (real) does
    not pick: every process must still run process 0's choice."""
    from uswim_jax import _trialbatch as tbm

    if process_id == 1:

        def later_is_faster(calls):
            return {name: 1.0 / (i + 1) for i, name in enumerate(calls)}

        tbm._time_calls = later_is_faster
    apply_fn, params, x, y = _tiny_cnn()
    u.conv_path_log(clear=True)
    with u.conv_paths(policy):
        acc = evaluate(
            jax.random.key(3), apply_fn, params, x, y, u.UniformVariation(0.5, 0.05),
            None, TRIALS, chunk_size=None, shard=True,
        ).accuracies  # fmt: skip
    return np.asarray(acc), u.conv_path_log()


def _measured_sizes(process_id: int):
    """Per-trial accuracies and the size log of ``evaluate`` with
    ``chunk_size="measure"`` on :func:`_tiny_cnn`, the trials split over every
    process; process 1's timings are made up (the last candidate fastest), as
    in :func:`_measured_paths`."""
    from uswim_jax import _chunking

    if process_id == 1:

        def later_is_faster(programs):  # per trial too: 1000x each time
            return {label: 1e-3 ** (i + 1) for i, label in enumerate(programs)}

        _chunking._time_calls = later_is_faster
    apply_fn, params, x, y = _tiny_cnn()
    u.measured_sizes_log(clear=True)
    acc = evaluate(
        jax.random.key(3), apply_fn, params, x, y, u.UniformVariation(0.5, 0.05),
        None, TRIALS, chunk_size="measure", shard=True,
    ).accuracies  # fmt: skip
    return np.asarray(acc), u.measured_sizes_log()


def _worker(kind: str, process_id: int, port: int, out_dir: str) -> None:
    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    _distributed.initialize(f"127.0.0.1:{port}", 2, process_id)
    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    # The sweep on the global mesh (shard=True), the evaluate on a user mesh
    # with two axes (trials split over both, gathered in trial order).
    grid = np.asarray(_distributed.global_trial_mesh().devices).reshape(2, 2)
    mesh = jax.sharding.Mesh(grid, ("hosts", "local"))
    out = _results(kind, True, mesh, eager=kind != "mlp")
    out["writer"] = np.asarray(_distributed.is_writer())
    out["from_writer"] = np.asarray(_distributed.from_writer(10 + process_id))
    mine = np.asarray([-0.0, 1.5] if process_id == 0 else [5.0, 5.0], np.float32)
    out["from_writer_array"] = _distributed.from_writer({"a": mine})["a"]
    # inside a trace too (the measured conv path is chosen at trace time)
    out["from_writer_traced"] = jax.jit(
        lambda x: x + _distributed.from_writer(10 + process_id)
    )(np.int32(0))
    out["every_process"] = np.asarray(_distributed.every_process(1 + 2 * process_id))
    try:  # values of other shapes: refused on every process, not a hang
        _distributed.every_process({"a": np.zeros(1 + process_id, np.float32)})
        out["mismatch_refused"] = np.asarray(False)
    except ValueError as e:
        out["mismatch_refused"] = np.asarray("same structure" in str(e))
    if kind == "mlp":  # measured conv paths: every process runs process 0's
        for policy in ("measure", "layers"):
            acc, log = _measured_paths(policy, process_id)
            out[f"{policy}_acc"] = acc
            out[f"{policy}_log"] = np.asarray(json.dumps(log))
        acc, log = _measured_sizes(process_id)
        out["sizes_acc"] = acc
        out["sizes_log"] = np.asarray(json.dumps(log))
    # Only process 0 writes; a folder the others cannot see is refused on all.
    atomic_write_text(os.path.join(out_dir, "written.txt"), str(process_id))
    _distributed.check_shared_folder(out_dir)
    try:
        _distributed.check_shared_folder(os.path.join(out_dir, f"own{process_id}"))
        out["private_refused"] = np.asarray(False)
    except ValueError as e:
        out["private_refused"] = np.asarray("[1]" in str(e) and "not shared" in str(e))
    _distributed.barrier("done")
    np.savez(os.path.join(out_dir, f"p{process_id}.npz"), **out)
    print("done", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(mode: str, kind: str, out_dir, env=None) -> list[subprocess.Popen]:
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        **(env or {}),
    }
    port = _free_port()
    return [
        subprocess.Popen(
            [sys.executable, __file__, mode, kind, str(i), str(port), str(out_dir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]


def _wait(procs, timeout):
    outs = []
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            outs.append(p.communicate(timeout=max(1, deadline - time.monotonic()))[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], outs


def _reap(p: subprocess.Popen) -> None:
    """Kills ``p`` if still running and closes its pipe."""
    if p.poll() is None:
        p.kill()
    if not p.stdout.closed:
        p.communicate()


def _check_two_processes(kind: str, out_dir) -> None:
    procs = _start("worker", kind, out_dir)
    ref = _results(kind, False, False, eager=False)  # one process, meanwhile
    rcs, outs = _wait(procs, TIMEOUT_S)
    assert rcs == [0, 0], "\n---\n".join(o[-3000:] for o in outs)
    with np.load(out_dir / "p0.npz") as z:  # every process: process 0's trials
        measured = {k: z[k] for k in z.files if k.endswith("_acc")}
    assert ref["sweep"].shape == (len(FRACTIONS), TRIALS)
    for i in range(2):
        with np.load(out_dir / f"p{i}.npz") as z:
            got = dict(z)
        for name, want in ref.items():
            np.testing.assert_array_equal(got[name], want, err_msg=name)
        assert bool(got["writer"]) == (i == 0)
        assert int(got["from_writer"]) == 10
        fw = got["from_writer_array"]  # process 0's bits, -0.0 included
        assert fw.tolist() == [0.0, 1.5] and np.signbit(fw[0])
        assert int(got["from_writer_traced"]) == 10
        assert got["every_process"].tolist() == [1, 3]
        assert bool(got["mismatch_refused"])
        assert bool(got["private_refused"])
        if kind == "mlp":
            for policy in ("measure", "layers", "sizes"):
                np.testing.assert_array_equal(
                    got[f"{policy}_acc"], measured[f"{policy}_acc"], err_msg=policy
                )
                measured.setdefault(policy, []).append(
                    json.loads(str(got[f"{policy}_log"]))
                )
    if kind == "mlp":
        _check_agreed_paths(measured)
    assert (out_dir / "written.txt").read_text() == "0"
    assert not (out_dir / ".uswim-shared-check").exists()
    # The trials are not all alike (the comparison has something to compare).
    assert len(np.unique(ref["evaluate"])) > 1
    assert len(np.unique(ref["sweep"][0])) > 1
    if kind == "mlp":
        assert len(np.unique(ref["pulse_sweep"][0])) > 1


def _check_agreed_paths(logs: dict) -> None:
    """Under ``"measure"`` and ``"layers"`` both processes ran process 0's
    choice, and process 1's log names its own (made-up) one."""
    from uswim_jax import _trialbatch as tbm

    (m0,), (m1,) = ([r for r in log if "model" in r] for log in logs["measure"])
    assert m0["path"] == m1["path"] and m0["chosen_by"] == m1["chosen_by"]
    assert "own_choice" not in m0
    last = list(m1["ms"])[-1]  # process 1 "timed" the last candidate fastest
    assert m1.get("own_choice", m1["path"]) == last
    (l0,), (l1,) = ([r for r in log if "conv" in r] for log in logs["layers"])
    assert l0["path"] == l1["path"] and l0["chosen_by"] == "process 0"
    assert l1.get("own_choice", l1["path"]) == list(l1["ms"])[-1]
    assert set(l1["ms"]) <= set(tbm.CONV_PATHS)
    # chunk_size="measure": process 0's sizes on both
    (s0,), (s1,) = logs["sizes"]
    assert s0["chosen"] == s1["chosen"] and s1["chosen_by"] == "process 0"
    assert "own_choice" not in s0
    assert s1.get("own_choice", s1["chosen"]) == s1["candidates"][-1]


def test_two_processes_match_one_process(tmp_path):
    """The toy MLP: two processes x two CPU devices, same bits as one."""
    _check_two_processes("mlp", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lax", "equinox"])
def test_two_processes_match_one_process_cnn(kind, tmp_path):
    """The small CNN of tests/_user_models.py (compiles for about a minute)."""
    _check_two_processes(kind, tmp_path)


def _dying_worker(kind: str, process_id: int, port: int, out_dir: str) -> None:
    """Process ``int(kind)`` dies after the runtime starts; the other then runs
    a sweep that needs it."""
    _distributed.initialize(
        f"127.0.0.1:{port}", 2, process_id, heartbeat_timeout_seconds=5
    )
    if process_id == int(kind):
        os._exit(3)
    _results("mlp", True, True, eager=False)
    print("finished alone", flush=True)


@pytest.mark.slow
@pytest.mark.parametrize("dead", [0, 1])
def test_a_dead_process_stops_the_other(dead, tmp_path):
    """Process 1 dying, or process 0 with the coordinator: JAX stops the other
    (heartbeat timeout 5 s here, 100 s by default)."""
    procs = _start("dying", str(dead), tmp_path)
    rcs, outs = _wait(procs, 120)
    other = 1 - dead
    assert rcs[dead] == 3
    assert rcs[other] != 0, outs[other][-3000:]
    assert "finished alone" not in outs[other]
    # JAX's coordination service names the failure and aborts this process.
    assert "Terminating process because the JAX distributed service" in outs[other], (
        outs[other][-3000:]
    )


def _pipeline_worker(kind: str, process_id: int, port: int, out_dir: str) -> None:
    """The tiny reproduction of ``tests/_tiny_sweep.py`` (training included)
    into the shared run folder ``out_dir``, as ``uswim sweep --distributed``
    runs it."""
    heartbeat = int(os.environ.get("USWIM_TEST_HEARTBEAT", "100"))
    _distributed.initialize(
        f"127.0.0.1:{port}", 2, process_id, heartbeat_timeout_seconds=heartbeat
    )
    import _tiny_sweep

    _tiny_sweep.main(out_dir)


def _same_run_folder(a, b) -> None:
    for name in ("curves.csv", "references.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    files = sorted(p.relative_to(a) for p in a.rglob("*.npz"))
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*.npz"))
    for f in files:
        with np.load(a / f) as x, np.load(b / f) as y:
            assert sorted(x) == sorted(y)
            for k in x:
                np.testing.assert_array_equal(x[k], y[k], err_msg=f"{f}:{k}")


def _single_run(run_dir) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "_tiny_sweep.py"), str(run_dir)],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_kill_a_process_then_resume_gives_the_one_process_run_folder(tmp_path):
    """Process 1 is killed after the first unit is saved: process 0 stops (JAX's
    heartbeat), the folder keeps the finished units, and the same command on
    both processes resumes to the run folder of an uninterrupted single run."""
    shared, single = tmp_path / "shared", tmp_path / "single"
    fast = {"USWIM_TEST_HEARTBEAT": "5"}
    procs = _start("pipeline", "-", shared, {**fast, "USWIM_TEST_PAUSE": "5"})
    one = _single_run(single)
    try:

        def units():  # saved step chunks and curves (the end points come first)
            return list(shared.glob("chunks/*__steps*.npz")) + list(
                shared.glob("curves/*.npz")
            )

        deadline = time.monotonic() + PIPELINE_TIMEOUT_S
        while not units():
            assert time.monotonic() < deadline and procs[0].poll() is None
            time.sleep(0.5)
        procs[1].kill()
        rcs, outs = _wait(procs, 120)
        assert rcs[0] != 0 and rcs[1] != 0, outs[0][-3000:]
        assert not (shared / "curves.csv").exists()
        saved = units()
        rcs, outs = _wait(_start("pipeline", "-", shared, fast), PIPELINE_TIMEOUT_S)
        assert rcs == [0, 0], "\n---\n".join(o[-3000:] for o in outs)
        assert "resuming" in outs[0] and saved
        assert _wait([one], PIPELINE_TIMEOUT_S)[0] == [0]
    finally:
        _reap(one)
    _same_run_folder(shared, single)


@pytest.mark.slow
def test_two_process_pipeline_writes_the_one_process_run_folder(tmp_path):
    shared, single = tmp_path / "shared", tmp_path / "single"
    procs = _start("pipeline", "-", shared)
    one = _single_run(single)
    try:
        rcs, outs = _wait(procs, PIPELINE_TIMEOUT_S)
        assert rcs == [0, 0], "\n---\n".join(o[-3000:] for o in outs)
        assert _wait([one], PIPELINE_TIMEOUT_S)[0] == [0]
    finally:
        _reap(one)
    _same_run_folder(shared, single)


def test_single_process_paths():
    # One process: shard=True keeps the local path; a mesh is used as given.
    assert _distributed.trial_mesh(False) is None
    assert _distributed.trial_mesh(True) is None
    mesh = _distributed.global_trial_mesh()
    assert _distributed.trial_mesh(mesh) is mesh
    assert mesh.axis_names == (_distributed.TRIAL_AXIS,)
    assert _distributed.is_writer()
    assert _distributed.from_writer({"a": 1}) == {"a": 1}
    assert _distributed.every_process(3) == [3]
    from uswim_jax.montecarlo import run_chunks, trial_keys

    keys = trial_keys(jax.random.key(2), 5)

    def fn(k):  # (T,) -> (T, 2): a per-trial value and a pytree leaf
        return {"z": jax.vmap(lambda kt: jax.random.normal(kt, (2,)))(k)}

    a = run_chunks(keys, fn, chunk_size=2, shard=mesh)
    b = run_chunks(keys, fn, chunk_size=None)
    assert a["z"].shape == (5, 2)
    np.testing.assert_array_equal(a["z"], b["z"])


def test_every_process_round_trips_the_bits(monkeypatch):
    """The packing into one byte buffer and back, with the all-gather faked
    (two processes holding the same bytes): dtypes, shapes, Python number
    types and the pytree survive, -0.0 and NaN payloads included."""
    monkeypatch.setattr(_distributed.jax, "process_count", lambda: 2)
    monkeypatch.setattr(
        _distributed, "_every_process_bytes", lambda b: np.stack([b, b])
    )
    nan = np.frombuffer(np.uint32(0x7FC00001).tobytes(), np.float32)
    value = {
        "k": jnp.asarray([[-0.0, 1.5], [2.0, 3.0]], jnp.float32),
        "h": jnp.asarray([1.0, -2.5], jnp.bfloat16),
        "n": nan,
        "e": np.zeros((0, 3), np.int8),
        "flags": (True, 7, 0.25),
    }
    for got in _distributed.every_process(value):
        assert jax.tree.structure(got) == jax.tree.structure(value)
        for g, v in zip(jax.tree.leaves(got), jax.tree.leaves(value), strict=True):
            if isinstance(v, bool | int | float):
                assert type(g) is type(v) and g == v
            else:
                v = np.asarray(v)
                assert g.dtype == v.dtype and g.shape == v.shape
                assert g.tobytes() == v.tobytes()


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="shard"):
        _distributed.trial_mesh("yes")
    with pytest.raises(ValueError, match="coordinator_address"):
        _distributed.initialize("localhost", 2, 0, env={})
    with pytest.raises(ValueError, match="num_processes"):
        _distributed.initialize("127.0.0.1:1234", 0, 0, env={})
    with pytest.raises(ValueError, match="process_id"):
        _distributed.initialize("127.0.0.1:1234", 2, 2, env={})
    with pytest.raises(ValueError, match="JAX_PROCESS_ID|process_id"):
        _distributed.initialize(env={"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "x"})
    with pytest.raises(ValueError, match="devices"):
        _distributed.global_trial_mesh([])
    jax.devices()  # the backend is up: too late to start the runtime
    with pytest.raises(RuntimeError, match="before any JAX computation"):
        _distributed.initialize("127.0.0.1:1234", 2, 0, env={})
    assert not _distributed.requested(False, env={})
    assert _distributed.requested(False, env={"USWIM_DISTRIBUTED": "1"})
    assert _distributed.requested(True, env={})


def test_cli_sweep_flags():
    from uswim_jax import cli

    args = cli.build_parser().parse_args(
        ["sweep", "--distributed", "--coordinator-address", "10.0.0.1:1234",
         "--num-processes", "4", "--process-id", "3"]
    )  # fmt: skip
    assert args.distributed and args.coordinator_address == "10.0.0.1:1234"
    assert (args.num_processes, args.process_id) == (4, 3)
    assert args.heartbeat_timeout == _distributed.DEFAULT_HEARTBEAT_TIMEOUT_S
    plain = cli.build_parser().parse_args(["sweep"])
    assert not plain.distributed


class _TinyConfigs:
    """``experiments.common.main``'s ``configs`` for the tiny sweep."""

    @staticmethod
    def get_config():
        import _tiny_sweep

        return _tiny_sweep.CONFIG

    get_quick_config = get_config


def _tiny_reproduce(config, workdir, *, results_dir=None, progress=True):
    """A reproduction driver's ``run``: the tiny sweep through ``reproduce``."""
    import _tiny_sweep

    from experiments import common

    return common.reproduce(
        config,
        workdir,
        results_dir=results_dir,
        train_data=_tiny_sweep.fake_digits(64, 0),
        test_data=_tiny_sweep.fake_digits(32, 1),
        progress=progress,
    )


def _driver_main(argv) -> int:
    sys.path.insert(0, os.path.dirname(HERE))  # the repository root: experiments/
    from experiments import common

    return common.main(
        argv, prog="tiny", doc="", run=_tiny_reproduce, configs=_TinyConfigs
    )


def _driver_worker(kind: str, process_id: int, port: int, out_dir: str) -> None:
    """The tiny sweep as a reproduction driver runs it with ``--distributed``."""
    rc = _driver_main(
        ["--workdir", out_dir, "--no-progress", "--distributed",
         "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
         "--process-id", str(process_id)]
    )  # fmt: skip
    sys.exit(rc)


def test_reproduction_drivers_start_the_runtime_when_asked(
    monkeypatch, tmp_path, capsys
):
    """``experiments/*/main.py`` (``experiments.common.main``) take the
    runtime's flags or ``USWIM_DISTRIBUTED``, start it before the run, keep its
    flags out of the run's arguments, and print the report on process 0 only."""
    started, seen = [], []
    monkeypatch.setattr(
        _distributed, "initialize", lambda *a, **kw: started.append((a, kw))
    )

    def run(config, workdir, *, results_dir=None, progress=True, **extra):
        seen.append((started[:], extra))
        return {"summary": "THE SUMMARY"}

    sys.path.insert(0, os.path.dirname(HERE))
    from experiments import common

    def main(argv):
        return common.main(
            [*argv, "--workdir", str(tmp_path)],
            prog="tiny", doc="", run=run, configs=_TinyConfigs,
        )  # fmt: skip

    assert main(["--quick"]) == 0
    assert started == [] and seen[-1] == ([], {})
    assert "THE SUMMARY" in capsys.readouterr().out
    flags = ["--distributed", "--coordinator-address", "10.0.0.1:1234",
             "--num-processes", "4", "--process-id", "3",
             "--heartbeat-timeout", "7"]  # fmt: skip
    monkeypatch.setattr(_distributed, "is_writer", lambda: False)
    assert main(flags) == 0
    ((args, kw),) = seen[-1][0]
    assert args == ("10.0.0.1:1234", 4, 3) and kw["heartbeat_timeout_seconds"] == 7
    assert seen[-1][1] == {}  # none of the runtime's flags reach ``run``
    assert "THE SUMMARY" not in capsys.readouterr().out  # not process 0
    monkeypatch.setenv(_distributed.ENV_REQUEST, "1")
    started.clear()
    assert main([]) == 0 and len(started) == 1  # the environment asks for it


def test_driver_per_chip_flag_reaches_every_model_or_is_refused(tmp_path, capsys):
    """``--per-chip MARGIN`` turns the study on for each model of a
    several-model reproduction, and is refused with one line (exit 2) by an
    experiment whose config is not an ``ExperimentConfig``."""
    import _tiny_sweep

    sys.path.insert(0, os.path.dirname(HERE))
    from experiments import common

    seen = []

    def run(config, workdir, *, results_dir=None, progress=True):
        seen.append(config)
        return {"summary": ""}

    class Two:
        @staticmethod
        def get_config():
            return (_tiny_sweep.CONFIG, _tiny_sweep.CONFIG)

        get_quick_config = get_config

    class Other:
        @staticmethod
        def get_config():
            return object()

        get_quick_config = get_config

    argv = ["--per-chip", "0.5", "--workdir", str(tmp_path)]
    assert common.main(argv, prog="t", doc="", run=run, configs=Two) == 0
    assert len(seen[-1]) == 2
    assert all(c.per_chip is not None and c.per_chip.margin == 0.5 for c in seen[-1])
    with pytest.raises(SystemExit) as e:
        common.main(argv, prog="t", doc="", run=run, configs=Other)
    assert e.value.code == 2
    assert "--per-chip" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_driver_writes_the_one_process_run_folder(tmp_path):
    """A reproduction driver with ``--distributed`` on two processes writes the
    run folder (and report) of the same driver on one process."""
    shared, single = tmp_path / "shared", tmp_path / "single"
    procs = _start("driver", "-", shared)
    one = subprocess.Popen(
        [sys.executable, __file__, "driver-single", "-", "0", "0", str(single)],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        rcs, outs = _wait(procs, PIPELINE_TIMEOUT_S)
        assert rcs == [0, 0], "\n---\n".join(o[-3000:] for o in outs)
        assert "run folder:" in outs[0] and "run folder:" not in outs[1]
        assert _wait([one], PIPELINE_TIMEOUT_S)[0] == [0]
    finally:
        _reap(one)
    _same_run_folder(shared, single)


if __name__ == "__main__":
    mode, kind, pid, port, out = sys.argv[1:6]
    if mode == "driver-single":
        sys.exit(_driver_main(["--workdir", out, "--no-progress"]))
    run = {
        "worker": _worker,
        "dying": _dying_worker,
        "pipeline": _pipeline_worker,
        "driver": _driver_worker,
    }[mode]
    run(kind, int(pid), int(port), out)
