"""Nothing lost, nothing silently wrong in a training run (issue #15 items 4-8 and 14): run
directories that are not ours, interrupted saves, metrics.csv across crashes and resumes,
SIGTERM/SIGHUP, divergence, and schedules that follow a time budget (fake clock)."""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

import maxca
import maxca.training.trainer as trainer_module
from maxca import cli
from maxca.errors import MaxcaInputError
from maxca.training import Trainer, load_checkpoint, load_config, main_train, resolve_checkpoint
from maxca.training.config import BudgetConfig, OptimConfig
from maxca.training.trainer import _find_last, learning_rate

from .conftest import TINY_CONFIG


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _config(overrides: list[str], *extra: str):
    return load_config(TINY_CONFIG, [*overrides, *extra])


def _run_cli(argv: list) -> int:
    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)


class _Killed(BaseException):
    """Stands for ``kill -9``: nothing in the trainer handles it."""


# ---------------------------------------------------------------------------------------------
# item 4: a folder that is not a maxca run
def test_train_refuses_a_folder_that_is_not_a_maxca_run(
    tiny_overrides: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("my own notes\n")
    (run / "metrics.csv").write_text("subject,score\n1,0.5\n")
    (run / "keep.txt").write_text("mine")
    with pytest.raises(MaxcaInputError, match=r"not a maxca run.*--overwrite"):
        Trainer(_config(tiny_overrides, "budget.steps=1", "val_every=0"))
    argv = ["train", TINY_CONFIG, *tiny_overrides, "budget.steps=1", "val_every=0"]
    assert _run_cli(argv) == 2
    assert "not a maxca run" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == "my own notes\n"
    assert (run / "metrics.csv").read_text() == "subject,score\n1,0.5\n"
    # --overwrite: trains there, replacing only what a run writes
    assert _run_cli([*argv, "--overwrite"]) == 0
    assert (run / "keep.txt").read_text() == "mine"
    assert [r["step"] for r in _rows(run)] == ["1"]


def test_a_corrupt_subject_is_refused_before_the_run_starts(
    blob_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Subjects are read lazily, step by step: a corrupt file must not wait for its turn, after
    the run folder exists and hours were spent. Every header is read up front."""
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(blob_dataset.parent, data)
    meta = json.loads((data / "dataset.json").read_text())
    last = data / meta["training"][-1]["image"]
    last.write_bytes(b"\x1f\x8b not really gzip")  # the last subject: sampled late, if ever
    run = tmp_path / "run"
    argv = ["train", TINY_CONFIG, f"data.path={data / 'dataset.json'}", f"run_dir={run}"]
    assert _run_cli([*argv, "budget.steps=1", "val_every=0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{last.name}: cannot read NIfTI file" in err
    assert not run.exists()
    (data / meta["training"][1]["label"]).unlink()  # a missing label map: refused as well
    shutil.copyfile(data / meta["training"][0]["image"], last)
    assert _run_cli([*argv, "budget.steps=1", "val_every=0"]) == 2
    assert "label refers to a missing file" in capsys.readouterr().err and not run.exists()


def test_a_maxca_run_killed_before_its_first_checkpoint_can_start_again(
    tiny_overrides: list[str],
) -> None:
    run = main_train(str(TINY_CONFIG), [*tiny_overrides, "budget.steps=1", "val_every=0"])
    shutil.rmtree(run / "checkpoints")  # only config.yaml and metrics.csv of ours remain
    Trainer(_config(tiny_overrides, "budget.steps=1", "val_every=0")).fit()
    assert load_checkpoint(run, "last")[1].state["step"] == 1


# ---------------------------------------------------------------------------------------------
# item 6: leftovers of interrupted saves
def test_newest_interrupted_copy_is_chosen_and_leftovers_are_cleaned(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    common = [*tiny_overrides, "val_every=0", "ckpt_every=1"]
    run = main_train(str(TINY_CONFIG), [*common, "budget.steps=2"])
    ckpts = run / "checkpoints"
    shutil.copytree(ckpts / "last", tmp_path / "step2")
    main_train(str(TINY_CONFIG), [*common, "budget.steps=3", "resume=true"])
    shutil.copytree(ckpts / "last", ckpts / ".last.old-10234")  # step 3: the newer one
    shutil.copytree(tmp_path / "step2", ckpts / ".last.old-9876")
    os.utime(ckpts / ".last.old-9876" / "model.json", (time.time() + 60,) * 2)  # mtime lies
    shutil.rmtree(ckpts / "last")
    (ckpts / ".last.tmp-deadbeef").mkdir()  # a save killed half-way
    (ckpts / ".last.tmp-deadbeef" / "model.safetensors").write_bytes(b"half")

    assert _find_last(run) == ckpts / ".last.old-10234"
    assert resolve_checkpoint(run, "last") == ckpts / ".last.old-10234"
    resumed = Trainer(_config(common, "budget.steps=4", "resume=true"))
    assert resumed.progress.step == 3
    resumed.fit()
    assert sorted(p.name for p in ckpts.iterdir()) == ["last"]
    assert load_checkpoint(run, "last")[1].state["step"] == 4


# ---------------------------------------------------------------------------------------------
# item 7: metrics.csv
def test_resuming_a_finished_run_adds_no_row(tiny_overrides: list[str]) -> None:
    common = [*tiny_overrides, "budget.steps=4", "val_every=2", "log_every=2"]
    run = main_train(str(TINY_CONFIG), common)
    before = _rows(run)
    assert [r["step"] for r in before] == ["2", "4"]
    for _ in range(2):
        main_train(str(TINY_CONFIG), [*common, "resume=true"])
    assert _rows(run) == before


def test_kill_between_checkpoint_and_log_loses_no_row(
    tiny_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = [tiny_overrides[0], "val_every=0", "ckpt_every=3", "log_every=3", "budget.steps=6"]
    Trainer(_config(common, f"run_dir={tmp_path / 'whole'}")).fit()

    split = _config(common, f"run_dir={tmp_path / 'split'}")
    first = Trainer(split)

    def killed_on_log(row):
        raise _Killed

    monkeypatch.setattr(first, "_log", killed_on_log)
    with pytest.raises(_Killed):
        first.fit()  # checkpoint of step 3 written, its row not
    assert load_checkpoint(tmp_path / "split", "last")[1].state["step"] == 3
    assert _rows(tmp_path / "split") == []
    Trainer(_config(common, f"run_dir={tmp_path / 'split'}", "resume=true")).fit()
    split_rows, whole_rows = _rows(tmp_path / "split"), _rows(tmp_path / "whole")
    assert [r["step"] for r in split_rows] == ["3", "6"]
    assert [r["loss"] for r in split_rows] == [r["loss"] for r in whole_rows]


def test_first_row_after_a_resume_averages_the_whole_interval(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    common = [tiny_overrides[0], "val_every=0", "ckpt_every=3", "log_every=5", "budget.steps=7"]
    Trainer(_config(common, f"run_dir={tmp_path / 'whole'}")).fit()

    first = Trainer(_config(common, f"run_dir={tmp_path / 'split'}"))
    loss_fn = first.loss_fn
    calls = {"n": 0}

    def dies_at_step_4(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise _Killed
        return loss_fn(*args, **kwargs)

    first.loss_fn = dies_at_step_4
    with pytest.raises(_Killed):
        first.fit()
    Trainer(_config(common, f"run_dir={tmp_path / 'split'}", "resume=true")).fit()
    split_rows, whole_rows = _rows(tmp_path / "split"), _rows(tmp_path / "whole")
    assert [r["step"] for r in split_rows] == [r["step"] for r in whole_rows] == ["5", "7"]
    # step 5's row is the mean over steps 1-5, three of them before the crash
    assert split_rows[0]["loss"] == whole_rows[0]["loss"]


# ---------------------------------------------------------------------------------------------
# item 5: SIGTERM / SIGHUP save checkpoints/last first
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_termination_signal_saves_last(blob_dataset: Path, tmp_path: Path, signame: str) -> None:
    run = tmp_path / "run"
    src = Path(maxca.__file__).resolve().parents[1]  # the sources under test
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    argv = [
        sys.executable, "-m", "maxca", "train", str(TINY_CONFIG), f"data.path={blob_dataset}",
        f"run_dir={run}", "budget.steps=100000", "ckpt_every=100000", "val_every=0",
        "log_every=1", "tensorboard=false",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / "metrics.csv").is_file() and len(_rows(run)) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(getattr(signal, signame))
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    steps = [int(r["step"]) for r in _rows(run)]
    saved = load_checkpoint(run, "last")[1].state["step"]
    assert saved >= max(steps) >= 2
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------
# item 8: divergence has its own exit code
def test_divergence_exits_3_with_its_own_message(
    tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_loss = Trainer._loss

    def nan_loss(self, batch):
        total, terms = real_loss(self, batch)
        return total * math.nan, terms

    monkeypatch.setattr(Trainer, "_loss", nan_loss)
    code = _run_cli(["train", TINY_CONFIG, *tiny_overrides, "budget.steps=3", "val_every=0"])
    err = capsys.readouterr().err
    assert code == 3
    assert err.startswith("maxca: training diverged: ") and err.count("\n") == 1, err
    assert "non-finite at step 1" in err


# ---------------------------------------------------------------------------------------------
# item 14: a time budget drives the warm-up and the progress bar (fake clock)
def test_time_budget_estimates_steps_for_warmup_and_bar(
    tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = {"now": 1000.0}
    monkeypatch.setattr(
        trainer_module, "time", types.SimpleNamespace(monotonic=lambda: clock["now"])
    )
    cfg = _config(
        tiny_overrides,
        "budget.steps=100000",
        "budget.minutes=6",
        "optim.warmup_steps=100",
        "optim.schedule=cosine",
        "log_every=1",
        "val_every=0",
        "ckpt_every=100000",
    )
    trainer = Trainer(cfg)
    loss_fn = trainer.loss_fn

    def thirty_seconds_per_step(*args, **kwargs):
        clock["now"] += 30.0
        return loss_fn(*args, **kwargs)

    trainer.loss_fn = thirty_seconds_per_step
    with caplog.at_level(logging.WARNING, logger="maxca.training"):
        trainer.fit()
    assert trainer.progress.step == 12  # 6 minutes at 30 s per step
    assert trainer.horizon_steps == trainer.bar_total == 12
    lrs = [float(r["lr"]) for r in _rows(Path(cfg.run_dir))]
    assert max(lrs) > 0.5 * cfg.optim.lr  # warm-up ended (100 configured steps would not)
    assert lrs[-1] < 0.1 * cfg.optim.lr  # and the cosine decayed towards the end
    assert "barely trained" in caplog.text and "only 12 optimisation steps" in caplog.text


def test_warmup_shortens_to_a_tenth_of_the_estimated_horizon() -> None:
    warm = OptimConfig(lr=1e-3, warmup_steps=100)
    budget = BudgetConfig(steps=None, minutes=6.0)
    assert learning_rate(warm, budget, 0, 0.0) == pytest.approx(1e-5)
    assert learning_rate(warm, budget, 1, 0.0, horizon_steps=20) == pytest.approx(1e-3)
    assert learning_rate(warm, budget, 0, 0.0, horizon_steps=20) == pytest.approx(5e-4)
    # a long horizon keeps the configured warm-up
    assert learning_rate(warm, budget, 49, 0.0, horizon_steps=10_000) == pytest.approx(5e-4)


def test_resume_with_a_corrupt_optimizer_state_exits_2_naming_it(
    tiny_overrides: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    run = main_train(str(TINY_CONFIG), [*tiny_overrides, "budget.steps=1", "val_every=0"])
    (run / "checkpoints" / "last" / "optimizer.pt").write_bytes(b"PK\x03\x04 truncated")
    argv = ["train", TINY_CONFIG, *tiny_overrides, "budget.steps=2", "resume=true"]
    assert _run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("maxca: error: ") and err.count("\n") == 1, err
    assert "checkpoints/last/optimizer.pt" in err
