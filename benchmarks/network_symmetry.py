"""Is the packaged network inverse-consistent, and does averaging two predictions help?

For directed pairs of brain-synth-2mm subjects (default: the held-out subject 14 with training
subjects 3, 4 and 5, both ways; never the validation pairs the model card reports), on the
model grid, without pre-alignment (the data are affinely aligned), this script scores:

* ``network``: the prediction ``v_ab`` (fixed a, moving b), as ``maxca register`` computes it;
* ``reverse inverted``: the reverse registration's velocity negated, ``-v_ba`` (for a
  stationary velocity field, ``exp(-v)`` is the inverse of ``exp(v)``);
* ``average with reverse``: ``(v_ab - v_ba) / 2``, inverse-consistent by construction;
* ``average with LR flip``: the mean of ``v_ab`` and the prediction on both images mirrored
  left-right (mirrored back, its axis-0 component negated).

For each it gives the mean Dice over the dataset's evaluation labels (moving label map warped by
nearest neighbour), the % of non-positive Jacobian determinants in the fixed brain, and, for the
network, the inverse-consistency error (:func:`maxca.metrics.inverse_consistency_error`: the
mean distance in mm, inside the fixed brain, between a voxel and where the forward and then the
reverse transform carry it).

    python benchmarks/network_symmetry.py --threads 1 \
        --out benchmarks/results/network_symmetry
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from _common import (
    REPO,
    GridScorer,
    atomic_write_text,
    brain_benchmark_setup,
    markdown_table,
    parse_subject_pairs,
    subject_volume,
    write_csv,
)

VARIANTS = ("network", "reverse inverted", "average with reverse", "average with LR flip")


def main(argv: list[str] | None = None) -> int:
    from maxca.inference.register import model_grid, model_input
    from maxca.metrics import inverse_consistency_error
    from maxca.spatial import integrate_velocity

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--dataset", default=str(REPO.parent / "shared/data/brain-synth-2mm/dataset.json")
    )
    p.add_argument("--model", default="brain")
    p.add_argument("--pairs", default="3:14,4:14,5:14,14:3,14:4,14:5", help="FIXED:MOVING,...")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks/results/network_symmetry"))
    args = p.parse_args(argv)
    pairs = parse_subject_pairs(p, args.pairs)
    env = brain_benchmark_setup(args.dataset, args.model, args.threads)
    model, prep, int_steps = env.model, env.prep, env.int_steps

    rows = []
    for f, m in pairs:
        F, M = subject_volume(env, f, "image"), subject_volume(env, m, "image")
        grid = model_grid(F, prep)
        fg, mg = model_input(F, grid, prep), model_input(M, grid, prep)
        score = GridScorer(env, f, m, grid)
        brain = score.brain
        t0 = time.perf_counter()
        with torch.no_grad():
            v_ab = model(fg, mg).velocity.float()
            v_ba = model(mg, fg).velocity.float()
            v_flip = model(fg.flip(2), mg.flip(2)).velocity.float().flip(2)
            v_flip[:, 0] = -v_flip[:, 0]
            flows = {
                "network": integrate_velocity(v_ab, int_steps),
                "reverse inverted": integrate_velocity(-v_ba, int_steps),
                "average with reverse": integrate_velocity(0.5 * (v_ab - v_ba), int_steps),
                "average with LR flip": integrate_velocity(0.5 * (v_ab + v_flip), int_steps),
            }
            reverse = integrate_velocity(v_ba, int_steps)
        seconds = time.perf_counter() - t0
        spacing = [float(s) for s in grid.spacing]
        ice = inverse_consistency_error(flows["network"][0], reverse[0], brain, spacing)
        pair = f"{f:04d}_{m:04d}"
        for name in VARIANTS:
            d, n = score(flows[name])
            row = {
                "pair": pair,
                "variant": name,
                "dice": d,
                "njd_brain": n,
                "ice_mm": ice if name == "network" else "",
            }
            rows.append(row)
            print(f"{pair} {name}: Dice {row['dice']:.4f}  NJD {row['njd_brain']:.4f} %")
        print(f"{pair}: inverse-consistency error {ice:.3f} mm ({seconds:.1f} s for 3 passes)")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    columns = ["pair", "variant", "dice", "njd_brain", "ice_mm"]
    write_csv(out / "network_symmetry.csv", rows, columns)
    base = np.mean([r["dice"] for r in rows if r["variant"] == "network"])
    table = []
    for name in VARIANTS:
        sel = [r for r in rows if r["variant"] == name]
        mean = np.mean([r["dice"] for r in sel])
        table.append([
            name, f"{mean:.4f}", f"{mean - base:+.4f}",
            " / ".join(f"{r['dice']:.4f}" for r in sel),
            f"{np.mean([r['njd_brain'] for r in sel]):.4f}",
        ])  # fmt: skip
    ice = [r["ice_mm"] for r in rows if r["variant"] == "network"]
    text = (
        f"Model {args.model}; pairs (fixed_moving) {', '.join(r['pair'] for r in rows[::4])}; "
        f"{args.threads} thread(s); Dice on the model grid, no pre-alignment.\n\n"
        + markdown_table(["variant", "mean Dice", "vs network", "per pair", "NJD % brain"], table)
        + f"\n\nInverse-consistency error of the network (mean over the fixed brain, mm): "
        f"{np.mean(ice):.3f} (per pair {' / '.join(f'{v:.3f}' for v in ice)}).\n"
    )
    atomic_write_text(out / "network_symmetry.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
