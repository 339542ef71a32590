"""``make reproduce-mnist``: flags only; the work is in ``run.py``."""

import sys

from experiments import common
from experiments.mnist import run
from experiments.mnist.configs import default


def main(argv=None) -> int:
    return common.main(
        argv, prog="reproduce-mnist", doc=__doc__, run=run.run, configs=default
    )


if __name__ == "__main__":
    sys.exit(main())
