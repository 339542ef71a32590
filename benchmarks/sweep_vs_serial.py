"""A whole selective write-verify sweep against evaluating its points one by one.

Run as ``python -m benchmarks.sweep_vs_serial`` (``--quick`` for a small
variant; ``--images``, ``--steps``, ``--trials``, ``--repeats``,
``--chunk-size``, ``--eval-batch-size``, ``--synthetic``, ``--output``). One
sweep is K budget steps (verified fractions ``geomspace(0.001, 0.5, K)`` of
LeNet's weights, in magnitude order) x T Monte Carlo trials over the test
images, under ``UniformVariation(0.3, 0.03)``. In one process it times, side by
side, four ways to get the same K x T accuracies:

- ``sweep``: one call of :func:`uswim_jax.sweep` (a ``lax.scan`` over the K
  steps, trials ``vmap``-ed in chunks, common random numbers), jitted once the
  way ``uswim_jax.experiment`` does, with the exhaustive and no-verify end
  points passed in (the pipeline computes them once per device setting), so
  it evaluates the same K x T trials as the other cases;
- ``evaluate x K``: K calls of one jitted :func:`uswim_jax.evaluate` (trials
  batched the same way), the mask built from the order inside the jit;
- ``serial, same forward``: K x T calls of one jitted single-trial noisy forward
  pass (:func:`uswim_jax.montecarlo.noisy_accuracy`) with the same model and
  image batches as the sweep, the per-step stds computed once per step;
- ``serial, one batch``: the same loop over all test images in one batch (the
  incumbents' approach: a loop over trials of the model's plain forward pass).

So ``serial, same forward`` / ``evaluate x K`` is the gain of batching trials
and ``evaluate x K`` / ``sweep`` the gain of the scan. Every case is jitted
once; the first call (compile + run) is reported apart from the steady state,
timed in round robin over the cases (best and median of ``--repeats`` rounds)
with ``block_until_ready``. All cases use trial keys ``fold_in(key, t)``, so
they must give the same per-trial accuracies; how many of the K x T differ is
recorded (batched and unbatched float32 arithmetic may round differently, which
can flip a prediction near a tie).

Chunk and image-batch sizes default to the pipeline's
(``ExperimentConfig().chunk_size`` and ``eval_batch_size``); every case runs the
plain Flax LeNet (the batched ones through ``uswim_jax._trialbatch``, as the
pipeline does).
Params: the trained run ``runs/reproduce-mnist/train`` when present, else a
fresh quantized LeNet; images: the MNIST test split when present
(``USWIM_DATA_DIR``), else generated; the JSON says which. Results go to
``benchmarks/results/sweep_vs_serial.json`` (``sweep_vs_serial_quick.json``
with ``--quick``).
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
    lenet_problem,
    machine_info,
    round_robin,
    write_result,
)
from uswim_jax.device import verified_mask
from uswim_jax.experiment.units import _evaluate_jit, _sweep_jit
from uswim_jax.montecarlo import noisy_accuracy, trial_keys
from uswim_jax.selection import mask_from_order
from uswim_jax.sweep import counts_for_fractions

RESULTS = os.path.join(RESULTS_DIR, "sweep_vs_serial.json")
DEVICE = "UniformVariation(sigma=0.3, sigma_verified=0.03)"
SWEEP = "sweep (lax.scan, one call)"
EVAL_K = "evaluate x K"
SERIAL_SAME = "serial, same forward (K x T calls)"
SERIAL_XLA = "serial, one batch (K x T calls)"


@jax.jit
def _step_std(params, device, order, count):
    mask = mask_from_order(order, params, count=count, predicate=device.crossbar)
    return device.effective_std(params, verified_mask(params, mask))


@functools.partial(jax.jit, static_argnames=("apply_fn", "crossbar", "batch"))
def _one_trial(key, params, std, x, y, *, apply_fn, crossbar, batch):
    return noisy_accuracy(
        key, apply_fn, params, std, x, y, crossbar=crossbar, eval_batch_size=batch
    )


def make_cases(
    apply_fn, serial_apply_fn, params, x, y, device, order, counts, num_trials, cs, bs
):
    """name -> callable of no arguments returning the (K, T) accuracies.

    ``apply_fn`` is used by the sweep, ``evaluate x K`` and the same-forward
    serial loop (images in batches of ``bs``); ``serial_apply_fn`` by the
    incumbent-style serial loop (all images in one batch)."""
    key = jax.random.key(42)
    common = {
        "apply_fn": apply_fn,
        "num_trials": num_trials,
        "chunk_size": cs,
        "eval_batch_size": bs,
    }
    # The pipeline computes the exhaustive and no-verify end points once per
    # device setting and passes them in; they are only carried into the Curve
    # (this returns the (K, T) step accuracies), so placeholders do.
    ends = [jnp.zeros((num_trials,), jnp.float32)] * 2
    counts_dev = jnp.asarray(counts, jnp.int32)
    step_counts = [jnp.int32(c) for c in counts]
    keys = trial_keys(key, num_trials)
    keys = [keys[t] for t in range(num_trials)]

    # The verified masks of the K steps, built once outside the timed calls.
    masks = [
        mask_from_order(order, params, count=c, predicate=device.crossbar)
        for c in step_counts
    ]

    def sweep_case():
        return _sweep_jit(
            key, params, x, y, device, order, counts_dev, *ends, **common
        ).accuracies

    def evaluate_case():
        return jnp.stack(
            [
                _evaluate_jit(key, params, x, y, device, m, **common).accuracies
                for m in masks
            ]
        )

    def serial(fn, batch):
        def run():
            out = []
            for c in step_counts:
                std = _step_std(params, device, order, c)
                for k in keys:
                    out.append(
                        _one_trial(
                            k,
                            params,
                            std,
                            x,
                            y,
                            apply_fn=fn,
                            crossbar=device.crossbar,
                            batch=batch,
                        )
                    )
            return jnp.stack(out).reshape(len(step_counts), num_trials)

        return run

    cases = {
        SWEEP: sweep_case,
        EVAL_K: evaluate_case,
        SERIAL_SAME: serial(apply_fn, bs),
        SERIAL_XLA: serial(serial_apply_fn, None),
    }
    calls = {SWEEP: 1, EVAL_K: len(counts)}
    calls[SERIAL_SAME] = calls[SERIAL_XLA] = len(counts) * num_trials
    return cases, calls


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small variant")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="K budget steps")
    parser.add_argument("--trials", type=int, default=None, help="T trials")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--eval-batch-size", type=int, default=None)
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="fresh params and generated images even when real ones exist",
    )
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    from uswim_jax.experiment import ExperimentConfig

    cfg = ExperimentConfig()
    num_images = args.images or (200 if args.quick else 2000)
    num_steps = args.steps or (3 if args.quick else 10)
    num_trials = args.trials or (8 if args.quick else cfg.num_trials)
    repeats = args.repeats or 2
    cs = args.chunk_size or cfg.chunk_size
    bs = args.eval_batch_size or cfg.eval_batch_size
    output = args.output or (
        RESULTS.replace(".json", "_quick.json") if args.quick else RESULTS
    )

    info = machine_info()
    model, params, x, y, sources = lenet_problem(num_images, synthetic=args.synthetic)
    n_img = int(x.shape[0])
    device = uj.UniformVariation(0.3, 0.03)
    n = model.num_weights(params)
    fractions = np.geomspace(0.001, 0.5, num_steps)
    counts = counts_for_fractions(fractions, n)
    order = uj.global_order(uj.magnitude_score(params))
    print(
        f"LeNet, {n_img} images, K={num_steps} steps x T={num_trials} trials, "
        f"chunk_size={cs}, eval_batch_size={bs}; {sources}",
        flush=True,
    )
    cases, calls = make_cases(
        model.apply_fn, model.apply_fn, params, x, y, device, order, counts,
        num_trials, cs, bs,
    )  # fmt: skip
    case_info = {
        SWEEP: {"eval_batch_size": bs},
        EVAL_K: {"eval_batch_size": bs},
        SERIAL_SAME: {"eval_batch_size": bs},
        SERIAL_XLA: {"eval_batch_size": None},
    }
    for name in case_info:
        case_info[name]["calls"] = calls[name]
    timings, accs = round_robin(cases, repeats, log=lambda s: print(s, flush=True))
    accs = {k: np.asarray(v) for k, v in accs.items()}
    evals = num_steps * num_trials
    best_sweep = timings[SWEEP]["steady_s_min"]
    results = {}
    print(
        f"\n{'case':44s} {'steady s':>9s} {'trial-evals/s':>13s} "
        f"{'sweep x faster':>14s} {'1st call s':>10s} {'differ':>6s}"
    )
    for name, t in timings.items():
        diff = accs[name] - accs[SWEEP]
        r = {
            **case_info[name],
            **t,
            "trial_evals_per_s": evals / t["steady_s_min"],
            "sweep_speedup": t["steady_s_min"] / best_sweep,
            "trials_differing_from_sweep": int(np.sum(diff != 0)),
            "max_abs_acc_diff_vs_sweep": float(np.max(np.abs(diff))),
        }
        results[name] = r
        print(
            f"{name:44s} {t['steady_s_min']:9.3f} {r['trial_evals_per_s']:13.1f} "
            f"{r['sweep_speedup']:14.2f} {t['first_call_s']:10.2f} "
            f"{r['trials_differing_from_sweep']:6d}"
        )
    t = {k: v["steady_s_min"] for k, v in timings.items()}
    ratios = {
        "sweep_vs_serial_xla": t[SERIAL_XLA] / t[SWEEP],
        "sweep_vs_serial_same_forward": t[SERIAL_SAME] / t[SWEEP],
        "sweep_vs_evaluate_x_k": t[EVAL_K] / t[SWEEP],
        "batching_gain": t[SERIAL_SAME] / t[EVAL_K],
        "forward_gain": t[SERIAL_XLA] / t[SERIAL_SAME],
    }
    print(
        "\nratios (steady state, best round): "
        + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
    )
    agree = all(r["trials_differing_from_sweep"] == 0 for r in results.values())
    print(f"identical per-trial accuracies across all cases: {agree}")
    out = {
        "benchmark": "sweep_vs_serial",
        "quick": args.quick,
        **info,
        "load_average_end": list(os.getloadavg()),
        "sources": sources,
        "model": "lenet",
        "num_weights": n,
        "num_images": n_img,
        "num_steps": num_steps,
        "num_trials": num_trials,
        "trial_evaluations": evals,
        "fractions": [float(f) for f in fractions],
        "counts": [int(c) for c in counts],
        "chunk_size": cs,
        "eval_batch_size": bs,
        "repeats": repeats,
        "device_model": DEVICE,
        "order": "magnitude",
        "timing": "steady_s_min: best of the round-robin rounds; ratios use it",
        "ratios": ratios,
        "accuracies_identical": agree,
        "mean_accuracy_per_step": [float(a) for a in accs[SWEEP].mean(axis=1)],
        "cases": results,
    }
    write_result(out, output)
    return out


if __name__ == "__main__":
    main()
