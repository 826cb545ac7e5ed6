"""Peak memory and time of ONE training step of a registered network, in a fresh process.

The process builds the model, runs one forward + backward of ``MSE(warped, fixed) +
mean(flow**2)`` on random inputs (batch 1) and prints the peak resident memory of the process
(VmHWM, which includes Python, torch and the weights) next to its resident memory right after
building the model (the baseline). Run it once per configuration, each in its own process:

    python benchmarks/train_memory.py --model corrmaxca --size 160x192x224 --checkpoint

Prints one line and appends a row to ``benchmarks/results/corrmaxca/train_memory.csv``.

``--saved-only`` runs the forward only and reports what autograd stores between forward and
backward (every saved tensor's storage counted once, the parameters excluded), in float32
values per voxel of the input ("channel-equivalents"): a quick way to compare checkpointing
schemes at a small size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import append_csv_row  # benchmarks/ is the script's folder

OUT = Path(__file__).resolve().parent / "results" / "corrmaxca" / "train_memory.csv"


def _status_gb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="corrmaxca")
    p.add_argument("--attention", default="maxca")
    p.add_argument("--size", default="160x192x224")
    p.add_argument("--checkpoint", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--granularity", default=None, help="corrmaxca checkpoint_granularity (stage or block)"
    )
    p.add_argument("--saved-only", action="store_true", help="count the stored activations")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from maxca.models import count_parameters, create_model

    torch.set_num_threads(args.threads)
    size = tuple(int(s) for s in args.size.split("x"))
    torch.manual_seed(0)
    extra = {} if args.granularity is None else {"checkpoint_granularity": args.granularity}
    model = create_model(
        args.model,
        spatial_dims=len(size),
        attention=args.attention,
        checkpoint=args.checkpoint,
        **extra,
    )
    fixed, moving = torch.rand(2, 1, 1, *size)
    if args.saved_only:
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            key = t.untyped_storage().data_ptr()
            if key not in params:
                seen[key] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(fixed, moving)
        voxels = fixed.numel()
        per_voxel = sum(seen.values()) / 4 / voxels
        print(
            f"model={args.model} size={args.size} checkpoint={args.checkpoint} "
            f"granularity={args.granularity} saved_gb={sum(seen.values()) / 1e9:.3f} "
            f"float32_values_per_voxel={per_voxel:.1f}"
        )
        return 0
    base = _status_gb("VmRSS")
    t0 = time.perf_counter()
    out = model(fixed, moving)
    t_fwd = time.perf_counter() - t0
    (F.mse_loss(out.warped, fixed) + out.flow.square().mean()).backward()
    t_step = time.perf_counter() - t0
    row = {
        "model": args.model,
        "attention": args.attention,
        "size": args.size,
        "checkpoint": args.checkpoint,
        "threads": args.threads,
        "params": count_parameters(model),
        "baseline_gb": round(base, 2),
        "peak_gb": round(_status_gb("VmHWM"), 2),
        "forward_s": round(t_fwd, 1),
        "step_s": round(t_step, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    append_csv_row(args.out, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
