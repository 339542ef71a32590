"""ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool), as the
authors' code (torchvision BasicBlock [2, 2, 2, 2]; docs/method.md §9)."""

import jax
import jax.numpy as jnp
from flax import linen as nn

from uswim_jax.models._layers import Conv, Dense


def _bn(train: bool) -> nn.BatchNorm:
    # PyTorch's momentum 0.1 is Flax's 0.9.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


class BasicBlock(nn.Module):
    features: int
    stride: int = 1
    weight_bits: int | None = None
    quant_scheme: str = "swim"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        q = {"weight_bits": self.weight_bits, "quant_scheme": self.quant_scheme}
        y = Conv(self.features, 3, self.stride, 1, use_bias=False, **q)(x)
        y = nn.relu(_bn(train)(y))
        y = Conv(self.features, 3, 1, 1, use_bias=False, **q)(y)
        y = _bn(train)(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = Conv(self.features, 1, self.stride, 0, use_bias=False, **q)(x)
            x = _bn(train)(x)
        return nn.relu(x + y)


class ResNet18(nn.Module):
    """Bias-free convs with batch-norm, adaptive average pool, dense head.
    11,164,352 weights for 10 classes, 11,261,632 for 200.

    ``width`` is the base channel count: the stem and the four stages have
    ``width``, ``width``, ``2 width``, ``4 width`` and ``8 width`` channels (64
    is the authors' ResNet-18; a narrow one, e.g. 8, runs the ablations on a
    CPU)."""

    num_classes: int = 10
    weight_bits: int | None = None
    quant_scheme: str = "swim"
    width: int = 64

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        q = {"weight_bits": self.weight_bits, "quant_scheme": self.quant_scheme}
        w = self.width
        x = Conv(w, 3, 1, 1, use_bias=False, **q)(x)
        x = nn.relu(_bn(train)(x))
        for i, width in enumerate((w, 2 * w, 4 * w, 8 * w)):
            stride = 1 if i == 0 else 2
            x = BasicBlock(width, stride, **q)(x, train)
            x = BasicBlock(width, 1, **q)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return Dense(self.num_classes, **q)(x)
