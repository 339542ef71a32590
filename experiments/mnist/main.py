"""``make reproduce-mnist``: flags only; the work is in ``run.py``."""

import argparse
import sys

from experiments.mnist import run
from experiments.mnist.configs import default


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="reproduce-mnist", description=__doc__)
    p.add_argument("--workdir", default="runs/reproduce-mnist")
    p.add_argument(
        "--results-dir",
        default=None,
        help="also copy summary.md here (e.g. results/reproduce-mnist)",
    )
    p.add_argument("--quick", action="store_true", help="2 epochs on 2,048 images")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    config = default.get_quick_config() if args.quick else default.get_config()
    workdir = args.workdir + ("-quick" if args.quick else "")
    try:
        metrics = run.run(
            config,
            workdir,
            results_dir=args.results_dir,
            progress=not args.no_progress,
        )
    except (ValueError, OSError, RuntimeError) as e:
        print(f"reproduce-mnist: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print()
    print(open(f"{workdir}/summary.md").read())
    print(
        f"LeNet clean test accuracy on {metrics['dataset']}: "
        f"{100 * metrics['test_accuracy']:.2f}%"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
