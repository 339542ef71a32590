"""``make reproduce-cifar10``: flags only; the work is in ``run.py``."""

import sys

from experiments import common
from experiments.cifar10 import run
from experiments.cifar10.configs import default


def _flags(p) -> None:
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="generated images instead of the dataset (a smoke run without data)",
    )


def main(argv=None) -> int:
    return common.main(
        argv,
        prog="reproduce-cifar10",
        doc=__doc__,
        run=run.run,
        configs=default,
        extra_flags=_flags,
    )


if __name__ == "__main__":
    sys.exit(main())
