"""Named key streams (uswim_jax.keys): disjoint, deterministic, validated."""

import ast
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import uswim_jax
from uswim_jax.keys import KEY_STREAMS, host_rng, key_stream, stream_id
from uswim_jax.train import TrainConfig

#: Seeds checked: the configs' (0), a few others and the largest allowed.
SEEDS = (0, 1, 2, 7, 2**32 - 1)
#: Child indices checked for every stream: more than any config's trials (at
#: most 100), fine-tuning steps or epochs, and the 1,000-trial runs.
CHILDREN = 4096


def _data(keys: jax.Array) -> np.ndarray:
    """Each key's two uint32 words as one uint64 (shape ``keys.shape``)."""
    d = np.asarray(jax.random.key_data(keys)).astype(np.uint64)
    return (d[..., 0] << np.uint64(32)) | d[..., 1]


def _children(base: jax.Array, n: int) -> jax.Array:
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(
        jnp.arange(n, dtype=jnp.uint32)
    )


def _collisions(named: dict[str, np.ndarray]) -> set[tuple[str, str]]:
    """Label pairs of entries (of one or two groups) with equal key data."""
    labels = np.concatenate([[k] * v.size for k, v in named.items()])
    index = np.concatenate([np.arange(v.size) for v in named.values()])
    flat = np.concatenate([v.ravel() for v in named.values()])
    order = np.argsort(flat, kind="stable")
    same = np.flatnonzero(flat[order][1:] == flat[order][:-1])
    return {
        tuple(f"{labels[i]}[{index[i]}]" for i in (order[s], order[s + 1]))
        for s in same
    }


def _new_scheme(seed: int) -> dict[str, np.ndarray]:
    """Every stream of ``seed``, every child of every stream (trial keys,
    chip keys, step and epoch keys) and the legacy direct children
    ``fold_in(key(seed), t)``."""
    out = {
        f"{seed}/streams": _data(jnp.stack([key_stream(seed, n) for n in KEY_STREAMS]))
    }
    for name in KEY_STREAMS:
        out[f"{seed}/{name}/child"] = _data(_children(key_stream(seed, name), CHILDREN))
    out[f"{seed}/root/child"] = _data(_children(jax.random.key(seed), CHILDREN))
    return out


def test_streams_children_and_seeds_are_pairwise_distinct():
    # Streams of one seed, every trial key fold_in(trials, t) and every other
    # stream's children for t < CHILDREN, across all SEEDS at once.
    named = {}
    for seed in SEEDS:
        named.update(_new_scheme(seed))
    assert sum(v.size for v in named.values()) == len(SEEDS) * (
        len(KEY_STREAMS) + (len(KEY_STREAMS) + 1) * CHILDREN
    )
    assert _collisions(named) == set()


def test_the_check_finds_the_old_scheme_collisions():
    # The former derivation: fold_in(key(seed), 1/7/11/13/17) for augmentation,
    # probes, random order, curvature and fine-tuning, key(seed) for init, and
    # trials fold_in(key(seed), t).
    root = jax.random.key(0)
    old = jnp.stack([root] + [jax.random.fold_in(root, i) for i in (1, 7, 11, 13, 17)])
    got = _collisions({"old": _data(old), "trial": _data(_children(root, 100))})
    assert got == {
        (f"old[{i + 1}]", f"trial[{t}]") for i, t in enumerate((1, 7, 11, 13, 17))
    }


def test_structural_properties_of_the_ids():
    ids = [stream_id(n) for n in KEY_STREAMS]
    assert len(set(ids)) == len(ids) == len(set(KEY_STREAMS))
    # At least 2**30: a stream is never fold_in(key(seed), t) for t < 2**30.
    assert min(ids) >= 2**30 and max(ids) < 2**32
    for name in KEY_STREAMS:
        want = jax.random.fold_in(jax.random.key(3), stream_id(name))
        np.testing.assert_array_equal(
            jax.random.key_data(key_stream(3, name)), jax.random.key_data(want)
        )


def test_same_seed_same_streams():
    for name in KEY_STREAMS:
        a, b = key_stream(5, name), key_stream(np.int64(5), name)
        np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))
        assert jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


@pytest.mark.parametrize("name", ["Init", "trial", "", "init "])
def test_unknown_name_is_a_value_error(name):
    with pytest.raises(ValueError, match="name must be one of"):
        key_stream(0, name)


@pytest.mark.parametrize("seed", [-1, 2**32, 2**40, 1.0, True, "0", None])
def test_bad_seed_is_a_value_error(seed):
    with pytest.raises(ValueError, match="seed"):
        key_stream(seed, "init")


def test_train_config_refuses_a_seed_outside_the_key_range():
    with pytest.raises(ValueError, match="seed"):
        TrainConfig(seed=2**32)
    with pytest.raises(ValueError, match="seed"):
        TrainConfig(seed=-1)


def test_host_rng_is_deterministic_and_follows_the_key():
    k = key_stream(0, "data_order")
    a = host_rng(jax.random.fold_in(k, 0)).permutation(1000)
    b = host_rng(jax.random.fold_in(k, 0)).permutation(1000)
    c = host_rng(jax.random.fold_in(k, 1)).permutation(1000)
    np.testing.assert_array_equal(a, b)
    assert np.array_equal(np.sort(a), np.arange(1000))
    assert not np.array_equal(a, c)


def test_public_names():
    assert uswim_jax.key_stream is key_stream
    assert uswim_jax.KEY_STREAMS == KEY_STREAMS


def test_no_key_is_made_from_a_seed_outside_the_keys_module():
    # Every key of the library derives from key_stream: no call of
    # jax.random.key / PRNGKey anywhere else under src/ (docstring examples are
    # strings and do not count).
    src = Path(uswim_jax.__file__).parent
    found = []
    for path in sorted(src.rglob("*.py")):
        if path.name == "keys.py" and path.parent == src:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name in ("key", "PRNGKey") and "random" in ast.unparse(f):
                    found.append(f"{path.relative_to(src)}:{node.lineno}")
    assert not found, found
