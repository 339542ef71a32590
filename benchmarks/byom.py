"""Bring your own model: Monte Carlo throughput of ``evaluate`` on models written
the way users write them (issue 13).

Run as ``python -m benchmarks.byom`` (``--quick`` for a small CI-sized
variant). In one process, side by side:

- the dense float32 matmul rate (2048^3, best of 7), measured before the cases
  and after every round of them; the % column uses the highest;
- LeNet (the project's architecture: conv 6 and 16 3x3 pad 1, 2x2 max-pools,
  dense 784-120-84-10) written four ways: plain ``lax`` (a dict of arrays and a
  function), ``flax.linen``, ``flax.nnx`` (split state) and ``equinox``
  (``(C, H, W)`` modules vmapped over the images); and the project's own
  (plain Flax) LeNet, which goes through the same trial batching
  (``uswim_jax._trialbatch``); the ``x project`` column is each LeNet's
  trials/s over the project LeNet's;
- the project's ConvNet and ResNet-18 (32x32x3 input; ResNet width 64 and a
  narrow width 16), with fewer trials and images (stated per case): a ResNet-18
  forward pass is 0.56 GFLOP per image, so 100 trials of 2,000 images would take
  over half an hour on two cores;
- models beyond CNNs, in ``flax.linen``: an MLP (784-256-256-10), a two-block
  transformer (16 tokens of 49 features, width 64, 4 heads) and an RNN
  (``nn.RNN``, 28 steps of 28 features, width 64); and the project's vision
  transformer (28x28x1, patch 7, width 64, depth 6).

Each case is ``uswim_jax.evaluate`` as a user calls it (its defaults
``chunk_size="auto"`` and ``eval_batch_size="auto"``, jitted once; the sizes
they resolve to are recorded), against its own serial loop: a Python loop over
trials of the same jitted single-trial noisy forward pass (``noisy_accuracy``;
the loop is timed on a prefix of the trials and reported per trial). Steady-
state times are the best of the rounds (round robin over the cases, so load
changes hit all alike); compile seconds are XLA's compilations during the first
call (JAX's compile events, ``benchmarks._common.first_call``). GFLOP/s counts
2 x the multiply-accumulates of every convolution and matmul in the model's
jaxpr (the real layer shapes, not the extra columns an im2col path computes,
not the noise). Per-trial accuracies of ``evaluate`` are compared with the
serial loop's on the common trials. Each case also runs ``evaluate`` with
``chunk_size="measure"`` (the sizes timed among a few candidates in its first
call, in this run: no file of an earlier run is read), and records the sizes it
chose, each candidate's time per trial, the seconds measuring took and its
trials/s. Writes ``benchmarks/results/byom.json``
(``byom_quick.json`` with ``--quick``).
"""

import math
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import nnx
from jax import lax

import uswim_jax as uj
from benchmarks._common import (
    block,
    case_parser,
    first_call,
    generated_images,
    machine_info,
    matmul_gflops,
    model_flops,
    only_cases,
    project,
    write_result,
)
from uswim_jax.montecarlo import (
    evaluate,
    noisy_accuracy,
    resolve_sizes,
    trial_keys,
)

RESULTS = os.path.join(os.path.dirname(__file__), "results", "byom.json")
#: The case every LeNet is compared with (``x project``).
PROJECT_LENET = "LeNet, project"


def crossbar(path: str, leaf) -> bool:
    """Kernels in every framework's naming (nnx paths end in ``/value``)."""
    return np.ndim(leaf) >= 2 and any(
        s in ("kernel", "weight", "w") for s in path.split("/")
    )


# -- LeNet four ways ----------------------------------------------------------


def lenet_lax(key):
    ks = jax.random.split(key, 5)

    def init(k, shape):
        fan_in = math.prod(shape[:-1])
        return jax.random.normal(k, shape) / np.float32(np.sqrt(fan_in))

    p = {
        "conv1": {"w": init(ks[0], (3, 3, 1, 6)), "b": jnp.zeros(6)},
        "conv2": {"w": init(ks[1], (3, 3, 6, 16)), "b": jnp.zeros(16)},
        "fc1": {"w": init(ks[2], (784, 120)), "b": jnp.zeros(120)},
        "fc2": {"w": init(ks[3], (120, 84)), "b": jnp.zeros(84)},
        "fc3": {"w": init(ks[4], (84, 10)), "b": jnp.zeros(10)},
    }

    def conv_relu_pool(x, c):
        y = lax.conv_general_dilated(
            x,
            c["w"],
            (1, 1),
            ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        y = jax.nn.relu(y + c["b"][None, None, None, :])
        return lax.reduce_window(
            y, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
        )

    def apply_fn(p, x):
        x = conv_relu_pool(conv_relu_pool(x, p["conv1"]), p["conv2"])
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(x @ p["fc1"]["w"] + p["fc1"]["b"][None])
        x = jax.nn.relu(x @ p["fc2"]["w"] + p["fc2"]["b"][None])
        return x @ p["fc3"]["w"] + p["fc3"]["b"][None]

    return p, apply_fn


class _LinenLeNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        for f in (6, 16):
            x = nn.max_pool(nn.relu(nn.Conv(f, (3, 3), padding=1)(x)), (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(120)(x))
        x = nn.relu(nn.Dense(84)(x))
        return nn.Dense(10)(x)


def lenet_linen(key):
    m = _LinenLeNet()
    return m.init(key, jnp.zeros((1, 28, 28, 1), jnp.float32)), m.apply


class _NnxLeNet(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(1, 6, (3, 3), padding=1, rngs=rngs)
        self.conv2 = nnx.Conv(6, 16, (3, 3), padding=1, rngs=rngs)
        self.fc1 = nnx.Linear(784, 120, rngs=rngs)
        self.fc2 = nnx.Linear(120, 84, rngs=rngs)
        self.fc3 = nnx.Linear(84, 10, rngs=rngs)

    def __call__(self, x):
        x = nn.max_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
        x = nn.max_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        return self.fc3(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))


def lenet_nnx(key):
    graphdef, state = nnx.split(_NnxLeNet(nnx.Rngs(params=key)))
    return state, lambda s, x: nnx.merge(graphdef, s)(x)


class _EqxLeNet(eqx.Module):
    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    fc3: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 5)
        self.conv1 = eqx.nn.Conv2d(1, 6, 3, padding=1, key=k[0])
        self.conv2 = eqx.nn.Conv2d(6, 16, 3, padding=1, key=k[1])
        self.fc1 = eqx.nn.Linear(784, 120, key=k[2])
        self.fc2 = eqx.nn.Linear(120, 84, key=k[3])
        self.fc3 = eqx.nn.Linear(84, 10, key=k[4])

    def __call__(self, x):  # one (C, H, W) image
        pool = eqx.nn.MaxPool2d(2, 2)
        x = pool(jax.nn.relu(self.conv1(x)))
        x = pool(jax.nn.relu(self.conv2(x)))
        x = jax.nn.relu(self.fc1(x.reshape(-1)))
        return self.fc3(jax.nn.relu(self.fc2(x)))


def lenet_equinox(key):
    params, static = eqx.partition(_EqxLeNet(key), eqx.is_array)
    return params, lambda p, x: jax.vmap(eqx.combine(p, static))(x)


# -- beyond CNNs (flax.linen) ---------------------------------------------------


class _Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for width in (256, 256):
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(10)(x)


class _Transformer(nn.Module):
    """Two pre-norm blocks (4 heads, width 64, MLP 128) over 16 tokens."""

    @nn.compact
    def __call__(self, x):  # (N, 16 tokens, 49 features)
        h = nn.Dense(64)(x)
        for _ in range(2):
            h = h + nn.SelfAttention(num_heads=4, qkv_features=64)(nn.LayerNorm()(h))
            h = h + nn.Dense(64)(nn.gelu(nn.Dense(128)(nn.LayerNorm()(h))))
        return nn.Dense(10)(nn.LayerNorm()(h).mean(1))


class _Rnn(nn.Module):
    """An Elman RNN (``nn.RNN`` of ``nn.SimpleCell``, width 64): a scan."""

    @nn.compact
    def __call__(self, x):  # (N, 28 steps, 28 features)
        return nn.Dense(10)(nn.RNN(nn.SimpleCell(64))(x)[:, -1])


def _jitted_evaluate(apply_fn, device_model, t: int, **kw):
    """``evaluate``'s per-trial accuracies of ``t`` trials, jitted, as a user
    calls it (``kw``: its size arguments, the defaults when empty)."""
    return jax.jit(
        lambda key, params, x, y: (
            evaluate(
                key, apply_fn, params, x, y, device_model, None, t, **kw
            ).accuracies
        )
    )


def linen_case(module: nn.Module, shape: tuple, layout: str, sizes: tuple) -> tuple:
    """The case of a flax.linen ``module`` on inputs of ``shape``: ``(build,
    shape, layout, (trials, images, serial trials))``."""

    def build(key):
        return module.init(key, jnp.zeros((1, *shape), jnp.float32)), module.apply

    return build, shape, layout, sizes


# -- cases ----------------------------------------------------------------------

#: What each case runs: evaluate with its defaults, the serial loop, and
#: evaluate with ``chunk_size="measure"`` (its sizes timed in the first call).
KINDS = ("evaluate", "serial", "measure")


def main(argv=None) -> dict:
    parser = case_parser(__doc__)
    args = parser.parse_args(argv)
    q = args.quick
    repeats = args.repeats or (1 if q else 2)
    lenet = (20, 200, 4) if q else (100, 2000, 20)  # trials, images, serial trials
    cases = {
        "LeNet, plain lax": (lenet_lax, (28, 28, 1), "NHWC", lenet),
        "LeNet, flax.linen": (lenet_linen, (28, 28, 1), "NHWC", lenet),
        "LeNet, flax.nnx": (lenet_nnx, (28, 28, 1), "NHWC", lenet),
        "LeNet, equinox": (lenet_equinox, (1, 28, 28), "NCHW", lenet),
        PROJECT_LENET: (project("lenet"), (28, 28, 1), "NHWC", lenet),
        "ConvNet, project": (
            project("convnet"),
            (32, 32, 3),
            "NHWC",
            (4, 40, 2) if q else (10, 200, 3),
        ),
        "ResNet-18 width 16, project": (
            project("resnet18", width=16),
            (32, 32, 3),
            "NHWC",
            (4, 40, 2) if q else (20, 400, 3),
        ),
        "ResNet-18 width 64, project": (
            project("resnet18"),
            (32, 32, 3),
            "NHWC",
            (2, 20, 1) if q else (10, 100, 2),
        ),
        "MLP 784-256-256-10, flax.linen": linen_case(
            _Mlp(), (28, 28, 1), "NHWC", lenet
        ),
        "Transformer, 2 blocks, flax.linen": linen_case(
            _Transformer(), (16, 49), "tokens", (4, 40, 2) if q else (20, 500, 4)
        ),
        "RNN, 28 steps, flax.linen": linen_case(_Rnn(), (28, 28), "steps", lenet),
        "ViT, project": (
            project("vit"),
            (28, 28, 1),
            "NHWC",
            (4, 40, 2) if q else (20, 500, 4),
        ),
    }
    cases = only_cases(parser, cases, args.only)
    info = machine_info()
    # chunk_size="measure" times its candidates in this run (no earlier
    # process's file), so its first call shows what measuring costs
    os.environ["USWIM_CONV_CACHE"] = ""
    device_model = uj.UniformVariation(0.3, 0.03, crossbar=crossbar)
    peaks = [matmul_gflops()]
    print(f"float32 matmul 2048^3: {peaks[0]:.1f} GFLOP/s", flush=True)
    key = jax.random.key(42)
    runs = {}
    for name, (build, shape, layout, (t, n, ts)) in cases.items():
        params, apply_fn = build(jax.random.key(0))
        x, _ = generated_images(n, shape)
        x = jnp.asarray(x)
        # labels: the noise-free predictions (accuracy 1 without noise)
        y = jnp.argmax(jax.jit(apply_fn)(params, x), axis=-1)
        flop_image = model_flops(apply_fn, params, x[:1])
        std = device_model.effective_std(params, None)
        ev = _jitted_evaluate(apply_fn, device_model, t)
        measured = _jitted_evaluate(apply_fn, device_model, t, chunk_size="measure")
        one = jax.jit(
            lambda k, params, x, y, apply_fn=apply_fn, std=std: noisy_accuracy(
                k, apply_fn, params, std, x, y, crossbar=crossbar
            )
        )
        keys = trial_keys(key, ts)
        keys = [keys[i] for i in range(ts)]

        def serial(keys=keys, one=one, params=params, x=x, y=y):
            return jnp.stack([one(k, params, x, y) for k in keys])

        flags = uj.crossbar_flags(params, crossbar)
        chunk, b = resolve_sizes(apply_fn, params, x, t, batched=flags)[:2]
        runs[name] = {
            "evaluate": lambda ev=ev, params=params, x=x, y=y: ev(key, params, x, y),
            "serial": serial,
            "measure": lambda m=measured, params=params, x=x, y=y: m(key, params, x, y),
            "info": {
                "layout": layout,
                "input_shape": list(shape),
                "num_trials": t,
                "num_images": n,
                "eval_batch_size": "auto",
                "auto_eval_batch_size": b,
                "auto_chunk_size": chunk,
                "serial_trials_timed": ts,
                "flops_per_image": flop_image,
            },
        }
        print(
            f"{name}: {t} trials x {n} images, batch {b}, auto chunk {chunk}",
            flush=True,
        )
    results, accs = {}, {}
    for name, r in runs.items():
        out = {}
        for kind in KINDS:
            uj.measured_sizes_log(clear=True)
            res, first, compiling = first_call(r[kind])
            accs[(name, kind)] = np.asarray(res)
            out[kind] = {"first_call_s": first, "compile_s": compiling, "times": []}
            if kind == "measure":
                (out[kind]["log"],) = uj.measured_sizes_log()
        results[name] = out
        print(
            f"first call {name:40s} evaluate {out['evaluate']['first_call_s']:7.1f} s"
            f" ({out['evaluate']['compile_s']:.1f} compiling)"
            f"  serial {out['serial']['first_call_s']:7.1f} s"
            f" ({out['serial']['compile_s']:.1f} compiling)"
            f"  measure {out['measure']['first_call_s']:7.1f} s"
            f" ({out['measure']['log']['seconds']:.1f} measuring)",
            flush=True,
        )
    for _ in range(repeats):
        for name, r in runs.items():
            for kind in KINDS:
                results[name][kind]["times"].append(block(r[kind])[1])
        peaks.append(matmul_gflops())
    peak = max(peaks)
    table = {}
    print(
        f"\n{'case':40s} {'trials/s':>9s} {'GFLOP/s':>8s} {'%mm':>5s} "
        f"{'x serial':>8s} {'x project':>9s} {'compile s':>9s} "
        f"{'measure':>14s} {'trials/s':>9s} {'x serial':>8s}"
    )
    for name, r in runs.items():
        i = r["info"]
        e, s = results[name]["evaluate"], results[name]["serial"]
        e_best, s_best = min(e["times"]), min(s["times"])
        e_med = float(np.median(e["times"]))
        rate = i["num_trials"] / e_best
        serial_rate = i["serial_trials_timed"] / s_best
        gflops = rate * i["num_images"] * i["flops_per_image"] / 1e9
        common = i["serial_trials_timed"]
        diff = accs[(name, "evaluate")][:common] - accs[(name, "serial")]
        m, log = results[name]["measure"], results[name]["measure"]["log"]
        m_rate = i["num_trials"] / min(m["times"])
        table[name] = {
            **i,
            "trials_per_s": rate,
            "gflops": gflops,
            "pct_of_matmul": 100 * gflops / peak,
            "serial_trials_per_s": serial_rate,
            "x_serial": rate / serial_rate,
            "evaluate_first_call_s": e["first_call_s"],
            "evaluate_steady_s_min": e_best,
            "evaluate_steady_s_median": e_med,
            "compile_s": e["compile_s"],
            "serial_compile_s": s["compile_s"],
            "trials_differing_from_serial": int(np.sum(diff != 0)),
            "max_abs_acc_diff_vs_serial": float(np.max(np.abs(diff))),
            "mean_accuracy": float(accs[(name, "evaluate")].mean()),
            "measure": {
                "chosen": log["chosen"],
                "ms_per_trial": log["ms_per_trial"],
                "measuring_s": log["seconds"],
                "first_call_s": m["first_call_s"],
                "trials_per_s": m_rate,
                "pct_of_matmul": 100 * gflops * m_rate / rate / peak,
                "x_serial": m_rate / serial_rate,
                "x_auto": m_rate / rate,
                "trials_differing_from_auto": int(
                    np.sum(accs[(name, "measure")] != accs[(name, "evaluate")])
                ),
            },
        }
    ref = table.get(PROJECT_LENET)
    for name, c in table.items():
        if ref is not None and name.startswith("LeNet"):
            c["x_project"] = c["trials_per_s"] / ref["trials_per_s"]
        vs = f"{c['x_project']:9.2f}" if "x_project" in c else f"{'':9s}"
        print(
            f"{name:40s} {c['trials_per_s']:9.2f} {c['gflops']:8.1f} "
            f"{c['pct_of_matmul']:5.1f} {c['x_serial']:8.2f} {vs} "
            f"{c['compile_s']:9.1f} {c['measure']['chosen']:>14s} "
            f"{c['measure']['trials_per_s']:9.2f} {c['measure']['x_serial']:8.2f}",
            flush=True,
        )
    out = {
        "benchmark": "byom",
        "quick": q,
        **info,
        "load_average_end": list(os.getloadavg()),
        "repeats": repeats,
        "device_model": "UniformVariation(sigma=0.3, sigma_verified=0.03)",
        "data": "uniform-noise images, labels = noise-free predictions",
        "matmul_gflops_each_round": peaks,
        "pct_of_matmul_uses": "max over the rounds",
        "cases": table,
    }
    write_result(
        out, args.output or (RESULTS.replace(".json", "_quick.json") if q else RESULTS)
    )
    return out


if __name__ == "__main__":
    main()
