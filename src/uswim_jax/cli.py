"""The ``uswim`` command.

Every subcommand has ``--help``. Bad arguments print one line on stderr and exit
with status 2; a failure while running (missing data, a corrupt file) prints one
line and exits with status 1, and so does a core-only install (the command needs
the ``experiments`` extra). Set ``USWIM_DEBUG=1`` to see the traceback instead.
"""

import argparse
import os
import sys
from collections.abc import Sequence

#: Modules of the ``experiments`` extra that the command line imports.
_EXTRA_MODULES = ("flax", "optax", "matplotlib", "tqdm")
_EXTRA_HINT = "pip install 'uswim_jax[experiments]'"


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to a flag's help unless the help already says
    its default or there is none to show (``None``, ``False``); text with line
    breaks (the model table) is printed as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and "default" not in text
            and default is not None
            and default is not False
            and default is not argparse.SUPPRESS
        ):
            text += " (default: %(default)s)"
        return text

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr and exit 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

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


def _training_flags(p: argparse.ArgumentParser, epochs_help: str) -> None:
    """The flags of ``train`` and ``sweep`` that pick the model, the data and
    the training recipe."""
    from uswim_jax.data import DATASETS
    from uswim_jax.models import MODELS

    p.add_argument(
        "--model",
        choices=MODELS,
        default="lenet",
        help="the network; which model takes which dataset is listed below",
    )
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        default="mnist",
        help="the training and test images (see --data-path)",
    )
    p.add_argument("--epochs", type=_positive_int, default=None, help=epochs_help)
    p.add_argument(
        "--batch-size", type=_positive_int, default=128, help="training batch size"
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: the model's recipe, Adam 1e-3 for LeNet and "
        "the ConvNet, SGD 0.01 for ResNet-18)",
    )
    p.add_argument(
        "--weight-bits",
        type=int,
        default=None,
        help="quantize weights to N bits (straight-through; default: float)",
    )
    p.add_argument(
        "--quantized",
        action="store_true",
        help="use the authors' bit width (LeNet 4, ConvNet 6, ResNet-18 8)",
    )
    p.add_argument("--augment", action="store_true", help="random crop and flip")
    p.add_argument(
        "--train-subset",
        type=_positive_int,
        default=None,
        help="use only the first N training images, for training and for the "
        "sensitivities (default: all)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of initialization and noise"
    )
    p.add_argument(
        "--data-path",
        default=None,
        help="folder with the dataset files (default: the cache, then the "
        "dataset's other sources)",
    )


def _compatible_models() -> dict[str, tuple[str, ...]]:
    """``{dataset: the models that take its images}``, by
    :func:`uswim_jax.models.build_model`'s own shape check."""
    from uswim_jax.data._load import SPECS
    from uswim_jax.models import MODELS, build_model

    out = {}
    for name, spec in SPECS.items():
        ok = []
        for m in MODELS:
            try:
                build_model(m, num_classes=spec.num_classes, input_shape=spec.shape)
            except ValueError:
                continue
            ok.append(m)
        out[name] = tuple(ok)
    return out


def _models_epilog() -> str:
    from uswim_jax.data._load import SPECS

    lines = ["models per dataset (image size: models that take it):"]
    for name, models in _compatible_models().items():
        size = "x".join(map(str, SPECS[name].shape))
        lines.append(f"  {name:<14} {size:<9} {', '.join(models) or '(none)'}")
    return "\n".join(lines)


def _check_model_takes_dataset(model: str, dataset: str) -> None:
    """Refuses, before any data is loaded, a model that cannot take the
    dataset's images (LeNet needs 28x28, the ConvNet 32x32)."""
    from uswim_jax.data._load import SPECS

    ok = _compatible_models()[dataset]
    if model not in ok:
        size = "x".join(map(str, SPECS[dataset].shape))
        raise UsageError(
            f"--model {model} does not take --dataset {dataset} ({size} images); "
            f"models that do: {', '.join(ok) or 'none'} (see --help)"
        )


def _curvature_flags(p: argparse.ArgumentParser, *, quick: bool = False) -> None:
    """The one-pass diagonal's quirk switches (docs/method.md §8); ``quick``:
    unset (None) unless given, so ``--quick`` can set them."""
    also = ", the authors' with --quick" if quick else ""
    p.add_argument(
        "--avg-pool",
        choices=("exact", "authors"),
        default=None if quick else "exact",
        help=f"average-pool rule: exact h/k^2 or the authors' h/k (default: exact"
        f"{also})",
    )
    p.add_argument(
        "--q-scale",
        choices=("exact", "authors"),
        default=None if quick else "exact",
        help="quantized layers' scale rule: exact h*a^2 or the authors' h*a "
        f"(needs a quantized model; default: exact{also} on a quantized model)",
    )


def _weight_bits(args) -> int | None:
    from uswim_jax.models import DEFAULT_WEIGHT_BITS

    bits = args.weight_bits
    if args.quantized and bits is None:
        bits = DEFAULT_WEIGHT_BITS[args.model]
    if bits is not None and not 2 <= bits <= 16:
        raise UsageError(f"--weight-bits must be in [2, 16], got {bits}")
    return bits


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model and save it to a run folder",
        description="Train a model (resumes from the run folder's checkpoint).",
        epilog=_models_epilog(),
    )
    _training_flags(p, epochs_help="training epochs (default: 20)")
    p.add_argument(
        "--run-dir",
        default=None,
        help="where the model is saved (default: runs/<model>-<dataset>)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from uswim_jax import data
    from uswim_jax.train import TrainConfig, train

    bits = _weight_bits(args)
    if args.lr is not None and not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    _check_model_takes_dataset(args.model, args.dataset)
    config = TrainConfig(
        model=args.model,
        dataset=args.dataset,
        epochs=args.epochs or TrainConfig().epochs,
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
            "overlaps (per layer and overall) with a plot: histograms and "
            "per-weight hexbins of the estimators."
        ),
    )
    p.add_argument("--run-dir", required=True, help="a training run folder")
    p.add_argument(
        "--out", default=None, help="report folder (default: <run-dir>/sensitivity)"
    )
    p.add_argument(
        "--samples",
        type=_positive_int,
        default=1024,
        help="training images used by every estimator (at most the run's "
        "--train-subset)",
    )
    p.add_argument("--probes", type=_positive_int, default=64, help="Hutchinson probes")
    _curvature_flags(p)
    p.add_argument("--seed", type=int, default=0, help="seed of Hutchinson's probes")
    p.add_argument("--data-path", default=None, help="folder with the dataset files")
    p.set_defaults(func=_cmd_sensitivity)


def _cmd_sensitivity(args) -> int:
    import dataclasses

    import jax
    import numpy as np

    from uswim_jax import data
    from uswim_jax.experiment import (
        ExperimentConfig,
        compute_sensitivities,
        sensitivity_sizes,
    )
    from uswim_jax.sensitivity_report import write_sensitivity_report
    from uswim_jax.train import load_run

    model, params, train_config = load_run(args.run_dir)
    train_data = data.load(train_config.dataset, "train", path=args.data_path)
    try:
        config = dataclasses.replace(
            ExperimentConfig(train=train_config, seed=args.seed),
            curvature_subset=args.samples,
            estimator_subset=args.samples,
            hutchinson_probes=args.probes,
            avg_pool=args.avg_pool,
            q_scale=args.q_scale,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
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
    num_images = sensitivity_sizes(config, len(train_data))[0]
    note = (
        f"{model.name} on {train_data.name}, {num_images} training images; "
        f"Hutchinson with {args.probes} probes: median relative standard error "
        f"{rel:.2f}"
    )
    from uswim_jax._io import atomic_write_json

    atomic_write_json(
        os.path.join(out, "meta.json"),
        {
            "note": note + ".",
            "samples": args.samples,
            "probes": args.probes,
            "hutchinson_median_relative_se": rel,
        },
    )
    print(note)
    print(open(paths["markdown"]).read())
    print(f"report: {out}")
    return 0


def _number_list(kind):
    def parse(text: str) -> tuple:
        try:
            vals = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated numbers, got {text!r}"
            ) from None
        return vals

    return parse


def _methods(text: str) -> tuple[str, ...]:
    from uswim_jax.experiment import METHODS

    names = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(bad) or text!r}; choose from "
            f"{', '.join(METHODS)}"
        )
    return names


def _quick_defaults(weight_bits: int | None = None) -> dict:
    """``uswim sweep --quick``: the sizes and knobs of ``make reproduce-mnist
    ARGS=--quick`` (``uswim_jax.experiment.presets``) for a model of
    ``weight_bits``, by flag name (``eval_batch_size`` has no flag)."""
    from uswim_jax.experiment import presets

    names = {"num_trials": "trials", "hutchinson_probes": "probes"}
    both = {
        **presets.QUICK_TRAIN,
        **presets.QUICK,
        **presets.reproduction(weight_bits),
    }
    return {names.get(k, k): v for k, v in both.items()}


def _add_sweep(sub) -> None:
    from uswim_jax.experiment import METHODS

    p = sub.add_parser(
        "sweep",
        help="train, compute sensitivities and sweep selection methods",
        description=(
            "Run (or resume) a selective write-verify sweep into a run folder: "
            "train the model, compute sensitivities, sweep every method under "
            "every device setting, and write curves.csv, summary.md and a plot. "
            "Every finished step chunk is saved as it completes; run the same "
            "command again to resume after an interruption."
        ),
        epilog=_models_epilog(),
    )
    _training_flags(p, epochs_help="training epochs (default: 20, 2 with --quick)")
    p.add_argument(
        "--sigmas",
        type=_number_list(float),
        default=None,
        help="uniform-variation sigmas, comma-separated (default: 0.1,0.2,0.3)",
    )
    p.add_argument(
        "--s-values",
        type=_number_list(float),
        default=None,
        help="state-dependent ratios s, comma-separated (default: 2,3,5; '' for none)",
    )
    p.add_argument(
        "--s-sigma",
        type=float,
        default=None,
        help="sigma of the state-dependent settings (default: 0.3)",
    )
    p.add_argument(
        "--fractions",
        type=_number_list(float),
        default=None,
        help="verified fractions in [0, 1], non-decreasing, comma-separated "
        "(default: 0.001,0.002,0.005,0.01,0.02,0.05,0.1,0.2,0.3,0.5)",
    )
    p.add_argument(
        "--trials",
        type=_positive_int,
        default=None,
        help="Monte Carlo trials per budget point (default: 30)",
    )
    p.add_argument(
        "--methods",
        type=_methods,
        default=None,
        help="comma-separated selection methods, from: "
        f"{', '.join(METHODS)} (default: all; 'none' and 'exhaustive' are the "
        "end points of every curve and always reported; 'uswim' runs under "
        "state-dependent variation only, as it equals 'swim' under uniform)",
    )
    p.add_argument(
        "--steps-per-chunk",
        type=_positive_int,
        default=None,
        help="budget points saved per unit of work (default: a whole curve)",
    )
    p.add_argument(
        "--test-subset",
        type=_positive_int,
        default=None,
        help="Monte Carlo over the first N test images (default: all)",
    )
    _curvature_flags(p, quick=True)
    p.add_argument(
        "--no-first-order",
        action="store_true",
        help="drop the first-order term from SWIM/U-SWIM scores (U-SWIM's --no_first)",
    )
    p.add_argument(
        "--k-power",
        type=int,
        choices=(1, 2),
        default=1,
        help="U-SWIM multiplier k (1, the authors') or k^2 (2)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a few-minute smoke run, the config of make reproduce-mnist "
        "ARGS=--quick; unless given, sets "
        + ", ".join(
            f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
            for k, v in _quick_defaults().items()
        )
        + " (and q_scale=authors on a quantized model)",
    )
    p.add_argument(
        "--run-dir",
        default=None,
        help="the run folder (default: runs/sweep-<model>-<dataset>[-quick])",
    )
    p.add_argument(
        "--per-chip",
        type=float,
        default=None,
        metavar="MARGIN",
        help="also program each chip (trial) in batches until it is within MARGIN "
        "pp of exhaustive write-verify on a calibration split (the last 1,000 "
        "training images), under the run's largest uniform sigma, and add the "
        "per-chip section to the report and per_chip.csv "
        "(uswim_jax.chip_programming.PerChipConfig)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    from uswim_jax._distributed import add_arguments

    add_arguments(p)
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args) -> int:
    from uswim_jax import _distributed, data

    _distributed.initialize_from_args(args)  # before any JAX computation
    from uswim_jax.experiment import ExperimentConfig
    from uswim_jax.experiment import run as run_experiment
    from uswim_jax.report import write_report
    from uswim_jax.train import TrainConfig

    if args.lr is not None and not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    _check_model_takes_dataset(args.model, args.dataset)
    weight_bits = _weight_bits(args)
    quick = _quick_defaults(weight_bits) if args.quick else {}

    def pick(name, default):
        v = getattr(args, name, None)
        return v if v is not None else quick.get(name, default)

    base = ExperimentConfig()
    try:
        config = ExperimentConfig(
            train=TrainConfig(
                model=args.model,
                dataset=args.dataset,
                epochs=pick("epochs", base.train.epochs),
                batch_size=args.batch_size,
                seed=args.seed,
                learning_rate=args.lr,
                weight_bits=weight_bits,
                augment=args.augment,
                train_subset=pick("train_subset", None),
            ),
            sigmas=pick("sigmas", base.sigmas),
            s_values=pick("s_values", base.s_values),
            s_sigma=pick("s_sigma", base.s_sigma),
            fractions=pick("fractions", base.fractions),
            num_trials=pick("trials", base.num_trials),
            methods=pick("methods", base.methods),
            seed=args.seed,
            test_subset=pick("test_subset", None),
            curvature_subset=quick.get("curvature_subset"),
            estimator_subset=quick.get("estimator_subset", base.estimator_subset),
            hutchinson_probes=quick.get("probes", base.hutchinson_probes),
            steps_per_chunk=args.steps_per_chunk,
            first_order=not args.no_first_order,
            k_power=args.k_power,
            avg_pool=pick("avg_pool", base.avg_pool),
            q_scale=pick("q_scale", base.q_scale),
            eval_batch_size=quick.get("eval_batch_size", base.eval_batch_size),
            label="quick" if args.quick else "cli",
        )
        if args.per_chip is not None:
            from uswim_jax.experiment.per_chip import with_per_chip

            config = with_per_chip(config, margin=args.per_chip)
    except ValueError as e:
        raise UsageError(str(e)) from None
    suffix = "-quick" if args.quick else ""
    run_dir = args.run_dir or os.path.join(
        "runs", f"sweep-{args.model}-{args.dataset}{suffix}"
    )
    train_data = data.load(args.dataset, "train", path=args.data_path)
    test_data = data.load(args.dataset, "test", path=args.data_path)
    out = run_experiment(
        config,
        run_dir,
        train_data=train_data,
        test_data=test_data,
        progress=not args.no_progress,
    )
    sections = ()
    if config.per_chip is not None:
        from uswim_jax.experiment.per_chip import per_chip_section

        sections = (per_chip_section(out, train_data, test_data, run_dir),)
    text = write_report(run_dir, out, out["curves"], sections=sections)
    if _distributed.is_writer():
        print(text)
        print(f"run folder: {run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="uswim",
        description="Selective write-verify for computing-in-memory accelerators.",
    )
    sub = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        parser_class=_Parser,
        help="run `uswim COMMAND --help` for its flags",
    )
    sub.required = True
    _add_train(sub)
    _add_sensitivity(sub)
    _add_sweep(sub)
    return parser


def _missing_extra(e: ModuleNotFoundError) -> bool:
    return (e.name or "").split(".")[0] in _EXTRA_MODULES


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``uswim`` console script."""
    debug = os.environ.get("USWIM_DEBUG") == "1"
    try:
        return _main(argv, debug)
    except ModuleNotFoundError as e:
        if debug or not _missing_extra(e):
            raise
        sys.stderr.write(
            f"uswim: the command line needs the experiments extra (no module "
            f"{e.name!r}): {_EXTRA_HINT}\n"
        )
        return 1


def _main(argv: Sequence[str] | None, debug: bool) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from uswim_jax._interrupt import reliable_interrupts

    try:
        with reliable_interrupts():
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
