"""The same Monte Carlo sweep on one process and on two (JAX's distributed
runtime, ``uswim_jax._distributed``), side by side in one run.

Run as ``python -m benchmarks.distributed`` (``--quick``: fewer trials and
images; ``--trials``, ``--images``, ``--repeats``, ``--output``). Each case is
a fresh set of processes on this machine's CPU, coordinator on 127.0.0.1:

- ``1 process x 1 device``: ``shard=False``, the pipeline's default path;
- ``1 process x 2 devices``: two forced host devices, trials split by a local
  ``shard_map`` (``shard=True``);
- ``2 processes x 1 device``: the distributed runtime, trials split over both
  processes' devices (``shard=True`` on the global mesh), all-gathered.

Every case times one jitted sweep (LeNet, fresh quantized params, generated
images, ``UniformVariation(0.3, 0.03)``, magnitude order, budgets 0, 1, 10 and
100 %, every trial at once): compile, first run, then ``--repeats`` runs (best
and median; for two processes, the slower process). The parent checks that
every case gives the same per-trial accuracies, bit for bit, and writes
``benchmarks/results/distributed.json`` (``distributed_quick.json`` with
``--quick``).

What the numbers can show on a 2-core CPU: that the split is exact, and what
it costs (a multi-process compile, the first all-gather setting up gloo's
connections, a second Python process). What they cannot show: how the split
scales. The two processes share the same two cores as one process (XLA's
intra-op threads use both), and on a machine shared with other jobs two
processes also get a larger share of the cores than one, so a ratio below 1
here is not a speed-up from distribution; that needs processes with cores,
sockets, GPUs or hosts of their own. The load average is recorded: other jobs
on the machine move absolute times.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

from benchmarks._common import RESULTS_DIR, machine_info, write_result

FULL = {"trials": 16, "images": 200, "repeats": 3}
QUICK = {"trials": 8, "images": 50, "repeats": 2}
FRACTIONS = (0.0, 0.01, 0.1, 1.0)
#: (name, processes, devices per process, shard)
CASES = (
    ("1 process x 1 device", 1, 1, False),
    ("1 process x 2 devices", 1, 2, True),
    ("2 processes x 1 device", 2, 1, True),
)


def _child(args) -> None:
    """One process of a case: times the jitted sweep, saves its results."""
    if args.processes > 1:
        from uswim_jax import _distributed

        _distributed.initialize(
            f"127.0.0.1:{args.port}", args.processes, args.process_id
        )
    import jax

    import uswim_jax as u
    from benchmarks._common import block, lenet_problem
    from uswim_jax.sweep import counts_for_fractions, sweep

    model, params, x, y, _ = lenet_problem(args.images, synthetic=True)
    dev = u.UniformVariation(0.3, 0.03)
    order = u.global_order(u.magnitude_score(params, predicate=dev.crossbar))
    counts = counts_for_fractions(FRACTIONS, model.num_weights(params))
    apply_fn = model.apply_fn
    key = jax.random.key(0)

    def driver(k, p):
        return sweep(k, apply_fn, p, x, y, dev, order, counts, args.trials,
                     chunk_size=None, shard=args.shard)  # fmt: skip

    fn = jax.jit(driver)
    t0 = time.perf_counter()
    compiled = fn.lower(key, params).compile()
    compile_s = time.perf_counter() - t0
    curve, first_s = block(lambda: compiled(key, params))
    steady = [block(lambda: compiled(key, params))[1] for _ in range(args.repeats)]
    out = {
        "compile_s": compile_s,
        "first_run_s": first_s,
        "steady_s": steady,
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
    }
    np.savez(
        f"{args.out}.p{args.process_id}.npz",
        accuracies=np.asarray(curve.accuracies),
        reference=np.asarray(curve.reference),
        baseline=np.asarray(curve.baseline),
    )
    with open(f"{args.out}.p{args.process_id}.json", "w") as f:
        json.dump(out, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(name, processes, devices, shard, p, tmp) -> tuple[dict, dict]:
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }
    port = _free_port()
    base = os.path.join(tmp, name.replace(" ", "_"))
    cmd = [sys.executable, "-m", "benchmarks.distributed", "--child"]
    cmd += ["--processes", str(processes), "--port", str(port), "--out", base]
    cmd += ["--trials", str(p["trials"]), "--images", str(p["images"])]
    cmd += ["--repeats", str(p["repeats"])] + (["--shard"] if shard else [])
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(cmd + ["--process-id", str(i)], env=env)
        for i in range(processes)
    ]
    rcs = [q.wait(timeout=1800) for q in procs]
    wall = time.perf_counter() - t0
    if any(rcs):
        raise RuntimeError(f"{name}: exit codes {rcs}")
    per = []
    for i in range(processes):
        with open(f"{base}.p{i}.json") as f:
            per.append(json.load(f))
    steady_each = [min(r["steady_s"]) for r in per]
    row = {
        "case": name,
        "processes": processes,
        "devices_per_process": devices,
        "shard": shard,
        "compile_s": max(r["compile_s"] for r in per),
        "first_run_s": max(r["first_run_s"] for r in per),
        "steady_s_min": max(steady_each),
        "steady_s_median": max(float(np.median(r["steady_s"])) for r in per),
        "wall_s_with_startup": wall,
    }
    arrays = {}
    for i in range(processes):
        with np.load(f"{base}.p{i}.npz") as z:
            arrays[i] = {k: z[k] for k in z}
    return row, arrays


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--trials", type=int)
    ap.add_argument("--images", type=int)
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--output")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--shard", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args)
        return
    p = dict(QUICK if args.quick else FULL)
    for k in ("trials", "images", "repeats"):
        if getattr(args, k) is not None:
            p[k] = getattr(args, k)
    import tempfile

    machine = machine_info()  # the load average before the cases
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, processes, devices, shard in CASES:
            print(f"{name} ...", flush=True)
            row, arrays = run_case(name, processes, devices, shard, p, tmp)
            rows.append(row)
            results[name] = arrays
            print(json.dumps(row), flush=True)
    ref = results[CASES[0][0]][0]
    identical = all(
        np.array_equal(a[k], ref[k])
        for per in results.values()
        for a in per.values()
        for k in ref
    )
    base = rows[0]["steady_s_min"]
    for r in rows:
        r["steady_vs_one_process"] = r["steady_s_min"] / base
    out = {
        "benchmark": "distributed",
        "machine": machine,
        "params": {**p, "fractions": list(FRACTIONS), "model": "lenet (synthetic)"},
        "identical_accuracies": bool(identical),
        "cases": rows,
        "load_average_end": list(os.getloadavg()),
        "note": (
            "CPU processes on one machine share its cores (and, on a machine "
            "shared with other jobs, two processes get a larger share than one): "
            "the steady ratio is not a measure of distributed scaling; the "
            "compile and first-run times show the cost of a multi-process program"
        ),
    }
    print(json.dumps(out, indent=2))
    if not identical:
        raise SystemExit("per-trial accuracies differ between cases")
    name = "distributed_quick.json" if args.quick else "distributed.json"
    write_result(out, args.output or os.path.join(RESULTS_DIR, name))


if __name__ == "__main__":
    main()
