"""The benchmark harness itself: ANTs runs (through a SimpleITK stand-in for ANTsPy, checked
against ITK's own warping), CSV files and command-line parsing. The library pieces the scripts
use are tested with the library (tests/data/test_slices.py, tests/app/test_pairs.py,
tests/inference/test_export.py)."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch

import _common  # benchmarks/ is put on sys.path by conftest.py
import baselines
from maxca.app.pairs import load_pairs, validation_pairs
from maxca.data import random_smooth_deformation, read_volume
from maxca.data.slices import build_slice_dataset
from maxca.inference import itk_displacement_image, warp_volume

from .conftest import LABELS


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
        ds = build_slice_dataset(tiny_dataset, tmp_path / "s", "axial", 1, 1)
    pair = validation_pairs(ds)[0]
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
    pairs = load_pairs(validation_pairs(tiny_dataset))
    rows = baselines.ants_method(FakeAnts(), "SyN", pairs, list(LABELS), 0, tmp_path)
    assert [r["pair"] for r in rows] == [p.name for p in pairs]
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("dice", "hd95", "njd_percent", "sdlogj"))
        assert abs(r["dice"] - r["dice_ants_labels"]) < 0.01  # same labels, same warp
        assert math.isfinite(r["njd_ants"])
    assert os.listdir(tmp_path) == []  # per-pair ANTs files are removed


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


def test_training_pairs_wrap_around_the_subjects() -> None:
    from _common import training_pairs

    assert training_pairs("1-4", 1) == [
        ("0001", "0002"), ("0002", "0003"), ("0003", "0004"), ("0004", "0001")
    ]  # fmt: skip
    assert training_pairs("3-5", 5) == [("0003", "0005"), ("0004", "0003"), ("0005", "0004")]


def test_parse_subject_pairs_known_answer_and_errors(capsys) -> None:  # noqa: ANN001
    import argparse

    from _common import parse_subject_pairs

    p = argparse.ArgumentParser()
    assert parse_subject_pairs(p, "3:14,14:3") == [(3, 14), (14, 3)]
    for bad in ("3-14", "3:14:5", "", "x:1"):
        with pytest.raises(SystemExit) as info:
            parse_subject_pairs(p, bad)
        assert info.value.code == 2
        assert "--pairs must be FIXED:MOVING" in capsys.readouterr().err


def test_write_table_report_writes_and_returns_the_same_text(tmp_path: Path, capsys) -> None:
    path = tmp_path / "report.md"
    text = _common.write_table_report(path, "Model m; 2 pairs.", ["name", "Dice"], [["a", "0.5"]])
    assert text == "Model m; 2 pairs.\n\n| name | Dice |\n| :--- | ---: |\n| a | 0.5 |\n"
    assert path.read_text() == text and text in capsys.readouterr().out
