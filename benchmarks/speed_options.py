"""torch.compile and bf16 autocast side by side with plain fp32 eager, in one process.

For one target (the MAXCA block, or a registered network) the script builds every variant
(``eager`` / ``compiled`` x ``fp32`` / ``bf16``), warms each up (the compiled ones compile
here: minutes on 2 cores), then times them **interleaved** (round ``r`` runs every variant
once, in turn), for inference (``torch.no_grad``) and one training step (forward, loss
``MSE(out, target)``, backward). It reports the median time, the ratio to eager fp32 and the
largest difference of the output from eager fp32's (the flow for a network).

Usage::

    python benchmarks/speed_options.py --target block --size 80x96x112
    python benchmarks/speed_options.py --target corrmaxca --variants eager-fp32,eager-bf16
    python benchmarks/speed_options.py --target pyramid_small --size 80x96x112

Prints a table and appends to ``benchmarks/results/speed_options/speed_options.csv``. On a GPU
(the prepared check of issue #12, <= 8 minutes)::

    for t in corrmaxca pyramid_small; do python benchmarks/speed_options.py --device cuda \
        --target $t --size 160x192x224 --variants eager-fp32,eager-bf16; done
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "results" / "speed_options"
VARIANTS = ("eager-fp32", "eager-bf16", "compiled-fp32", "compiled-bf16")
COLUMNS = [
    "target",
    "size",
    "pass",
    "variant",
    "threads",
    "median_s",
    "ratio_to_eager_fp32",
    "max_abs_diff",
    "ref_abs_max",
    "warmup_s",
    "repeats",
    "date",
]


def _build(target: str, size: tuple[int, ...], device: str = "cpu") -> tuple[Any, Any, Any]:
    """``(model, run(model) -> output tensor, inputs)`` for ``target`` on ``device``."""
    import torch

    torch.manual_seed(0)
    d = len(size)
    if target == "block":
        from maxca.layers import MAXCA

        block = MAXCA(d, 32, heads=4, region=8).to(device)
        x = torch.randn(1, 32, *size, device=device)
        return block, lambda m: m(x), x
    from maxca.models import create_model

    model = create_model(target, spatial_dims=d, checkpoint=False).to(device)
    with torch.no_grad():  # visible flows (a fresh head predicts ~0): heads at std 1e-2
        for name, p in model.named_parameters():
            if ".head." in name and name.endswith("weight"):
                p.normal_(0.0, 1e-2)
    fixed, moving = torch.rand(2, 1, 1, *size, device=device)
    return model, lambda m: m(fixed, moving).flow, fixed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="block", help="block or a registered model name")
    p.add_argument("--size", default="80x96x112")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--passes", default="inference,train")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--out", type=Path, default=OUT / "speed_options.csv")
    args = p.parse_args(argv)

    import torch

    from maxca.accel import compile_model, cpu_has_bf16, precision_context

    torch.set_num_threads(args.threads)
    size = tuple(int(s) for s in args.size.split("x"))
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; expected some of {VARIANTS}")
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"avx512_bf16/amx: {cpu_has_bf16()}, threads {args.threads}",
        flush=True,
    )
    model, run, _ = _build(args.target, size, args.device)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    compiled = compile_model(model) if any(v.startswith("compiled") for v in variants) else None

    def step(variant: str, train: bool) -> tuple[float, Any]:
        m = compiled if variant.startswith("compiled") else model
        precision = variant.split("-")[1]
        model.train(train)
        sync()
        t0 = time.perf_counter()
        if train:
            model.zero_grad(set_to_none=True)
            with precision_context(precision, args.device):
                out = run(m)
            out.float().square().mean().backward()
        else:
            with torch.no_grad(), precision_context(precision, args.device):
                out = run(m)
        sync()
        return time.perf_counter() - t0, out.detach().float()

    rows = []
    for pass_ in [s for s in args.passes.split(",") if s]:
        train = pass_ == "train"
        warm, outs = {}, {}
        for v in variants:  # warm-up (and compilation) of every variant first
            t, outs[v] = step(v, train)
            warm[v] = t
            print(f"{pass_:>9} {v:>14}: warm-up {t:.1f} s", flush=True)
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.repeats):  # interleaved rounds
            for v in variants:
                times[v].append(step(v, train)[0])
        ref = outs.get("eager-fp32")
        base = statistics.median(times["eager-fp32"]) if "eager-fp32" in times else float("nan")
        for v in variants:
            med = statistics.median(times[v])
            diff = (outs[v] - ref).abs().max().item() if ref is not None else float("nan")
            rows.append(
                {
                    "target": args.target,
                    "size": args.size,
                    "pass": pass_,
                    "variant": v,
                    "threads": args.threads,
                    "median_s": round(med, 4),
                    "ratio_to_eager_fp32": round(med / base, 3),
                    "max_abs_diff": f"{diff:.3g}",
                    "ref_abs_max": f"{ref.abs().max().item():.3g}" if ref is not None else "",
                    "warmup_s": round(warm[v], 1),
                    "repeats": args.repeats,
                    "date": time.strftime("%Y-%m-%d"),
                }
            )
    print()
    print(" | ".join(COLUMNS[:9]))
    for r in rows:
        print(" | ".join(str(r[c]) for c in COLUMNS[:9]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new = not args.out.exists()
    with open(args.out, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerows(rows)
    print(f"\nappended {len(rows)} rows to {args.out.name}")
    print(json.dumps({"ok": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
