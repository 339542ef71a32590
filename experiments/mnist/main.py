"""``make reproduce-mnist``: flags only; the work is in ``run.py``."""

import argparse
import dataclasses
import sys

from experiments.mnist import run
from experiments.mnist.configs import default
from uswim_jax._interrupt import reliable_interrupts


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
    p.add_argument(
        "--steps-per-chunk",
        type=int,
        default=None,
        help="save every N budget points of a curve as they finish (default: "
        "whole curves); part of the config, so a new run folder",
    )
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        config, suffix = default.get_quick_config(), "-quick"
    elif args.full:
        config, suffix = default.get_full_config(), "-full"
    else:
        config, suffix = default.get_config(), ""
    if args.steps_per_chunk is not None:
        try:
            config = dataclasses.replace(config, steps_per_chunk=args.steps_per_chunk)
        except ValueError as e:
            p.error(str(e))
    workdir = args.workdir or f"runs/reproduce-mnist{suffix}"
    results = args.results_dir
    if results and suffix:
        results = results.rstrip("/") + suffix
    try:
        with reliable_interrupts():
            out = run.run(
                config, workdir, results_dir=results, progress=not args.no_progress
            )
    except KeyboardInterrupt:
        print(
            f"reproduce-mnist: interrupted; finished work is kept in {workdir} "
            "(run the same command again to resume)",
            file=sys.stderr,
        )
        return 130
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
