"""Where a verification budget goes: per crossbar layer, how many of the first
``count`` weights of an order (:func:`uswim_jax.global_order`) fall in it.

Host NumPy, for reports: the studies of ``experiments/deep`` and
``experiments/vit`` use it to say which layers absorb the verified budget.
"""

from collections.abc import Callable
from typing import Any

import numpy as np

from uswim_jax._tree import CrossbarPredicate
from uswim_jax.sensitivity_report import crossbar_arrays

__all__ = ["group_budget", "layer_budget"]


def layer_budget(
    order: Any,
    params: Any,
    count: int,
    *,
    predicate: CrossbarPredicate | None = None,
) -> dict[str, tuple[int, int]]:
    """``{layer path: (verified, size)}``: of the first ``count`` weights of
    ``order`` (flat indices into the crossbar leaves in ``tree_leaves`` order,
    as :func:`uswim_jax.global_order` returns), how many lie in each crossbar
    layer, and the layer's size. The verified counts sum to ``count``.

    Raises:
        ValueError: ``order`` is not a permutation of the crossbar weights, or
            ``count`` is not in ``[0, len(order)]``.
    """
    sizes = {k: len(v) for k, v in crossbar_arrays(params, predicate).items()}
    n = sum(sizes.values())
    order = np.asarray(order)
    if order.shape != (n,) or not np.array_equal(np.sort(order), np.arange(n)):
        raise ValueError(
            f"order must be a permutation of the {n} crossbar weights, got shape "
            f"{order.shape}"
        )
    count = int(count)
    if not 0 <= count <= n:
        raise ValueError(f"count must lie in [0, {n}], got {count}")
    chosen = np.zeros(n, bool)
    chosen[order[:count]] = True
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = (int(chosen[start : start + size].sum()), size)
        start += size
    return out


def group_budget(
    budget: dict[str, tuple[int, int]], group: Callable[[str], str]
) -> dict[str, tuple[int, int]]:
    """:func:`layer_budget` summed over groups of layers: ``group(path)`` names
    the group of a layer path (groups in order of first appearance)."""
    out: dict[str, list[int]] = {}
    for path, (v, size) in budget.items():
        acc = out.setdefault(group(path), [0, 0])
        acc[0] += v
        acc[1] += size
    return {g: (v, s) for g, (v, s) in out.items()}
