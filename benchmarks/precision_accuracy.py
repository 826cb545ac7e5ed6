"""Does ``torch.compile`` or bfloat16 change registration results? (issue #12, item 3; not a test)

Every pair of ``--pairs`` (default ``registration_val`` of brain-synth-2mm) is registered by the
same trained model (default the packaged ``brain`` model) in each ``--variants`` entry:

* ``eager-fp32``: the reference (what ``maxca register`` does by default);
* ``eager-bf16``: the network's forward under bfloat16 autocast
  (``register_pair(..., precision="bf16")``: convolutions and matmuls in bf16, the flow's
  integration, the resampling and the scoring in float32);
* ``compiled-fp32`` / ``compiled-bf16``: the same after ``maxca.accel.compile_model``
  (TorchInductor; compiled once on the first pair, the compile time reported separately).

Registration goes through :func:`maxca.inference.register_pair` (the library path of
``maxca register``, without the affine pre-alignment: the pairs are already affinely aligned,
and a second, independent optimisation would blur the comparison). Variants are interleaved pair
by pair, so their times are measured side by side. Scores: mean Dice over the dataset's
evaluation labels (moving labels warped with nearest neighbour), % of voxels with
``det J <= 0`` over the image and inside the fixed brain mask (``masksTr``), and the
per-pair differences to ``eager-fp32``. The adoption rule of the issue: an option is offered
only where |Delta Dice| < 0.002 and |Delta NJD| < 0.05 points on every pair.

Writes ``precision_accuracy.csv`` (one row per variant and pair) and ``precision_accuracy.md``
into ``--out``::

    python benchmarks/precision_accuracy.py --model brain --threads 1 \\
        --out benchmarks/results/precision_accuracy
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import BRAIN_2MM, REPO, display_path
from maxca.accel import compile_model, cpu_has_bf16
from maxca.app import load_model
from maxca.app.registration import pair_metrics
from maxca.data.io import read_volume
from maxca.data.learn2reg import load_learn2reg
from maxca.inference.evaluate import dataset_pairs, pair_name
from maxca.inference.register import register_pair
from maxca.metrics import njd_percent

VARIANTS = ("eager-fp32", "eager-bf16", "compiled-fp32", "compiled-bf16")
DICE_TOL, NJD_TOL = 0.002, 0.05


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="brain", help="packaged model name or checkpoint path")
    p.add_argument("--dataset", type=Path, default=BRAIN_2MM, help="Learn2Reg dataset.json")
    p.add_argument("--pairs", default="registration_val")
    p.add_argument("--max-pairs", type=int, default=None)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/precision_accuracy")
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or "eager-fp32" not in variants:
        p.error(f"--variants: choose among {VARIANTS}, eager-fp32 included (got {variants})")
    torch.set_num_threads(args.threads)
    # fp32 and bf16 compiled graphs of the same functions share Dynamo's per-code cache (8
    # entries by default): without a larger limit the bf16 variant falls back to eager
    torch._dynamo.config.recompile_limit = 64

    base, info = load_model(args.model)
    models: dict[str, torch.nn.Module] = {}
    for v in variants:
        models[v] = compile_model(base) if v.startswith("compiled") else base
    ds = load_learn2reg(args.dataset)
    items = dataset_pairs(ds, args.pairs)[: args.max_pairs]
    labels = ds.evaluation_labels or None

    rows: list[dict[str, Any]] = []
    compile_s: dict[str, float] = {}
    for i, (fixed, moving) in enumerate(items):
        f, m = read_volume(fixed, "image"), read_volume(moving, "image")
        fl = read_volume(ds.label_for(fixed), "label")
        ml = read_volume(ds.label_for(moving), "label")
        mask_path = Path(str(fixed).replace("imagesTr", "masksTr"))
        mask = read_volume(mask_path, "label").array > 0 if mask_path.is_file() else None
        for v in variants:
            precision = v.split("-")[1]
            if i == 0 and v.startswith("compiled"):  # compile (and warm up) outside the timing
                t = time.perf_counter()
                register_pair(models[v], info, f, m, precision=precision)
                compile_s[v] = time.perf_counter() - t
            result = register_pair(models[v], info, f, m, ml, fl, precision=precision)
            metrics = pair_metrics(result, labels)
            row = {
                "variant": v,
                "pair": pair_name(fixed, moving),
                "dice": metrics["dice_after"],
                "njd_percent": njd_percent(result.flow),
                "njd_mask_percent": None if mask is None else njd_percent(result.flow, mask),
                "network_s": result.timings["network"],
                "total_s": result.timings["total"],
                "flow": result.flow,
            }
            rows.append(row)
            print(
                f"{row['pair']} {v:14s} Dice {row['dice']:.4f}  NJD {row['njd_percent']:.4f} %"
                f"  network {row['network_s']:.2f} s",
                flush=True,
            )

    ref = {r["pair"]: r for r in rows if r["variant"] == "eager-fp32"}
    for r in rows:
        r0 = ref[r["pair"]]
        r["d_dice"] = r["dice"] - r0["dice"]
        r["d_njd"] = r["njd_percent"] - r0["njd_percent"]
        r["d_njd_mask"] = (
            None
            if r["njd_mask_percent"] is None
            else r["njd_mask_percent"] - r0["njd_mask_percent"]
        )
        r["max_abs_flow_diff_vox"] = float(np.abs(r["flow"] - r0["flow"]).max())
    args.out.mkdir(parents=True, exist_ok=True)
    keys = [k for k in rows[0] if k != "flow"]
    with open(args.out / "precision_accuracy.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in keys})

    lines = [
        f"# Precision / compile accuracy check ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Model `{args.model}`, {len(items)} pairs of `{args.pairs}` of "
        f"`{display_path(args.dataset)}`, {args.threads} thread(s), {platform.machine()} "
        f"{platform.processor() or ''} (avx512_bf16: {cpu_has_bf16()}), torch {torch.__version__}.",
        "Adoption rule (issue #12): |Delta Dice| < 0.002 and |Delta NJD| < 0.05 points on every "
        "pair.",
        "",
        "| variant | Dice | max abs Delta Dice | NJD % | max abs Delta NJD | NJD % in mask | "
        "max flow diff (vox) | network s / pair (median) | ratio | compile s | rule |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    t_ref = float(np.median([r["network_s"] for r in rows if r["variant"] == "eager-fp32"]))
    for v in variants:
        sub = [r for r in rows if r["variant"] == v]
        dd = max(abs(r["d_dice"]) for r in sub)
        dn = max(abs(r["d_njd"]) for r in sub)
        dm = [abs(r["d_njd_mask"]) for r in sub if r["d_njd_mask"] is not None]
        passes = dd < DICE_TOL and dn < NJD_TOL and all(x < NJD_TOL for x in dm)
        t = float(np.median([r["network_s"] for r in sub]))
        njm = [r["njd_mask_percent"] for r in sub if r["njd_mask_percent"] is not None]
        lines.append(
            f"| {v} | {np.mean([r['dice'] for r in sub]):.4f} | {dd:.4f} | "
            f"{np.mean([r['njd_percent'] for r in sub]):.4f} | {dn:.4f} | "
            f"{np.mean(njm) if njm else float('nan'):.4f} | "
            f"{max(r['max_abs_flow_diff_vox'] for r in sub):.3g} | {t:.2f} | {t / t_ref:.2f} | "
            f"{compile_s.get(v, 0.0):.0f} | {'pass' if passes else 'FAIL'} |"
        )
    text = "\n".join(lines) + "\n"
    (args.out / "precision_accuracy.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
