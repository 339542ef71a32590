"""``make reproduce-deep``: flags only; the work is in ``run.py``."""

import sys

from experiments import common
from experiments.deep import run
from experiments.deep.configs import default


def main(argv=None) -> int:
    return common.main(argv, prog="deep", doc=__doc__, run=run.run, configs=default)


if __name__ == "__main__":
    sys.exit(main())
