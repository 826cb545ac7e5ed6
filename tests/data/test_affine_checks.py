"""Degenerate affines are refused when a volume is read (issue #15 item 2), as the fixed and as
the moving image of ``maxca register`` (exit 2, one line, no output); a 2-D coronal slice with
orthogonal axes is accepted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import maxca
from maxca.data.io import check_affine, read_volume
from maxca.errors import MaxcaInputError
from maxca.models import create_model
from maxca.training.checkpoint import save_checkpoint

SHAPE = (12, 14, 10)
GOOD = np.diag([2.0, 2.0, 2.0, 1.0])


def _zero_column() -> np.ndarray:
    a = GOOD.copy()
    a[:3, 1] = 0.0  # zero spacing along axis 1
    return a


def _parallel() -> np.ndarray:
    a = GOOD.copy()
    a[:3, 2] = [2.0, 0.0, 0.0]  # axis 2 runs along axis 0
    return a


def _non_finite() -> np.ndarray:
    a = GOOD.copy()
    a[0, 3] = np.nan
    return a


def _save(path: Path, affine: np.ndarray, shape: tuple[int, ...] = SHAPE) -> Path:
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    nifti = nib.Nifti1Image(img, np.eye(4))
    nifti.set_sform(affine, code=1)  # set the raw header: nibabel would repair a bad qform
    nifti.set_qform(None, code=0)
    nib.save(nifti, str(path))
    return path


@pytest.mark.parametrize(
    ("make", "message"), [(_zero_column, "zero-length axis"), (_parallel, "singular")]
)
def test_read_refuses_degenerate_affines(tmp_path: Path, make, message: str) -> None:
    path = _save(tmp_path / "bad.nii.gz", make())
    with pytest.raises(MaxcaInputError, match=rf"bad\.nii\.gz: affine .*{message}"):
        read_volume(path)


def test_non_finite_affine_is_refused() -> None:
    # (nibabel does not keep NaN in a saved sform: the check is called directly)
    with pytest.raises(MaxcaInputError, match=r"x\.nii\.gz: affine is not a finite 4x4"):
        check_affine(_non_finite(), 3, "x.nii.gz")
    check_affine(GOOD, 3, "x.nii.gz")  # a good one passes


def test_coronal_2d_slice_with_orthogonal_axes_is_accepted(tmp_path: Path) -> None:
    coronal = np.zeros((4, 4))
    coronal[:3, 0] = [-1.0, 0.0, 0.0]  # axis 0: right -> left
    coronal[:3, 1] = [0.0, 0.0, 1.0]  # axis 1: inferior -> superior (no y component)
    coronal[:3, 2] = [0.0, 1.0, 0.0]
    coronal[3, 3] = 1.0
    vol = read_volume(_save(tmp_path / "coronal.nii.gz", coronal, (12, 14)), expected_ndim=2)
    assert vol.shape == (12, 14)
    np.testing.assert_allclose(vol.affine[:3, :2], coronal[:3, :2])


@pytest.mark.parametrize("role", ["fixed", "moving"])
def test_register_refuses_a_zero_spacing_image(tmp_path: Path, role: str) -> None:
    torch.manual_seed(0)
    model = create_model(
        "pyramid_small", spatial_dims=3, enc_channels=2, dec_channels=4, heads=1, region=2
    )
    data = {"shape": [16, 16, 16], "spacing": [2.0, 2.0, 2.0], "normalise": "minmax"}
    save_checkpoint(tmp_path / "run" / "checkpoints" / "best", model, data=data)
    images = {"fixed": _save(tmp_path / "fixed.nii.gz", GOOD)}
    images["moving"] = _save(tmp_path / "moving.nii.gz", GOOD)
    images[role] = _save(tmp_path / f"{role}_bad.nii.gz", _zero_column())
    out = tmp_path / "res"
    src = Path(maxca.__file__).resolve().parents[1]
    argv = [
        sys.executable, "-m", "maxca", "register", "--model", str(tmp_path / "run"),
        "--fixed", str(images["fixed"]), "--moving", str(images["moving"]),
        "--out", str(out), "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("maxca: error: ") and proc.stderr.count("\n") == 1
    assert f"{role}_bad.nii.gz: affine has a zero-length axis" in proc.stderr
    assert not out.exists()
