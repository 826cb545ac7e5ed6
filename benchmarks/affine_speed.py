"""What does the affine pre-alignment cost, and what do its stopping settings change?

Side by side, on directed pairs of *training* subjects (subject i to i+``--offset``; never the
validation pairs the model card reports), :func:`maxca.inference.affine.affine_register`
(symmetric, the CLI's pre-alignment) with

* ``previous``: the rigid stage at every resolution level, the optimiser stopped at a step
  of 1e-4 mm and ITK's precomputed gradient images (``rigid_levels=None, min_step=1e-4,
  gradient_filter=True``: the settings before this script);
* ``gradient_filter``: the rigid stage at the coarsest level only, a 1e-3 mm stop and ITK's
  precomputed gradient images (``min_step=1e-3, gradient_filter=True``: the settings of
  2026-12-01 15:59-19:40 UTC);
* ``stop_1e-3``: the defaults with a 1e-3 mm stop (``min_step=1e-3``: 19:40-20:05 UTC);
* ``current``: the library's defaults (the rigid stage at the coarsest level only, stopped at
  3e-3 mm, gradients by central differences at the sampled points only).

The settings run on each pair one after the other (same process, same thread count), so their
time ratios are measured side by side. For each: seconds, the affine-only Dice of the moving label
map resampled through the map (mean over the dataset's evaluation labels), the same with the
moving image and labels rotated by ``--degrees`` about the S axis and shifted by ``--shift`` mm
(a change of their header: the anatomy is intact), and the largest entry of the difference of
the two maps (linear part; translation in mm).

    python benchmarks/affine_speed.py --threads 1 --out benchmarks/results/affine_speed
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from _common import (
    REPO,
    add_training_pair_args,
    atomic_write_text,
    markdown_table,
    set_threads,
    training_pairs,
    write_csv,
)

SETTINGS = {
    "previous": {"rigid_levels": None, "min_step": 1e-4, "gradient_filter": True},
    "gradient_filter": {"min_step": 1e-3, "gradient_filter": True},
    "stop_1e-3": {"min_step": 1e-3},
    "current": {},
}


OTHERS = [name for name in SETTINGS if name != "current"]


def _against(rows: list[dict], other: str) -> str:
    """One line: time of ``current`` over ``other`` and the largest difference of the maps."""
    ratio = [r["seconds_current"] / r[f"seconds_{other}"] for r in rows]
    return (
        f"\ncurrent / {other} time: {np.mean(ratio):.2f} (per pair {min(ratio):.2f}-"
        f"{max(ratio):.2f}); largest difference of the maps: linear "
        f"{max(r[f'max_linear_gap_{other}'] for r in rows):.1e}, translation "
        f"{max(r[f'max_translation_gap_mm_{other}'] for r in rows):.3f} mm.\n"
    )


def main(argv: list[str] | None = None) -> int:
    from scipy.spatial.transform import Rotation

    from maxca.data.io import Volume, read_volume
    from maxca.data.learn2reg import load_learn2reg
    from maxca.inference.affine import affine_register, prealign
    from maxca.inference.register import ModelGrid, resample_to_grid
    from maxca.metrics.overlap import dice

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_training_pair_args(p)
    p.add_argument("--degrees", type=float, default=20.0)
    p.add_argument("--shift", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks/results/affine_speed"))
    args = p.parse_args(argv)
    set_threads(args.threads)
    ds = load_learn2reg(args.dataset)
    root = Path(args.dataset).parent
    labels = list(ds.evaluation_labels)
    pairs = training_pairs(args.subjects, args.offset)
    moved = np.eye(4)
    moved[:3, :3] = Rotation.from_euler("z", args.degrees, degrees=True).as_matrix()
    moved[:3, 3] = (args.shift, 0.0, 0.0)

    def read(sub: str, kind: str) -> Volume:
        folder = "imagesTr" if kind == "image" else "labelsTr"
        return read_volume(root / folder / f"{ds.name}_{sub}_0000.nii.gz", kind)

    def rotated(vol: Volume) -> Volume:
        return Volume(vol.array, moved @ vol.affine, vol.header, vol.path)

    rows = []
    for f, m in pairs:
        F, M, FL, ML = read(f, "image"), read(m, "image"), read(f, "label"), read(m, "label")
        grid = ModelGrid(tuple(F.shape), F.affine)

        def score(vol: Volume, grid: ModelGrid = grid, FL: Volume = FL) -> float:
            w = resample_to_grid(vol, grid, "label")[0, 0].numpy()
            return float(np.mean(list(dice(FL.array, w, labels).values())))

        row: dict = {"pair": f"{f}_{m}", "dice_identity": score(ML)}
        maps = {}
        for name, kw in SETTINGS.items():
            t0 = time.perf_counter()
            T = affine_register(F, M, threads=args.threads, **kw).matrix
            row[f"seconds_{name}"] = time.perf_counter() - t0
            R = affine_register(F, rotated(M), threads=args.threads, **kw).matrix
            row[f"dice_{name}"] = score(prealign(ML, T))
            row[f"dice_rotated_{name}"] = score(prealign(rotated(ML), R))
            maps[name] = T
        for other in OTHERS:
            gap = maps["current"] - maps[other]
            row[f"max_linear_gap_{other}"] = float(np.abs(gap[:3, :3]).max())
            row[f"max_translation_gap_mm_{other}"] = float(np.abs(gap[:3, 3]).max())
        rows.append(row)
        print(
            f"{row['pair']}: "
            + ", ".join(
                f"{name} {row[f'seconds_{name}']:.2f} s Dice {row[f'dice_{name}']:.4f} "
                f"(rotated {row[f'dice_rotated_{name}']:.4f})"
                for name in SETTINGS
            ),
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "affine_speed.csv", rows, list(rows[0]))

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    table = [
        [
            name,
            f"{mean(f'seconds_{name}'):.2f}",
            f"{mean(f'dice_{name}'):.4f}",
            f"{mean(f'dice_rotated_{name}'):.4f}",
        ]
        for name in SETTINGS
    ]
    text = (
        f"{len(rows)} directed pairs of training subjects {args.subjects} (subject i to "
        f"i+{args.offset}), {args.threads} thread(s); symmetric pre-alignment; identity Dice "
        f"{mean('dice_identity'):.4f}; rotated = moving moved {args.degrees:g} degrees and "
        f"{args.shift:g} mm.\n\n"
        + markdown_table(["settings", "s / pre-alignment", "Dice", "Dice, rotated"], table)
        + "\n"
        + "".join(_against(rows, other) for other in OTHERS)
    )
    atomic_write_text(out / "affine_speed.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
