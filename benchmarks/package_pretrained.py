"""Copy a training checkpoint into the package as a packaged model (``maxca/weights/NAME``).

The weights are loaded (checksum and finiteness verified) and saved again with the model config
and the preprocessing record; the training state is reduced to what the model card quotes
(step, wall time, best validation Dice), with no absolute paths.

    python benchmarks/package_pretrained.py runs/brain-pretrained/checkpoints/last --name brain
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from maxca.models.checkpoint import load_checkpoint, save_checkpoint
from maxca.pretrained import WEIGHTS_DIR

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint folder (e.g. RUN/checkpoints/last)")
    p.add_argument("--name", default="brain")
    p.add_argument("--recipe", default="configs/brain-synth-2mm-labels.yaml")
    args = p.parse_args(argv)
    model, info = load_checkpoint(args.checkpoint)
    data = info.preprocessing.to_dict()
    if data.get("dataset"):
        data["dataset"] = Path(str(data["dataset"])).parent.name + "/dataset.json"
    s = info.state
    state = {
        "step": s.get("step"),
        "training_wall_s": round(float(s.get("elapsed_s", 0.0)), 1),
        "best_val_dice": s.get("best_metric"),
        "best_val_step": s.get("best_step"),
        "recipe": args.recipe,
    }
    out = save_checkpoint(WEIGHTS_DIR / args.name, model, data=data, state=state)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"wrote {out.relative_to(REPO)} ({size:.1f} MB): step {state['step']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
