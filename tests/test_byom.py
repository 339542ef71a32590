"""Bring your own model: the core is correct by default on models written with
plain lax, Flax linen, Flax NNX (split state) and equinox, and refuses, with one
clear message, input it would otherwise get silently wrong (issue 12, items
1-4), and the examples of docs/byom.md run as written."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _user_models import KERNEL_COUNT, KINDS, build, make_data

import uswim_jax as u
from uswim_jax._tree import leaf_paths
from uswim_jax.chip_programming import StopRule, program_chips

KEY = jax.random.key(0)
LOUD = u.UniformVariation(3.0, 0.03)  # noise that must change predictions
DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs/byom.md"


@pytest.fixture(scope="module", params=KINDS)
def model(request):
    apply_fn, params, _, _ = build(request.param, jax.random.key(0))
    x, y = make_data(apply_fn, params, jax.random.key(1), n=16)
    return request.param, apply_fn, params, x, y


@pytest.fixture(scope="module")
def lax_model():
    apply_fn, params, _, _ = build("lax", jax.random.key(0))
    x, y = make_data(apply_fn, params, jax.random.key(1), n=16)
    return apply_fn, params, x, y


# ------------------------------------------------- item 1: every kind gets noise


def test_default_crossbar_is_the_kernels_of_every_kind(model):
    kind, _, params, _, _ = model
    assert u.crossbar_size(params) == KERNEL_COUNT
    flags = jax.tree.leaves(u.crossbar_flags(params))
    on = [p for p, f in zip(leaf_paths(params), flags, strict=True) if f]
    assert len(on) == 4, on  # two conv kernels, two dense kernels
    for p, leaf in zip(leaf_paths(params), jax.tree.leaves(params), strict=True):
        if p in on:
            assert np.ndim(leaf) >= 2
        else:  # biases, which equinox stores as (C, 1, 1)
            assert re.search(r"(^|/)(b|bias)(/value)?$", p), p


def test_noise_reaches_the_model_of_every_kind(model):
    kind, apply_fn, params, x, y = model
    # one compiled driver for both devices (a device model is a pytree)
    run = jax.jit(lambda d: u.evaluate(KEY, apply_fn, params, x, y, d, None, 4))
    clean = run(u.UniformVariation(0.0, 0.0))
    np.testing.assert_array_equal(clean.accuracies, 1.0)  # sigma = 0: identity
    acc = np.asarray(run(LOUD).accuracies)
    assert acc.mean() < 0.9 and acc.std() > 0, (kind, acc)
    # every kernel is perturbed, nothing else is
    instance = u.perturb(KEY, params, LOUD)
    for on, a, b in zip(
        jax.tree.leaves(u.crossbar_flags(params)),
        jax.tree.leaves(params),
        jax.tree.leaves(instance),
        strict=True,
    ):
        assert bool(np.any(np.asarray(a) != np.asarray(b))) == on


def test_the_four_kinds_have_the_same_curvature(model):
    """The same function written four ways: the one-pass diagonal of each
    kernel is the same set of numbers (equinox stores them transposed)."""
    kind, apply_fn, params, x, y = model
    ref_apply, ref_params, _, _ = build("lax", jax.random.key(0))
    ref = u.obd_diagonal(ref_apply, ref_params, x, y)
    h = u.obd_diagonal(apply_fn, params, x, y)

    def kernels(tree, p):
        flags = jax.tree.leaves(u.crossbar_flags(p))
        return sorted(
            (
                np.sort(np.ravel(np.asarray(a)))
                for a, f in zip(jax.tree.leaves(tree), flags, strict=True)
                if f
            ),
            key=len,
        )

    for a, b in zip(kernels(h, params), kernels(ref, ref_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


# -------------------------------------- no crossbar leaf: refused everywhere


def _no_crossbar_cases():
    """(name, call(apply_fn, params, x, y)) for every public entry point that
    takes params and a crossbar predicate (or a device model)."""
    pulse = u.PulseModel()
    empty = jnp.zeros((0,), jnp.int32)
    mask = lambda p: jax.tree.map(lambda a: jnp.zeros(np.shape(a), bool), p)
    return {
        "evaluate": lambda f, p, x, y: u.evaluate(KEY, f, p, x, y, LOUD, None, 2),
        "sweep": lambda f, p, x, y: u.sweep(
            KEY, f, p, x, y, LOUD, empty, jnp.zeros(1, jnp.int32), 2
        ),
        "evaluate(pulse)": lambda f, p, x, y: u.evaluate(
            KEY, f, p, x, y, pulse, None, 2
        ),
        "sweep(pulse)": lambda f, p, x, y: u.sweep(
            KEY, f, p, x, y, pulse, empty, jnp.zeros(1, jnp.int32), 2
        ),
        "perturb": lambda f, p, x, y: u.perturb(KEY, p, LOUD),
        "device.std": lambda f, p, x, y: LOUD.std(p),
        "device.effective_std": lambda f, p, x, y: LOUD.effective_std(p, None),
        "device.write_cycles": lambda f, p, x, y: LOUD.write_cycles(mask(p), p),
        "noise_like": lambda f, p, x, y: u.noise_like(KEY, p),
        "program": lambda f, p, x, y: u.program(KEY, p, pulse),
        "obd_diagonal": lambda f, p, x, y: u.obd_diagonal(f, p, x, y),
        "obd_over_dataset": lambda f, p, x, y: u.obd_over_dataset(f, p, x, y),
        "normalized_derivatives": lambda f, p, x, y: u.normalized_derivatives(p, p),
        "state_multiplier": lambda f, p, x, y: u.state_multiplier(p, 2.0),
        "swim_score": lambda f, p, x, y: u.swim_score(p, p, p),
        "uswim_score": lambda f, p, x, y: u.uswim_score(p, p, p, s=2.0),
        "magnitude_score": lambda f, p, x, y: u.magnitude_score(p),
        "random_score": lambda f, p, x, y: u.random_score(KEY, p),
        "global_order": lambda f, p, x, y: u.global_order(p),
        "select": lambda f, p, x, y: u.select(p, count=0),
        "mask_from_order": lambda f, p, x, y: u.mask_from_order(empty, p, count=0),
    }


NO_CROSSBAR = "no leaf of (params|scores) is on the crossbar"


def _renamed(tree):
    """The lax model's params with its kernels named ``filters`` (a name no
    default predicate knows)."""
    return {layer: {"filters": v["w"], "b": v["b"]} for layer, v in tree.items()}


@pytest.mark.parametrize("entry", list(_no_crossbar_cases()))
def test_no_crossbar_leaf_is_refused_at_every_entry_point(lax_model, entry):
    apply_fn, params, x, y = lax_model
    renamed = _renamed(params)
    f = lambda p, xb: apply_fn(
        {k: {"w": v["filters"], "b": v["b"]} for k, v in p.items()}, xb
    )
    call = _no_crossbar_cases()[entry]
    with pytest.raises(ValueError, match=NO_CROSSBAR) as info:
        call(f, renamed, x, y)
    msg = str(info.value)
    assert "conv1/filters (3, 3, 1, 4) float32" in msg
    assert "kernel/weight/w/W" in msg and ("crossbar=" in msg or "predicate=" in msg)


@pytest.mark.parametrize("kind", KINDS)
def test_a_predicate_that_matches_nothing_is_refused(kind):
    apply_fn, params, _, _ = build(kind, jax.random.key(0))
    x, y = make_data(apply_fn, params, jax.random.key(1), n=4)

    def nothing(path, leaf):
        return False

    device = u.UniformVariation(0.3, 0.03, crossbar=nothing)
    with pytest.raises(
        ValueError, match=NO_CROSSBAR + ".*predicate nothing.*crossbar="
    ):
        u.evaluate(KEY, apply_fn, params, x, y, device, None, 2)
    with pytest.raises(ValueError, match=NO_CROSSBAR + ".*predicate=") as info:
        u.obd_diagonal(apply_fn, params, x, y, predicate=nothing)
    assert "nothing" in str(info.value)


# ---------------------------------------- item 2: integer leaves never on it


def _with_int_leaves(params):
    """The lax params plus integer leaves named like kernels (a step counter,
    an index table), which the model does not read."""
    return {
        **params,
        "counter": {"w": jnp.arange(6, dtype=jnp.int32).reshape(2, 3) * 7},
        "table": {"kernel": jnp.ones((3, 3), jnp.int8)},
    }


def test_integer_leaves_are_never_crossbar_leaves(lax_model):
    apply_fn, params, x, y = lax_model
    p = _with_int_leaves(params)
    assert u.crossbar_size(p) == KERNEL_COUNT
    noisy = u.perturb(KEY, p, LOUD)
    np.testing.assert_array_equal(noisy["counter"]["w"], p["counter"]["w"])
    np.testing.assert_array_equal(noisy["table"]["kernel"], p["table"]["kernel"])
    assert len(u.global_order(u.magnitude_score(p))) == KERNEL_COUNT
    h = u.obd_diagonal(lambda q, xb: apply_fn({k: q[k] for k in params}, xb), p, x, y)
    scores = u.swim_score(p, h)
    np.testing.assert_array_equal(scores["counter"]["w"], 0)
    assert not bool(u.select(scores, count=KERNEL_COUNT)["counter"]["w"].any())
    res = u.program(KEY, p, u.PulseModel())
    np.testing.assert_array_equal(res.params["counter"]["w"], p["counter"]["w"])
    np.testing.assert_array_equal(res.pulses["counter"]["w"], 0)


def test_a_user_predicate_is_asked_about_floating_leaves_only(lax_model):
    _, params, _, _ = lax_model
    p = _with_int_leaves(params)
    asked = []

    def everything(path, leaf):
        asked.append(path)
        return True

    n_float = sum(int(np.size(a)) for a in jax.tree.leaves(params))
    assert u.crossbar_size(p, everything) == n_float
    assert asked and not any(a.startswith(("counter", "table")) for a in asked)
    device = u.UniformVariation(0.3, 0.03, crossbar=everything)
    noisy = u.perturb(KEY, p, device)
    np.testing.assert_array_equal(noisy["counter"]["w"], p["counter"]["w"])
    assert bool(np.any(noisy["conv1"]["b"] != p["conv1"]["b"]))  # floats: all on it


# ------------------------------- items 3 and 4: labels, logits, NaN: one check


def _label_cases():
    """(name, call(apply_fn, params, x, y)) for every public entry point that
    takes labels."""
    pulse = u.PulseModel()
    order = lambda p: u.global_order(u.magnitude_score(p))
    counts = jnp.asarray([0, 10], jnp.int32)
    return {
        "evaluate": lambda f, p, x, y: u.evaluate(KEY, f, p, x, y, LOUD, None, 2),
        "sweep": lambda f, p, x, y: u.sweep(KEY, f, p, x, y, LOUD, order(p), counts, 2),
        "evaluate(pulse)": lambda f, p, x, y: u.evaluate(
            KEY, f, p, x, y, pulse, None, 2
        ),
        "sweep(pulse)": lambda f, p, x, y: u.sweep(
            KEY, f, p, x, y, pulse, order(p), counts, 2
        ),
        "obd_diagonal": lambda f, p, x, y: u.obd_diagonal(f, p, x, y),
        "obd_over_dataset": lambda f, p, x, y: u.obd_over_dataset(f, p, x, y),
        "ggn_diagonal": lambda f, p, x, y: u.ggn_diagonal(f, p, x, y),
        "fisher_diagonal": lambda f, p, x, y: u.fisher_diagonal(f, p, x, y),
        "make_loss_fn": lambda f, p, x, y: u.make_loss_fn(f, x, y)(p),
        "exact_diagonal": lambda f, p, x, y: u.exact_diagonal(
            u.make_loss_fn(f, x, y), p
        ),
    }


#: (name, how to spoil (apply_fn, y), the message)
BAD_LABELS = {
    "out of range": (
        lambda f, y: (f, y.at[0].set(4)),
        r"y must lie in \[0, 4\) \(the logits have 4 classes\), got labels in \[0, 4\]",
    ),
    "negative": (lambda f, y: (f, y.at[0].set(-1)), r"y must lie in \[0, 4\)"),
    "one-hot": (
        lambda f, y: (f, jax.nn.one_hot(y, 4, dtype=jnp.int32)),
        r"y must be class indices of shape \(16,\), got one-hot .* \(16, 4\); "
        r"pass y.argmax\(-1\)",
    ),
    "float": (
        lambda f, y: (f, y.astype(jnp.float32)),
        "y must hold integer class indices, got dtype float32",
    ),
    "wrong length": (lambda f, y: (f, y[:5]), r"y must have shape \(16,\)"),
    "1-D logits": (
        lambda f, y: (lambda p, x: f(p, x)[:, 0], y),
        r"apply_fn must return logits of shape \(N, C\) = \(16, num_classes\), "
        r"got shape \(16,\)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
@pytest.mark.parametrize("entry", list(_label_cases()))
def test_bad_labels_are_refused_with_one_message(lax_model, entry, case):
    apply_fn, params, x, y = lax_model
    spoil, message = BAD_LABELS[case]
    f, bad = spoil(apply_fn, y)
    with pytest.raises(ValueError, match=message):
        _label_cases()[entry](f, params, x, bad)


@pytest.mark.parametrize("case", ["one-hot", "out of range"])
def test_bad_labels_are_refused_for_every_kind(model, case):
    _, apply_fn, params, x, y = model
    spoil, message = BAD_LABELS[case]
    f, bad = spoil(apply_fn, y)
    for call in (_label_cases()["evaluate"], _label_cases()["obd_over_dataset"]):
        with pytest.raises(ValueError, match=message):
            call(f, params, x, bad)


def test_structure_checks_also_run_under_jit(lax_model):
    """Traced labels: the range is unknown, but dtype, shape and the logits'
    rank are still checked."""
    apply_fn, params, x, y = lax_model
    run = jax.jit(lambda yy: u.obd_diagonal(apply_fn, params, x, yy))
    with pytest.raises(ValueError, match="integer class indices"):
        run(y.astype(jnp.float32))
    run(y.at[0].set(7))  # traced: the range cannot be checked, and is not


def _nan(tree):
    leaves, treedef = jax.tree.flatten(tree)
    return treedef.unflatten(
        [leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan), *leaves[1:]]
    )


@pytest.mark.parametrize(
    "entry", ["obd_diagonal", "swim_score", "uswim_score", "evaluate", "ggn_diagonal"]
)
def test_nan_params_are_refused(lax_model, entry):
    apply_fn, params, x, y = lax_model
    bad = _nan(params)
    calls = {
        "swim_score": lambda: u.swim_score(bad, params, params),
        "uswim_score": lambda: u.uswim_score(bad, params, params, s=2.0),
    }
    call = calls.get(entry) or (lambda: _label_cases()[entry](apply_fn, bad, x, y))
    with pytest.raises(ValueError, match=r"params\[.*\] contains NaN or Inf"):
        call()


@pytest.mark.parametrize(
    "entry", ["obd_diagonal", "obd_over_dataset", "fisher_diagonal"]
)
def test_nan_inputs_are_refused(lax_model, entry):
    apply_fn, params, x, y = lax_model
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        _label_cases()[entry](apply_fn, params, x.at[0, 0, 0, 0].set(jnp.inf), y)


def test_a_model_left_whole_is_refused_with_how_to_split_it(lax_model):
    """A pytree holding a function (an equinox module passed unsplit) gets one
    message naming the leaf and how to partition, from every entry point, not
    JAX's failure to trace it."""
    import equinox as eqx

    _, _, x, y = lax_model
    mlp = eqx.nn.MLP(x[0].size, 4, 8, 1, key=jax.random.key(0))
    f = lambda m, xs: jax.vmap(m)(xs.reshape(len(xs), -1))
    message = r"params\.activation is a \w+, not an array: .*eqx\.partition"
    for entry in ("evaluate", "sweep", "obd_over_dataset", "ggn_diagonal"):
        with pytest.raises(ValueError, match=message):
            _label_cases()[entry](f, mlp, x, y)
    params, static = eqx.partition(mlp, eqx.is_array)
    g = lambda p, xs: f(eqx.combine(p, static), xs)
    _label_cases()["evaluate"](g, params, x, y)  # split, it runs


def test_python_number_leaves_count_as_arrays(lax_model):
    """A Python number among the params (a scale, a temperature) is traced as
    an array, the same as the array holding it: evaluate and sweep give the
    same per-trial accuracies either way."""
    apply_fn, params, x, y = lax_model
    f = lambda p, xs: apply_fn(p["net"], xs) * p["scale"] + p["shift"]
    as_numbers = {"net": params, "scale": 2, "shift": 0.5}
    as_arrays = {"net": params, "scale": jnp.asarray(2), "shift": jnp.asarray(0.5)}
    for entry in ("evaluate", "sweep"):
        a = _label_cases()[entry](f, as_numbers, x, y).accuracies
        b = _label_cases()[entry](f, as_arrays, x, y).accuracies
        np.testing.assert_array_equal(a, b)
        assert len(np.unique(np.asarray(a))) > 1  # the noise mattered


def test_nnx_state_holding_rng_keys_runs_and_matches_its_params(lax_model):
    """A Flax NNX model with Dropout keeps PRNG keys in its state: evaluate,
    sweep, the one-pass diagonal and the scores take the whole state (or the
    module itself) and give what the params alone give, the keys passed
    through."""
    from flax import nnx

    _, _, x, _ = lax_model

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.dense = nnx.Linear(4 * x[0].size, 4, rngs=rngs)

        def __call__(self, xs):
            h = self.drop(nnx.relu(self.conv(xs)))
            return self.dense(h.reshape(len(xs), -1))

    net = Net(nnx.Rngs(0))
    net.eval()
    graph, state = nnx.split(net)
    keys = [
        leaf
        for leaf in jax.tree.leaves(state)
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
    ]
    assert keys  # the case under test: keys among the leaves
    graph_p, params, rest = nnx.split(net, nnx.Param, ...)
    whole = lambda s, xs: nnx.merge(graph, s)(xs)
    split = lambda p, xs: nnx.merge(graph_p, p, rest)(xs)
    y = jnp.argmax(whole(state, x), -1)
    ref = {}
    for entry in ("evaluate", "sweep"):
        ref[entry] = _label_cases()[entry](split, params, x, y).accuracies
        assert len(np.unique(np.asarray(ref[entry]))) > 1  # the noise mattered
        got = _label_cases()[entry](whole, state, x, y).accuracies
        np.testing.assert_array_equal(got, ref[entry], err_msg=entry)
    got = _label_cases()["evaluate"](lambda m, xs: m(xs), net, x, y).accuracies
    np.testing.assert_array_equal(got, ref["evaluate"])
    h_whole, g_whole = u.obd_over_dataset(whole, state, x, y)
    h_split, g_split = u.obd_over_dataset(split, params, x, y)
    scores = {
        "hess": lambda p, h, g: h,
        "swim": u.swim_score,
        "uswim": lambda p, h, g: u.uswim_score(p, h, g, s=2.0),
        "expected loss": lambda p, h, g: u.expected_loss_score(h, 0.3, 0.03),
    }
    for name, score in scores.items():
        a = score(state, h_whole, g_whole)
        b = score(params, h_split, g_split)
        by_path = dict(zip(leaf_paths(a), jax.tree.leaves(a), strict=True))
        for path, leaf in zip(leaf_paths(b), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(by_path[path], leaf, rtol=1e-6, err_msg=name)


def _budget(params):
    return u.global_order(u.magnitude_score(params)), jnp.asarray([0, 10], jnp.int32)


#: name -> call(model, key), model = (apply_fn, params, x, y): every public
#: entry point that draws noise.
KEY_ENTRIES = {
    "evaluate": lambda m, k: u.evaluate(k, *m, LOUD, None, 3),
    "sweep": lambda m, k: u.sweep(k, *m, LOUD, *_budget(m[1]), 3),
    "hutchinson_diagonal": lambda m, k: u.hutchinson_diagonal(
        k, u.make_loss_fn(m[0], m[2], m[3]), m[1], num_probes=2
    ),
    "program_chips": lambda m, k: program_chips(
        k, *m, *m[2:], LOUD, *_budget(m[1]), 3, StopRule(target=0.5)
    ),
    "perturb": lambda m, k: u.perturb(k, m[1], LOUD),
    "noise_like": lambda m, k: u.noise_like(k, m[1]),
    "random_score": lambda m, k: u.random_score(k, m[1]),
    "program": lambda m, k: u.program(k, m[1], u.PulseModel()),
}


@pytest.mark.parametrize("entry", KEY_ENTRIES)
def test_bad_keys_are_refused(lax_model, entry):
    """Every entry point that draws noise takes one PRNG key; an int seed, a
    float array or a batch of keys is one clear message, not JAX's."""
    bad = [
        (0, r"key must be a JAX PRNG key such as jax.random.key\(0\), got int 0"),
        (jnp.zeros(2), r"got an array of shape \(2,\) and dtype float32"),
        (jax.random.split(KEY, 3), r"one PRNG key, got an array of keys of shape \(3,"),
    ]
    for key, message in bad:
        with pytest.raises(ValueError, match=message):
            KEY_ENTRIES[entry](lax_model, key)


def test_typed_and_raw_keys_give_the_same_trials(lax_model):
    """``jax.random.key(s)`` and the older ``jax.random.PRNGKey(s)`` hold the
    same bits: evaluate and sweep give the same per-trial accuracies."""
    for name in ("evaluate", "sweep"):
        typed = KEY_ENTRIES[name](lax_model, jax.random.key(5)).accuracies
        raw = KEY_ENTRIES[name](lax_model, jax.random.PRNGKey(5)).accuracies
        np.testing.assert_array_equal(typed, raw, err_msg=name)
        assert len(np.unique(np.asarray(typed))) > 1  # the noise mattered


# ------------------------------------------------------------- docs/byom.md


def _doc_blocks():
    return re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)


def test_the_byom_page_shows_the_four_ways():
    blocks = _doc_blocks()
    for needle in (
        "jax.lax.conv_general_dilated",
        "flax.linen",
        "nnx.split",
        "eqx.partition",
    ):
        ways = [b for b in blocks if needle in b]
        assert len(ways) == 1, needle
        for call in ("uj.evaluate(", "uj.obd_over_dataset(", "uj.sweep("):
            assert call in ways[0], (needle, call)


@pytest.mark.parametrize("i", range(len(_doc_blocks())))
def test_the_byom_examples_run(i, capsys):
    code = _doc_blocks()[i]
    namespace = {"__name__": f"byom_example_{i}"}
    exec(compile(code, f"{DOCS}:block{i}", "exec"), namespace)  # noqa: S102
    if "curve" in namespace:  # the four ways: a real evaluation and sweep ran
        stats, curve = namespace["stats"], namespace["curve"]
        assert np.asarray(stats.accuracies).shape == (8,)
        assert np.asarray(curve.accuracies).shape == (3, 8)
        assert "accuracy" in capsys.readouterr().out
