"""The ``maxca`` command line: parse, call the library, print.

Commands: ``register`` (one pair or a Learn2Reg pair list), ``evaluate``, ``show``, ``train``,
``demo``; ``maxca --version``. Usage and output files: ``docs/cli.md``.

Exit codes: 0 success; 2 a usage error or bad input (missing/corrupt file, wrong dimensions,
mismatched grids, NaN voxels, a checkpoint that does not match its config, an output folder that
already holds results...), reported as one line ``maxca: error: <message>`` on stderr; 1 an
unexpected failure (``--debug`` prints its traceback); 3 training diverged; 130 interrupted
(the contract: :mod:`maxca.errors`); 143 terminated (SIGTERM), 129 hung up (SIGHUP):
``register``, ``evaluate`` and ``show`` handle SIGTERM and SIGHUP like Ctrl-C (temporary files
removed, one line on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from maxca._checks import SIMILARITIES
from maxca._version import __version__
from maxca.errors import EXIT_DIVERGED, MaxcaInputError, TrainingDivergedError
from maxca.runtime import tune_cpu_allocator

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Terminated(KeyboardInterrupt):
    """SIGTERM/SIGHUP turned into an interruption (cleans up like Ctrl-C)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated(signum)


@contextlib.contextmanager
def _terminate_like_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`_Terminated` (a KeyboardInterrupt),
    so temporary outputs are removed as for Ctrl-C. Only in the main thread."""
    names = [n for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    old = {}
    try:
        for name in names:
            signum = getattr(signal, name)
            old[signum] = signal.signal(signum, _raise_terminated)
    except ValueError:  # not the main thread: leave the handlers alone
        pass
    try:
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


_default_showwarning = warnings.showwarning


def _show_warning(message: Any, category: Any, filename: Any, lineno: Any, *rest: Any) -> None:
    """maxca's own warnings (``UserWarning``) as one line ``maxca: warning: ...``; others as
    Python shows them."""
    if isinstance(category, type) and category is UserWarning:
        print(f"maxca: warning: {_one_line(message)}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, *rest)


def _memory_gb(text: str) -> float:
    return _positive_float(text)


# ----------------------------------------------------------------------------------------------
# argument types


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _device(text: str) -> str:
    """``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    from maxca._checks import check_device_name

    try:
        return check_device_name(text)
    except MaxcaInputError:
        raise argparse.ArgumentTypeError(
            f"expected auto, cpu, cuda or cuda:N (a GPU index), got {text!r}"
        ) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _label_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integer label ids such as 2,3,41, got {text!r}"
        ) from None


# ----------------------------------------------------------------------------------------------
# commands


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _print_pair(report: Any, prefix: str = "  ") -> None:
    metrics = report.metrics
    print(f"{prefix}max |u| {report.max_displacement:.2f} voxel", end="")
    if metrics:
        print(
            f"; Dice {_fmt(metrics['dice_before'])} -> {_fmt(metrics['dice_after'])} "
            f"({len(metrics['labels'])} labels); folded voxels {_fmt(metrics['njd_percent'])} %"
        )
    else:
        print()


def _note_dice_fell(metrics: Sequence[dict[str, Any]]) -> None:
    """One line when the mean Dice after registration is below the Dice before."""
    pairs = [
        (m["dice_before"], m["dice_after"])
        for m in metrics
        if m and m.get("dice_before") is not None and m.get("dice_after") is not None
    ]
    if not pairs:
        return
    before = sum(b for b, _ in pairs) / len(pairs)
    after = sum(a for _, a in pairs) / len(pairs)
    if after < before:
        which = "" if len(pairs) == 1 else f" (mean over {len(pairs)} pairs)"
        print(
            f"  note: Dice fell{which}, {before:.3f} -> {after:.3f}: the labels may not "
            "correspond, or the model may not fit these images (other contrast, resolution or "
            "anatomy than it was trained on; try --refine STEPS)"
        )


def _cmd_register(args: argparse.Namespace) -> int:
    from maxca.app import check_output_dir, load_model, register_dataset, register_files
    from maxca.app.registration import parse_outputs
    from maxca.pretrained import resolve_model

    single = args.fixed is not None or args.moving is not None
    if args.dataset is not None and (single or args.moving_labels or args.fixed_labels):
        raise _UsageError("give either --fixed/--moving (one pair) or --dataset, not both")
    if args.dataset is None and (args.fixed is None or args.moving is None):
        raise _UsageError("one pair needs both --fixed and --moving (or use --dataset)")
    check_output_dir(args.out, args.overwrite)
    parse_outputs(args.outputs, dataset=args.dataset is not None)  # before loading anything
    for name in ("fixed", "moving", "moving_labels", "fixed_labels", "dataset"):
        value = getattr(args, name)
        if value is not None and not Path(value).exists():
            raise MaxcaInputError(f"file not found: {value}")
    model, info = load_model(args.model, args.device)
    if args.compile:
        from maxca.accel import compile_model

        model = compile_model(model)
    _, packaged = resolve_model(args.model)
    affine = args.affine if args.affine is not None else bool(packaged and packaged.affine)
    options = {
        "device": args.device,
        "diffeomorphic": True if args.diffeomorphic else None,
        "refine_steps": args.refine,
        "refine_similarity": args.refine_similarity,
        "passes": args.passes,
        "png": args.png,
        "overwrite": args.overwrite,
        "outputs": args.outputs,
        "compress": args.compress,
        "max_memory_gb": args.max_memory,
        "progress": not args.quiet,
        "affine": affine,
        "precision": args.precision,
    }
    if args.dataset is None:
        report = register_files(
            model,
            info,
            args.fixed,
            args.moving,
            args.out,
            moving_labels=args.moving_labels,
            fixed_labels=args.fixed_labels,
            **options,
        )
        shape = "x".join(map(str, report.grid_shape))
        spacing = "x".join(f"{s:g}" for s in report.grid_spacing)
        print(f"registered {args.moving} -> {args.fixed}")
        passes = f", {report.passes} network passes" if report.passes > 1 else ""
        print(f"  model grid {shape} at {spacing} mm on {report.device}{passes}")
        _print_pair(report)
        _note_dice_fell([report.metrics])
        print(f"  wrote {report.out_dir}: {', '.join(report.files)}")
        print(f"  runtime {report.runtime_s:.2f} s (network {report.timings['network']:.2f} s)")
        return EXIT_OK

    def progress(index: int, total: int, report: Any) -> None:
        print(f"[{index + 1}/{total}] {report.name} ({report.runtime_s:.2f} s)", end="")
        _print_pair(report, prefix=": ")

    t0 = time.perf_counter()
    reports = register_dataset(
        model, info, args.dataset, args.out, pairs=args.pairs, on_pair=progress, **options
    )
    scored = [r.metrics["dice_after"] for r in reports if r.metrics]
    if scored and all(v is not None for v in scored):
        print(f"mean Dice after over {len(scored)} pairs: {sum(scored) / len(scored):.3f}")
    _note_dice_fell([r.metrics for r in reports])
    print(f"wrote {Path(args.out).resolve()}: {len(reports)} pairs, disp_FFFF_MMMM.nii.gz files")
    print(f"runtime {time.perf_counter() - t0:.2f} s")
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from maxca.app import check_output_dir, evaluate_dataset, evaluate_files, write_evaluation
    from maxca.metrics import summarize

    single = any(v is not None for v in (args.fixed_labels, args.moving_labels, args.flow))
    if args.results is not None or args.dataset is not None:
        if single:
            raise _UsageError("give either --fixed-labels/--moving-labels/--flow or --results/"
                              "--dataset, not both")  # fmt: skip
        if args.results is None or args.dataset is None:
            raise _UsageError("--results and --dataset go together")
    elif None in (args.fixed_labels, args.moving_labels, args.flow):
        raise _UsageError("one pair needs --fixed-labels, --moving-labels and --flow")
    if (args.landmarks_fixed is None) != (args.landmarks_moving is None):
        raise _UsageError("--landmarks-fixed and --landmarks-moving go together")
    if args.landmarks_fixed is not None and args.results is not None:
        raise _UsageError("landmarks are only supported for one pair (--flow)")
    if args.out is not None:
        check_output_dir(args.out, args.overwrite)
    labels = None if args.labels is None else [v for group in args.labels for v in group]

    if args.results is None:
        landmarks = None
        if args.landmarks_fixed is not None:
            landmarks = (args.landmarks_fixed, args.landmarks_moving)
        results = [
            evaluate_files(
                args.fixed_labels,
                args.moving_labels,
                args.flow,
                labels=labels,
                landmarks=landmarks,
                l2r_compat=args.l2r_compat,
                strict_labels=True,
            )
        ]
    else:

        def progress(index: int, total: int, result: Any) -> None:
            print(f"[{index + 1}/{total}] {result.name}: Dice {result.dice_mean:.4f}")

        results = evaluate_dataset(
            args.results,
            args.dataset,
            pairs=args.pairs,
            labels=labels,
            l2r_compat=args.l2r_compat,
            on_pair=progress,
        )
    summary = summarize(results)
    unit = summary["hd95_unit"]
    m = summary["metrics"]
    print(f"{summary['n_pairs']} pair(s), {len(results[0].labels)} labels")
    print(f"  Dice     {m['dice_mean']['mean']:.4f} +- {m['dice_mean']['std']:.4f}")
    print(f"  HD95     {m['hd95_mean']['mean']:.4f} {unit}")
    print(f"  folded   {m['njd_percent']['mean']:.4f} % of voxels (det J <= 0)")
    print(f"  SDlogJ   {m['sdlogj']['mean']:.4f}")
    if m["tre_mean"]["n"]:
        print(f"  TRE      {m['tre_mean']['mean']:.4f} mm")
    if args.out is not None:
        out = write_evaluation(results, args.out, overwrite=args.overwrite)
        print(f"wrote {out}: pairs/*.csv, summary.json, summary.md")
    return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    from maxca.app import show_results

    path = show_results(args.results, args.out)
    print(f"wrote {path}")
    return EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:
    from maxca.training.trainer import main_train

    run_dir = main_train(args.config, list(args.overrides), overwrite=args.overwrite)
    # the trainer printed the run directory when it started and where its checkpoints are
    model = shlex.quote(str(run_dir))
    print(f"next: maxca register --model {model} --fixed F --moving M --out DIR")
    return EXIT_OK


def _cmd_example_data(args: argparse.Namespace) -> int:
    from maxca.app.demo import write_example_data

    t0 = time.perf_counter()
    dataset = write_example_data(args.out, args.subjects, args.seed, args.overwrite)
    meta = json.loads(dataset.read_text(encoding="utf-8"))
    shape = "x".join(str(s) for s in meta["tensorImageShape"]["0"])
    pairs = meta["registration_val"]
    print(
        f"wrote {dataset.parent}: {len(meta['training'])} training subjects + "
        f"{len(meta['validation'])} held out ({shape} voxels at 3 mm, 6 labels), "
        f"{len(pairs)} registration_val pairs ({time.perf_counter() - t0:.1f} s)"
    )
    print(f"  dataset: {dataset}")
    print(f"  a pair:  --fixed {dataset.parent / pairs[0]['fixed']} --moving "
          f"{dataset.parent / pairs[0]['moving']}")  # fmt: skip
    return EXIT_OK


def _cmd_config(args: argparse.Namespace) -> int:
    from maxca.training.config import format_config_reference

    print(format_config_reference())
    return EXIT_OK


def _cmd_models(args: argparse.Namespace) -> int:
    from maxca.layers import ATTENTION_KINDS
    from maxca.models import list_models
    from maxca.pretrained import list_pretrained

    print("packaged models (maxca register --model NAME):")
    for spec in list_pretrained():
        state = "" if spec.available else "  [weights missing: reinstall maxca]"
        print(f"  {spec.name:<8} {spec.description}{state}")
        print(f"  {'':<8} for: {spec.intended_use}; affine pre-alignment by default: "
              f"{'yes' if spec.affine else 'no'}")  # fmt: skip
    print(f"architectures (maxca.create_model): {', '.join(list_models())}")
    print(f"attention kinds (attention=...): {', '.join(ATTENTION_KINDS)}")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from maxca.app.demo import run_demo

    options = {
        key: getattr(args, key)
        for key in ("out", "subjects", "steps", "minutes", "device", "seed")
        if getattr(args, key) is not None
    }
    result = run_demo(**options)
    if result is not None:
        print(f"demo output: {result}")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# parser


class _UsageError(Exception):
    """A combination of options argparse cannot express; reported as a usage error (exit 2)."""


def _command(
    sub: Any, name: str, func: Callable[[argparse.Namespace], int], **kwargs: Any
) -> argparse.ArgumentParser:
    """Add the subcommand ``name`` (``kwargs`` as for ``add_parser``) that runs ``func``."""
    command: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
    command.set_defaults(func=func)
    return command


def build_parser() -> argparse.ArgumentParser:
    """The ``maxca`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="maxca",
        description="Deformable medical image registration with MAXCA (see docs/cli.md).",
    )
    parser.add_argument("--version", action="version", version=f"maxca {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of unexpected errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    reg = _command(
        sub,
        "register",
        _cmd_register,
        help="register a pair (or a Learn2Reg pair list) with a trained model",
        description="Register moving to fixed; writes warped image/labels, voxel flow, ITK field.",
    )
    reg.add_argument(
        "--model",
        required=True,
        help="run directory, checkpoint dir, .safetensors, or a packaged model (`maxca models`)",
    )
    reg.add_argument("--fixed", help="fixed image (NIfTI, .mha, .nrrd)")
    reg.add_argument("--moving", help="moving image")
    reg.add_argument("--moving-labels", help="moving label map (grid of the moving image)")
    reg.add_argument("--fixed-labels", help="fixed label map: adds metrics.json (Dice, NJD)")
    reg.add_argument("--dataset", help="Learn2Reg dataset.json: register a whole pair list")
    reg.add_argument(
        "--pairs",
        default="registration_val",
        choices=("registration_val", "registration_test"),
        help="pair list of --dataset (default registration_val)",
    )
    reg.add_argument("--out", required=True, help="results directory (must be new or empty)")
    reg.add_argument(
        "--device",
        default="auto",
        type=_device,
        metavar="{auto,cpu,cuda,cuda:N}",
        help="where the network runs (default auto: CUDA when available)",
    )
    reg.add_argument(
        "--diffeomorphic",
        action="store_true",
        help="integrate a non-diffeomorphic model's output as a velocity field",
    )
    reg.add_argument(
        "--refine",
        type=_non_negative_int,
        default=0,
        metavar="STEPS",
        help="instance optimisation steps on the model grid (default 0)",
    )
    reg.add_argument(
        "--refine-similarity",
        choices=SIMILARITIES,
        default=None,
        help="what --refine optimises (default: the model's own, NCC for the packaged models); "
        "mind (MIND-SSC) for a pair of two different contrasts",
    )
    reg.add_argument(
        "--passes",
        type=_positive_int,
        default=None,
        metavar="N",
        help="run the network N times, each pass on the moving image warped by the passes "
        "before, and compose the flows (cascaded inference; default 1, or with --refine the "
        "model's own: 2 for brain)",
    )
    reg.add_argument(
        "--affine",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="affine pre-alignment of moving to fixed (SimpleITK, any contrast) before the "
        "network; writes affine.mat and the deformable field too (default: on for packaged "
        "models that ask for it, e.g. brain; off otherwise)",
    )
    reg.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: run the network under bfloat16 autocast (faster on CPUs with AVX512-BF16 "
        "or AMX and on recent GPUs; Dice within 0.002 of fp32 on the brain validation pairs, "
        "docs/benchmarks.md 2c); the flow, resampling and outputs stay float32 (default fp32)",
    )
    reg.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network first (Inductor; on CPU it needs g++): same results, "
        "but the compilation takes minutes, so it pays off only over many pairs (--dataset); "
        "docs/benchmarks.md 2c",
    )
    reg.add_argument("--png", action="store_true", help="also write figure.png")
    reg.add_argument(
        "--outputs",
        metavar="LIST",
        help="comma-separated files to write: warped,labels,flow,itk (pair; default all "
        "four; itk includes affine.mat and disp_deformable_itk.nii.gz with --affine) and l2r "
        "(dataset: disp_FFFF_MMMM.nii.gz; default all five); registration.json is always "
        "written, metrics.json with fixed and moving labels",
    )
    reg.add_argument(
        "--compress",
        action="store_true",
        help="zlib-compress the displacement fields (smaller files, a few seconds slower at "
        "1 mm; default: stored uncompressed inside .nii.gz)",
    )
    reg.add_argument(
        "--max-memory",
        type=_memory_gb,
        metavar="GB",
        help="memory budget: refuse a registration estimated to need more (default: the "
        "memory available now)",
    )
    reg.add_argument(
        "--quiet", action="store_true", help="no progress bar for --refine (stderr, terminals)"
    )
    reg.add_argument("--overwrite", action="store_true", help="replace results in --out")

    ev = _command(
        sub,
        "evaluate",
        _cmd_evaluate,
        help="score a flow, or a folder of Learn2Reg disp_FFFF_MMMM files",
        description="Dice, HD95, folding, SDlogJ (and TRE) of registrations given as flows.",
    )
    ev.add_argument("--fixed-labels", help="fixed label map")
    ev.add_argument("--moving-labels", help="moving label map")
    ev.add_argument("--flow", help="flow_voxel.nii.gz or a Learn2Reg disp_*.nii.gz file")
    ev.add_argument("--results", help="folder of disp_FFFF_MMMM.nii.gz files")
    ev.add_argument("--dataset", help="Learn2Reg dataset.json (with --results)")
    ev.add_argument(
        "--pairs", default="registration_val", choices=("registration_val", "registration_test")
    )
    ev.add_argument(
        "--labels",
        type=_label_list,
        nargs="+",
        help="label ids, e.g. 2,3,41 (default: dataset evaluation_labels, else all non-zero)",
    )
    ev.add_argument("--landmarks-fixed", help="CSV of fixed landmarks (voxel coordinates)")
    ev.add_argument("--landmarks-moving", help="CSV of moving landmarks (voxel coordinates)")
    ev.add_argument("--l2r-compat", action="store_true", help="Learn2Reg script definitions")
    ev.add_argument("--out", help="write pairs/*.csv, summary.json and summary.md here")
    ev.add_argument("--overwrite", action="store_true", help="replace results in --out")

    show = _command(
        sub,
        "show",
        _cmd_show,
        help="draw the overview figure of a register results folder",
        description="Draw figure.png for a folder written by 'maxca register'.",
    )
    show.add_argument("results", help="results folder of one pair")
    show.add_argument("--out", help="PNG file (default RESULTS/figure.png)")

    from maxca.training.config import format_config_reference

    train = _command(
        sub,
        "train",
        _cmd_train,
        help="train a model from a YAML config",
        description="Train from CONFIG; key=value pairs override config entries.",
        epilog="config keys:\n" + format_config_reference(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", help="YAML experiment config")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="train into an existing folder that is not a maxca run (replaces its "
        "config.yaml and metrics.csv)",
    )

    example = _command(
        sub,
        "example-data",
        _cmd_example_data,
        help="write a small Learn2Reg dataset to try the commands on",
        description="Write a small Learn2Reg dataset (dataset.json, imagesTr, labelsTr, "
        "registration_val pairs) made offline from the MNI152 template in nilearn's wheel: "
        "every command-line example of the README runs on it.",
    )
    example.add_argument("out", metavar="DIR", help="dataset folder (new or empty)")
    example.add_argument(
        "--subjects", type=_positive_int, default=10, help="number of subjects (>= 6, default 10)"
    )
    example.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    example.add_argument("--overwrite", action="store_true", help="replace an earlier dataset")

    config = _command(
        sub,
        "config",
        _cmd_config,
        help="list every training config key with its default and meaning",
        description="Print the training config reference (every key, default, meaning).",
    )
    config.add_argument("--show", action="store_true", help="print the table (the default)")

    _command(
        sub,
        "models",
        _cmd_models,
        help="list the packaged trained models, architectures and attention kinds",
        description="Packaged models work offline: maxca register --model brain ...",
    )

    demo = _command(
        sub,
        "demo",
        _cmd_demo,
        help="train and evaluate a small model on the bundled data",
        description="A short end-to-end demo (training, registration, figures).",
    )
    demo.add_argument("--out", help="output directory")
    demo.add_argument("--subjects", type=_positive_int, help="number of training subjects")
    demo.add_argument("--steps", type=_positive_int, help="training steps")
    demo.add_argument("--minutes", type=_positive_float, help="time budget in minutes")
    demo.add_argument("--device", type=_device, metavar="{auto,cpu,cuda,cuda:N}")
    demo.add_argument("--seed", type=int, help="random seed")
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _run(argv: Sequence[str] | None, parser: argparse.ArgumentParser) -> int:
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    handle_signals = args.command in ("register", "evaluate", "show")
    try:
        with (
            _terminate_like_interrupt() if handle_signals else contextlib.nullcontext(),
            warnings.catch_warnings(),
        ):
            warnings.showwarning = _show_warning
            return func(args)
    except (_UsageError, MaxcaInputError, OSError) as exc:
        print(f"maxca: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except _Terminated as exc:
        name = signal.Signals(exc.signum).name
        print(f"maxca: interrupted by {name}; temporary files removed", file=sys.stderr)
        return 128 + exc.signum
    except TrainingDivergedError as exc:
        print(f"maxca: training diverged: {_one_line(exc)}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        print("maxca: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        print(
            f"maxca: internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``maxca`` command line.

    Args:
        argv: arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        0 on success. Any other outcome raises ``SystemExit`` with the exit code (2 for usage
        errors and bad input, 1 for unexpected failures, 3 when training diverged, 130 when
        interrupted), as argparse does.
    """
    tune_cpu_allocator()  # reuse freed activation memory (see maxca.runtime)
    code = _run(argv, build_parser())
    if code != EXIT_OK:
        raise SystemExit(code)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
