"""The shared pieces of the benchmark harness: the ITK field conversion (checked against ITK's
own warping through a stand-in for ANTsPy), the 2-D slice dataset and the scoring path."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch

import _common  # benchmarks/ is put on sys.path by conftest.py
import baselines
from maxca.data import random_smooth_deformation, read_volume
from maxca.inference import itk_displacement_image, warp_volume
from maxca.metrics import dice
from maxca.models import RegistrationHead, create_model
from maxca.models.checkpoint import CheckpointInfo

from .conftest import LABELS, SHAPE, lia_affine


# ---------------------------------------------------------------------------------------------
# ITK displacement fields -> voxel flows
# ---------------------------------------------------------------------------------------------
def test_itk_field_round_trip_3d() -> None:
    affine = lia_affine(1.5)
    flow = random_smooth_deformation(SHAPE, 2.0, 6, generator=3).numpy()
    image = itk_displacement_image(flow, affine)
    back = _common.itk_field_to_voxel_flow(image, affine, SHAPE)
    assert back.shape == flow.shape
    np.testing.assert_allclose(back, flow, atol=1e-5)


def test_itk_field_round_trip_2d(tmp_path: Path) -> None:
    # the affine of an axial slice of brain-synth: in-plane axes -x and +y
    affine = _common.slice_affine(lia_affine(1.0), 1, 7)
    shape = (SHAPE[0], SHAPE[2])
    flow = random_smooth_deformation(shape, 2.0, 6, generator=4).numpy()
    sitk.WriteImage(itk_displacement_image(flow, affine), str(tmp_path / "f.nii.gz"))
    back = _common.itk_field_to_voxel_flow(tmp_path / "f.nii.gz", affine, shape)
    np.testing.assert_allclose(back, flow, atol=1e-5)


def test_itk_field_of_another_grid_is_refused() -> None:
    flow = np.zeros((3, *SHAPE), np.float32)
    image = itk_displacement_image(flow, lia_affine(2.0))
    with pytest.raises(ValueError, match="grid"):
        _common.itk_field_to_voxel_flow(image, lia_affine(1.0), SHAPE)
    with pytest.raises(ValueError, match="grid"):
        _common.itk_field_to_voxel_flow(image, lia_affine(2.0), (SHAPE[0], SHAPE[1], 5))


class _Img:
    """A stand-in for an ANTsImage: a SimpleITK image; ``numpy()`` in (i, j, k) order."""

    def __init__(self, image: sitk.Image, path: Path | None = None) -> None:
        self.image, self.path = image, path

    def numpy(self) -> np.ndarray:
        arr = sitk.GetArrayFromImage(self.image)
        return arr.transpose(*range(arr.ndim)[::-1])


class FakeAnts:
    """The part of ANTsPy that ``_common.ants_register`` uses, built on SimpleITK.

    ``registration`` "finds" a known smooth deformation (written as an ITK displacement field
    on the fixed grid, as ANTs writes its warps); ``apply_transforms`` warps with ITK's own
    ``DisplacementFieldTransform`` (or copies the field for ``compose``); the Jacobian is ITK's.
    """

    __version__ = "fake"

    def __init__(self, magnitude: float = 2.0) -> None:
        self.magnitude = magnitude
        self.flows: list[np.ndarray] = []

    def image_read(self, path: str) -> _Img:
        return _Img(sitk.ReadImage(path), Path(path))

    def registration(
        self,
        fixed: _Img,
        moving: _Img,
        outprefix: str = "",
        random_seed: int | None = None,
        **kw: Any,
    ) -> dict[str, list[str]]:
        vol = read_volume(fixed.path, "image")
        flow = random_smooth_deformation(vol.shape, self.magnitude, 6, generator=len(self.flows))
        self.flows.append(flow.numpy())
        path = f"{outprefix}1Warp.nii.gz"
        sitk.WriteImage(itk_displacement_image(flow.numpy(), vol.affine), path)
        return {"fwdtransforms": [path]}

    def apply_transforms(
        self,
        fixed: _Img,
        moving: _Img,
        transformlist: list[str],
        interpolator: str = "linear",
        compose: str | None = None,
    ) -> Any:
        if compose is not None:
            target = f"{compose}comptx.nii.gz"
            shutil.copy(transformlist[0], target)
            return target
        field = sitk.ReadImage(transformlist[0], sitk.sitkVectorFloat64)
        tx = sitk.DisplacementFieldTransform(field)
        mode = sitk.sitkNearestNeighbor if interpolator == "genericLabel" else sitk.sitkLinear
        return _Img(sitk.Resample(moving.image, fixed.image, tx, mode, 0.0))

    def create_jacobian_determinant_image(
        self, domain: _Img, tx: str, do_log: bool = False, geom: bool = False
    ) -> _Img:
        field = sitk.ReadImage(tx, sitk.sitkVectorFloat64)
        return _Img(sitk.DisplacementFieldJacobianDeterminant(field))


@pytest.mark.parametrize("setting", ["2d", "3d"])
def test_ants_flow_conversion_matches_itk_warping(
    setting: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    """Our voxel flow from an ANTs-style field warps the labels exactly as ITK does (ITK reads
    the NIfTI geometry itself, including the 2-D slices' in-plane axes -x and +y)."""
    ds = tiny_dataset
    if setting == "2d":
        ds = _common.build_slice_dataset(tiny_dataset, tmp_path / "s", "axial", 1, 1)
    pair = _common.validation_pairs(ds)[0]
    fake = FakeAnts()
    out = _common.ants_register(
        fake,
        pair.fixed,
        pair.moving,
        tmp_path / "work",
        _common.ANTS_PRESETS["SyN"],
        moving_label=pair.moving_label,
        jacobian=True,
    )
    np.testing.assert_allclose(out.flow, fake.flows[0], atol=1e-4)
    fixed = read_volume(pair.fixed, "image")
    ours = warp_volume(
        read_volume(pair.moving_label, "label"),
        torch.from_numpy(out.flow)[None],
        fixed.affine,
        "label",
    )[0, 0].numpy()
    assert out.warped_labels is not None and out.warped_labels.shape == ours.shape
    assert np.mean(out.warped_labels == ours) > 0.995  # nearest-neighbour ties aside
    assert not np.array_equal(ours, read_volume(pair.moving_label, "label").array)  # it moved
    assert out.flow.shape == (fixed.ndim, *fixed.shape)
    # ANTs' own Jacobian is only a cross-check column (ITK's filter here ignores the direction
    # cosines, so its values differ from ours on this LIA grid): it must come back on the grid
    assert out.jacobian is not None and out.jacobian.shape == ours.shape
    assert np.isfinite(out.jacobian).all()


def test_baselines_ants_method_with_stand_in(tiny_dataset: Path, tmp_path: Path) -> None:
    pairs = _common.load_pairs(_common.validation_pairs(tiny_dataset))
    rows = baselines.ants_method(FakeAnts(), "SyN", pairs, list(LABELS), 0, tmp_path)
    assert [r["pair"] for r in rows] == [p.name for p in pairs]
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("dice", "hd95", "njd_percent", "sdlogj"))
        assert abs(r["dice"] - r["dice_ants_labels"]) < 0.01  # same labels, same warp
        assert math.isfinite(r["njd_ants"])
    assert os.listdir(tmp_path) == []  # per-pair ANTs files are removed


# ---------------------------------------------------------------------------------------------
# the 2-D slice dataset
# ---------------------------------------------------------------------------------------------
def test_slice_affine_keeps_world_positions() -> None:
    a = lia_affine(1.0)
    axis = _common.plane_axis(a, "axial")
    assert axis == 1  # brain-synth's axis1 runs superior -> inferior
    assert _common.plane_axis(a, "coronal") == 2 and _common.plane_axis(a, "sagittal") == 0
    s = _common.slice_affine(a, axis, 9)
    for i, j in ((0, 0), (3, 5), (19, 23)):
        world3 = a @ np.array([i, 9, j, 1.0])
        world2 = s @ np.array([i, j, 0, 1.0])
        np.testing.assert_allclose(world2, world3)
    assert _common.slice_offsets(5, 3) == [-6, -3, 0, 3, 6]


def test_build_slice_dataset(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "slices"
    ds_json = _common.build_slice_dataset(tiny_dataset, out, "axial", n_slices=3, step=2)
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
    pairs = _common.validation_pairs(ds_json)
    assert pairs[0].name == "0600_0500" and pairs[1].name == "0601_0501"
    # reused while the parameters agree, rebuilt when they change
    stamp = (out / "dataset.json").stat().st_mtime_ns
    _common.build_slice_dataset(tiny_dataset, out, "axial", n_slices=3, step=2)
    assert (out / "dataset.json").stat().st_mtime_ns == stamp
    _common.build_slice_dataset(tiny_dataset, out, "axial", n_slices=2, step=2)
    assert len(json.loads((out / "dataset.json").read_text())["training"]) == 2 * 4


def test_slice_dataset_refuses_to_replace_other_folders(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a slice cache"):
        _common.build_slice_dataset(tiny_dataset, out, "axial", n_slices=1, step=1)
    assert (out / "keep.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------
def test_identity_score_is_dice_before(tiny_dataset: Path) -> None:
    pairs = _common.load_pairs(_common.validation_pairs(tiny_dataset))
    for p in pairs:
        result = _common.score_flow(p, _common.identity_flow(p), list(LABELS))
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
        ds = _common.build_slice_dataset(tiny_dataset, tmp_path / "s", "axial", 2, 3)
    pairs = _common.load_pairs(_common.validation_pairs(ds))
    fixed = pairs[0].fixed
    model = create_model(
        "unet", spatial_dims=fixed.ndim, attention="none", **_common.host_options("unet", True)
    )
    for m in model.modules():
        if isinstance(m, RegistrationHead):
            torch.nn.init.zeros_(m.conv.weight)
    info = CheckpointInfo(
        tmp_path, model.config_dict(), _common.data_record(fixed.shape, fixed.spacing)
    )
    rows = _common.evaluate_model(model, info, pairs, list(LABELS), warmup=False)
    ident = [
        _common.pair_row(_common.score_flow(p, _common.identity_flow(p), list(LABELS)), 0.0)
        for p in pairs
    ]
    assert [r["pair"] for r in rows] == [r["pair"] for r in ident]
    for r, i in zip(rows, ident):
        assert r["dice"] == i["dice"] and r["hd95"] == i["hd95"]
        assert r["seconds"] > 0


def test_score_flow_sees_a_shift(tiny_dataset: Path) -> None:
    """A one-voxel shift changes Dice: the scoring is not blind to the flow."""
    p = _common.load_pairs(_common.validation_pairs(tiny_dataset))[0]
    flow = _common.identity_flow(p)
    flow[0] += 2.0
    shifted = _common.score_flow(p, flow, list(LABELS))
    ident = _common.score_flow(p, _common.identity_flow(p), list(LABELS))
    assert shifted.dice_mean < ident.dice_mean - 0.02


def test_csv_round_trip(tmp_path: Path) -> None:
    rows = [{"a": 1, "b": 0.1 + 0.2, "c": float("nan")}, {"a": 2, "b": 1.5}]
    _common.write_csv(tmp_path / "t.csv", rows, ["a", "b", "c"])
    back = _common.read_csv(tmp_path / "t.csv", numeric=["b", "c"])
    assert back[0]["b"] == 0.1 + 0.2 and math.isnan(back[0]["c"]) and math.isnan(back[1]["c"])
    assert back[1]["a"] == "2"
    assert _common.read_csv(tmp_path / "missing.csv") == []
    assert not list(tmp_path.glob(".*tmp*"))


def test_name_parsing() -> None:
    assert _common.parse_names("unet, pyramid", _common.HOSTS, "hosts") == ["unet", "pyramid"]
    for bad in ("", "unet,unet", "vit"):
        with pytest.raises(ValueError):
            _common.parse_names(bad, _common.HOSTS, "hosts")
    assert _common.parse_ints("0,1,2", "seeds") == [0, 1, 2]
    with pytest.raises(ValueError):
        _common.parse_ints("0,x", "seeds")
