"""Checkpoints beside the models: the typed Preprocessing record, its one on-disk format, old
checkpoints (untyped dict with both ``normalise`` and ``normalize``) loading and registering
exactly as before, and the old import path ``maxca.training.checkpoint``."""

from __future__ import annotations

import dataclasses
import importlib
import json

import numpy as np
import pytest
import torch

from maxca.data.io import Volume
from maxca.errors import MaxcaInputError
from maxca.inference import register_pair
from maxca.models import create_model
from maxca.models.checkpoint import META, load_checkpoint, save_checkpoint
from maxca.models.preprocessing import Preprocessing

#: what the trainer and benchmarks/_common.py wrote before the typed record (format 1, 0.1.0)
OLD_RECORD = {
    "shape": [12, 10, 8],
    "spacing": [2.0, 2.5, 3.0],
    "spatial_dims": 3,
    "in_channels": 1,
    "normalise": "percentile",
    "normalize": "percentile",
    "percentiles": [2.0, 98.0],
    "resize": "resample",
    "label_ids": [1, 2, 3],
    "dataset": "../shared/data/brain-synth-2mm/dataset.json",
    "loss": {
        "similarity": "ncc",
        "window": 5,
        "weights": {"similarity": 1.0, "diffusion": 0.5, "bending": 0.0, "dice": 0.0},
    },
}


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(
        "pyramid_small", spatial_dims=3, enc_channels=2, dec_channels=4, heads=1, region=2
    )


def _volumes() -> tuple[Volume, Volume]:
    rng = np.random.default_rng(3)
    affine = np.diag([1.5, 2.0, 2.5, 1.0])
    affine[:3, 3] = (-10.0, 4.0, 7.0)
    idx = np.indices((20, 18, 14), dtype=np.float64)
    fixed = np.exp(-((idx[0] - 9) ** 2 + (idx[1] - 8) ** 2 + (idx[2] - 7) ** 2) / 30.0)
    moving = np.roll(fixed, 2, axis=0) + 0.05 * rng.random(fixed.shape)
    return Volume(fixed.astype(np.float32), affine), Volume(moving.astype(np.float32), affine)


def test_old_record_is_read_field_by_field():
    prep = Preprocessing.from_dict(OLD_RECORD)
    assert prep.shape == (12, 10, 8) and prep.spacing == (2.0, 2.5, 3.0)
    assert prep.spatial_dims == 3 and prep.in_channels == 1
    assert prep.normalise == "percentile" and prep.percentiles == (2.0, 98.0)
    assert prep.resize == "resample" and prep.label_ids == (1, 2, 3)
    assert prep.dataset == OLD_RECORD["dataset"] and prep.loss == OLD_RECORD["loss"]
    assert prep.int_steps == 7 and dict(prep.extra) == {}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"normalize": "zscore"}, "zscore"),  # American spelling only
        ({"normalise": "minmax", "normalize": "zscore"}, "minmax"),  # British wins
        ({"normalize": "none"}, None),
        ({"normalise": None}, None),
        ({}, "minmax"),  # what inference always assumed without a record
    ],
)
def test_normalisation_spellings(record, expected):
    assert Preprocessing.from_dict(record).normalise == expected


def test_record_round_trip_has_one_spelling_and_keeps_unknown_keys():
    prep = Preprocessing.from_dict({**OLD_RECORD, "custom": {"a": 1}})
    stored = prep.to_dict()
    assert "normalize" not in stored and stored["normalise"] == "percentile"
    assert stored["custom"] == {"a": 1}
    assert Preprocessing.from_dict(json.loads(json.dumps(stored))) == prep
    with pytest.raises(dataclasses.FrozenInstanceError):
        prep.normalise = "zscore"  # type: ignore[misc]


def test_old_checkpoint_loads_and_registers_as_the_typed_record(tmp_path):
    """A checkpoint whose model.json holds the old untyped dict gives the same registration as
    one saved from the typed record (bit for bit)."""
    model = _tiny_model()
    old = save_checkpoint(tmp_path / "old", model)
    meta = json.loads((old / META).read_text())
    meta["data"] = OLD_RECORD  # as written by maxca 0.1.0 before the typed record
    (old / META).write_text(json.dumps(meta))
    new = save_checkpoint(tmp_path / "new", model, data=Preprocessing.from_dict(OLD_RECORD))
    assert "normalize" not in json.loads((new / META).read_text())["data"]

    old_model, old_info = load_checkpoint(old)
    new_model, new_info = load_checkpoint(new)
    assert old_info.data == OLD_RECORD  # the stored dict is kept as read
    assert old_info.preprocessing == new_info.preprocessing == Preprocessing.from_dict(OLD_RECORD)

    fixed, moving = _volumes()
    a = register_pair(old_model, old_info, fixed, moving)
    b = register_pair(new_model, new_info, fixed, moving)
    c = register_pair(new_model, new_info.preprocessing, fixed, moving)
    assert a.grid.shape == (12, 10, 8)
    np.testing.assert_allclose(a.grid.spacing, (2.0, 2.5, 3.0))
    for other in (b, c):
        np.testing.assert_array_equal(a.flow, other.flow)
        np.testing.assert_array_equal(a.warped.array, other.warped.array)


def test_a_bad_normalisation_fails_when_used_naming_the_key():
    fixed, moving = _volumes()
    prep = Preprocessing.from_dict({"normalize": "histogram"})
    with pytest.raises(MaxcaInputError, match=r"checkpoint data\.normalise must be one of"):
        register_pair(_tiny_model(), prep, fixed, moving)


def test_old_import_path_is_the_same_module():
    old = importlib.import_module("maxca.training.checkpoint")
    new = importlib.import_module("maxca.models.checkpoint")
    assert old is new
    from maxca.training import CheckpointInfo
    from maxca.training import save_checkpoint as old_save

    assert old_save is save_checkpoint and CheckpointInfo is new.CheckpointInfo
