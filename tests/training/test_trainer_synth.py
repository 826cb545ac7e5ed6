"""The trainer's ``data.synth: labels`` mode: config checks and a short run that learns."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from maxca.data.labelsynth import SynthPairDataset
from maxca.errors import MaxcaInputError
from maxca.training import Trainer, load_config

from .conftest import TINY_CONFIG

SYNTH = ["data.synth=labels", "loss.weights.similarity=0", "loss.weights.dice=1"]


def test_synth_needs_a_dice_loss(tiny_overrides: list[str]) -> None:
    with pytest.raises(MaxcaInputError, match=r"loss.weights.dice > 0"):
        load_config(TINY_CONFIG, [*tiny_overrides, "data.synth=labels"])


def test_unknown_synth_mode_is_refused_at_load(tiny_overrides: list[str]) -> None:
    with pytest.raises(MaxcaInputError, match="data.synth"):
        load_config(TINY_CONFIG, [*tiny_overrides, "data.synth=images", "loss.weights.dice=1"])


def test_synth_training_learns_on_the_real_validation_images(tiny_overrides: list[str]) -> None:
    cfg = load_config(
        TINY_CONFIG,
        [*tiny_overrides, *SYNTH, "budget.steps=200", "optim.lr=1e-3", "val_every=200",
         "model.config.diffeomorphic=true"],
    )  # fmt: skip
    trainer = Trainer(cfg)
    assert isinstance(trainer.train_data, SynthPairDataset)
    before = trainer.validate()["val_dice"]
    run = trainer.fit()
    after = trainer.validate()["val_dice"]
    # trained on synthesised images only, validated on the dataset's own images
    assert after > before + 0.02
    with open(Path(run) / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["loss_dice"] for r in rows if r["loss"])
    assert "loss_similarity" not in rows[0]


def test_similarity_needs_shared_contrast(tiny_overrides: list[str]) -> None:
    with pytest.raises(MaxcaInputError, match="synth_contrast=shared"):
        load_config(TINY_CONFIG, [*tiny_overrides, "data.synth=labels", "loss.weights.dice=1"])
    cfg = load_config(
        TINY_CONFIG,
        [*tiny_overrides, "data.synth=labels", "loss.weights.dice=1",
         "data.synth_contrast=shared"],
    )  # fmt: skip
    assert cfg.loss.weights.similarity > 0 and cfg.data.synth_contrast == "shared"
    # MIND compares structure, not intensities: allowed between independent contrasts
    cfg = load_config(
        TINY_CONFIG,
        [*tiny_overrides, "data.synth=labels", "loss.weights.dice=1", "loss.similarity=mind"],
    )
    assert cfg.loss.similarity == "mind" and cfg.data.synth_contrast == "independent"


def test_resume_from_a_checkpoint_saved_before_a_config_field_existed(
    tiny_overrides: list[str],
) -> None:
    """A model.json without a field added later (here ``drop``) resumes with its default."""
    import json

    cfg = load_config(TINY_CONFIG, [*tiny_overrides, "budget.steps=2", "val_every=0"])
    run = Path(Trainer(cfg).fit())
    meta_path = run / "checkpoints" / "last" / "model.json"
    meta = json.loads(meta_path.read_text())
    assert "drop" in meta["model"]
    del meta["model"]["drop"]  # as written by maxca before the field existed
    meta_path.write_text(json.dumps(meta))
    resumed = load_config(
        TINY_CONFIG, [*tiny_overrides, "budget.steps=3", "val_every=0", "resume=true"]
    )
    trainer = Trainer(resumed)
    assert trainer.progress.step == 2
    trainer.fit()
    assert trainer.progress.step == 3


def test_synth_real_is_checked_and_reaches_the_dataset(tiny_overrides: list[str]) -> None:
    for bad in ("1.5", "-0.1", "true"):
        with pytest.raises(MaxcaInputError, match="synth_real"):
            load_config(TINY_CONFIG, [*tiny_overrides, *SYNTH, f"data.synth_real={bad}"])
    with pytest.raises(MaxcaInputError, match="needs data.synth"):
        load_config(TINY_CONFIG, [*tiny_overrides, "data.synth_real=0.5"])
    cfg = load_config(TINY_CONFIG, [*tiny_overrides, *SYNTH, "data.synth_real=0.25"])
    trainer = Trainer(cfg)
    assert isinstance(trainer.train_data, SynthPairDataset)
    assert trainer.train_data.synth.p_real == 0.25
