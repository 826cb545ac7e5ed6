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
import sys
from collections.abc import Callable, Iterator

from _common import (
    VariantRecorder,
    add_timing_args,
    brain_model_pair,
    interleaved_medians,
    set_threads,
    write_variant_report,
)


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


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.nn.functional as F

    from maxca.spatial import warp

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_timing_args(p, threads=2, repeats=7, out="benchmarks/results/sampler_threads")
    args = p.parse_args(argv)
    if args.threads < 2 or args.repeats < 1:
        p.error("--threads must be >= 2 (one thread never splits) and --repeats >= 1")
    set_threads(args.threads)
    record = VariantRecorder(args.threads, args.repeats, verbose=False)

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
        med = interleaved_medians({"previous": make(True), "current": make(False)}, args.repeats)
        diff = None
        if pas == "forward":
            diff = float((forward(True)() - forward(False)()).abs().max())
        record("warp", pas, med, diff)
        print(f"warp {pas}: {med['previous']:.3f} s -> {med['current']:.3f} s", flush=True)

    model, info, fixed, moving = brain_model_pair(args.dataset, args.pair)
    fixed_id, moving_id = args.pair.split(",")

    def network(prev: bool) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with previous_code(prev), torch.no_grad():
                return model(fixed, moving).flow

        return run

    med = interleaved_medians({"previous": network(True), "current": network(False)}, args.repeats)
    diff = float((network(True)() - network(False)()).abs().max())
    record("network", "forward", med, diff)
    print(f"network: {med['previous']:.3f} s -> {med['current']:.3f} s, flow diff {diff:.2e}")

    note = (
        f"{args.threads} threads, {args.repeats} interleaved repeats (median); network: brain "
        f"model, training pair {fixed_id} -> {moving_id}."
    )
    table = write_variant_report(args.out, "sampler_threads", record.rows, note)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
