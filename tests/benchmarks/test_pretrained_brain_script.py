"""benchmarks/pretrained_brain.py: the conditions' inputs (properties), not the model's scores."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

import pretrained_brain  # benchmarks/ is put on sys.path by conftest.py


def _pair(tmp: Path) -> tuple[Path, Path, Path, Path]:
    rng = np.random.default_rng(0)
    lab = np.zeros((12, 14, 10), np.int16)
    lab[2:10, 2:12, 2:8] = 2  # white matter
    lab[4:8, 5:9, 3:7] = 4  # ventricle
    lab[2:4, 2:12, 2:8] = 3  # cortex
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-10.0, 5.0, 3.0]
    paths = []
    for name, arr in (("f", rng.random(lab.shape, np.float32)), ("m", rng.random(lab.shape))):
        paths.append(pretrained_brain._save(tmp / f"{name}.nii.gz", arr.astype(np.float32), aff))
    for name in ("fl", "ml"):
        paths.append(pretrained_brain._save(tmp / f"{name}.nii.gz", lab, aff))
    return paths[0], paths[1], paths[2], paths[3]


def test_rotated_moves_only_the_moving_header(tmp_path: Path) -> None:
    f, m, fl, ml = _pair(tmp_path)
    out = pretrained_brain.prepare("rotated", f, m, fl, ml, tmp_path, 0)
    assert out[0] == f and out[2] == fl  # the fixed side is untouched
    T = pretrained_brain._rotation(20.0, (30.0, 0.0, 0.0))
    for new, old in ((out[1], m), (out[3], ml)):
        a, b = nib.load(str(new)), nib.load(str(old))
        np.testing.assert_allclose(a.affine, T @ b.affine, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    R = T[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)  # a rigid motion
    assert np.isclose(np.degrees(np.arccos((np.trace(R) - 1) / 2)), 20.0)


def test_t2_condition_follows_the_t2_intensity_order(tmp_path: Path) -> None:
    f, m, fl, ml = _pair(tmp_path)
    out = pretrained_brain.prepare("t2", f, m, fl, ml, tmp_path, 0)
    lab = np.asarray(nib.load(str(fl)).dataobj)
    for image in out[:2]:
        img = nib.load(str(image)).get_fdata()
        means = {k: img[lab == k].mean() for k in (2, 3, 4)}
        # T2-like: fluid brightest, then cortex, then white matter (the reverse of T1)
        assert means[4] > means[3] > means[2]
    assert out[2] == fl and out[3] == ml  # the label maps are the originals
