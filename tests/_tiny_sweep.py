"""A tiny real sweep (LeNet on generated digits, two methods, one setting, four
budget points saved one step per chunk), run as a script by the fault and
determinism tests:

    python tests/_tiny_sweep.py RUN_DIR

It writes ``RUN_DIR/curves.csv`` when done and prints ``done``. With
``USWIM_TEST_PAUSE=<seconds>`` it sleeps after saving each unit of work, so a
test can kill it part-way.
"""

import os
import sys
import time

import numpy as np

from uswim_jax.data import Dataset
from uswim_jax.experiment import ExperimentConfig, RunStore, run
from uswim_jax.report import write_report
from uswim_jax.train import TrainConfig


def fake_digits(n: int, seed: int) -> Dataset:
    """Noise images with one bright pixel per class (learnable in one epoch)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = rng.random((n, 28, 28, 1), dtype=np.float32) * 0.1
    x[np.arange(n), 2 * y + 3, 2 * y + 3, 0] = 1.0
    return Dataset(x, y, "synthetic", "generated", "train", 10)


CONFIG = ExperimentConfig(
    train=TrainConfig(epochs=1, batch_size=32),
    sigmas=(0.3,),
    s_values=(),
    fractions=(0.005, 0.02, 0.1, 0.3),
    methods=("random", "swim"),
    num_trials=2,
    test_subset=32,
    curvature_subset=32,
    estimator_subset=16,
    hutchinson_probes=2,
    chunk_size=None,
    steps_per_chunk=1,
    label="tiny",
)


class PausingStore(RunStore):
    """A run folder that sleeps ``pause`` seconds after saving each step chunk
    or curve, so a test can kill the run between units of work."""

    def __init__(self, root, pause: float):
        super().__init__(root)
        self.pause = pause

    def save_chunk(self, *args):
        super().save_chunk(*args)
        time.sleep(self.pause)

    def save_curve(self, *args):
        super().save_curve(*args)
        time.sleep(self.pause)


def main(run_dir: str) -> None:
    pause = float(os.environ.get("USWIM_TEST_PAUSE", "0"))
    out = run(
        CONFIG,
        PausingStore(run_dir, pause) if pause else run_dir,
        train_data=fake_digits(64, 0),
        test_data=fake_digits(32, 1),
        progress=False,
        log=lambda *a: print(*a, flush=True),
    )
    write_report(run_dir, out, out["curves"])
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
