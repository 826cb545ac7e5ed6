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
   used to choose anything (the evaluated checkpoint is always the last one, at a fixed budget).

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


def plot_curves(out: Path, cells: Sequence[tuple[str, str, int, Path]]) -> Path | None:
    """Validation Dice vs step per (host, kind), mean over seeds: ``out/ablation_curves.png``."""
    curves: dict[tuple[str, str], dict[int, list[float]]] = {}
    for host, kind, _seed, cell in cells:
        metrics = next(iter(sorted((cell / "runs").glob("*/metrics.csv"))), None)
        if metrics is None:
            continue
        for r in _read(metrics):
            if r.get("val_dice") not in (None, ""):
                curves.setdefault((host, kind), {}).setdefault(int(r["step"]), []).append(
                    float(r["val_dice"])
                )
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
