"""The packaged brain model on the shared validation pairs, through the same code as the CLI.

Conditions (every pair of ``--pairs``, each registered by ``maxca.app.register_files`` as
``maxca register --model brain`` does, affine pre-alignment on unless ``--no-affine``):

* ``t1``: the images as given (T1-like contrast);
* ``t2``: both images re-synthesised from their label maps in a T2-like intensity order
  (``maxca.data.labelsynth.T2_LIKE``: fluid bright, white matter dark), seeded;
* ``rotated``: the moving image and labels moved by 20 degrees about the S axis and 30 mm
  (a change of the moving header, so the anatomy is intact and Dice is comparable to ``t1``);
* ``refine``: ``t1`` plus ``--refine N`` instance optimisation;
* ``mni``: the held-out pair of ``maxca demo`` (built as the demo builds it, seed 0: subjects
  deformed from nilearn's MNI152 template, real T1 intensities the model never saw; all
  non-zero labels scored), in place of the dataset's pairs.

Scores: mean Dice over the dataset's evaluation labels (nearest-neighbour warped labels),
% non-positive Jacobian determinant inside the fixed brain mask (``masksTr``) and over all
voxels, end-to-end seconds per pair (reading, pre-alignment, network, resampling, writing).

    python benchmarks/pretrained_brain.py --dataset ../shared/data/brain-synth-2mm/dataset.json \
        --conditions t1,t2,rotated --threads 2 --out benchmarks/results/pretrained_brain
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from maxca.app import load_model, register_files
from maxca.data.io import read_volume
from maxca.data.labelsynth import T2_LIKE, fixed_contrast_image
from maxca.data.learn2reg import load_learn2reg
from maxca.inference.evaluate import dataset_pairs, pair_name
from maxca.inference.export import read_voxel_flow
from maxca.metrics import njd_percent

CONDITIONS = ("t1", "t2", "rotated", "refine", "mni")
REPO = Path(__file__).resolve().parents[1]


def _display(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO.parent))
    except ValueError:
        return str(path)


def _rotation(deg: float, shift: tuple[float, float, float]) -> np.ndarray:
    a = math.radians(deg)
    T = np.eye(4)
    T[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    T[:3, 3] = shift
    return T


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def prepare(cond: str, fixed: Path, moving: Path, f_lab: Path, m_lab: Path, tmp: Path, seed: int):
    """The four input files of a pair under a condition."""
    if cond in ("t1", "refine", "mni"):
        return fixed, moving, f_lab, m_lab
    if cond == "t2":
        out = []
        for k, (image, label) in enumerate(((fixed, f_lab), (moving, m_lab))):
            lab = read_volume(label, "label")
            arr = torch.from_numpy(np.asarray(lab.array).astype(np.int64))
            img = fixed_contrast_image(arr, T2_LIKE, seed * 2 + k).numpy()
            out.append(_save(tmp / f"t2_{k}_{Path(image).name}", img, lab.affine))
        return out[0], out[1], f_lab, m_lab
    if cond == "rotated":
        T = _rotation(20.0, (30.0, 0.0, 0.0))
        img, lab = read_volume(moving, "image"), read_volume(m_lab, "label")
        m = _save(tmp / f"rot_{Path(moving).name}", img.array, T @ img.affine)
        ml = _save(tmp / f"rotlab_{Path(moving).name}", lab.array, T @ lab.affine)
        return fixed, m, f_lab, ml
    raise SystemExit(f"unknown condition {cond!r}; choose from {CONDITIONS}")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} %"


def _demo_dataset(root: Path):
    """The data of ``maxca demo`` (its defaults, seed 0); its held-out pair is the ``mni`` one."""
    from maxca.app.demo import demo_dataset

    return load_learn2reg(demo_dataset(root))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="brain", help="packaged model name or checkpoint path")
    p.add_argument(
        "--dataset", default=str(REPO.parent / "shared/data/brain-synth-2mm/dataset.json")
    )
    p.add_argument("--pairs", default="registration_val")
    p.add_argument("--conditions", default="t1,t2,rotated")
    p.add_argument("--refine", type=int, default=100, help="steps for the refine condition")
    p.add_argument("--no-affine", action="store_true", help="skip the affine pre-alignment")
    p.add_argument(
        "--passes",
        type=int,
        default=None,
        help="network passes (cascaded inference, as maxca register --passes; default: the "
        "model's, 1 without --refine)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-pairs", type=int, default=None)
    p.add_argument("--out", default=str(REPO / "benchmarks/results/pretrained_brain"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    conditions = [c for c in args.conditions.split(",") if c]
    ds = load_learn2reg(args.dataset)
    pairs = dataset_pairs(ds, args.pairs)[: args.max_pairs]
    labels = list(ds.evaluation_labels) or None
    model, info = load_model(args.model, "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for cond in conditions:
            cond_pairs, cond_ds, cond_labels = pairs, ds, labels
            if cond == "mni":
                cond_ds = _demo_dataset(tmp / "demo")
                cond_pairs, cond_labels = cond_ds.registration_val[:1], None
            for i, (fixed, moving) in enumerate(cond_pairs):
                f_lab, m_lab = cond_ds.label_for(fixed), cond_ds.label_for(moving)
                f, m, fl, ml = prepare(cond, fixed, moving, f_lab, m_lab, tmp, i)
                res = tmp / f"{cond}_{i}"
                t0 = time.perf_counter()
                report = register_files(
                    model, info, f, m, res, moving_labels=ml, fixed_labels=fl, device="cpu",
                    refine_steps=args.refine if cond == "refine" else 0,
                    affine=not args.no_affine, labels=cond_labels, passes=args.passes,
                )  # fmt: skip
                seconds = time.perf_counter() - t0
                flow, _ = read_voxel_flow(res / "flow_voxel.nii.gz")
                mask_path = Path(str(fixed).replace("imagesTr", "masksTr"))
                mask = read_volume(mask_path, "label").array if mask_path.is_file() else None
                rows.append(
                    {
                        "condition": cond,
                        "pair": pair_name(fixed, moving),
                        "dice_before": report.metrics.get("dice_before"),
                        "dice_after": report.metrics.get("dice_after"),
                        "njd_mask_percent": None if mask is None else njd_percent(flow, mask),
                        "njd_percent": njd_percent(flow),
                        "seconds": seconds,
                        "network_s": report.timings.get("network"),
                        "affine_s": report.timings.get("affine", 0.0),
                        "passes": report.passes,
                    }
                )
                r = rows[-1]
                print(
                    f"{cond:8s} {r['pair']}: Dice {r['dice_before']:.3f} -> {r['dice_after']:.3f}"
                    f"  NJD(mask) {_pct(r['njd_mask_percent'])}  NJD {r['njd_percent']:.3f} %"
                    f"  {seconds:.1f} s",
                    flush=True,
                )
    with open(out / "pretrained_brain.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"Model: {args.model}; dataset: {_display(Path(args.dataset))} ({args.pairs}, "
        f"{len(pairs)} pairs); {args.threads} threads; affine pre-alignment "
        f"{'off' if args.no_affine else 'on'}; network passes "
        f"{'the model default' if args.passes is None else args.passes}.",
        "",
        "| condition | Dice before | Dice after | NJD % in mask | NJD % all | s / pair |",
        "|---|---|---|---|---|---|",
    ]
    for cond in conditions:
        sub = [r for r in rows if r["condition"] == cond]
        d = np.array([r["dice_after"] for r in sub], float)
        b = np.array([r["dice_before"] for r in sub], float)
        masked = [r["njd_mask_percent"] for r in sub if r["njd_mask_percent"] is not None]
        njm = np.array(masked or [np.nan], float)
        nja = np.array([r["njd_percent"] for r in sub], float)
        s = np.array([r["seconds"] for r in sub], float)
        lines.append(
            f"| {cond} | {b.mean():.3f} | {d.mean():.3f} +- {d.std():.3f} | {njm.mean():.3f} | "
            f"{nja.mean():.3f} | {s.mean():.1f} |"
        )
    text = "\n".join(lines) + "\n"
    (out / "pretrained_brain.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
