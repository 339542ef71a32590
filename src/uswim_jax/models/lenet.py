"""LeNet for MNIST, exactly as the authors' code (docs/method.md §9)."""

import jax
import jax.numpy as jnp
from flax import linen as nn

from uswim_jax.models._layers import Conv, Dense, max_pool2


class LeNet(nn.Module):
    """conv 1->6 (3x3, pad 1), ReLU, max-pool 2; conv 6->16 (3x3, pad 1), ReLU,
    max-pool 2; dense 784->120, ReLU; 120->84, ReLU; 84->classes. Biases on all
    layers; 105,918 weights without biases."""

    num_classes: int = 10
    weight_bits: int | None = None
    quant_scheme: str = "swim"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout or batch-norm
        q = {"weight_bits": self.weight_bits, "quant_scheme": self.quant_scheme}
        x = max_pool2(nn.relu(Conv(6, **q)(x)))
        x = max_pool2(nn.relu(Conv(16, **q)(x)))
        x = jnp.reshape(x, (x.shape[0], -1))
        x = nn.relu(Dense(120, **q)(x))
        x = nn.relu(Dense(84, **q)(x))
        return Dense(self.num_classes, **q)(x)
