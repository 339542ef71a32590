"""Runs every benchmark script in ``benchmarks/``, one subprocess each.

``python -m benchmarks.run`` runs them in full; ``--quick`` passes ``--quick``
to the scripts that accept it (the others run with their defaults); ``--only
NAME`` (repeatable) picks scripts by module name. Each script writes its own
JSON under ``benchmarks/results/``; this prints a one-line status per script and
exits non-zero if any failed.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIP = {"__init__", "run"}


def scripts() -> list[str]:
    """Module names of the benchmark scripts, sorted."""
    return sorted(
        p.stem for p in HERE.glob("*.py") if p.stem not in SKIP and "_" != p.stem[0]
    )


def accepts_quick(name: str) -> bool:
    return '"--quick"' in (HERE / f"{name}.py").read_text()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small variants")
    parser.add_argument("--only", action="append", default=[], metavar="NAME")
    args = parser.parse_args(argv)
    names = scripts()
    unknown = sorted(set(args.only) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {names}")
    if args.only:
        names = [n for n in names if n in args.only]
    failed = []
    for name in names:
        cmd = [sys.executable, "-m", f"benchmarks.{name}"]
        if args.quick and accepts_quick(name):
            cmd.append("--quick")
        print(f"== {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=HERE.parent)
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        print(f"== {name}: {status} in {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
