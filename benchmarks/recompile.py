"""Compile time apart from run time, and proof that sweeping the device std or the
budget does not recompile.

Run as ``python -m benchmarks.recompile`` (``--quick`` for a small variant;
``--images``, ``--steps``, ``--trials``, ``--repeats``, ``--synthetic``,
``--output``). On LeNet (as in ``benchmarks/sweep_vs_serial.py``: the trained
run and MNIST test images when present, else fresh quantized params and
generated images) it jits two drivers once, the way ``uswim_jax.experiment``
does (the device model, the order and the budget counts are traced arguments;
the model, T and the chunk sizes are static):

- ``sweep``: :func:`uswim_jax.sweep` over K budget steps x T trials;
- ``evaluate``: :func:`uswim_jax.evaluate` with a write-verify mask built from
  the order and a traced count.

For each it records the first call split into tracing, lowering to MLIR and XLA
compilation (JAX's own ``/jax/core/compile/*_duration`` events, via
``jax.monitoring``) and the run time (the median of ``--repeats`` later calls,
with ``block_until_ready``). Then it calls the driver for every combination of
several sigmas (``UniformVariation(sigma, sigma / 10)``) and budgets (different
count arrays of the same length) and counts, during that loop, the compilations
of the driver, all compilations in the process, the driver's traces and its
``_cache_size()``; all must stay at zero new entries. As a control that the
counter sees recompilations, the same sweep jitted with sigma as a *static*
argument is called with two sigmas: it compiles twice.

Results go to ``benchmarks/results/recompile.json`` (``recompile_quick.json``
with ``--quick``).
"""

import argparse
import functools
import os
import statistics

import jax
import jax.numpy as jnp
import numpy as np

import uswim_jax as uj
from benchmarks._common import (
    RESULTS_DIR,
    block,
    compile_log,
    lenet_problem,
    machine_info,
    round_robin,
    write_result,
)
from uswim_jax.experiment.units import STATIC, _evaluate_jit, _sweep_jit
from uswim_jax.selection import mask_from_order
from uswim_jax.sweep import counts_for_fractions, sweep

RESULTS = os.path.join(RESULTS_DIR, "recompile.json")


@functools.partial(jax.jit, static_argnames=(*STATIC, "sigma"))
def sweep_static_sigma(
    key,
    params,
    x,
    y,
    order,
    counts,
    *,
    sigma,
    apply_fn,
    num_trials,
    chunk_size,
    eval_batch_size,
):
    """The control: sigma is static, so each value compiles anew."""
    device = uj.UniformVariation(sigma, sigma / 10)
    return sweep(
        key,
        apply_fn,
        params,
        x,
        y,
        device,
        order,
        counts,
        num_trials,
        chunk_size=chunk_size,
        eval_batch_size=eval_batch_size,
    ).accuracies


def measure_driver(log, jitted, static, settings, repeats) -> dict:
    """First call of ``jitted(*settings[0], **static)`` (split into trace, lower,
    compile and the rest), its steady state, then one call per setting while
    counting compilations and traces."""
    name = jitted.__name__
    fn = functools.partial(jitted, **static)
    first = settings[0]
    m = log.mark()
    out0, t_first = block(lambda: fn(*first))
    ev = log.since(m, name)
    times = [block(lambda: fn(*first))[1] for _ in range(repeats)]
    cache_first = jitted._cache_size()
    m = log.mark()
    loop_times, means = [], []
    for s in settings:
        out, t = block(lambda s=s: fn(*s))
        loop_times.append(t)
        acc = getattr(out, "accuracies", out)
        means.append(float(np.mean(np.asarray(acc))))
    loop_all = log.since(m)
    loop_own = log.since(m, name)
    steady = statistics.median(times)
    r = {
        "first_call_s": t_first,
        "trace_s": ev["trace_s"],
        "lower_s": ev["lower_s"],
        "compile_s": ev["compile_s"],
        "compiles_first_call": ev["compile_count"],
        "run_s_steady_median": steady,
        "run_s_steady_min": min(times),
        "first_call_over_steady": t_first / steady,
        "compile_fraction_of_first_call": ev["compile_s"] / t_first,
        "cache_size_after_first": cache_first,
        "loop_calls": len(settings),
        "loop_call_s_median": statistics.median(loop_times),
        "loop_call_s_max": max(loop_times),
        "loop_compiles_driver": loop_own["compile_count"],
        "loop_traces_driver": loop_own["trace_count"],
        "loop_compiles_all": loop_all["compile_count"],
        "cache_size_after_loop": jitted._cache_size(),
        "loop_mean_accuracy": means,
    }
    print(
        f"{name:16s} first call {t_first:6.2f} s = trace {ev['trace_s']:.2f} + "
        f"lower {ev['lower_s']:.2f} + compile {ev['compile_s']:.2f} + rest; "
        f"steady {steady:.3f} s; {len(settings)} settings: "
        f"{loop_own['compile_count']} compiles, {loop_own['trace_count']} traces "
        f"({loop_all['compile_count']} compiles in the process), cache size "
        f"{cache_first} -> {r['cache_size_after_loop']}",
        flush=True,
    )
    del out0
    return r


def sweep_against_evaluates(
    static, key, params, x, y, device, order, counts, repeats
) -> dict:
    """The sweep's steady time against the same evaluations made one
    ``evaluate`` call each (its K steps, then exhaustive and no write-verify),
    timed in round robin in this run; the per-trial accuracies are compared."""
    every = jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), params)
    none = jax.tree.map(lambda w: jnp.zeros(jnp.shape(w), bool), params)
    masks = [
        mask_from_order(order, params, count=jnp.int32(c), predicate=device.crossbar)
        for c in counts
    ] + [every, none]
    sweep_fn = functools.partial(_sweep_jit, **static)
    eval_fn = functools.partial(_evaluate_jit, **static)
    timings, outs = round_robin(
        {
            "sweep": lambda: sweep_fn(
                key, params, x, y, device, order, counts, None, None
            ),
            "evaluate per step": lambda: [
                eval_fn(key, params, x, y, device, m).accuracies for m in masks
            ],
        },
        max(repeats, 3),
    )
    c = outs["sweep"]
    ours = np.concatenate(
        [
            np.asarray(c.accuracies),
            np.asarray(c.reference)[None],
            np.asarray(c.baseline)[None],
        ]
    )
    same = bool(
        np.array_equal(
            ours, np.stack([np.asarray(a) for a in outs["evaluate per step"]])
        )
    )
    ratio = (
        timings["sweep"]["steady_s_min"] / timings["evaluate per step"]["steady_s_min"]
    )
    print(
        f"sweep {timings['sweep']['steady_s_min']:.2f} s against {len(masks)} "
        f"evaluate calls {timings['evaluate per step']['steady_s_min']:.2f} s "
        f"(x{ratio:.2f}, round robin); per-trial accuracies identical: {same}",
        flush=True,
    )
    return {
        "evaluations": len(masks),
        "timings": timings,
        "sweep_over_evaluates": ratio,
        "accuracies_identical": same,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small variant")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="K budget steps")
    parser.add_argument("--trials", type=int, default=None, help="T trials")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--no-control", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    from uswim_jax.experiment import ExperimentConfig

    cfg = ExperimentConfig()
    log = compile_log()
    num_images = args.images or (100 if args.quick else 500)
    num_steps = args.steps or (3 if args.quick else 10)
    num_trials = args.trials or (5 if args.quick else cfg.num_trials)
    repeats = args.repeats or (2 if args.quick else 3)
    output = args.output or (
        RESULTS.replace(".json", "_quick.json") if args.quick else RESULTS
    )
    sigmas = (0.1, 0.3) if args.quick else (0.1, 0.2, 0.3, 0.5)
    spans = ((0.001, 0.5), (0.01, 0.9)) if args.quick else (
        (0.001, 0.5),
        (0.002, 0.3),
        (0.01, 0.9),
    )  # fmt: skip

    info = machine_info()
    model, params, x, y, sources = lenet_problem(num_images, synthetic=args.synthetic)
    n = model.num_weights(params)
    order = uj.global_order(uj.magnitude_score(params))
    budgets = [
        jnp.asarray(counts_for_fractions(np.geomspace(a, b, num_steps), n))
        for a, b in spans
    ]
    devices = [uj.UniformVariation(s, s / 10) for s in sigmas]
    key = jax.random.key(0)
    static = {
        "apply_fn": model.apply_fn,
        "num_trials": num_trials,
        "chunk_size": cfg.chunk_size,
        "eval_batch_size": cfg.eval_batch_size,
    }
    print(
        f"LeNet, {int(x.shape[0])} images, K={num_steps}, T={num_trials}, "
        f"{len(sigmas)} sigmas x {len(budgets)} budgets; {sources}",
        flush=True,
    )
    # No end points passed in: the sweep computes them in the same call.
    sweep_settings = [
        (key, params, x, y, d, order, c, None, None) for d in devices for c in budgets
    ]
    counts = [jnp.int32(c) for c in budgets[0][:: max(num_steps // 3, 1)]]
    masks = [
        mask_from_order(order, params, count=c, predicate=devices[0].crossbar)
        for c in counts
    ]
    eval_settings = [(key, params, x, y, d, m) for d in devices for m in masks]
    drivers = {
        "sweep": measure_driver(log, _sweep_jit, static, sweep_settings, repeats),
        "evaluate": measure_driver(log, _evaluate_jit, static, eval_settings, repeats),
    }
    paired = sweep_against_evaluates(
        static, key, params, x, y, devices[0], order, budgets[0], repeats
    )
    control = None
    if not args.no_control:
        control = {"sigmas": list(sigmas[:2]), "compile_s": [], "compiles": 0}
        for s in sigmas[:2]:
            m = log.mark()
            block(lambda s=s: sweep_static_sigma(
                key, params, x, y, order, budgets[0], sigma=s, **static
            ))  # fmt: skip
            ev = log.since(m, "sweep_static_sigma")
            control["compiles"] += ev["compile_count"]
            control["compile_s"].append(ev["compile_s"])
        control["cache_size"] = sweep_static_sigma._cache_size()
        print(
            f"control (sigma static): {control['compiles']} compiles for "
            f"{len(control['sigmas'])} sigmas, "
            f"{', '.join(f'{t:.2f}' for t in control['compile_s'])} s each",
            flush=True,
        )
    no_recompile = all(
        d["loop_compiles_driver"] == 0
        and d["loop_traces_driver"] == 0
        and d["loop_compiles_all"] == 0
        and d["cache_size_after_loop"] == d["cache_size_after_first"]
        for d in drivers.values()
    )
    print(f"no recompilation across sigmas and budgets: {no_recompile}")
    out = {
        "benchmark": "recompile",
        "quick": args.quick,
        **info,
        "load_average_end": list(os.getloadavg()),
        "sources": sources,
        "model": "lenet",
        "num_images": int(x.shape[0]),
        "num_steps": num_steps,
        "num_trials": num_trials,
        "chunk_size": cfg.chunk_size,
        "eval_batch_size": cfg.eval_batch_size,
        "repeats": repeats,
        "sigmas": list(sigmas),
        "budget_fraction_spans": [list(s) for s in spans],
        "method": "jax.monitoring duration events "
        "(/jax/core/compile/{jaxpr_trace,jaxpr_to_mlir_module,backend_compile}"
        "_duration) counted per function name, and the jitted function's "
        "_cache_size()",
        "no_recompile": no_recompile,
        "drivers": drivers,
        "sweep_vs_evaluates": paired,
        "control_static_sigma": control,
    }
    write_result(out, output)
    return out


if __name__ == "__main__":
    main()
