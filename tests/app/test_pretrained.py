"""Packaged models (``--model brain``, ``maxca models``, ``maxca.load_pretrained``) and the
``--affine`` pre-alignment through the CLI: the chain ``affine.mat`` + deformable field and the
composed ``disp_itk.nii.gz`` both reproduce ``warped.nii.gz`` in SimpleITK."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import maxca
import maxca.pretrained as pretrained
from maxca.cli import main
from maxca.errors import MaxcaInputError
from maxca.models import create_model
from maxca.models.checkpoint import save_checkpoint

SHAPE = (24, 28, 20)
AFFINE = np.array([[-3.0, 0, 0, 36], [0, 0, 3.0, -30], [0, -3.0, 0, 40], [0, 0, 0, 1]])


def _tiny_model_dir(folder: Path) -> Path:
    model = create_model(
        "pyramid_small", spatial_dims=3, enc_channels=4, dec_channels=8, heads=2, region=4,
        attention="maxca", diffeomorphic=True,
    )  # fmt: skip
    data = {"shape": list(SHAPE), "spacing": [3.0, 3.0, 3.0], "spatial_dims": 3}
    save_checkpoint(folder, model, data=data)
    return folder


@pytest.fixture
def packaged(tmp_path, monkeypatch) -> Path:
    """A tiny model installed as the packaged ``brain`` weights."""
    weights = tmp_path / "weights"
    _tiny_model_dir(weights / "brain")
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights)
    return weights / "brain"


def _phantom() -> np.ndarray:
    g = np.meshgrid(*(np.arange(s, dtype=np.float64) for s in SHAPE), indexing="ij")
    c = [(s - 1) / 2 for s in SHAPE]
    r = sum(((x - ci) / (s / 2.4)) ** 2 for x, ci, s in zip(g, c, SHAPE))
    image = np.where(r <= 1, 0.8, 0.0) + np.where(r <= 0.3, 0.4, 0.0)
    image += np.where(((g[0] - c[0] - 4) ** 2 + (g[1] - c[1] + 3) ** 2 + g[2] * 0) < 6, 0.5, 0)
    return ndimage.gaussian_filter(image, 1.0).astype(np.float32)  # smooth: no step edges


def test_packaged_names_resolve_and_load(packaged: Path, tmp_path: Path) -> None:
    path, spec = pretrained.resolve_model("brain")
    assert path == packaged and spec is not None and spec.affine
    other = tmp_path / "brain"  # an existing folder of that name wins over the packaged model
    other.mkdir()
    assert pretrained.resolve_model(other) == (other, None)
    model, info = maxca.load_pretrained("brain")
    assert not model.training and info.model_config["name"] == "pyramid_small"
    assert info.path == packaged
    with pytest.raises(MaxcaInputError, match="unknown packaged model 'heart'"):
        pretrained.pretrained_path("heart")


def test_missing_packaged_weights_are_a_clear_error(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "nothing")
    with pytest.raises(MaxcaInputError, match="weights of packaged model 'brain' are missing"):
        maxca.load_pretrained("brain")
    assert main(["models"]) == 0
    assert "weights missing" in capsys.readouterr().out


def test_models_command_lists_packaged_models_and_kinds(packaged: Path, capsys) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "brain" in out and "weights missing" not in out
    assert "pyramid_small" in out and "maxca" in out


def test_register_with_the_packaged_model_prealigns_by_default(packaged, tmp_path) -> None:
    import SimpleITK as sitk  # noqa: N813 (the library's own idiom)

    fixed = _phantom()
    a = math.radians(15)
    T = np.eye(4)
    T[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    T[:3, 3] = (9.0, -6.0, 3.0)
    # moving(T x) = fixed(x): sample fixed at T^-1 of each moving voxel's world point
    M = np.linalg.inv(AFFINE) @ np.linalg.inv(T) @ AFFINE
    moving = ndimage.affine_transform(fixed, M[:3, :3], M[:3, 3], order=1).astype(np.float32)
    f_path, m_path = tmp_path / "f.nii.gz", tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(fixed, AFFINE), str(f_path))
    nib.save(nib.Nifti1Image(moving, AFFINE), str(m_path))

    out = tmp_path / "out"
    args = ["register", "--model", "brain", "--fixed", str(f_path), "--moving", str(m_path)]
    assert main([*args, "--out", str(out), "--device", "cpu"]) == 0
    record = json.loads((out / "registration.json").read_text())
    T_est = np.asarray(record["affine"])
    idx = np.argwhere(fixed > 0.1)[::10]
    world = (AFFINE @ np.c_[idx, np.ones(len(idx))].T).T
    assert np.abs(world @ (T_est - T).T).max() < 3.0  # mm; voxels are 3 mm
    assert (out / "affine.mat").is_file() and (out / "disp_deformable_itk.nii.gz").is_file()

    warped = nib.load(str(out / "warped.nii.gz")).get_fdata().astype(np.float32)
    f_img, m_img = sitk.ReadImage(str(f_path)), sitk.ReadImage(str(m_path))

    def field(name: str) -> sitk.Transform:
        img = sitk.Cast(sitk.ReadImage(str(out / name)), sitk.sitkVectorFloat64)
        return sitk.DisplacementFieldTransform(img)

    chain = sitk.CompositeTransform(3)
    chain.AddTransform(sitk.ReadTransform(str(out / "affine.mat")))
    chain.AddTransform(field("disp_deformable_itk.nii.gz"))
    # compare where the moving image is sampled well inside its field of view (ITK and maxca
    # treat the outermost half voxel differently)
    ones = sitk.Resample(m_img * 0 + 1, f_img, field("disp_itk.nii.gz"))
    fov = ndimage.binary_erosion(sitk.GetArrayFromImage(ones).transpose(2, 1, 0) > 0.999)
    inside = (fixed > 0.1) & fov
    assert inside.sum() > 0.5 * (fixed > 0.1).sum()
    for tx in (field("disp_itk.nii.gz"), chain):
        ref = sitk.GetArrayFromImage(sitk.Resample(m_img, f_img, tx)).transpose(2, 1, 0)
        diff = np.abs(ref - warped)[inside]
        assert diff.mean() < 5e-3 and np.percentile(diff, 99) < 5e-2

    # ANTs (antsApplyTransforms through ANTsPy, the `test` extra installs it): the composed
    # field, and the chain in ANTs' order (deformable listed first); the reversed chain is not it
    import ants

    f_ants, m_ants = ants.image_read(str(f_path)), ants.image_read(str(m_path))
    chains = {
        "composed": [out / "disp_itk.nii.gz"],
        "chain": [out / "disp_deformable_itk.nii.gz", out / "affine.mat"],
        "reversed": [out / "affine.mat", out / "disp_deformable_itk.nii.gz"],
    }
    errors = {}
    for name, tl in chains.items():
        res = ants.apply_transforms(f_ants, m_ants, transformlist=[str(t) for t in tl]).numpy()
        errors[name] = np.abs(res - warped)[inside]
    for name in ("composed", "chain"):
        assert errors[name].mean() < 5e-3 and np.percentile(errors[name], 99) < 5e-2, name
    assert errors["reversed"].mean() > 10 * errors["chain"].mean()

    # the chain's files are ITK outputs: without `itk` in --outputs there are none of them
    # (the affine stays in registration.json)
    only = tmp_path / "only"
    assert main([*args, "--out", str(only), "--device", "cpu", "--outputs", "warped"]) == 0
    files = sorted(p.name for p in only.iterdir() if not p.name.startswith("."))
    assert files == ["registration.json", "warped.nii.gz"]
    assert json.loads((only / "registration.json").read_text())["affine"] == record["affine"]

    plain = tmp_path / "plain"  # --no-affine: no pre-alignment, no affine files
    assert main([*args, "--out", str(plain), "--device", "cpu", "--no-affine"]) == 0
    assert json.loads((plain / "registration.json").read_text())["affine"] is None
    assert not (plain / "affine.mat").exists()


def test_a_checkpoint_path_is_not_prealigned_unless_asked(tmp_path) -> None:
    model_dir = _tiny_model_dir(tmp_path / "model")
    fixed = _phantom()
    f_path = tmp_path / "f.nii.gz"
    nib.save(nib.Nifti1Image(fixed, AFFINE), str(f_path))
    base = ["register", "--model", str(model_dir), "--fixed", str(f_path), "--moving", str(f_path)]
    assert main([*base, "--out", str(tmp_path / "a"), "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "a" / "registration.json").read_text())["affine"] is None
    assert main([*base, "--out", str(tmp_path / "b"), "--device", "cpu", "--affine"]) == 0
    T = np.asarray(json.loads((tmp_path / "b" / "registration.json").read_text())["affine"])
    idx = np.argwhere(fixed > 0.1)
    world = (AFFINE @ np.c_[idx, np.ones(len(idx))].T).T
    assert np.abs(world @ (T - np.eye(4)).T).max() < 1.5  # mm, half a 3 mm voxel: itself
