"""Scaling of Monte Carlo evaluation: time and peak memory against the number of
trials, the number of test images and the model.

Run as ``python -m benchmarks.mc_scaling`` (``--quick`` for a small variant;
``--groups``, ``--trials``, ``--images``, ``--models``, ``--repeats``,
``--output``). Three groups of cases, each timing one jitted
:func:`uswim_jax.evaluate` (nothing verified, ``UniformVariation(0.3, 0.03)``)
with the pipeline's chunking (``ExperimentConfig().chunk_size`` trials
``vmap``-ed together, ``eval_batch_size`` images per forward pass):

- ``trials``: LeNet, 500 images, T = 10, 30, 100, 300, 1000;
- ``images``: LeNet, 30 trials, N = 200, 500, 1000, 2000;
- ``models``: LeNet (28x28x1), ConvNet (32x32x3) and ResNet-18 at 16x16x3,
  40 images, 8 trials.

``--quick`` runs T = 10, 40 on 100 images, N = 100, 200 for 10 trials, and no
model group.

Each case runs in its own subprocess, so peak memory is that case's alone. The
child builds the model (fresh quantized params, exported) and generated images
(throughput does not depend on pixel values), compiles the function explicitly
(``jit(...).lower(...).compile()``: compile time apart from run time), resets
the kernel's peak-RSS counter (``/proc/self/clear_refs``), runs it once (first
run) and ``--repeats`` more times, or more until the runs add up to 2 s (at
most 10; steady state: best and median), and reports:

- ``peak_rss_run_mb``: peak resident memory of the process during the runs
  (``VmHWM`` from ``/proc/self/status`` after the reset: the JAX runtime,
  params, data and compiled code included, compilation excluded);
- ``peak_rss_total_mb``: ``getrusage(RUSAGE_SELF).ru_maxrss``, compilation
  included;
- ``xla_temp_mb``: XLA's compiled memory analysis (``temp_size_in_bytes``) of
  the chunked function, and, for contrast, ``xla_temp_unchunked_mb`` of the
  same function without chunking (all trials ``vmap``-ed at once for the
  ``trials`` group; all images in one forward pass for the ``images`` group),
  compiled but not run (not with ``--quick``).

The parent fits ``time = a + b x`` (least squares) in each group (``b`` is
seconds per trial, or per image for T trials) and reports ``R^2``, the largest
relative deviation of a point from the line, the exponent of a log-log fit (1
for linear time) and time / x at each point, and the spread of peak memory
(max / min) within the group. FLOPs per image are XLA's cost analysis of the
model's forward pass with XLA convolutions. Results go to
``benchmarks/results/mc_scaling.json`` (``mc_scaling_quick.json`` with
``--quick``).

With ``--in-process`` the cases run in this process instead (tests use it);
peak memory is then not per case and is left out.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import (
    RESULTS_DIR,
    generated_images,
    linear_fit,
    machine_info,
    write_result,
)

RESULTS = os.path.join(RESULTS_DIR, "mc_scaling.json")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_SHAPES = {"lenet": (28, 28, 1), "convnet": (32, 32, 3), "resnet18": (16, 16, 3)}
DEFAULTS = {
    "trials": (10, 30, 100, 300, 1000),
    "trial_images": 500,
    "images": (200, 500, 1000, 2000),
    "image_trials": 30,
    "models": ("lenet", "convnet", "resnet18"),
    "model_images": 40,
    "model_trials": 8,
    "repeats": 2,
    "unchunked": True,
}
QUICK = {
    "trials": (10, 40),
    "trial_images": 100,
    "images": (100, 200),
    "image_trials": 10,
    "models": (),
    "model_images": 20,
    "model_trials": 4,
    "repeats": 1,
    "unchunked": False,
}
RESULT_TAG = "RESULT "
#: Short cases repeat until their steady-state runs add up to this many seconds
#: (at most ``MAX_REPEATS`` runs), so one load spike cannot decide their time.
MIN_STEADY_S = 2.0
MAX_REPEATS = 10


def _status_kb(field: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def _reset_peak_rss() -> bool:
    """Resets ``VmHWM`` to the current RSS (Linux >= 4.0); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def build(case: dict):
    """``(apply_fn, params, x, y, flops_per_image, num_weights)`` for a case."""
    from uswim_jax.models import build_model

    shape = MODEL_SHAPES[case["model"]]
    model = build_model(case["model"], quantized=True, input_shape=shape)
    model, params = model.export(model.init(jax.random.key(0)))
    x, y = generated_images(case["images"], shape, model.num_classes)
    x, y = jnp.asarray(x), jnp.asarray(y)
    cost = (
        jax.jit(lambda p, xi: model.module.apply(p, xi, train=False))
        .lower(params, x[:1])
        .cost_analysis()
    )
    flops = float(cost["flops"]) if cost and "flops" in cost else float("nan")
    return model.apply_fn, params, x, y, flops, model.num_weights(params)


def run_case(case: dict, measure_memory: bool = True) -> dict:
    """Compiles and times one case (see the module docstring)."""
    import uswim_jax as uj
    from uswim_jax.montecarlo import evaluate

    apply_fn, params, x, y, flops, n_weights = build(case)
    device = uj.UniformVariation(0.3, 0.03)
    key = jax.random.key(0)

    def fn(chunk_size, eval_batch_size):
        return jax.jit(
            lambda key, params, x, y: (
                evaluate(
                    key,
                    apply_fn,
                    params,
                    x,
                    y,
                    device,
                    None,
                    case["trials"],
                    chunk_size=chunk_size,
                    eval_batch_size=eval_batch_size,
                ).accuracies
            )
        )

    rss_setup = _status_kb("VmRSS") / 1024
    t0 = time.perf_counter()
    compiled = (
        fn(case["chunk_size"], case["eval_batch_size"])
        .lower(key, params, x, y)
        .compile()
    )
    out = {**case, "compile_s": time.perf_counter() - t0}
    mem = compiled.memory_analysis()
    out["xla_temp_mb"] = mem.temp_size_in_bytes / 2**20 if mem else None
    unchunked = case.get("unchunked")
    if unchunked:
        cs = None if unchunked == "trials" else case["chunk_size"]
        bs = None if unchunked == "images" else case["eval_batch_size"]
        m2 = fn(cs, bs).lower(key, params, x, y).compile().memory_analysis()
        out["xla_temp_unchunked_mb"] = m2.temp_size_in_bytes / 2**20 if m2 else None
    out["flops_per_image"] = flops
    out["num_weights"] = n_weights
    reset = measure_memory and _reset_peak_rss()
    rss_before = _status_kb("VmRSS") / 1024
    t0 = time.perf_counter()
    accs = jax.block_until_ready(compiled(key, params, x, y))
    out["first_run_s"] = time.perf_counter() - t0
    times = []
    while len(times) < case["repeats"] or (
        sum(times) < MIN_STEADY_S and len(times) < MAX_REPEATS
    ):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(key, params, x, y))
        times.append(time.perf_counter() - t0)
    times = times or [out["first_run_s"]]
    out["steady_runs"] = len(times)
    out["steady_s_min"] = min(times)
    out["steady_s_median"] = float(np.median(times))
    out["s_per_trial"] = out["steady_s_min"] / case["trials"]
    out["gflops"] = flops * case["images"] * case["trials"] / out["steady_s_min"] / 1e9
    out["mean_accuracy"] = float(np.mean(np.asarray(accs)))
    if measure_memory:
        out["rss_after_setup_mb"] = rss_setup
        out["rss_before_runs_mb"] = rss_before
        out["peak_rss_run_mb"] = _status_kb("VmHWM") / 1024 if reset else None
        out["peak_rss_total_mb"] = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )
    return out


def run_in_subprocess(case: dict, timeout: float) -> dict:
    """``run_case`` in a fresh interpreter; its result line parsed."""
    cmd = [sys.executable, "-m", "benchmarks.mc_scaling", "--child", json.dumps(case)]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    lines = [s for s in proc.stdout.splitlines() if s.startswith(RESULT_TAG)]
    if proc.returncode or not lines:
        raise RuntimeError(
            f"case {case} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len(RESULT_TAG) :])


def make_cases(p: dict, groups, chunk_size, eval_batch_size) -> list[dict]:
    base = {
        "chunk_size": chunk_size,
        "eval_batch_size": eval_batch_size,
        "repeats": p["repeats"],
    }
    cases = []
    if "trials" in groups:
        for t in p["trials"]:
            cases.append(
                {
                    **base,
                    "group": "trials",
                    "model": "lenet",
                    "images": p["trial_images"],
                    "trials": t,
                    "unchunked": "trials" if p["unchunked"] else None,
                }
            )
    if "images" in groups:
        for n in p["images"]:
            cases.append(
                {
                    **base,
                    "group": "images",
                    "model": "lenet",
                    "images": n,
                    "trials": p["image_trials"],
                    "unchunked": "images" if p["unchunked"] else None,
                }
            )
    if "models" in groups:
        for m in p["models"]:
            cases.append(
                {
                    **base,
                    "group": "models",
                    "model": m,
                    "images": p["model_images"],
                    "trials": p["model_trials"],
                }
            )
    return cases


def _spread(values) -> float | None:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return max(v) / min(v) if v and min(v) > 0 else None


def summarize(results: list[dict]) -> dict:
    """Per-group linear fits and memory spreads."""
    out = {}
    for group, xkey in (("trials", "trials"), ("images", "images")):
        rs = [r for r in results if r["group"] == group]
        if len(rs) < 2:
            continue
        xs = [r[xkey] for r in rs]
        fit = linear_fit(xs, [r["steady_s_min"] for r in rs])
        g = {
            "x": xkey,
            "fit": fit,
            "peak_rss_run_mb": [r.get("peak_rss_run_mb") for r in rs],
            "peak_rss_run_spread": _spread([r.get("peak_rss_run_mb") for r in rs]),
            "xla_temp_mb": [r["xla_temp_mb"] for r in rs],
            "xla_temp_spread": _spread([r["xla_temp_mb"] for r in rs]),
            "xla_temp_unchunked_mb": [r.get("xla_temp_unchunked_mb") for r in rs],
            "xla_temp_unchunked_spread": _spread(
                [r.get("xla_temp_unchunked_mb") for r in rs]
            ),
            "x_spread": max(xs) / min(xs),
            # time / x at each point: constant for a line through the origin
            "s_per_x": [r["steady_s_min"] / x for r, x in zip(rs, xs, strict=True)],
        }
        if group == "trials":
            g["s_per_trial"] = fit["slope"]
        else:
            g["s_per_image"] = fit["slope"]
            g["s_per_trial_image"] = fit["slope"] / rs[0]["trials"]
        out[group] = g
    models = [r for r in results if r["group"] == "models"]
    if models:
        out["models"] = {
            r["model"]: {
                "num_weights": r["num_weights"],
                "flops_per_image": r["flops_per_image"],
                "s_per_trial": r["s_per_trial"],
                "s_per_trial_image": r["s_per_trial"] / r["images"],
                "gflops": r["gflops"],
                "compile_s": r["compile_s"],
                "peak_rss_run_mb": r.get("peak_rss_run_mb"),
                "xla_temp_mb": r["xla_temp_mb"],
            }
            for r in models
        }
    return out


def _report(summary: dict) -> None:
    for group in ("trials", "images"):
        g = summary.get(group)
        if not g:
            continue
        f = g["fit"]
        unit = "s/trial" if group == "trials" else "s/image"
        print(
            f"{group:7s}: {f['slope']:.3g} {unit} + {f['intercept']:.3g} s, "
            f"R^2 {f['r2']:.4f}, max deviation {100 * f['max_rel_dev']:.1f} %, "
            f"time ~ {group}^{f['loglog_exponent']:.2f}; "
            f"{group} x{g['x_spread']:.0f} -> peak RSS "
            f"x{g['peak_rss_run_spread'] or 0:.2f}, "
            f"XLA temp x{g['xla_temp_spread'] or 0:.2f} chunked"
            + (
                f", x{g['xla_temp_unchunked_spread']:.2f} unchunked"
                if g["xla_temp_unchunked_spread"]
                else ""
            )
        )
    for name, m in summary.get("models", {}).items():
        print(
            f"{name:9s}: {m['num_weights']:>10,} weights, "
            f"{m['flops_per_image'] / 1e6:8.2f} MFLOP/image, "
            f"{m['s_per_trial']:.4f} s/trial, {m['gflops']:.1f} GFLOP/s, "
            f"compile {m['compile_s']:.1f} s, "
            f"peak RSS {m['peak_rss_run_mb'] or 0:.0f} MB"
        )


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.split(","))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small variant")
    parser.add_argument("--groups", default="trials,images,models")
    parser.add_argument("--trials", type=_ints, default=None, help="T list")
    parser.add_argument("--trial-images", type=int, default=None)
    parser.add_argument("--images", type=_ints, default=None, help="N list")
    parser.add_argument("--image-trials", type=int, default=None)
    parser.add_argument("--models", default=None, help="comma-separated names")
    parser.add_argument("--model-images", type=int, default=None)
    parser.add_argument("--model-trials", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--unchunked",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also compile the unchunked variants (default: not with --quick)",
    )
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--eval-batch-size", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=900.0, help="per case, s")
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("--output", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(RESULT_TAG + json.dumps(run_case(json.loads(args.child))), flush=True)
        return {}
    from uswim_jax.experiment import ExperimentConfig

    cfg = ExperimentConfig()
    p = dict(QUICK if args.quick else DEFAULTS)
    for name in (
        "trials",
        "trial_images",
        "images",
        "image_trials",
        "model_images",
        "model_trials",
        "repeats",
        "unchunked",
    ):
        if getattr(args, name) is not None:
            p[name] = getattr(args, name)
    if args.models:
        p["models"] = tuple(args.models.split(","))
    unknown = set(p["models"]) - set(MODEL_SHAPES)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}")
    groups = tuple(args.groups.split(","))
    cs = args.chunk_size or cfg.chunk_size
    bs = args.eval_batch_size or cfg.eval_batch_size
    output = args.output or (
        RESULTS.replace(".json", "_quick.json") if args.quick else RESULTS
    )
    info = machine_info()
    cases = make_cases(p, groups, cs, bs)
    print(
        f"{len(cases)} cases, chunk_size={cs}, eval_batch_size={bs}, "
        f"{'in process' if args.in_process else 'one subprocess each'}",
        flush=True,
    )
    results = []
    for case in cases:
        if args.in_process:
            r = run_case(case, measure_memory=False)
        else:
            r = run_in_subprocess(case, args.timeout)
        results.append(r)
        print(
            f"{r['group']:7s} {r['model']:9s} N={r['images']:5d} T={r['trials']:5d}: "
            f"compile {r['compile_s']:6.2f} s, first run {r['first_run_s']:7.3f} s, "
            f"steady {r['steady_s_min']:7.3f} s, peak RSS "
            f"{r.get('peak_rss_run_mb') or 0:6.0f} MB, XLA temp "
            f"{r['xla_temp_mb']:7.1f} MB"
            + (
                f" ({r['xla_temp_unchunked_mb']:.1f} unchunked)"
                if r.get("xla_temp_unchunked_mb") is not None
                else ""
            ),
            flush=True,
        )
    summary = summarize(results)
    print()
    _report(summary)
    out = {
        "benchmark": "mc_scaling",
        "quick": args.quick,
        **info,
        "load_average_end": list(os.getloadavg()),
        "chunk_size": cs,
        "eval_batch_size": bs,
        "device_model": "UniformVariation(sigma=0.3, sigma_verified=0.03)",
        "params": "fresh quantized models, key 0, exported",
        "data": "generated images, seed 0",
        "memory_method": (
            "in-process run: not measured"
            if args.in_process
            else "one subprocess per case: peak_rss_run_mb is VmHWM from "
            "/proc/self/status after resetting it (/proc/self/clear_refs) once "
            "compiled; peak_rss_total_mb is getrusage ru_maxrss (compile "
            "included); xla_temp_mb is the compiled executable's "
            "memory_analysis().temp_size_in_bytes"
        ),
        "flops_method": "XLA cost_analysis of the forward pass with XLA convolutions",
        "timing": "steady_s_min: best of `repeats` runs after the first; fits use it",
        "summary": summary,
        "cases": results,
    }
    write_result(out, output)
    return out


if __name__ == "__main__":
    main()
