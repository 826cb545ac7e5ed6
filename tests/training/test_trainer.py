"""The training loop on a tiny 2-D blob dataset: learning, outputs, best-by-Dice, resume,
the non-finite guard, atomic checkpoints and the learning-rate schedule."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import pytest
import torch

import maxca.models.checkpoint as checkpoint_module
from maxca.errors import MaxcaInputError
from maxca.training import (
    NonFiniteLossError,
    Trainer,
    load_checkpoint,
    load_config,
    load_optimizer_state,
    main_train,
    resolve_checkpoint,
)
from maxca.training.config import BudgetConfig, OptimConfig
from maxca.training.trainer import learning_rate

from .conftest import TINY_CONFIG


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _config(overrides: list[str], *extra: str):
    return load_config(TINY_CONFIG, [*overrides, *extra])


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _same_optimizer(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for name, value in a["state"][k].items():
            other = b["state"][k][name]
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, other), (k, name)
            else:
                assert value == other


# ---------------------------------------------------------------------------------------------
def test_training_lowers_loss_and_writes_run(tiny_overrides: list[str]) -> None:
    cfg = _config(tiny_overrides, "budget.steps=30", "optim.lr=1e-3")
    trainer = Trainer(cfg)
    before = trainer.validate()
    run = trainer.fit()
    after = trainer.validate()
    assert after["val_loss"] < before["val_loss"] - 0.01  # NCC loss: lower is better
    assert 0.0 <= after["val_njd_percent"] <= 100.0

    assert run == Path(cfg.run_dir)
    assert (run / "config.yaml").is_file()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    for which in ("last", "best"):
        assert (run / "checkpoints" / which / "model.safetensors").is_file()
    assert load_optimizer_state(run / "checkpoints" / "last") is not None

    rows = _rows(run)
    train_rows = [r for r in rows if r["loss"]]
    val_rows = [r for r in rows if r["val_dice"]]
    assert [int(r["step"]) for r in train_rows] == [5, 10, 15, 20, 25, 30]
    assert [int(r["step"]) for r in val_rows] == [10, 20, 30]
    assert all(r["loss_similarity"] and r["loss_diffusion"] for r in train_rows)

    # checkpoints/best holds the step with the highest validation Dice (first one on ties)
    dices = [float(r["val_dice"]) for r in val_rows]
    best_step = int(val_rows[dices.index(max(dices))]["step"])
    best_model, info = load_checkpoint(run, "best")
    assert info.state["best_step"] == best_step
    assert info.state["best_metric"] == pytest.approx(max(dices), abs=1e-5)
    last_model, last_info = load_checkpoint(run, "last")
    assert last_info.state["step"] == 30
    _same_state(last_model.state_dict(), trainer.module.state_dict())
    assert info.data["shape"] == [32, 32] and info.data["label_ids"] == [1, 2, 3]
    assert info.data["normalise"] == "minmax" and info.data["spacing"] == [1.0, 1.0]
    assert info.data["loss"]["similarity"] == "ncc" and info.data["loss"]["window"] == 5
    assert "normalize" not in info.data  # one spelling; the typed record reads the same
    assert info.preprocessing.shape == (32, 32) and info.preprocessing.label_ids == (1, 2, 3)
    # the best weights reproduce the recorded Dice
    trainer.module.load_state_dict(best_model.state_dict())
    assert trainer.validate()["val_dice"] == pytest.approx(max(dices), abs=1e-6)


def test_main_train_entry_point(tiny_overrides: list[str]) -> None:
    run = main_train(str(TINY_CONFIG), [*tiny_overrides, "budget.steps=2", "val_every=0"])
    assert (run / "checkpoints" / "last" / "model.json").is_file()
    assert not (run / "checkpoints" / "best").exists()  # no validation, no best
    assert resolve_checkpoint(run) == run / "checkpoints" / "last"


def test_semi_supervised_dice_term_with_batches(tiny_overrides: list[str]) -> None:
    cfg = _config(
        tiny_overrides,
        "budget.steps=2",
        "log_every=1",
        "val_every=2",
        "loss.weights.dice=1",
        "data.batch_size=2",
        "amp=bf16",  # ignored on the CPU
    )
    trainer = Trainer(cfg)
    assert trainer.amp_dtype is None and trainer.steps_per_epoch == 2
    run = trainer.fit()
    rows = _rows(run)
    assert all(0.0 <= float(r["loss_dice"]) <= 1.0 for r in rows)
    assert rows[-1]["val_dice"] and rows[-1]["val_loss"]


def test_time_budget_stops_training(tiny_overrides: list[str]) -> None:
    cfg = _config(tiny_overrides, "budget.steps=100000", "budget.minutes=1e-6", "val_every=0")
    trainer = Trainer(cfg)
    run = trainer.fit()
    step = load_checkpoint(run, "last")[1].state["step"]
    assert step == trainer.progress.step < 100000


def test_dice_loss_needs_labels(tiny_overrides: list[str], tmp_path: Path, blob_dataset) -> None:
    cfg = _config(
        tiny_overrides,
        f"data.path={blob_dataset.parent / 'imagesTr'}",  # a plain folder: no labels
        "loss.weights.dice=1",
    )
    with pytest.raises(MaxcaInputError, match="dice > 0 needs label ids"):
        Trainer(cfg)


def test_existing_run_is_not_overwritten(tiny_overrides: list[str]) -> None:
    main_train(str(TINY_CONFIG), [*tiny_overrides, "budget.steps=1", "val_every=0"])
    with pytest.raises(MaxcaInputError, match="already holds a run; pass resume=true"):
        Trainer(_config(tiny_overrides))
    with pytest.raises(MaxcaInputError, match="resume=true needs run_dir"):
        Trainer(_config([tiny_overrides[0]], "resume=true"))


def test_resume_matches_uninterrupted_run(tiny_overrides: list[str], tmp_path: Path) -> None:
    common = [tiny_overrides[0], "val_every=0", "ckpt_every=3", "data.augment=true"]
    whole = Trainer(_config(common, f"run_dir={tmp_path / 'whole'}", "budget.steps=7"))
    whole.fit()

    first = Trainer(_config(common, f"run_dir={tmp_path / 'split'}", "budget.steps=3"))
    first.fit()  # stops in the middle of an epoch (4 pairs per epoch)
    resumed = Trainer(
        _config(common, f"run_dir={tmp_path / 'split'}", "budget.steps=7", "resume=true")
    )
    assert resumed.progress.step == 3
    _same_state(resumed.module.state_dict(), first.module.state_dict())
    _same_optimizer(resumed.optimizer.state_dict(), first.optimizer.state_dict())
    resumed.fit()
    assert resumed.progress.step == 7

    _same_state(resumed.module.state_dict(), whole.module.state_dict())
    _same_optimizer(resumed.optimizer.state_dict(), whole.optimizer.state_dict())
    split_rows, whole_rows = _rows(tmp_path / "split"), _rows(tmp_path / "whole")
    assert [int(r["step"]) for r in split_rows] == [3, 5, 7]  # 3: end of the first session
    assert [int(r["step"]) for r in whole_rows] == [5, 7]
    assert split_rows[-1]["loss"] == whole_rows[-1]["loss"]  # mean of steps 6-7 in both


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tiny_overrides: list[str]) -> None:
    cfg = _config(tiny_overrides, "budget.steps=10", "ckpt_every=2", "val_every=0")
    trainer = Trainer(cfg)
    loss_fn = trainer.loss_fn
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        total, terms = loss_fn(*args, **kwargs)
        if calls["n"] == 5:
            return total * math.nan, terms
        return total, terms

    trainer.loss_fn = poisoned
    with pytest.raises(NonFiniteLossError, match=r"loss became non-finite at step 5") as exc:
        trainer.fit()
    message = str(exc.value)
    assert "\n" not in message and "(step 4)" in message and "optim.lr" in message
    model, info = load_checkpoint(cfg.run_dir, "last")
    assert info.state["step"] == 4
    saved = model.state_dict()
    assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())
    _same_state(saved, trainer.module.state_dict())  # no update happened at the NaN step

    # non-finite weights are never written over a good checkpoint either
    with torch.no_grad():
        next(trainer.module.parameters()).fill_(math.nan)
    with pytest.raises(NonFiniteLossError, match="the weights became non-finite"):
        trainer._save("last", with_optimizer=True)
    _same_state(load_checkpoint(cfg.run_dir, "last")[0].state_dict(), saved)


def test_crash_while_saving_keeps_previous_checkpoint(
    tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tiny_overrides, "budget.steps=3", "ckpt_every=1", "val_every=0")
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # optimizer.pt of the second checkpoint
            raise OSError("disk full (simulated)")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(OSError, match="simulated"):
        Trainer(cfg).fit()
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    model, info = load_checkpoint(cfg.run_dir, "last")
    assert info.state["step"] == 1
    leftovers = [p.name for p in (Path(cfg.run_dir) / "checkpoints").iterdir()]
    assert leftovers == ["last"]  # the temporary directory was removed


def test_crash_between_renames_is_recoverable(
    tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tiny_overrides, "budget.steps=3", "ckpt_every=1", "val_every=0")
    real_replace = os.replace
    renames = {"n": 0}

    def failing_replace(src, dst, *args, **kwargs):
        if Path(src).name.startswith(".last.tmp-"):
            renames["n"] += 1
            if renames["n"] == 2:  # the old copy was moved aside, the new one not yet in place
                raise OSError("killed (simulated)")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        Trainer(cfg).fit()
    monkeypatch.setattr(checkpoint_module.os, "replace", real_replace)
    run = Path(cfg.run_dir)
    assert not (run / "checkpoints" / "last").exists()
    found = resolve_checkpoint(run, "last")
    assert found.name.startswith(".last.old-")
    assert load_checkpoint(run, "last")[1].state["step"] == 1
    # and training resumes from that copy
    resumed = Trainer(_config(tiny_overrides, "budget.steps=2", "val_every=0", "resume=true"))
    assert resumed.progress.step == 1
    resumed.fit()
    assert load_checkpoint(run, "last")[1].state["step"] == 2


def test_learning_rate_schedules() -> None:
    budget = BudgetConfig(steps=100)
    constant = OptimConfig(lr=1e-3)
    assert learning_rate(constant, budget, 0, 0) == learning_rate(constant, budget, 99, 0) == 1e-3
    cosine = OptimConfig(lr=1e-3, schedule="cosine")
    assert learning_rate(cosine, budget, 0, 0) == pytest.approx(1e-3)
    assert learning_rate(cosine, budget, 50, 0) == pytest.approx(5e-4)
    assert learning_rate(cosine, budget, 100, 0) == pytest.approx(0.0, abs=1e-12)
    poly = OptimConfig(lr=1e-3, schedule="poly", poly_power=1.0)
    assert learning_rate(poly, budget, 25, 0) == pytest.approx(7.5e-4)
    warm = OptimConfig(lr=1e-3, warmup_steps=4)
    assert [learning_rate(warm, budget, s, 0) for s in range(5)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3]
    )
    # a time budget drives the schedule by elapsed time; with both, the further one wins
    timed = BudgetConfig(steps=None, minutes=2.0)
    assert learning_rate(cosine, timed, 0, 60.0) == pytest.approx(5e-4)
    both = BudgetConfig(steps=1000, minutes=2.0)
    assert learning_rate(cosine, both, 10, 120.0) == pytest.approx(0.0, abs=1e-12)


def test_resolve_prefers_interrupted_copy_of_requested_kind(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    run = main_train(str(TINY_CONFIG), [*tiny_overrides, "budget.steps=2", "val_every=2"])
    ckpts = run / "checkpoints"
    os.replace(ckpts / "last", ckpts / ".last.old-1")
    os.replace(ckpts / "best", ckpts / ".best.old-2")
    assert resolve_checkpoint(run, "last") == ckpts / ".last.old-1"
    assert resolve_checkpoint(run, "best") == ckpts / ".best.old-2"
