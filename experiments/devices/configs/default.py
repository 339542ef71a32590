"""Configs of ``make reproduce-devices``: selective write-verify on measured
devices (``uswim_jax.devices``), the float LeNet of ``make reproduce-mnist``
and of ``make reproduce-fashion-mnist`` (the same training, so their trained
models and sensitivities are reused from those run folders when present),
under the PCM and RRAM presets read at 1 s, 1 h, 1 day and 1 month after
programming, with and without global drift compensation.

Every cell is a programmed Monte Carlo sweep (each trial programs a chip with
the verify loop and reads it at ``t``; ``uswim_jax.sweep``), so one trial
costs a verify loop over every device plus the forward pass: the default is
sized for a 2-core CPU (6 trials, 500 test images, 5 budgets: 5,184 programmed
trial evaluations, 15-25 minutes on 2 cores when the reproductions' models
are reused).
"""

import dataclasses

from experiments.fashion_mnist.configs.default import model_config as fashion_config
from experiments.mnist.configs.default import model_config as mnist_config
from uswim_jax.devices import PRESET_NAMES
from uswim_jax.experiment import METHODS, ExperimentConfig
from uswim_jax.experiment import presets as sizes

#: 1 s, 1 h, 1 day, 1 month (30 days), in seconds.
TIMES = (1.0, 3600.0, 86400.0, 2592000.0)


@dataclasses.dataclass(frozen=True)
class DevicesConfig:
    """The grid of one ``reproduce-devices`` run.

    ``models``: ``(name, ExperimentConfig)``, whose training and sensitivity
    fields are used (and whose run folder ``reuse/name`` is reused); the
    rest of the grid is here, the same for every model.
    """

    models: tuple[tuple[str, ExperimentConfig], ...]
    presets: tuple[str, ...] = ("pcm", "rram")
    times: tuple[float, ...] = TIMES
    compensation: tuple[bool, ...] = (False, True)
    methods: tuple[str, ...] = ("random", "magnitude", "swim", "uswim", "eloss-obd")
    fractions: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2)
    num_trials: int = 6
    test_subset: int = 500
    chunk_size: int = 6
    eval_batch_size: int = 100
    seed: int = 0
    #: Chips (the first trials' keys) programmed all-verified for the cost table.
    cost_chips: int = 4
    #: Budgets (verified fractions) of the accuracy-against-time plots.
    plot_fractions: tuple[float, ...] = (0.01, 0.05, 0.2)
    label: str = "default"
    #: Budget points per saved unit of work within a curve (None: whole
    #: curves); how the work is cut, not what it computes (not hashed).
    steps_per_chunk: int | None = None

    def __post_init__(self):
        if not self.models:
            raise ValueError("models must name at least one model")
        bad = [p for p in self.presets if p not in PRESET_NAMES]
        if bad or not self.presets:
            raise ValueError(f"presets must be among {PRESET_NAMES}, got {bad}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods must be among {METHODS}, got {bad}")
        if not self.times or any(not t > 0 for t in self.times):
            raise ValueError(f"times must be > 0 s, got {self.times}")
        if list(self.times) != sorted(set(self.times)):
            raise ValueError(f"times must be ascending, got {self.times}")
        spc = self.steps_per_chunk
        if spc is not None and (not isinstance(spc, int) or spc < 1):
            raise ValueError(f"steps_per_chunk must be a positive integer, got {spc!r}")
        for name in ("num_trials", "test_subset", "chunk_size", "eval_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not 1 <= self.cost_chips <= self.num_trials:
            raise ValueError(
                f"cost_chips must lie in [1, num_trials], got {self.cost_chips}"
            )
        if not set(self.plot_fractions) <= set(self.fractions):
            raise ValueError("plot_fractions must be among fractions")
        ExperimentConfig(fractions=self.fractions)  # validates the fractions

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["models"] = [[n, c.to_json()] for n, c in self.models]
        d.pop("steps_per_chunk")
        return d


def get_config() -> DevicesConfig:
    """The default: both LeNets, the whole grid, 15-25 minutes on 2 CPU
    cores when the reproductions' trained models are reused."""
    return DevicesConfig(
        models=(
            ("mnist", mnist_config("lenet", None)),
            ("fashion-mnist", fashion_config("lenet", None)),
        )
    )


def get_quick_config() -> DevicesConfig:
    """A smoke run of every stage in a few minutes: the quick training (2
    epochs on 2,048 images), two times, 2 trials on 200 test images."""
    return dataclasses.replace(
        get_config(),
        models=tuple((n, sizes.quick(c)) for n, c in get_config().models),
        times=(1.0, TIMES[-1]),
        fractions=(0.01, 0.1),
        plot_fractions=(0.01,),
        num_trials=2,
        test_subset=200,
        chunk_size=2,
        cost_chips=2,
        label="quick",
    )
