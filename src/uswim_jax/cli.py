"""The ``uswim`` command.

Every subcommand has ``--help``. Bad arguments print one line on stderr and exit
with status 2; a failure while running (missing data, a corrupt file) prints one
line and exits with status 1. Set ``USWIM_DEBUG=1`` to see the traceback instead.
"""

import argparse
import os
import sys
from collections.abc import Sequence


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr and exit 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


class UsageError(Exception):
    """A bad argument found after parsing; exits with status 2."""


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {text!r}"
        ) from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _add_train(sub) -> None:
    from uswim_jax.data import DATASETS
    from uswim_jax.models import MODELS

    p = sub.add_parser(
        "train",
        help="train a model and save it to a run folder",
        description="Train a model (resumes from the run folder's checkpoint).",
    )
    p.add_argument("--model", choices=MODELS, default="lenet")
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument("--epochs", type=_positive_int, default=20)
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None, help="default: the model's recipe")
    p.add_argument(
        "--weight-bits",
        type=int,
        default=None,
        help="quantize weights to N bits (straight-through); default float",
    )
    p.add_argument(
        "--quantized",
        action="store_true",
        help="use the authors' bit width (LeNet 4, ConvNet 6, ResNet-18 8)",
    )
    p.add_argument("--augment", action="store_true", help="random crop and flip")
    p.add_argument("--train-subset", type=_positive_int, default=None)
    p.add_argument("--data-path", default=None, help="folder with the dataset files")
    p.add_argument("--run-dir", default=None, help="default: runs/<model>-<dataset>")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from uswim_jax import data
    from uswim_jax.models import DEFAULT_WEIGHT_BITS
    from uswim_jax.train import TrainConfig, train

    bits = args.weight_bits
    if args.quantized and bits is None:
        bits = DEFAULT_WEIGHT_BITS[args.model]
    if bits is not None and not 2 <= bits <= 16:
        raise UsageError(f"--weight-bits must be in [2, 16], got {bits}")
    if args.lr is not None and not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    config = TrainConfig(
        model=args.model,
        dataset=args.dataset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        learning_rate=args.lr,
        weight_bits=bits,
        augment=args.augment,
        train_subset=args.train_subset,
    )
    run_dir = args.run_dir or os.path.join("runs", f"{args.model}-{args.dataset}")
    train_data = data.load(args.dataset, "train", path=args.data_path)
    test_data = data.load(args.dataset, "test", path=args.data_path)
    result = train(
        config,
        run_dir,
        train_data=train_data,
        test_data=test_data,
        progress=not args.no_progress,
    )
    print(
        f"{args.model} on {result.dataset}: test accuracy "
        f"{100 * result.test_accuracy:.2f}% ({len(test_data)} test images); "
        f"run folder {run_dir}"
    )
    return 0


def _add_sensitivity(sub) -> None:
    p = sub.add_parser(
        "sensitivity",
        help="compare curvature estimators on a trained run",
        description=(
            "Compute the one-pass diagonal (SWIM's), Hutchinson (with its standard "
            "error), the GGN and the empirical Fisher diagonals of a trained run on "
            "the same training images, and write rank correlations and top-k "
            "overlaps (per layer and overall) with a histogram plot."
        ),
    )
    p.add_argument("--run-dir", required=True, help="a training run folder")
    p.add_argument("--out", default=None, help="default: <run-dir>/sensitivity")
    p.add_argument(
        "--samples",
        type=_positive_int,
        default=1024,
        help="training images used by every estimator",
    )
    p.add_argument("--probes", type=_positive_int, default=64, help="Hutchinson probes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-path", default=None)
    p.set_defaults(func=_cmd_sensitivity)


def _cmd_sensitivity(args) -> int:
    import dataclasses

    import jax
    import numpy as np

    from uswim_jax import data
    from uswim_jax.experiment import ExperimentConfig, compute_sensitivities
    from uswim_jax.sensitivity_report import write_sensitivity_report
    from uswim_jax.train import load_run

    model, params, train_config = load_run(args.run_dir)
    train_data = data.load(train_config.dataset, "train", path=args.data_path)
    config = dataclasses.replace(
        ExperimentConfig(train=train_config, seed=args.seed),
        curvature_subset=args.samples,
        estimator_subset=args.samples,
        hutchinson_probes=args.probes,
    )
    sens = compute_sensitivities(model.apply_fn, params, train_data, config)
    scores = {k: sens[k] for k in ("obd", "hutchinson", "ggn", "fisher")}
    out = args.out or os.path.join(args.run_dir, "sensitivity")
    paths = write_sensitivity_report(scores, params, out)
    crossbar = [
        (np.abs(np.asarray(se)), np.abs(np.asarray(est)))
        for (path, est), se in zip(
            jax.tree_util.tree_leaves_with_path(sens["hutchinson"]),
            jax.tree.leaves(sens["hutchinson_se"]),
            strict=True,
        )
        if np.ndim(est) >= 2
    ]
    se = np.concatenate([a.ravel() for a, _ in crossbar])
    est = np.concatenate([b.ravel() for _, b in crossbar])
    rel = float(np.median(se / np.maximum(est, 1e-30)))
    print(
        f"{model.name} on {train_data.name}, {min(args.samples, len(train_data))} "
        f"training images; Hutchinson with {args.probes} probes: median relative "
        f"standard error {rel:.2f}"
    )
    print(open(paths["markdown"]).read())
    print(f"report: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="uswim",
        description="Selective write-verify for computing-in-memory accelerators.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_train(sub)
    _add_sensitivity(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``uswim`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = os.environ.get("USWIM_DEBUG") == "1"
    try:
        return args.func(args)
    except UsageError as e:
        sys.stderr.write(f"uswim {args.command}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(
            "uswim: interrupted; finished work is saved in the run folder\n"
        )
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        if debug:
            raise
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first) if first else type(e).__name__
        sys.stderr.write(f"uswim {args.command}: error: {detail}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
