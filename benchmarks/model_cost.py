"""Cost of every registration host x attention kind: parameters, time and peak memory.

For each (model, attention, size) cell the script starts two fresh Python processes, one for
the forward pass (``torch.no_grad``) and one for a training step (forward + backward of
``MSE(warped, fixed) + mean(flow**2)``), so that each process's peak resident memory
(``getrusage(RUSAGE_SELF).ru_maxrss``, including the interpreter and torch, as in
/work/shared/docs/ANCHORS.md) belongs to that measurement alone. On CUDA the peak is
``torch.cuda.max_memory_allocated``. Times are medians over ``--repeats`` runs after one
warm-up, batch 1, fp32.

Usage (the defaults are the real thing: 2 sizes x 4 models x 5 attentions, long)::

    python benchmarks/model_cost.py
    python benchmarks/model_cost.py --sizes 16x16x16 --repeats 1          # smoke run
    python benchmarks/model_cost.py --models pyramid_small --attentions maxca,none \
        --sizes 80x96x112 --authors-config

Prints a table, writes ``benchmarks/results/model_cost.csv`` and ``model_cost.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_SIZES = "80x96x112,160x192x224"
COLUMNS = [
    "model",
    "label",
    "attention",
    "size",
    "checkpoint",
    "device",
    "threads",
    "params",
    "fwd_s",
    "fwd_bwd_s",
    "peak_fwd_gb",
    "peak_fwd_bwd_gb",
    "attention_levels_run",
    "status",
]


# ---------------------------------------------------------------------------------------------
# worker: one measurement in a fresh process, result printed as one JSON line
# ---------------------------------------------------------------------------------------------
def _peak_gb(device: str) -> float:
    import resource

    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the model, run ``spec["mode"]`` ("forward" or "train") and return the numbers."""
    import torch
    import torch.nn.functional as F

    from maxca.models import count_parameters, create_model

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    size = tuple(spec["size"])
    model = create_model(
        spec["model"], spatial_dims=len(size), attention=spec["attention"], **spec["overrides"]
    ).to(device)
    fixed = torch.rand((1, 1) + size, device=device)
    moving = torch.rand((1, 1) + size, device=device)
    plan = model.attention_plan(size)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def forward() -> None:
        with torch.no_grad():
            model(fixed, moving)

    def train() -> None:
        model.zero_grad(set_to_none=True)
        out = model(fixed, moving)
        loss = F.mse_loss(out.warped, fixed) + out.flow.square().mean()
        loss.backward()

    step = forward if spec["mode"] == "forward" else train
    model.train(spec["mode"] == "train")
    times = []
    repeats = spec["repeats"]
    for i in range(repeats + 1 if repeats > 0 else 1):
        sync()
        start = time.perf_counter()
        step()
        sync()
        if i > 0 or repeats == 0:  # the first run is the warm-up (unless it is the only one)
            times.append(time.perf_counter() - start)
    return {
        "params": count_parameters(model),
        "seconds": statistics.median(times),
        "peak_gb": _peak_gb(spec["device"]),
        "attention_levels_run": [lv for lv, runs in plan.items() if runs],
    }


def run_cell(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run :func:`worker` in a fresh process; failures come back as ``{"status": ...}``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout>{timeout:g}s"}
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        if proc.returncode < 0:
            last = f"killed by signal {-proc.returncode} (out of memory?)"
        return {"status": "error: " + last[:200]}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "status": "ok"}


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, ...]:
    """``"80x96x112"`` -> ``(80, 96, 112)`` (2 or 3 positive integers)."""
    try:
        size = tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 80x96x112, got {text!r}") from None
    if len(size) not in (2, 3) or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected 2 or 3 positive sizes, got {text!r}")
    return size


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print ``rows`` as a fixed-width table."""
    cols = [
        ("label", "model"),
        ("attention", "attention"),
        ("size", "size"),
        ("params", "params"),
        ("fwd_s", "fwd s"),
        ("fwd_bwd_s", "fwd+bwd s"),
        ("peak_fwd_gb", "peak GB fwd"),
        ("peak_fwd_bwd_gb", "peak GB fwd+bwd"),
        ("attention_levels_run", "attn levels"),
        ("status", "status"),
    ]
    cells = [[_fmt(r.get(k)) for k, _ in cols] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h) in enumerate(cols)]
    print("  ".join(h.ljust(w) for (_, h), w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Bar chart of training-step time per (model, attention) and a time-memory scatter, one
    row of panels per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(dict.fromkeys(r["size"] for r in rows))
    fig, axes = plt.subplots(len(sizes), 2, figsize=(13, 4.2 * len(sizes)), squeeze=False)
    for (bar_ax, dot_ax), size in zip(axes, sizes):
        sub = [r for r in rows if r["size"] == size]
        labels = list(dict.fromkeys(r["label"] for r in sub))
        kinds = list(dict.fromkeys(r["attention"] for r in sub))
        width = 0.8 / max(1, len(kinds))
        for j, kind in enumerate(kinds):
            xs, ys = [], []
            for i, label in enumerate(labels):
                match = [r for r in sub if r["label"] == label and r["attention"] == kind]
                if match and isinstance(match[0].get("fwd_bwd_s"), float):
                    xs.append(i + (j - (len(kinds) - 1) / 2) * width)
                    ys.append(match[0]["fwd_bwd_s"])
            bar_ax.bar(xs, ys, width=width, label=kind)
            pts = [
                (r["peak_fwd_bwd_gb"], r["fwd_bwd_s"])
                for r in sub
                if r["attention"] == kind and isinstance(r.get("fwd_bwd_s"), float)
            ]
            if pts:
                dot_ax.scatter(*zip(*pts), label=kind)
        bar_ax.set_xticks(range(len(labels)), labels, rotation=15)
        bar_ax.set_ylabel("forward + backward (s)")
        bar_ax.set_yscale("log")
        bar_ax.set_title(f"training step at {size}")
        bar_ax.legend(fontsize=8)
        dot_ax.set_xlabel("peak memory, forward + backward (GB)")
        dot_ax.set_ylabel("forward + backward (s)")
        dot_ax.set_xscale("log")
        dot_ax.set_yscale("log")
        dot_ax.set_title(f"time vs memory at {size}")
        dot_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from maxca.layers.attention import ATTENTION_KINDS
    from maxca.models import list_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated, e.g. 80x96x112")
    parser.add_argument("--models", default=",".join(list_models()), help="comma-separated")
    parser.add_argument("--attentions", default=",".join(ATTENTION_KINDS), help="comma-separated")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs after one warm-up; 0 = one run, timed, no warm-up (memory checks)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--checkpoint", action="store_true", help="gradient checkpointing")
    parser.add_argument(
        "--authors-config",
        action="store_true",
        help="add a row for the pyramid at enc 16 / dec 32 (MAXCA at every level) with gradient "
        "checkpointing (our lighter pyramid, not the paper's network: that is corrmaxca)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per process")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "model_cost.csv")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--forward-only", action="store_true", help="skip the training step")
    parser.add_argument("--train-only", action="store_true", help="skip the forward pass")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    models = [m for m in args.models.split(",") if m]
    kinds = [k for k in args.attentions.split(",") if k]
    for m in models:
        if m not in list_models():
            parser.error(f"unknown model {m!r}; expected some of {list_models()}")
    for k in kinds:
        if k not in ATTENTION_KINDS:
            parser.error(f"unknown attention {k!r}; expected some of {list(ATTENTION_KINDS)}")

    cells = []  # (model, label, attention, overrides)
    for m in models:
        for k in kinds:
            cells.append((m, m, k, {"checkpoint": args.checkpoint}))
    if args.authors_config:
        overrides = {"enc_channels": 16, "dec_channels": 32, "checkpoint": True}
        cells.append(("pyramid", "pyramid (enc 16/dec 32, ckpt)", "maxca", overrides))

    rows = []
    for size in sizes:
        for model, label, kind, overrides in cells:
            spec = {
                "model": model,
                "attention": kind,
                "size": list(size),
                "overrides": overrides,
                "threads": args.threads,
                "device": args.device,
                "repeats": max(0, args.repeats),
            }
            fwd = (
                {"status": "ok"}
                if args.train_only
                else run_cell({**spec, "mode": "forward"}, args.timeout)
            )
            train = (
                {"status": "ok"}
                if args.forward_only
                else run_cell({**spec, "mode": "train"}, args.timeout)
            )
            status = fwd["status"] if fwd["status"] != "ok" else train["status"]
            row = {
                "model": model,
                "label": label,
                "attention": kind,
                "size": "x".join(map(str, size)),
                "checkpoint": overrides.get("checkpoint", False),
                "device": args.device,
                "threads": args.threads,
                "params": fwd.get("params", train.get("params")),
                "fwd_s": fwd.get("seconds"),
                "fwd_bwd_s": train.get("seconds"),
                "peak_fwd_gb": fwd.get("peak_gb"),
                "peak_fwd_bwd_gb": train.get("peak_gb"),
                "attention_levels_run": " ".join(
                    map(str, fwd.get("attention_levels_run", train.get("attention_levels_run", [])))
                ),
                "status": status,
            }
            rows.append(row)
            print(
                f"{label:>24} {kind:>9} {row['size']:>12}: fwd {_fmt(row['fwd_s'])} s, "
                f"fwd+bwd {_fmt(row['fwd_bwd_s'])} s, peak {_fmt(row['peak_fwd_bwd_gb'])} GB "
                f"[{status}]",
                flush=True,
            )

    print()
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {args.out}")
    if not args.no_plot and not args.forward_only and not args.train_only:
        png = args.out.with_suffix(".png")
        plot(rows, png)
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
