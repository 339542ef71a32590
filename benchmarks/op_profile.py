"""Where the time of one Monte Carlo path goes: XLA's own per-op times.

Run as ``python -m benchmarks.op_profile`` (``--quick`` for a small CI-sized
variant; ``--chunk``, ``--batch``, ``--trials``, ``--images``, ``--output``).
It jits :func:`uswim_jax.evaluate` on LeNet (the MNIST test images when present,
else generated ones; fresh params) with the given chunk and image batch
(default: ``evaluate``'s own, ``"auto"``; the sizes they resolve to are
recorded), times its steady state, then runs it twice more
under ``jax.profiler`` and sums the duration of every executed XLA op of the
compiled program (loops and calls, which contain other ops, are left out).

Each op is named by the JAX primitive at the root of its fusion (the
``op_name`` metadata of the optimized HLO, e.g. ``dot_general`` for a matmul,
``dynamic_update_slice`` for the in-place writes of im2col patches) and by
where it runs: per image batch (inside the image loop) or per chunk of trials
(the noise draw and the params-only work). The matmuls' rate is LeNet's forward
FLOPs (counted from its jaxpr, as in every benchmark) over their summed time,
beside the float32 matmul rate measured in the same run. Results go to
``benchmarks/results/op_profile.json`` (``op_profile_quick.json`` with
``--quick``).

The summed op time can differ from the steady time (ops of a step run
concurrently on several threads, and the executor's own work is not an op).
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import uswim_jax as uj
from benchmarks._common import (
    RESULTS_DIR,
    machine_info,
    matmul_gflops,
    model_flops,
    write_result,
)
from uswim_jax.models import build_model
from uswim_jax.montecarlo import resolve_sizes

RESULTS = os.path.join(RESULTS_DIR, "op_profile.json")
#: HLO ops that contain other ops (their time is their body's).
CONTAINERS = ("while", "conditional", "call")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_ops(hlo_text: str) -> dict[str, dict]:
    """Instruction name -> ``{"opcode", "shape", "primitive", "loop_depth"}``
    for every instruction of an optimized HLO module's text."""
    ops = {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        name, shape, opcode = m.groups()
        meta = _OP_NAME.search(line)
        path = meta.group(1) if meta else ""
        ops[name] = {
            "opcode": opcode,
            "shape": shape,
            "primitive": path.rsplit("/", 1)[-1] if path else opcode,
            "loop_depth": path.count("while/body"),
        }
    return ops


def traced_durations(trace_dir: str) -> dict[str, list[float]]:
    """Op name -> its durations (seconds) in the newest profiler trace under
    ``trace_dir``."""
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not files:
        raise RuntimeError(f"jax.profiler wrote no trace under {trace_dir}")
    with gzip.open(max(files, key=os.path.getmtime)) as f:
        events = json.load(f)["traceEvents"]
    out = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            out[e["name"]].append(e["dur"] * 1e-6)
    return out


def profile(fn, runs: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        for _ in range(runs):
            jax.block_until_ready(fn())
        jax.profiler.stop_trace()
        return traced_durations(d)


def breakdown(ops: dict, durations: dict, runs: int) -> dict:
    """Per-run seconds of the program's ops, grouped by root primitive and by
    loop level; the ops sorted by time."""
    rows = []
    for name, ds in durations.items():
        op = ops.get(name)
        if op is None or op["opcode"] in CONTAINERS:
            continue
        rows.append(
            {**op, "name": name, "seconds": sum(ds) / runs, "calls": len(ds) // runs}
        )
    total = sum(r["seconds"] for r in rows)
    groups = collections.defaultdict(lambda: {"seconds": 0.0, "ops": 0})
    for r in rows:
        where = "per image batch" if r["loop_depth"] >= 2 else "per chunk"
        g = groups[f"{r['primitive']} ({where})"]
        g["seconds"] += r["seconds"]
        g["ops"] += 1
    for g in groups.values():
        g["share"] = g["seconds"] / total if total else 0.0
    rows.sort(key=lambda r: -r["seconds"])
    for r in rows:
        r["share"] = r["seconds"] / total if total else 0.0
    return {
        "op_seconds": total,
        "groups": dict(sorted(groups.items(), key=lambda kv: -kv[1]["seconds"])),
        "ops": rows,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small CI variant")
    parser.add_argument(
        "--chunk", type=int, default=0, help="trials per chunk (0: auto)"
    )
    parser.add_argument(
        "--batch", type=int, default=0, help="images per pass (0: auto)"
    )
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    q = args.quick
    num_trials = args.trials or (10 if q else 100)
    num_images = args.images or (200 if q else 2000)
    repeats = args.repeats or (2 if q else 5)
    output = args.output or (RESULTS.replace(".json", "_quick.json") if q else RESULTS)

    model = build_model("lenet")
    params = model.init(jax.random.key(0))
    try:
        from uswim_jax.data import load

        data = load("mnist", "test")
        x, y = (
            np.asarray(data.images)[:num_images],
            np.asarray(data.labels)[:num_images],
        )
        source = f"{data.name} test split ({data.source})"
    except Exception as e:  # noqa: BLE001 - any failure: generated images
        rng = np.random.default_rng(0)
        x = rng.random((num_images, *model.input_shape), dtype=np.float32)
        y = rng.integers(0, model.num_classes, num_images).astype(np.int32)
        source = f"generated images, seed 0 (no dataset: {e})"
    if len(x) < num_images:
        raise SystemExit(f"only {len(x)} test images, asked for {num_images}")
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y)
    device = uj.UniformVariation(0.3, 0.03)
    key = jax.random.key(42)
    chunk, batch = resolve_sizes(
        model.apply_fn,
        params,
        x,
        num_trials,
        args.chunk or "auto",
        args.batch or "auto",
    )[:2]
    jitted = jax.jit(
        lambda k: uj.evaluate(
            k, model.apply_fn, params, x, y, device, None, num_trials,
            chunk_size=chunk, eval_batch_size=batch,
        ).accuracies
    )  # fmt: skip
    compiled = jitted.lower(key).compile()
    ops = hlo_ops(compiled.as_text())
    peak = [matmul_gflops()]
    jax.block_until_ready(compiled(key))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(key))
        times.append(time.perf_counter() - t0)
    runs = 2
    res = breakdown(ops, profile(lambda: compiled(key), runs), runs)
    peak.append(matmul_gflops())
    flops = model_flops(model.apply_fn, params, x[:1]) * num_trials * num_images
    mm = sum(
        g["seconds"] for k, g in res["groups"].items() if k.startswith("dot_general")
    )
    steady = min(times)
    out = {
        "benchmark": "op_profile",
        "quick": q,
        **machine_info(),
        "load_average_end": list(os.getloadavg()),
        "model": "lenet",
        "data": source,
        "num_trials": num_trials,
        "num_images": num_images,
        "chunk_size": chunk,
        "eval_batch_size": batch,
        "sizes": "given" if args.chunk and args.batch else "evaluate's auto choice",
        "steady_s_min": steady,
        "steady_s_median": float(np.median(times)),
        "profiled_runs": runs,
        "matmul_gflops_before_after": peak,
        "model_gflops": flops / steady / 1e9,
        "pct_of_matmul": 100 * flops / steady / 1e9 / max(peak),
        "matmul_op_seconds": mm,
        "matmul_op_gflops": flops / mm / 1e9 if mm else None,
        "matmul_op_pct_of_matmul": 100 * flops / mm / 1e9 / max(peak) if mm else None,
        **res,
        "ops": res["ops"][:25],
    }
    print(
        f"LeNet, {num_trials} trials x {num_images} images, chunk {chunk} x "
        f"batch {batch}: steady {steady:.3f} s ({out['pct_of_matmul']:.1f} % of "
        f"the matmul rate {max(peak):.0f} GFLOP/s); ops {res['op_seconds']:.3f} s/run",
        flush=True,
    )
    for name, g in list(res["groups"].items())[:10]:
        print(f"  {100 * g['share']:5.1f} %  {g['seconds']:7.3f} s  {name}")
    if mm:
        print(
            f"  the matmuls alone: {out['matmul_op_gflops']:.1f} GFLOP/s "
            f"({out['matmul_op_pct_of_matmul']:.1f} % of the matmul rate)"
        )
    write_result(out, output)
    return out


if __name__ == "__main__":
    main()
