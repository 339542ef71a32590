"""Sensitivity scores, a global order over the crossbar, and write-verify masks.

A *score* is a pytree like ``params``; larger means "verify first". Scores are
defined on crossbar leaves (conv and dense kernels by default, see
:func:`uswim_jax.default_crossbar`); off the crossbar they are zero and ignored.
:func:`global_order` ranks every crossbar weight of every layer in one list (the
authors select globally, with no per-layer budget, docs/method.md §6), and
:func:`mask_from_order` turns the first ``count`` entries into a mask, so masks
nest as the budget grows.

Per-layer normalisation (docs/method.md §5.1): SWIM takes derivatives with
respect to ``W_hat = W / max|W_l|``, so ``h_hat = max|W_l|**2 * H`` and
``g_hat = max|W_l| * g`` (:func:`normalized_derivatives`).

All functions are pure and traceable; none is jitted.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uswim_jax import _random
from uswim_jax._checks import (
    check_finite_tree,
    check_fraction,
    check_key,
    check_positive,
    check_same_structure,
    is_concrete,
)
from uswim_jax._tree import (
    CrossbarPredicate,
    check_crossbar,
    crossbar_flags,
    is_floating,
    map_crossbar,
)


def _zeros_like(x: Any, *_: Any) -> jax.Array:
    return jnp.zeros(np.shape(x), jnp.result_type(x))


def _layer_scale(w: jax.Array) -> jax.Array:
    """``max|W_l|``, with 1 for an all-zero layer (avoids 0/0)."""
    m = jnp.max(jnp.abs(w))
    return jnp.where(m > 0, m, jnp.ones_like(m))


def normalized_derivatives(
    params: Any,
    hess: Any,
    grad: Any | None = None,
    *,
    predicate: CrossbarPredicate | None = None,
) -> tuple[Any, Any | None]:
    """Derivatives with respect to per-layer normalised weights.

    Args:
      params: the weights.
      hess: diagonal second derivatives like ``params`` (raw coordinates).
      grad: first derivatives like ``params``, or ``None``.
      predicate: crossbar predicate (default: conv and dense kernels).

    Returns:
      ``(h_hat, g_hat)`` with ``h_hat = max|W_l|**2 * H`` and
      ``g_hat = max|W_l| * g`` on crossbar leaves and zeros elsewhere
      (``g_hat`` is ``None`` when ``grad`` is).

    Raises:
      ValueError: if ``hess`` or ``grad`` does not match ``params``, if any of
        them holds NaN or Inf, or if no leaf of ``params`` is on the crossbar.

    References:
      docs/method.md §5.1.
    """
    check_crossbar("params", params, predicate)
    check_finite_tree("params", params)
    check_same_structure("hess", hess, params, "params")
    check_finite_tree("hess", hess)
    h_hat = map_crossbar(
        lambda w, h: h * _layer_scale(w) ** 2,
        params,
        hess,
        predicate=predicate,
        otherwise=_zeros_like,
    )
    if grad is None:
        return h_hat, None
    check_same_structure("grad", grad, params, "params")
    check_finite_tree("grad", grad)
    g_hat = map_crossbar(
        lambda w, g: g * _layer_scale(w),
        params,
        grad,
        predicate=predicate,
        otherwise=_zeros_like,
    )
    return h_hat, g_hat


def state_multiplier(
    params: Any,
    s: Any,
    *,
    low: float = 0.25,
    high: float = 0.75,
    predicate: CrossbarPredicate | None = None,
) -> Any:
    """U-SWIM's state multiplier ``k``: ``s`` for intermediate states, else 1.

    A weight is in an intermediate state when ``low < |W|/max|W_l| < high``
    (the authors' 4-level device: 0.25 and 0.75).

    Args:
      params: the weights.
      s: the intermediate-state std ratio (``--s_rate``), a scalar.
      low: lower bound of the intermediate band (exclusive).
      high: upper bound of the intermediate band (exclusive).
      predicate: crossbar predicate.

    Returns:
      A pytree like ``params`` with ``k`` on crossbar leaves and ones elsewhere.

    Raises:
      ValueError: if ``s`` is not positive or no leaf of ``params`` is on the
        crossbar.

    References:
      docs/method.md §2.4 and §5.3.
    """
    check_positive("s", s)
    check_crossbar("params", params, predicate)

    def k(w: jax.Array) -> jax.Array:
        r = jnp.abs(w) / _layer_scale(w)
        mid = (r > low) & (r < high)
        return jnp.where(mid, jnp.asarray(s, w.dtype), jnp.ones_like(w))

    return map_crossbar(
        k, params, predicate=predicate, otherwise=lambda x: jnp.ones_like(x)
    )


def _swim_core(
    params: Any,
    hess: Any,
    grad: Any | None,
    multiplier: Any | None,
    alpha: float,
    first_order: bool,
    predicate: CrossbarPredicate | None,
) -> Any:
    h_hat, g_hat = normalized_derivatives(
        params, hess, grad if first_order else None, predicate=predicate
    )
    if g_hat is None:
        g_hat = jax.tree_util.tree_map(_zeros_like, params)
    if multiplier is None:  # (uswim_score checks a given one against params)
        multiplier = jax.tree_util.tree_map(jnp.ones_like, params)

    def score(w, h, g, k):
        w_hat = w / _layer_scale(w)
        sens = jnp.abs(h + 2 * g)
        # max|W_hat_l| = 1 after normalisation; kept explicit as in the code.
        max_w_hat = jnp.max(jnp.abs(w_hat))
        return jnp.asarray(alpha, w.dtype) * k * sens * max_w_hat + jnp.abs(w_hat)

    return map_crossbar(
        score,
        params,
        h_hat,
        g_hat,
        multiplier,
        predicate=predicate,
        otherwise=_zeros_like,
    )


def swim_score(
    params: Any,
    hess: Any,
    grad: Any | None = None,
    *,
    alpha: float = 1e6,
    first_order: bool = True,
    predicate: CrossbarPredicate | None = None,
) -> Any:
    """SWIM's indicator ("SM"): ``alpha * |h_hat + 2 g_hat| * max|W_hat_l| + |W_hat|``.

    Args:
      params: the weights.
      hess: one-pass diagonal (raw coordinates, e.g. from
        :func:`uswim_jax.obd_over_dataset`).
      grad: the authors' first-order term (raw coordinates), or ``None``.
      alpha: weight of the curvature term (``--alpha``, default 1e6); the
        ``|W_hat|`` term only breaks ties.
      first_order: include ``2 g_hat`` (``False`` is U-SWIM's ``--no_first``).
      predicate: crossbar predicate.

    Returns:
      Scores like ``params`` (zeros off the crossbar).

    Raises:
      ValueError: if ``hess``/``grad`` do not match ``params``, if ``params``,
        ``hess`` or ``grad`` hold NaN or Inf, or if no leaf of ``params`` is on
        the crossbar.

    References:
      docs/method.md §5.1 and §5.2.
    """
    return _swim_core(params, hess, grad, None, alpha, first_order, predicate)


def uswim_score(
    params: Any,
    hess: Any,
    grad: Any | None = None,
    *,
    s: Any = 1.0,
    alpha: float = 1e6,
    k_power: int = 1,
    first_order: bool = True,
    multiplier: Any | None = None,
    predicate: CrossbarPredicate | None = None,
) -> Any:
    """U-SWIM's indicator ("HSM"): ``alpha * k**p * |h_hat + 2 g_hat| + |W_hat|``.

    Args:
      params: the weights.
      hess: one-pass diagonal (raw coordinates).
      grad: first-order term (raw coordinates), or ``None``.
      s: intermediate-state std ratio; ``k = s`` when
        ``0.25 < |W|/max|W_l| < 0.75`` else 1 (ignored if ``multiplier`` is given).
      alpha: weight of the curvature term.
      k_power: 1 (the authors' code, std ratio) or 2 (variance ratio, the Taylor
        argument of docs/method.md §3).
      first_order: include ``2 g_hat``.
      multiplier: a pytree like ``params`` of per-weight ``k`` from any device
        model, overriding ``s``.
      predicate: crossbar predicate.

    Returns:
      Scores like ``params`` (zeros off the crossbar).

    Raises:
      ValueError: if ``k_power`` is not 1 or 2, trees do not match, ``params``,
        ``hess`` or ``grad`` hold NaN or Inf, or no leaf of ``params`` is on the
        crossbar.

    References:
      docs/method.md §2.4 and §5.3.
    """
    if k_power not in (1, 2):
        raise ValueError(f"k_power must be 1 or 2, got {k_power!r}")
    if multiplier is None:
        multiplier = state_multiplier(params, s, predicate=predicate)
    check_same_structure("multiplier", multiplier, params, "params")
    on = crossbar_flags(params, predicate)  # elsewhere k is unused (and may be a key)
    k = jax.tree_util.tree_map(lambda m, f: m**k_power if f else m, multiplier, on)
    return _swim_core(params, hess, grad, k, alpha, first_order, predicate)


def expected_loss_score(hess: Any, std_written: Any, std_verified: Any) -> Any:
    """Expected loss increase avoided by verifying each weight.

    ``0.5 * H_ii * (std_written**2 - std_verified**2)``: the second-order Taylor
    expectation of the loss change under independent zero-mean noise, written
    minus verified. Works with the per-weight stds of any device model.

    Args:
      hess: diagonal second derivatives (raw coordinates).
      std_written: std of a merely written weight: a pytree like ``hess`` or a
        scalar.
      std_verified: std of a write-verified weight: a pytree like ``hess`` or a
        scalar.

    Returns:
      Scores like ``hess``.

    References:
      docs/method.md §3 and §5.5.
    """

    check_finite_tree("hess", hess)

    def as_tree(std: Any) -> Any:
        if jax.tree_util.tree_structure(std) == jax.tree_util.tree_structure(hess):
            return std
        if np.ndim(std) != 0 or jax.tree_util.tree_structure(std).num_leaves != 1:
            raise ValueError(
                "std_written/std_verified must be scalars or pytrees like hess"
            )
        return jax.tree_util.tree_map(lambda _: std, hess)

    def score(h, sw, sv):
        if not is_floating(h):  # an integer leaf, or a PRNG key (NNX's state)
            return _zeros_like(h)
        sw = jnp.asarray(sw, h.dtype)
        sv = jnp.asarray(sv, h.dtype)
        return 0.5 * h * (sw * sw - sv * sv)

    return jax.tree_util.tree_map(
        score, hess, as_tree(std_written), as_tree(std_verified)
    )


def magnitude_score(params: Any, *, predicate: CrossbarPredicate | None = None) -> Any:
    """Per-layer normalised magnitude ``|W| / max|W_l|`` (the authors' baseline).

    Raises:
      ValueError: if no leaf of ``params`` is on the crossbar.

    References:
      docs/method.md §5.4.
    """
    check_crossbar("params", params, predicate)
    return map_crossbar(
        lambda w: jnp.abs(w) / _layer_scale(w),
        params,
        predicate=predicate,
        otherwise=_zeros_like,
    )


def random_score(
    key: jax.Array, params: Any, *, predicate: CrossbarPredicate | None = None
) -> Any:
    """Uniform random scores on the crossbar (a random selection baseline).

    Args:
      key: a ``jax.random`` key; the key is consumed.
      params: the weights.
      predicate: crossbar predicate.

    Returns:
      U(0, 1) scores like ``params`` on crossbar leaves, zeros elsewhere.

    Raises:
      ValueError: if no leaf of ``params`` is on the crossbar.
    """
    check_key("key", key)
    check_crossbar("params", params, predicate)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = treedef.unflatten(
        list(jax.random.split(key, max(len(leaves), 1))[: len(leaves)])
    )

    def draw(w: jax.Array, k: jax.Array) -> jax.Array:
        dtype = jnp.result_type(w)
        dtype = dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32
        return _random.uniform(k, np.shape(w), dtype)

    return map_crossbar(draw, params, keys, predicate=predicate, otherwise=_zeros_like)


def _crossbar_leaves(tree: Any, predicate: CrossbarPredicate | None) -> list:
    flags = jax.tree_util.tree_leaves(crossbar_flags(tree, predicate))
    leaves = jax.tree_util.tree_leaves(tree)
    return [x for x, f in zip(leaves, flags, strict=True) if f]


def global_order(
    scores: Any, *, predicate: CrossbarPredicate | None = None
) -> jax.Array:
    """All crossbar weights ranked by descending score, across layers.

    Args:
      scores: a pytree of scores like the params.
      predicate: crossbar predicate.

    Returns:
      ``order``, a 1-D int32 array of flat indices into the concatenation (in
      ``tree_leaves`` order) of the raveled crossbar leaves: ``order[0]`` is the
      weight to verify first. Ties keep index order (stable); NaN scores go last.

    Raises:
      ValueError: if there is no crossbar leaf.

    References:
      docs/method.md §6.
    """
    check_crossbar("scores", scores, predicate)
    parts = _crossbar_leaves(scores, predicate)
    dtype = jnp.result_type(*parts)
    flat = jnp.concatenate([jnp.ravel(p).astype(dtype) for p in parts])
    key = jnp.where(jnp.isnan(flat), jnp.inf, -flat)
    return jnp.argsort(key, stable=True).astype(jnp.int32)


def mask_from_order(
    order: jax.Array,
    params: Any,
    *,
    fraction: Any | None = None,
    count: Any | None = None,
    predicate: CrossbarPredicate | None = None,
) -> Any:
    """A write-verify mask: the first ``count`` weights of ``order``.

    Exactly one of ``fraction`` and ``count`` is given; ``count =
    round(fraction * n)`` (half to even) for ``n`` crossbar weights. Either may be
    traced, so sweeping the budget under ``jit`` does not recompile; masks nest as
    the budget grows.

    Args:
      order: from :func:`global_order`, length ``n``.
      params: the params (or scores) pytree giving leaf shapes.
      fraction: fraction of crossbar weights to verify, in [0, 1].
      count: number of weights to verify, in [0, n].
      predicate: crossbar predicate (the one used for ``order``).

    Returns:
      A pytree of bools like ``params``: True = write-verify; False off the
      crossbar.

    Raises:
      ValueError: if both or neither of ``fraction``/``count`` are given, if a
        concrete value is out of range, if ``order`` has the wrong length, or if
        no leaf of ``params`` is on the crossbar.
    """
    if (fraction is None) == (count is None):
        raise ValueError("give exactly one of fraction and count")
    check_crossbar("params", params, predicate)
    flags = crossbar_flags(params, predicate)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    flag_leaves = jax.tree_util.tree_leaves(flags)
    sizes = [int(np.size(x)) for x, f in zip(leaves, flag_leaves, strict=True) if f]
    n = sum(sizes)
    if np.shape(order) != (n,):
        raise ValueError(f"order must have shape ({n},), got {np.shape(order)}")
    if not jnp.issubdtype(jnp.result_type(order), jnp.integer):
        raise ValueError(
            f"order must hold integer indices, got dtype {jnp.result_type(order)}"
        )
    if fraction is not None:
        check_fraction("fraction", fraction)
        if is_concrete(fraction):
            count = int(np.round(float(fraction) * n))
        else:
            count = jnp.round(fraction * n).astype(jnp.int32)
    elif is_concrete(count):
        if not 0 <= int(count) <= n or int(count) != count:
            raise ValueError(f"count must be an integer in [0, {n}], got {count!r}")
        count = int(count)
    rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    selected = rank < jnp.asarray(count, jnp.int32)
    out, offset = [], 0
    for x, f in zip(leaves, flag_leaves, strict=True):
        if f:
            size = int(np.size(x))
            out.append(selected[offset : offset + size].reshape(np.shape(x)))
            offset += size
        else:
            out.append(jnp.zeros(np.shape(x), bool))
    return treedef.unflatten(out)


def select(
    scores: Any,
    *,
    fraction: Any | None = None,
    count: Any | None = None,
    predicate: CrossbarPredicate | None = None,
) -> Any:
    """``mask_from_order(global_order(scores), scores, ...)`` in one call."""
    order = global_order(scores, predicate=predicate)
    return mask_from_order(
        order, scores, fraction=fraction, count=count, predicate=predicate
    )
