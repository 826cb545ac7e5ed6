"""Cascaded inference (``register_pair(passes=N)``) and ``--refine`` on tuning pairs.

The packaged ``brain`` model registers a pair in one pass. A second pass registers the fixed
image with the moving image warped by the first, and the two flows are composed. This script
scores, on the model grid, the mean Dice over the dataset's evaluation labels (moving label
map warped by nearest neighbour) and the % of non-positive Jacobian determinants inside the
fixed brain, for each setting of ``--settings`` (``P`` network passes, ``PrS`` = ``P`` passes
then ``S`` refinement steps of the last pass, the model's ``refine`` options otherwise), on
the pairs of ``--pairs`` (``FIXED:MOVING`` subject numbers; the default is the held-out
subject 14 with training subjects 3, 4 and 5, both ways: never a pair the model card reports).
Everything goes through :func:`maxca.inference.register_pair`, as ``maxca register`` does
(without the affine pre-alignment: these pairs are on one grid already).

    python benchmarks/cascade_choice.py --settings 1,2,3,1r25,2r25 --threads 2 \
        --out benchmarks/results/cascade_choice
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np

from _common import (
    REPO,
    GridScorer,
    brain_benchmark_setup,
    parse_subject_pairs,
    subject_volume,
    write_csv,
    write_table_report,
)


def parse_setting(text: str) -> tuple[int, int]:
    """``"2r25"`` -> ``(2, 25)`` (passes, refine steps); ``"3"`` -> ``(3, 0)``."""
    match = re.fullmatch(r"([1-9][0-9]*)(?:r([0-9]+))?", text.strip())
    if match is None:
        raise ValueError(f"a setting is PASSES or PASSESrSTEPS (e.g. 2r25), got {text!r}")
    return int(match.group(1)), int(match.group(2) or 0)


def main(argv: list[str] | None = None) -> int:
    from maxca.inference import register_pair

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--dataset", default=str(REPO.parent / "shared/data/brain-synth-2mm/dataset.json")
    )
    p.add_argument("--model", default="brain")
    p.add_argument("--settings", default="1,2,3,1r25,2r25")
    p.add_argument("--pairs", default="3:14,4:14,5:14,14:3,14:4,14:5")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks/results/cascade_choice"))
    args = p.parse_args(argv)
    try:
        settings = [parse_setting(s) for s in args.settings.split(",") if s.strip()]
    except ValueError as exc:
        p.error(str(exc))
    pairs = parse_subject_pairs(p, args.pairs)
    env = brain_benchmark_setup(args.dataset, args.model, args.threads)
    model, info = env.model, env.info

    rows = []
    for f, m in pairs:
        F, M = subject_volume(env, f, "image"), subject_volume(env, m, "image")
        pair = f"{f:04d}_{m:04d}"
        score = None
        for passes, steps in settings:
            t0 = time.perf_counter()
            res = register_pair(model, info, F, M, refine_steps=steps, passes=passes)
            seconds = time.perf_counter() - t0
            score = score or GridScorer(env, f, m, res.grid)  # the grid is the pair's
            d, n = score(res.grid_flow)
            setting = f"{passes}" + (f"r{steps}" if steps else "")
            rows.append({"pair": pair, "setting": setting, "passes": passes,
                         "refine_steps": steps, "dice": d, "njd_brain": n,
                         "seconds": seconds})  # fmt: skip
            print(f"{pair} {setting}: Dice {d:.4f}  NJD {n:.4f} %  {seconds:.1f} s", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "cascade_choice.csv", rows, list(rows[0]))
    base = {r["pair"]: r["dice"] for r in rows if r["setting"] == "1"}
    table = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        sel = [r for r in rows if r["setting"] == setting]
        gain = [r["dice"] - base[r["pair"]] for r in sel if r["pair"] in base]
        table.append([
            setting, f"{np.mean([r['dice'] for r in sel]):.4f}",
            f"{np.mean(gain):+.4f}" if gain else "",
            " / ".join(f"{r['dice']:.4f}" for r in sel),
            f"{np.mean([r['njd_brain'] for r in sel]):.4f}",
            f"{np.mean([r['seconds'] for r in sel]):.1f}",
        ])  # fmt: skip
    names = ", ".join(dict.fromkeys(r["pair"] for r in rows))
    write_table_report(
        out / "cascade_choice.md",
        f"Model {args.model}; pairs (fixed_moving) {names}; {args.threads} thread(s); Dice on the "
        "model grid; setting P = P network passes, PrS = then S refinement steps.",
        ["setting", "mean Dice", "vs 1 pass", "per pair", "NJD % in brain", "s / pair"],
        table,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
