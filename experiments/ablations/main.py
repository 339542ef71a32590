"""``make ablations``: flags only; the work is in ``run.py``."""

import sys

from experiments import common
from experiments.ablations import run
from experiments.ablations.configs import default


def _flags(p) -> None:
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated variants to run (the base always runs), e.g. "
        "no-first-order,pulse",
    )


def main(argv=None) -> int:
    return common.main(
        argv,
        prog="ablations",
        doc=__doc__,
        run=run.run,
        configs=default,
        extra_flags=_flags,
    )


if __name__ == "__main__":
    sys.exit(main())
