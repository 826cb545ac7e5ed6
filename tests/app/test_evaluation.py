"""Evaluation from files: hand-computed Dice, nearest-neighbour label warping through the
affines, Learn2Reg result folders, and the written reports."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from maxca.app import evaluate_dataset, evaluate_files, write_evaluation
from maxca.data.io import Volume
from maxca.errors import MaxcaInputError
from maxca.inference import evaluate_flow, write_l2r_displacement, write_voxel_flow

N = 10
AFF = np.diag([2.0, 1.0, 1.0, 1.0])


def _maps():
    fixed = np.zeros((N, N, N), np.uint8)
    fixed[2:6, 2:6, 2:6] = 1  # 64 voxels
    fixed[6:9, 6:9, 6:9] = 2  # 27 voxels
    moving = np.zeros_like(fixed)
    moving[3:7, 2:6, 2:6] = 1  # label 1 one voxel further along axis 0
    moving[6:9, 6:9, 6:9] = 2
    return fixed, moving


def _shift(value: float) -> np.ndarray:
    flow = np.zeros((3, N, N, N), np.float32)
    flow[0] = value
    return flow


def test_hand_computed_dice():
    fixed, moving = _maps()
    f, m = Volume(fixed, AFF), Volume(moving, AFF)
    zero = evaluate_flow(f, m, _shift(0.0))
    assert zero.dice == {1: pytest.approx(2 * 48 / 128), 2: 1.0}
    assert zero.dice_mean == pytest.approx((0.75 + 1.0) / 2)
    # warped(p) = moving(p + 1): label 1 lands on the fixed cube, label 2 moves to 5:8
    one = evaluate_flow(f, m, _shift(1.0))
    assert one.dice == {1: 1.0, 2: pytest.approx(2 * 18 / 54)}
    assert one.njd_percent == 0.0
    only = evaluate_flow(f, m, _shift(1.0), labels=[2])
    assert list(only.dice) == [2]


def test_moving_labels_on_another_grid_are_warped_physically():
    """The same moving map stored with axis 0 flipped (and its affine accordingly) scores the
    same: labels follow world positions, not array indices."""
    fixed, moving = _maps()
    flipped_aff = AFF.copy()
    flipped_aff[0, 0] = -2.0
    flipped_aff[0, 3] = 2.0 * (N - 1)
    m_flipped = Volume(moving[::-1].copy(), flipped_aff)
    result = evaluate_flow(Volume(fixed, AFF), m_flipped, _shift(1.0))
    assert result.dice == {1: 1.0, 2: pytest.approx(2 * 18 / 54)}
    with pytest.raises(MaxcaInputError, match="one grid"):
        evaluate_flow(Volume(fixed, AFF), Volume(moving[:, :-1], AFF), _shift(1.0), l2r_compat=True)


def test_evaluate_files_l2r_and_voxel_flow(tmp_path):
    fixed, moving = _maps()
    nib.save(nib.Nifti1Image(fixed, AFF), str(tmp_path / "f.nii.gz"))
    nib.save(nib.Nifti1Image(moving, AFF), str(tmp_path / "m.nii.gz"))
    write_l2r_displacement(tmp_path / "disp_0001_0002.nii.gz", _shift(1.0), AFF)
    write_voxel_flow(tmp_path / "flow_voxel.nii.gz", _shift(1.0), Volume(fixed, AFF))
    (tmp_path / "lf.csv").write_text("x,y,z\n3,3,3\n7,7,7\n")
    (tmp_path / "lm.csv").write_text("x,y,z\n4,3,3\n8,7,7\n")
    a = evaluate_files(
        tmp_path / "f.nii.gz",
        tmp_path / "m.nii.gz",
        tmp_path / "disp_0001_0002.nii.gz",
        landmarks=(tmp_path / "lf.csv", tmp_path / "lm.csv"),
    )
    assert a.name == "0001_0002"
    assert a.dice[1] == 1.0
    np.testing.assert_allclose(a.tre, [0.0, 0.0], atol=1e-6)
    b = evaluate_files(tmp_path / "f.nii.gz", tmp_path / "m.nii.gz", tmp_path / "flow_voxel.nii.gz")
    assert b.dice == a.dice
    c = evaluate_files(
        tmp_path / "f.nii.gz",
        tmp_path / "m.nii.gz",
        tmp_path / "flow_voxel.nii.gz",
        l2r_compat=True,
    )
    assert c.l2r_compat and c.dice[1] == 1.0
    # the user's own --labels for one pair: an id in neither map is a typo, not a NaN Dice;
    # one map holding it is enough (a structure missing from the other scores 0)
    args = (tmp_path / "f.nii.gz", tmp_path / "m.nii.gz", tmp_path / "flow_voxel.nii.gz")
    with pytest.raises(MaxcaInputError, match=r"label id\(s\) 3, 99 appear in neither label map"):
        evaluate_files(*args, labels=[1, 3, 99], strict_labels=True)
    # label 2 did not move, the flow shifts it by one of its 3 voxels: Dice 2/3
    assert evaluate_files(*args, labels=[2], strict_labels=True).dice == pytest.approx({2: 2 / 3})
    with pytest.raises(MaxcaInputError, match="no label id to score"):
        evaluate_files(*args, labels=[])
    # maxca's own flow records the fixed grid it was computed on: another grid is refused
    shifted = AFF.copy()
    shifted[:3, 3] += 50.0
    write_voxel_flow(tmp_path / "other" / "flow_voxel.nii.gz", _shift(1.0), Volume(fixed, shifted))
    with pytest.raises(MaxcaInputError, match="computed on another grid than the fixed label"):
        evaluate_files(*args[:2], tmp_path / "other" / "flow_voxel.nii.gz")
    write_l2r_displacement(tmp_path / "disp_bad.nii.gz", np.zeros((3, 4, 4, 4)), AFF)
    with pytest.raises(MaxcaInputError, match="differs from the fixed label grid"):
        evaluate_files(tmp_path / "f.nii.gz", tmp_path / "m.nii.gz", tmp_path / "disp_bad.nii.gz")


def test_a_disp_file_with_another_grid_in_its_header_is_scored_with_a_warning(tmp_path):
    """Learn2Reg disp_* files carry no geometry (identity affine): scored silently. One whose
    header holds a grid other than the fixed labels' is scored the same way, with a warning."""
    import warnings

    fixed, moving = _maps()
    nib.save(nib.Nifti1Image(fixed, AFF), str(tmp_path / "f.nii.gz"))
    nib.save(nib.Nifti1Image(moving, AFF), str(tmp_path / "m.nii.gz"))
    shifted = AFF.copy()
    shifted[:3, 3] += 50.0
    results = {}
    for name, affine in (("same", AFF), ("identity", np.eye(4)), ("other", shifted)):
        path = write_l2r_displacement(tmp_path / f"disp_{name}.nii.gz", _shift(1.0), affine)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results[name] = evaluate_files(tmp_path / "f.nii.gz", tmp_path / "m.nii.gz", path)
        messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        if name == "other":
            assert (
                len(messages) == 1 and "has another affine than the fixed label map" in messages[0]
            )
        else:
            assert messages == []
    assert results["other"].dice == results["same"].dice == results["identity"].dice


def _dataset(root):
    fixed, moving = _maps()
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for case, lab in (("0001", fixed), ("0002", moving), ("0003", moving)):
        nib.save(
            nib.Nifti1Image(lab.astype(np.float32), AFF),
            str(root / f"imagesTr/T_{case}_0000.nii.gz"),
        )
        nib.save(nib.Nifti1Image(lab, AFF), str(root / f"labelsTr/T_{case}_0000.nii.gz"))
    pairs = [
        {"fixed": "./imagesTr/T_0001_0000.nii.gz", "moving": "./imagesTr/T_0002_0000.nii.gz"},
        {"fixed": "./imagesTr/T_0001_0000.nii.gz", "moving": "./imagesTr/T_0003_0000.nii.gz"},
    ]
    training = [
        {"image": f"./imagesTr/T_{c}_0000.nii.gz", "label": f"./labelsTr/T_{c}_0000.nii.gz"}
        for c in ("0001", "0002", "0003")
    ]
    data = {"name": "T", "training": training, "registration_val": pairs, "evaluation_labels": [1]}
    (root / "dataset.json").write_text(json.dumps(data))
    return root / "dataset.json"


def test_evaluate_dataset_and_reports(tmp_path):
    ds = _dataset(tmp_path / "ds")
    results = tmp_path / "results"
    results.mkdir()
    write_l2r_displacement(results / "disp_0001_0002.nii.gz", _shift(1.0), AFF)
    with pytest.raises(MaxcaInputError, match="missing 1 displacement file"):
        evaluate_dataset(results, ds)
    write_l2r_displacement(results / "disp_0001_0003.nii.gz", _shift(0.0), AFF)
    seen = []
    scores = evaluate_dataset(results, ds, on_pair=lambda i, n, r: seen.append((i, n, r.name)))
    assert seen == [(0, 2, "0001_0002"), (1, 2, "0001_0003")]
    assert [r.labels for r in scores] == [[1], [1]]  # the dataset's evaluation_labels
    assert [r.dice[1] for r in scores] == [1.0, pytest.approx(0.75)]
    # an id in no pair's label maps (a typo in evaluation_labels or --labels) is named
    with pytest.warns(UserWarning, match=r"label id\(s\) 99 scored in no pair"):
        typo = evaluate_dataset(results, ds, labels=[1, 99])
    assert [r.dice[1] for r in typo] == [1.0, pytest.approx(0.75)]

    out = write_evaluation(scores, tmp_path / "eval")
    assert sorted(p.name for p in out.iterdir()) == [
        ".maxca-manifest.json",
        "pairs",
        "summary.json",
        "summary.md",
    ]
    assert sorted(p.name for p in (out / "pairs").iterdir()) == ["0001_0002.csv", "0001_0003.csv"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_pairs"] == 2
    assert summary["metrics"]["dice_mean"]["mean"] == pytest.approx(0.875)
    with pytest.raises(MaxcaInputError, match="already holds results"):
        write_evaluation(scores, out)
    write_evaluation(scores[:1], out, overwrite=True)
    assert json.loads((out / "summary.json").read_text())["n_pairs"] == 1
    assert [p.name for p in (out / "pairs").iterdir()] == ["0001_0002.csv"]  # stale one removed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
