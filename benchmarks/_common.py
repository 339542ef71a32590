"""Helpers shared by the benchmarks: the LeNet problem (trained run and MNIST
test images when present, else fresh params and generated images), the
project's models as builders, machine information, the dense matmul rate every
"% of matmul" is measured against, FLOPs counted from a jaxpr, JAX's own
compile-time events, round-robin timing and a linear fit. The jitted drivers
the benchmarks time are the pipeline's own (``_sweep_jit`` and
``_evaluate_jit`` of ``uswim_jax.experiment.units``, static arguments
``STATIC``).

``benchmarks/run.py`` skips this module (its name starts with ``_``).

Importing it turns off the file of ``"measure"``'s choices
(``USWIM_CONV_CACHE``, :mod:`uswim_jax._measure_cache`) for the process: a
benchmark measures afresh and reports what measuring cost.
"""

import argparse
import collections
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uswim_jax._io import atomic_write_text, host_cpu
from uswim_jax._jaxpr import forward_flops
from uswim_jax.models import Model, build_model

os.environ["USWIM_CONV_CACHE"] = ""  # measure afresh (see the docstring)

RUN_DIR = "runs/reproduce-mnist/train"
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine_info() -> dict[str, Any]:
    """JAX version, backend, device, CPU count, platform, the host CPU
    (:func:`uswim_jax._io.host_cpu`) and the load average
    now (other jobs on the machine make absolute times noisy)."""
    return {
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "cpu": host_cpu(),
        "python": sys.version.split()[0],
        "load_average_start": list(os.getloadavg()),
    }


def generated_images(n: int, input_shape, num_classes: int = 10, seed: int = 0):
    """``n`` uniform-noise images and random labels (throughput does not depend
    on pixel values)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, *input_shape), dtype=np.float32)
    y = rng.integers(0, num_classes, n).astype(np.int32)
    return x, y


def lenet_problem(
    num_images: int, *, synthetic: bool = False
) -> tuple[Model, Any, jax.Array, jax.Array, dict[str, str]]:
    """``(model, params, x, y, sources)`` for LeNet as the pipeline evaluates it.

    Params: the trained run ``runs/reproduce-mnist/train`` when present, else
    ``build_model("lenet", quantized=True)`` freshly initialised with key 0;
    either way exported (``model.export``: noise goes on Q(W) for quantized
    models), as ``uswim_jax.experiment`` does.
    Images: the MNIST test split (``uswim_jax.data.load``, ``USWIM_DATA_DIR``)
    when present, else generated ones. ``synthetic=True`` skips both look-ups.
    ``sources`` says which were used.
    """
    sources = {}
    model = params = None
    if not synthetic:
        try:
            from uswim_jax.train import load_run

            model, params, _ = load_run(RUN_DIR)
            sources["params"] = f"trained run {RUN_DIR}"
        except Exception as e:  # noqa: BLE001 - any failure: use fresh params
            sources["params"] = f"fresh quantized LeNet, key 0 (no trained run: {e})"
    if model is None:
        model = build_model("lenet", quantized=True)
        params = model.init(jax.random.key(0))
        sources.setdefault("params", "fresh quantized LeNet, key 0")
    sources["weight_bits"] = str(model.weight_bits)
    model, params = model.export(params)
    x = y = None
    if not synthetic:
        try:
            from uswim_jax.data import load

            data = load("mnist", "test")
            x, y = np.asarray(data.images), np.asarray(data.labels)
            sources["data"] = f"{data.name} test split ({data.source})"
        except Exception as e:  # noqa: BLE001
            sources["data"] = f"generated images, seed 0 (no dataset: {e})"
    if x is None or len(x) < num_images:
        if x is not None:
            sources["data"] = f"generated images, seed 0 (test split has {len(x)})"
        x, y = generated_images(num_images, model.input_shape, model.num_classes)
        sources.setdefault("data", "generated images, seed 0")
    x, y = x[:num_images], y[:num_images]
    return model, params, jnp.asarray(x, jnp.float32), jnp.asarray(y), sources


def case_parser(doc: str) -> argparse.ArgumentParser:
    """The command line of a benchmark over named cases: ``--quick`` (a small
    CI variant), ``--repeats``, ``--only CASE`` (repeatable) and ``--output``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small CI variant")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="CASE",
        help="run only this case (its full name; repeat for several)",
    )
    parser.add_argument("--output", default=None)
    return parser


def only_cases(parser: argparse.ArgumentParser, cases: dict, only: list) -> dict:
    """``cases`` restricted to the names in ``only`` (all when empty); an
    unknown name is a command-line error listing the cases."""
    if not only:
        return cases
    unknown = set(only) - set(cases)
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}; cases: {list(cases)}")
    return {k: v for k, v in cases.items() if k in only}


def project(name: str, **kw) -> Callable[[jax.Array], tuple[Any, Callable]]:
    """A builder of the project's model ``name`` (``build_model`` keywords
    ``kw``): ``key -> (params, apply_fn)``, the form every benchmark's model
    builders take."""

    def build(key):
        model = build_model(name, **kw)
        return model.init(key), model.apply_fn

    return build


def matmul_gflops(n: int = 2048, repeats: int = 7, dtype=jnp.float32) -> float:
    """The dense ``n x n x n`` matmul rate in GFLOP/s (at JAX's default
    precision), best of ``repeats`` timed calls after one untimed call: the
    rate every benchmark's "% of matmul" is a fraction of."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    mm = jax.jit(jnp.matmul)
    jax.block_until_ready(mm(a, b))
    best = min(block(lambda: mm(a, b))[1] for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def model_flops(apply_fn: Callable, params, x) -> int:
    """:func:`uswim_jax._jaxpr.forward_flops` of ``apply_fn(params, x)``: the
    FLOPs of one forward pass over the images ``x`` (2 x the multiply-
    accumulates of its convolutions and matmuls)."""
    return forward_flops(jax.make_jaxpr(apply_fn)(params, x).jaxpr)


def block(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds)`` with the result ready."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t0


TRACE = "/jax/core/compile/jaxpr_trace_duration"
LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
COMPILE = "/jax/core/compile/backend_compile_duration"


class CompileLog:
    """JAX's compile-pipeline duration events (tracing to a jaxpr, lowering to
    MLIR, XLA's compilation), recorded by one ``jax.monitoring`` listener;
    ``since(mark)`` sums the events after a mark. Use :func:`compile_log`,
    the process's one instance."""

    def __init__(self):
        self.events: list[tuple[str, float, str]] = []
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        if event in (TRACE, LOWER, COMPILE):
            self.events.append((event, duration, str(kwargs.get("fun_name", ""))))

    def mark(self) -> int:
        return len(self.events)

    def since(self, mark: int, fun: str | None = None) -> dict:
        """Count and total seconds per event after ``mark``
        (``trace_count``, ``trace_s``, ``lower_*``, ``compile_*``); only
        functions whose name contains ``fun`` when given. Traces nest (a
        jitted function traced inside another is a second event), XLA
        compilations do not: ``compile_s`` is the time XLA spent."""
        count, secs = collections.Counter(), collections.Counter()
        for event, d, name in self.events[mark:]:
            if fun is None or fun in name:
                count[event] += 1
                secs[event] += d
        out = {}
        for e, short in ((TRACE, "trace"), (LOWER, "lower"), (COMPILE, "compile")):
            out[f"{short}_count"] = count[e]
            out[f"{short}_s"] = secs[e]
        return out


_COMPILE_LOG: CompileLog | None = None


def compile_log() -> CompileLog:
    """The process's :class:`CompileLog` (its listener registered once)."""
    global _COMPILE_LOG
    if _COMPILE_LOG is None:
        _COMPILE_LOG = CompileLog()
    return _COMPILE_LOG


def first_call(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``(fn(), seconds, compile seconds)`` of a first call: the compile
    seconds are XLA's compilations during it (every program it compiled,
    small eager ones included), from :func:`compile_log`, not first call minus
    a later one (which load on the machine can push below zero)."""
    log = compile_log()
    m = log.mark()
    out, t = block(fn)
    return out, t, log.since(m)["compile_s"]


#: A timed sample of ``timed_rounds`` repeats a call at most this many times.
MAX_CALLS_PER_SAMPLE = 50


def timed_rounds(
    cases: dict[str, Callable[[], Any]],
    repeats: int,
    *,
    min_call_s: float = 0.0,
    opener: bool = False,
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Steady-state seconds per call of every (already compiled) case, in
    ``repeats`` rounds that time each case once per round, so a change of
    machine load hits all alike.

    A sample is the mean over ``k`` back-to-back calls, with ``k`` fixed per
    case before the rounds (from one untimed call, at most
    ``MAX_CALLS_PER_SAMPLE``) so that a sample lasts at least ``min_call_s``:
    a call of a tenth of a second is at the mercy of one scheduler hiccup on a
    shared machine (``min_call_s=0``: one call, no untimed one).
    ``opener``: each round starts with one untimed call of the first case (the
    first call after another program ran slower, its caches cold).

    Returns ``(times, calls_per_sample)``, both keyed by case.
    """
    ks = dict.fromkeys(cases, 1)
    for name, fn in cases.items() if min_call_s > 0 else ():
        k = math.ceil(min_call_s / max(block(fn)[1], 1e-9))
        ks[name] = min(max(k, 1), MAX_CALLS_PER_SAMPLE)
    times = {name: [] for name in cases}
    for _ in range(repeats):
        if opener and cases:
            block(next(iter(cases.values())))
        for name, fn in cases.items():
            t0 = time.perf_counter()
            for _ in range(ks[name]):
                out = fn()
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - t0) / ks[name])
    return times, ks


def round_robin(
    cases: dict[str, Callable[[], Any]],
    repeats: int,
    log: Callable = print,
    min_call_s: float = 0.0,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """First call (compile + run) of every case, then :func:`timed_rounds`.

    Returns ``(timings, outputs)``: per case ``first_call_s``, ``compile_s``
    (XLA's compilations in the first call, :func:`first_call`),
    ``steady_s_min``, ``steady_s_median`` and ``calls_per_sample``, and the
    first call's output.
    """
    out, res = {}, {}
    for name, fn in cases.items():
        res[name], t, c = first_call(fn)
        out[name] = {"first_call_s": t, "compile_s": c}
        log(f"first call {name:44s} {t:8.2f} s, {c:.2f} s of it compiling")
    times, ks = timed_rounds(cases, repeats, min_call_s=min_call_s)
    for name, r in out.items():
        r["steady_s_min"] = min(times[name])
        r["steady_s_median"] = statistics.median(times[name])
        r["calls_per_sample"] = ks[name]
    return out, res


def linear_fit(xs, ts) -> dict[str, float]:
    """Least-squares ``t = intercept + slope * x``, its R^2, the largest
    relative deviation of a measured point from the line, and the exponent
    ``b`` of a least-squares ``log t = a + b log x`` (1 for time proportional
    to x; it is not thrown off by a small intercept as the relative deviation
    of the smallest point is)."""
    x = np.asarray(xs, np.float64)
    t = np.asarray(ts, np.float64)
    slope, intercept = np.polyfit(x, t, 1)
    pred = intercept + slope * x
    ss_res = float(np.sum((t - pred) ** 2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    return {
        "slope": float(slope),
        "intercept": float(intercept),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0,
        "max_rel_dev": float(np.max(np.abs(t - pred) / np.maximum(np.abs(t), 1e-12))),
        "loglog_exponent": (
            float(np.polyfit(np.log(x), np.log(t), 1)[0])
            if np.all(x > 0) and np.all(t > 0)
            else float("nan")
        ),
    }


def measuring_seconds(log: list[dict]) -> float:
    """Seconds a call spent timing convolution paths, from its
    ``uswim_jax.conv_path_log``: the model records' where there are any (they
    include the layers they timed), else the layer records'; a measurement
    reused from an earlier call (the same program and shapes) costs nothing
    here."""
    timed = [r for r in log if "model" in r] or [r for r in log if "ms" in r]
    return sum(r["seconds"] for r in timed if not r["reused"])


def write_result(out: dict, path: str) -> None:
    """Writes a benchmark's JSON (keys in insertion order, which the README
    tables follow) atomically, creating the folder, and says where."""
    atomic_write_text(path, json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
