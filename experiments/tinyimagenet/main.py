"""``make reproduce-tinyimagenet``: flags only; the work is in ``run.py``."""

import sys

from experiments import common
from experiments.tinyimagenet import run
from experiments.tinyimagenet.configs import default


def _flags(p) -> None:
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="generated images instead of the dataset (a smoke run without data)",
    )


def main(argv=None) -> int:
    return common.main(
        argv,
        prog="reproduce-tinyimagenet",
        doc=__doc__,
        run=run.run,
        configs=default,
        extra_flags=_flags,
    )


if __name__ == "__main__":
    sys.exit(main())
