"""The VGG-like CIFAR-10 ConvNet of the authors' code (docs/method.md §9)."""

import jax
import jax.numpy as jnp
from flax import linen as nn

from uswim_jax.models._layers import Conv, Dense, max_pool2, to_chwn


class ConvNet(nn.Module):
    """Three stages of two 3x3 convs (64, 128, 256 channels, pad 1, ReLU) each
    followed by a 2x2 max-pool; dense 4096->1024->1024->classes with ReLU. Biases
    on all layers; 6,397,632 weights for 10 classes.

    With ``conv_impl="im2col"`` the network runs in the CHWN layout (images on
    the minor axis), the dense layers on ``(features, N)`` activations
    (``Dense(layout="FN")``), and the logits are transposed back; the params and
    the function are the same."""

    num_classes: int = 10
    weight_bits: int | None = None
    quant_scheme: str = "swim"
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        q = {"weight_bits": self.weight_bits, "quant_scheme": self.quant_scheme}
        layout = "CHWN" if self.conv_impl == "im2col" else "NHWC"
        c = {**q, "conv_impl": self.conv_impl, "layout": layout}
        if layout == "CHWN":
            x = to_chwn(x)
        for width in (64, 128, 256):
            x = nn.relu(Conv(width, **c)(x))
            x = nn.relu(Conv(width, **c)(x))
            x = max_pool2(x, layout)
        if layout == "CHWN":
            # (256, 4, 4, N) feeds the dense layers as is (images on the minor
            # axis); only the (classes, N) logits are transposed.
            d = {**q, "layout": "FN"}
            x = nn.relu(Dense(1024, **d)(x))
            x = nn.relu(Dense(1024, **d)(x))
            return jnp.transpose(Dense(self.num_classes, **d)(x))
        x = jnp.reshape(x, (x.shape[0], -1))
        x = nn.relu(Dense(1024, **q)(x))
        x = nn.relu(Dense(1024, **q)(x))
        return Dense(self.num_classes, **q)(x)
