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

``--profile-peak`` runs the step under a live-bytes tracker (``benchmarks/_peak.py``) and
prints, per phase (forward, loss, backward), the peak of live tensor storage, the op at the
peak and the largest groups of storages alive then; it extrapolates the step's peak resident
memory to ``--extrapolate-to`` (default 160x192x224): ``baseline + scaled peak - params``
(``baseline``: the resident memory of the process after building the model, weights
included; the scaled peak counts every storage that grows with the volume times the voxel
ratio, see ``_peak.py``), and appends a row per phase to
``benchmarks/results/corrmaxca/peak_profile.csv``. ``--op-temporaries`` also measures what
each op allocates and frees inside itself (e.g. a convolution's copy of a channels-first
input into its own layout), which the tensor tracker cannot see, by resetting the process's
peak resident memory before each op (Linux ``/proc/self/clear_refs``). Measured real peaks
(VmHWM) of corrmaxca at 40x48x56 and 80x96x112 exceeded the extrapolation by a constant
~0.6 GB (process overhead that does not grow with the volume):

    python benchmarks/train_memory.py --size 40x48x56 --checkpoint --granularity fine \
        --profile-peak --op-temporaries
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import append_csv_row  # benchmarks/ is the script's folder

OUT = Path(__file__).resolve().parent / "results" / "corrmaxca" / "train_memory.csv"
PROFILE_OUT = OUT.with_name("peak_profile.csv")


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
    p.add_argument(
        "--profile-peak", action="store_true", help="profile live tensor bytes per phase"
    )
    p.add_argument("--extrapolate-to", default="160x192x224")
    p.add_argument("--verbose", action="store_true", help="also list the unscaled peak")
    p.add_argument(
        "--op-temporaries",
        action="store_true",
        help="with --profile-peak: also measure what each op allocates and frees inside itself",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = PROFILE_OUT if args.profile_peak else OUT

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
    if args.profile_peak:
        return _profile_peak(args, model, fixed, moving, size)
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
        "granularity": args.granularity,
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


def _loss(out, fixed):  # noqa: ANN001, ANN202 - the one loss of this script
    import torch.nn.functional as F

    return F.mse_loss(out.warped, fixed) + out.flow.square().mean()


def _profile_peak(args, model, fixed, moving, size) -> int:  # noqa: ANN001
    """One step under :class:`_peak.LiveBytes`; print per-phase peaks and the extrapolation."""
    import math

    from _peak import LiveBytes

    target = tuple(int(s) for s in args.extrapolate_to.split("x"))
    ratio = math.prod(target) / math.prod(size)
    base = _status_gb("VmRSS") * 1024**3
    unit = math.prod(n // 2 for n in size)  # voxels of the level-1 grid
    tracker = LiveBytes(model, ratio=ratio, unit=unit, rss=args.op_temporaries)
    tracker.add(fixed, moving)
    try:
        with tracker:
            tracker.set_phase("forward")
            out = model(fixed, moving)
            tracker.set_phase("loss")
            loss = _loss(out, fixed)
            del out
            tracker.set_phase("backward")
            loss.backward()
    finally:
        tracker.close()
    gb = 1e9
    label = f"granularity={args.granularity} checkpoint={args.checkpoint}"
    print(f"model={args.model} size={args.size} {label} baseline_rss_gb={base / gb:.2f}")
    worst = 0.0
    params = tracker_param_bytes(model)
    for phase, pk in tracker.peaks.items():
        extra = base + pk.scaled_peak - params  # the baseline holds the weights already
        worst = max(worst, extra)
        print(f"  {phase:8s} peak of live tensors {pk.peak / 1e6:9.1f} MB   at: {pk.at}")
        if args.verbose:
            for what, nbytes in pk.alive:
                print(f"      {nbytes / 1e6:9.1f} MB  {what}")
        print(
            f"  {phase:8s} scaled to {args.extrapolate_to}: {pk.scaled_peak / gb:.2f} GB of "
            f"tensors + {(base - params) / gb:.2f} GB process = {extra / gb:.2f} GB   "
            f"at: {pk.scaled_at}"
        )
        for what, nbytes in pk.scaled_alive:
            print(f"      {nbytes / 1e9:7.2f} GB  {what}")
        if args.op_temporaries:
            with_temp = base + pk.temp_scaled_peak - params
            worst = max(worst, with_temp)
            print(f"  {phase:8s} with op temporaries: {with_temp / gb:.2f} GB   at: {pk.temp_at}")
        row = {
            "model": args.model,
            "size": args.size,
            "checkpoint": args.checkpoint,
            "granularity": args.granularity,
            "phase": phase,
            "peak_mb": round(pk.peak / 1e6, 1),
            "scaled_tensors_gb": round(pk.scaled_peak / gb, 3),
            "baseline_gb": round(base / gb, 2),
            "extrapolate_to": args.extrapolate_to,
            "extrapolated_gb": round(extra / gb, 2),
            "with_op_temporaries_gb": (
                round((base + pk.temp_scaled_peak - params) / gb, 2) if args.op_temporaries else ""
            ),
            "at": pk.scaled_at,
            "date": time.strftime("%Y-%m-%d"),
        }
        append_csv_row(args.out, row)
    if args.op_temporaries:
        print("largest op temporaries (scaled):")
        for what, nbytes in tracker.temporaries.most_common(12):
            print(f"      {nbytes / 1e9:7.2f} GB  {what}")
    print(f"extrapolated step peak at {args.extrapolate_to}: {worst / gb:.2f} GB", flush=True)
    return 0


def tracker_param_bytes(model) -> int:  # noqa: ANN001
    """Bytes of the model's parameters (already in the baseline resident memory)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


if __name__ == "__main__":
    sys.exit(main())
