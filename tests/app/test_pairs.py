"""maxca.app.pairs: the one evaluation path of pairs (identity = Dice before, a zero-flow model
scores as the identity in 2-D and 3-D, a shift is seen)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from l2r_tiny import LABELS, make_tiny_dataset
from maxca.app.pairs import (
    evaluate_model,
    identity_flow,
    load_pairs,
    pair_row,
    score_flow,
    validation_pairs,
)
from maxca.data.slices import build_slice_dataset
from maxca.metrics import dice
from maxca.models import RegistrationHead, create_model
from maxca.models.checkpoint import CheckpointInfo
from maxca.models.preprocessing import Preprocessing

SMALL_UNET = {
    "enc_channels": [8, 16, 16, 16],
    "dec_channels": [16, 16, 16, 16, 16],
    "final_channels": [8, 8],
}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny3d"))


def test_identity_score_is_dice_before(tiny_dataset: Path) -> None:
    pairs = load_pairs(validation_pairs(tiny_dataset))
    for p in pairs:
        result = score_flow(p, identity_flow(p), list(LABELS))
        direct = dice(p.fixed_label.array, p.moving_label.array, list(LABELS))
        assert result.dice == pytest.approx(direct)
        assert result.njd_percent == 0.0 and result.sdlogj == 0.0
        assert math.isfinite(result.hd95_mean)


@pytest.mark.parametrize("setting", ["2d", "3d"])
def test_model_evaluation_of_a_zero_flow_is_the_identity(
    setting: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    """``evaluate_model`` (register_pair + score_flow) of a network whose heads output zero
    scores exactly like the identity baseline: no shift, flip or transposition on the way."""
    ds = tiny_dataset
    if setting == "2d":
        ds = build_slice_dataset(tiny_dataset, tmp_path / "s", "axial", 2, 3)
    pairs = load_pairs(validation_pairs(ds))
    fixed = pairs[0].fixed
    model = create_model("unet", spatial_dims=fixed.ndim, attention="none", **SMALL_UNET)
    for m in model.modules():
        if isinstance(m, RegistrationHead):
            torch.nn.init.zeros_(m.conv.weight)
    info = CheckpointInfo(
        tmp_path,
        model.config_dict(),
        Preprocessing(shape=tuple(fixed.shape), spacing=tuple(fixed.spacing)),
    )
    rows = evaluate_model(model, info, pairs, list(LABELS), warmup=False)
    ident = [pair_row(score_flow(p, identity_flow(p), list(LABELS)), 0.0) for p in pairs]
    assert [r["pair"] for r in rows] == [r["pair"] for r in ident]
    for r, i in zip(rows, ident):
        assert r["dice"] == i["dice"] and r["hd95"] == i["hd95"]
        assert r["seconds"] > 0


def test_score_flow_sees_a_shift(tiny_dataset: Path) -> None:
    """A one-voxel shift changes Dice: the scoring is not blind to the flow."""
    p = load_pairs(validation_pairs(tiny_dataset))[0]
    flow = identity_flow(p)
    flow[0] += 2.0
    shifted = score_flow(p, flow, list(LABELS))
    ident = score_flow(p, identity_flow(p), list(LABELS))
    assert shifted.dice_mean < ident.dice_mean - 0.02


def test_pairs_without_labels_are_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from maxca.errors import MaxcaInputError

    root = tmp_path / "nolabels"
    shutil.copytree(tiny_dataset.parent, root)
    data = json.loads((root / "dataset.json").read_text())
    for entry in data["training"]:
        entry.pop("label", None)
    shutil.rmtree(root / "labelsTr")
    (root / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(MaxcaInputError, match="has no labels"):
        validation_pairs(root / "dataset.json")
