"""End-to-end registration time of one 1 mm brain pair: our hosts vs ANTs SyN (not a test).

One pair of ``../shared/data/brain-synth`` (160x192x224 at 1 mm; by default the first
``registration_val`` pair) is registered the way a user would:

* **ours**, per host, through the code path of ``maxca register``:
  :func:`maxca.inference.load_model` then :func:`maxca.inference.register_files` (read both
  images and the moving label map, normalise, resample onto the model grid, the network, the
  flow brought back onto the 1 mm grid, warp image and labels, write ``warped.nii.gz``,
  ``warped_labels.nii.gz``, ``flow_voxel.nii.gz``, ``disp_itk.nii.gz`` and
  ``registration.json``). The model is ``--model HOST=RUN_DIR`` when given, else a fresh
  untrained one (``create_model`` + ``save_checkpoint``) on a ``--grid`` model grid at
  ``--grid-spacing`` mm (default 80x96x112 at 2 mm, as the trained models). An untrained model
  costs the same time as a trained one. Timed ``--repeats`` times after one warm-up run
  (``first_s`` is the warm-up: a first registration in a fresh process). With ``--cli`` also
  ``maxca register`` in a fresh subprocess each time (Python start-up, imports and checkpoint
  loading included). On CPU and on CUDA when available (``--devices``).
* **ANTs** (when ANTsPy is installed), each ``--ants`` preset: read both images and the label
  map, ``ants.registration``, ``ants.apply_transforms`` for the image (linear) and the labels
  (``genericLabel``), write both (``reg_s`` = ``ants.registration`` alone). Timed
  ``--ants-repeats`` times (default 1: about a minute per run at 1 mm on 2 threads).

Dice after (the fixed vs the written warped labels, mean over the evaluation structures) is
reported as a sanity check only (untrained models leave it at the affine-only value).

Prints a table and writes ``speed.csv`` into ``--out`` (default ``benchmarks/results/speed/``).

Usage::

    python benchmarks/speed.py --threads 2
    python benchmarks/speed.py --model pyramid=runs/brain2mm --hosts pyramid --cli
    python benchmarks/speed.py --devices cuda --no-ants --repeats 5
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    ANTS_PRESETS,
    ATTENTIONS,
    BRAIN_1MM,
    HOSTS,
    RESULTS,
    display_path,
    evaluation_labels,
    fresh_checkpoint,
    import_ants,
    parse_names,
    set_threads,
    sync,
    text_table,
    validation_pairs,
    write_csv,
)

COLUMNS = [
    "method",
    "host",
    "attention",
    "model",
    "mode",
    "device",
    "threads",
    "params",
    "grid",
    "load_s",
    "first_s",
    "median_s",
    "min_s",
    "repeats",
    "network_s",
    "reg_s",
    "dice_before",
    "dice_after",
    "status",
    "machine",
]


def _parse_size(text: str) -> list[int]:
    try:
        size = [int(s) for s in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 80x96x112, got {text!r}") from None
    if len(size) != 3 or min(size) < 2:
        raise argparse.ArgumentTypeError(f"expected 3 sizes >= 2, got {text!r}")
    return size


def mean_dice(fixed: np.ndarray, warped: np.ndarray, labels: list[int] | None) -> float:
    """Mean Dice over ``labels`` (NaN labels skipped), :func:`maxca.metrics.dice`."""
    from maxca.metrics import dice

    values = [v for v in dice(fixed, warped, labels).values() if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _stats(times: list[float]) -> dict[str, Any]:
    rest = times[1:] if len(times) > 1 else times
    return {
        "first_s": times[0],
        "median_s": statistics.median(rest),
        "min_s": min(rest),
        "repeats": len(rest),
    }


def time_ours(
    ckpt: Path,
    device: str,
    pair: Any,
    labels: list[int] | None,
    workdir: Path,
    repeats: int,
) -> dict[str, Any]:
    """Load the model and register the pair ``1 + repeats`` times with ``register_files``."""
    from maxca.app import load_model, register_files
    from maxca.data import read_volume
    from maxca.models import count_parameters

    sync(device)
    t0 = time.perf_counter()
    model, info = load_model(ckpt, device)
    sync(device)
    load_s = time.perf_counter() - t0
    out_dir = workdir / "ours"
    times, network = [], []
    report = None
    for _ in range(1 + repeats):
        sync(device)
        t0 = time.perf_counter()
        report = register_files(
            model,
            info,
            pair.fixed,
            pair.moving,
            out_dir,
            moving_labels=pair.moving_label,
            device=device,
            overwrite=True,
        )
        sync(device)
        times.append(time.perf_counter() - t0)
        network.append(report.timings.get("network", math.nan))
    assert report is not None
    fixed_lab = read_volume(pair.fixed_label, "label").array
    warped = read_volume(out_dir / "warped_labels.nii.gz", "label").array
    return {
        **_stats(times),
        "load_s": load_s,
        "network_s": statistics.median(network[1:] or network),
        "params": count_parameters(model),
        "grid": "x".join(map(str, report.grid_shape)),
        "dice_after": mean_dice(fixed_lab, warped, labels),
    }


def time_cli(
    ckpt: Path, device: str, pair: Any, workdir: Path, repeats: int, threads: int | None
) -> dict[str, Any]:
    """``python -m maxca register`` in a fresh process, ``1 + repeats`` times."""
    out_dir = workdir / "cli"
    cmd = [
        sys.executable,
        "-m",
        "maxca",
        "register",
        "--model",
        str(ckpt),
        "--fixed",
        str(pair.fixed),
        "--moving",
        str(pair.moving),
        "--moving-labels",
        str(pair.moving_label),
        "--out",
        str(out_dir),
        "--overwrite",
        "--device",
        device,
    ]
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    times = []
    for _ in range(1 + repeats):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            raise RuntimeError(f"maxca register exited with {proc.returncode}: {last[0]}")
    return _stats(times)


def time_ants(
    ants: Any,
    preset: str,
    pair: Any,
    labels: list[int] | None,
    workdir: Path,
    repeats: int,
    seed: int,
) -> dict[str, Any]:
    """ANTs end to end (read, register, apply to image and labels, write), ``repeats`` times."""
    import inspect

    from maxca.data import read_volume

    kwargs = dict(ANTS_PRESETS[preset])
    if "random_seed" in inspect.signature(ants.registration).parameters:
        kwargs["random_seed"] = seed
    times, reg_times = [], []
    warped_labels = None
    for r in range(repeats):
        run = workdir / f"ants_{preset}_{r}"
        run.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        fixed = ants.image_read(str(pair.fixed))
        moving = ants.image_read(str(pair.moving))
        moving_label = ants.image_read(str(pair.moving_label))
        t_reg = time.perf_counter()
        reg = ants.registration(fixed, moving, outprefix=str(run / "reg_"), **kwargs)
        reg_times.append(time.perf_counter() - t_reg)
        warped = ants.apply_transforms(fixed, moving, transformlist=reg["fwdtransforms"])
        warped_labels = ants.apply_transforms(
            fixed, moving_label, transformlist=reg["fwdtransforms"], interpolator="genericLabel"
        )
        ants.image_write(warped, str(run / "warped.nii.gz"))
        ants.image_write(warped_labels, str(run / "warped_labels.nii.gz"))
        times.append(time.perf_counter() - t0)
    fixed_lab = read_volume(pair.fixed_label, "label").array
    assert warped_labels is not None
    dice_after = mean_dice(fixed_lab, np.rint(warped_labels.numpy()).astype(np.int64), labels)
    return {
        "first_s": times[0],
        "median_s": statistics.median(times),
        "min_s": min(times),
        "repeats": len(times),
        "reg_s": statistics.median(reg_times),
        "dice_after": dice_after,
    }


def machine(device: str) -> str:
    """A short description of the machine the row was measured on."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


HEADERS = [
    "method",
    "mode",
    "device",
    "threads",
    "params",
    "first s",
    "median s",
    "min s",
    "network s",
    "Dice after",
    "status",
]


def table_rows(rows: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """Rows of the printed table."""
    return [
        [
            r["method"],
            r.get("mode", ""),
            r.get("device", ""),
            r.get("threads", ""),
            f"{int(r['params']):,}" if isinstance(r.get("params"), int) else "-",
            r.get("first_s"),
            r.get("median_s"),
            r.get("min_s"),
            r.get("network_s", r.get("reg_s")),
            r.get("dice_after"),
            r.get("status", ""),
        ]
        for r in rows
    ]


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, default=BRAIN_1MM, help="Learn2Reg dataset.json")
    p.add_argument("--pair-index", type=int, default=0, help="which registration_val pair")
    p.add_argument("--hosts", default=",".join(HOSTS), help="comma-separated host networks")
    p.add_argument("--attention", default="maxca", help="attention of the fresh models")
    p.add_argument("--small", action="store_true", help="small widths for the fresh models")
    p.add_argument(
        "--model", action="append", default=[], help="HOST=RUN_DIR: a trained model for HOST"
    )
    p.add_argument("--grid", type=_parse_size, default=[80, 96, 112], help="fresh model grid")
    p.add_argument("--grid-spacing", type=float, default=2.0, help="fresh model grid mm")
    p.add_argument("--devices", default="cpu,cuda", help="cpu and/or cuda (cuda if available)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    p.add_argument("--cli", action="store_true", help="also time `maxca register` subprocesses")
    p.add_argument("--ants", default="SyN", help=f"ANTs presets from {list(ANTS_PRESETS)}")
    p.add_argument("--no-ants", action="store_true")
    p.add_argument("--ants-repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch and ITK)")
    p.add_argument("--out", type=Path, default=RESULTS / "speed")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Time every method; returns 1 when one failed, else 0."""
    import torch

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        hosts = parse_names(args.hosts, HOSTS, "hosts")
        parse_names(args.attention, (*ATTENTIONS, "global_sa"), "attention")
        devices = parse_names(args.devices, ("cpu", "cuda"), "devices")
    except ValueError as exc:
        parser.error(str(exc))
    presets = [] if args.no_ants else [s.strip() for s in args.ants.split(",") if s.strip()]
    if any(s not in ANTS_PRESETS for s in presets):
        parser.error(f"--ants: expected presets from {list(ANTS_PRESETS)}")
    if args.repeats < 1 or args.ants_repeats < 1:
        parser.error("--repeats and --ants-repeats must be >= 1")
    given: dict[str, Path] = {}
    for item in args.model:
        host, sep, path = item.partition("=")
        if not sep or host not in HOSTS:
            parser.error(f"--model must be HOST=RUN_DIR with HOST in {list(HOSTS)}, got {item!r}")
        given[host] = Path(path)
    set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    pairs = validation_pairs(args.data)
    if not 0 <= args.pair_index < len(pairs):
        parser.error(f"--pair-index must be in 0..{len(pairs) - 1}")
    pair = pairs[args.pair_index]
    labels = evaluation_labels(args.data)
    from maxca.data import read_volume
    from maxca.inference import warp_volume

    fixed_vol = read_volume(pair.fixed_label, "label")
    fixed_lab = fixed_vol.array
    zero = torch.zeros((1, fixed_vol.ndim, *fixed_lab.shape))
    moving_on_fixed = warp_volume(
        read_volume(pair.moving_label, "label"), zero, fixed_vol.affine, "label"
    )
    size = "x".join(map(str, fixed_lab.shape))
    dice_before = mean_dice(fixed_lab, moving_on_fixed[0, 0].numpy(), labels)
    print(f"pair {pair.name} ({size}) from {args.data}; Dice before {dice_before:.4f}")

    rows: list[dict[str, Any]] = []
    threads = args.threads if args.threads is not None else torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="maxca-speed-") as tmp_name:
        tmp = Path(tmp_name)
        for host in hosts:
            if host in given:
                ckpt, label = given[host], display_path(given[host])
            else:
                ckpt = fresh_checkpoint(
                    tmp / f"fresh-{host}",
                    host,
                    args.attention,
                    args.grid,
                    [args.grid_spacing] * 3,
                    small=args.small,
                    seed=args.seed,
                )
                label = f"fresh ({'small' if args.small else 'full'} widths)"
            for device in devices:
                base = {
                    "method": f"ours {host}",
                    "host": host,
                    "attention": args.attention if host not in given else "",
                    "model": label,
                    "device": device,
                    "threads": threads if device == "cpu" else "",
                    "dice_before": dice_before,
                    "machine": "",
                }
                if device == "cuda" and not torch.cuda.is_available():
                    rows.append({**base, "mode": "api", "status": "skipped: no CUDA"})
                    continue
                base["machine"] = machine(device)
                modes = ["api"] + (["cli"] if args.cli else [])
                for mode in modes:
                    print(f"{base['method']} ({mode}, {device}) ...", flush=True)
                    work = tmp / f"{host}-{device}-{mode}"
                    try:
                        if mode == "api":
                            res = time_ours(ckpt, device, pair, labels, work, args.repeats)
                        else:
                            res = time_cli(ckpt, device, pair, work, args.repeats, args.threads)
                        rows.append({**base, "mode": mode, **res, "status": "ok"})
                    except Exception as exc:  # one failing method must not stop the others
                        text = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
                        print(f"  failed: {text}")
                        rows.append({**base, "mode": mode, "status": f"error: {text}"})
                    finally:
                        shutil.rmtree(work, ignore_errors=True)
                    r = rows[-1]
                    if r["status"] == "ok":
                        print(f"  median {r['median_s']:.2f} s (first {r['first_s']:.2f} s)")
        if presets:
            ants = import_ants(args.threads)
            for preset in presets:
                base = {
                    "method": f"ANTs {preset}",
                    "mode": "antspy",
                    "device": "cpu",
                    "threads": os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", ""),
                    "dice_before": dice_before,
                    "machine": machine("cpu"),
                }
                if ants is None:
                    rows.append({**base, "status": "skipped: ANTsPy not installed"})
                    continue
                print(f"{base['method']} ...", flush=True)
                try:
                    res = time_ants(
                        ants, preset, pair, labels, tmp / "ants", args.ants_repeats, args.seed
                    )
                    rows.append({**base, **res, "status": "ok"})
                    print(f"  median {res['median_s']:.2f} s")
                except Exception as exc:
                    text = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
                    print(f"  failed: {text}")
                    rows.append({**base, "status": f"error: {text}"})

    print()
    print(text_table(HEADERS, table_rows(rows)))
    csv_path = write_csv(args.out / "speed.csv", rows, COLUMNS)
    print(f"\nwrote {csv_path}")
    return 1 if any(str(r["status"]).startswith("error") for r in rows) else 0


if __name__ == "__main__":
    from maxca.runtime import tune_cpu_allocator

    tune_cpu_allocator()  # as the maxca entry points do (training and registration)
    sys.exit(main())
