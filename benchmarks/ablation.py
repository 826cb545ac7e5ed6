"""Does MAXCA improve each architecture? Host network x attention kind ablation (not a test).

Every cell (host, attention, seed) is trained with the library's trainer
(:func:`maxca.training.train`) with the same loss (local NCC + diffusion), data, budget and
seed, then its last checkpoint registers every validation pair through
:func:`maxca.inference.register_pair` and is scored by ``_common.score_flow`` (Dice over the
labelled structures, HD95 in mm, % of voxels with ``det J <= 0``, SDlogJ; moving labels warped
with nearest neighbour). The last checkpoint, not the best one: the trainer's ``best`` is chosen
on these same validation pairs.

Settings:

* ``--setting 2d`` (default): 2-D slices of ``../shared/data/brain-synth`` (1 mm): ``--slices``
  slices ``--slice-step`` voxels apart around the middle of the axis normal to ``--plane``
  (axial: 160x224 slices), training subjects 01-12, validation pairs = the slices of the
  ``registration_val`` pairs at the same positions. Written once as a small 2-D Learn2Reg
  dataset into ``--cache`` (default ``OUT/data``) that the normal trainer reads.
* ``--setting 3d``: ``../shared/data/brain-synth-2mm/dataset.json`` (80x96x112) as it is.

Outputs in ``--out`` (default ``benchmarks/results/ablation_<setting>/``): ``ablation.csv`` (one
row per cell and seed), ``ablation_pairs.csv`` (one row per cell, seed and pair, plus the
``identity`` rows of affine-only alignment), ``ablation.md`` (mean ± std over seeds),
``ablation.png`` (Dice box plot per method; Dice vs inference time) and ``runs/<cell>/`` (the
run directories). Resumable: a cell whose row is in ``ablation.csv`` is skipped, an
interrupted training run continues from its ``checkpoints/last``. ``--report`` trains nothing
and builds the tables and figure from the cells already in ``ablation.csv`` (the others are
listed as not run), e.g. after merging the CSVs of runs made in separate processes.

Usage::

    python benchmarks/ablation.py --setting 2d --small --steps 1000 --seeds 0,1,2
    python benchmarks/ablation.py --setting 3d --small --minutes 30 --hosts pyramid,unet \
        --attentions maxca,none --device cuda
    python benchmarks/ablation.py --setting 2d --small --steps 20 --seeds 0     # smoke run
    python benchmarks/ablation.py --setting 2d --small --steps 1000 --seeds 0,1,2 --report
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    ATTENTIONS,
    BRAIN_1MM,
    BRAIN_2MM,
    HOSTS,
    PLANES,
    RESULTS,
    atomic_write_text,
    build_slice_dataset,
    display_path,
    evaluate_model,
    evaluation_labels,
    host_options,
    identity_flow,
    load_pairs,
    markdown_table,
    nan_mean_std,
    pair_row,
    parse_ints,
    parse_names,
    pm,
    read_csv,
    resolve_device,
    run_logged,
    score_flow,
    set_threads,
    summary_over_pairs,
    text_table,
    validation_pairs,
    write_csv,
)

COLUMNS = [
    "setting",
    "host",
    "attention",
    "seed",
    "model",
    "widths",
    "params",
    "steps",
    "budget_steps",
    "budget_minutes",
    "train_s",
    "n_pairs",
    "dice_mean",
    "dice_std",
    "hd95_mean",
    "hd95_std",
    "njd_percent_mean",
    "sdlogj_mean",
    "seconds_mean",
    "network_s_mean",
    "device",
    "threads",
    "run_dir",
]
PAIR_COLUMNS = [
    "setting",
    "host",
    "attention",
    "seed",
    "pair",
    "dice",
    "hd95",
    "njd_percent",
    "sdlogj",
    "seconds",
    "network_s",
]
IDENTITY = ("-", "identity")  # (host, attention) of the affine-only rows


# ---------------------------------------------------------------------------------------------
# one cell
# ---------------------------------------------------------------------------------------------
def cell_name(host: str, attention: str, seed: int) -> str:
    """The run directory name of a cell."""
    return f"{host}-{attention}-s{seed}"


def experiment_config(
    args: argparse.Namespace, dataset: Path, host: str, attention: str, seed: int, run_dir: Path
) -> Any:
    """The :class:`maxca.training.ExperimentConfig` of one cell: only ``model`` and ``seed``
    differ between cells."""
    from maxca.training import config_from_dict

    steps = args.steps
    warmup = 50 if steps is None else min(50, steps // 10)
    options = {"attention": attention, **ablation_host_options(host, args.small)}
    return config_from_dict(
        {
            "model": {"name": host, "config": options},
            "data": {
                "path": str(dataset),
                "pairs": "random",
                "normalise": "minmax",
                "augment": False,
                "cache": True,
                "workers": 0,
                "batch_size": 1,
                "val_pairs": "registration_val",
            },
            "loss": {
                "similarity": "ncc",
                "window": args.window,
                "weights": {"similarity": 1.0, "diffusion": args.diffusion},
            },
            "optim": {
                "lr": args.lr,
                "grad_clip": 10.0,
                "schedule": "cosine",
                "warmup_steps": warmup,
            },
            "budget": {"steps": steps, "minutes": args.minutes},
            "val_every": args.val_every,
            "log_every": max(1, min(20, steps or 20)),
            "ckpt_every": args.ckpt_every,
            "device": args.device,
            "seed": seed,
            "run_dir": str(run_dir),
            "resume": (run_dir / "checkpoints" / "last" / "model.json").is_file(),
            "num_threads": args.threads,
            "progress": args.progress,
            "tensorboard": False,
        }
    )


def run_cell(
    args: argparse.Namespace,
    dataset: Path,
    pairs: list[Any],
    labels: list[int] | None,
    host: str,
    attention: str,
    seed: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train (or resume) one cell, evaluate its last checkpoint; returns its CSV rows."""
    from maxca.models import count_parameters
    from maxca.training import load_checkpoint, train

    run_dir = args.out / "runs" / cell_name(host, attention, seed)
    cfg = experiment_config(args, dataset, host, attention, seed, run_dir)
    train(cfg)
    device = resolve_device(args.device)
    model, info = load_checkpoint(run_dir, which="last", map_location=device)
    model.eval()
    rows = evaluate_model(model, info, pairs, labels, device=device)
    stats = summary_over_pairs(rows)
    row = {
        "setting": args.setting,
        "host": host,
        "attention": attention,
        "seed": seed,
        "model": host,
        "widths": "small" if args.small else "full",
        "params": count_parameters(model),
        "steps": int(info.state.get("step", 0)),
        "budget_steps": "" if args.steps is None else args.steps,
        "budget_minutes": "" if args.minutes is None else args.minutes,
        "train_s": float(info.state.get("elapsed_s", math.nan)),
        "n_pairs": len(rows),
        "dice_mean": stats["dice_mean"],
        "dice_std": stats["dice_std"],
        "hd95_mean": stats["hd95_mean"],
        "hd95_std": stats["hd95_std"],
        "njd_percent_mean": stats["njd_percent_mean"],
        "sdlogj_mean": stats["sdlogj_mean"],
        "seconds_mean": stats["seconds_mean"],
        "network_s_mean": nan_mean_std(r["network_s"] for r in rows)[0],
        "device": device,
        "threads": "" if args.threads is None else args.threads,
        "run_dir": display_path(run_dir),
    }
    pair_rows = [
        {"setting": args.setting, "host": host, "attention": attention, "seed": seed, **r}
        for r in rows
    ]
    return row, pair_rows


def identity_rows(setting: str, pairs: list[Any], labels: list[int] | None) -> list[dict]:
    """Per-pair rows of the affine-only alignment (zero flow), scored like every cell."""
    host, attention = IDENTITY
    return [
        {
            "setting": setting,
            "host": host,
            "attention": attention,
            "seed": "",
            **pair_row(score_flow(p, identity_flow(p), labels), 0.0),
        }
        for p in pairs
    ]


# ---------------------------------------------------------------------------------------------
# tables and figure
# ---------------------------------------------------------------------------------------------
def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return (str(row["host"]), str(row["attention"]), str(row["seed"]))


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (host, attention): mean and std over seeds (``ddof = 1``) of the per-seed
    means, in the order the rows come; ``delta_dice`` = Dice minus the same host's ``none``."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r["host"]), str(r["attention"])), []).append(r)
    out = []
    for (host, attention), rs in groups.items():
        entry: dict[str, Any] = {"host": host, "attention": attention, "seeds": len(rs)}
        for key in ("dice_mean", "hd95_mean", "njd_percent_mean", "sdlogj_mean", "seconds_mean"):
            entry[key], entry[key.replace("_mean", "_sd")] = nan_mean_std(
                (float(r[key]) for r in rs), ddof=1
            )
        entry["params"] = float(rs[0]["params"])
        entry["steps"] = nan_mean_std(float(r["steps"]) for r in rs)[0]
        out.append(entry)
    base = {e["host"]: e["dice_mean"] for e in out if e["attention"] == "none"}
    for e in out:
        b = base.get(e["host"])
        e["delta_dice"] = e["dice_mean"] - b if b is not None else math.nan
    return out


def paired_comparisons(
    rows: Sequence[dict[str, Any]],
    pair_rows: Sequence[dict[str, Any]],
    reference: str = "maxca",
) -> list[dict[str, Any]]:
    """``reference`` versus each other attention kind of the same host, paired by seed and pair.

    For each host and other kind with common seeds: ``delta_mean``/``delta_sd`` = mean and
    std (``ddof = 1``) over the common seeds of (reference's mean Dice - other's mean Dice);
    ``pair_delta`` = mean over pairs of the per-pair difference averaged over those seeds;
    ``wins`` = the number of pairs (of ``n_pairs``) whose seed-averaged difference is > 0;
    ``p_wilcoxon`` = two-sided Wilcoxon signed-rank p-value of the seed-averaged per-pair
    differences (``nan`` below 2 pairs or when all differences are 0).
    """
    from scipy.stats import wilcoxon

    seed_dice: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        seed_dice.setdefault((str(r["host"]), str(r["attention"])), {})[str(r["seed"])] = float(
            r["dice_mean"]
        )
    pair_dice: dict[tuple[str, str], dict[tuple[str, str], float]] = {}
    for r in pair_rows:
        key = (str(r["host"]), str(r["attention"]))
        pair_dice.setdefault(key, {})[(str(r["seed"]), str(r["pair"]))] = float(r["dice"])
    out = []
    hosts = list(dict.fromkeys(h for h, _ in seed_dice))
    for host in hosts:
        ref = seed_dice.get((host, reference))
        if ref is None:
            continue
        for (h, kind), other in seed_dice.items():
            seeds = sorted(set(ref) & set(other))
            if h != host or kind == reference or not seeds:
                continue
            diffs = [ref[s] - other[s] for s in seeds]
            delta, delta_sd = nan_mean_std(diffs, ddof=1)
            rp, op = pair_dice.get((host, reference), {}), pair_dice.get((host, kind), {})
            per_pair: dict[str, list[float]] = {}
            for s, pair in sorted(set(rp) & set(op)):
                if s in seeds:
                    per_pair.setdefault(pair, []).append(rp[(s, pair)] - op[(s, pair)])
            d = np.array([np.mean(v) for v in per_pair.values()], dtype=float)
            p_value = math.nan
            if d.size >= 2 and np.any(d != 0):
                p_value = float(wilcoxon(d).pvalue)
            out.append(
                {
                    "host": host,
                    "reference": reference,
                    "other": kind,
                    "seeds": len(seeds),
                    "delta_mean": delta,
                    "delta_sd": delta_sd,
                    "pair_delta": float(d.mean()) if d.size else math.nan,
                    "wins": int((d > 0).sum()),
                    "n_pairs": int(d.size),
                    "p_wilcoxon": p_value,
                }
            )
    return out


COMPARISON_HEADERS = ["host", "comparison", "seeds", "ΔDice (± over seeds)", "pairs won", "p"]


def comparison_rows(comparisons: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """The rows of the paired comparison table."""
    return [
        [
            c["host"],
            f"{c['reference']} − {c['other']}",
            c["seeds"],
            pm(c["delta_mean"], c["delta_sd"], signed=True),
            f"{c['wins']}/{c['n_pairs']}",
            "-" if math.isnan(c["p_wilcoxon"]) else f"{c['p_wilcoxon']:.3g}",
        ]
        for c in comparisons
    ]


TABLE_HEADERS = [
    "host",
    "attention",
    "seeds",
    "Dice",
    "ΔDice vs none",
    "HD95 (mm)",
    "det J ≤ 0 (%)",
    "SDlogJ",
    "params",
    "steps",
    "s / pair",
]


def table_rows(agg: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """The rows of the summary table (Dice, HD95: mean ± std over seeds)."""
    return [
        [
            e["host"],
            e["attention"],
            e["seeds"],
            pm(e["dice_mean"], e["dice_sd"]),
            "-" if math.isnan(e["delta_dice"]) else f"{e['delta_dice']:+.3f}",
            pm(e["hd95_mean"], e["hd95_sd"], 2),
            f"{e['njd_percent_mean']:.3f}",
            f"{e['sdlogj_mean']:.3f}",
            f"{int(e['params']):,}",
            int(e["steps"]) if not math.isnan(e["steps"]) else "-",
            f"{e['seconds_mean']:.3f}",
        ]
        for e in agg
    ]


def write_markdown(
    path: Path,
    args: argparse.Namespace,
    dataset: Path,
    agg: list[dict[str, Any]],
    ident: list[dict[str, Any]],
    missing: list[str],
    comparisons: Sequence[dict[str, Any]] = (),
    not_run: Sequence[str] = (),
) -> None:
    """``ablation.md``: what was run, the affine-only reference and the summary table."""
    dice, dice_sd = nan_mean_std(r["dice"] for r in ident)
    hd, hd_sd = nan_mean_std(r["hd95"] for r in ident)
    budget = []
    if args.steps is not None:
        budget.append(f"{args.steps} steps")
    if args.minutes is not None:
        budget.append(f"{args.minutes:g} min")
    lines = [
        f"# MAXCA ablation, {args.setting.upper()} setting",
        "",
        f"Data: `{display_path(dataset)}`, {len(ident)} validation pairs. "
        "Training: local NCC (window "
        f"{args.window}) + diffusion (weight {args.diffusion:g}), Adam lr {args.lr:g} cosine, "
        f"budget {' or '.join(budget)} per cell, {'small' if args.small else 'full'} widths, "
        f"device {resolve_device(args.device)}, threads {args.threads or 'default'}; "
        f"{datetime.now():%Y-%m-%d %H:%M}.",
        "",
        "Dice: mean over the labelled structures per pair, then over pairs; ± = std over seeds "
        "(n = seeds). ΔDice: difference with the same host without attention. Time: "
        "`register_pair` wall time per pair (both images resampled onto the model grid, the "
        "network, the flow and warped image/labels brought back onto the fixed grid). "
        "Evaluated checkpoint: `last`.",
        "",
        f"Affine only (identity flow): Dice {pm(dice, dice_sd)} (± over pairs), "
        f"HD95 {pm(hd, hd_sd, 2)} mm.",
        "",
        markdown_table(TABLE_HEADERS, table_rows(agg)),
    ]
    if comparisons:
        lines += [
            "MAXCA against each other kind on the same host, paired by seed and pair: ΔDice = "
            "mean over seeds of the per-seed difference of mean Dice (± std over seeds); pairs "
            "won = pairs whose Dice difference, averaged over the seeds, is > 0; p = two-sided "
            "Wilcoxon signed-rank test of those per-pair differences.",
            "",
            markdown_table(COMPARISON_HEADERS, comparison_rows(comparisons)),
        ]
    if missing:
        lines += ["", f"Cells not done (failed): {', '.join(missing)}."]
    if not_run:
        lines += ["", f"Cells not run (left out of the table): {', '.join(not_run)}."]
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot(
    path: Path, agg: list[dict[str, Any]], pair_rows: list[dict[str, Any]], title: str
) -> None:
    """Dice box plot per method (pairs pooled over seeds) and Dice vs time per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [(e["host"], e["attention"]) for e in agg]
    data = [
        [float(r["dice"]) for r in pair_rows if (r["host"], r["attention"]) == m] for m in methods
    ]
    ident = [float(r["dice"]) for r in pair_rows if (r["host"], r["attention"]) == IDENTITY]
    fig, (ax0, ax1) = plt.subplots(
        1, 2, figsize=(max(10, 0.7 * len(methods) + 6), 4.6), gridspec_kw={"width_ratios": [3, 2]}
    )
    if methods:
        ax0.boxplot(data, showmeans=True)
        ax0.set_xticks(range(1, len(methods) + 1), [f"{h}\n{a}" for h, a in methods], fontsize=7)
    if ident:
        ax0.axhline(sum(ident) / len(ident), ls="--", c="grey", lw=1, label="affine only")
        ax0.legend(fontsize=8)
    ax0.set_ylabel("Dice per pair (mean over structures)")
    ax0.set_title(title)
    markers = {"pyramid": "o", "unet": "s", "hybrid": "^"}
    colours = {"maxca": "C3", "window": "C0", "xca": "C2", "none": "C7", "global_sa": "C1"}
    for e in agg:
        ax1.errorbar(
            e["seconds_mean"],
            e["dice_mean"],
            yerr=0 if math.isnan(e["dice_sd"]) else e["dice_sd"],
            marker=markers.get(e["host"], "D"),
            color=colours.get(e["attention"], "k"),
            ls="none",
            capsize=3,
            label=f"{e['host']} / {e['attention']}",
        )
    ax1.set_xlabel("registration time per pair (s)")
    ax1.set_ylabel("Dice (mean over pairs)")
    ax1.set_title("accuracy vs inference time")
    if agg:
        ax1.legend(fontsize=6, ncol=2)
    ax1.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
#: hosts and attention kinds of the ablation tables: the shared lists plus the paper's network
#: (corrmaxca) and the kinds that isolate each half of MAXCA (regional, dilated)
ABLATION_HOSTS = (*HOSTS, "corrmaxca")
ABLATION_KINDS = (*ATTENTIONS, "regional", "dilated")
#: corrmaxca's widths: "full" = the paper's (enc 16 / dec 32); "small" = enc 8 / dec 16
CORRMAXCA_WIDTHS = {"full": {}, "small": {"enc_channels": 8, "dec_channels": 16}}


def ablation_host_options(host: str, small: bool) -> dict[str, Any]:
    """``host_options`` for every ablation host (corrmaxca's widths are defined above)."""
    if host == "corrmaxca":
        return dict(CORRMAXCA_WIDTHS["small" if small else "full"])
    return host_options(host, small)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--setting", choices=("2d", "3d"), default="2d")
    p.add_argument(
        "--hosts",
        default=",".join(ABLATION_HOSTS),
        help=f"comma-separated of {','.join(ABLATION_HOSTS)}",
    )
    p.add_argument(
        "--attentions",
        default=",".join(ABLATION_KINDS),
        help=f"comma-separated of {','.join(ABLATION_KINDS)},global_sa",
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--steps", type=int, default=None, help="training steps per cell (default 1000)")
    p.add_argument("--minutes", type=float, default=None, help="training minutes per cell")
    p.add_argument("--small", action="store_true", help="small widths per host (CPU tables)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--diffusion", type=float, default=1.0, help="diffusion weight (NCC weight 1)")
    p.add_argument("--window", type=int, default=9, help="local NCC window")
    p.add_argument("--val-every", type=int, default=0, help="trainer validation interval (0=off)")
    p.add_argument("--ckpt-every", type=int, default=200, help="checkpoint interval (resume)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--data", type=Path, default=None, help="dataset.json (3d) / 3-D source (2d)")
    p.add_argument("--plane", choices=tuple(PLANES), default="axial", help="2d: slice plane")
    p.add_argument("--slices", type=int, default=5, help="2d: slices per subject")
    p.add_argument("--slice-step", type=int, default=3, help="2d: voxels between slices")
    p.add_argument("--cache", type=Path, default=None, help="2d: slice dataset (OUT/data)")
    p.add_argument("--out", type=Path, default=None, help="default results/ablation_<setting>")
    p.add_argument("--progress", action="store_true", help="show the trainer's progress bar")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument(
        "--report",
        action="store_true",
        help="train nothing: tables and figure from the cells already in ablation.csv",
    )
    return p


def holdout_dataset(source: Path, out_dir: Path, n: int) -> Path:
    """A Learn2Reg ``dataset.json`` in ``out_dir`` that holds out the last ``n`` subjects of
    ``source`` (its ``training`` then ``validation`` lists, in order): ``training`` = the
    others, ``validation`` = the held-out ones and ``registration_val`` = every directed pair
    among them (``n (n - 1)`` pairs: more pairs than the dataset's own ``registration_val``,
    so a paired test over one seed can reach p < 0.05). Paths are absolute (the images stay
    where they are); written atomically, the same bytes for the same inputs.
    """
    import json

    from maxca.data.learn2reg import load_learn2reg

    ds = load_learn2reg(source)
    subjects = [*ds.training, *ds.validation]
    if not 2 <= n < len(subjects):
        raise ValueError(f"--holdout must be in [2, {len(subjects) - 1}], got {n}")
    json_path = Path(source) / "dataset.json" if Path(source).is_dir() else Path(source)
    data = json.loads(json_path.read_text(encoding="utf-8"))

    def entry(e: Any) -> dict[str, str]:
        out = {"image": str(e.image)}
        if e.label is not None:
            out["label"] = str(e.label)
        if e.mask is not None:
            out["mask"] = str(e.mask)
        return out

    train, held = subjects[:-n], subjects[-n:]
    pairs = [{"fixed": str(f.image), "moving": str(m.image)} for f in held for m in held if f != m]
    data.update(
        training=[entry(e) for e in train],
        numTraining=len(train),
        validation=[entry(e) for e in held],
        numValidation=len(held),
        registration_val=pairs,
        numRegistration_val=len(pairs),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out_dir / "dataset.json", json.dumps(data, indent=1) + "\n")


def prepare_dataset(args: argparse.Namespace) -> Path:
    """The dataset.json the cells train on (building the 2-D slice dataset if needed)."""
    if args.setting == "3d":
        dataset = args.data or BRAIN_2MM
        if not Path(dataset).exists():
            raise FileNotFoundError(f"dataset not found: {dataset}")
        return Path(dataset).resolve()
    source = args.data or BRAIN_1MM
    if not Path(source).exists():
        raise FileNotFoundError(f"3-D source dataset not found: {source}")
    cache = args.cache or args.out / "data"
    return build_slice_dataset(source, cache, args.plane, args.slices, args.slice_step)


def parse_grid(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[list[str], list[str], list[int]]:
    """``--hosts``, ``--attentions`` and ``--seeds`` checked (a usage error otherwise)."""
    try:
        hosts = parse_names(args.hosts, ABLATION_HOSTS, "hosts")
        kinds = parse_names(args.attentions, (*ABLATION_KINDS, "global_sa"), "attentions")
        seeds = parse_ints(args.seeds, "--seeds")
    except ValueError as exc:
        parser.error(str(exc))
    return hosts, kinds, seeds


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ablation; returns 0 when every requested cell has a result, else 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    hosts, kinds, seeds = parse_grid(parser, args)
    if args.steps is None and args.minutes is None:
        args.steps = 1000
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    args.out = (args.out or RESULTS / f"ablation_{args.setting}").resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    set_threads(args.threads)

    try:
        dataset = prepare_dataset(args)
        labels = evaluation_labels(dataset)
        pairs = load_pairs(validation_pairs(dataset))
    except (OSError, ValueError) as exc:  # MaxcaInputError is a ValueError
        parser.error(str(exc))
    print(f"data: {dataset} ({len(pairs)} validation pairs, {len(labels or [])} labels)")
    ident = identity_rows(args.setting, pairs, labels)

    csv_path, pairs_path = args.out / "ablation.csv", args.out / "ablation_pairs.csv"
    old_rows, old_pairs = read_csv(csv_path), read_csv(pairs_path)
    others = [r for r in old_rows if r.get("setting") != args.setting]  # kept as they are
    other_pairs = [r for r in old_pairs if r.get("setting") != args.setting]
    rows = [r for r in old_rows if r.get("setting") == args.setting]
    done = {_key(r) for r in rows}
    pair_rows = [r for r in old_pairs if _key(r) in done and r.get("setting") == args.setting]
    budget = (
        "" if args.steps is None else str(args.steps),
        "" if args.minutes is None else f"{args.minutes!r}",
    )
    cells = [(h, k, s) for h in hosts for k in kinds for s in seeds]
    failed: list[str] = []
    not_run: list[str] = []
    for i, (host, kind, seed) in enumerate(cells, 1):
        name = cell_name(host, kind, seed)
        old = [r for r in rows if _key(r) == (host, kind, str(seed))]
        if old:
            r = old[0]
            if (str(r.get("budget_steps", "")), str(r.get("budget_minutes", ""))) != budget or (
                r.get("widths") != ("small" if args.small else "full")
            ):
                print(
                    f"[{i}/{len(cells)}] {name}: kept from {csv_path.name} (other budget/widths!)"
                )
            else:
                print(f"[{i}/{len(cells)}] {name}: done already, skipped")
            continue
        if args.report:
            print(f"[{i}/{len(cells)}] {name}: not in {csv_path.name} (--report: not trained)")
            not_run.append(name)
            continue
        print(f"[{i}/{len(cells)}] {name}: training ...", flush=True)
        t0 = time.perf_counter()
        result, status = run_logged(
            lambda h=host, k=kind, s=seed: run_cell(args, dataset, pairs, labels, h, k, s), name
        )
        if result is None:
            failed.append(name)
            continue
        row, cell_pairs = result
        rows.append(row)
        pair_rows.extend(cell_pairs)
        write_csv(csv_path, others + rows, COLUMNS)
        write_csv(pairs_path, other_pairs + ident + pair_rows, PAIR_COLUMNS)
        print(
            f"  Dice {row['dice_mean']:.4f}, HD95 {row['hd95_mean']:.2f} mm, "
            f"folding {row['njd_percent_mean']:.3f} %, {row['steps']} steps, "
            f"{row['seconds_mean']:.3f} s/pair ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )

    requested = {(h, k, str(s)) for h, k, s in cells}
    chosen = [r for r in rows if _key(r) in requested]
    order = {(h, k): j for j, (h, k) in enumerate((h, k) for h in hosts for k in kinds)}
    chosen.sort(key=lambda r: (order[(r["host"], r["attention"])], int(r["seed"])))
    agg = aggregate(chosen)
    chosen_pairs = [r for r in pair_rows if _key(r) in requested]
    comparisons = paired_comparisons(chosen, chosen_pairs)
    write_csv(csv_path, others + rows, COLUMNS)
    write_csv(pairs_path, other_pairs + ident + pair_rows, PAIR_COLUMNS)
    write_markdown(
        args.out / "ablation.md", args, dataset, agg, ident, failed, comparisons, not_run
    )
    if not args.no_plot:
        title = f"{args.setting.upper()}: Dice per pair ({len(pairs)} pairs x seeds)"
        plot(args.out / "ablation.png", agg, ident + chosen_pairs, title)
    dice, _ = nan_mean_std(r["dice"] for r in ident)
    print()
    print(f"affine only (identity): Dice {dice:.4f}")
    print(text_table(TABLE_HEADERS, table_rows(agg)))
    if comparisons:
        print()
        print(text_table(COMPARISON_HEADERS, comparison_rows(comparisons)))
    print(
        f"\nwrote {csv_path}, {pairs_path.name}, ablation.md"
        + ("" if args.no_plot else ", ablation.png")
    )
    if not_run:
        print(f"cells not run: {', '.join(not_run)}")
    if failed:
        print(f"failed cells: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    from maxca.runtime import tune_cpu_allocator

    tune_cpu_allocator()  # as the maxca entry points do (training and registration)
    sys.exit(main())
