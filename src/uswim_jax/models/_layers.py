"""Conv and dense layers with optional N-bit weight quantization (straight-through
estimator), and the quantizer itself.

The layers keep Flax's parameter names (``kernel``, ``bias``), so the crossbar
predicate (conv and dense kernels) finds them.
"""

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

QUANT_SCHEMES = ("swim", "signed")
#: How :class:`Conv` computes: ``"xla"`` (``lax.conv_general_dilated``) or
#: ``"im2col"`` (patches from strided slices, then one matmul; see
#: :func:`conv_im2col`).
CONV_IMPLS = ("xla", "im2col")
#: Activation layouts the conv layers accept: ``NHWC`` (the models' interface)
#: and ``CHWN`` (images on the minor axis; used inside LeNet and ConvNet with
#: ``conv_impl="im2col"``).
LAYOUTS = ("NHWC", "CHWN")


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


#: Activation layouts :class:`Dense` accepts: ``NF`` (images major, the models'
#: interface) and ``FN`` (features major, images on the minor axis; used after a
#: CHWN conv trunk).
DENSE_LAYOUTS = ("NF", "FN")


class Dense(nn.Module):
    """``y = x @ Q(kernel) + bias``; the kernel is ``(in_features, features)``.

    ``layout="FN"`` takes and returns the transposed activations: ``x`` is
    ``(in_features, N)``, or ``(C, H, W, N)`` straight from a CHWN conv trunk,
    and ``y`` is ``(features, N)``. A CHWN input is flattened in its own
    ``(C, H, W)`` order, and the kernel's rows, which follow the ``(H, W, C)``
    order of an NHWC flatten, are gathered to match; so the params and the
    function are the same as for ``layout="NF"`` on the NHWC-flattened input.
    That gather and the kernel transpose depend on the params alone, so
    :func:`uswim_jax.montecarlo.correct_count` does them once per trial rather
    than once per image batch.
    """

    features: int
    use_bias: bool = True
    weight_bits: int | None = None
    quant_scheme: str = "swim"
    layout: str = "NF"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.layout not in DENSE_LAYOUTS:
            raise ValueError(
                f"layout must be one of {DENSE_LAYOUTS}, got {self.layout!r}"
            )
        fn = self.layout == "FN"
        n_in = math.prod(x.shape[:-1]) if fn else x.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (n_in, self.features)
        )
        kernel = quantize_ste(kernel, self.weight_bits, self.quant_scheme)
        if not fn:
            y = jnp.dot(x, kernel)
        else:
            if x.ndim == 4:  # (C, H, W, N): rows of the kernel are (H, W, C)
                c, h, w, n = x.shape
                kt = jnp.transpose(
                    jnp.reshape(kernel, (h, w, c, self.features)), (3, 2, 0, 1)
                )
                kt = jnp.reshape(kt, (self.features, n_in))
                x = jnp.reshape(x, (n_in, n))
            elif x.ndim == 2:
                kt = jnp.transpose(kernel)
            else:
                raise ValueError(
                    f"layout 'FN' takes (F, N) or (C, H, W, N) input, got {x.shape}"
                )
            y = jnp.dot(kt, x)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
            y = y + (jnp.reshape(bias, (-1, 1)) if fn else _expand(bias, y.ndim))
        return y


def _patch_slices(
    x: jax.Array, kh: int, kw: int, stride: int, hw_axes: tuple[int, int]
) -> list[jax.Array]:
    """The ``kh * kw`` strided windows of (already padded) ``x``, kernel row
    major, each of the output's spatial size."""
    ah, aw = hw_axes
    ho = (x.shape[ah] - kh) // stride + 1
    wo = (x.shape[aw] - kw) // stride + 1
    out = []
    for i in range(kh):
        for j in range(kw):
            start = [0] * x.ndim
            limit = list(x.shape)
            strides = [1] * x.ndim
            start[ah], limit[ah], strides[ah] = i, i + stride * (ho - 1) + 1, stride
            start[aw], limit[aw], strides[aw] = j, j + stride * (wo - 1) + 1, stride
            out.append(jax.lax.slice(x, start, limit, strides))
    return out


def conv_im2col(
    x: jax.Array,
    kernel: jax.Array,
    stride: int = 1,
    padding: int = 0,
    layout: str = "NHWC",
) -> jax.Array:
    """Convolution with an HWIO kernel as im2col + one matmul.

    The same function as ``lax.conv_general_dilated(x, kernel, (stride, stride),
    ((padding, padding),) * 2, dimension_numbers=(layout, "HWIO", layout))``,
    equal up to the order of the float sums. Under ``jax.vmap`` over per-trial
    kernels it becomes a batched matmul (a single matmul against the stacked
    kernels where ``x`` is shared by all trials), where XLA's CPU convolution
    becomes a grouped convolution.

    Layouts:
        ``"NHWC"``: the patches are ``kh * kw`` strided slices concatenated along
        the channels (HWIO order, so the kernel only needs a reshape), then
        ``(N*Ho*Wo, kh*kw*C) @ (kh*kw*C, O)``.
        ``"CHWN"`` (images on the minor axis, which keeps every copy and the
        matmul's long axis contiguous on CPU): ``(O, kh*kw*C) @ (kh*kw*C,
        Ho*Wo*N)``. For stride 1 each block of ``C`` patch rows is one
        contiguous slice of the input padded on the left, top and bottom only
        and flattened to ``(C, Hp*Wp*N)``, ``Wp = W + padding``, written in
        place into the patch matrix (``dynamic_update_slice``, one copy per
        element; stacking the slices costs two): the output is computed on the
        ``Ho x Wp`` grid and its wrapped columns are dropped (a window that runs
        off a row's right edge reads the next row's left padding, i.e. zeros).

    Args:
        x: the input, (N, H, W, C) or (C, H, W, N) as ``layout`` says.
        kernel: (kh, kw, C, O) kernel.
        stride: the same stride along H and W.
        padding: zero pixels added on every side.
        layout: ``"NHWC"`` or ``"CHWN"`` (input and output).

    Returns:
        (N, Ho, Wo, O) or (O, Ho, Wo, N), ``Ho = (H + 2*padding - kh) // stride
        + 1`` (same for W).
    """
    kh, kw, c, o = kernel.shape
    p, s = padding, stride
    if layout == "NHWC":
        if x.shape[-1] != c:
            raise ValueError(f"x has {x.shape[-1]} channels, the kernel expects {c}")
        if p:
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        cols = _patch_slices(x, kh, kw, s, (1, 2))
        patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
        return jnp.dot(patches, jnp.reshape(kernel, (kh * kw * c, o)))
    if layout != "CHWN":
        raise ValueError(f"layout must be 'NHWC' or 'CHWN', got {layout!r}")
    if x.shape[0] != c:
        raise ValueError(f"x has {x.shape[0]} channels, the kernel expects {c}")
    n = x.shape[-1]
    if s == 1 and kh * kw > 1:
        # No right padding: a window running off a row's right edge reads the
        # next row's left padding, which is zero. Extra zero rows at the bottom
        # keep the last shifted slice in range.
        wp = x.shape[2] + p
        extra = -(-(kw - 1) // wp)
        xp = jnp.pad(x, ((0, 0), (p, p + extra), (p, 0), (0, 0)))
        hp = xp.shape[1]
        ho, wo = hp - extra - kh + 1, x.shape[2] + 2 * p - kw + 1
        flat = jnp.reshape(xp, (c, hp * wp * n))
        size = ho * wp * n
        # Rows of the patch matrix in (kh, kw, C) order, each block of C rows
        # written in place into one buffer (XLA fuses each slice into its
        # dynamic-update-slice; a concatenate would copy every slice twice).
        patches = jnp.zeros((kh * kw * c, size), x.dtype)
        for i in range(kh):
            for j in range(kw):
                start = (i * wp + j) * n
                rows = jax.lax.slice_in_dim(flat, start, start + size, 1, 1)
                patches = jax.lax.dynamic_update_slice_in_dim(
                    patches, rows, (i * kw + j) * c, 0
                )
        k2 = jnp.reshape(jnp.transpose(kernel, (3, 0, 1, 2)), (o, kh * kw * c))
        y = jnp.reshape(jnp.dot(k2, patches), (o, ho, wp, n))
        return y[:, :, :wo, :]
    # rows of the patch matrix in (C, kh, kw) order
    k2 = jnp.reshape(jnp.transpose(kernel, (3, 2, 0, 1)), (o, c * kh * kw))
    if p:
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    cols = _patch_slices(x, kh, kw, s, (1, 2))
    ho, wo = cols[0].shape[1], cols[0].shape[2]
    patches = jnp.reshape(jnp.stack(cols, axis=1), (c * kh * kw, ho * wo * n))
    return jnp.reshape(jnp.dot(k2, patches), (o, ho, wo, n))


def conv(
    x: jax.Array,
    kernel: jax.Array,
    stride: int = 1,
    padding: int = 0,
    impl: str = "xla",
    layout: str = "NHWC",
) -> jax.Array:
    """Convolution with an HWIO kernel and ``padding`` pixels on every side, in
    ``layout`` (``"NHWC"`` or ``"CHWN"``), computed by XLA's convolution
    (``impl="xla"``) or by :func:`conv_im2col` (``impl="im2col"``)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if impl == "im2col":
        return conv_im2col(x, kernel, stride, padding, layout)
    if impl != "xla":
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=(layout, "HWIO", layout),
    )


class Conv(nn.Module):
    """NHWC convolution with an HWIO kernel, ``padding`` pixels on every side.

    ``conv_impl`` chooses how it is computed (:data:`CONV_IMPLS`) and ``layout``
    the activation layout (:data:`LAYOUTS`); the params and the function are the
    same either way.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    use_bias: bool = True
    weight_bits: int | None = None
    quant_scheme: str = "swim"
    conv_impl: str = "xla"
    layout: str = "NHWC"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        c = x.shape[0] if self.layout == "CHWN" else x.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, k, c, self.features)
        )
        kernel = quantize_ste(kernel, self.weight_bits, self.quant_scheme)
        y = conv(x, kernel, self.stride, self.padding, self.conv_impl, self.layout)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
            if self.layout == "CHWN":
                y = y + jnp.reshape(bias, (-1,) + (1,) * (y.ndim - 1))
            else:
                y = y + _expand(bias, y.ndim)
        return y


def max_pool2(x: jax.Array, layout: str = "NHWC") -> jax.Array:
    """2x2 max-pool, stride 2 (NHWC; or CHWN, as the max of four strided slices,
    which is exact)."""
    if layout == "NHWC":
        return nn.max_pool(x, (2, 2), strides=(2, 2))
    if layout != "CHWN":
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    q = [x[:, i:h:2, j:w:2, :] for i in (0, 1) for j in (0, 1)]
    return jnp.maximum(jnp.maximum(q[0], q[1]), jnp.maximum(q[2], q[3]))


def to_chwn(x: jax.Array) -> jax.Array:
    """NHWC -> CHWN (and back: the permutation is its own inverse)."""
    return jnp.transpose(x, (3, 1, 2, 0))
