"""Time cost of gradient checkpointing: one training step with and without, interleaved.

Builds the network with the same weights without checkpointing and with ``checkpoint=True``
(for ``corrmaxca`` once per ``--granularities`` entry), warms each up, then times training
steps (forward + backward of ``MSE(warped, fixed) + mean(flow**2)``) alternately,
``--repeats`` rounds, in one process. Prints the medians and their ratios to the plain step
and appends one row per checkpointed variant to
``benchmarks/results/corrmaxca/checkpoint_cost.csv`` (with ``--granularities``:
``checkpoint_cost_granularity.csv``, which has a granularity column).

    python benchmarks/checkpoint_cost.py --model corrmaxca --size 40x48x56 \
        --granularities block,stage,fine
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _common import append_csv_row  # benchmarks/ is the script's folder

OUT = Path(__file__).resolve().parent / "results" / "corrmaxca" / "checkpoint_cost.csv"
GRAN_OUT = "checkpoint_cost_granularity.csv"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="corrmaxca")
    p.add_argument("--size", default="40x48x56")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--granularities",
        default=None,
        help="comma-separated corrmaxca checkpoint_granularity values (default: the model's)",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.out is None:  # rows with a granularity column go to their own file
        args.out = OUT if args.granularities is None else OUT.with_name(GRAN_OUT)

    import torch
    import torch.nn.functional as F

    from maxca.models import create_model

    torch.set_num_threads(args.threads)
    size = tuple(int(s) for s in args.size.split("x"))
    torch.manual_seed(0)
    plain = create_model(args.model, spatial_dims=len(size))
    models = {"plain": plain}
    grans = [None] if args.granularities is None else args.granularities.split(",")
    for g in grans:
        extra = {} if g is None else {"checkpoint_granularity": g}
        m = create_model(args.model, spatial_dims=len(size), checkpoint=True, **extra)
        m.load_state_dict(plain.state_dict())
        models["checkpoint" if g is None else g] = m
    fixed, moving = torch.rand(2, 1, 1, *size)

    def step(model: torch.nn.Module) -> float:
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = model(fixed, moving)
        (F.mse_loss(out.warped, fixed) + out.flow.square().mean()).backward()
        return time.perf_counter() - t0

    for m in models.values():
        step(m)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.repeats):
        for k, m in models.items():
            times[k].append(step(m))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in models:
        if k == "plain":
            continue
        row = {
            "model": args.model,
            "size": args.size,
            "threads": args.threads,
            **({} if args.granularities is None else {"granularity": k}),
            "plain_s": round(med["plain"], 3),
            "checkpoint_s": round(med[k], 3),
            "ratio": round(med[k] / med["plain"], 3),
            "repeats": args.repeats,
            "date": time.strftime("%Y-%m-%d"),
        }
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        append_csv_row(args.out, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
