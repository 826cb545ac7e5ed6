"""How should ``--refine`` regularise? Dice against refinement step on *training* pairs.

The packaged ``brain`` model was trained with a Dice term on label maps, so its field follows
anatomy that image similarity cannot see. This script refines its prediction on directed pairs
of training subjects (subject i to i+5; never the validation pairs the model card reports), or
on the pairs given by ``--pairs`` (e.g. ``3:14,4:14,5:14``: the held-out subject 14 moved onto
training subjects, which the model card's validation pairs do not include), with
:func:`maxca.inference.refine.refine_flow`'s loss and each setting of ``--configs``, and scores
the mean Dice over the dataset's evaluation labels (moving label map warped by nearest
neighbour on the model grid) and the % of non-positive Jacobian determinants inside the fixed
brain every ``--every`` steps:

* ``field``: the regulariser on the whole velocity field, with the training record's weights
  (similarity 1, diffusion 0.1) and learning rate 0.1 (``refine_flow``'s defaults: what
  ``--refine`` did before the model carried its own ``refine`` entry);
* ``update``: the regulariser on the change from the prediction (``regularise="update"``),
  diffusion 1, learning rate 0.05 (the model's ``refine`` entry now);
* ``update_d03``, ``update_d10``: the same with diffusion 0.3 and 10;
* ``update_w5``, ``update_lr01``, ``update_w5_d03``, ``update_d05``: ``update`` with an NCC
  window of 5 (the model's is 9), a learning rate of 0.1, both window 5 and diffusion 0.3, and
  diffusion 0.5;
* ``update_w7``, ``update_w13``: ``update`` with an NCC window of 7 and 13;
* ``update_r2``, ``update_r2_lr01``: ``update`` with the change optimised on a grid twice as
  coarse (``refine_flow(resolution=2)``), learning rate 0.05 and 0.1;
* ``mind``, ``mind_d001``, ``mind_d01``, ``mind_d3``, ``mind_d10``: ``update`` with MIND-SSC
  (:class:`maxca.losses.MIND`) in place of NCC, diffusion 1, 0.01, 0.1, 3 and 10.

``--moving-contrast t2`` re-synthesises each moving image from its label map in a T2-like
contrast (``maxca.data.labelsynth.T2_LIKE``, seeded by the subject number) and keeps the fixed
one as given: a pair of two contrasts, which the ``brain`` model was not trained for.

    python benchmarks/refine_choice.py --configs field,update --subjects 1,2,3 --steps 40 \
        --every 10 --threads 1 --out benchmarks/results/refine_choice
    python benchmarks/refine_choice.py --configs update,mind --moving-contrast t2 \
        --subjects 1,2,3 --steps 40 --every 10 --threads 1 \
        --out benchmarks/results/refine_choice_t2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from _common import (
    REPO,
    GridScorer,
    brain_benchmark_setup,
    parse_subject_pairs,
    subject_volume,
    write_csv,
    write_table_report,
)


def _update(
    diffusion: float,
    similarity: str | None = None,
    lr: float = 0.05,
    window: int | None = None,
    resolution: int = 1,
) -> dict:
    """A candidate that regularises the change from the prediction (learning rate ``lr``; NCC
    window ``window``, default the model's; the change on a ``resolution`` times coarser
    grid)."""
    config = {
        "regularise": "update",
        "lr": lr,
        "weights": {"similarity": 1.0, "diffusion": diffusion},
        "resolution": resolution,
    }
    if similarity is not None:
        config["similarity"] = similarity
    if window is not None:
        config["window"] = window
    return config


CONFIGS = {
    "field": {"regularise": "field", "lr": 0.1, "weights": None},
    "update": _update(1.0),
    "update_d03": _update(0.3),
    "update_d10": _update(10.0),
    "update_w5": _update(1.0, window=5),
    "update_lr01": _update(1.0, lr=0.1),
    "update_w5_d03": _update(0.3, window=5),
    "update_d05": _update(0.5),
    "update_w7": _update(1.0, window=7),
    "update_w13": _update(1.0, window=13),
    "update_r2": _update(1.0, resolution=2),
    "update_r2_lr01": _update(1.0, lr=0.1, resolution=2),
    "mind": _update(1.0, "mind"),
    "mind_d01": _update(0.1, "mind"),
    "mind_d3": _update(3.0, "mind"),
    "mind_d10": _update(10.0, "mind"),
    "mind_d001": _update(0.01, "mind"),
}


def main(argv: list[str] | None = None) -> int:
    from maxca.data.io import Volume
    from maxca.data.labelsynth import T2_LIKE, fixed_contrast_image
    from maxca.inference.refine import refine_flow
    from maxca.inference.register import model_grid, model_input
    from maxca.spatial import integrate_velocity

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--dataset", default=str(REPO.parent / "shared/data/brain-synth-2mm/dataset.json")
    )
    p.add_argument("--model", default="brain")
    p.add_argument("--configs", default="field,update", help=f"among {', '.join(CONFIGS)}")
    p.add_argument("--subjects", default="1,2,3", help="moving = subject + --offset")
    p.add_argument("--offset", type=int, default=5)
    p.add_argument(
        "--pairs",
        default=None,
        help="explicit FIXED:MOVING subject pairs, e.g. 3:14,4:14 (instead of --subjects)",
    )
    p.add_argument(
        "--moving-contrast",
        choices=("as-given", "t2"),
        default="as-given",
        help="t2: the moving image re-synthesised from its label map in a T2-like contrast "
        "(fixed as given: a cross-contrast pair)",
    )
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks/results/refine_choice"))
    args = p.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown config(s) {unknown}; choose from {list(CONFIGS)}")
    if args.steps < 1 or args.every < 1 or args.steps % args.every:
        raise SystemExit("--steps and --every must be >= 1, --steps a multiple of --every")
    env = brain_benchmark_setup(args.dataset, args.model, args.threads)
    model, prep = env.model, env.prep
    loss = dict(prep.loss or {})
    int_steps = env.int_steps

    def read(sub: int, kind: str) -> Volume:
        return subject_volume(env, sub, kind)

    rows = []
    if args.pairs:
        pairs = parse_subject_pairs(p, args.pairs)
    else:
        pairs = [(f, f + args.offset) for f in (int(v) for v in args.subjects.split(","))]
    for f, m in pairs:
        F, M = read(f, "image"), read(m, "image")
        if args.moving_contrast == "t2":
            lab = read(m, "label")
            arr = torch.from_numpy(np.asarray(lab.array).astype(np.int64))
            M = Volume(fixed_contrast_image(arr, T2_LIKE, m).numpy(), lab.affine)
        grid = model_grid(F, prep)

        fg, mg = model_input(F, grid, prep), model_input(M, grid, prep)
        scorer = GridScorer(env, f, m, grid)
        with torch.no_grad():
            v0 = model(fg, mg).velocity.float()

        def score(velocity: torch.Tensor, scorer=scorer) -> tuple:  # noqa: ANN001
            with torch.no_grad():
                return scorer(integrate_velocity(velocity, int_steps))

        d0, n0 = score(v0)
        pair = f"{f:04d}_{m:04d}"
        rows.append({"pair": pair, "config": "network", "step": 0, "dice": d0, "njd_brain": n0})
        print(f"{pair} network: Dice {d0:.4f}  NJD {n0:.4f} %", flush=True)
        for name in configs:
            c = CONFIGS[name]
            options = {
                "similarity": c.get("similarity") or loss.get("similarity", "ncc"),
                "window": c.get("window") or loss.get("window", 9),
                "weights": c["weights"] or dict(loss.get("weights") or {}),
                "lr": c["lr"],
                "regularise": c["regularise"],
                "resolution": c.get("resolution", 1),
                "int_steps": int_steps,
            }
            t0 = time.perf_counter()
            last: dict[str, float] = {}

            def scored(step: int, velocity: torch.Tensor, pair=pair, name=name, last=last) -> None:
                if step % args.every == 0:
                    d, n = score(velocity)
                    last.update(dice=d, njd=n)
                    rows.append(
                        {"pair": pair, "config": name, "step": step, "dice": d, "njd_brain": n}
                    )
                    print(f"  {pair} {name} step {step}: Dice {d:.4f}  NJD {n:.4f} %", flush=True)

            refine_flow(fg, mg, v0, args.steps, velocity=v0, callback=scored, **options)
            d, n = last["dice"], last["njd"]
            per_step = (time.perf_counter() - t0) / args.steps
            print(f"{pair} {name}: Dice {d:.4f} ({d - d0:+.4f})  NJD {n:.4f} %  "
                  f"{per_step:.2f} s/step incl. scoring", flush=True)  # fmt: skip

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "refine_choice.csv", rows, ["pair", "config", "step", "dice", "njd_brain"])
    steps = sorted({r["step"] for r in rows if r["config"] != "network"})
    table = []
    for name in ["network", *configs]:
        sel = [r for r in rows if r["config"] == name]
        for step in [0] if name == "network" else steps:
            at = [r for r in sel if r["step"] == step]
            base = [r["dice"] for r in rows if r["config"] == "network"]
            table.append([
                name, step, f"{np.mean([r['dice'] for r in at]):.4f}",
                f"{np.mean([r['dice'] for r in at]) - np.mean(base):+.4f}",
                " / ".join(f"{r['dice']:.4f}" for r in at),
                f"{np.mean([r['njd_brain'] for r in at]):.4f}",
            ])  # fmt: skip
    names = ", ".join(sorted({r["pair"] for r in rows}))
    write_table_report(
        out / "refine_choice.md",
        f"Model {args.model}; moving contrast {args.moving_contrast}; pairs (fixed_moving) "
        f"{names}; {args.threads} thread(s); Dice on the model grid.",
        ["config", "step", "mean Dice", "vs network", "per pair", "NJD % in brain"],
        table,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
