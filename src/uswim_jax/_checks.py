"""Input validation shared by the public API: clear ``ValueError``s naming the
argument, raised before anything reaches JAX.

Checks on values are skipped for traced arrays (inside ``jit``/``vmap`` the values
are not known); structure checks always run.
"""

from typing import Any

import jax
import jax.numpy as jnp
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


def all_finite(value: Any, block: int = 4096) -> bool:
    """True when a concrete array holds no NaN or Inf (non-float: always).

    A JAX array on an accelerator is checked where it lives (one bool comes
    back); a host array is checked ``block`` rows at a time, so no full-size
    temporary is made.
    """
    dtype = getattr(value, "dtype", None)
    if dtype is not None and not jax.dtypes.issubdtype(dtype, jnp.inexact):
        return True  # integers, booleans, PRNG keys (Flax NNX's RNG state)
    if isinstance(value, jax.Array) and any(
        d.platform != "cpu" for d in value.devices()
    ):
        return bool(jnp.all(jnp.isfinite(value)))
    arr = np.asarray(value)
    if arr.dtype.kind not in "fc":
        return True
    if arr.ndim == 0:
        return bool(np.isfinite(arr))
    return all(
        np.all(np.isfinite(arr[i : i + block])) for i in range(0, len(arr), block)
    )


def check_key(name: str, key: Any) -> None:
    """Raises ``ValueError`` unless ``key`` is one JAX PRNG key: a typed key
    (``jax.random.key(seed)``, shape ``()``) or a raw ``uint32`` key array
    (``jax.random.PRNGKey(seed)``, one axis). Checks the type and shape only,
    so it runs on traced keys too."""
    dtype, ndim = getattr(key, "dtype", None), np.ndim(key)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if ndim == 0:
            return
        raise ValueError(
            f"{name} must be one PRNG key, got an array of keys of shape "
            f"{np.shape(key)}"
        )
    if dtype == np.uint32 and ndim == 1:
        return
    if ndim == 0:
        got = f"{type(key).__name__} {key!r}"
    else:
        got = f"an array of shape {np.shape(key)} and dtype {dtype}"
    raise ValueError(
        f"{name} must be a JAX PRNG key such as jax.random.key(0), got {got}"
    )


#: Python number types, which ``jit`` traces as (weakly typed) arrays.
NUMBER_TYPES = (bool, int, float, complex)


def check_array_leaves(name: str, tree: Any) -> None:
    """Raises ``ValueError`` naming the first leaf of ``tree`` that is neither an
    array (JAX or NumPy, a tracer, a NumPy scalar) nor a Python number: a
    function or other object left in a model's pytree (an equinox module's
    activation, for one) cannot be traced, let alone put on a crossbar."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic, *NUMBER_TYPES)):
            continue
        where = jax.tree_util.keystr(path)
        raise ValueError(
            f"{name}{where} is a {type(leaf).__name__}, not an array: {name} must "
            "be a pytree of arrays. Keep the rest out of it, e.g. for an equinox "
            "module params, static = eqx.partition(model, eqx.is_array) and "
            "apply_fn = lambda p, x: eqx.combine(p, static)(x)"
        )


def check_finite_tree(name: str, tree: Any) -> None:
    """Raises ``ValueError`` naming the first leaf that holds NaN or Inf."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if is_concrete(leaf) and not all_finite(leaf):
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
    if not all_finite(x):
        raise ValueError(f"{name} images must be finite (found NaN or Inf)")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{name} labels must be integers, got dtype {y.dtype}")
    if num_classes is None:
        num_classes = getattr(data, "num_classes", None)
    if y.min() < 0 or (num_classes is not None and y.max() >= num_classes):
        raise ValueError(
            f"{name} labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]"
        )


#: What ``y`` holds, for :func:`check_model_data`: integer class indices
#: ``(N,)``, targets shaped like the logits (squared error), or anything with
#: ``N`` samples on axis 0 (a user's loss).
LABEL_KINDS = ("classes", "targets", "any")


def num_samples(x: Any) -> int:
    """The number of samples on axis 0 of ``x`` (every leaf the same), at least
    one; raises ``ValueError`` naming ``x`` otherwise."""
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves or np.ndim(leaves[0]) < 1 or np.shape(leaves[0])[0] == 0:
        shape = np.shape(leaves[0]) if leaves else None
        raise ValueError(f"x must hold at least one sample, got shape {shape}")
    n = int(np.shape(leaves[0])[0])
    for leaf in leaves[1:]:
        if np.ndim(leaf) < 1 or np.shape(leaf)[0] != n:
            raise ValueError(
                f"every leaf of x must hold {n} samples on axis 0, got {np.shape(leaf)}"
            )
    return n


def _logits_shape(apply_fn: Any, params: Any, x: Any) -> tuple[int, ...]:
    """The shape of ``apply_fn(params, x)``, from an abstract evaluation (no
    compute); raises ``ValueError`` unless it is one array."""
    out = jax.eval_shape(apply_fn, params, x)
    if not hasattr(out, "shape") or not hasattr(out, "dtype"):
        raise ValueError(
            "apply_fn must return one logits array of shape (N, C), got "
            f"{type(out).__name__} {jax.tree_util.tree_structure(out)}"
        )
    return tuple(out.shape)


def check_labels(
    y: Any, n: int, logits_shape: tuple[int, ...] | None, labels: str = "classes"
) -> None:
    """Raises ``ValueError`` unless ``y`` fits ``n`` samples and logits of
    ``logits_shape`` (``None``: not known yet; shape and dtype checks only, the
    range needs the number of classes).

    Args:
        y: the labels or targets.
        n: the number of samples in ``x``.
        logits_shape: the shape of ``apply_fn(params, x)``, or ``None``.
        labels: one of :data:`LABEL_KINDS`.
    """
    if labels not in LABEL_KINDS:
        raise ValueError(f"labels must be one of {LABEL_KINDS}, got {labels!r}")
    if logits_shape is not None and len(logits_shape) != 2:
        raise ValueError(
            f"apply_fn must return logits of shape (N, C) = ({n}, num_classes), "
            f"got shape {logits_shape}"
            + (
                " (one number per sample; a two-class model returns two logits)"
                if len(logits_shape) == 1
                else ""
            )
        )
    if logits_shape is not None and logits_shape[0] != n:
        raise ValueError(
            f"apply_fn returned {logits_shape[0]} rows of logits for {n} samples "
            f"of x (shape {logits_shape})"
        )
    leaves = jax.tree_util.tree_leaves(y)
    if labels == "any":
        for leaf in leaves:
            if np.ndim(leaf) < 1 or np.shape(leaf)[0] != n:
                raise ValueError(
                    f"y must have {n} samples on axis 0 to match x, got "
                    f"{np.shape(leaf)}"
                )
        return
    shape = np.shape(y)
    if labels == "targets":
        if (logits_shape is None and shape[:1] != (n,)) or (
            logits_shape is not None and shape != logits_shape
        ):
            want = (n, "C") if logits_shape is None else logits_shape
            raise ValueError(
                f"y must hold targets shaped like the logits {want}, got {shape}"
            )
        return
    dtype = jnp.result_type(y)
    num_classes = None if logits_shape is None else logits_shape[-1]
    if len(shape) == 2 and shape[0] == n:
        raise ValueError(
            f"y must be class indices of shape ({n},), got one-hot (or per-class) "
            f"labels of shape {shape}; pass y.argmax(-1)"
        )
    if shape != (n,):
        raise ValueError(
            f"y must have shape ({n},) to match x (integer class indices), got {shape}"
        )
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(
            f"y must hold integer class indices, got dtype {dtype}"
            + (
                "; pass y.astype(jnp.int32)"
                if jnp.issubdtype(dtype, jnp.floating)
                else ""
            )
        )
    if num_classes is not None and is_concrete(y):
        arr = np.asarray(y)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"y must lie in [0, {num_classes}) (the logits have {num_classes} "
                f"classes), got labels in [{lo}, {hi}]"
            )


def check_model_data(
    apply_fn: Any, params: Any, x: Any, y: Any, *, labels: str = "classes"
) -> None:
    """The one check of ``(apply_fn, params, x, y)`` every public function that
    takes data makes, before anything reaches JAX.

    ``x`` holds at least one sample; ``params`` is a pytree of arrays (or
    Python numbers) and it and ``x`` are finite;
    ``apply_fn(params, x)`` returns logits of shape ``(N, C)`` (found by
    ``jax.eval_shape``: a trace, no compute); ``y`` fits them (see
    :func:`check_labels`: for ``labels="classes"``, integer class indices of
    shape ``(N,)`` in ``[0, C)``). Value checks are skipped for traced arrays.

    Args:
        apply_fn: ``apply_fn(params, x) -> logits``.
        params: the params pytree.
        x: the inputs, samples on axis 0.
        y: the labels (or targets).
        labels: what ``y`` holds, one of :data:`LABEL_KINDS`.

    Raises:
        ValueError: naming ``x``, ``y``, ``params`` or ``apply_fn``.
    """
    n = num_samples(x)
    check_labels(y, n, None, labels)  # cheap shape checks before any trace
    check_array_leaves("params", params)
    check_finite_tree("params", params)
    check_finite_tree("x", x)
    check_labels(y, n, _logits_shape(apply_fn, params, x), labels)
