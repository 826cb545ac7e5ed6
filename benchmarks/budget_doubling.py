"""Did a longer training budget change the ablation? Two ablation folders compared (not a test).

Issue #14 asks for every ablation cell "at a flattened validation curve". The slope of the
validation curve over the late steps (``ablation_parallel.py``'s ``ablation_trends``) says whether
a curve still moves under one schedule; it cannot say where a longer schedule would end, because
the cosine schedule is tied to the budget. This script answers that directly from two finished
grids of the same cells at two budgets (say 4,000 and 8,000 steps: the same data, loss,
optimiser, learning rate and seeds, only ``--steps`` differs), each scored at its last checkpoint
on the same pairs:

1. **gain**: for each host and attention kind, the Dice at the long budget minus the Dice at the
   short one, paired by seed and pair (mean over the seeds of the per-seed difference of mean
   Dice, its std over seeds, the pairs that gained, and a two-sided Wilcoxon signed-rank p over
   the seed-averaged per-pair gains, as ``ablation.py``'s paired tests);
2. **comparisons**: MAXCA against each other kind at each budget (``ablation.paired_comparisons``
   on the cells both folders have), side by side, so that a comparison whose sign or
   significance changes with the budget is seen.

Only (host, kind, seed) cells finished in both folders are used. Writes ``budget_doubling.csv``
(both tables, a ``table`` column tells them apart), ``budget_doubling.md`` and
``budget_doubling.png`` (Dice per kind at both budgets, one panel per host) into ``--out``.

Usage::

    python benchmarks/budget_doubling.py --short benchmarks/results/ablation_2d_long \\
        --long benchmarks/results/ablation_2d_8000 --out benchmarks/results/ablation_2d_8000
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import ablation  # noqa: E402 (benchmarks/ on the path first)


def read_grid(folder: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The trained cells of an ablation folder: rows of ``ablation.csv`` and of
    ``ablation_pairs.csv`` (the affine-only ``identity`` rows left out).

    Raises:
        SystemExit(2): a missing file, with one line naming it.
    """
    out = []
    for name in ("ablation.csv", "ablation_pairs.csv"):
        path = folder / name
        if not path.is_file():
            raise SystemExit(f"budget_doubling.py: error: {path} not found (a finished ablation?)")
        with path.open(newline="") as fh:
            out.append([r for r in csv.DictReader(fh) if r["attention"] != "identity"])
    return out[0], out[1]


def _cell(r: dict[str, Any]) -> tuple[str, str, str]:
    return str(r["host"]), str(r["attention"]), str(r["seed"])


def common_cells(
    short: tuple[list[dict[str, str]], list[dict[str, str]]],
    long: tuple[list[dict[str, str]], list[dict[str, str]]],
) -> set[tuple[str, str, str]]:
    """(host, kind, seed) cells present in both grids."""
    return {_cell(r) for r in short[0]} & {_cell(r) for r in long[0]}


def gains(
    short: tuple[list[dict[str, str]], list[dict[str, str]]],
    long: tuple[list[dict[str, str]], list[dict[str, str]]],
) -> list[dict[str, Any]]:
    """Long-budget minus short-budget Dice per host and kind, paired by seed and pair.

    Returns one dict per (host, kind): ``host``, ``attention``, ``seeds``, ``dice_short``,
    ``dice_long`` (means over the common seeds), ``gain`` (mean over seeds of the per-seed
    difference), ``gain_sd`` (std over seeds, ``ddof = 1``; nan for one seed), ``pairs_gained``,
    ``n_pairs`` and ``p_wilcoxon`` (see :func:`ablation.paired_comparisons`)."""
    keep = common_cells(short, long)
    rows, pair_rows = [], []
    for budget, (cells, pairs) in (("long", long), ("short", short)):
        for r in cells:
            if _cell(r) in keep:
                rows.append({**r, "host": f"{r['host']}\t{r['attention']}", "attention": budget})
        for r in pairs:
            if _cell(r) in keep:
                pair_rows.append(
                    {**r, "host": f"{r['host']}\t{r['attention']}", "attention": budget}
                )
    means: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        means.setdefault((r["host"], r["attention"]), []).append(float(r["dice_mean"]))
    out = []
    for c in ablation.paired_comparisons(rows, pair_rows, reference="long"):
        host, kind = c["host"].split("\t")
        out.append(
            {
                "host": host,
                "attention": kind,
                "seeds": c["seeds"],
                "dice_short": sum(means[(c["host"], "short")]) / len(means[(c["host"], "short")]),
                "dice_long": sum(means[(c["host"], "long")]) / len(means[(c["host"], "long")]),
                "gain": c["delta_mean"],
                "gain_sd": c["delta_sd"],
                "pairs_gained": c["wins"],
                "n_pairs": c["n_pairs"],
                "p_wilcoxon": c["p_wilcoxon"],
            }
        )
    return out


def comparisons(
    short: tuple[list[dict[str, str]], list[dict[str, str]]],
    long: tuple[list[dict[str, str]], list[dict[str, str]]],
    reference: str = "maxca",
) -> list[dict[str, Any]]:
    """``reference`` against each other kind at both budgets, on the cells both grids have.

    Returns one dict per (host, other kind) with ``seeds`` and, for ``b`` in ``short``/``long``,
    ``delta_b``, ``wins_b`` (of ``n_pairs``) and ``p_b``."""
    keep = common_cells(short, long)
    result: dict[tuple[str, str], dict[str, Any]] = {}
    for budget, (cells, pairs) in (("short", short), ("long", long)):
        rows = [r for r in cells if _cell(r) in keep]
        prs = [r for r in pairs if _cell(r) in keep]
        for c in ablation.paired_comparisons(rows, prs, reference=reference):
            entry = result.setdefault(
                (c["host"], c["other"]),
                {"host": c["host"], "comparison": f"{reference} - {c['other']}"},
            )
            entry["seeds"] = c["seeds"]
            entry["n_pairs"] = c["n_pairs"]
            entry[f"delta_{budget}"] = c["delta_mean"]
            entry[f"wins_{budget}"] = c["wins"]
            entry[f"p_{budget}"] = c["p_wilcoxon"]
    return list(result.values())


def _p(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3g}"


def _pm(mean: float, sd: float) -> str:
    return f"{mean:+.4f}" if math.isnan(sd) else f"{mean:+.4f} ± {sd:.4f}"


def markdown(
    gain_rows: Sequence[dict[str, Any]],
    comparison_rows: Sequence[dict[str, Any]],
    labels: tuple[str, str],
) -> str:
    """The two tables as Markdown (``labels``: names of the short and the long budget)."""
    s, lg = labels
    lines = [
        f"Dice at {lg} minus Dice at {s} (paired by seed and pair; ± = std over seeds; p = "
        "two-sided Wilcoxon over the seed-averaged per-pair gains):",
        "",
        f"| host | attention | seeds | Dice {s} | Dice {lg} | gain | pairs gained | p |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for g in gain_rows:
        lines.append(
            f"| {g['host']} | {g['attention']} | {g['seeds']} | {g['dice_short']:.4f} | "
            f"{g['dice_long']:.4f} | {_pm(g['gain'], g['gain_sd'])} | "
            f"{g['pairs_gained']}/{g['n_pairs']} | {_p(g['p_wilcoxon'])} |"
        )
    lines += [
        "",
        "MAXCA against each kind at both budgets (same cells):",
        "",
        f"| host | comparison | seeds | ΔDice {s} | p {s} | ΔDice {lg} | p {lg} |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for c in comparison_rows:
        lines.append(
            f"| {c['host']} | {c['comparison']} | {c['seeds']} | {c['delta_short']:+.4f} "
            f"({c['wins_short']}/{c['n_pairs']}) | {_p(c['p_short'])} | {c['delta_long']:+.4f} "
            f"({c['wins_long']}/{c['n_pairs']}) | {_p(c['p_long'])} |"
        )
    return "\n".join(lines) + "\n"


def plot(
    short: tuple[list[dict[str, str]], list[dict[str, str]]],
    long: tuple[list[dict[str, str]], list[dict[str, str]]],
    labels: tuple[str, str],
    path: Path,
) -> Path:
    """Final Dice per kind at both budgets, one panel per host (mean over the common seeds,
    bars = std over seeds): ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = common_cells(short, long)
    hosts = list(dict.fromkeys(h for h, _, _ in sorted(keep)))
    fig, axes = plt.subplots(1, len(hosts), figsize=(4.5 * len(hosts), 3.6), squeeze=False)
    for ax, host in zip(axes[0], hosts, strict=True):
        kinds = list(dict.fromkeys(r["attention"] for r in short[0] if _cell(r) in keep
                                   and r["host"] == host))  # fmt: skip
        for offset, (name, (cells, _)), marker in zip(
            (-0.12, 0.12), zip(labels, (short, long), strict=True), ("o", "s"), strict=True
        ):
            means, sds = [], []
            for kind in kinds:
                values = [
                    float(r["dice_mean"])
                    for r in cells
                    if _cell(r) in keep and r["host"] == host and r["attention"] == kind
                ]
                means.append(sum(values) / len(values))
                sds.append(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
            ax.errorbar(
                np.arange(len(kinds)) + offset, means, yerr=sds, fmt=marker, capsize=3, label=name
            )
        ax.set_xticks(range(len(kinds)), kinds, fontsize=8)
        ax.set_title(f"{host}: Dice at the last checkpoint", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("mean Dice (± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Compare two finished ablation grids at two budgets (not a test)."
    )
    p.add_argument("--short", type=Path, required=True, help="ablation folder, shorter budget")
    p.add_argument("--long", type=Path, required=True, help="ablation folder, longer budget")
    p.add_argument("--out", type=Path, help="folder for budget_doubling.csv/.md (default --long)")
    p.add_argument("--reference", default="maxca", help="the kind compared with the others")
    return p


def _budget(rows: Sequence[dict[str, str]]) -> str:
    steps = sorted({r.get("budget_steps") or r.get("steps", "?") for r in rows})
    return "/".join(f"{s} steps" for s in steps)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    short, long = read_grid(args.short), read_grid(args.long)
    if not common_cells(short, long):
        print("budget_doubling.py: error: the two folders have no cell in common", file=sys.stderr)
        return 2
    labels = (_budget(short[0]), _budget(long[0]))
    if labels[0] == labels[1]:
        labels = (f"{labels[0]} ({args.short.name})", f"{labels[1]} ({args.long.name})")
    g, c = gains(short, long), comparisons(short, long, args.reference)
    text = markdown(g, c, labels)
    out = args.out or args.long
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in (*g, *c) for k in r})
    with (out / "budget_doubling.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["table", *keys])
        writer.writeheader()
        for name, rows in (("gain", g), ("comparison", c)):
            for r in rows:
                writer.writerow({"table": name, **r})
    (out / "budget_doubling.md").write_text(text)
    figure = plot(short, long, labels, out / "budget_doubling.png")
    print(text)
    print(f"wrote {out / 'budget_doubling.csv'}, {out / 'budget_doubling.md'} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
