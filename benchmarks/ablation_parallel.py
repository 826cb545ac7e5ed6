"""Run the ablation's cells as parallel processes, then merge them into one report (not a test).

``benchmarks/ablation.py`` trains its cells (host x attention kind x seed) one after another in
one process. A converged ablation (issue #14: every cell at a flattened validation curve, >= 3
seeds) needs tens of core-hours on CPU; on a machine with many cores, or a GPU that one small
2-D network leaves mostly idle, the cells are independent and can run side by side. This script:

1. prepares the data once (the 2-D slice dataset is written into ``--cache`` before any cell
   starts, so the cells never race to build it);
2. runs ``--jobs`` cells at a time, each ``ablation.py`` for one (host, kind, seed) in its own
   folder ``OUT/cells/<host>-<kind>-s<seed>/`` with its own log (resumable: a finished cell,
   one whose ``ablation.csv`` has its row for the budget ``--steps``, is kept as it is; an
   interrupted one continues from its ``checkpoints/last``);
3. concatenates the cells' ``ablation.csv`` and ``ablation_pairs.csv`` into ``OUT`` (the
   affine-only rows once) and runs ``ablation.py --report`` there (tables, paired tests, figure);
4. draws ``ablation_curves.png``: the trainer's validation Dice against the step for every cell
   (mean over seeds per host and kind; needs ``--val-every``), to show whether the curves have
   flattened. The validation pairs are the ones the table reports: the curves are shown, never
   used to choose anything (the evaluated checkpoint is always the last one, at a fixed budget);
5. writes ``ablation_trends.csv`` / ``.md``: whether each curve still moves at the end of the
   budget, measured (:func:`curve_trends`): the slope of the validation Dice over the late steps
   (default the second half, ``--trend-from``) with its 95 % interval and p-value, per host and
   kind, and the same for each paired difference ``maxca - kind``: a difference with no
   detectable trend gives no sign that a longer budget would change that comparison, even
   while both curves still rise.

Every option after ``--`` is passed to each ``ablation.py`` call unchanged (e.g. ``--small
--lr 1e-3 --val-every 500``); ``--hosts``, ``--attentions``, ``--seeds``, ``--setting``,
``--out``, ``--cache``, ``--holdout``, ``--steps``, ``--device`` and ``--threads`` belong to this
script.
``--merge-only`` runs no cell: it merges and reports the finished cells of the grid (a grid
that grows across sessions can be reported at any time; missing cells are listed). The merged
report also takes every other finished cell of ``OUT/cells`` with the same setting and budget,
so two instances sharing one ``--out`` (one per core, each with its own ``--attentions``) leave
one report of all their cells, whichever finishes last.

``--holdout N`` (3-D) replaces the dataset's 4 ``registration_val`` pairs, too few for a paired
test over one seed (the smallest two-sided Wilcoxon p over 4 pairs is 0.125), with every
directed pair among its last N subjects, which are then left out of training
(:func:`ablation.holdout_dataset`, written to ``OUT/data/dataset.json``): N = 4 gives 12 pairs.

Usage (GPU machine, 16 cores; 45 cells of 7,500 steps each)::

    python benchmarks/ablation_parallel.py --setting 2d --hosts pyramid,corrmaxca,unet \\
        --attentions maxca,regional,dilated,window,none --seeds 0,1,2 --steps 7500 \\
        --device cuda --jobs 15 --threads 1 -- --small --val-every 500
    python benchmarks/ablation_parallel.py --setting 2d --steps 20 --seeds 0 --jobs 2 \\
        --hosts pyramid --attentions maxca,none -- --small          # CPU smoke run
    python benchmarks/ablation_parallel.py --setting 3d --holdout 4 --hosts pyramid \\
        --attentions maxca,regional,dilated,window,none --seeds 0 --steps 400 --jobs 3 \\
        --threads 1 --out benchmarks/results/ablation_3d_holdout -- --small --lr 1e-3 \\
        --val-every 100                                             # 2-core CPU, ~2 h

Stopping and restarting: a cell's trainer saves ``checkpoints/last`` when it receives SIGTERM,
so a killed grid resumes where it stopped. To start a grid afresh instead, wait until every
cell's process has exited before deleting its folder (a checkpoint written after a quick
``rm -rf`` is resumed by the next run). ``kill -STOP`` / ``kill -CONT`` on the cells' processes
pause and continue them without losing anything (e.g. to free the cores for a timing run).
Each 3-D ``--small`` cell holds about 4 GB of memory on the CPU.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import BRAIN_2MM, RESULTS  # noqa: E402
from ablation import ABLATION_HOSTS, ABLATION_KINDS, cell_name, parse_grid  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--setting", choices=("2d", "3d"), default="2d")
    p.add_argument("--hosts", default=",".join(ABLATION_HOSTS))
    p.add_argument("--attentions", default=",".join(ABLATION_KINDS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, required=True, help="training steps per cell")
    p.add_argument("--jobs", type=int, default=1, help="cells run at the same time")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (every cell)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per cell")
    p.add_argument("--data", type=Path, default=None, help="as ablation.py --data")
    p.add_argument("--cache", type=Path, default=None, help="2d: slice dataset (OUT/data)")
    p.add_argument(
        "--holdout",
        type=int,
        default=None,
        help="3d: train on all but the last N subjects and evaluate every directed pair among "
        "those N (OUT/data/dataset.json; ablation.holdout_dataset)",
    )
    p.add_argument("--out", type=Path, default=None, help="default results/ablation_<setting>_par")
    p.add_argument(
        "--merge-only",
        action="store_true",
        help="run no cell: merge and report the finished cells of the grid as they are",
    )
    p.add_argument(
        "--trend-from",
        type=int,
        default=None,
        help="first step of the late-slope table (ablation_trends.csv/.md; default: half of "
        "the last validated step)",
    )
    p.add_argument("extra", nargs=argparse.REMAINDER, help="-- then options for ablation.py")
    return p


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def merge_cells(out: Path, cells: Sequence[Path]) -> tuple[int, int]:
    """Concatenate the cells' CSVs into ``out``; the affine-only (identity) pair rows once.

    Returns ``(cell rows, pair rows)`` written."""
    rows: list[dict[str, str]] = []
    pair_rows: list[dict[str, str]] = []
    identity_seen: set[tuple[str, str]] = set()
    for cell in cells:
        rows += _read(cell / "ablation.csv")
        for r in _read(cell / "ablation_pairs.csv"):
            if r.get("attention") == "identity":
                key = (r.get("setting", ""), r.get("pair", ""))
                if key in identity_seen:
                    continue
                identity_seen.add(key)
            pair_rows.append(r)
    if rows:
        _write(out / "ablation.csv", rows)
        _write(out / "ablation_pairs.csv", pair_rows)
    return len(rows), len(pair_rows)


def cell_finished(cell: Path, host: str, kind: str, seed: int, steps: int) -> bool:
    """Whether ``cell`` already holds the scored result of ``host``/``kind``/``seed`` for a budget
    of ``steps`` (its ``ablation.csv`` row, matched as ``ablation.py`` matches it): such a cell
    is kept as it is, not re-evaluated."""
    import ablation

    key = (host, kind, str(seed))
    return any(
        ablation._key(r) == key and r.get("budget_steps") == str(steps)
        for r in _read(cell / "ablation.csv")
    )


def other_finished_cells(
    out: Path, setting: str, steps: int, grid: Sequence[Path]
) -> list[tuple[str, str, int, Path]]:
    """Finished cells in ``out/cells`` that are not in ``grid``: same setting, same budget.

    Two instances of this script may share one ``--out`` (e.g. one per core, each with its own
    ``--attentions``); whichever merges last then reports every finished cell of the folder,
    not only its own grid. Returns ``(host, kind, seed, cell)`` sorted by folder name."""
    import ablation

    mine = {c.resolve() for c in grid}
    found: list[tuple[str, str, int, Path]] = []
    for cell in sorted((out / "cells").glob("*")):
        if cell.resolve() in mine:
            continue
        for r in _read(cell / "ablation.csv"):
            if r.get("setting") == setting and r.get("budget_steps") == str(steps):
                host, kind, seed = ablation._key(r)
                found.append((host, kind, int(seed), cell))
                break
    return found


def read_curve(cell: Path) -> dict[int, float]:
    """The trainer's validation Dice of one cell, ``{step: val_dice}`` (empty without
    ``--val-every`` or before the first validation)."""
    metrics = next(iter(sorted((cell / "runs").glob("*/metrics.csv"))), None)
    if metrics is None:
        return {}
    return {
        int(r["step"]): float(r["val_dice"])
        for r in _read(metrics)
        if r.get("val_dice") not in (None, "")
    }


def late_slope(curves: Sequence[dict[int, float]], start: int) -> dict[str, float]:
    """Slope of validation curves over their steps ``>= start``, per 1,000 steps.

    One straight line per curve (seed) with its own intercept and a common slope: ordinary
    least squares after removing each curve's mean step and mean value (the "within" estimator,
    equal to a regression on the step plus one indicator per curve). The slope's standard
    error uses ``n - c - 1`` degrees of freedom (``n`` points, ``c`` curves with >= 2 points);
    ``ci95`` is the half-width of its 95 % interval and ``p`` the two-sided t-test of a zero
    slope (it treats the points as independent; successive checkpoints of one run are not
    quite, so read p as a guide). With too few points (no degree of freedom, or no spread of
    steps) ``slope`` is given where it exists and the rest is NaN.

    Returns ``{"slope", "ci95", "p", "points", "curves"}`` (slope and ci95 in Dice per 1,000
    steps)."""
    import numpy as np
    from scipy import stats

    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for curve in curves:
        steps = sorted(s for s in curve if s >= start)
        if len(steps) < 2:
            continue
        x = np.asarray(steps, dtype=float) / 1000.0
        y = np.asarray([curve[s] for s in steps], dtype=float)
        xs.append(x - x.mean())
        ys.append(y - y.mean())
    nan = float("nan")
    out = {"slope": nan, "ci95": nan, "p": nan, "points": 0.0, "curves": float(len(xs))}
    if not xs:
        return out
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    out["points"] = float(len(x))
    sxx = float((x * x).sum())
    if sxx == 0.0:
        return out
    slope = float((x * y).sum() / sxx)
    out["slope"] = slope
    dof = len(x) - len(xs) - 1
    if dof < 1:
        return out
    resid = y - slope * x
    se = float(np.sqrt((resid * resid).sum() / dof / sxx))
    out["ci95"] = float(stats.t.ppf(0.975, dof) * se)
    if se > 0:
        out["p"] = float(2 * stats.t.sf(abs(slope) / se, dof))
    else:  # the lines fit exactly: a slope is certain, a flat curve certainly flat
        out["p"] = 0.0 if slope != 0 else 1.0
    return out


def curve_trends(
    cells: Sequence[tuple[str, str, int, Path]],
    start: int | None = None,
    reference: str = "maxca",
) -> list[dict[str, Any]]:
    """Is each validation curve still moving at the end of the budget, and is each comparison?

    For every (host, kind): :func:`late_slope` of its seeds' curves over steps ``>= start``
    (default: the second half of the longest curve, ``last step // 2``). For every host with
    the ``reference`` kind, and every other kind: the same slope of the per-seed *difference*
    ``reference - kind`` at the steps both curves have, paired by seed (a difference with no
    detectable trend gives no sign that a longer budget would change that comparison, even
    while both curves still rise). Rows (``host``, ``curve`` = the kind or ``"maxca - kind"``,
    ``from_step``, ``last_step``, ``slope``, ``ci95``, ``p``, ``points``, ``curves``): the kinds
    in the order of ``cells``, then the differences; cells without a validation curve are left
    out."""
    by_cell: dict[tuple[str, str], dict[int, dict[int, float]]] = {}
    for host, kind, seed, cell in cells:
        curve = read_curve(cell)
        if curve:
            by_cell.setdefault((host, kind), {})[seed] = curve
    if not by_cell:
        return []
    last = max(max(c) for seeds in by_cell.values() for c in seeds.values())
    begin = last // 2 if start is None else start
    rows: list[dict[str, Any]] = []

    def row(host: str, name: str, curves: Sequence[dict[int, float]]) -> None:
        ends = [max(c) for c in curves if c]
        rows.append(
            {"host": host, "curve": name, "from_step": begin,
             "last_step": max(ends) if ends else "", **late_slope(curves, begin)}
        )  # fmt: skip

    for (host, kind), seeds in by_cell.items():
        row(host, kind, list(seeds.values()))
    for host in dict.fromkeys(h for h, _ in by_cell):
        ref = by_cell.get((host, reference))
        if ref is None:
            continue
        for (h, kind), seeds in by_cell.items():
            if h != host or kind == reference:
                continue
            diffs = [
                {s: ref[seed][s] - curve[s] for s in ref[seed] if s in curve}
                for seed, curve in seeds.items()
                if seed in ref
            ]
            row(host, f"{reference} - {kind}", diffs)
    return rows


def trends_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`curve_trends` as a Markdown table (slopes in Dice per 1,000 steps)."""

    def num(v: Any, fmt: str) -> str:
        return "-" if v == "" or v != v else format(float(v), fmt)

    lines = [
        "Validation Dice trend over the late steps (slope per 1,000 steps, one line per seed with "
        "a common slope; ± = 95 % interval; p = t-test of a zero slope, which takes the "
        "validation points of one run as independent: read it as a guide):",
        "",
        "| host | curve | steps | slope / 1,000 steps | ± (95 %) | p | points |",
        "| :--- | :--- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['host']} | {r['curve']} | {r['from_step']}-{r['last_step']} | "
            f"{num(r['slope'], '+.4f')} | {num(r['ci95'], '.4f')} | {num(r['p'], '.3g')} | "
            f"{int(r['points'])} |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(out: Path, cells: Sequence[tuple[str, str, int, Path]]) -> Path | None:
    """Validation Dice vs step per (host, kind), mean over seeds: ``out/ablation_curves.png``."""
    curves: dict[tuple[str, str], dict[int, list[float]]] = {}
    for host, kind, _seed, cell in cells:
        for step, dice in read_curve(cell).items():
            curves.setdefault((host, kind), {}).setdefault(step, []).append(dice)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hosts = list(dict.fromkeys(h for h, _ in curves))
    fig, axes = plt.subplots(1, len(hosts), figsize=(5 * len(hosts), 3.8), squeeze=False)
    for ax, host in zip(axes[0], hosts):
        for i, ((h, kind), by_step) in enumerate(curves.items()):
            if h != host:
                continue
            steps = sorted(by_step)
            ax.plot(
                steps,
                [sum(by_step[s]) / len(by_step[s]) for s in steps],
                label=kind,
                color=f"C{i % 10}",
                marker=".",
            )
        ax.set_title(f"{host}: validation Dice (mean over seeds)", fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("Dice")
    fig.tight_layout()
    path = out / "ablation_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    hosts, kinds, seeds = parse_grid(parser, args)
    if args.steps < 1 or args.jobs < 1 or args.threads < 1:
        parser.error("--steps, --jobs and --threads must be >= 1")
    if args.trend_from is not None and args.trend_from < 0:
        parser.error("--trend-from must be >= 0")
    extra = [a for a in args.extra if a != "--"]
    own = {
        "--hosts",
        "--attentions",
        "--seeds",
        "--setting",
        "--out",
        "--cache",
        "--holdout",
        "--steps",
        "--device",
        "--threads",
        "--report",
        "--data",
        "--trend-from",
    }
    clash = sorted(own.intersection(a.split("=")[0] for a in extra))
    if clash:
        parser.error(f"give {', '.join(clash)} to ablation_parallel.py itself, not after --")
    out = (args.out or RESULTS / f"ablation_{args.setting}_par").resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = [
        "--setting",
        args.setting,
        "--steps",
        str(args.steps),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        *extra,
    ]
    if args.holdout is not None:
        import ablation

        if args.setting != "3d":
            parser.error("--holdout is for --setting 3d")
        try:
            args.data = ablation.holdout_dataset(args.data or BRAIN_2MM, out / "data", args.holdout)
        except (OSError, ValueError) as exc:
            parser.error(str(exc))
    if args.data is not None:
        common += ["--data", str(args.data.resolve())]
    if args.setting == "2d":  # the slice dataset once, before any cell starts
        import ablation

        cache = (args.cache or out / "data").resolve()
        ns = argparse.Namespace(
            setting="2d", data=args.data, cache=cache, out=out, **_slice_options(extra)
        )
        ablation.prepare_dataset(ns)
        common += ["--cache", str(cache)]

    cells = [
        (h, k, s, out / "cells" / cell_name(h, k, s)) for h in hosts for k in kinds for s in seeds
    ]
    queue = list(cells)
    running: list[tuple[subprocess.Popen[bytes], str, Any]] = []
    failed: list[str] = []
    t0 = time.perf_counter()
    while queue or running:
        while queue and len(running) < args.jobs:
            host, kind, seed, cell = queue.pop(0)
            if cell_finished(cell, host, kind, seed, args.steps):
                print(f"kept {cell.name} (finished earlier)", flush=True)
                continue
            if args.merge_only:
                print(f"not run {cell.name} (--merge-only)", flush=True)
                continue
            cell.mkdir(parents=True, exist_ok=True)
            cmd = [
                sys.executable,
                str(HERE / "ablation.py"),
                *common,
                "--hosts",
                host,
                "--attentions",
                kind,
                "--seeds",
                str(seed),
                "--out",
                str(cell),
                "--no-plot",
            ]
            log = open(cell / "ablation.log", "ab")  # noqa: SIM115 (closed when the cell ends)
            running.append(
                (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), cell.name, log)
            )
            print(f"started {cell.name}", flush=True)
        time.sleep(0.5)
        for proc, name, log in list(running):
            if proc.poll() is None:
                continue
            running.remove((proc, name, log))
            log.close()
            if proc.returncode != 0:
                failed.append(name)
            print(
                f"finished {name}: exit {proc.returncode} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    others = other_finished_cells(out, args.setting, args.steps, [c for *_, c in cells])
    for *_, cell in others:
        print(f"also merged {cell.name} (finished in {out} outside this grid)", flush=True)
    cells += others
    n_rows, n_pairs = merge_cells(out, [c for *_, c in cells])
    print(f"merged {n_rows} cells ({n_pairs} pair rows) into {out}")
    if n_rows:
        import ablation

        report = [
            *common,
            "--hosts",
            ",".join(dict.fromkeys(h for h, *_ in cells)),
            "--attentions",
            ",".join(dict.fromkeys(k for _, k, *_ in cells)),
            "--seeds",
            ",".join(dict.fromkeys(str(s) for *_, s, _ in cells)),
            "--out",
            str(out),
            "--report",
        ]
        ablation.main(report)
    curves = plot_curves(out, cells)
    if curves is not None:
        print(f"wrote {curves}")
    trends = curve_trends(cells, args.trend_from)
    if trends:
        _write(out / "ablation_trends.csv", trends)
        md = trends_markdown(trends)
        (out / "ablation_trends.md").write_text(md)
        print(md)
    if failed:
        print(f"failed cells (see their ablation.log): {', '.join(failed)}")
        return 1
    return 0


def _slice_options(extra: Sequence[str]) -> dict[str, Any]:
    """``--plane/--slices/--slice-step`` from the pass-through options (ablation.py's defaults)."""
    import ablation

    known, _ = ablation.build_parser().parse_known_args(list(extra))
    return {"plane": known.plane, "slices": known.slices, "slice_step": known.slice_step}


if __name__ == "__main__":
    sys.exit(main())
