"""Training throughput of the real trainer (steps per minute), not a test.

Runs ``maxca train`` on a Learn2Reg dataset for a few steps (no validation) and reads the
trainer's own ``metrics.csv``: steps per minute measured between the first and the last logged
step, so data caching and the first (warm-up) step are excluded.

    python benchmarks/train_throughput.py --dataset ../shared/data/brain-synth-2mm/dataset.json \
        --models pyramid_small,pyramid --steps 12 --threads 2
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "brain-synth-2mm.yaml"


def measure(
    model: str,
    attention: str,
    dataset: str,
    steps: int,
    threads: int,
    checkpoint: bool,
    semisup: bool,
) -> dict:
    """Train ``steps`` steps in a subprocess; return steps/min from the logged elapsed times."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [
            sys.executable,
            "-m",
            "maxca",
            "train",
            str(CONFIG),
            f"run_dir={run}",
            f"data.path={dataset}",
            f"model.name={model}",
            f"model.config.attention={attention}",
            f"model.config.checkpoint={str(checkpoint).lower()}",
            f"budget.steps={steps}",
            "budget.minutes=null",
            "val_every=100000",
            "ckpt_every=100000",
            "log_every=1",
            f"num_threads={threads}",
            "progress=false",
            "tensorboard=false",
        ]
        if semisup:
            cmd.append("loss.weights.dice=1.0")
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        with open(run / "metrics.csv") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("loss")]
    first, last = rows[0], rows[-1]
    dt = float(last["elapsed_s"]) - float(first["elapsed_s"])
    n = int(last["step"]) - int(first["step"])
    return {
        "model": model,
        "attention": attention,
        "checkpoint": checkpoint,
        "semisup": semisup,
        "threads": threads,
        "steps_timed": n,
        "seconds_per_step": dt / n,
        "steps_per_minute": 60.0 * n / dt,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="../shared/data/brain-synth-2mm/dataset.json")
    p.add_argument("--models", default="pyramid_small")
    p.add_argument("--attention", default="maxca")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint", action="store_true")
    p.add_argument("--semisup", action="store_true", help="add the Dice term (label maps)")
    p.add_argument("--out", default=str(RESULTS / "train_throughput.csv"))
    args = p.parse_args()
    rows = [
        measure(
            m, args.attention, args.dataset, args.steps, args.threads, args.checkpoint, args.semisup
        )
        for m in args.models.split(",")
    ]
    print(f"{'model':16s} {'attention':10s} {'s/step':>8s} {'steps/min':>10s}")
    for r in rows:
        print(
            f"{r['model']:16s} {r['attention']:10s} {r['seconds_per_step']:8.2f} "
            f"{r['steps_per_minute']:10.2f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
