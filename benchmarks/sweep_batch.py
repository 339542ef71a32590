"""The image batch (``eval_batch_size``) of the reproduction's sweeps, side by
side in one run: the sweep ``make reproduce-mnist`` runs (9 budget points, 50
trials in chunks of 5, im2col convolutions, ``UniformVariation(0.3, 0.03)``,
magnitude order, end points passed in) on the float LeNet and on the 4-bit
QLeNet (exported: noise on Q(W)), over the MNIST test images, at each image
batch of ``--batches``.

Run as ``python -m benchmarks.sweep_batch`` (``--batches 20,40``,
``--repeats``, ``--trials``, ``--images``, ``--output``). Every case is jitted
once; the steady state is timed in round robin over the cases (best and median
of ``--repeats`` rounds), so a change of machine load hits all alike. Params are
freshly initialised (key 0): the cost does not depend on the trained values.
Results go to ``benchmarks/results/sweep_batch.json``.
"""

import argparse
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

import uswim_jax as uj
from benchmarks._common import (
    RESULTS_DIR,
    generated_images,
    machine_info,
    round_robin,
    write_result,
)
from uswim_jax.experiment import ExperimentConfig
from uswim_jax.models import build_model
from uswim_jax.sweep import counts_for_fractions


def _problem(weight_bits):
    model = build_model("lenet", weight_bits=weight_bits)
    params = model.init(jax.random.key(0))
    return model.export(params)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.sweep_batch", description=__doc__)
    p.add_argument("--batches", default="20,40")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--output", default=os.path.join(RESULTS_DIR, "sweep_batch.json"))
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    out = {"benchmark": "sweep_batch", **machine_info()}
    try:
        data = uj.data.load("mnist", "test")
        x, y = np.asarray(data.images), np.asarray(data.labels)
        out["data"] = f"{data.name} test split ({data.source})"
    except (OSError, ValueError) as e:
        x = None
        out["data"] = f"generated images (no dataset: {e})"
    if x is None or len(x) < args.images:
        x, y = generated_images(args.images, (28, 28, 1), 10)
    x, y = jnp.asarray(x[: args.images], jnp.float32), jnp.asarray(y[: args.images])
    cfg = ExperimentConfig()
    fractions = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
    device = uj.UniformVariation(0.3, 0.03, verify_cycles=cfg.verify_cycles)
    key = jax.random.key(0)
    ends = (jnp.zeros((args.trials,)), jnp.zeros((args.trials,)))
    cases = {}
    for label, bits in (("lenet", None), ("qlenet4", 4)):
        model, params = _problem(bits)
        order = uj.selection.global_order(uj.selection.magnitude_score(params))
        counts = jnp.asarray(counts_for_fractions(fractions, model.num_weights(params)))
        for b in batches:
            fn = jax.jit(
                functools.partial(
                    uj.sweep,
                    apply_fn=model.apply_fn,
                    num_trials=args.trials,
                    chunk_size=cfg.chunk_size,
                    eval_batch_size=b,
                )
            )

            def case(fn=fn, params=params, order=order, counts=counts):
                c = fn(
                    key,
                    params=params,
                    x=x,
                    y=y,
                    device=device,
                    order=order,
                    counts=counts,
                    reference=ends[0],
                    baseline=ends[1],
                )
                return c.accuracies

            cases[f"{label} batch={b}"] = case
    timings, res = round_robin(cases, args.repeats)
    names = list(cases)
    for name in names:
        t = timings[name]
        t["trial_evals_per_s"] = len(fractions) * args.trials / t["steady_s_min"]
        print(
            f"{name:24s} best {t['steady_s_min']:7.2f} s  median "
            f"{t['steady_s_median']:7.2f} s  first call {t['first_call_s']:7.2f} s"
        )
    for label in ("lenet", "qlenet4"):
        here = [n for n in names if n.startswith(label + " ")]
        ref = here[0]
        for n in here[1:]:
            timings[n][f"speed_vs_{ref.split()[1]}"] = (
                timings[ref]["steady_s_min"] / timings[n]["steady_s_min"]
            )
            timings[n]["accuracies_identical_to_" + ref.split()[1]] = bool(
                np.array_equal(np.asarray(res[ref]), np.asarray(res[n]))
            )
    out.update(
        {
            "num_images": int(x.shape[0]),
            "num_trials": args.trials,
            "chunk_size": cfg.chunk_size,
            "fractions": list(fractions),
            "repeats": args.repeats,
            "load_average_end": list(os.getloadavg()),
            "cases": timings,
        }
    )
    write_result(out, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
