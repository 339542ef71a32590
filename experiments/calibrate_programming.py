"""Re-derives the pulse model's default tolerance and step.

Targets (the Gaussian model's defaults, docs/method.md §2.3, §2.5): with the initial
write std ``sigma = DEFAULT_SIGMA`` (0.3 level steps), a write-verified device
should end with a residual std of ``DEFAULT_SIGMA_VERIFIED`` (0.03 level steps)
after about ``DEFAULT_VERIFY_CYCLES`` (10) pulses on average. ``pulse_sigma``,
``read_sigma`` and ``max_pulses`` stay at their defaults; ``tolerance`` and
``step`` are solved for by alternating bisections (residual std grows with the
tolerance, mean pulses fall with the step).

Run::

    python -m experiments.calibrate_programming [--devices 1000000] [--out DIR]

It prints the solution, the check at the library defaults (residual std relative
to ``sigma_verified``, mean pulses, failure rate), the same at the weight level
and a timing for programming all LeNet weights, and writes ``calibration.md`` and
``calibration.csv`` to ``results/calibration/``.
"""

import argparse
import csv
import dataclasses
import functools
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import uswim_jax
from uswim_jax.device import (
    DEFAULT_SIGMA,
    DEFAULT_SIGMA_VERIFIED,
    DEFAULT_VERIFY_CYCLES,
    UniformVariation,
)
from uswim_jax.programming import (
    PulseModel,
    program,
    program_devices,
    program_failed,
    write_cycles,
)

#: LeNet (docs/method.md §9) crossbar kernels, Flax layout: 105,918 weights.
LENET_SHAPES = {
    "Conv_0": (3, 3, 1, 6),
    "Conv_1": (3, 3, 6, 16),
    "Dense_0": (784, 120),
    "Dense_1": (120, 84),
    "Dense_2": (84, 10),
}


@functools.partial(jax.jit, static_argnames=("n", "seed"))
def _device_stats(model: PulseModel, n: int, seed: int) -> dict[str, jax.Array]:
    st = program_devices(jax.random.key(seed), model, jnp.ones((n,), jnp.bool_))
    f32 = jnp.float32
    return {
        "residual_std": jnp.std(st.error),
        "mean_pulses": jnp.mean(st.pulses.astype(f32)),
        "failure_rate": jnp.mean(program_failed(st).astype(f32)),
        "max_pulses_used": jnp.max(st.pulses).astype(f32),
    }


def device_stats(model: PulseModel, n: int, seed: int = 0) -> dict[str, float]:
    """Residual std, mean pulses and failure rate of ``n`` verified devices (one
    compilation for all models with the same static fields)."""
    return {k: float(v) for k, v in _device_stats(model, n, seed).items()}


def _bisect(fn, lo, hi, target, increasing, iters=30):
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        above = fn(mid) > target
        if above == increasing:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


def calibrate(n: int, rounds: int = 4) -> PulseModel:
    """Solves ``(tolerance, step)`` for the two targets."""
    model = PulseModel()
    for _ in range(rounds):
        tol = _bisect(
            lambda t, m=model: device_stats(dataclasses.replace(m, tolerance=t), n)[
                "residual_std"
            ],
            0.005,
            0.1,
            DEFAULT_SIGMA_VERIFIED,
            increasing=True,
            iters=18,
        )
        model = dataclasses.replace(model, tolerance=tol)
        step = _bisect(
            lambda s, m=model: device_stats(dataclasses.replace(m, step=s), n)[
                "mean_pulses"
            ],
            0.02,
            0.9,
            DEFAULT_VERIFY_CYCLES,
            increasing=False,
            iters=18,
        )
        model = dataclasses.replace(model, step=step)
    return model


def lenet_params(key: jax.Array) -> dict:
    """Random LeNet-shaped params (kernels and biases)."""
    params = {}
    for i, (name, shape) in enumerate(LENET_SHAPES.items()):
        k = jax.random.fold_in(key, i)
        params[name] = {
            "kernel": 0.1 * jax.random.normal(k, shape),
            "bias": jnp.zeros(shape[-1]),
        }
    return params


def lenet_check(model: PulseModel) -> dict[str, float]:
    """Programs all LeNet weights (all verified and none): weight-level residual
    std relative to the Gaussian model, and timings."""
    params = lenet_params(jax.random.key(1))
    verified = jax.tree.map(lambda x: jnp.ones(x.shape, jnp.bool_), params)
    fn = jax.jit(program)
    t0 = time.perf_counter()
    res = jax.block_until_ready(fn(jax.random.key(2), params, model, verified))
    compile_and_run = time.perf_counter() - t0
    times = []
    for i in range(3):
        t0 = time.perf_counter()
        res = jax.block_until_ready(fn(jax.random.key(3 + i), params, model, verified))
        times.append(time.perf_counter() - t0)
    gauss = UniformVariation(DEFAULT_SIGMA, DEFAULT_SIGMA_VERIFIED)
    _, std_v = gauss.std(params)
    ratios = []
    for name in LENET_SHAPES:
        err = res.params[name]["kernel"] - params[name]["kernel"]
        ratios.append(float(jnp.std(err) / std_v[name]["kernel"].reshape(-1)[0]))
    cyc = write_cycles(model, verified, result=res)
    plain = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.bool_), params)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(jax.random.key(9), params, model, plain))
    time_plain = time.perf_counter() - t0
    n_weights = uswim_jax.crossbar_size(params)
    return {
        "lenet_weights": n_weights,
        "lenet_devices": n_weights * model.devices_per_weight,
        "weight_residual_over_gaussian_min": min(ratios),
        "weight_residual_over_gaussian_max": max(ratios),
        "lenet_mean_pulses": float(cyc.total) / (n_weights * model.devices_per_weight),
        "lenet_time_first_call_s": compile_and_run,
        "lenet_time_steady_s": min(times),
        "lenet_time_nothing_verified_s": time_plain,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--out", default="results/calibration")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    solved = calibrate(args.devices)
    t_cal = time.perf_counter() - t0
    default = PulseModel()
    rows = []
    for label, model in (("solved", solved), ("library default", default)):
        stats = device_stats(model, args.devices, seed=7)
        rows.append(
            {
                "model": label,
                "sigma": float(model.sigma),
                "tolerance": float(model.tolerance),
                "step": float(model.step),
                "pulse_sigma": float(model.pulse_sigma),
                "read_sigma": float(model.read_sigma),
                "max_pulses": model.max_pulses,
                **stats,
                "residual_over_sigma_verified": stats["residual_std"]
                / DEFAULT_SIGMA_VERIFIED,
            }
        )
    sweep = []
    for sigma in (0.1, 0.2, 0.3, 0.5):
        stats = device_stats(dataclasses.replace(default, sigma=sigma), args.devices)
        sweep.append({"sigma": sigma, **stats})
    lenet = lenet_check(default)

    print(f"calibrated in {t_cal:.1f} s on {args.devices} devices per evaluation")
    for r in rows:
        print(
            f"{r['model']:>16}: tolerance={r['tolerance']:.4f} step={r['step']:.4f} "
            f"residual std={r['residual_std']:.4f} "
            f"({r['residual_over_sigma_verified']:.3f} x sigma_verified) "
            f"mean pulses={r['mean_pulses']:.2f} failure rate={r['failure_rate']:.2e} "
            f"max pulses={r['max_pulses_used']:.0f}"
        )
    for s in sweep:
        print(
            f"  sigma={s['sigma']:.1f}: residual std={s['residual_std']:.4f} "
            f"mean pulses={s['mean_pulses']:.2f} failures={s['failure_rate']:.2e}"
        )
    for k, v in lenet.items():
        print(f"  {k} = {v:.4g}" if isinstance(v, float) else f"  {k} = {v}")

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "calibration.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Pulse-model calibration",
        "",
        "Generated by `python -m experiments.calibrate_programming "
        f"--devices {args.devices}`.",
        f"JAX {jax.__version__}, backend {jax.default_backend()}, "
        f"{platform.processor() or platform.machine()}, "
        f"numpy {np.__version__}.",
        "",
        f"Targets: initial write std sigma = {DEFAULT_SIGMA} level steps; residual "
        f"std of a verified device = sigma_verified = {DEFAULT_SIGMA_VERIFIED}; "
        f"mean pulses per verified device = {DEFAULT_VERIFY_CYCLES:g}. "
        "Units: device level steps (per-weight std = value x c(8,1) x max|W_l|).",
        "",
        "| model | tolerance | step | pulse_sigma | read_sigma | max_pulses | "
        "residual std | / sigma_verified | mean pulses | failure rate | "
        "max pulses used |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['tolerance']:.4f} | {r['step']:.4f} | "
            f"{r['pulse_sigma']:g} | {r['read_sigma']:g} | {r['max_pulses']} | "
            f"{r['residual_std']:.4f} | {r['residual_over_sigma_verified']:.3f} | "
            f"{r['mean_pulses']:.2f} | {r['failure_rate']:.2e} | "
            f"{r['max_pulses_used']:.0f} |"
        )
    lines += [
        "",
        "Library defaults at other initial write stds (the residual follows the "
        "tolerance; the pulse count grows with log(sigma / tolerance)):",
        "",
        "| sigma | residual std | mean pulses | failure rate |",
        "|---|---|---|---|",
    ]
    for s in sweep:
        lines.append(
            f"| {s['sigma']:g} | {s['residual_std']:.4f} | {s['mean_pulses']:.2f} | "
            f"{s['failure_rate']:.2e} |"
        )
    lines += [
        "",
        "Weight level, all 105,918 LeNet weights x 8 devices programmed at the "
        "library defaults (random LeNet-shaped kernels, `jax.jit(program)`):",
        "",
        f"- std of (programmed - target) / Gaussian std_verified, per layer: "
        f"{lenet['weight_residual_over_gaussian_min']:.3f} to "
        f"{lenet['weight_residual_over_gaussian_max']:.3f}",
        f"- mean pulses per device, all verified: {lenet['lenet_mean_pulses']:.2f}",
        f"- time, all verified: first call (compile + run) "
        f"{lenet['lenet_time_first_call_s']:.2f} s, steady "
        f"{lenet['lenet_time_steady_s']:.3f} s; nothing verified "
        f"{lenet['lenet_time_nothing_verified_s']:.3f} s",
        "",
    ]
    (out / "calibration.md").write_text("\n".join(lines))
    print(f"wrote {out / 'calibration.md'} and {out / 'calibration.csv'}")


if __name__ == "__main__":
    main()
