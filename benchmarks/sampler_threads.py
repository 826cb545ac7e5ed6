"""Does splitting ``grid_sample`` into per-thread slabs pay off on CPU, and what does it save
in the packaged brain model?

``F.grid_sample`` on CPU parallelises over the batch only (torch 2.13), so one pair (batch 1)
is sampled on one thread. :func:`maxca.spatial.sample.grid_sample_cpu` samples ``k = threads``
slabs of the output grid as a batch of views of the image (same values, bit for bit). Side by
side, interleaved (round ``r`` runs every variant once), on ``--threads`` threads:

* ``warp``: :func:`maxca.spatial.warp` of a 3-channel 80x96x112 field by a smooth flow of a few
  voxels (what scaling and squaring does 14 times per brain pair), forward, and forward +
  backward (a training step's warp);
* ``network``: the packaged ``brain`` model's forward on a pair of brain-synth-2mm *training*
  subjects (real images), as ``previous`` (one ``grid_sample`` call, channel LayerNorm through
  ``Tensor.var``: the code before this script) and ``current``; the largest difference of the
  two flows is reported.

    python benchmarks/sampler_threads.py --threads 2 --repeats 7 \
        --out benchmarks/results/sampler_threads
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from _common import (
    BRAIN_2MM,
    REPO,
    atomic_write_text,
    interleaved_times,
    markdown_table,
    set_threads,
    write_csv,
)

COLUMNS = ["part", "pass", "variant", "threads", "median_s", "ratio", "repeats", "max_abs_diff"]


@contextlib.contextmanager
def previous_code(on: bool) -> Iterator[None]:
    """Within the block, the sampler and the channel LayerNorm as before this script."""
    import torch

    from maxca.models import _blocks
    from maxca.spatial import sample

    if not on:
        yield
        return

    def var_forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(
            shape
        )

    limit, forward = sample.SPLIT_MIN_POINTS, _blocks.ChannelLayerNorm.forward
    sample.SPLIT_MIN_POINTS = 2**62
    _blocks.ChannelLayerNorm.forward = var_forward
    try:
        yield
    finally:
        sample.SPLIT_MIN_POINTS, _blocks.ChannelLayerNorm.forward = limit, forward


def interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each callable (:func:`_common.interleaved_times`)."""
    return {k: statistics.median(v) for k, v in interleaved_times(runs, repeats).items()}


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.nn.functional as F

    from maxca.app import load_model
    from maxca.data.io import read_volume
    from maxca.inference.register import model_grid, model_input
    from maxca.models.preprocessing import Preprocessing
    from maxca.spatial import warp

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default=str(BRAIN_2MM))
    p.add_argument("--pair", default="0001,0006", help="two training subjects: fixed,moving")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=str(REPO / "benchmarks/results/sampler_threads"))
    args = p.parse_args(argv)
    if args.threads < 2 or args.repeats < 1:
        p.error("--threads must be >= 2 (one thread never splits) and --repeats >= 1")
    set_threads(args.threads)
    rows: list[dict] = []

    def record(part: str, pas: str, medians: dict[str, float], diff: float | None) -> None:
        for variant in ("previous", "current"):
            rows.append(
                {
                    "part": part,
                    "pass": pas,
                    "variant": variant,
                    "threads": args.threads,
                    "median_s": medians[variant],
                    "ratio": medians[variant] / medians["previous"],
                    "repeats": args.repeats,
                    "max_abs_diff": diff if variant == "current" else 0.0,
                }
            )

    gen = torch.Generator().manual_seed(0)
    shape = (80, 96, 112)
    field = torch.randn(1, 3, *shape, generator=gen)
    coarse = torch.randn(1, 3, 5, 6, 7, generator=gen) * 3.0
    flow = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)

    def forward(prev: bool) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with previous_code(prev), torch.no_grad():
                return warp(field, flow)

        return run

    def train(prev: bool) -> Callable[[], None]:
        def run() -> None:
            f, u = field.clone().requires_grad_(), flow.clone().requires_grad_()
            with previous_code(prev):
                warp(f, u).square().sum().backward()

        return run

    for pas, make in (("forward", forward), ("forward+backward", train)):
        med = interleaved({"previous": make(True), "current": make(False)}, args.repeats)
        diff = None
        if pas == "forward":
            diff = float((forward(True)() - forward(False)()).abs().max())
        record("warp", pas, med, diff)
        print(f"warp {pas}: {med['previous']:.3f} s -> {med['current']:.3f} s", flush=True)

    model, info = load_model("brain", "cpu")
    prep = Preprocessing.of(info)
    root = Path(args.dataset).parent
    fixed_id, moving_id = args.pair.split(",")
    vols = [
        read_volume(root / f"imagesTr/BRAIN_{s}_0000.nii.gz", "image")
        for s in (fixed_id, moving_id)
    ]
    grid = model_grid(vols[0], prep)
    fixed, moving = (model_input(v, grid, prep) for v in vols)

    def network(prev: bool) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with previous_code(prev), torch.no_grad():
                return model(fixed, moving).flow

        return run

    med = interleaved({"previous": network(True), "current": network(False)}, args.repeats)
    diff = float((network(True)() - network(False)()).abs().max())
    record("network", "forward", med, diff)
    print(f"network: {med['previous']:.3f} s -> {med['current']:.3f} s, flow diff {diff:.2e}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "sampler_threads.csv", rows, COLUMNS)
    table = markdown_table(
        ["part", "pass", "variant", "median s", "ratio", "max abs diff"],
        [
            [
                r["part"],
                r["pass"],
                r["variant"],
                f"{r['median_s']:.3f}",
                f"{r['ratio']:.2f}",
                r["max_abs_diff"],
            ]
            for r in rows
        ],
    )
    note = (
        f"{args.threads} threads, {args.repeats} interleaved repeats (median); network: brain "
        f"model, training pair {fixed_id} -> {moving_id}.\n\n"
    )
    atomic_write_text(out / "sampler_threads.md", note + table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
