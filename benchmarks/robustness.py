"""Robustness of registration to corrupted images on a Learn2Reg dataset (not a test).

A thin command line over :func:`maxca.app.robustness.run_robustness`: the labelled pairs of
``--pairs`` (default ``registration_val``) of ``--dataset`` (default the shared
brain-synth-2mm data) are corrupted, moving and fixed image in turn, by every ``--corruptions``
entry (default all of :data:`maxca.data.corruptions.CORRUPTIONS`) at every ``--severities``
level, and registered by:

* ``affine only`` (always): the zero flow, the dataset's affine pre-alignment;
* each ``--model [LABEL=]RUN_DIR`` (checkpoint ``--which``), and with ``--refine N`` the same
  model again with ``N`` steps of instance optimisation (of the model's own similarity, or of
  ``--refine-similarity``: e.g. ``mind`` for pairs of two contrasts);
* with ``--ants``, ANTs SyN with ANTsPy's defaults (``_common.ants_register``, preset ``SyN``;
  the corrupted volumes are written to temporary NIfTI files) when ANTsPy is installed, else a
  note and no ANTs rows.

Scores (Dice mean over the dataset's evaluation labels, HD95 in mm, % voxels with det J <= 0,
SDlogJ) are against the clean label maps. Writes ``robustness.csv``, ``robustness.md`` and
``robustness_<corruption>.png`` into ``--out`` (default ``benchmarks/results/robustness``),
prints the Markdown report, the seconds per registration per method and the total runtime, and
extrapolates the runtime of the full run (every corruption, severities 0-4, both sides, every
pair of the split).

Usage::

    python benchmarks/robustness.py --model brain=../main/runs/brain-pretrained --refine 20 \\
        --threads 2
    python benchmarks/robustness.py --model RUN --max-pairs 1 \\
        --corruptions gaussian_noise,thick_slices,extreme_anatomy --out /tmp/rob
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    ANTS_PRESETS,
    BRAIN_2MM,
    REPO,
    RESULTS,
    SHARED_DATA,
    ants_register,
    evaluation_labels,
    import_ants,
    load_pairs,
    parse_ints,
    parse_model,
    parse_names,
    set_threads,
    validation_pairs,
)
from maxca._checks import SIMILARITIES
from maxca.app.robustness import (
    SIDES,
    Method,
    RobustnessPair,
    affine_method,
    load_checkpoint,
    markdown_report,
    model_method,
    read_csv,
    refined_name,
    run_robustness,
    write_outputs,
)
from maxca.data.corruptions import CORRUPTIONS

OUT = RESULTS / "robustness"


#: the columns that name one registration of a robustness CSV (the rest are its results)
REGISTRATION_KEY = ("pair", "method", "corruption", "side", "severity", "seed")


def rel(path: str | os.PathLike[str]) -> str:
    """A path for the record: relative to the shared data root (``data:...``) or the repo."""
    p = Path(path).resolve()
    for root, prefix in ((SHARED_DATA.resolve(), "data:"), (REPO.resolve(), "")):
        try:
            return prefix + str(p.relative_to(root))
        except ValueError:
            pass
    return os.path.relpath(p, REPO)


def record_arg(arg: str) -> str:
    """A command-line argument for the record: paths (also in ``LABEL=PATH``) made relative."""
    label, sep, path = arg.rpartition("=")
    if "/" in path and os.path.exists(path):
        return f"{label}{sep}{rel(path)}"
    return arg


def ants_method(ants: Any, preset: str = "SyN", seed: int = 0) -> Method:
    """ANTs with a preset of ``_common.ANTS_PRESETS`` on in-memory volumes (temporary files)."""
    from maxca.data import write_volume

    def register(fixed: Any, moving: Any) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="maxca-rob-ants-") as tmp:
            f_path = write_volume(Path(tmp) / "fixed.nii.gz", fixed.array, fixed.affine)
            m_path = write_volume(Path(tmp) / "moving.nii.gz", moving.array, moving.affine)
            out = ants_register(
                ants, f_path, m_path, Path(tmp) / "work", ANTS_PRESETS[preset], seed=seed
            )
        return out.flow

    return Method(f"ANTs {preset}", register, "ants")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", type=Path, default=BRAIN_2MM, help="Learn2Reg dataset.json")
    p.add_argument("--pairs", default="registration_val", help="pair list of the dataset")
    p.add_argument("--skip-pairs", type=int, default=0, help="leave out the first N pairs")
    p.add_argument("--max-pairs", type=int, default=None, help="only the first N pairs left")
    p.add_argument("--model", action="append", default=[], help="[LABEL=]RUN_DIR (repeatable)")
    p.add_argument("--which", choices=("last", "best"), default="last", help="checkpoint")
    p.add_argument("--refine", type=int, default=0, help="also each model with N refine steps")
    p.add_argument(
        "--refine-similarity",
        choices=SIMILARITIES,
        default=None,
        help="what --refine optimises (default: the model's own similarity)",
    )
    p.add_argument(
        "--passes",
        type=int,
        default=None,
        help="network passes of every model (as maxca register --passes; default: the model's)",
    )
    p.add_argument("--ants", action="store_true", help="ANTs SyN (defaults) when installed")
    p.add_argument(
        "--corruptions",
        default=",".join(CORRUPTIONS),
        help=f"comma-separated, from {list(CORRUPTIONS)}",
    )
    p.add_argument("--severities", default="0,1,2,3,4", help="comma-separated, 0 = clean")
    p.add_argument("--seeds", default="0", help="corruption seeds, comma-separated")
    p.add_argument("--sides", default="moving,fixed", help="images to corrupt")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (our models)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch and ITK)")
    p.add_argument("--out", type=Path, default=OUT, help="output folder")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no per-registration log lines")
    p.add_argument(
        "--report",
        type=Path,
        nargs="+",
        metavar="CSV",
        help="register nothing: build robustness.md and the figures in --out from these "
        "robustness.csv files (rows concatenated, e.g. runs of other pairs or methods; a "
        "registration found in several files is taken from the first)",
    )
    return p


def report_only(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """``--report``: the Markdown report and figures from existing CSV files."""
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, ...]] = set()
    dropped: dict[str, int] = {}
    for path in args.report:
        if not path.is_file():
            raise SystemExit(f"robustness.py: error: no such CSV: {path}")
        for row in read_csv(path):
            key = tuple(str(row.get(k)) for k in REGISTRATION_KEY)
            if key in seen:
                dropped[rel(path)] = dropped.get(rel(path), 0) + 1
                continue
            seen.add(key)
            rows.append(row)
    if not rows:
        raise SystemExit("robustness.py: error: the CSV files hold no rows")
    command = "python benchmarks/robustness.py " + " ".join(
        record_arg(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    meta = {
        "command": f"`{command}`",
        "built from": ", ".join(f"`{rel(p)}`" for p in args.report),
        **(
            {
                "left out (registrations of an earlier file)": ", ".join(
                    f"{n} rows of `{p}`" for p, n in dropped.items()
                )
            }
            if dropped
            else {}
        ),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    write_outputs(args.out, rows, plot=not args.no_plot, meta=meta)
    print(markdown_report(rows, meta))
    print(f"wrote {rel(args.out)}/robustness.csv, robustness.md and figures")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.report:
        return report_only(args, argv)
    try:
        corruptions = parse_names(args.corruptions, list(CORRUPTIONS), "corruptions")
        severities = parse_ints(args.severities, "severities")
        seeds = parse_ints(args.seeds, "seeds")
        sides = parse_names(args.sides, list(SIDES), "sides")
    except ValueError as exc:
        parser.error(str(exc))
    top = min(CORRUPTIONS[c].max_severity for c in corruptions)
    if max(severities) > top:
        parser.error(f"severities must be in 0..{top}, got {args.severities!r}")
    if args.refine < 0:
        parser.error("--refine must be >= 0")
    if args.refine_similarity is not None and not args.refine:
        parser.error("--refine-similarity needs --refine N")
    if args.max_pairs is not None and args.max_pairs < 1:
        parser.error("--max-pairs must be >= 1")
    if args.skip_pairs < 0:
        parser.error("--skip-pairs must be >= 0")
    models = [parse_model(m) for m in args.model]
    names = [n for n, _ in models]
    if len(set(names)) != len(names):
        parser.error(f"model labels must be distinct, got {names} (use LABEL=RUN_DIR)")
    set_threads(args.threads)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stdout,
    )

    t_start = time.perf_counter()
    try:
        eval_pairs = validation_pairs(args.dataset, args.pairs)[args.skip_pairs :]
        if not eval_pairs:
            parser.error(f"--skip-pairs {args.skip_pairs} leaves no pair of {args.pairs}")
        if args.max_pairs is not None:
            eval_pairs = eval_pairs[: args.max_pairs]
        labels = evaluation_labels(args.dataset)
        loaded = load_pairs(eval_pairs)
        pairs = [
            RobustnessPair(p.name, p.fixed, p.moving, p.fixed_label, p.moving_label) for p in loaded
        ]
        methods: list[Method] = [affine_method()]
        for label, path in models:
            plain = model_method(
                path, name=label, which=args.which, device=args.device, passes=args.passes
            )
            methods.append(plain)
            if args.refine:
                model, info = load_checkpoint(path, which=args.which)
                methods.append(
                    model_method(
                        path,
                        name=refined_name(label, args.refine, args.refine_similarity),
                        refine_steps=args.refine,
                        refine_similarity=args.refine_similarity,
                        device=args.device,
                        model=model,
                        info=info,
                        passes=args.passes,
                    )
                )
    except (OSError, ValueError) as exc:  # MaxcaInputError is a ValueError
        parser.error(str(exc))
    notes = []
    if args.ants:
        ants = import_ants(args.threads)
        if ants is None:
            notes.append("ANTs: ANTsPy is not installed (pip install 'maxca[ants]'): no ANTs rows")
            print(notes[-1])
        else:
            methods.append(ants_method(ants, "SyN"))
    print(
        f"data: {rel(args.dataset)} ({len(pairs)} pairs of {args.pairs}), methods "
        f"{[m.name for m in methods]}, {len(corruptions)} corruptions x severities {severities} "
        f"x sides {sides} x seeds {seeds}",
        flush=True,
    )
    t_run, cpu_run = time.perf_counter(), time.process_time()
    rows = run_robustness(
        pairs,
        methods,
        corruptions,
        severities,
        seeds=seeds,
        out_dir=args.out,
        labels=labels,
        sides=sides,
        plot=False,
        first_pair_index=args.skip_pairs,  # the same corrupted images as a run over all pairs
    )
    run_s = time.perf_counter() - t_run
    cpu_s = time.process_time() - cpu_run  # CPU seconds of this process, all its threads
    total_s = time.perf_counter() - t_start

    # seconds per registration per method (severity-0 rows repeat the clean registration)
    timing = {}
    for m in methods:
        secs = [r["seconds"] for r in rows if r["method"] == m.name and r["severity"] > 0]
        secs += [
            r["seconds"]
            for r in rows
            if r["method"] == m.name
            and r["severity"] == 0
            and r["corruption"] == corruptions[0]
            and r["side"] == sides[0]
            and r["seed"] == seeds[0]
        ]
        timing[m.name] = (float(np.mean(secs)), len(secs))
    n_reg = sum(n for _, n in timing.values())
    n_full_pairs = len(validation_pairs(args.dataset, args.pairs))
    per_pair_full = 1 + len(CORRUPTIONS) * len(SIDES) * 4  # clean + 11 x 2 x severities 1-4
    # proportional: this run's wall time per registration (all methods, corruption and scoring
    # included) times the registrations of the full run
    scale = per_pair_full * n_full_pairs * len(methods) / max(1, n_reg)
    full_s, full_cpu = run_s * scale, cpu_s * scale
    command = "python benchmarks/robustness.py " + " ".join(
        record_arg(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    meta = {
        "command": f"`{command}`",
        "data": f"`{rel(args.dataset)}`, pairs `{args.pairs}` ({len(pairs)} used)",
        "models": ", ".join(f"{n} = `{rel(p)}` ({args.which})" for n, p in models) or "none",
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, "
        f"threads {args.threads or 'default'}, device {args.device}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "runtime": f"{run_s:.0f} s wall, {cpu_s:.0f} s CPU (this process, all threads) for "
        f"{n_reg} registrations + corruption + scoring ({total_s:.0f} s wall in all); "
        f"load average at the end {os.getloadavg()[0]:.1f}",
        "mean seconds per registration (the method alone)": ", ".join(
            f"{k} {v[0]:.2f} s" for k, v in timing.items()
        ),
        "extrapolated full run (all corruptions, severities 0-4, both sides, "
        f"{n_full_pairs} pairs, these methods)": f"{full_s / 60:.1f} min wall at this load, "
        f"{full_cpu / 60:.1f} min of CPU time",
    }
    for note in notes:
        meta["note"] = note
    write_outputs(args.out, rows, plot=not args.no_plot, meta=meta)
    print()
    print(markdown_report(rows, meta))
    print(f"wrote {rel(args.out)}/robustness.csv, robustness.md and figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
