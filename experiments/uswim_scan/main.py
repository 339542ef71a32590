"""``make reproduce-uswim-scan``: flags only; the work is in ``run.py``."""

import sys

from experiments import common
from experiments.uswim_scan import run
from experiments.uswim_scan.configs import default


def main(argv=None) -> int:
    return common.main(
        argv, prog="uswim-scan", doc=__doc__, run=run.run, configs=default
    )


if __name__ == "__main__":
    sys.exit(main())
