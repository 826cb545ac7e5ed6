"""Does the channels-last memory layout speed up training on the CPU?

oneDNN, which runs PyTorch's CPU convolutions, works on tensors whose channels are innermost;
given the default (contiguous, channels outermost) layout it reorders inputs, weights and
gradients around every convolution. ``ExperimentConfig.memory_format`` (``auto`` =
channels-last on the CPU) lays the network's weights and input images out channels-last
instead (:func:`maxca.accel.to_memory_format`). This script times both layouts side by side,
interleaved (round ``r`` runs both once), on ``--threads`` threads:

* ``train``: one training step (forward, local NCC + diffusion, backward, Adam) of each host
  (``--hosts``, ``--small`` widths as in the ablation, MAXCA attention) on a brain-synth-2mm
  pair of *training* subjects: 3-D at 80x96x112 and, with ``--two-d``, 2-D on the middle
  axial slice (80x96);
* ``register``: the packaged ``brain`` model's forward pass (no gradient) on that pair.

``previous`` is the contiguous layout, ``current`` channels-last; ``max abs diff`` is the
largest difference of the two layouts' losses (``train``) or flows in voxels (``register``):
the values are the same to float rounding, only the strides differ.

    python benchmarks/memory_format.py --threads 1 --repeats 3 \\
        --out benchmarks/results/memory_format
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable

from _common import (
    VariantRecorder,
    add_timing_args,
    brain_model_pair,
    interleaved_medians,
    parse_names,
    set_threads,
    write_variant_report,
)
from ablation import ablation_host_options

LAYOUTS = {"previous": "contiguous", "current": "channels_last"}


def train_step(host: str, fixed, moving, layout: str) -> Callable[[], float]:  # noqa: ANN001
    """One training step of a fresh ``host`` network (seed 0, ``--small`` widths, MAXCA) on
    ``fixed``/``moving`` ``(1, 1, *S)`` in the memory layout ``layout``; returns the loss."""
    import torch

    from maxca.accel import to_memory_format
    from maxca.losses import RegistrationLoss
    from maxca.models import create_model

    d = fixed.dim() - 2
    torch.manual_seed(0)
    model = create_model(host, spatial_dims=d, **ablation_host_options(host, small=True))
    to_memory_format(model, layout)
    loss_fn = RegistrationLoss(d, similarity="ncc", weights={"similarity": 1, "diffusion": 1})
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    f, m = to_memory_format(fixed, layout), to_memory_format(moving, layout)

    def run() -> float:
        opt.zero_grad(set_to_none=True)
        out = model(f, m)
        loss, _ = loss_fn(f, out.warped, out.flow)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return run


def main(argv: list[str] | None = None) -> int:
    import torch

    from maxca.accel import to_memory_format

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_timing_args(p, threads=1, repeats=3, out="benchmarks/results/memory_format")
    p.add_argument("--hosts", default="pyramid,unet,corrmaxca")
    p.add_argument("--two-d", action="store_true", help="also time the 2-D hosts")
    args = p.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        p.error("--threads and --repeats must be >= 1")
    hosts = parse_names(args.hosts, ("pyramid", "unet", "corrmaxca"), "host")
    set_threads(args.threads)
    record = VariantRecorder(args.threads, args.repeats)

    brain, _, fixed3, moving3 = brain_model_pair(args.dataset, args.pair)
    images = {"3d": (fixed3, moving3)}
    if args.two_d:
        mid = fixed3.shape[-1] // 2
        images["2d"] = (fixed3[..., mid].contiguous(), moving3[..., mid].contiguous())

    for setting, (fixed, moving) in images.items():
        for host in hosts:
            runs = {k: train_step(host, fixed, moving, layout) for k, layout in LAYOUTS.items()}
            # the first step of fresh, equal models: the same loss to float rounding
            diff = abs(runs["previous"]() - runs["current"]())
            med = interleaved_medians(runs, args.repeats)
            record(f"train {host}", f"{setting} step", med, diff)

    brain.eval()
    fixed, moving = images["3d"]

    def forward(layout: str) -> Callable[[], torch.Tensor]:
        model = to_memory_format(copy.deepcopy(brain), layout)
        f, m = to_memory_format(fixed, layout), to_memory_format(moving, layout)

        def run() -> torch.Tensor:
            with torch.no_grad():
                return model(f, m).flow

        return run

    runs = {k: forward(layout) for k, layout in LAYOUTS.items()}
    diff = float((runs["previous"]() - runs["current"]()).abs().max())
    med = interleaved_medians(runs, args.repeats)
    record("register brain", "3d forward", med, diff)

    fixed_id, moving_id = args.pair.split(",")
    note = (
        f"{args.threads} thread(s), {args.repeats} interleaved repeats (median); previous = "
        f"contiguous layout, current = channels-last; training pair {fixed_id} -> {moving_id} "
        "of brain-synth-2mm (80x96x112; 2-D: middle axial slice), --small widths, MAXCA "
        "attention, NCC window 9 + diffusion, Adam."
    )
    table = write_variant_report(args.out, "memory_format", record.rows, note)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
