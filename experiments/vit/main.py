"""``make reproduce-vit``: flags only; the work is in ``run.py``."""

import sys

from experiments import common
from experiments.vit import run
from experiments.vit.configs import default


def main(argv=None) -> int:
    return common.main(argv, prog="vit", doc=__doc__, run=run.run, configs=default)


if __name__ == "__main__":
    sys.exit(main())
