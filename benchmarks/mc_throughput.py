"""Monte Carlo throughput: trials per second of noisy LeNet evaluation.

Run as ``python -m benchmarks.mc_throughput`` (``--quick`` for a small CI-sized
variant; ``--trials``, ``--repeats``, ``--output``). In one process it measures,
side by side:

- the machine's dense float32 matmul rate (2048 x 2048 @ 2048 x 2048, best of
  7, measured before the cases and after every round of them; the best of
  these), the yardstick for "% of peak";
- ``serial``: a Python loop over trials of one jitted single-trial noisy forward
  pass over all test images (the incumbents' approach);
- ``evaluate``: :func:`uswim_jax.evaluate` as it is called by default
  (``chunk_size="auto"``, ``eval_batch_size="auto"``), and with all images in
  one forward pass (``eval_batch_size=None``, the default before ``"auto"``);
- ``evaluate`` with ``chunk_size=None`` (all trials ``vmap``-ed at once, the
  default before ``"auto"``; at most 25 trials, as memory grows with them: 100
  trials need about 17 GB);
- ``evaluate`` over a grid of ``chunk_size`` (trials batched together; ``0``
  in ``--grid`` means ``"auto"``) and ``eval_batch_size`` (images per forward
  pass), i.e. cache-sized blocks of trials x images.

Every case runs the plain Flax LeNet; the batched ones go through
``uswim_jax._trialbatch`` (convolutions as im2col matmuls across the trials).

Every case is jitted once; its first call (compile + run) is reported apart from
the steady state, which is timed in round robin over the cases (so a change in
machine load hits all alike) with ``block_until_ready``; trials/s use the best
round, and the median is recorded too. Achieved GFLOP/s count LeNet's forward
FLOPs analytically (2 x multiply-accumulates per image of the convolutions and
dense layers as defined; not the extra columns the im2col path computes, not
the noise generation). The per-trial accuracies of every case are compared with
the default path's. Results go to ``benchmarks/results/mc_throughput.json``
(``mc_throughput_quick.json`` with ``--quick``).

Uses the trained run ``runs/reproduce-mnist/train`` and the MNIST test split
when present (set ``USWIM_DATA_DIR``), else freshly initialised LeNet params
and random images, and says which in the JSON.
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import uswim_jax as uj
from benchmarks._common import (
    machine_info,
    matmul_gflops,
    model_flops,
    write_result,
)
from uswim_jax.models import build_model
from uswim_jax.montecarlo import (
    evaluate,
    noisy_accuracy,
    resolve_sizes,
    trial_keys,
)

RUN_DIR = "runs/reproduce-mnist/train"
RESULTS = os.path.join(os.path.dirname(__file__), "results", "mc_throughput.json")
DEFAULT = "evaluate default (chunk=auto, batch=auto)"
ALL_IMAGES = "evaluate chunk=auto batch=None (all images)"

#: (chunk_size, eval_batch_size) of the grid cases; chunk 0 is "auto".
FULL_GRID = ((5, 20), (5, 40), (6, 40), (4, 32), (0, 40), (2, 100), (10, 10))
#: ``chunk_size=None`` ``vmap``s every trial at once: about 17 GB for 100 trials
#: of 2,000 images (OOM-killed on a 23 GB machine), so it runs at most this many
#: trials; trial t is the same under any T, so its accuracies are a prefix.
VMAP_ALL_MAX_TRIALS = 25
QUICK_GRID = ((0, 20), (4, 25))


def load_problem(num_images: int | None) -> tuple:
    """``(model, params, x, y, sources)``: the trained LeNet and MNIST test
    images when available, else fresh params and random images."""
    sources = {}
    try:
        from uswim_jax.train import load_run

        model, params, _ = load_run(RUN_DIR)
        model, params = model.export(params)
        sources["params"] = f"trained run {RUN_DIR}"
    except Exception as e:  # noqa: BLE001 - any failure means: use fresh params
        model = build_model("lenet")
        params = model.init(jax.random.key(0))
        sources["params"] = f"fresh init, key 0 (no trained run: {e})"
    try:
        from uswim_jax.data import load

        x, y = load("mnist", "test")
        sources["data"] = "mnist test split"
    except Exception as e:  # noqa: BLE001
        rng = np.random.default_rng(0)
        x = rng.random((2000, *model.input_shape), dtype=np.float32)
        y = rng.integers(0, model.num_classes, 2000).astype(np.int32)
        sources["data"] = f"random images, seed 0 (no dataset: {e})"
    if num_images is not None:
        x, y = x[:num_images], y[:num_images]
    return model, params, jnp.asarray(x, jnp.float32), jnp.asarray(y), sources


def _peak_rss_gb() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    except (ImportError, OSError):
        return float("nan")


def make_cases(model, params, x, y, device, num_trials, grid) -> dict:
    """name -> (callable of no arguments returning per-trial accuracies, info)."""
    key = jax.random.key(42)
    std = device.effective_std(params, None)
    cases = {}

    one = jax.jit(
        lambda k, x, y: noisy_accuracy(
            k, model.apply_fn, params, std, x, y, crossbar=device.crossbar
        )
    )
    keys = trial_keys(key, num_trials)
    keys = [keys[t] for t in range(num_trials)]

    def serial():
        return jnp.stack([one(k, x, y) for k in keys])

    cases["serial (jit one trial, Python loop)"] = (
        serial,
        {
            "chunk_size": 1,
            "eval_batch_size": None,
            "num_trials": num_trials,
        },
    )

    def ev(apply_fn, chunk_size, eval_batch_size, num_trials=num_trials):
        f = jax.jit(
            lambda key, x, y: (
                evaluate(
                    key,
                    apply_fn,
                    params,
                    x,
                    y,
                    device,
                    None,
                    num_trials,
                    chunk_size=chunk_size,
                    eval_batch_size=eval_batch_size,
                ).accuracies
            )
        )
        return lambda: f(key, x, y)

    c, b = resolve_sizes(model.apply_fn, params, x, num_trials)[:2]
    cases[DEFAULT] = (
        ev(model.apply_fn, "auto", "auto"),
        {
            "chunk_size": "auto",
            "auto_chunk_size": c,
            "eval_batch_size": "auto",
            "auto_eval_batch_size": b,
            "num_trials": num_trials,
        },
    )
    cases[ALL_IMAGES] = (
        ev(model.apply_fn, "auto", None),
        {
            "chunk_size": "auto",
            "auto_chunk_size": resolve_sizes(
                model.apply_fn, params, x, num_trials, "auto", None
            ).chunk_size,
            "eval_batch_size": None,
            "num_trials": num_trials,
        },
    )
    t_all = min(num_trials, VMAP_ALL_MAX_TRIALS)
    cases["evaluate chunk=None (vmap all)"] = (
        ev(model.apply_fn, None, None, t_all),
        {
            "chunk_size": None,
            "eval_batch_size": None,
            "num_trials": t_all,
        },
    )
    for cs, bs in grid:
        chunk = cs or "auto"
        info = {"chunk_size": chunk, "eval_batch_size": bs}
        if chunk == "auto":
            info["auto_chunk_size"] = resolve_sizes(
                model.apply_fn, params, x, num_trials, "auto", bs
            ).chunk_size
        cases[f"evaluate chunk={chunk} batch={bs}"] = (
            ev(model.apply_fn, chunk, bs),
            {**info, "num_trials": num_trials},
        )
    return cases


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small CI variant")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--grid",
        default=None,
        help="grid cases as CHUNK:BATCH,... (CHUNK 0: auto; default: a built-in grid)",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="JSON path (default results/mc_throughput[_quick].json)",
    )
    args = parser.parse_args(argv)
    num_trials = args.trials or (20 if args.quick else 100)
    num_images = args.images or (400 if args.quick else None)
    repeats = args.repeats or (2 if args.quick else 3)
    grid = QUICK_GRID if args.quick else FULL_GRID
    if args.grid:
        grid = tuple(tuple(int(v) for v in g.split(":")) for g in args.grid.split(","))
    output = args.output or (
        RESULTS.replace(".json", "_quick.json") if args.quick else RESULTS
    )

    machine = machine_info()  # the load average before the cases
    model, params, x, y, sources = load_problem(num_images)
    n_img = int(x.shape[0])
    device = uj.UniformVariation(0.3, 0.03)
    flop_image = model_flops(model.apply_fn, params, x[:1])
    flop_trial = flop_image * n_img
    print(f"LeNet, {n_img} images, {num_trials} trials; {sources}", flush=True)
    peak = matmul_gflops()
    print(f"float32 matmul 2048^3: {peak:.1f} GFLOP/s", flush=True)

    cases = make_cases(model, params, x, y, device, num_trials, grid)
    results, accs = {}, {}
    for name, (fn, info) in cases.items():
        t0 = time.perf_counter()
        accs[name] = np.asarray(jax.block_until_ready(fn()))
        results[name] = {**info, "first_call_s": time.perf_counter() - t0}
        results[name]["peak_rss_gb_so_far"] = _peak_rss_gb()
        results[name]["times"] = []
        print(f"first call {name:45s} {results[name]['first_call_s']:7.2f} s")
    peaks = [peak]
    for _ in range(repeats):
        for name, (fn, _) in cases.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            results[name]["times"].append(time.perf_counter() - t0)
        # The yardstick is sampled in every round too, so a change in machine
        # load hits it like the cases (each uses its best round).
        peaks.append(matmul_gflops())
    peak_mm = peaks[-1]
    peak = max(peaks)
    base = "serial (jit one trial, Python loop)"
    default = DEFAULT
    serial_rate = num_trials / min(results[base]["times"])
    print(
        f"\n{'case':45s} {'trials/s':>9s} {'GFLOP/s':>8s} {'%peak':>6s} "
        f"{'x serial':>8s} {'compile+1st s':>13s}"
    )
    for name, r in results.items():
        times = r.pop("times")
        best = min(times)
        r["steady_s_min"] = best
        r["steady_s_median"] = statistics.median(times)
        r["trials_per_s"] = r["num_trials"] / best
        r["gflops"] = flop_trial * r["trials_per_s"] / 1e9
        r["pct_of_matmul"] = 100 * r["gflops"] / peak
        r["x_serial"] = r["trials_per_s"] / serial_rate
        t = min(len(accs[name]), len(accs[default]))  # common prefix of trials
        diff = accs[name][:t] - accs[default][:t]
        r["trials_differing_from_default"] = int(np.sum(diff != 0))
        r["max_abs_acc_diff_vs_default"] = float(np.max(np.abs(diff)))
        print(
            f"{name:45s} {r['trials_per_s']:9.2f} {r['gflops']:8.1f} "
            f"{r['pct_of_matmul']:6.1f} {r['x_serial']:8.2f} "
            f"{r['first_call_s']:13.2f} {r['num_trials']:4d}"
        )
    fast = [n for n in results if " batch=" in n]
    best_fast = max(fast, key=lambda n: results[n]["trials_per_s"])
    print(f"\nbest: {best_fast}; mean accuracy {accs[best_fast].mean():.4f}")
    out = {
        "benchmark": "mc_throughput",
        "quick": args.quick,
        **machine,
        "load_average_end": os.getloadavg(),
        "sources": sources,
        "model": "lenet",
        "num_images": n_img,
        "image_shape": list(x.shape[1:]),
        "num_trials": num_trials,
        "repeats": repeats,
        "device_model": "UniformVariation(sigma=0.3, sigma_verified=0.03)",
        "flops_per_image": flop_image,
        "matmul_gflops_before": peaks[0],
        "matmul_gflops_after": peak_mm,
        "matmul_gflops_each_round": peaks,
        "pct_of_matmul_uses": "max(before, after each round)",
        "baseline": base,
        "best": best_fast,
        "mean_accuracy_serial": float(accs[base].mean()),
        "mean_accuracy_best": float(accs[best_fast].mean()),
        "cases": results,
    }
    write_result(out, output)
    return out


if __name__ == "__main__":
    main()
