"""What do the local-NCC window sums cost, as convolutions and as shifted additions?

:class:`maxca.losses.LocalNCC` sums five maps (``I, J, I^2, J^2, IJ``) over a box window at
every voxel. Until this script it did so with one ``conv3d`` per axis and a ``(w, 1, 1)``
kernel of ones (``previous``); on CPU the backward of such a convolution took about a second
for five 80x96x112 maps, a third of a ``--refine`` step. :func:`maxca.losses.box_sum`
(``current``) adds shifted views instead (``log2(w) + popcount(w)`` additions per axis).
Side by side, interleaved (round ``r`` runs both variants once), on ``--threads`` threads:

* ``box_sum``: the five-map window sum of an 80x96x112 pair, window 9: forward, and forward +
  backward;
* ``ncc``: the NCC loss of that pair, forward + backward;
* ``refine``: one ``--refine`` step of the packaged ``brain`` model (velocity update
  regularised, the model's refine settings) on a pair of brain-synth-2mm *training* subjects,
  median over ``--refine-steps`` steps per call;
* ``train``: a training step of the ``brain`` network on that pair (forward, NCC + diffusion,
  backward).

The largest difference between the variants' outputs is reported (sums, loss, the refined
flow in voxels, loss of the training step).

    python benchmarks/ncc_speed.py --threads 1 --repeats 5 --out benchmarks/results/ncc_speed
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


def conv_box_sum(x, window):  # noqa: ANN001, ANN201
    """Window sums by one convolution per axis with a kernel of ones (the code before)."""
    import torch
    import torch.nn.functional as F

    d = x.dim() - 2
    conv = F.conv2d if d == 2 else F.conv3d
    b, c = x.shape[:2]
    y = x.reshape(b * c, 1, *x.shape[2:])
    for axis, w in enumerate(window):
        if w == 1:
            continue
        shape = [1, 1] + [1] * d
        shape[2 + axis] = w
        padding = [0] * d
        padding[axis] = w // 2
        y = conv(y, torch.ones(shape, dtype=y.dtype, device=y.device), padding=tuple(padding))
    return y.reshape(x.shape)


@contextlib.contextmanager
def previous_code(on: bool) -> Iterator[None]:
    """Within the block, :class:`maxca.losses.LocalNCC` sums its windows by convolution."""
    from maxca.losses.similarity import LocalNCC

    if not on:
        yield
        return
    current = LocalNCC._box_sum
    LocalNCC._box_sum = lambda self, x: conv_box_sum(x, self.window)  # type: ignore[method-assign]
    try:
        yield
    finally:
        LocalNCC._box_sum = current  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    import torch

    from maxca.inference.refine import refine_flow
    from maxca.losses import LocalNCC, RegistrationLoss, box_sum
    from maxca.models.preprocessing import Preprocessing

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_timing_args(p, threads=1, repeats=5, out="benchmarks/results/ncc_speed")
    p.add_argument("--refine-steps", type=int, default=3, help="refine steps per timed call")
    args = p.parse_args(argv)
    if args.threads < 1 or args.repeats < 1 or args.refine_steps < 1:
        p.error("--threads, --repeats and --refine-steps must be >= 1")
    set_threads(args.threads)
    record = VariantRecorder(args.threads, args.repeats)

    model, info, fixed, moving = brain_model_pair(args.dataset, args.pair)
    fixed_id, moving_id = args.pair.split(",")
    window = (9, 9, 9)
    maps = torch.cat([fixed, moving, fixed * fixed, moving * moving, fixed * moving])
    maps = maps.reshape(5, 1, *fixed.shape[2:])
    sums = {"previous": lambda x: conv_box_sum(x, window), "current": lambda x: box_sum(x, window)}

    diff = float((sums["previous"](maps) - sums["current"](maps)).abs().max())
    med = interleaved_medians({k: (lambda f=f: f(maps)) for k, f in sums.items()}, args.repeats)
    record("box_sum", "forward", med, diff)

    def sum_train(f: Callable) -> Callable[[], None]:
        def run() -> None:
            x = maps.clone().requires_grad_()
            f(x).square().sum().backward()

        return run

    med = interleaved_medians({k: sum_train(f) for k, f in sums.items()}, args.repeats)
    record("box_sum", "forward+backward", med, diff)

    ncc = LocalNCC(3, window=9)

    def ncc_train(prev: bool) -> Callable[[], float]:
        def run() -> float:
            warped = moving.clone().requires_grad_()
            with previous_code(prev):
                loss = ncc(fixed, warped)
            loss.backward()
            return float(loss.detach())

        return run

    diff = abs(ncc_train(True)() - ncc_train(False)())
    med = interleaved_medians(
        {"previous": ncc_train(True), "current": ncc_train(False)}, args.repeats
    )
    record("ncc", "forward+backward", med, diff)

    with torch.no_grad():
        v0 = model(fixed, moving).velocity.float()
    options = {
        "regularise": "update",
        "lr": 0.05,
        "weights": {"similarity": 1.0, "diffusion": 1.0},
        **dict(Preprocessing.of(info).extra.get("refine") or {}),
        "window": 9,
        "int_steps": int(getattr(model.config, "int_steps", 7)),
    }

    def refine(prev: bool) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with previous_code(prev):
                return refine_flow(fixed, moving, v0, args.refine_steps, velocity=v0, **options)

        return run

    diff = float((refine(True)() - refine(False)()).abs().max())
    med = interleaved_medians({"previous": refine(True), "current": refine(False)}, args.repeats)
    med = {k: v / args.refine_steps for k, v in med.items()}
    record("refine", "one step", med, diff)

    loss_fn = RegistrationLoss(3, similarity="ncc", weights={"similarity": 1, "diffusion": 0.1})

    def train(prev: bool) -> Callable[[], float]:
        def run() -> float:
            model.zero_grad(set_to_none=True)
            out = model(fixed, moving)
            with previous_code(prev):
                loss, _ = loss_fn(fixed, out.warped, out.velocity)
            loss.backward()
            return float(loss.detach())

        return run

    model.train()
    diff = abs(train(True)() - train(False)())
    med = interleaved_medians({"previous": train(True), "current": train(False)}, args.repeats)
    record("train", "forward+backward", med, diff)
    model.zero_grad(set_to_none=True)

    note = (
        f"{args.threads} thread(s), {args.repeats} interleaved repeats (median); brain model, "
        f"training pair {fixed_id} -> {moving_id}, 80x96x112, NCC window 9; refine: seconds "
        f"per step over {args.refine_steps} steps."
    )
    table = write_variant_report(args.out, "ncc_speed", record.rows, note)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
