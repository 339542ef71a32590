"""``make reproduce-mnist``: flags only; the work is in ``run.py``."""

import argparse
import sys

from experiments.mnist import run
from experiments.mnist.configs import default


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="reproduce-mnist", description=__doc__)
    p.add_argument(
        "--workdir",
        default=None,
        help="run folder (default runs/reproduce-mnist[-quick|-full])",
    )
    p.add_argument(
        "--results-dir",
        default=None,
        help="also copy the report here (e.g. results/reproduce-mnist)",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a 3-minute smoke run")
    size.add_argument(
        "--full",
        action="store_true",
        help="the whole grid with 100 trials (meant for a GPU)",
    )
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        config, suffix = default.get_quick_config(), "-quick"
    elif args.full:
        config, suffix = default.get_full_config(), "-full"
    else:
        config, suffix = default.get_config(), ""
    workdir = args.workdir or f"runs/reproduce-mnist{suffix}"
    results = args.results_dir
    if results and suffix:
        results = results.rstrip("/") + suffix
    try:
        out = run.run(
            config, workdir, results_dir=results, progress=not args.no_progress
        )
    except (ValueError, OSError, RuntimeError) as e:
        print(f"reproduce-mnist: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print()
    print(out["summary"])
    print(
        f"run folder: {workdir}" + (f"; report copied to {results}" if results else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
