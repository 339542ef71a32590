"""How trial-batched convolutions should run, measured per backend
(``uswim_jax.conv_paths``).

Run as ``python -m benchmarks.conv_paths`` (``--quick`` for a small CI-sized
variant; it runs on any backend). For each model, side by side in one process,
``uswim_jax.evaluate`` (its default sizes, jitted) under every policy:

- ``rule``: the default on CPU (one path per model: im2col, except in a model
  with a convolution of more than ``CPU_CONV_PATCH_ROWS`` patch rows, which
  runs every convolution as one XLA convolution per trial; on accelerators
  im2col throughout);
- ``measure``: the default on accelerators: the whole forward pass timed under
  the rule, each fixed path but the rule's and ``layers``, the fastest taken;
- ``layers``: each layer shape timed along every path, the fastest taken
  (greedy: one layer at a time);
- ``im2col``, ``per_trial``, ``xla``: that path for every convolution
  (``xla``: ``jax.vmap``'s batching rule, XLA's own batched convolution).

Models: LeNet written with plain ``lax``, ``flax.linen``, ``flax.nnx`` and
``equinox`` (``benchmarks.byom``'s), the project's ConvNet and ResNet-18
(32x32x3; width 16 and 64), one after the other. Steady times are the best of
the rounds (round robin over the model's policies, each round opened by an
untimed call; a sample is the mean of as many back-to-back calls as make it
last ``--min-call-s``, 1 s by default); compile seconds are XLA's compilations
during the first call (JAX's compile events); "measuring s" is what ``measure``
spent timing the candidates and what ``layers`` spent timing the layer shapes
(in their first calls, compilation included; ``measure`` times ``layers`` as
one of its candidates, so ``layers`` reuses those timings, and a model that
traces to the same program as an earlier one reuses its measurement). On an
accelerator the sizes are larger (LeNet 1,000 trials x 2,000 images, ConvNet
and ResNet-18 width 16 100 x 2,000, width 64 100 x 500), and ``per_trial`` is
left out where a chunk holds more than ``MEASURE_PER_TRIAL_MAX`` trials. The
JSON records, per model and policy, the path each layer shape took
(``conv_path_log``) and whether the per-trial accuracies equal the rule's.
Writes ``benchmarks/results/conv_paths.json`` (``conv_paths_quick.json`` with
``--quick``) after every model, so a run stopped by a time limit keeps the
models it finished (``"complete"`` says whether every planned model is in)."""

import collections
import os

import jax
import jax.numpy as jnp
import numpy as np

import uswim_jax as uj
from benchmarks._common import (
    case_parser,
    first_call,
    generated_images,
    machine_info,
    matmul_gflops,
    measuring_seconds,
    only_cases,
    project,
    timed_rounds,
    write_result,
)
from benchmarks.byom import (
    crossbar,
    lenet_equinox,
    lenet_lax,
    lenet_linen,
    lenet_nnx,
)
from uswim_jax import _trialbatch
from uswim_jax.montecarlo import evaluate, resolve_sizes

RESULTS = os.path.join(os.path.dirname(__file__), "results", "conv_paths.json")
POLICIES = ("rule", "measure", "layers", *_trialbatch.CONV_PATHS)
#: A timed sample lasts at least this long (``_common.timed_rounds``).
MIN_CALL_S = 1.0


def cases(quick: bool) -> dict:
    """name -> (builder, input shape, (trials, images))."""
    big = quick or jax.default_backend() == "cpu"
    lenet = (8, 80) if quick else (20, 400) if big else (1000, 2000)
    return {
        "LeNet, plain lax": (lenet_lax, (28, 28, 1), lenet),
        "LeNet, flax.linen": (lenet_linen, (28, 28, 1), lenet),
        "LeNet, flax.nnx": (lenet_nnx, (28, 28, 1), lenet),
        "LeNet, equinox": (lenet_equinox, (1, 28, 28), lenet),
        "ConvNet, project": (
            project("convnet"),
            (32, 32, 3),
            (4, 16) if quick else (6, 96) if big else (100, 2000),
        ),
        "ResNet-18 width 16, project": (
            project("resnet18", width=16),
            (32, 32, 3),
            (4, 16) if quick else (8, 96) if big else (100, 2000),
        ),
        "ResNet-18 width 64, project": (
            project("resnet18"),
            (32, 32, 3),
            (2, 8) if quick else (4, 32) if big else (100, 500),
        ),
    }


def _policies(chunk: int) -> list[str]:
    """The policies timed for a model evaluated in chunks of ``chunk`` trials:
    all of them, except ``per_trial`` on an accelerator for chunks of more than
    ``MEASURE_PER_TRIAL_MAX`` trials (one convolution per trial and layer is
    minutes of compilation there, and ``measure`` leaves it out too)."""
    if jax.default_backend() != "cpu" and chunk > _trialbatch.MEASURE_PER_TRIAL_MAX:
        return [p for p in POLICIES if p != "per_trial"]
    return list(POLICIES)


def _paths(log: list[dict]) -> dict[str, int]:
    """How many layer shapes took each path."""
    return dict(collections.Counter(r["path"] for r in log if "conv" in r))


def _chosen(log: list[dict]) -> str | None:
    """The policy ``measure`` chose (``None`` where it did not run)."""
    return next((r["path"] for r in log if "model" in r), None)


def _reused(log: list[dict]) -> bool:
    """Whether ``measure`` reused an earlier case's measurement."""
    return any(r["reused"] for r in log if "model" in r)


def _case(m: dict, logs: dict, accs: dict, firsts: dict, times: dict) -> dict:
    """One model's row of the JSON from its first calls (seconds and compile
    seconds) and timed rounds (dicts keyed by policy)."""
    rule = accs["rule"]
    per = {}
    for policy in m["policies"]:
        ts, log = times[policy], logs[policy]
        diff = accs[policy] - rule
        per[policy] = {
            "trials_per_s": m["num_trials"] / min(ts),
            "steady_s_min": min(ts),
            "steady_s_median": float(np.median(ts)),
            "first_call_s": firsts[policy][0],
            "compile_s": firsts[policy][1],
            "paths": _paths(log),
            "chosen": _chosen(log),
            "measuring_s": measuring_seconds(log),
            "measurement_reused": _reused(log),
            "layers": log,
            "trials_differing_from_rule": int(np.sum(diff != 0)),
            "max_abs_acc_diff_vs_rule": float(np.max(np.abs(diff))),
        }
    base = per["rule"]["trials_per_s"]
    for p in per.values():
        p["x_rule"] = p["trials_per_s"] / base
    return {
        **m,
        "policies": per,
        "measuring_s": per["measure"]["measuring_s"],
        "fastest_policy": max(per, key=lambda p: per[p]["trials_per_s"]),
    }


def main(argv=None) -> dict:
    parser = case_parser(__doc__)
    parser.add_argument(
        "--min-call-s",
        type=float,
        default=None,
        help=f"each timed sample repeats a call until it lasts this long "
        f"(default {MIN_CALL_S}, 0 with --quick; 0 for one call)",
    )
    args = parser.parse_args(argv)
    models = only_cases(parser, cases(args.quick), args.only)
    q = args.quick
    repeats = args.repeats or (1 if q else 5)
    min_call_s = args.min_call_s
    if min_call_s is None:
        min_call_s = 0.0 if q else MIN_CALL_S
    output = args.output or (RESULTS.replace(".json", "_quick.json") if q else RESULTS)
    peaks = [matmul_gflops()]
    print(f"float32 matmul 2048^3: {peaks[0]:.1f} GFLOP/s", flush=True)
    table = {}
    out = {
        "benchmark": "conv_paths",
        "quick": q,
        **machine_info(),
        "repeats": repeats,
        "min_call_s": min_call_s,
        "policies": list(POLICIES),
        "auto_policy": "rule" if jax.default_backend() == "cpu" else "measure",
        "cpu_conv_patch_rows": _trialbatch.CPU_CONV_PATCH_ROWS,
        "conv_tie": _trialbatch.CONV_TIE,
        "device_model": "UniformVariation(sigma=0.3, sigma_verified=0.03)",
        "data": "uniform-noise images, labels = noise-free predictions",
        "models_planned": list(models),
        "matmul_gflops_before_and_after_each_model": peaks,
        "cases": table,
    }
    device_model = uj.UniformVariation(0.3, 0.03, crossbar=crossbar)
    key = jax.random.key(42)
    for name, (build, shape, (t, n)) in models.items():
        params, apply_fn = build(jax.random.key(0))
        x = jnp.asarray(generated_images(n, shape)[0])
        y = jnp.argmax(jax.jit(apply_fn)(params, x), axis=-1)
        flags = uj.crossbar_flags(params, crossbar)
        chunk, b = resolve_sizes(apply_fn, params, x, t, batched=flags)[:2]
        m = {
            "input_shape": list(shape),
            "num_trials": t,
            "num_images": n,
            "auto_chunk_size": chunk,
            "auto_eval_batch_size": b,
            "policies": _policies(chunk),
        }
        print(f"{name}: {t} trials x {n} images, chunk {chunk}, batch {b}", flush=True)
        calls = {}
        for policy in m["policies"]:
            ev = jax.jit(
                lambda key, params, x, y, t=t, apply_fn=apply_fn: (
                    evaluate(
                        key, apply_fn, params, x, y, device_model, None, t
                    ).accuracies
                )
            )

            def call(ev=ev, policy=policy, params=params, x=x, y=y):
                with uj.conv_paths(policy):  # read when ev is first traced
                    return ev(key, params, x, y)

            calls[policy] = call
        # first calls one by one, each with its own log of the paths taken
        logs, accs, firsts = {}, {}, {}
        for policy, call in calls.items():
            uj.conv_path_log(clear=True)
            res, *firsts[policy] = first_call(call)
            logs[policy], accs[policy] = uj.conv_path_log(clear=True), np.asarray(res)
            print(
                f"first call {name} / {policy:36s} {firsts[policy][0]:8.2f} s, "
                f"{firsts[policy][1]:.2f} s of it compiling",
                flush=True,
            )
        times, ks = timed_rounds(calls, repeats, min_call_s=min_call_s, opener=True)
        peaks.append(matmul_gflops())
        m["calls_per_sample"] = ks
        table[name] = c = _case(m, logs, accs, firsts, times)
        print(
            f"{name:30s} "
            + " ".join(
                f"{p}={c['policies'][p]['trials_per_s']:.2f}" for p in c["policies"]
            )
            + f"  measuring {c['measuring_s']:.1f} s, measure chose "
            f"{c['policies']['measure']['chosen']}",
            flush=True,
        )
        # after every model: a run stopped by its time limit keeps those done
        out["load_average_end"] = list(os.getloadavg())
        out["complete"] = len(table) == len(models)
        write_result(out, output)
    return out


if __name__ == "__main__":
    main()
