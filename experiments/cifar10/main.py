"""``make reproduce-cifar10``: flags only; the work is in ``run.py``."""

import sys

from experiments import common
from experiments.cifar10 import run
from experiments.cifar10.configs import default


def main(argv=None) -> int:
    return common.main(
        argv,
        prog="reproduce-cifar10",
        doc=__doc__,
        run=run.run,
        configs=default,
        extra_flags=common.synthetic_flag,
    )


if __name__ == "__main__":
    sys.exit(main())
