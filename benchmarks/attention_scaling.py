"""Time and peak memory of every attention kind versus spatial size (not a test).

Each cell (kind, channels, size, pass) runs in a fresh subprocess so that its peak resident
memory (``ru_maxrss``) is its own; the parent prints a table and writes a CSV and a log-log PNG.
A second part measures, in one process, the MAXCA block against the convolutions and linear
layers it contains run alone on the same input, and profiles where the rest of the time goes.

Usage::

    python benchmarks/attention_scaling.py                 # the full table (slow: ~1 h on 2 cores)
    python benchmarks/attention_scaling.py --quick         # small sizes only
    python benchmarks/attention_scaling.py --ratio-only    # MAXCA vs its convs + profile
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SIZES_3D = ["8x8x8", "16x16x16", "20x24x28", "40x48x56", "80x96x112", "160x192x224"]
GLOBAL_SA_SIZES = ["8x8x8", "12x12x12", "16x16x16", "20x20x20", "24x24x24", "32x32x32"]


def _parse(size: str) -> tuple[int, ...]:
    return tuple(int(s) for s in size.split("x"))


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it restarts at exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_cell(
    kind: str,
    channels: int,
    size: str,
    backward: bool,
    repeats: int,
    threads: int,
    heads: int,
    region: int,
) -> dict:
    """Child process body: build one block, time it, report peak RSS (MB) as JSON."""
    import torch

    from maxca.layers import make_attention

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spatial = _parse(size)
    rss0 = peak_rss_mb()
    m = make_attention(kind, len(spatial), channels, heads=heads, region=region, max_tokens=None)
    x = torch.randn(1, channels, *spatial)
    times = []
    for i in range(repeats + 1):  # first run is warm-up
        t0 = time.perf_counter()
        if backward:
            xi = x.clone().requires_grad_(True)
            m(xi).sum().backward()
            m.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                m(x)
        if i > 0:
            times.append(time.perf_counter() - t0)
    peak = peak_rss_mb()
    return {"seconds": min(times), "peak_mb": peak, "base_mb": rss0}


def cell(args: argparse.Namespace, kind: str, channels: int, size: str, backward: bool) -> dict:
    """Run one cell in a subprocess with a time limit; OOM/timeout are reported, not raised."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        str(channels),
        size,
        str(int(backward)),
        str(args.repeats),
        str(args.threads),
        str(args.heads),
        str(args.region),
    ]
    row = {
        "kind": kind,
        "channels": channels,
        "size": size,
        "voxels": _prod(_parse(size)),
        "pass": "fwd+bwd" if backward else "fwd",
    }
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {**row, "status": f"timeout>{args.timeout}s"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["killed"])[-1][:120]
        status = "out of memory" if out.returncode in (-9, 137) or "memory" in last else last
        return {**row, "status": status}
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        **row,
        "status": "ok",
        "seconds": res["seconds"],
        "peak_mb": res["peak_mb"],
        "net_mb": res["peak_mb"] - res["base_mb"],
    }


def _prod(t: tuple[int, ...]) -> int:
    n = 1
    for v in t:
        n *= v
    return n


def ratio_and_profile(
    size: str, channels: int, threads: int, repeats: int, compiled: bool = False
) -> dict:
    """MAXCA forward vs. its own convolutions + linear layers run alone, plus a profile.

    The block, its convolutions + linears and (``compiled``) the ``torch.compile``d block are
    timed interleaved (round ``r`` runs each once) after one warm-up each; best of
    ``repeats``."""
    import torch
    import torch.nn.functional as F

    from maxca.layers import MAXCA

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spatial = _parse(size)
    m = MAXCA(len(spatial), channels, heads=4, region=8).eval()
    x = torch.randn(1, channels, *spatial)
    # the block works channels-last; give both the same channels-last input
    xl = x.movedim(1, -1).contiguous()
    xin = xl.movedim(-1, 1)
    x2 = torch.cat([xl, xl], -1)  # the projection's 2C input, built outside the timed region
    mix = m.mixer

    def convs_and_linears(cat_inside: bool = False):
        xc = xin
        mix.branch_u.qkv(xc)
        mix.branch_v.qkv(xc)
        m.rcab.conv1(xc)
        m.rcab.conv2(xc)
        F.linear(xl, mix.expand.weight, mix.expand.bias)
        F.linear(torch.cat([xl, xl], -1) if cat_inside else x2, mix.proj.weight, mix.proj.bias)
        mix.branch_u.proj(xl)
        mix.branch_v.proj(xl)

    # "base": the floor; "base_cat": the floor as first defined (before 2026-11-30), which
    # also timed building the projection's 2C input (one extra copy, so a larger floor)
    fns = {
        "block": lambda: m(xin),
        "base": convs_and_linears,
        "base_cat": lambda: convs_and_linears(True),
    }
    if compiled:
        from maxca.accel import compile_model

        mc = compile_model(m)
        fns["compiled"] = lambda: mc(xin)
    from _common import interleaved_times  # here: the memory children do not import it

    with torch.no_grad():
        ts = interleaved_times(fns, repeats)  # the warm-up compiles the compiled variant
        t_block, t_base = min(ts["block"]), min(ts["base"])
        with torch.profiler.profile() as prof:
            m(xin)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    groups = {
        "convolution": ["aten::mkldnn_convolution", "aten::convolution_overrideable"],
        "copies/permutes": ["aten::copy_", "aten::cat", "aten::constant_pad_nd"],
        "matmul (attention + linear)": [
            "aten::bmm",
            "aten::baddbmm",
            "aten::addmm",
            "aten::addmm_",
            "aten::mm",
        ],
        "layer norm": ["aten::native_layer_norm"],
        # the autograd path's norm passes; the inference path takes the norms from the
        # per-head Gram matrices (counted under matmul)
        "q/k norms": ["aten::linalg_vector_norm"],
        "element-wise": [
            "aten::add",
            "aten::add_",
            "aten::mul",
            "aten::addcmul",
            "aten::addcmul_",
            "aten::gelu",
            "aten::gelu_",
            "aten::leaky_relu_",
            "aten::leaky_relu",
            "aten::div",
            "aten::clamp_min",
            "aten::sqrt",
            "aten::mean",
            "aten::sum",
        ],
        "softmax": ["aten::_softmax"],
    }
    shares = {}
    by_name = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    for g, names in groups.items():
        shares[g] = sum(by_name.get(n, 0) for n in names) / total
    shares["other"] = 1 - sum(shares.values())
    return {
        "size": size,
        "channels": channels,
        "maxca_fwd_s": t_block,
        "convs_linears_fwd_s": t_base,
        "ratio": t_block / t_base,
        "convs_linears_cat_fwd_s": min(ts["base_cat"]),
        "ratio_cat_floor": t_block / min(ts["base_cat"]),
        "threads": threads,
        "repeats": repeats,
        **(
            {
                "maxca_compiled_fwd_s": min(ts["compiled"]),
                "compiled_ratio": min(ts["compiled"]) / t_base,
            }
            if compiled
            else {}
        ),
        "profile": shares,
        "profile_total_s": total / 1e6,  # self time of the profiled run (profiler overhead in)
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, what, unit in (
        (axes[0], "seconds", "time (s)"),
        (axes[1], "net_mb", "peak memory above baseline (MB)"),
    ):
        colors = {"maxca": "C3", "window": "C0", "xca": "C2", "global_sa": "C7"}
        keys = sorted({(r["kind"], r["channels"], r["pass"]) for r in rows})
        for kind, ch, pas in keys:
            pts = [
                (r["voxels"], r[what])
                for r in rows
                if (r["kind"], r["channels"], r["pass"]) == (kind, ch, pas) and r["status"] == "ok"
            ]
            if len(pts) < 2:
                continue
            pts.sort()
            ax.loglog(
                *zip(*pts),
                marker="o" if ch == 32 else "s",
                ms=4,
                color=colors.get(kind, "k"),
                alpha=1.0 if ch == 32 else 0.55,
                ls="-" if pas == "fwd" else "--",
                label=f"{kind} C={ch} {pas}",
            )
        ax.set_xlabel("voxels")
        ax.set_ylabel(unit)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle("attention blocks: cost vs. spatial size (CPU, batch 1)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--child", nargs=8, help=argparse.SUPPRESS)
    p.add_argument("--ratio-child", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--kinds", default="maxca,window,xca,global_sa")
    p.add_argument("--channels", default="16,32")
    p.add_argument("--sizes", default=",".join(SIZES_3D))
    p.add_argument("--global-sa-sizes", default=",".join(GLOBAL_SA_SIZES))
    p.add_argument(
        "--big-kinds",
        default="maxca,window",
        help="kinds also run at 160x192x224 (others stop at 80x96x112)",
    )
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--region", type=int, default=8)
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--no-backward", action="store_true")
    p.add_argument("--quick", action="store_true", help="sizes up to 40x48x56, C=16 only")
    p.add_argument("--ratio-only", action="store_true")
    p.add_argument(
        "--ratio-sizes", default="40x48x56,80x96x112", help="sizes of the block-vs-convs ratio"
    )
    p.add_argument(
        "--ratio-compile",
        action="store_true",
        help="also time the torch.compile'd block in the ratio (compiles: minutes)",
    )
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--ratio-name", default="attention_ratio.json", help="file name under --out")
    p.add_argument("--plot-only", help="redraw the PNG from an existing CSV and exit")
    args = p.parse_args()
    if args.plot_only:
        with open(args.plot_only) as fh:
            rows = [
                {
                    **r,
                    "voxels": int(r["voxels"]),
                    "channels": int(r["channels"]),
                    **{k: float(r[k]) for k in ("seconds", "net_mb") if r.get(k)},
                }
                for r in csv.DictReader(fh)
            ]
        plot(rows, Path(args.plot_only).with_suffix(".png"))
        return
    if args.ratio_child:
        size, tuned, thr, rep, comp = args.ratio_child
        if int(tuned):
            from maxca.runtime import tune_cpu_allocator

            tune_cpu_allocator()
        res = ratio_and_profile(size, 32, int(thr), int(rep), bool(int(comp)))
        print(json.dumps({**res, "tuned_allocator": bool(int(tuned))}))
        return
    if args.child:
        kind, ch, size, bwd, rep, thr, heads, region = args.child
        print(
            json.dumps(
                run_cell(
                    kind, int(ch), size, bool(int(bwd)), int(rep), int(thr), int(heads), int(region)
                )
            )
        )
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.sizes, args.channels = "8x8x8,16x16x16,20x24x28,40x48x56", "16"
        args.global_sa_sizes = "8x8x8,12x12x12,16x16x16"

    ratios = []
    for size in ["40x48x56"] if args.quick else args.ratio_sizes.split(","):
        for tuned in (False, True):  # each in a fresh process: the allocator is process-wide
            cmd = [
                sys.executable,
                __file__,
                "--ratio-child",
                size,
                str(int(tuned)),
                str(args.threads),
                str(max(3, args.repeats)),
                str(int(args.ratio_compile)),
            ]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            ratios.append(json.loads(res.stdout.strip().splitlines()[-1]))
    for r in ratios:
        alloc = "tuned allocator" if r["tuned_allocator"] else "default allocator"
        print(
            f"MAXCA C=32 {r['size']} ({alloc}): block {r['maxca_fwd_s']:.3f}s, its "
            f"convs+linears alone {r['convs_linears_fwd_s']:.3f}s, ratio {r['ratio']:.2f} "
            f"(old floor with the cat inside: {r['convs_linears_cat_fwd_s']:.3f}s, ratio "
            f"{r['ratio_cat_floor']:.2f})"
            + (
                f"; compiled block {r['maxca_compiled_fwd_s']:.3f}s, ratio "
                f"{r['compiled_ratio']:.2f}"
                if "compiled_ratio" in r
                else ""
            )
        )
        shares = ", ".join(f"{k} {v:.0%}" for k, v in r["profile"].items())
        print(f"  profile (self time): {shares}")
    (out / args.ratio_name).write_text(json.dumps(ratios, indent=2))
    if args.ratio_only:
        return

    rows: list[dict] = []
    passes = [False] if args.no_backward else [False, True]
    for ch in (int(c) for c in args.channels.split(",")):
        for kind in args.kinds.split(","):
            sizes = (
                args.global_sa_sizes.split(",") if kind == "global_sa" else args.sizes.split(",")
            )
            if kind != "global_sa" and kind not in args.big_kinds.split(","):
                sizes = [s for s in sizes if _prod(_parse(s)) <= 80 * 96 * 112]
            for size in sizes:
                for bwd in passes:
                    r = cell(args, kind, ch, size, bwd)
                    rows.append(r)
                    sec = f"{r['seconds']:.3f}" if r["status"] == "ok" else "-"
                    mb = f"{r['peak_mb']:.0f}" if r["status"] == "ok" else "-"
                    print(
                        f"{kind:10s} C={ch:<3d} {size:12s} {r['pass']:8s} {sec:>9s} s "
                        f"{mb:>8s} MB  {r['status']}",
                        flush=True,
                    )
    # the refusal of global SA at the sizes the others run
    from maxca.layers.attention import GlobalSALayer

    for size in ("40x48x56", "80x96x112"):
        try:
            GlobalSALayer(3, 32, args.heads).check_tokens(_parse(size))
        except ValueError as exc:
            print(f"global_sa at {size}: refused: {exc}")
    fields = [
        "kind",
        "channels",
        "size",
        "voxels",
        "pass",
        "status",
        "seconds",
        "peak_mb",
        "net_mb",
    ]
    with open(out / "attention_scaling.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    plot(rows, out / "attention_scaling.png")
    print(f"wrote {out / 'attention_scaling.csv'} and {out / 'attention_scaling.png'}")
    for ch in sorted({r["channels"] for r in rows}):
        for pas in ("fwd", "fwd+bwd"):
            a = [
                r
                for r in rows
                if r["kind"] == "maxca"
                and r["channels"] == ch
                and r["pass"] == pas
                and r["status"] == "ok"
            ]
            by = {r["size"]: r for r in a}
            if "40x48x56" in by and "80x96x112" in by:
                t = by["80x96x112"]["seconds"] / by["40x48x56"]["seconds"]
                m = by["80x96x112"]["net_mb"] / by["40x48x56"]["net_mb"]
                print(
                    f"MAXCA C={ch} {pas}: 40x48x56 -> 80x96x112 (8x voxels): time x{t:.1f}, "
                    f"peak memory above the process baseline x{m:.1f}"
                )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
