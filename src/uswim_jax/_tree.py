"""Pytree helpers shared by the core: leaf paths and the crossbar predicate.

Which leaves of a params pytree are programmed onto the crossbar is decided by a
predicate over the leaf's path (a ``"/"``-joined string such as
``"params/Conv_0/kernel"``) and the leaf itself. Everything else (biases,
normalisation parameters, batch-norm statistics) stays exact.
"""

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

CrossbarPredicate = Callable[[str, Any], bool]

#: Leaf names treated as crossbar weights by :func:`default_crossbar`.
KERNEL_NAMES = frozenset({"kernel", "weight", "w", "W"})


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


def default_crossbar(path: str, leaf: Any) -> bool:
    """Conv and dense kernels: a leaf named ``kernel``/``weight``/``w``/``W`` with
    at least two dimensions."""
    name = path.rsplit("/", 1)[-1]
    return name in KERNEL_NAMES and np.ndim(leaf) >= 2


def crossbar_flags(tree: Any, predicate: CrossbarPredicate | None = None) -> Any:
    """A pytree of Python bools like ``tree``: True where the leaf is on the
    crossbar."""
    predicate = default_crossbar if predicate is None else predicate
    return jax.tree_util.tree_map_with_path(
        lambda p, x: bool(predicate(path_str(p), x)), tree
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
    predicate = default_crossbar if predicate is None else predicate
    otherwise = (lambda x, *_: x) if otherwise is None else otherwise

    def visit(path, x, *xs):
        if predicate(path_str(path), x):
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
