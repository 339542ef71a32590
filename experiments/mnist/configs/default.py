"""Default config of ``make reproduce-mnist``: LeNet on MNIST, the authors' recipe
(Adam 1e-3, batch 128, 20 epochs; method.md §7)."""

from uswim_jax.train import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        model="lenet", dataset="mnist", epochs=20, batch_size=128, seed=0
    )


def get_quick_config() -> TrainConfig:
    """A smoke run: two epochs on 2,048 training images."""
    return TrainConfig(
        model="lenet",
        dataset="mnist",
        epochs=2,
        batch_size=128,
        seed=0,
        train_subset=2048,
    )
