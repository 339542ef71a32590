"""What keeping each trial's convolution beside its ReLU and pooling is worth:
one XLA convolution per trial, the trials stacked after the pooling or before
the ReLU.

Run as ``python -m benchmarks.conv_fusion`` (``--quick`` for a small variant;
``--trials``, ``--repeats``, ``--output``). For each layer shape of the
project's ConvNet (3x3 convolutions of 64, 128 and 256 features on 32x32,
16x16 and 8x8 NHWC inputs, each followed by a ReLU and a 2x2 max-pool; image
batches of 16 and 100), with ``--trials`` per-trial kernels and inputs, it
times side by side in one round robin (``benchmarks._common.round_robin``):

- ``stacked after``: per trial ``conv -> relu -> max-pool``, the pooled
  outputs stacked (what ``"per_trial"`` runs: each trial's layers are its own
  steps, and XLA's CPU backend may fuse the convolution with what follows);
- ``stacked before``: per trial ``conv``, the outputs stacked, then ReLU and
  max-pool over the stack (the stack between each convolution and what reads
  it, as ``"per_trial"`` had it before it kept the trials apart; it pooled
  through strided slices, here ``reduce_window``).

Both compute the same values (checked). It reports each shape's steady
milliseconds and ``before / after`` ratio. Results go to
``benchmarks/results/conv_fusion.json`` (``conv_fusion_quick.json`` with
``--quick``).
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks._common import RESULTS_DIR, machine_info, round_robin, write_result

_DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=_DN)


def _pool(y):
    return lax.reduce_window(y, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def stacked_after(xs, ks):
    """Per trial conv, ReLU and pooling; the pooled outputs stacked."""
    return jnp.stack(
        [_pool(jax.nn.relu(_conv(xs[t], ks[t]))) for t in range(xs.shape[0])]
    )


def stacked_before(xs, ks):
    """Per trial conv; the outputs stacked, then ReLU and pooling on the stack."""
    t, n = xs.shape[:2]
    y = jnp.stack([_conv(xs[i], ks[i]) for i in range(t)])
    y = _pool(jax.nn.relu(jnp.reshape(y, (t * n, *y.shape[2:]))))
    return jnp.reshape(y, (t, n, *y.shape[1:]))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    batches = (4,) if args.quick else (16, 100)
    layers = ((32, 64), (16, 128), (8, 256))  # (side, features), ConvNet's
    name = "conv_fusion_quick.json" if args.quick else "conv_fusion.json"
    output = args.output or os.path.join(RESULTS_DIR, name)
    after, before = jax.jit(stacked_after), jax.jit(stacked_before)
    shapes = []
    for n in batches:
        for side, c in layers:
            kx, kk = jax.random.split(jax.random.key(side * c + n))
            xs = jax.random.normal(kx, (args.trials, n, side, side, c))
            ks = jax.random.normal(kk, (args.trials, 3, 3, c, c)) / np.sqrt(9 * c)
            label = f"{args.trials} trials x {n} images, {side}x{side}x{c} -> {c}"
            timings, outs = round_robin(
                {
                    "stacked after": lambda xs=xs, ks=ks: after(xs, ks),
                    "stacked before": lambda xs=xs, ks=ks: before(xs, ks),
                },
                repeats,
                min_call_s=0.0 if args.quick else 0.3,
            )
            np.testing.assert_allclose(
                outs["stacked after"], outs["stacked before"], rtol=1e-5, atol=1e-5
            )
            ms = {k: 1e3 * v["steady_s_min"] for k, v in timings.items()}
            ratio = ms["stacked before"] / ms["stacked after"]
            print(
                f"{label:44s} after {ms['stacked after']:8.2f} ms  before "
                f"{ms['stacked before']:8.2f} ms  before/after {ratio:.2f}"
            )
            shapes.append(
                {
                    "shape": label,
                    "ms": ms,
                    "before_over_after": ratio,
                    "timings": timings,
                }
            )
    result = {
        "benchmark": "conv_fusion",
        "quick": args.quick,
        "machine": machine_info(),
        "trials": args.trials,
        "repeats": repeats,
        "shapes": shapes,
        "load_average_end": list(os.getloadavg()),
    }
    write_result(result, output)
    return result


if __name__ == "__main__":
    main()
