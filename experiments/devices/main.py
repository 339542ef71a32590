"""``make reproduce-devices``: selective write-verify on measured devices (PCM
and RRAM presets, drift, read noise, the verify loop's own cycle counts), the
float LeNet on MNIST and on Fashion-MNIST; flags only, the work is in
``run.py``."""

import sys

from experiments import common
from experiments.devices import run
from experiments.devices.configs import default


def _flags(p) -> None:
    p.add_argument(
        "--reuse",
        default="runs",
        help="folder holding the reproductions' run folders "
        "(reproduce-mnist/lenet, reproduce-fashion-mnist/lenet): their trained "
        "LeNet and sensitivities are copied when the config matches (default "
        "runs; 'none' to train here)",
    )


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a.split("=")[0] == "--per-chip" for a in args):
        print(
            "reproduce-devices: error: --per-chip is the Gaussian models' study "
            "(uswim_jax.experiment.per_chip); it does not apply here",
            file=sys.stderr,
        )
        return 2

    def _run(config, workdir, *, reuse, **kw):
        return run.run(config, workdir, reuse=None if reuse == "none" else reuse, **kw)

    return common.main(
        argv,
        prog="reproduce-devices",
        doc=__doc__,
        run=_run,
        configs=default,
        extra_flags=_flags,
    )


if __name__ == "__main__":
    sys.exit(main())
