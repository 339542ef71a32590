"""A small vision transformer for 28x28 (or any square) images.

Patch embedding (a convolution with stride = kernel = ``patch``), a learned class
token and position embedding, ``depth`` pre-norm encoder blocks (LayerNorm,
multi-head self-attention with softmax, residual; LayerNorm, GELU MLP, residual),
a final LayerNorm and a dense head on the class token (``pool="cls"``) or on the
mean of the patch tokens (``pool="mean"``). No dropout.

What goes on the crossbar (the default predicate, ``uswim_jax._tree.default_crossbar``:
float leaves named ``kernel`` with at least two dimensions): the patch-embedding
kernel, the query, key, value and output projections of every attention block,
both MLP kernels of every block and the head kernel. Off the crossbar (digital,
noise-free): every bias, the LayerNorm scales and biases, the position embedding
(``pos_embedding``) and the class token (``cls``). The attention scores and the
softmax are activation-activation products, so they are computed digitally too;
only weights are programmed.

With the defaults (patch 7, width 64, depth 6, 4 heads, MLP 128) on 28x28x1 and
10 classes it has 200,384 crossbar weights.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from uswim_jax.models._layers import Conv, Dense


def _ln(name: str, param_dtype: Any) -> nn.LayerNorm:
    """Flax's LayerNorm computing in the params' dtype (by default it promotes
    its statistics to at least float32 and casts its scale to ``param_dtype``,
    which strict dtype promotion refuses for float64 params); the same function
    in float32."""
    return nn.LayerNorm(
        name=name, force_float32_reductions=False, param_dtype=param_dtype
    )


#: How the token sequence is reduced to one vector for the head.
POOLS = ("cls", "mean")


class Attention(nn.Module):
    """Multi-head self-attention on ``(B, T, D)`` tokens: separate query, key,
    value and output projections (``Dense`` layers, so they quantize like the
    other models' kernels), scores ``q k^T / sqrt(D / heads)`` and a softmax
    over the keys."""

    heads: int
    weight_bits: int | None = None
    quant_scheme: str = "swim"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        if d % self.heads:
            raise ValueError(f"width {d} is not a multiple of heads {self.heads}")
        dh = d // self.heads
        q = {"weight_bits": self.weight_bits, "quant_scheme": self.quant_scheme}

        def split(name: str) -> jax.Array:
            y = Dense(d, name=name, **q)(x)
            return jnp.reshape(y, (b, t, self.heads, dh))

        query, key, value = split("query"), split("key"), split("value")
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, key) / jnp.sqrt(
            jnp.asarray(dh, x.dtype)
        )
        weights = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
        return Dense(d, name="out", **q)(jnp.reshape(out, (b, t, d)))


class Block(nn.Module):
    """Pre-norm encoder block: ``x + attn(LN(x))``, then ``x + mlp(LN(x))``."""

    heads: int
    mlp_dim: int
    weight_bits: int | None = None
    quant_scheme: str = "swim"
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        q = {"weight_bits": self.weight_bits, "quant_scheme": self.quant_scheme}
        x = x + Attention(self.heads, name="attn", **q)(_ln("ln1", self.param_dtype)(x))
        y = _ln("ln2", self.param_dtype)(x)
        y = Dense(self.mlp_dim, name="mlp1", **q)(y)
        y = Dense(x.shape[-1], name="mlp2", **q)(nn.gelu(y))
        return x + y


class ViT(nn.Module):
    """The vision transformer (see the module docstring).

    Attributes:
        num_classes: number of logits.
        weight_bits: quantize the crossbar kernels to this many bits (straight
            through estimator in training); ``None``: float.
        quant_scheme: see :func:`uswim_jax.models.quantize`.
        patch: patch size (the image side must be a multiple of it).
        width: token width ``D``.
        depth: number of encoder blocks.
        heads: attention heads (``D`` must be a multiple).
        mlp_dim: hidden width of the MLP.
        pool: ``"cls"`` (class token) or ``"mean"`` (mean of the patch tokens).
        param_dtype: the LayerNorms' parameter dtype (``jnp.float64`` for
            float64 params).
    """

    num_classes: int = 10
    weight_bits: int | None = None
    quant_scheme: str = "swim"
    patch: int = 7
    width: int = 64
    depth: int = 6
    heads: int = 4
    mlp_dim: int = 128
    pool: str = "cls"
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout or batch-norm
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        n, h, w, _ = x.shape
        if h % self.patch or w % self.patch:
            raise ValueError(
                f"image size {h}x{w} is not a multiple of patch {self.patch}"
            )
        q = {"weight_bits": self.weight_bits, "quant_scheme": self.quant_scheme}
        x = Conv(
            self.width,
            self.patch,
            self.patch,
            0,
            name="embed",
            **q,
        )(x)
        x = jnp.reshape(x, (n, -1, self.width))
        if self.pool == "cls":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width))
            x = jnp.concatenate(
                [jnp.broadcast_to(cls, (n, 1, self.width)).astype(x.dtype), x], axis=1
            )
        pos = self.param(
            "pos_embedding",
            nn.initializers.normal(stddev=0.02),
            (1, x.shape[1], self.width),
        )
        x = x + pos.astype(x.dtype)
        for i in range(self.depth):
            x = Block(
                self.heads,
                self.mlp_dim,
                name=f"block{i}",
                param_dtype=self.param_dtype,
                **q,
            )(x)
        x = _ln("ln", self.param_dtype)(x)
        x = x[:, 0] if self.pool == "cls" else jnp.mean(x, axis=1)
        return Dense(self.num_classes, name="head", **q)(x)
