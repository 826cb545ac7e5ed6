"""maxca.data.slices: slice affines keep world positions; the 2-D dataset cut from a 3-D one
(content, names, reuse, refusal to replace a foreign folder)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from l2r_tiny import LABELS, SHAPE, lia_affine, make_tiny_dataset
from maxca.app.pairs import validation_pairs
from maxca.data import read_volume
from maxca.data.slices import build_slice_dataset, plane_axis, slice_affine, slice_offsets
from maxca.errors import MaxcaInputError


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny3d"))


def test_slice_affine_keeps_world_positions() -> None:
    a = lia_affine(1.0)
    axis = plane_axis(a, "axial")
    assert axis == 1  # brain-synth's axis1 runs superior -> inferior
    assert plane_axis(a, "coronal") == 2 and plane_axis(a, "sagittal") == 0
    s = slice_affine(a, axis, 9)
    for i, j in ((0, 0), (3, 5), (19, 23)):
        world3 = a @ np.array([i, 9, j, 1.0])
        world2 = s @ np.array([i, j, 0, 1.0])
        np.testing.assert_allclose(world2, world3)
    assert slice_offsets(5, 3) == [-6, -3, 0, 3, 6]


def test_build_slice_dataset(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "slices"
    ds_json = build_slice_dataset(tiny_dataset, out, "axial", n_slices=3, step=2)
    data = json.loads(ds_json.read_text())
    src = json.loads(tiny_dataset.read_text())
    assert len(data["training"]) == 3 * len(src["training"])
    assert len(data["registration_val"]) == 3 * len(src["registration_val"])
    assert data["evaluation_labels"] == list(LABELS)
    meta = json.loads((out / "slices.json").read_text())
    assert meta["axis"] == 1 and meta["indices"] == [5, 7, 9]
    # slice j=2 of subject 6 is index 9 of the source volume along axis 1
    img3 = nib.load(str(tiny_dataset.parent / "imagesTr" / "TINY_0006_0000.nii.gz"))
    img2 = nib.load(str(out / "imagesTr" / "SLICE_0602_0000.nii.gz"))
    assert img2.shape == (SHAPE[0], SHAPE[2])
    np.testing.assert_allclose(img2.get_fdata(), img3.get_fdata()[:, 9, :], atol=1e-6)
    lab2 = read_volume(out / "labelsTr" / "SLICE_0602_0000.nii.gz", "label")
    assert lab2.ndim == 2 and set(np.unique(lab2.array)) <= {0, *LABELS}
    pairs = validation_pairs(ds_json)
    assert pairs[0].name == "0600_0500" and pairs[1].name == "0601_0501"
    # reused while the parameters agree, rebuilt when they change
    stamp = (out / "dataset.json").stat().st_mtime_ns
    build_slice_dataset(tiny_dataset, out, "axial", n_slices=3, step=2)
    assert (out / "dataset.json").stat().st_mtime_ns == stamp
    build_slice_dataset(tiny_dataset, out, "axial", n_slices=2, step=2)
    assert len(json.loads((out / "dataset.json").read_text())["training"]) == 2 * 4


def test_slice_dataset_refuses_to_replace_other_folders(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(MaxcaInputError, match="not a slice cache"):
        build_slice_dataset(tiny_dataset, out, "axial", n_slices=1, step=1)
    assert (out / "keep.txt").read_text() == "mine"


def test_slice_parameters_are_checked() -> None:
    with pytest.raises(MaxcaInputError, match="plane must be one of"):
        plane_axis(np.eye(4), "oblique")
    with pytest.raises(MaxcaInputError, match="n_slices >= 1"):
        slice_offsets(0, 2)
