"""What drawing noise flat saves in compile time (``uswim_jax._random``).

Run as ``python -m benchmarks.draw_compile`` (``--quick``: the pulse model
only, one round; ``--repeats``, ``--output``). Each case is compiled over 4
trial keys (``jit(vmap(...))``), two ways, alternating in rounds (a fresh
function each time, so nothing is cached between them):

- ``pulse``: one ``PulseModel`` chip per key, ``program_with_cost`` on the
  project's LeNet (fresh params; 10 % of the weights verified by magnitude);
- ``normal 3x3x4x8``: one normal draw of a conv kernel's shape per key;
- ``pcm``, ``rram``: one ``ConductanceDevice`` chip of that preset per key,
  ``program_with_cost`` on the same LeNet and mask.

The two ways:

- ``flat``: every ``jax.random.normal`` / ``uniform`` of an array drawn as one
  flat vector and reshaped, as the library draws (``_random``'s functions, which
  the pulse model and the conductance presets call);
- ``shaped``: the same draws made with the array's own shape (``_random``'s
  functions replaced by JAX's for the case), the layout before.

Each case records which of the two the library runs (``"library"``). The
draws are the same numbers (``tests/test_random.py``); the outputs are
compared, and the largest difference and the share of output elements that
differ are recorded (XLA may fuse the two programs differently, which can move
a last float bit: it does for the conductance presets, see docs/device.md).
Without ``--quick`` it also reads one chip of each
preset (without and with drift compensation) at 1 s, 1 h and 1 day with
``program_at_times`` and records, in both styles, the share of weights that
differ from the single-time calls (``"at_times"``). It reports each case's
median and spread of compile seconds (tracing and lowering apart) and
``flat``'s median over ``shaped``'s. Results go to
``benchmarks/results/draw_compile.json`` (``draw_compile_quick.json`` with
``--quick``).
"""

import argparse
import contextlib
import os
import statistics
import time

import jax
import numpy as np

import uswim_jax as uj
from benchmarks._common import RESULTS_DIR, machine_info, write_result
from uswim_jax import _random
from uswim_jax.models import build_model

STYLES = ("flat", "shaped")
#: How the library draws (every case).
LIBRARY_DRAW = "flat"
#: The read times of the ``program_at_times`` check, s.
AT_TIMES = (1.0, 3600.0, 86400.0)


@contextlib.contextmanager
def shaped_draws():
    """Within the block, ``uswim_jax._random`` draws with the array's shape."""
    saved = {n: getattr(_random, n) for n in ("normal", "uniform")}
    _random.normal = lambda key, shape, dtype=float: jax.random.normal(
        key, shape, dtype
    )
    _random.uniform = lambda key, shape, dtype=float, minval=0.0, maxval=1.0: (
        jax.random.uniform(key, shape, dtype, minval, maxval)
    )
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(_random, n, f)


def cases(quick: bool, params, mask) -> dict:
    """name -> a function of one key, compiled vmapped over the keys (the
    library draws every one of them in ``LIBRARY_DRAW``'s style)."""
    pulse = uj.PulseModel(sigma=0.3)
    out = {"pulse": lambda k: pulse.program_with_cost(k, params, mask).params}
    if not quick:
        out["normal 3x3x4x8"] = lambda k: _random.normal(k, (3, 3, 4, 8))
        for name in ("pcm", "rram"):
            dev = uj.ConductanceDevice(uj.device_preset(name))
            out[name] = lambda k, dev=dev: dev.program_with_cost(k, params, mask).params
    return out


def drawn(style: str, library: str = LIBRARY_DRAW):
    """The context in which the library's code, which draws in ``library``'s
    style (flat), draws in ``style``."""
    if style == library:
        return contextlib.nullcontext()
    if (style, library) != ("shaped", "flat"):
        raise ValueError(f"no way to draw {library} code {style}")
    return shaped_draws()


def compile_once(fn, keys, style: str) -> tuple[dict, object]:
    """Seconds to trace and lower, and to compile, ``vmap(fn)`` afresh, and its
    output on ``keys``, drawn in ``style``."""
    with drawn(style):
        t0 = time.perf_counter()
        lowered = jax.jit(jax.vmap(fn)).lower(keys)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
    return {"lower_s": t1 - t0, "compile_s": t2 - t1}, compiled(keys)


def _moved(a, b) -> dict:
    """The share of elements of two pytrees that differ, and the largest
    difference."""
    a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]) for t in (a, b))
    return {
        "moved_fraction": float(np.mean(a != b)),
        "max_abs_diff": float(np.max(np.abs(a - b), initial=0.0)),
    }


def at_times(params, mask, key, times=AT_TIMES) -> dict:
    """One chip of each preset, without and with drift compensation, read at
    every time of ``times`` by ``program_at_times`` against the single-time
    calls ``dev.at(t).program``, in both styles: the share of weights that
    differ (the stacked program is another XLA program, which may fuse the
    same arithmetic differently)."""
    out = {}
    for name in ("pcm", "rram"):
        for comp in (False, True):
            dev = uj.ConductanceDevice(uj.device_preset(name), drift_compensation=comp)
            row = {}
            for style in STYLES:
                with drawn(style):
                    stacked = jax.jit(
                        lambda k, dev=dev: dev.program_at_times(k, params, mask, times)
                    )(key)
                    singles = []
                    for t in times:
                        d = dev.at(t)
                        singles.append(
                            jax.jit(lambda k, d=d: d.program(k, params, mask))(key)
                        )
                row[style] = _moved(
                    stacked, jax.tree.map(lambda *xs: np.stack(xs), *singles)
                )
            label = f"{name}, compensated" if comp else name
            out[label] = row
            print(
                f"at times {label:17s} moved: "
                + ", ".join(
                    f"{s} {100 * r['moved_fraction']:.1f} %" for s, r in row.items()
                ),
                flush=True,
            )
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 5)
    name = "draw_compile_quick.json" if args.quick else "draw_compile.json"
    output = args.output or os.path.join(RESULTS_DIR, name)

    model = build_model("lenet", input_shape=(28, 28, 1))
    params = model.init(jax.random.key(0))
    order = uj.global_order(uj.magnitude_score(params))
    mask = uj.mask_from_order(order, params, count=int(order.shape[0]) // 10)
    keys = jax.random.split(jax.random.key(1), 4)
    table = {}
    for dname, fn in cases(args.quick, params, mask).items():
        times = {s: [] for s in STYLES}
        outs = {}
        for r in range(repeats):  # alternate, the order flipped every round
            for style in STYLES if r % 2 == 0 else STYLES[::-1]:
                t, outs[style] = compile_once(fn, keys, style)
                times[style].append(t)
                print(
                    f"{dname:14s} {style:7s} lower {t['lower_s']:6.2f} s  "
                    f"compile {t['compile_s']:6.2f} s",
                    flush=True,
                )
        moved = _moved(*(outs[s] for s in STYLES))
        diff = moved["max_abs_diff"]
        per = {}
        for style, ts in times.items():
            c = [t["compile_s"] for t in ts]
            per[style] = {
                "compile_s": c,
                "compile_s_median": statistics.median(c),
                "lower_s_median": statistics.median(t["lower_s"] for t in ts),
            }
        table[dname] = {
            **per,
            "library": LIBRARY_DRAW,
            **moved,
            "flat_over_shaped_compile": per["flat"]["compile_s_median"]
            / per["shaped"]["compile_s_median"],
        }
        print(
            f"{dname}: flat / shaped compile "
            f"{table[dname]['flat_over_shaped_compile']:.2f}x, outputs differ by "
            f"at most {diff:.1e} ({100 * table[dname]['moved_fraction']:.1f} % "
            f"of them; the library draws {LIBRARY_DRAW})",
            flush=True,
        )
    result = {
        "benchmark": "draw_compile",
        "quick": args.quick,
        **machine_info(),
        "load_average_end": list(os.getloadavg()),
        "model": "lenet (project), fresh params, 10 % verified by magnitude",
        "trial_keys": int(keys.shape[0]),
        "repeats": repeats,
        "cases": table,
    }
    if not args.quick:
        result["at_times"] = {
            "times_s": list(AT_TIMES),
            "cases": at_times(params, mask, jax.random.key(1)),
        }
    write_result(result, output)
    return result


if __name__ == "__main__":
    main()
