"""Data-parallel training: sharding, and a real 2-process gloo run under torchrun."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from maxca.errors import MaxcaInputError
from maxca.training import load_checkpoint
from maxca.training.distributed import DistContext, ShardSampler, init_distributed

from .conftest import TINY_CONFIG


@pytest.mark.parametrize(("size", "world"), [(8, 2), (7, 2), (5, 3), (1, 2)])
def test_shards_are_disjoint_equal_and_cover(size: int, world: int) -> None:
    shards = [list(ShardSampler(size, r, world)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # equal step counts on every rank
    assert all(len(s) == ShardSampler(size, r, world).shard_size for r, s in enumerate(shards))
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(size))
    if size % world == 0:
        assert len(flat) == size  # disjoint when nothing needs padding
    sampler = ShardSampler(size, world - 1, world)
    sampler.set_start(1)
    assert list(sampler) == shards[-1][1:] and len(sampler) == len(shards[-1]) - 1


def test_single_process_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("cpu")
    assert ctx == DistContext() and ctx.is_main and not ctx.enabled
    assert ctx.broadcast_object({"a": 1}) == {"a": 1}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(MaxcaInputError, match="RANK is not set"):
        init_distributed("cpu")


WORKER = """
import os, sys
import torch
from maxca.training import load_config
from maxca.training.distributed import init_distributed, shutdown
from maxca.training.trainer import Trainer

config_path, out, *overrides = sys.argv[1:]
cfg = load_config(config_path, overrides)
ctx = init_distributed(cfg.device)
try:
    trainer = Trainer(cfg, ctx)
    seen = [[int(i) for i in trainer.sampler.indices()]]
    trainer.fit()
    state = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    torch.save({"state": state, "shard": seen, "world": ctx.world_size},
               os.path.join(out, f"rank{ctx.rank}.pt"))
finally:
    shutdown(ctx)
"""


@pytest.mark.parametrize("layout", ["auto", "channels_last"])
def test_ddp_two_cpu_processes(blob_dataset: Path, tmp_path: Path, layout: str) -> None:
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    results = tmp_path / "results"
    results.mkdir()
    out = tmp_path / "runs"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(script), str(TINY_CONFIG), str(results),
        f"data.path={blob_dataset}", f"out={out}", "budget.steps=4", "val_every=2",
        "ckpt_every=2", "log_every=1", "tensorboard=true", f"memory_format={layout}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ranks = [torch.load(results / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert set(ranks[0]["shard"][0]).isdisjoint(ranks[1]["shard"][0])  # different pairs
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key  # identical weights

    runs = list(out.iterdir())
    assert len(runs) == 1  # one run directory, named by rank 0 for everyone
    run = runs[0]
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints", "config.yaml", "metrics.csv", "tb",
    ]  # fmt: skip
    assert len(list((run / "tb").iterdir())) == 1  # a single event file: only rank 0 logs
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "last"]
    with open(run / "metrics.csv", newline="") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == [1, 2, 3, 4]  # each step written once
    model, info = load_checkpoint(run, "last")
    assert info.state["step"] == 4
    for key, value in model.state_dict().items():
        assert torch.equal(value, ranks[0]["state"][key]), key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "runs", "worker.py"]
