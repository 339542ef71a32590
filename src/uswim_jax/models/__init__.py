"""Flax models of the papers, exposed as a pure ``apply_fn(params, x) -> logits``
plus their params pytree.

``params`` is the whole Flax variables dict: ``{"params": ...}`` and, for
ResNet-18, ``"batch_stats"`` (batch-norm running statistics; evaluation uses them,
i.e. batch-norm in inference mode). The core treats it like any pytree: only the
conv and dense ``kernel`` leaves go on the crossbar.

Example:
    >>> import jax
    >>> from uswim_jax.models import build_model
    >>> model = build_model("lenet")
    >>> params = model.init(jax.random.key(0))
    >>> model.apply_fn(params, jax.numpy.zeros((2, 28, 28, 1))).shape
    (2, 10)
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from uswim_jax._tree import crossbar_size, map_crossbar
from uswim_jax.models._layers import QUANT_SCHEMES, quantize, quantize_ste
from uswim_jax.models.convnet import ConvNet
from uswim_jax.models.lenet import LeNet
from uswim_jax.models.resnet import ResNet18
from uswim_jax.models.vit import ViT

__all__ = [
    "MODELS",
    "DEFAULT_WEIGHT_BITS",
    "Model",
    "build_model",
    "LeNet",
    "ConvNet",
    "ResNet18",
    "ViT",
    "quantize",
    "quantize_ste",
]

_CLASSES = {"lenet": LeNet, "convnet": ConvNet, "resnet18": ResNet18, "vit": ViT}
MODELS = tuple(_CLASSES)

#: The authors' bit widths for the quantized models (QLeNet, QCIFAR, QRes18);
#: the ViT (not the authors') takes LeNet's.
DEFAULT_WEIGHT_BITS = {"lenet": 4, "convnet": 6, "resnet18": 8, "vit": 4}

_DEFAULT_INPUT = {
    "lenet": (28, 28, 1),
    "convnet": (32, 32, 3),
    "resnet18": (32, 32, 3),
    "vit": (28, 28, 1),
}


@dataclasses.dataclass(frozen=True)
class Model:
    """A Flax module with the shapes it expects.

    Models compare and hash by value: Flax linen modules are dataclasses that
    compare and hash by their fields, so two ``build_model`` calls with the same
    arguments (or ``export`` of equal models) give equal models. ``apply_fn`` is
    a callable that compares and hashes by its model too (a bound method would
    not: Python compares a bound method's ``__self__`` by identity), so a jitted
    function taking ``model.apply_fn`` as a static argument compiles once for
    all equal models instead of once per ``Model`` object.

    Attributes:
        name: ``lenet``, ``convnet`` or ``resnet18``.
        module: the Flax linen module.
        input_shape: (H, W, C) of one image.
        num_classes: number of logits.
    """

    name: str
    module: nn.Module
    input_shape: tuple[int, int, int]
    num_classes: int

    @property
    def weight_bits(self) -> int | None:
        return self.module.weight_bits

    def init(self, key: jax.Array) -> dict[str, Any]:
        """Fresh params (the variables dict). The key is consumed."""
        x = jnp.zeros((1, *self.input_shape), jnp.float32)
        return dict(self.module.init(key, x, train=False))

    def check_input(self, x: Any) -> None:
        """Raises ``ValueError`` unless ``x`` is a batch of images of the right
        shape."""
        shape = tuple(jnp.shape(x))
        if len(shape) != 4 or shape[1:] != self.input_shape:
            raise ValueError(
                f"x has shape {shape}, but {self.name} expects (N, "
                f"{', '.join(map(str, self.input_shape))}) NHWC images"
            )

    @property
    def apply_fn(self) -> "ApplyFn":
        """``apply_fn(params, x) -> logits`` in inference mode (batch-norm uses
        its running statistics); equal for equal models."""
        return ApplyFn(self)

    def _apply(self, params: Any, x: jax.Array) -> jax.Array:
        self.check_input(x)
        return self.module.apply(params, x, train=False)

    def train_apply(self, params: Any, x: jax.Array) -> tuple[jax.Array, Any]:
        """Logits in training mode, and the updated batch-norm statistics (the
        old ones, or ``{}``, where the model has none)."""
        self.check_input(x)
        if "batch_stats" not in params:
            return self.module.apply(params, x, train=True), {}
        logits, updates = self.module.apply(
            params, x, train=True, mutable=["batch_stats"]
        )
        return logits, updates["batch_stats"]

    def num_weights(self, params: Any) -> int:
        """Number of conv and dense weights (the crossbar), biases excluded."""
        return crossbar_size(params)

    def export(self, params: Any) -> tuple["Model", Any]:
        """For quantized models: the float model and params holding Q(W).

        Device noise is added to the quantized weights (docs/method.md §2.1:
        ``W_eff = Q(W) + dW``), so Monte Carlo evaluation uses the exported pair;
        for float models this returns ``(self, params)``.
        """
        bits = self.module.weight_bits
        if bits is None:
            return self, params
        scheme = self.module.quant_scheme
        qparams = map_crossbar(lambda w: quantize(w, bits, scheme), params)
        float_model = dataclasses.replace(
            self, module=self.module.clone(weight_bits=None)
        )
        return float_model, qparams


@dataclasses.dataclass(frozen=True)
class ApplyFn:
    """``Model.apply_fn``: ``(params, x) -> logits`` in inference mode, a
    callable that compares and hashes by its model's value (usable as a static
    argument of ``jax.jit``)."""

    model: Model

    def __call__(self, params: Any, x: jax.Array) -> jax.Array:
        return self.model._apply(params, x)


def build_model(
    name: str,
    *,
    num_classes: int = 10,
    input_shape: tuple[int, int, int] | None = None,
    weight_bits: int | None = None,
    quantized: bool = False,
    quant_scheme: str = "swim",
    width: int | None = None,
    conv_impl: Any = None,
) -> Model:
    """Builds one of the papers' models.

    Args:
        name: ``lenet``, ``convnet``, ``resnet18`` or ``vit`` (a small vision
            transformer, :class:`uswim_jax.models.vit.ViT`).
        num_classes: number of logits.
        input_shape: (H, W, C); default 28x28x1 for LeNet and the ViT, 32x32x3
            otherwise (ResNet-18 takes 64x64x3 for Tiny ImageNet).
        weight_bits: quantize conv and dense weights to this many bits (straight
            through estimator in training).
        quantized: use the authors' bit width (LeNet 4, ConvNet 6, ResNet-18 8)
            when ``weight_bits`` is not given.
        quant_scheme: ``"swim"`` (the authors' step) or ``"signed"``; see
            :func:`quantize`.
        width: ResNet-18's base channel count (stages of ``width``,
            ``2 width``, ``4 width``, ``8 width`` channels); ``None`` is the
            standard 64. Only ResNet-18 takes it.
        conv_impl: removed. The models are plain Flax (XLA convolutions);
            ``evaluate`` and ``sweep`` rewrite the convolutions of any model,
            ours or a user's, as im2col matmuls across the trials
            (``uswim_jax._trialbatch``). Passing it raises ``TypeError``.

    Raises:
        ValueError: unknown model, bad bits, scheme or width.
        TypeError: ``conv_impl`` given.
    """
    if conv_impl is not None:
        raise TypeError(
            f"build_model no longer takes conv_impl (got {conv_impl!r}): the "
            "models are plain Flax, and evaluate/sweep rewrite the convolutions "
            "of every model as im2col matmuls across the trials; drop the "
            "argument"
        )
    if name not in _CLASSES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if quantized and weight_bits is None:
        weight_bits = DEFAULT_WEIGHT_BITS[name]
    if weight_bits is not None and (
        not isinstance(weight_bits, int) or not 2 <= weight_bits <= 16
    ):
        raise ValueError(
            f"weight_bits must be an integer in [2, 16], got {weight_bits}"
        )
    if quant_scheme not in QUANT_SCHEMES:
        raise ValueError(
            f"quant_scheme must be one of {QUANT_SCHEMES}, got {quant_scheme!r}"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    extra = {}
    if width is not None:
        if name != "resnet18":
            raise ValueError(f"width applies to resnet18 only, not {name!r}")
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        extra["width"] = width
    input_shape = tuple(input_shape or _DEFAULT_INPUT[name])
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (H, W, C), got {input_shape}")
    if name in ("lenet", "convnet") and input_shape[:2] != _DEFAULT_INPUT[name][:2]:
        raise ValueError(
            f"{name} needs {_DEFAULT_INPUT[name][0]}x{_DEFAULT_INPUT[name][1]} "
            f"images (its dense layer size is fixed), got {input_shape}"
        )
    if name == "vit" and (input_shape[0] % ViT.patch or input_shape[1] % ViT.patch):
        raise ValueError(
            f"vit needs an image side that is a multiple of its patch {ViT.patch}, "
            f"got {input_shape}"
        )
    module = _CLASSES[name](
        num_classes=num_classes,
        weight_bits=weight_bits,
        quant_scheme=quant_scheme,
        **extra,
    )
    return Model(name, module, input_shape, num_classes)
