"""Pytree helpers shared by the core: leaf paths and the crossbar predicate.

Which leaves of a params pytree are programmed onto the crossbar is decided by a
predicate over the leaf's path (a ``"/"``-joined string such as
``"params/Conv_0/kernel"``) and the leaf itself. Everything else (biases,
normalisation parameters, batch-norm statistics) stays exact. Only
floating-point leaves can be crossbar leaves: a predicate (the default or a
user's) is asked about floating-point leaves only, and integer or boolean leaves
(step counters, indices, masks) are never programmed, perturbed or ranked.

The paths of the common frameworks (what :func:`path_str` gives):

- Flax linen ``variables``: ``params/Conv_0/kernel``;
- Flax NNX state (``graphdef, state = nnx.split(model)``):
  ``conv1/kernel/value`` or ``layers/0/kernel/value`` (each ``nnx.Variable``
  flattens to a ``value`` child; ``raw_value`` in some versions);
- equinox (``params, static = eqx.partition(model, eqx.is_array)``):
  ``layers/0/weight``;
- Haiku: ``conv2_d/w``; a plain dict: whatever its keys are.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uswim_jax._checks import NUMBER_TYPES, check_array_leaves

CrossbarPredicate = Callable[[str, Any], bool]

#: Leaf names treated as crossbar weights by :func:`default_crossbar`.
KERNEL_NAMES = frozenset({"kernel", "weight", "w", "W"})
#: Trailing path components that wrap an array rather than name it (Flax NNX's
#: ``Variable``); :func:`leaf_name` skips them.
CONTAINER_NAMES = frozenset({"value", "raw_value"})


def _key_str(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def path_str(path: tuple) -> str:
    """Turns a ``jax.tree_util`` key path into ``"a/b/c"``."""
    return "/".join(_key_str(p) for p in path)


def leaf_paths(tree: Any) -> list[str]:
    """The ``"/"``-joined path of every leaf, in ``tree_leaves`` order."""
    return [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def leaf_name(path: str) -> str:
    """The name of the parameter a path points to: its last component, skipping
    trailing container components (``"conv/kernel/value"`` -> ``"kernel"``)."""
    parts = path.split("/")
    while len(parts) > 1 and parts[-1] in CONTAINER_NAMES:
        parts.pop()
    return parts[-1]


def numbers_as_arrays(tree: Any) -> Any:
    """``tree`` with its Python-number leaves made JAX arrays (weakly typed, as
    ``jit`` traces them), so that every leaf has a shape and a dtype."""
    return jax.tree.map(
        lambda a: jnp.asarray(a) if isinstance(a, NUMBER_TYPES) else a,
        tree,
    )


def abstract(leaf: Any, shape: tuple | None = None) -> jax.ShapeDtypeStruct:
    """``leaf``'s shape (or ``shape``), dtype and weak type as a
    ``jax.ShapeDtypeStruct``, for tracing without values: a weakly typed leaf
    (a Python number, ``jnp.asarray(2)``) stays weak, so a trace of it promotes
    as the call does."""
    return jax.ShapeDtypeStruct(
        np.shape(leaf) if shape is None else shape,
        jnp.result_type(leaf),
        weak_type=bool(getattr(leaf, "weak_type", False)),
    )


def _dtype(leaf: Any) -> Any:
    dtype = getattr(leaf, "dtype", None)
    return np.result_type(leaf) if dtype is None else dtype


def is_floating(leaf: Any) -> bool:
    """True when ``leaf`` (an array, tracer, ``ShapeDtypeStruct`` or scalar) has
    a real floating-point dtype."""
    return bool(jnp.issubdtype(_dtype(leaf), jnp.floating))


def default_crossbar(path: str, leaf: Any) -> bool:
    """Conv and dense kernels: a floating-point leaf named ``kernel`` (Flax),
    ``weight`` (equinox, PyTorch-style), ``w`` (Haiku) or ``W`` with at least two
    dimensions. A trailing ``value``/``raw_value`` component (Flax NNX state) is
    skipped, so ``"Conv_0/kernel/value"`` is a kernel."""
    return is_floating(leaf) and np.ndim(leaf) >= 2 and leaf_name(path) in KERNEL_NAMES


def on_crossbar(predicate: CrossbarPredicate | None, path: str, leaf: Any) -> bool:
    """Whether one leaf is on the crossbar: a floating-point leaf for which
    ``predicate(path, leaf)`` (default :func:`default_crossbar`) is true.

    Every use of a crossbar predicate in the library goes through here, so a
    user's predicate is only ever asked about floating-point leaves.
    """
    predicate = default_crossbar if predicate is None else predicate
    return is_floating(leaf) and bool(predicate(path, leaf))


def crossbar_flags(tree: Any, predicate: CrossbarPredicate | None = None) -> Any:
    """A pytree of Python bools like ``tree``: True where the leaf is on the
    crossbar (see :func:`on_crossbar`)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: on_crossbar(predicate, path_str(p), x), tree
    )


def check_crossbar(
    name: str,
    tree: Any,
    predicate: CrossbarPredicate | None = None,
    *,
    fix: str = "pass predicate=...",
) -> None:
    """Raises ``ValueError`` naming ``name`` when no leaf of ``tree`` is on the
    crossbar: noise, curvature or a ranking that touches nothing is never what
    was meant. Structural only (paths, dtypes, shapes), so it also runs on
    traced values.

    Args:
        name: the argument's name in the message (``"params"``, ``"scores"``).
        tree: the pytree.
        predicate: the crossbar predicate in use (``None``: the default).
        fix: how the caller passes a predicate, for the message.
    """
    check_array_leaves(name, tree)  # a function leaf has no dtype to test
    pairs = jax.tree_util.tree_leaves_with_path(tree)
    if any(on_crossbar(predicate, path_str(p), x) for p, x in pairs):
        return
    shown = [
        f"{path_str(p) or '<root>'} {np.shape(x)} {_dtype(x)}" for p, x in pairs[:8]
    ]
    more = f", ... ({len(pairs)} leaves)" if len(pairs) > 8 else ""
    leaves = "; ".join(shown) + more if pairs else "none (an empty pytree)"
    if predicate is None or predicate is default_crossbar:
        rule = (
            "the default predicate takes floating-point leaves named "
            "kernel/weight/w/W with ndim >= 2 (a trailing value/raw_value "
            "component, as in Flax NNX state, is skipped)"
        )
    else:
        what = getattr(predicate, "__name__", repr(predicate))
        rule = (
            f"the crossbar predicate {what} is true for none of them (it is "
            "asked about floating-point leaves only)"
        )
    raise ValueError(
        f"no leaf of {name} is on the crossbar: its leaves are {leaves}; {rule}. "
        f"To choose the crossbar leaves, {fix} (a predicate (path, leaf) -> bool)."
    )


def map_crossbar(
    fn: Callable[..., Any],
    tree: Any,
    *rest: Any,
    predicate: CrossbarPredicate | None = None,
    otherwise: Callable[..., Any] | None = None,
) -> Any:
    """Applies ``fn(leaf, *rest_leaves)`` to crossbar leaves and ``otherwise``
    (default: return the leaf unchanged) to the others."""
    otherwise = (lambda x, *_: x) if otherwise is None else otherwise

    def visit(path, x, *xs):
        if on_crossbar(predicate, path_str(path), x):
            return fn(x, *xs)
        return otherwise(x, *xs)

    return jax.tree_util.tree_map_with_path(visit, tree, *rest)


def crossbar_size(tree: Any, predicate: CrossbarPredicate | None = None) -> int:
    """Number of scalar weights on the crossbar."""
    flags = crossbar_flags(tree, predicate)
    return int(
        sum(
            int(np.size(x))
            for x, f in zip(
                jax.tree_util.tree_leaves(tree),
                jax.tree_util.tree_leaves(flags),
                strict=True,
            )
            if f
        )
    )
