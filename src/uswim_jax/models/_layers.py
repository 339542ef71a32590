"""Conv and dense layers with optional N-bit weight quantization (straight-through
estimator), and the quantizer itself.

The layers keep Flax's parameter names (``kernel``, ``bias``), so the crossbar
predicate (conv and dense kernels) finds them.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

QUANT_SCHEMES = ("swim", "signed")


def _expand(bias: jax.Array, ndim: int) -> jax.Array:
    """Explicit broadcast of a per-feature vector to ``ndim`` dimensions."""
    return jnp.reshape(bias, (1,) * (ndim - 1) + bias.shape)


def quantize(w: jax.Array, bits: int, scheme: str = "swim") -> jax.Array:
    """Symmetric per-tensor quantization of ``w`` to ``bits`` bits.

    Args:
        w: the weights.
        bits: the bit parameter N.
        scheme: ``"swim"`` is the authors' SWIM code (docs/method.md §8): step
            ``max|w| / 2^N``, no clamp, so the integer range is ±2^N (about N + 1
            signed bits). ``"signed"`` is the standard N-bit signed grid: step
            ``max|w| / (2^(N-1) - 1)``.

    Returns:
        The quantized weights (same shape and dtype). No gradient flows through
        the rounding; see :func:`quantize_ste`.
    """
    if scheme not in QUANT_SCHEMES:
        raise ValueError(f"scheme must be one of {QUANT_SCHEMES}, got {scheme!r}")
    levels = 2.0**bits if scheme == "swim" else 2.0 ** (bits - 1) - 1
    scale = jnp.max(jnp.abs(w))
    step = jnp.where(scale > 0, scale / levels, jnp.ones_like(scale))
    return jnp.round(w / step) * step


def quantize_ste(w: jax.Array, bits: int | None, scheme: str = "swim") -> jax.Array:
    """``quantize`` in the forward pass, identity in the backward pass."""
    if bits is None:
        return w
    return w + jax.lax.stop_gradient(quantize(w, bits, scheme) - w)


class Dense(nn.Module):
    """``y = x @ Q(kernel) + bias``; the kernel is ``(in_features, features)``."""

    features: int
    use_bias: bool = True
    weight_bits: int | None = None
    quant_scheme: str = "swim"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features)
        )
        kernel = quantize_ste(kernel, self.weight_bits, self.quant_scheme)
        y = jnp.dot(x, kernel)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
            y = y + _expand(bias, y.ndim)
        return y


def conv(
    x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0
) -> jax.Array:
    """NHWC convolution with an HWIO kernel and ``padding`` pixels on every
    side (XLA's convolution; Monte Carlo trials rewrite it as im2col matmuls,
    :mod:`uswim_jax._trialbatch`)."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


class Conv(nn.Module):
    """NHWC convolution with an HWIO kernel, ``padding`` pixels on every side."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    use_bias: bool = True
    weight_bits: int | None = None
    quant_scheme: str = "swim"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features)
        )
        kernel = quantize_ste(kernel, self.weight_bits, self.quant_scheme)
        y = conv(x, kernel, self.stride, self.padding)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
            y = y + _expand(bias, y.ndim)
        return y


def max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2 (NHWC)."""
    return nn.max_pool(x, (2, 2), strides=(2, 2))
