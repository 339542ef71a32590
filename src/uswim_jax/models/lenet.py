"""LeNet for MNIST, exactly as the authors' code (docs/method.md §9)."""

import jax
import jax.numpy as jnp
from flax import linen as nn

from uswim_jax.models._layers import Conv, Dense, max_pool2, to_chwn


class LeNet(nn.Module):
    """conv 1->6 (3x3, pad 1), ReLU, max-pool 2; conv 6->16 (3x3, pad 1), ReLU,
    max-pool 2; dense 784->120, ReLU; 120->84, ReLU; 84->classes. Biases on all
    layers; 105,918 weights without biases.

    With ``conv_impl="im2col"`` the network runs in the CHWN layout (images on
    the minor axis: one transpose of the input), the dense layers on ``(features,
    N)`` activations (``Dense(layout="FN")``), and the logits are transposed
    back; the params and the function are the same."""

    num_classes: int = 10
    weight_bits: int | None = None
    quant_scheme: str = "swim"
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout or batch-norm
        q = {"weight_bits": self.weight_bits, "quant_scheme": self.quant_scheme}
        layout = "CHWN" if self.conv_impl == "im2col" else "NHWC"
        c = {**q, "conv_impl": self.conv_impl, "layout": layout}
        if layout == "CHWN":
            x = to_chwn(x)
        x = max_pool2(nn.relu(Conv(6, **c)(x)), layout)
        x = max_pool2(nn.relu(Conv(16, **c)(x)), layout)
        if layout == "CHWN":
            # (16, 7, 7, N) feeds the dense layers as is, images staying on the
            # minor axis; only the (classes, N) logits are transposed.
            d = {**q, "layout": "FN"}
            x = nn.relu(Dense(120, **d)(x))
            x = nn.relu(Dense(84, **d)(x))
            return jnp.transpose(Dense(self.num_classes, **d)(x))
        x = jnp.reshape(x, (x.shape[0], -1))
        x = nn.relu(Dense(120, **q)(x))
        x = nn.relu(Dense(84, **q)(x))
        return Dense(self.num_classes, **q)(x)
