"""Is the affine pre-alignment biased? One-way against symmetric, on training-subject pairs.

On pairs that are already affinely aligned (brain-synth: every subject aligned to MNI152 by its
makers) a good pre-alignment should leave them about where they are. For each directed pair of
*training* subjects (not the validation pairs the model card reports), this script registers
moving to fixed and fixed to moving with ``maxca.inference.affine.affine_register`` and reports

* the singular values of the linear part of the one-way map ``T`` and of the inverse of the
  reverse map (a bias shows as all values on one side of 1);
* the affine-only Dice of the moving label map resampled by the identity, the one-way ``T`` and
  the symmetric mean (``symmetric=True``, the default);
* optionally (``--network``) the Dice of the packaged ``brain`` model through
  ``maxca.app.register_files`` (the CLI path) without pre-alignment, with the one-way one and
  with the symmetric one.

    python benchmarks/affine_symmetry.py --network --threads 1 \
        --out benchmarks/results/affine_symmetry
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import (
    REPO,
    add_training_pair_args,
    atomic_write_text,
    set_threads,
    training_pairs,
    write_csv,
)  # benchmarks/ is on the path


def main(argv: list[str] | None = None) -> int:
    from maxca.data.io import read_volume
    from maxca.data.learn2reg import load_learn2reg
    from maxca.inference.affine import affine_register, prealign
    from maxca.inference.register import ModelGrid, resample_to_grid
    from maxca.metrics.overlap import dice

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_training_pair_args(p)
    p.add_argument("--network", action="store_true", help="also register with the brain model")
    p.add_argument("--model", default="brain")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks/results/affine_symmetry"))
    args = p.parse_args(argv)
    set_threads(args.threads)
    ds = load_learn2reg(args.dataset)
    root = Path(args.dataset).parent
    labels = list(ds.evaluation_labels)
    pairs = training_pairs(args.subjects, args.offset)

    def paths(sub: str) -> tuple[Path, Path]:
        name = f"{ds.name}_{sub}_0000.nii.gz" if ds.name else f"{sub}.nii.gz"
        return root / "imagesTr" / name, root / "labelsTr" / name

    model = info = None
    if args.network:
        from maxca.app import load_model

        model, info = load_model(args.model, "cpu")
    rows = []
    for f, m in pairs:
        (fi, fl), (mi, ml) = paths(f), paths(m)
        F, M = read_volume(fi, "image"), read_volume(mi, "image")
        FL, ML = read_volume(fl, "label"), read_volume(ml, "label")
        grid = ModelGrid(tuple(F.shape), F.affine)

        def score(vol, grid=grid, FL=FL) -> float:  # noqa: ANN001
            w = resample_to_grid(vol, grid, "label")[0, 0].numpy()
            return float(np.mean(list(dice(FL.array, w, labels).values())))

        t0 = time.perf_counter()
        one = affine_register(F, M, symmetric=False, threads=args.threads).matrix
        t_one = time.perf_counter() - t0
        rev = affine_register(M, F, symmetric=False, threads=args.threads).matrix
        t0 = time.perf_counter()
        sym = affine_register(F, M, threads=args.threads).matrix
        t_sym = time.perf_counter() - t0
        row = {
            "pair": f"{f}_{m}",
            "sv_one_way": " ".join(f"{v:.3f}" for v in np.linalg.svd(one[:3, :3])[1]),
            "sv_reverse_inv": " ".join(
                f"{v:.3f}" for v in np.linalg.svd(np.linalg.inv(rev)[:3, :3])[1]
            ),
            "sv_symmetric": " ".join(f"{v:.3f}" for v in np.linalg.svd(sym[:3, :3])[1]),
            "dice_identity": score(ML),
            "dice_one_way": score(prealign(ML, one)),
            "dice_symmetric": score(prealign(ML, sym)),
            "seconds_one_way": t_one,
            "seconds_symmetric": t_sym,
        }
        if args.network:
            import maxca.app.registration as reg
            from maxca.app import register_files

            kinds = {"none": None, "one_way": {"symmetric": False}, "symmetric": {}}
            for kind, kw in kinds.items():
                if kw is not None:
                    reg.affine_register = functools.partial(affine_register, **kw)
                try:
                    with tempfile.TemporaryDirectory() as td:
                        rep = register_files(
                            model, info, fi, mi, Path(td) / "o", moving_labels=ml,
                            fixed_labels=fl, affine=kw is not None, labels=labels,
                        )  # fmt: skip
                finally:
                    reg.affine_register = affine_register
                row[f"network_{kind}"] = rep.metrics["dice_after"]
        rows.append(row)
        print(
            f"{row['pair']}: singular values one-way [{row['sv_one_way']}] reverse^-1 "
            f"[{row['sv_reverse_inv']}] symmetric [{row['sv_symmetric']}]; affine-only Dice "
            f"{row['dice_identity']:.4f} / {row['dice_one_way']:.4f} / "
            f"{row['dice_symmetric']:.4f}"
            + (
                f"; network {row['network_none']:.4f} / {row['network_one_way']:.4f} / "
                f"{row['network_symmetric']:.4f}"
                if args.network
                else ""
            ),
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "affine_symmetry.csv", rows, list(rows[0]))

    def mean(key: str) -> str:
        return f"{np.mean([r[key] for r in rows]):.4f}"

    def sv_range(key: str) -> str:
        values = [float(v) for r in rows for v in r[key].split()]
        return f"{min(values):.3f}-{max(values):.3f}"

    lines = [
        f"{len(rows)} directed pairs of training subjects {args.subjects} "
        f"(subject i to i+{args.offset}), {args.threads} thread(s).",
        "",
        "| | identity | one-way | symmetric |",
        "|---|---|---|---|",
        f"| singular values of the linear part | 1 | {sv_range('sv_one_way')} "
        f"(reverse^-1: {sv_range('sv_reverse_inv')}) | {sv_range('sv_symmetric')} |",
        f"| affine-only Dice | {mean('dice_identity')} | {mean('dice_one_way')} | "
        f"{mean('dice_symmetric')} |",
        f"| seconds per pre-alignment | 0 | {mean('seconds_one_way')} | "
        f"{mean('seconds_symmetric')} |",
    ]
    if args.network:
        lines.append(
            f"| `{args.model}` network Dice (CLI path) | {mean('network_none')} | "
            f"{mean('network_one_way')} | {mean('network_symmetric')} |"
        )
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "affine_symmetry.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
