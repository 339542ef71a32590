"""How trial-batched convolutions run (``uswim_jax.conv_paths``): every path
gives the plain path's result, ``"layers"`` times every path once per layer
shape and ``"measure"`` every candidate policy once per model, each takes the
fastest, the log says which path ran, and the policies behave as
documented."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax
from test_fast_eval import _eqns
from test_trialbatch import (
    BUILDERS,
    RTOL,
    _conv_problem,
    _crossbar,
    _data,
    _f64,
    _plain,
    conv_configs,
)

import uswim_jax as uj
from uswim_jax import _trialbatch as tbm
from uswim_jax.montecarlo import evaluate

#: What "measure" leaves out for the small models here: on CPU the rule
#: (``trial_batched`` sets its patch-row threshold there) takes im2col, timed
#: once, as "rule"; elsewhere there is no rule to time.
_SKIPPED = {"im2col"} if jax.default_backend() == "cpu" else {"rule"}


@pytest.fixture(autouse=True)
def _fresh_measurements(monkeypatch):
    """Each test measures afresh and leaves no record behind."""
    monkeypatch.setattr(tbm, "_MEASURED", {})
    monkeypatch.setattr(tbm, "_MEASURED_MODELS", {})
    monkeypatch.setattr(tbm, "_DECISIONS", {})


def _traced(policy, f, k, x):
    """``f`` trial-batched over the kernels ``k`` under ``policy``, on ``x``."""
    with uj.conv_paths(policy):
        return jax.jit(tbm.trial_batched(f, k[0], x))(k, x)


def _first_within_tie(ms: dict, order) -> str:
    """The first of ``order`` within ``CONV_TIE`` of the fastest of ``ms``."""
    fastest = min(ms.values())
    return next(c for c in order if ms[c] <= fastest * (1 + tbm.CONV_TIE))


def _conv_fn():
    def f(p, xi):
        return lax.conv_general_dilated(
            xi, p, (2, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    return f


@settings(max_examples=6, deadline=None)
@given(conv_configs(), st.sampled_from(["measure", "layers", *tbm.CONV_PATHS]))
def test_every_path_gives_the_plain_result(cfg, policy):
    """Any rank, layout, stride, padding, dilation and grouping, shared or
    per-trial input: each path (and the measured choice) equals ``vmap`` of
    the model in float64."""
    tbm._DECISIONS.clear()
    with jax.enable_x64(True):
        x, k, conv = _conv_problem(cfg)

        def apply_fn(p, xi):
            lhs = xi if cfg["shared_lhs"] else p["x"]
            return jnp.sum(jnp.tanh(conv(lhs, p["k"])), axis=0)

        if cfg["shared_lhs"]:
            stacked, xi = {"k": k}, x[0]
        else:
            stacked, xi = {"k": k, "x": x}, jnp.zeros(())
        want = _plain(apply_fn, stacked, xi)
        one = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), stacked
        )
        tb = tbm.TrialBatched(apply_fn, one, xi, None, None, policy)
        got = jax.jit(tb)(stacked, xi)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL)
    log = tbm.conv_path_log()
    layers = [r for r in log if "conv" in r]
    models = [r for r in log if "model" in r]
    assert len(layers) == 1
    if policy == "measure":  # one model-level choice, then its layer record
        (model,) = models
        assert model["path"] == layers[0]["policy"]
        assert set(model["ms"]) == {"im2col", "per_trial", "xla", "layers"}
    elif policy == "layers":
        assert set(layers[0]["ms"]) == set(tbm.CONV_PATHS)
    else:
        assert not models and layers[0]["path"] == policy


def _three_convs(widths):  # built in float32, returned in float64
    """A CNN with a shared first convolution (8 features of 3x3x3: 27 patch
    rows) and per-trial ones after it, of ``widths`` features each (the second
    reads 72 rows), each followed by a ReLU and a 2x2 max-pool, then a dense
    layer; its params and one input batch, in float64."""

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            for f in (8, *widths):
                x = nn.max_pool(nn.relu(nn.Conv(f, (3, 3))(x)), (2, 2), (2, 2))
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    with jax.enable_x64(False):
        x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
        params = Net().init(jax.random.key(0), x)
    return Net().apply, _f64(params), _f64(x)


def _noisy_stack(params, t):
    return jax.tree.map(
        lambda a: jnp.stack([a * (1 + 0.1 * i) for i in range(t)]), params
    )


@pytest.mark.parametrize("widths, path", [((16,), "im2col"), ((16, 16), "per_trial")])
def test_rule_is_one_path_per_model(widths, path):
    """The rule picks one path for the whole model: im2col while every
    convolution has at most ``CPU_CONV_PATCH_ROWS`` patch rows, one XLA
    convolution per trial for all of them, the shared first layer's included,
    once one has more (the third conv reads 144); either equals the plain
    path."""
    with jax.enable_x64(True):
        f, params, x = _three_convs(widths)
        stacked = _noisy_stack(params, 3)
        tb = tbm.TrialBatched(f, params, x, None, tbm.CPU_CONV_PATCH_ROWS, "rule")
        got = jax.jit(tb)(stacked, x)
        np.testing.assert_allclose(got, _plain(f, stacked, x), rtol=RTOL, atol=RTOL)
    log = uj.conv_path_log()
    assert len(log) == 1 + len(widths)
    assert {r["policy"] for r in log} == {"rule"}
    assert {r["path"] for r in log} == {path}


def test_per_trial_keeps_each_trials_layers_apart():
    """``"per_trial"``: each trial's convolutions, ReLUs and max-pools are its
    own steps, the pooling kept as ``reduce_window_max`` (so XLA can fuse a
    convolution with what follows it), and the trials are stacked once, for
    the dense layer; the result equals the plain path."""
    t = 3
    with jax.enable_x64(True):
        f, params, x = _three_convs((16,))
        stacked = _noisy_stack(params, t)
        tb = tbm.TrialBatched(f, params, x, None, None, "per_trial")
        text = str(jax.make_jaxpr(tb)(stacked, x))
        got = jax.jit(tb)(stacked, x)
        np.testing.assert_allclose(got, _plain(f, stacked, x), rtol=RTOL, atol=RTOL)
    assert text.count("conv_general_dilated[") == 2 * t
    assert text.count("reduce_window_max[") == 2 * t
    assert text.count(" stack[") == 1


def _reads_a_kernel(jaxpr, kernel_shapes) -> int:
    """How many steps of ``jaxpr`` (inner jaxprs included) other than the
    convolutions read a value of one of ``kernel_shapes``."""
    return sum(
        eqn.primitive.name != "conv_general_dilated"
        and any(
            tuple(getattr(v.aval, "shape", ())) in kernel_shapes for v in eqn.invars
        )
        for eqn in _eqns(jaxpr)
    )


@pytest.mark.parametrize("policy", ["per_trial", "rule"])
def test_per_trial_kernels_are_cut_once_per_chunk(policy):
    """Along ``"per_trial"`` (as a policy, or the rule's one path) ``prepare``
    cuts each trial's kernels out of the stack, so the work per image batch
    (``apply``) reads the stacked kernels nowhere but in the convolutions'
    own operands; and the result equals the plain path."""
    t = 3
    with jax.enable_x64(True):
        f, params, x = _three_convs((16, 16))
        stacked = _noisy_stack(params, t)
        rows = tbm.CPU_CONV_PATCH_ROWS if policy == "rule" else None
        tb = tbm.TrialBatched(f, params, x, None, rows, policy)
        assert tb._fixed_path == "per_trial"
        prepared = tb.prepare(stacked)
        kernels = {a.shape for a in jax.tree.leaves(stacked) if a.ndim == 5} | {
            a.shape[1:] for a in jax.tree.leaves(stacked) if a.ndim == 5
        }
        per_batch = jax.make_jaxpr(lambda x: tb.apply(prepared, x))(x).jaxpr
        got = tb.apply(prepared, x)
        np.testing.assert_allclose(got, _plain(f, stacked, x), rtol=RTOL, atol=RTOL)
    assert len(kernels) == 2 * 3  # (T, 3, 3, I, O) and (3, 3, I, O) per conv
    assert _reads_a_kernel(per_batch, kernels) == 0
    # without the cut kernels apply cuts them itself, and the check sees it
    uncut = {k: v for k, v in prepared.items() if not k.endswith("/kernel_parts")}
    assert len(uncut) == len(prepared) - 3
    per_batch = jax.make_jaxpr(lambda x: tb.apply(uncut, x))(x).jaxpr
    assert _reads_a_kernel(per_batch, kernels) > 0


def test_vmap_policy_traces_nothing_up_front():
    """``"vmap"`` interprets nothing, so making its ``TrialBatched`` does not
    trace the model (``apply_fn`` runs only under ``jax.vmap``)."""
    calls = []
    f = _conv_fn()

    def counted(p, xi):
        calls.append(1)
        return f(p, xi)

    k = jax.random.normal(jax.random.key(0), (2, 3, 3, 2, 5))
    x = jax.random.normal(jax.random.key(1), (6, 8, 8, 2))
    tb = tbm.TrialBatched(counted, k[0], x, None, None, tbm.VMAP)
    assert calls == []
    np.testing.assert_allclose(tb(k, x), _plain(f, k, x), rtol=1e-5, atol=1e-5)
    assert calls == [1]


def test_layers_take_the_fastest_once_per_shape(monkeypatch):
    """``"layers"``: every path is timed; the chosen one is the first within
    ``CONV_TIE`` of the fastest; a second trace of the same shapes, even of
    another function, measures nothing."""
    f = _conv_fn()
    k = jax.random.normal(jax.random.key(0), (4, 3, 3, 2, 5))
    x = jax.random.normal(jax.random.key(1), (6, 8, 8, 2))
    got = _traced("layers", f, k, x)
    np.testing.assert_allclose(got, _plain(f, k, x), rtol=1e-5, atol=1e-5)
    (record,) = uj.conv_path_log()
    ms = record["ms"]
    assert record["policy"] == "layers" and record["seconds"] > 0
    assert all(v > 0 for v in ms.values())
    assert record["path"] == _first_within_tie(ms, tbm.CONV_PATHS)
    assert "4 trials" in record["conv"] and "shared" in record["conv"]

    calls = []
    monkeypatch.setattr(tbm, "_compiled", lambda *a: calls.append(a))

    def g(p, xi):  # the same convolution inside another model
        return 2.0 * f(p, xi)

    _traced("layers", g, k, x)
    assert calls == []
    assert uj.conv_path_log(clear=True)[0]["ms"] == ms
    assert uj.conv_path_log() == []


def test_per_trial_candidate_is_skipped_for_large_chunks():
    """``"measure"`` and ``"layers"`` leave out ``"per_trial"`` above
    ``MEASURE_PER_TRIAL_MAX`` trials (its program grows with the chunk)."""
    f = _conv_fn()
    t = tbm.MEASURE_PER_TRIAL_MAX + 1
    k = jnp.ones((t, 1, 1, 2, 3))
    x = jnp.ones((2, 4, 4, 2))
    _traced("measure", f, k, x)
    (model,) = [r for r in uj.conv_path_log() if "model" in r]
    assert set(model["ms"]) == {"rule", "im2col", "xla", "layers"} - _SKIPPED
    _traced("layers", f, k, x)
    (layer,) = [r for r in uj.conv_path_log() if "conv" in r]
    assert set(layer["ms"]) == {"im2col", "xla"}


def test_measure_times_the_whole_forward_pass_once(monkeypatch):
    """``"measure"``: every candidate policy is timed on the whole forward
    pass, the first within ``CONV_TIE`` of the fastest runs (its layer record
    says so, and the output equals the plain path's); the same model and
    shapes again measure nothing, and the log says the measurement is reused."""
    f = _conv_fn()
    k = jax.random.normal(jax.random.key(0), (3, 3, 3, 2, 5))
    x = jax.random.normal(jax.random.key(1), (6, 8, 8, 2))
    got = _traced("measure", f, k, x)
    np.testing.assert_allclose(got, _plain(f, k, x), rtol=1e-5, atol=1e-5)
    log = uj.conv_path_log(clear=True)
    (model,) = [r for r in log if "model" in r]
    (layer,) = [r for r in log if "conv" in r]
    ms = model["ms"]
    assert list(ms) == [c for c in tbm.MEASURE_CANDIDATES if c not in _SKIPPED]
    assert model["path"] == _first_within_tie(ms, ms)
    assert layer["policy"] == model["path"] and model["seconds"] > 0
    assert "1 convolutions, 3 trials, input 6x8x8x2" == model["model"]
    calls = []
    monkeypatch.setattr(tbm, "_compiled", lambda *a: calls.append(a))
    _traced("measure", f, k, x)
    (again,) = [r for r in uj.conv_path_log() if "model" in r]
    assert calls == [] and again["ms"] == ms
    assert (model["reused"], again["reused"]) == (False, True)


def _evaluate_every_policy(kind, policies):
    """Per-trial accuracies of ``evaluate`` (float64) on the LeNet written as
    ``kind``, under the rule and each of ``policies``, and their logs."""
    with jax.enable_x64(True):
        params, apply_fn, layout = BUILDERS[kind](jax.random.key(0))
        params = _f64(params)
        x, _ = _data(layout, n=20)
        y = jnp.argmax(apply_fn(params, x), axis=-1)
        device = uj.UniformVariation(0.6, 0.06, crossbar=_crossbar)
        out = {}
        for policy in ("rule", *policies):
            tbm._DECISIONS.clear()
            with uj.conv_paths(policy):
                accs = evaluate(
                    jax.random.key(2),
                    apply_fn,
                    params,
                    x,
                    y,
                    device,
                    None,
                    6,
                    chunk_size=3,
                    eval_batch_size=8,
                ).accuracies
            out[policy] = (np.asarray(accs), uj.conv_path_log())
    want, log = out.pop("rule")
    assert len(log) == 2 and {r["path"] for r in log} == {"im2col"}
    assert len(set(want.tolist())) > 1  # the noise does something
    for policy, (got, log) in out.items():
        np.testing.assert_array_equal(got, want)
        layers = [r for r in log if "conv" in r]
        models = [r for r in log if "model" in r]
        assert len(layers) == 2
        if policy == "measure":
            assert len(models) == 1
            assert list(models[0]["ms"]) == [
                c for c in tbm.MEASURE_CANDIDATES if c not in _SKIPPED
            ]
            policy = models[0]["path"]
        assert all(r["policy"] == policy for r in layers)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_evaluate_measured_on_user_models(kind, monkeypatch):
    """``evaluate`` under ``"measure"`` on LeNets written with plain lax,
    flax.linen, flax.nnx (BatchNorm in eval mode) and equinox (NCHW, vmapped
    over images): the rule's per-trial accuracies, the candidate it chose
    named in the log (two candidates here, to keep the compilations few; the
    slow test below times all of them)."""
    monkeypatch.setattr(tbm, "MEASURE_CANDIDATES", ("rule", "xla"))
    _evaluate_every_policy(kind, ["measure"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_evaluate_every_policy_on_user_models(kind):
    """The same for ``"measure"`` with every candidate, ``"layers"`` and every
    fixed path."""
    _evaluate_every_policy(kind, ["measure", "layers", *tbm.CONV_PATHS])


@pytest.mark.parametrize("policy", ["measure", "layers"])
def test_with_several_processes_process_0s_choice_runs(monkeypatch, policy):
    """Processes could time differently and then compile different programs:
    with several, each times, and all run what process 0 chose (here made
    the last option, unlike this process's own). The log says so; the output
    is still the plain path's. (The real two-process run is in
    ``tests/test_distributed.py``.)"""
    monkeypatch.setattr(tbm.jax, "process_count", lambda: 2)
    shared = []
    monkeypatch.setattr(tbm, "from_writer", lambda i: shared.append(i) or -1)
    f = _conv_fn()
    k = jax.random.normal(jax.random.key(0), (2, 3, 3, 2, 5))
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 2))
    got = _traced(policy, f, k, x)
    np.testing.assert_allclose(got, _plain(f, k, x), rtol=1e-5, atol=1e-5)
    options = tbm.MEASURE_CANDIDATES if policy == "measure" else tbm.CONV_PATHS
    key = "model" if policy == "measure" else "conv"
    (record,) = [r for r in uj.conv_path_log() if key in r]
    assert record["path"] == options[-1] and record["chosen_by"] == "process 0"
    own = options[shared[0]]  # what this process's timing chose
    assert record.get("own_choice", record["path"]) == own and "ms" in record
    if own == options[-1]:
        assert "own_choice" not in record


def test_auto_policy_per_backend(monkeypatch):
    """``"auto"``: the rule (with the CPU threshold) on CPU, measurement
    elsewhere; a block sets the policy and restores it, on error too."""
    f = _conv_fn()
    k, x = jnp.ones((3, 3, 2, 5)), jnp.ones((3, 8, 8, 2))
    tb = tbm.trial_batched(f, k, x)
    assert (tb.conv_path, tb.conv_patch_rows) == ("rule", tbm.CPU_CONV_PATCH_ROWS)
    monkeypatch.setattr(tbm.jax, "default_backend", lambda: "gpu")
    tb = tbm.trial_batched(f, k, x)
    assert (tb.conv_path, tb.conv_patch_rows) == ("measure", None)
    with pytest.raises(RuntimeError), uj.conv_paths("xla"):
        assert tbm.trial_batched(f, k, x).conv_path == "xla"
        raise RuntimeError
    assert tbm._policy[0] == "auto"


def test_bad_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="conv_paths policy must be one of"):
        with uj.conv_paths("fastest"):
            pass
    f = _conv_fn()
    with pytest.raises(ValueError, match="conv_path must be"):
        tbm.TrialBatched(
            f, jnp.ones((3, 3, 2, 5)), jnp.ones((3, 8, 8, 2)), None, None, "gpu"
        )


@pytest.mark.parametrize("policy", ["measure", "layers"])
def test_measured_choices_are_kept_in_a_file_for_later_processes(
    monkeypatch, tmp_path, policy
):
    """A ``"measure"`` choice (and every per-layer one it or ``"layers"``
    made) goes to the file; a fresh process (here: the in-process caches
    emptied) reads them back and times nothing, and its log says where each
    choice came from. The output equals the plain path's."""
    from uswim_jax import _measure_cache

    cache = tmp_path / "sub" / "conv_measure.json"
    monkeypatch.setenv("USWIM_CONV_CACHE", str(cache))
    f = _conv_fn()
    k = jax.random.normal(jax.random.key(0), (3, 3, 3, 2, 5))
    x = jax.random.normal(jax.random.key(1), (6, 8, 8, 2))
    _traced(policy, f, k, x)
    model = policy == "measure"  # else the layer's own measurement

    def ours(records):
        return [r for r in records if ("model" in r) == model and "ms" in r]

    (first,) = ours(uj.conv_path_log(clear=True))
    assert "cached" not in first
    stored = json.loads(cache.read_text())
    assert stored["format"] == _measure_cache.FORMAT
    (entry,) = ours(stored["entries"].values())
    assert {k: entry[k] for k in ("path", "ms")} == {
        k: first[k] for k in ("path", "ms")
    }
    assert first["reused"] is False

    monkeypatch.setattr(tbm, "_MEASURED", {})
    monkeypatch.setattr(tbm, "_MEASURED_MODELS", {})
    calls = []
    monkeypatch.setattr(tbm, "_compiled", lambda *a: calls.append(a))
    got = _traced(policy, f, k, x)
    assert calls == []  # nothing timed, whichever path the model chose
    log = uj.conv_path_log()
    (again,) = ours(log)
    assert (again["path"], again["ms"], again["cached"]) == (
        first["path"],
        first["ms"],
        str(cache),
    )
    assert again["reused"] is True and again["measured"] == entry["measured"]
    layer = next(r for r in log if "conv" in r)
    if policy == "measure":
        assert layer["policy"] == first["path"]
    np.testing.assert_allclose(got, _plain(f, k, x), rtol=1e-5, atol=1e-5)


def test_measure_cache_key_covers_the_model_and_versions(monkeypatch, tmp_path):
    """Other shapes are another entry; so is the same model under other JAX
    versions (the key holds them)."""
    from uswim_jax import _measure_cache

    cache = tmp_path / "c.json"
    monkeypatch.setenv("USWIM_CONV_CACHE", str(cache))
    f = _conv_fn()
    k = jax.random.normal(jax.random.key(0), (3, 3, 3, 2, 5))
    for n in (6, 4):  # two image batch sizes: two model signatures
        _traced("measure", f, k, jax.random.normal(jax.random.key(1), (n, 8, 8, 2)))
    entries = json.loads(cache.read_text())["entries"].values()
    assert len([e for e in entries if "model" in e]) == 2
    sig = next(iter(tbm._MEASURED_MODELS))
    assert _measure_cache.lookup(sig, tbm.MEASURE_CANDIDATES) is not None
    monkeypatch.setattr(_measure_cache.jax, "__version__", "0.0.0")
    assert _measure_cache.lookup(sig, tbm.MEASURE_CANDIDATES) is None


@pytest.mark.parametrize(
    "content, what",
    [
        ("{not json", "malformed"),
        ('{"format": 0, "entries": {}}', "malformed"),
        (None, "wrong form"),  # a stored entry whose path is no candidate
    ],
    ids=["not JSON", "another format", "bad entry"],
)
def test_measure_cache_bad_file_warns_and_measures(
    monkeypatch, tmp_path, content, what
):
    """A damaged cache file is one warning; the model is measured and the file
    rewritten with a good entry."""
    from uswim_jax import _measure_cache

    monkeypatch.setattr(_measure_cache, "_WARNED", set())
    cache = tmp_path / "c.json"
    monkeypatch.setenv("USWIM_CONV_CACHE", str(cache))
    f = _conv_fn()
    k = jax.random.normal(jax.random.key(0), (3, 3, 3, 2, 5))
    x = jax.random.normal(jax.random.key(1), (6, 8, 8, 2))
    if content is None:
        _traced("measure", f, k, x)
        data = json.loads(cache.read_text())
        (entry,) = [e for e in data["entries"].values() if "model" in e]
        entry["path"] = "no-such-path"
        cache.write_text(json.dumps(data))
        monkeypatch.setattr(tbm, "_MEASURED_MODELS", {})
    else:
        cache.write_text(content)
    with pytest.warns(RuntimeWarning, match=what):
        _traced("measure", f, k, x)
    (model,) = [r for r in uj.conv_path_log() if "model" in r]
    assert "cached" not in model and model["reused"] is False
    entries = json.loads(cache.read_text())["entries"].values()
    (entry,) = [e for e in entries if "model" in e]
    assert entry["path"] == model["path"]


def test_measure_cache_is_written_by_every_process(monkeypatch, tmp_path):
    """A process other than 0 keeps its machine's file too (each host of a
    multi-host run has its own), while shared outputs stay process 0's."""
    from uswim_jax import _io, _measure_cache

    monkeypatch.setattr(_io, "is_writer", lambda: False)
    cache = tmp_path / "conv_measure.json"
    monkeypatch.setenv("USWIM_CONV_CACHE", str(cache))
    record = {"model": "m", "path": "im2col", "ms": {"im2col": 1.0}, "seconds": 2.0}
    _measure_cache.remember("sig", record)
    assert _measure_cache.lookup("sig", tbm.MEASURE_CANDIDATES)["path"] == "im2col"
    _io.atomic_write_json(tmp_path / "report.json", {})
    assert not (tmp_path / "report.json").exists()


def test_measure_cache_off_and_unwritable(monkeypatch, tmp_path):
    """An empty ``USWIM_CONV_CACHE`` writes no file; a path that cannot be
    written is one warning, and the measured choice still runs."""
    from uswim_jax import _measure_cache

    monkeypatch.setattr(_measure_cache, "_WARNED", set())
    monkeypatch.setenv("USWIM_CONV_CACHE", "")
    assert _measure_cache.cache_file() is None
    monkeypatch.delenv("USWIM_CONV_CACHE")
    assert _measure_cache.cache_file().name == "conv_measure.json"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("USWIM_CONV_CACHE", str(blocker / "c.json"))  # under a file
    f = _conv_fn()
    k = jax.random.normal(jax.random.key(0), (3, 3, 3, 2, 5))
    x = jax.random.normal(jax.random.key(1), (6, 8, 8, 2))
    with pytest.warns(RuntimeWarning, match="not"):
        got = _traced("measure", f, k, x)
    np.testing.assert_allclose(got, _plain(f, k, x), rtol=1e-5, atol=1e-5)
    assert [r for r in uj.conv_path_log() if "model" in r]
