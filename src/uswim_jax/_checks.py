"""Input validation shared by the public API: clear ``ValueError``s naming the
argument, raised before anything reaches JAX.

Checks on values are skipped for traced arrays (inside ``jit``/``vmap`` the values
are not known); structure checks always run.
"""

from typing import Any

import jax
import numpy as np


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds a known value (not a tracer)."""
    return not isinstance(x, jax.core.Tracer)


def check_nonnegative(name: str, value: Any) -> None:
    """Raises ``ValueError`` if a concrete ``value`` is negative or not finite."""
    if not is_concrete(value):
        return
    arr = np.asarray(value)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def check_positive(name: str, value: Any) -> None:
    """Raises ``ValueError`` if a concrete ``value`` is not strictly positive."""
    if not is_concrete(value):
        return
    arr = np.asarray(value)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be > 0 and finite, got {value!r}")


def check_fraction(name: str, value: Any) -> None:
    """Raises ``ValueError`` unless a concrete ``value`` lies in [0, 1]."""
    if not is_concrete(value):
        return
    arr = np.asarray(value)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr > 1):
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def check_finite_tree(name: str, tree: Any) -> None:
    """Raises ``ValueError`` naming the first leaf that holds NaN or Inf."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not is_concrete(leaf):
            continue
        arr = np.asarray(leaf)
        if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            where = jax.tree_util.keystr(path)
            raise ValueError(f"{name}{where} contains NaN or Inf")


def check_same_structure(name: str, tree: Any, reference: Any, ref_name: str) -> None:
    """Raises ``ValueError`` if ``tree`` and ``reference`` differ in structure or
    leaf shapes."""
    t1 = jax.tree_util.tree_structure(tree)
    t2 = jax.tree_util.tree_structure(reference)
    if t1 != t2:
        raise ValueError(
            f"{name} must have the same pytree structure as {ref_name}; "
            f"got {t1} vs {t2}"
        )
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(tree),
        jax.tree_util.tree_leaves(reference),
        strict=True,
    ):
        if np.shape(a) != np.shape(b):
            where = jax.tree_util.keystr(path)
            raise ValueError(
                f"{name}{where} has shape {np.shape(a)}, but {ref_name}{where} "
                f"has shape {np.shape(b)}"
            )


def check_dataset(name: str, data: Any, num_classes: int | None = None) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``data`` unpacks to a
    non-empty batch of finite NHWC images and matching integer labels (in
    ``[0, num_classes)`` when given, else from ``data.num_classes`` if any)."""
    try:
        x, y = data
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a Dataset or an (images, labels) pair, got "
            f"{type(data).__name__}"
        ) from None
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(
            f"{name} must hold at least one NHWC image, got images of shape {x.shape}"
        )
    if y.shape != (len(x),):
        raise ValueError(f"{name} labels must have shape ({len(x)},), got {y.shape}")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{name} images must be numbers, got dtype {x.dtype}")
    if x.dtype.kind == "f":
        for i in range(0, len(x), 4096):  # in pieces: no full-size temporary
            if not np.all(np.isfinite(x[i : i + 4096])):
                raise ValueError(f"{name} images must be finite (found NaN or Inf)")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{name} labels must be integers, got dtype {y.dtype}")
    if num_classes is None:
        num_classes = getattr(data, "num_classes", None)
    if y.min() < 0 or (num_classes is not None and y.max() >= num_classes):
        raise ValueError(
            f"{name} labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]"
        )
