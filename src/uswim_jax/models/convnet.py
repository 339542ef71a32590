"""The VGG-like CIFAR-10 ConvNet of the authors' code (docs/method.md §9)."""

import jax
import jax.numpy as jnp
from flax import linen as nn

from uswim_jax.models._layers import Conv, Dense, max_pool2


class ConvNet(nn.Module):
    """Three stages of two 3x3 convs (64, 128, 256 channels, pad 1, ReLU) each
    followed by a 2x2 max-pool; dense 4096->1024->1024->classes with ReLU. Biases
    on all layers; 6,397,632 weights for 10 classes."""

    num_classes: int = 10
    weight_bits: int | None = None
    quant_scheme: str = "swim"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        q = {"weight_bits": self.weight_bits, "quant_scheme": self.quant_scheme}
        for width in (64, 128, 256):
            x = nn.relu(Conv(width, **q)(x))
            x = nn.relu(Conv(width, **q)(x))
            x = max_pool2(x)
        x = jnp.reshape(x, (x.shape[0], -1))
        x = nn.relu(Dense(1024, **q)(x))
        x = nn.relu(Dense(1024, **q)(x))
        return Dense(self.num_classes, **q)(x)
