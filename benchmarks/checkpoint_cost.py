"""Time cost of gradient checkpointing: one training step with and without, interleaved.

Builds the network twice with the same weights (``checkpoint=False`` / ``True``), warms both
up, then times training steps (forward + backward of ``MSE(warped, fixed) + mean(flow**2)``)
alternately, ``--repeats`` rounds, in one process. Prints the medians and their ratio and
appends a row to ``benchmarks/results/corrmaxca/checkpoint_cost.csv``.

    python benchmarks/checkpoint_cost.py --model corrmaxca --size 40x48x56
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _common import append_csv_row  # benchmarks/ is the script's folder

OUT = Path(__file__).resolve().parent / "results" / "corrmaxca" / "checkpoint_cost.csv"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="corrmaxca")
    p.add_argument("--size", default="40x48x56")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from maxca.models import create_model

    torch.set_num_threads(args.threads)
    size = tuple(int(s) for s in args.size.split("x"))
    torch.manual_seed(0)
    plain = create_model(args.model, spatial_dims=len(size))
    ckpt = create_model(args.model, spatial_dims=len(size), checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    fixed, moving = torch.rand(2, 1, 1, *size)

    def step(model: torch.nn.Module) -> float:
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = model(fixed, moving)
        (F.mse_loss(out.warped, fixed) + out.flow.square().mean()).backward()
        return time.perf_counter() - t0

    models = {"plain": plain, "checkpoint": ckpt}
    for m in models.values():
        step(m)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.repeats):
        for k, m in models.items():
            times[k].append(step(m))
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {
        "model": args.model,
        "size": args.size,
        "threads": args.threads,
        "plain_s": round(med["plain"], 3),
        "checkpoint_s": round(med["checkpoint"], 3),
        "ratio": round(med["checkpoint"] / med["plain"], 3),
        "repeats": args.repeats,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    append_csv_row(args.out, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
