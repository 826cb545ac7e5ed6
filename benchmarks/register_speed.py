"""End-to-end time of one 1 mm registration against the network's own time (not a test).

Issue 15 target: one 1 mm pair (``../shared/data/brain-synth``, 160x192x224) end to end with the
default outputs in at most twice the network's own time on 2 threads. Two ways of writing the
results are timed side by side, alternating, in one process:

* ``before``: what ``maxca register`` did before issue 15: Dice before from the moving labels
  resampled onto the fixed grid by the identity, ``flow_voxel.nii.gz`` through
  :func:`maxca.inference.export.write_voxel_flow` (float32, zlib level 1) and ``disp_itk.nii.gz``
  through :func:`maxca.inference.export.write_itk_displacement` (float64, SimpleITK's default
  compression), one after the other;
* ``after``: :func:`maxca.app.registration.register_files` with the default outputs as it is
  now (float32 fields stored uncompressed inside ``.nii.gz``, written in a second thread while
  the images are written; the identity resampling skipped when both images share a grid);
* ``after-compress``: the same with ``compress=True`` (``--compress``).

Each run reads the four files, registers (normalise, resample onto the model grid, network,
flow back onto the 1 mm grid, warp image and labels), scores (Dice before/after, folding,
SDlogJ) and writes warped image, warped labels, voxel flow, ITK field, metrics.json and
registration.json. ``network_s`` is the network's forward pass alone as timed inside the same
run. The model is a fresh, untrained ``pyramid_small`` (MAXCA attention) saved with
``save_checkpoint`` on an 80x96x112 grid at 2 mm (the trained 2 mm models' grid): an untrained
network costs the same time as a trained one.

Prints a table and writes ``register_speed.csv`` into ``--out`` (default
``benchmarks/results/register_speed/``).

Usage::

    python benchmarks/register_speed.py --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from maxca.app.registration import (  # noqa: E402
    _inputs_record,
    _read_inputs,
    load_model,
    register_files,
)
from maxca.inference._output import OutputDir  # noqa: E402
from maxca.inference.export import write_itk_displacement, write_voxel_flow  # noqa: E402
from maxca.inference.register import register_pair  # noqa: E402
from maxca.metrics import dice, evaluate_pair  # noqa: E402
from maxca.models import create_model  # noqa: E402
from maxca.models.checkpoint import save_checkpoint  # noqa: E402

DATA = _common.SHARED_DATA / "brain-synth"


def register_before(model: Any, info: Any, pair: dict[str, Path], out: Path) -> dict[str, float]:
    """The writing and scoring of ``maxca register`` before issue 15 (see the module docstring)."""
    import json

    from maxca.data.io import write_volume

    t0 = time.perf_counter()
    f, m, fl, ml = _read_inputs(
        pair["fixed"], pair["moving"], pair["fixed_labels"], pair["moving_labels"], 3
    )
    result = register_pair(model, info, f, m, ml, fl, "cpu")
    labels = sorted(int(v) for v in np.unique(fl.array) if v)
    before = dice(fl.array, result.moving_on_fixed_grid("label"), labels)
    scores = evaluate_pair(
        fl.array, result.warped_labels.array, result.flow, f.spacing, labels, with_hd95=False
    )
    metrics = {
        "dice_before": float(np.nanmean(list(before.values()))),
        "dice_after": scores.dice_mean,
    }
    with OutputDir(out, False) as tmp:
        write_volume(tmp / "warped.nii.gz", result.warped.array, f.affine, like=f)
        write_volume(
            tmp / "warped_labels.nii.gz",
            result.warped_labels.array,
            f.affine,
            like=f,
            dtype=result.warped_labels.array.dtype,
        )
        write_voxel_flow(tmp / "flow_voxel.nii.gz", result.flow, f)
        write_itk_displacement(tmp / "disp_itk.nii.gz", result.flow, f.affine)
        (tmp / "metrics.json").write_text(json.dumps(metrics))
        (tmp / "registration.json").write_text(json.dumps({"inputs": _inputs_record(pair)}))
    return {"total_s": time.perf_counter() - t0, "network_s": result.timings["network"]}


def register_after(
    model: Any, info: Any, pair: dict[str, Path], out: Path, compress: bool
) -> dict[str, float]:
    t0 = time.perf_counter()
    report = register_files(
        model,
        info,
        pair["fixed"],
        pair["moving"],
        out,
        moving_labels=pair["moving_labels"],
        fixed_labels=pair["fixed_labels"],
        device="cpu",
        compress=compress,
        max_memory_gb=1000.0,  # timing only: never refused on a busy machine
    )
    return {"total_s": time.perf_counter() - t0, "network_s": report.timings["network"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant")
    parser.add_argument("--out", type=Path, default=_common.RESULTS / "register_speed")
    args = parser.parse_args(argv)
    _common.set_threads(args.threads)
    if not (DATA / "dataset.json").is_file():
        print(f"needs ../shared/data/brain-synth ({DATA} not found)", file=sys.stderr)
        return 2
    pair = {
        "fixed": DATA / "imagesTr/BRAIN_0014_0000.nii.gz",
        "moving": DATA / "imagesTr/BRAIN_0013_0000.nii.gz",
        "fixed_labels": DATA / "labelsTr/BRAIN_0014_0000.nii.gz",
        "moving_labels": DATA / "labelsTr/BRAIN_0013_0000.nii.gz",
    }
    work = Path(tempfile.mkdtemp(prefix="maxca-register-speed-"))
    try:
        torch.manual_seed(0)
        net = create_model("pyramid_small", spatial_dims=3, attention="maxca")
        data = {"shape": [80, 96, 112], "spacing": [2.0, 2.0, 2.0], "normalise": "minmax"}
        ckpt = save_checkpoint(work / "ckpt", net, data=data)
        model, info = load_model(ckpt, "cpu")
        variants = {
            "before": lambda out: register_before(model, info, pair, out),
            "after": lambda out: register_after(model, info, pair, out, False),
            "after-compress": lambda out: register_after(model, info, pair, out, True),
        }
        variants["after"](work / "warmup")  # first-call costs (allocator, imports)
        times: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
        for r in range(args.repeats):
            for name, run in variants.items():  # alternating: same load for all variants
                out = work / f"{name}-{r}"
                times[name].append(run(out))
                sizes = sum(p.stat().st_size for p in out.iterdir()) / 2**20
                times[name][-1]["output_mb"] = sizes
                shutil.rmtree(out)
                t = times[name][-1]
                print(
                    f"  {name:15s} run {r + 1}: total {t['total_s']:.2f} s, network "
                    f"{t['network_s']:.2f} s, ratio {t['total_s'] / t['network_s']:.2f}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for name, runs in times.items():
        total = statistics.median(t["total_s"] for t in runs)
        network = statistics.median(t["network_s"] for t in runs)
        ratios = [t["total_s"] / t["network_s"] for t in runs]
        rows.append(
            {
                "variant": name,
                "repeats": len(runs),
                "total_s": round(total, 3),
                "network_s": round(network, 3),
                "ratio_median": round(statistics.median(ratios), 3),
                "ratio_min": round(min(ratios), 3),
                "ratio_max": round(max(ratios), 3),
                "output_mb": round(statistics.median(t["output_mb"] for t in runs), 1),
                "threads": args.threads,
                "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(),
            }
        )
    headers = ["variant", "total_s", "network_s", "ratio_median", "ratio_min", "ratio_max",
               "output_mb"]  # fmt: skip
    print(_common.text_table(headers, [[r[h] for h in headers] for r in rows]))
    args.out.mkdir(parents=True, exist_ok=True)
    _common.write_csv(args.out / "register_speed.csv", rows, list(rows[0]))
    print(f"wrote {args.out / 'register_speed.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
