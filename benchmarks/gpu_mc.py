"""Monte Carlo throughput of ``uswim_jax.evaluate`` on an accelerator.

The project's LeNet over 2,000 MNIST-shaped images at 100 to 10,000 trials,
the same LeNet written by a user with plain lax, flax.linen, flax.nnx and
equinox (``benchmarks.byom``'s) at 1,000 trials, and ResNet-18 at CIFAR shapes
(32x32x3) at 100 and 1,000 trials, each against a serial loop of the same jitted
single-trial forward pass, the accelerator's measured dense matmul rate (float32
at JAX's default precision, and bfloat16) and a memory roofline: every matmul
and convolution output of a trial written and read once, at the memory
bandwidth measured in the same run (``x + 1`` on a 4 GiB array). The project's
models also run under the ``im2col`` and ``xla`` conv paths at the middle trial
count, beside ``auto`` (``measure`` on accelerators; its log records each
candidate's time). FLOPs are counted from the jaxpr (matmuls and convolutions),
so any model is counted the same way. Inputs are random (throughput does not
depend on the pixel values); params are freshly initialised. The JSON is
written after every model, so a run cut short keeps the models it finished.

    python -m benchmarks.gpu_mc --out benchmarks/results/mc_gpu.json
    python -m benchmarks.gpu_mc --smoke      # tiny sizes, any backend
    (without an accelerator and without --smoke/--force it skips)
"""

import argparse
import json

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np

import uswim_jax as u
from benchmarks._common import (
    forward_flops,
    machine_info,
    matmul_gflops,
    measuring_seconds,
    project,
    round_robin,
)
from uswim_jax.montecarlo import evaluate


def _time(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds, median of ``repeats`` later calls)."""
    r = round_robin({"": fn}, repeats, log=lambda s: None)[0][""]
    return r["first_call_s"], r["steady_s_median"]


def _boundary_bytes(jaxpr) -> float:
    """Bytes of every matmul and convolution output in a jaxpr (nested jaxprs
    included), written once and read once: what must cross memory when
    everything between two such layers is fused."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            a = eqn.outvars[0].aval
            total += 2.0 * np.prod(a.shape) * np.dtype(a.dtype).itemsize
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += _boundary_bytes(sub)
    return total


def copy_rate(nbytes: int, repeats: int) -> float:
    """Device memory bandwidth in GB/s: ``x + 1`` on a float32 array of
    ``nbytes`` (one read and one write of it)."""
    a = jnp.zeros(nbytes // 4, jnp.float32)
    f = jax.jit(lambda a: a + 1)
    _, t = _time(lambda: f(a), repeats)
    return 2 * nbytes / t / 1e9


def user_lenets() -> dict:
    """``benchmarks.byom``'s LeNets written with plain lax, flax.linen,
    flax.nnx and equinox: name -> (builder, input shape, crossbar), or ``{}``
    with the reason printed where flax or equinox cannot be imported."""
    try:
        from benchmarks import byom
    except ImportError as e:
        print(f"gpu_mc: the user-written LeNets are left out ({e})", flush=True)
        return {}
    out = {}
    for name, build, shape in (
        ("lenet, plain lax", byom.lenet_lax, (28, 28, 1)),
        ("lenet, flax.linen", byom.lenet_linen, (28, 28, 1)),
        ("lenet, flax.nnx", byom.lenet_nnx, (28, 28, 1)),
        ("lenet, equinox", byom.lenet_equinox, (1, 28, 28)),
    ):
        out[name] = (build, shape, byom.crossbar)
    return out


def bench_model(
    name,
    build,
    input_shape,
    n_images,
    trials,
    chunk,
    repeats,
    serial_trials,
    crossbar=None,
    compare_paths=True,
    bandwidth_gbs=None,
):
    """``evaluate`` on the model ``build(key)`` at each of ``trials`` (policy
    ``auto``), and, with ``compare_paths``, under ``im2col`` and ``xla`` at the
    middle one, against a serial loop of ``serial_trials``."""
    params, apply_fn = build(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (n_images, *input_shape))
    y = jax.random.randint(jax.random.key(2), (n_images,), 0, 10)
    device = u.UniformVariation(0.2, 0.02, crossbar=crossbar or u.default_crossbar)
    jaxpr = jax.make_jaxpr(apply_fn)(params, x).jaxpr
    flops = forward_flops(jaxpr)
    traffic = _boundary_bytes(jaxpr)
    out = {
        "model": name,
        "input_shape": list(input_shape),
        "images": n_images,
        "forward_flops": flops,
        "boundary_bytes_per_trial": traffic,
        "runs": [],
    }
    if bandwidth_gbs:
        # the memory roofline: matmul/conv outputs written and read once per
        # trial at the measured bandwidth
        out["memory_roofline_trials_per_s"] = bandwidth_gbs * 1e9 / traffic

    std = device.effective_std(params, None)
    one = jax.jit(
        lambda k, p: u.montecarlo.noisy_accuracy(
            k, apply_fn, p, std, x, y, crossbar=device.crossbar
        )
    )
    keys = u.montecarlo.trial_keys(jax.random.key(3), serial_trials)

    def serial():
        return [one(k, params) for k in keys]

    first, t = _time(serial, 1)
    out["serial"] = {
        "trials": serial_trials,
        "trials_per_s": serial_trials / t,
        "first_call_s": first,
        "tflops": serial_trials * flops / t / 1e12,
    }
    print(f"{name}: serial loop {serial_trials / t:9.1f} trials/s", flush=True)
    policies = [(T, "auto") for T in trials]
    # the whole-model comparison of the paths at one size (measure's log holds
    # the per-layer one)
    if compare_paths:
        policies += [(trials[len(trials) // 2], p) for p in ("im2col", "xla")]
    for T, policy in policies:
        f = jax.jit(
            lambda k, p, T=T: (
                evaluate(
                    k,
                    apply_fn,
                    p,
                    x,
                    y,
                    device,
                    None,
                    T,
                    chunk_size=min(chunk, T),
                ).accuracies
            )
        )
        u.conv_path_log(clear=True)
        with u.conv_paths(policy):  # read when f is first traced
            first, t = _time(lambda f=f: f(jax.random.key(3), params), repeats)
        log = u.conv_path_log(clear=True)
        r = {
            "trials": T,
            "conv_policy": policy,
            "conv_paths": log,
            "measuring_s": measuring_seconds(log),
            "chunk_size": min(chunk, T),
            "first_call_s": first,
            "steady_s": t,
            "trials_per_s": T / t,
            "tflops": T * flops / t / 1e12,
        }
        out["runs"].append(r)
        print(
            f"{name}: T={T:6d} chunk={r['chunk_size']:4d} {policy:7s} "
            f"{r['trials_per_s']:10.1f} trials/s {r['tflops']:7.2f} TFLOP/s "
            f"(compile+first {first:.1f} s)",
            flush=True,
        )
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/mc_gpu.json")
    p.add_argument(
        "--smoke", "--quick", action="store_true", help="tiny sizes, any backend"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="run the full sizes even without an accelerator",
    )
    args = p.parse_args(argv)
    if jax.default_backend() == "cpu" and not (args.smoke or args.force):
        print(
            "gpu_mc: no accelerator; skipped (--smoke for tiny sizes, --force "
            "to run the full sizes on the CPU)"
        )
        return {}
    if args.smoke:
        sizes = {
            "matmul": 256,
            "copy_bytes": 1 << 22,
            "lenet": (64, [4, 8], 4, 4),
            "user_lenet": (64, [8], 4, 4),
            "resnet": (8, [2], 2, 2),
            "repeats": 1,
        }
    else:
        sizes = {
            "matmul": 8192,
            "copy_bytes": 1 << 32,
            "lenet": (2000, [100, 1000, 10000], 100, 20),
            "user_lenet": (2000, [1000], 100, 20),
            "resnet": (500, [100, 1000], 50, 5),
            "repeats": 3,
        }
    repeats = sizes["repeats"]
    result = {
        **machine_info(),
        "matmul_tflops_f32_default_precision": (
            matmul_gflops(sizes["matmul"], repeats, jnp.float32) / 1e3
        ),
        "matmul_tflops_bf16": matmul_gflops(sizes["matmul"], repeats, jnp.bfloat16)
        / 1e3,
        "memory_gbs": copy_rate(sizes["copy_bytes"], repeats),
        "models": [],
    }
    bw = result["memory_gbs"]
    print(
        f"matmul f32 {result['matmul_tflops_f32_default_precision']:.1f} TFLOP/s, "
        f"bf16 {result['matmul_tflops_bf16']:.1f} TFLOP/s, memory {bw:.0f} GB/s",
        flush=True,
    )
    peak = result["matmul_tflops_f32_default_precision"]
    cases = [("lenet", project("lenet"), (28, 28, 1), None, True)]
    cases += [
        (name, build, shape, crossbar, False)
        for name, (build, shape, crossbar) in user_lenets().items()
    ]
    cases.append(("resnet18", project("resnet18"), (32, 32, 3), None, True))
    for name, build, shape, crossbar, compare in cases:
        key = "resnet" if name == "resnet18" else "lenet" if compare else "user_lenet"
        n, trials, chunk, serial = sizes[key]
        m = bench_model(
            name, build, shape, n, trials, chunk, repeats, serial,
            crossbar=crossbar, compare_paths=compare, bandwidth_gbs=bw,
        )  # fmt: skip
        best = max(
            (r for r in m["runs"] if r["conv_policy"] == "auto"),
            key=lambda r: r["tflops"],
        )
        m["best_fraction_of_f32_matmul"] = best["tflops"] / peak
        m["speedup_over_serial"] = best["trials_per_s"] / m["serial"]["trials_per_s"]
        m["best_fraction_of_memory_roofline"] = (
            best["trials_per_s"] / m["memory_roofline_trials_per_s"]
        )
        result["models"].append(m)
        with open(args.out, "w") as f:  # after every model: a timeout keeps them
            json.dump(result, f, indent=2)
    print(
        json.dumps(
            {
                m["model"]: {
                    "best_fraction_of_f32_matmul": round(
                        m["best_fraction_of_f32_matmul"], 3
                    ),
                    "best_fraction_of_memory_roofline": round(
                        m["best_fraction_of_memory_roofline"], 3
                    ),
                    "speedup_over_serial": round(m["speedup_over_serial"], 1),
                }
                for m in result["models"]
            }
        ),
        flush=True,
    )
    return result


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
