"""How do we compare with no deformable registration, ANTs SyN and our trained models? (not a test)

On the validation pairs of the ablation (same settings, same slice cache for ``--setting 2d``)
every method produces a voxel flow on the fixed grid, and the same metric code scores it
(``_common.score_flow``: moving labels warped with nearest neighbour through both affines,
Dice over the labelled structures, HD95 in mm, % of voxels with ``det J <= 0`` and SDlogJ from
``numpy.gradient`` Jacobians; ``docs/metrics.md``):

* ``affine only``: the identity flow (the data are affinely pre-aligned);
* ``ANTs <preset>`` (when ANTsPy is installed: ``pip install maxca[ants]``): ``ants.registration``
  on the image files with the named settings of ``_common.ANTS_PRESETS`` (``SyN`` = ANTsPy's
  defaults, ``SyN-CC`` = CC metric and 100x70x50 SyN iterations); its forward transforms
  (affine + SyN warp) are composed into one ITK displacement field on the fixed grid and
  converted to our voxel flow (``u = M^-1 D``, ``M`` the field grid's direction x spacing in
  ITK's LPS frame). Runtime = ``ants.registration`` alone. Cross-checks in the pairs CSV:
  ``dice_ants_labels`` (labels warped by ANTs itself, ``genericLabel``) and ``njd_ants``
  (ANTs' own Jacobian determinant of the composed field);
* ``--model [LABEL=]RUN_DIR`` (repeatable): a trained model (checkpoint ``--which``, default
  ``last``) through :func:`maxca.inference.register_pair`, and with ``--refine STEPS`` also
  with that many steps of instance optimisation (``refine_flow``). Runtime = ``register_pair``
  wall time per pair after one warm-up registration.

Outputs in ``--out`` (default ``benchmarks/results/baselines_<setting>/``): ``baselines.csv``
(one row per method: mean/std over pairs), ``baselines_pairs.csv``, ``baselines.md`` and
``baselines.png`` (Dice box plot; Dice vs runtime). Methods already in ``baselines.csv`` are
skipped unless ``--force``; the table, Markdown and figure show the methods of this call, or
with ``--all`` every method of the setting in the CSV (``--no-ants --all`` only re-reports).

Usage::

    python benchmarks/baselines.py --setting 3d --ants SyN,SyN-CC \
        --model maxca=benchmarks/results/ablation_3d/runs/pyramid-maxca-s0 --refine 50
    python benchmarks/baselines.py --setting 2d --no-ants --model runs/my2d --refine 20
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    ANTS_PRESETS,
    BRAIN_1MM,
    BRAIN_2MM,
    PLANES,
    RESULTS,
    ants_register,
    atomic_write_text,
    build_slice_dataset,
    display_path,
    evaluate_model,
    evaluation_labels,
    identity_flow,
    import_ants,
    load_pairs,
    markdown_table,
    nan_mean_std,
    pair_row,
    parse_model,
    pm,
    read_csv,
    resolve_device,
    run_logged,
    score_flow,
    set_threads,
    summary_over_pairs,
    text_table,
    validation_pairs,
    write_csv,
)

COLUMNS = [
    "setting",
    "method",
    "kind",
    "n_pairs",
    "dice_mean",
    "dice_std",
    "hd95_mean",
    "hd95_std",
    "njd_percent_mean",
    "njd_percent_std",
    "sdlogj_mean",
    "sdlogj_std",
    "seconds_mean",
    "seconds_std",
    "params",
    "device",
    "threads",
    "details",
]
PAIR_COLUMNS = [
    "setting",
    "method",
    "pair",
    "dice",
    "hd95",
    "njd_percent",
    "sdlogj",
    "seconds",
    "network_s",
    "dice_ants_labels",
    "njd_ants",
]
IDENTITY = "affine only"


# ---------------------------------------------------------------------------------------------
# methods: each returns per-pair rows (dicts with the PAIR_COLUMNS metrics)
# ---------------------------------------------------------------------------------------------
def identity_method(pairs: list[Any], labels: list[int] | None) -> list[dict[str, Any]]:
    """The zero flow: affine pre-alignment only (0 s)."""
    return [pair_row(score_flow(p, identity_flow(p), labels), 0.0) for p in pairs]


def ants_method(
    ants: Any, preset: str, pairs: list[Any], labels: list[int] | None, seed: int, workdir: Path
) -> list[dict[str, Any]]:
    """ANTs with the named preset on every pair (files under ``workdir``, removed after)."""
    from maxca.metrics import dice

    rows = []
    for p in pairs:
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            out = ants_register(
                ants,
                p.pair.fixed,
                p.pair.moving,
                tmp,
                ANTS_PRESETS[preset],
                moving_label=p.pair.moving_label,
                seed=seed,
                jacobian=True,
            )
        row = pair_row(score_flow(p, out.flow, labels), out.seconds)
        if out.warped_labels is not None:
            scores = dice(p.fixed_label.array, out.warped_labels, labels)
            row["dice_ants_labels"] = nan_mean_std(scores.values())[0]
        if out.jacobian is not None:
            row["njd_ants"] = 100.0 * float(np.mean(out.jacobian <= 0))
        rows.append(row)
        print(f"    {p.name}: Dice {row['dice']:.4f} ({out.seconds:.1f} s)", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------
def method_row(
    setting: str, method: str, kind: str, rows: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """The summary row of one method (mean/std over pairs, ``ddof = 0``)."""
    stats = summary_over_pairs(rows)
    out = {"setting": setting, "method": method, "kind": kind, "n_pairs": len(rows)}
    for key in ("dice", "hd95", "njd_percent", "sdlogj", "seconds"):
        out[f"{key}_mean"] = stats[f"{key}_mean"]
        out[f"{key}_std"] = stats[f"{key}_std"]
    out.update(extra)
    return out


HEADERS = ["method", "Dice", "HD95 (mm)", "det J ≤ 0 (%)", "SDlogJ", "s / pair", "params"]


def table_rows(rows: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """Summary table rows: mean ± std over pairs."""
    return [
        [
            r["method"],
            pm(float(r["dice_mean"]), float(r["dice_std"])),
            pm(float(r["hd95_mean"]), float(r["hd95_std"]), 2),
            f"{float(r['njd_percent_mean']):.3f}",
            f"{float(r['sdlogj_mean']):.3f}",
            f"{float(r['seconds_mean']):.3g}",
            "-"
            if r.get("params") in (None, "") or math.isnan(float(r["params"]))
            else f"{int(float(r['params'])):,}",
        ]
        for r in rows
    ]


def plot(
    path: Path, rows: list[dict[str, Any]], pair_rows: list[dict[str, Any]], title: str
) -> None:
    """Dice box plot per method and mean Dice vs runtime per pair (log time axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [r["method"] for r in rows]
    data = [[float(p["dice"]) for p in pair_rows if p["method"] == m] for m in methods]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(max(10, 1.1 * len(methods) + 6), 4.6))
    if methods:
        ax0.boxplot(data, showmeans=True)
        ax0.set_xticks(range(1, len(methods) + 1), methods, rotation=20, fontsize=7)
    ax0.set_ylabel("Dice per pair (mean over structures)")
    ax0.set_title(title)
    for i, r in enumerate(rows):
        t = max(float(r["seconds_mean"]), 1e-3)  # the identity takes no time
        ax1.errorbar(
            t,
            float(r["dice_mean"]),
            yerr=float(r["dice_std"]),
            marker="o",
            color=f"C{i % 10}",
            capsize=3,
            ls="none",
            label=r["method"],
        )
    ax1.set_xscale("log")
    ax1.set_xlabel("runtime per pair (s, log)")
    ax1.set_ylabel("Dice (mean ± std over pairs)")
    ax1.set_title("accuracy vs runtime")
    ax1.grid(alpha=0.3, which="both")
    if rows:
        ax1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_markdown(
    path: Path, args: argparse.Namespace, dataset: Path, rows: list[dict[str, Any]], n: int
) -> None:
    """``baselines.md``: what was run and the summary table."""
    lines = [
        f"# Baselines, {args.setting.upper()} setting",
        "",
        f"Data: `{display_path(dataset)}`, {n} validation pairs; "
        f"device {resolve_device(args.device)}, "
        f"threads {args.threads or 'default'}; {datetime.now():%Y-%m-%d %H:%M}.",
        "",
        "Every method gives a voxel flow on the fixed grid scored by the same code (moving labels "
        "warped with nearest neighbour; Dice mean over structures; HD95 in mm; det J from "
        "central differences). ± = std over pairs. Runtime: ANTs = `ants.registration` per pair; "
        "models = `register_pair` wall time per pair (after one warm-up), including instance "
        "optimisation where listed.",
        "",
        markdown_table(HEADERS, table_rows(rows)),
    ]
    for r in rows:
        if r.get("details"):
            lines.append(f"- {r['method']}: {r['details']}")
    atomic_write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--setting", choices=("2d", "3d"), default="3d")
    p.add_argument("--data", type=Path, default=None, help="dataset.json (3d) / 3-D source (2d)")
    p.add_argument("--plane", choices=tuple(PLANES), default="axial", help="2d: slice plane")
    p.add_argument("--slices", type=int, default=5, help="2d: slices per subject")
    p.add_argument("--slice-step", type=int, default=3, help="2d: voxels between slices")
    p.add_argument(
        "--cache", type=Path, default=None, help="2d: slice dataset (default: the ablation's)"
    )
    p.add_argument(
        "--ants",
        default="SyN,SyN-CC",
        help=f"ANTs presets, comma-separated, from {list(ANTS_PRESETS)}",
    )
    p.add_argument("--no-ants", action="store_true", help="skip ANTs even when installed")
    p.add_argument(
        "--model", action="append", default=[], help="[LABEL=]RUN_DIR of a trained model"
    )
    p.add_argument("--which", choices=("last", "best"), default="last", help="checkpoint")
    p.add_argument("--refine", type=int, default=0, help="instance-optimisation steps (0: none)")
    p.add_argument("--seed", type=int, default=0, help="ANTs random seed")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (our models)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch and ITK)")
    p.add_argument("--out", type=Path, default=None, help="default results/baselines_<setting>")
    p.add_argument("--force", action="store_true", help="recompute methods already in the CSV")
    p.add_argument(
        "--all",
        action="store_true",
        help="report every method of this setting in the CSV, not only the requested ones",
    )
    p.add_argument("--no-plot", action="store_true")
    return p


def prepare_dataset(args: argparse.Namespace) -> Path:
    """The dataset whose validation pairs are scored (the ablation's slices for 2d)."""
    if args.setting == "3d":
        dataset = Path(args.data or BRAIN_2MM)
        if not dataset.exists():
            raise FileNotFoundError(f"dataset not found: {dataset}")
        return dataset.resolve()
    source = Path(args.data or BRAIN_1MM)
    if not source.exists():
        raise FileNotFoundError(f"3-D source dataset not found: {source}")
    cache = args.cache or RESULTS / "ablation_2d" / "data"
    return build_slice_dataset(source, cache, args.plane, args.slices, args.slice_step)


def main(argv: Sequence[str] | None = None) -> int:
    """Score every requested method; returns 1 when one failed, else 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    presets = [] if args.no_ants else [s.strip() for s in args.ants.split(",") if s.strip()]
    bad = [s for s in presets if s not in ANTS_PRESETS]
    if bad:
        parser.error(f"unknown ANTs preset(s) {bad}; expected some of {list(ANTS_PRESETS)}")
    if args.refine < 0:
        parser.error("--refine must be >= 0")
    models = [parse_model(m) for m in args.model]
    labels_seen = [label for label, _ in models]
    if len(set(labels_seen)) != len(labels_seen):
        parser.error(f"model labels must be distinct, got {labels_seen} (use LABEL=RUN_DIR)")
    args.out = (args.out or RESULTS / f"baselines_{args.setting}").resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    set_threads(args.threads)
    device = resolve_device(args.device)

    try:
        dataset = prepare_dataset(args)
        labels = evaluation_labels(dataset)
        pairs = load_pairs(validation_pairs(dataset))
    except (OSError, ValueError) as exc:  # MaxcaInputError is a ValueError
        parser.error(str(exc))
    print(f"data: {dataset} ({len(pairs)} validation pairs, {len(labels or [])} labels)")

    csv_path, pairs_path = args.out / "baselines.csv", args.out / "baselines_pairs.csv"
    old_rows, old_pairs = read_csv(csv_path), read_csv(pairs_path)
    others = [r for r in old_rows if r.get("setting") != args.setting]  # kept as they are
    other_pairs = [r for r in old_pairs if r.get("setting") != args.setting]
    rows = {r["method"]: r for r in old_rows if r.get("setting") == args.setting}
    pair_rows = [r for r in old_pairs if r.get("setting") == args.setting]
    requested: list[str] = []
    failed: list[str] = []

    def record(method: str, kind: str, prows: list[dict[str, Any]], **extra: Any) -> None:
        nonlocal pair_rows
        rows[method] = method_row(args.setting, method, kind, prows, **extra)
        pair_rows = [r for r in pair_rows if r["method"] != method]
        pair_rows += [{"setting": args.setting, "method": method, **r} for r in prows]
        write_csv(csv_path, others + list(rows.values()), COLUMNS)
        write_csv(pairs_path, other_pairs + pair_rows, PAIR_COLUMNS)
        m = rows[method]
        print(
            f"  {method}: Dice {m['dice_mean']:.4f} ± {m['dice_std']:.4f}, "
            f"HD95 {m['hd95_mean']:.2f} mm, folding {m['njd_percent_mean']:.3f} %, "
            f"{m['seconds_mean']:.3g} s/pair",
            flush=True,
        )

    def todo(method: str) -> bool:
        requested.append(method)
        if method in rows and not args.force:
            print(f"{method}: in {csv_path.name} already, skipped (--force recomputes)")
            return False
        print(f"{method} ...", flush=True)
        return True

    # (a) affine only
    requested.append(IDENTITY)
    print(f"{IDENTITY} ...")
    record(IDENTITY, "identity", identity_method(pairs, labels), details="zero flow")

    # (b) ANTs
    if presets:
        ants = import_ants(args.threads)
        work = args.out / "ants_tmp"
        if ants is None:
            print("ANTs: ANTsPy is not installed (pip install 'maxca[ants]'): ANTs rows skipped")
        else:
            work.mkdir(parents=True, exist_ok=True)
            for preset in presets:
                method = f"ANTs {preset}"
                if not todo(method):
                    continue
                prows, _ = run_logged(
                    lambda p=preset: ants_method(ants, p, pairs, labels, args.seed, work), method
                )
                if prows is None:
                    failed.append(method)
                    continue
                cross = nan_mean_std(r.get("dice_ants_labels", math.nan) for r in prows)[0]
                details = (
                    f"ants.registration({ANTS_PRESETS[preset]}), ANTsPy "
                    f"{getattr(ants, '__version__', '?')}; Dice with labels warped by ANTs "
                    f"(genericLabel): {cross:.4f}"
                )
                record(method, "ants", prows, details=details, threads=args.threads or "")
            shutil.rmtree(work, ignore_errors=True)

    # (c) our models, with and without instance optimisation
    from maxca.models import count_parameters
    from maxca.training import load_checkpoint

    for label, path in models:
        variants = [(label, 0)]
        if args.refine:
            variants.append((f"{label} + IO {args.refine}", args.refine))
        pending = [(method, steps) for method, steps in variants if todo(method)]
        if not pending:
            continue
        loaded, _ = run_logged(
            lambda path=path: load_checkpoint(path, which=args.which, map_location=device), label
        )
        if loaded is None:
            failed.extend(method for method, _ in pending)
            continue
        model, info = loaded
        model.eval()
        for method, steps in pending:
            prows, _ = run_logged(
                lambda steps=steps, model=model, info=info: evaluate_model(
                    model, info, pairs, labels, device, refine_steps=steps
                ),
                method,
            )
            if prows is None:
                failed.append(method)
                continue
            name, attention = model.config_dict()["name"], model.config.attention
            details = f"{display_path(info.path)} ({name}, {attention})"
            if steps:
                details += f", {steps} refine steps"
            record(
                method,
                "model",
                prows,
                params=count_parameters(model),
                device=device,
                threads=args.threads or "",
                details=details,
            )

    chosen = list(rows.values()) if args.all else [rows[m] for m in requested if m in rows]
    chosen_pairs = [r for r in pair_rows if r["method"] in {m["method"] for m in chosen}]
    write_markdown(args.out / "baselines.md", args, dataset, chosen, len(pairs))
    if not args.no_plot:
        title = f"{args.setting.upper()}: Dice per pair ({len(pairs)} pairs)"
        plot(args.out / "baselines.png", chosen, chosen_pairs, title)
    print()
    print(text_table(HEADERS, table_rows(chosen)))
    print(
        f"\nwrote {csv_path}, {pairs_path.name}, baselines.md"
        + ("" if args.no_plot else ", baselines.png")
    )
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    from maxca.runtime import tune_cpu_allocator

    tune_cpu_allocator()  # as the maxca entry points do (training and registration)
    sys.exit(main())
