"""What one flat noise draw per trial costs and saves against one draw per leaf,
measured side by side with the ``evaluate`` it feeds.

Run as ``python -m benchmarks.noise_draw`` (``--quick`` for a small variant;
``--images``, ``--trials``, ``--batch``, ``--repeats``, ``--synthetic``,
``--output``). On LeNet (``benchmarks._common.lenet_problem``: the trained run
and MNIST test images when present, else fresh params and generated images),
under ``UniformVariation(0.3, 0.03)`` with nothing verified, it times in one
round robin (``benchmarks._common.round_robin``; first call and steady calls,
so load changes hit every case alike):

- ``flat draw``: :func:`uswim_jax.noise_like` for every trial key, ``vmap``-ed
  and jitted: one ``jax.random.normal`` over all crossbar weights per trial
  (what ``evaluate`` and ``sweep`` draw);
- ``per-leaf draw``: the same draws made one ``jax.random.normal`` per crossbar
  leaf (the keys folded with the leaf's index), the layout before the flat
  draw; written here only as the baseline;
- ``evaluate``: :func:`uswim_jax.evaluate` over the same trials and images at
  ``chunk_size="auto"`` and the given image batch.

It reports each case's compile time (XLA's, from JAX's compile events) and
steady time, and the flat draw's steady time as a share of ``evaluate``'s: the
most that any change of the draw can save in steady state. Results go to
``benchmarks/results/noise_draw.json`` (``noise_draw_quick.json`` with
``--quick``).
"""

import argparse
import os

import jax
import jax.numpy as jnp

import uswim_jax as uj
from benchmarks._common import (
    RESULTS_DIR,
    lenet_problem,
    machine_info,
    round_robin,
    write_result,
)
from uswim_jax._tree import crossbar_flags
from uswim_jax.montecarlo import trial_keys


def per_leaf_noise(key, params, crossbar=None):
    """N(0, 1) on each crossbar leaf from its own ``jax.random.normal`` (the
    key folded with the leaf's index), zeros elsewhere: the baseline layout."""
    flags = crossbar_flags(params, crossbar)
    leaves, treedef = jax.tree.flatten(params)
    on = jax.tree.leaves(flags)
    out = [
        jax.random.normal(jax.random.fold_in(key, i), jnp.shape(w), jnp.float32)
        if f
        else jnp.zeros(jnp.shape(w), jnp.float32)
        for i, (w, f) in enumerate(zip(leaves, on, strict=True))
    ]
    return treedef.unflatten(out)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--batch", type=int, default=40, help="evaluate's image batch")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    images = args.images or (500 if args.quick else 2000)
    trials = args.trials or (20 if args.quick else 100)
    repeats = args.repeats or (3 if args.quick else 7)
    name = "noise_draw_quick.json" if args.quick else "noise_draw.json"
    output = args.output or os.path.join(RESULTS_DIR, name)

    model, params, x, y, sources = lenet_problem(images, synthetic=args.synthetic)
    device = uj.UniformVariation(0.3, 0.03)
    key = jax.random.key(0)
    keys = trial_keys(key, trials)
    flat = jax.jit(lambda k: jax.vmap(lambda t: uj.noise_like(t, params))(k))
    leaf = jax.jit(lambda k: jax.vmap(lambda t: per_leaf_noise(t, params))(k))
    ev_name = f"evaluate chunk=auto batch={args.batch}"
    ev = jax.jit(
        lambda k, x, y: uj.evaluate(
            k, model.apply_fn, params, x, y, device, None, trials,
            chunk_size="auto", eval_batch_size=args.batch,
        ).accuracies
    )  # fmt: skip
    cases = {
        "flat draw": lambda: flat(keys),
        "per-leaf draw": lambda: leaf(keys),
        ev_name: lambda: ev(key, x, y),
    }
    timings, outs = round_robin(cases, repeats)
    a, b = outs["flat draw"], outs["per-leaf draw"]
    same_shapes = jax.tree.map(lambda u, v: u.shape == v.shape, a, b)
    assert all(jax.tree.leaves(same_shapes)), "the two draws differ in shape"
    share = timings["flat draw"]["steady_s_median"] / max(
        timings[ev_name]["steady_s_median"], 1e-12
    )
    result = {
        "machine": machine_info(),
        "sources": sources,
        "images": images,
        "trials": trials,
        "eval_batch_size": args.batch,
        "repeats": repeats,
        "cases": timings,
        "flat_over_per_leaf_steady": timings["flat draw"]["steady_s_median"]
        / max(timings["per-leaf draw"]["steady_s_median"], 1e-12),
        "flat_over_per_leaf_compile": timings["flat draw"]["compile_s"]
        / max(timings["per-leaf draw"]["compile_s"], 1e-12),
        "flat_draw_share_of_evaluate": share,
        "load_average_end": list(os.getloadavg()),
    }
    for n, t in timings.items():
        print(
            f"{n:36s} compile {t['compile_s']:7.3f} s  steady "
            f"{t['steady_s_median']:8.4f} s (min {t['steady_s_min']:.4f})"
        )
    print(
        f"flat / per-leaf: steady {result['flat_over_per_leaf_steady']:.2f}x, "
        f"compile {result['flat_over_per_leaf_compile']:.2f}x; the flat draw is "
        f"{100 * share:.1f} % of evaluate's steady time"
    )
    write_result(result, output)
    return result


if __name__ == "__main__":
    main()
