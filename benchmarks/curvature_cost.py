"""Cost of each curvature estimator, in units of one gradient pass.

Run as ``python -m benchmarks.curvature_cost`` (options: ``--batch-size``,
``--repeats``, ``--probes``, ``--output``). On the project's LeNet with a batch
of random data, each estimator is jitted once; compile time (first call) is
reported apart from the steady state (median of ``--repeats`` rounds over the
estimators, ``benchmarks._common.round_robin``). Ratios divide by the
steady-state time of one gradient of the batch-mean cross-entropy. Results go
to ``benchmarks/results/curvature_cost.json``.

Targets: the one-pass diagonal at most 3 gradient passes (the authors'
PyTorch code costs 8.9), Hutchinson at most 2.5 gradient passes per probe. The
exact diagonal is one HVP per parameter; its cost is extrapolated from the cost of
a chunk of unit-vector HVPs rather than run on all parameters.
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import uswim_jax as uj
from benchmarks._common import machine_info, round_robin, write_result
from uswim_jax.models import build_model


def lenet() -> tuple:
    """``(apply_fn, params, input_shape)`` for the project's LeNet."""
    model = build_model("lenet")
    return model.apply_fn, model.init(jax.random.key(0)), model.input_shape


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--exact-chunk", type=int, default=64)
    parser.add_argument(
        "--output",
        default=os.path.join(
            os.path.dirname(__file__), "results", "curvature_cost.json"
        ),
    )
    args = parser.parse_args(argv)

    apply_fn, params, input_shape = lenet()
    kx, ky = jax.random.split(jax.random.key(42))
    x = jax.random.normal(kx, (args.batch_size, *input_shape), jnp.float32)
    y = jax.random.randint(ky, (args.batch_size,), 0, 10)
    num_params = sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(params))
    num_crossbar = uj.crossbar_size(params)

    def mean_loss(p, x, y):
        return uj.make_loss_fn(apply_fn, x, y, reduction="mean")(p)

    def sum_loss(p, x, y):
        return uj.make_loss_fn(apply_fn, x, y)(p)

    def exact_chunk(p, x, y):
        # what exact_diagonal does for one chunk of unit vectors
        flat, unravel = ravel_pytree(p)
        g = jax.grad(lambda v: sum_loss(unravel(v), x, y))
        idx = jnp.arange(args.exact_chunk)

        def entry(i):
            e = jnp.zeros_like(flat).at[i].set(1)
            return jax.jvp(g, (flat,), (e,))[1][i]

        return jax.vmap(entry)(idx)

    def obd_step(p, x, y):
        h = uj.obd_diagonal(apply_fn, p, x, y)
        return h, jax.grad(mean_loss)(p, x, y)

    probes = args.probes
    cases = {
        "forward": (jax.jit(lambda p, x, y: apply_fn(p, x)), 1),
        "gradient": (jax.jit(jax.grad(mean_loss)), 1),
        "obd_diagonal": (
            jax.jit(lambda p, x, y: uj.obd_diagonal(apply_fn, p, x, y)),
            1,
        ),
        "obd_diagonal_plus_first_order": (jax.jit(obd_step), 1),
        "hutchinson_per_probe": (
            jax.jit(
                lambda p, x, y: uj.hutchinson_diagonal(
                    jax.random.key(0),
                    lambda q: sum_loss(q, x, y),
                    p,
                    probes,
                )
            ),
            probes,
        ),
        "exact_per_parameter": (jax.jit(exact_chunk), args.exact_chunk),
        "ggn_diagonal": (
            jax.jit(lambda p, x, y: uj.ggn_diagonal(apply_fn, p, x, y, chunk_size=32)),
            1,
        ),
        "fisher_diagonal": (
            jax.jit(lambda p, x, y: uj.fisher_diagonal(apply_fn, p, x, y)),
            1,
        ),
    }
    raw, _ = round_robin(
        {name: lambda fn=fn: fn(params, x, y) for name, (fn, _) in cases.items()},
        args.repeats,
        log=lambda s: print(s, flush=True),
    )
    results = {}
    for name, (_, per) in cases.items():
        r = raw[name]
        results[name] = {
            "first_call_s": r["first_call_s"],
            "steady_s": r["steady_s_median"] / per,
            "min_s": r["steady_s_min"] / per,
            "divided_by": per,
        }
    base = results["gradient"]["steady_s"]
    base_min = results["gradient"]["min_s"]
    for r in results.values():
        r["gradient_passes"] = r["steady_s"] / base
        r["gradient_passes_from_min"] = r["min_s"] / base_min
    results["exact_diagonal_extrapolated"] = {
        "gradient_passes": results["exact_per_parameter"]["gradient_passes"]
        * num_params,
        "gradient_passes_from_min": results["exact_per_parameter"][
            "gradient_passes_from_min"
        ]
        * num_params,
        "note": f"{num_params} parameters x one unit-vector HVP each",
    }
    print(f"\ncost in gradient passes (steady state, batch {args.batch_size}):")
    print(f"  {'estimator':32s} {'median':>10s} {'min':>10s}")
    for name, r in results.items():
        print(
            f"  {name:32s} {r['gradient_passes']:10.2f} "
            f"{r['gradient_passes_from_min']:10.2f}"
        )
    out = {
        "model": "lenet",
        "batch_size": args.batch_size,
        "num_params": num_params,
        "num_crossbar_weights": num_crossbar,
        "hutchinson_probes": probes,
        "repeats": args.repeats,
        **machine_info(),
        "targets": {"obd_diagonal": 3.0, "hutchinson_per_probe": 2.5},
        "results": results,
    }
    write_result(out, args.output)
    return out


if __name__ == "__main__":
    main()
