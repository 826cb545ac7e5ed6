"""Reading/writing volumes: affines, sitk <-> nibabel agreement, atomic writes, bad files."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch

from maxca.data import io as mio
from maxca.data.io import (
    Volume,
    check_same_grid,
    read_vector_field,
    read_volume,
    write_vector_field,
    write_volume,
)
from maxca.errors import MaxcaInputError

from .conftest import AFFINE_2MM, BRAIN_SHAPE, write_nifti

LPS = np.diag([-1.0, -1.0, 1.0])


def oblique_affine() -> np.ndarray:
    """Rotated (30 deg about axis 2, 10 deg about axis 0), flipped, anisotropic, shifted."""
    a, b = math.radians(30), math.radians(10)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    flip = np.diag([-1.0, 1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ flip @ np.diag([1.5, 0.8, 2.5])
    affine[:3, 3] = [12.3, -45.6, 7.8]
    return affine


def test_read_brain_like_nifti(brain_2mm: Path) -> None:
    vol = read_volume(brain_2mm / "imagesTr" / "BRAIN_0001_0000.nii.gz")  # uint8 + slope 1/255
    assert vol.shape == BRAIN_SHAPE
    assert vol.ndim == 3
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.affine, AFFINE_2MM)
    assert vol.spacing == (2.0, 2.0, 2.0)
    assert vol.array.min() >= 0.0 and vol.array.max() <= 1.0 and vol.array.max() > 0.9
    lab = read_volume(brain_2mm / "labelsTr" / "BRAIN_0001_0000.nii.gz", kind="label")
    assert np.issubdtype(lab.array.dtype, np.integer)
    assert {2, 3, 41, 42}.issubset(set(np.unique(lab.array).tolist()))


def test_sitk_reader_matches_nibabel_on_brain_like_file(brain_2mm: Path) -> None:
    path = brain_2mm / "imagesTr" / "BRAIN_0002_0000.nii.gz"
    arr, affine, _ = mio._read_sitk(path, "image")
    vol = read_volume(path)
    np.testing.assert_allclose(affine, vol.affine, atol=1e-5)
    np.testing.assert_allclose(arr, vol.array, atol=1e-6)


def test_nifti_round_trip_keeps_affine_and_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(5, 6, 7)).astype(np.float32)
    affine = oblique_affine()
    out = write_volume(tmp_path / "a.nii.gz", arr, affine)
    vol = read_volume(out)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(vol.array, arr)
    np.testing.assert_allclose(vol.spacing, (1.5, 0.8, 2.5), rtol=1e-6)
    # sform and qform are both set, so ITK-based readers see the same grid
    hdr = nib.load(str(out)).header
    assert int(hdr["sform_code"]) > 0 and int(hdr["qform_code"]) > 0
    # and SimpleITK reading the NIfTI gives nibabel's affine
    sarr, saffine, _ = mio._read_sitk(out, "image")
    np.testing.assert_allclose(saffine, vol.affine, atol=1e-4)
    np.testing.assert_array_equal(sarr, arr)


@pytest.mark.parametrize("ext", [".mha", ".nrrd"])
def test_nifti_to_sitk_format_keeps_ras_affine(tmp_path: Path, ext: str) -> None:
    rng = np.random.default_rng(1)
    arr = rng.normal(size=(4, 5, 6)).astype(np.float32)
    affine = oblique_affine()
    nii = read_volume(write_nifti(tmp_path / "a.nii.gz", arr, affine))
    out = write_volume(tmp_path / f"a{ext}", nii.array, like=nii)
    back = read_volume(out)
    np.testing.assert_allclose(back.affine, nii.affine, atol=1e-5)
    np.testing.assert_array_equal(back.array, nii.array)
    # independent check with SimpleITK itself: index (i, j, k) is at LPS(affine @ (i, j, k))
    img = sitk.ReadImage(str(out))
    ijk = (1, 3, 2)
    expected = LPS @ (affine @ np.array([*ijk, 1.0]))[:3]
    np.testing.assert_allclose(img.TransformIndexToPhysicalPoint(ijk), expected, atol=1e-4)
    assert sitk.GetArrayFromImage(img)[ijk[::-1]] == arr[ijk]


def test_label_round_trip_and_2d_mha(tmp_path: Path) -> None:
    labels = np.arange(24, dtype=np.int16).reshape(4, 6)
    affine = np.diag([0.5, -2.0, 1.0, 1.0])
    affine[:2, 3] = [3.0, 4.0]
    for name in ("l.nii.gz", "l.mha"):
        write_volume(tmp_path / name, labels, affine)
        vol = read_volume(tmp_path / name, kind="label", expected_ndim=2)
        assert vol.shape == (4, 6) and np.issubdtype(vol.array.dtype, np.integer)
        np.testing.assert_array_equal(vol.array, labels)
        np.testing.assert_allclose(vol.affine[:2, [0, 1, 3]], affine[:2, [0, 1, 3]], atol=1e-6)


def test_write_like_never_inherits_scaling(brain_2mm: Path, tmp_path: Path) -> None:
    like = read_volume(brain_2mm / "imagesTr" / "BRAIN_0001_0000.nii.gz")  # uint8 + slope
    values = np.linspace(-3.3, 7.7, num=int(np.prod(like.shape)), dtype=np.float32)
    values = values.reshape(like.shape)
    out = write_volume(tmp_path / "w.nii.gz", values, like=like)
    back = read_volume(out)
    np.testing.assert_array_equal(back.array, values)
    np.testing.assert_array_equal(back.affine, like.affine)
    assert int(nib.load(str(out)).header["sform_code"]) == 4  # MNI code kept from `like`


def test_write_accepts_torch_tensor(tmp_path: Path) -> None:
    t = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    vol = read_volume(write_volume(tmp_path / "t.nii", t, np.eye(4)))
    np.testing.assert_array_equal(vol.array, t.numpy())


def test_atomic_write_leaves_only_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real_save = nib.save

    def spy(img, filename):
        seen.append(Path(filename).name)
        real_save(img, filename)

    monkeypatch.setattr(mio.nib, "save", spy)
    write_volume(tmp_path / "sub" / "out.nii.gz", np.zeros((3, 3, 3), np.float32), np.eye(4))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["out.nii.gz"]
    assert len(seen) == 1
    assert seen[0].startswith(".out.tmp-") and seen[0].endswith(".nii.gz")


def test_failing_write_leaves_no_partial_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.nii.gz"
    target.write_bytes(b"previous content")

    def broken(img, filename):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(mio.nib, "save", broken)
    with pytest.raises(MaxcaInputError, match=r"out\.nii\.gz: cannot write file .*disk full"):
        write_volume(target, np.zeros((3, 3, 3), np.float32), np.eye(4))
    assert target.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]
    with pytest.raises(MaxcaInputError):
        write_volume(tmp_path / "new.nii.gz", np.zeros((3, 3, 3), np.float32), np.eye(4))
    assert not (tmp_path / "new.nii.gz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


@pytest.mark.parametrize(
    ("name", "message"),
    [("bad.nii.gz", "cannot read NIfTI file"), ("bad.mha", "cannot read image file")],
)
def test_corrupt_file_clear_error(tmp_path: Path, name: str, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(MaxcaInputError, match=message) as info:
        read_volume(path)
    assert name in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_bad_extension(tmp_path: Path) -> None:
    with pytest.raises(MaxcaInputError, match=r"file not found: .*nope\.nii\.gz"):
        read_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(MaxcaInputError, match=r"x\.png: unsupported file extension '\.png'"):
        read_volume(tmp_path / "x.png")
    with pytest.raises(MaxcaInputError, match=r"cannot write extension '\.mhd'"):
        write_volume(tmp_path / "x.mhd", np.zeros((2, 2, 2)), np.eye(4))
    with pytest.raises(MaxcaInputError, match="kind must be 'image' or 'label'"):
        read_volume(tmp_path / "x.png", kind="mask")  # type: ignore[arg-type]


def test_nan_image_rejected(tmp_path: Path) -> None:
    arr = np.zeros((3, 4, 5), np.float32)
    arr[1, 2, 3] = np.nan
    arr[0, 0, 0] = np.inf
    path = write_nifti(tmp_path / "nan.nii.gz", arr)
    with pytest.raises(MaxcaInputError, match=r"nan\.nii\.gz: image has 2 NaN/Inf voxel"):
        read_volume(path)


def test_dimensions_checked_and_trailing_singletons_squeezed(tmp_path: Path) -> None:
    path4 = write_nifti(tmp_path / "four.nii.gz", np.zeros((3, 4, 5, 2), np.float32))
    with pytest.raises(MaxcaInputError, match=r"expected a 2-D or 3-D volume, .*\(3, 4, 5, 2\)"):
        read_volume(path4)
    with pytest.raises(MaxcaInputError, match=r"expected a 3-D volume, .*\(3, 4, 5, 2\)"):
        read_volume(path4, expected_ndim=3)
    single = write_nifti(tmp_path / "single.nii.gz", np.ones((3, 4, 5, 1), np.float32))
    assert read_volume(single).shape == (3, 4, 5)
    flat = write_nifti(tmp_path / "flat.nii.gz", np.ones((3, 4, 1), np.float32))
    assert read_volume(flat).shape == (3, 4, 1)
    assert read_volume(flat, expected_ndim=2).shape == (3, 4)
    with pytest.raises(MaxcaInputError, match=r"expected a 2-D volume"):
        read_volume(single, expected_ndim=2)


def test_label_values_checked(tmp_path: Path) -> None:
    bad = np.zeros((3, 3, 3), np.float32)
    bad[1, 1, 1] = 2.5
    path = write_nifti(tmp_path / "lab.nii.gz", bad)
    with pytest.raises(MaxcaInputError, match=r"lab\.nii\.gz: label map has non-integer values"):
        read_volume(path, kind="label")
    good = write_nifti(tmp_path / "ok.nii.gz", np.full((3, 3, 3), 7.0, np.float32))
    vol = read_volume(good, kind="label")
    assert vol.array.dtype == np.int64 and (vol.array == 7).all()
    # float rounding of stored ids (float32 arithmetic, or a NIfTI scaling) is not "non-integer"
    near = np.array([0.0, 2.9999998, 17.000002, 1000.0001, 41.0], np.float32).reshape(5, 1, 1)
    vol = read_volume(write_nifti(tmp_path / "near.nii.gz", near), kind="label")
    assert vol.array.ravel().tolist() == [0, 3, 17, 1000, 41]
    img = nib.Nifti1Image(np.array([0, 3, 9, 30], np.int16).reshape(4, 1, 1), np.eye(4))
    img.header.set_slope_inter(1 / 3, 0)  # stored 0, 3, 9, 30 -> ids 0, 1, 3, 10 after scaling
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    assert read_volume(tmp_path / "scaled.nii.gz", kind="label").array.ravel().tolist() == [
        0, 1, 3, 10,
    ]  # fmt: skip
    bad[1, 1, 1] = 3.001  # a real fraction is still refused
    with pytest.raises(MaxcaInputError, match=r"non-integer values \(e\.g\. 3\.001\)"):
        read_volume(write_nifti(tmp_path / "frac.nii.gz", bad), kind="label")


def test_integer_cast_on_write_is_checked(tmp_path: Path) -> None:
    with pytest.raises(MaxcaInputError, match="non-integer values with integer dtype uint8"):
        write_volume(tmp_path / "l.nii.gz", np.full((2, 2, 2), 0.5), np.eye(4), dtype=np.uint8)
    with pytest.raises(MaxcaInputError, match="do not fit dtype uint8"):
        write_volume(tmp_path / "l.nii.gz", np.full((2, 2, 2), 300.0), np.eye(4), dtype="uint8")
    write_volume(tmp_path / "l.nii.gz", np.full((2, 2, 2), 3.0), np.eye(4), dtype=np.uint8)
    assert nib.load(str(tmp_path / "l.nii.gz")).get_data_dtype() == np.uint8


def test_vector_field_layout_and_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    field3 = rng.normal(size=(4, 5, 6, 3)).astype(np.float32)
    out = write_vector_field(tmp_path / "disp.nii.gz", field3, oblique_affine())
    img = nib.load(str(out))
    assert img.shape == (4, 5, 6, 1, 3)
    assert img.header.get_intent()[0] == "vector"
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, :, 0, :], field3)
    back, affine = read_vector_field(out)
    np.testing.assert_array_equal(back, field3)
    np.testing.assert_allclose(affine, oblique_affine(), atol=1e-5)
    field2 = rng.normal(size=(4, 5, 2)).astype(np.float32)
    out2 = write_vector_field(tmp_path / "disp2.nii", field2, np.eye(4))
    assert nib.load(str(out2)).shape == (4, 5, 1, 1, 2)
    np.testing.assert_array_equal(read_vector_field(out2)[0], field2)
    with pytest.raises(MaxcaInputError, match=r"expected a field of shape \(\*S, d\)"):
        write_vector_field(tmp_path / "bad.nii.gz", np.zeros((4, 5, 6, 2)), np.eye(4))


def test_check_same_grid() -> None:
    a = Volume(np.zeros((4, 5, 6), np.float32), oblique_affine())
    check_same_grid(a, Volume(np.ones((4, 5, 6), np.uint8), oblique_affine() + 1e-5), "a vs b")
    with pytest.raises(MaxcaInputError, match=r"fixed vs label: grid shapes differ"):
        check_same_grid(a, Volume(np.zeros((4, 5, 7)), oblique_affine()), "fixed vs label")
    shifted = oblique_affine()
    shifted[0, 3] += 0.01
    with pytest.raises(MaxcaInputError, match=r"a vs b: affines differ by up to 0\.01 mm"):
        check_same_grid(a, Volume(np.zeros((4, 5, 6)), shifted), "a vs b")
    with pytest.raises(MaxcaInputError, match="4x4"):
        Volume(np.zeros((2, 2, 2)), np.eye(3))


@pytest.mark.parametrize("kind", ["image", "label"])
def test_a_complex_nifti_is_refused_not_silently_cast(tmp_path: Path, kind: str) -> None:
    values = (np.ones((4, 5, 6)) + 2j * np.ones((4, 5, 6))).astype(np.complex64)
    path = tmp_path / "c.nii.gz"
    nib.save(nib.Nifti1Image(values, np.eye(4)), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no raw ComplexWarning on the way
        with pytest.raises(MaxcaInputError, match=rf"complex-valued {kind} \(complex64\)"):
            read_volume(path, kind)


def test_float64_beyond_float32_range_is_named_not_called_nan(tmp_path: Path) -> None:
    arr = np.zeros((3, 4, 5), np.float64)
    arr[1, 1, 1] = 1e40
    arr[2, 2, 2] = -5e39
    path = write_nifti(tmp_path / "huge.nii.gz", arr)
    with pytest.raises(
        MaxcaInputError,
        match=r"huge\.nii\.gz: image has 2 voxel\(s\) beyond the "
        r"float32 range \(\|value\| up to 1e\+40",
    ):
        read_volume(path)
    arr[1, 1, 1] = np.nan  # a real NaN next to an overflow: the overflow is still the one named
    with pytest.raises(MaxcaInputError, match=r"1 voxel\(s\) beyond the float32 range"):
        read_volume(write_nifti(tmp_path / "both.nii.gz", arr))
    # the same from an ITK format (SimpleITK reads float64 as float64)
    mha = tmp_path / "huge.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.where(np.isnan(arr), 0, arr)), str(mha))
    with pytest.raises(MaxcaInputError, match=r"huge\.mha: image has 1 voxel\(s\) beyond the"):
        read_volume(mha)
    arr[2, 2, 2] = 3e38  # within float32: read, value kept
    vol = read_volume(write_nifti(tmp_path / "nan.nii.gz", np.where(np.isnan(arr), 0, arr)))
    assert vol.array.dtype == np.float32 and vol.array[2, 2, 2] == np.float32(3e38)


@pytest.mark.parametrize(("unit", "scale"), [("meter", 1000.0), ("micron", 1e-3), ("mm", 1.0)])
def test_nifti_units_are_converted_to_mm_as_itk_does(
    tmp_path: Path, unit: str, scale: float
) -> None:
    stored = oblique_affine()
    stored[:3, :] /= scale  # the same grid, written in `unit`
    img = nib.Nifti1Image(np.arange(60, dtype=np.float32).reshape(3, 4, 5), stored)
    img.header.set_xyzt_units(unit, "sec")
    path = tmp_path / f"{unit}.nii.gz"
    nib.save(img, str(path))
    vol = read_volume(path)
    np.testing.assert_allclose(vol.affine, oblique_affine(), atol=1e-9 * max(1.0, 1 / scale))
    # reference: SimpleITK's own reading of the same file (ITK converts the unit to mm)
    _, itk_affine, _ = mio._read_sitk(path, "image")
    np.testing.assert_allclose(vol.affine, itk_affine, rtol=1e-5, atol=1e-4)
    assert vol.header.get_xyzt_units() == ("mm", "sec")
    # an output written like it is in mm, at the same place: read back by nibabel unchanged
    out = write_volume(tmp_path / "out.nii.gz", vol.array, like=vol)
    back = nib.load(str(out))
    assert back.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(back.affine, oblique_affine(), atol=1e-4)


def test_unknown_units_read_as_mm_and_a_time_unit_is_refused(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.zeros((3, 4, 5), np.float32), oblique_affine())
    img.header.set_xyzt_units("unknown", "unknown")
    np.testing.assert_allclose(
        read_volume(write_nifti_img(img, tmp_path / "u.nii")).affine, oblique_affine()
    )
    img.header["xyzt_units"] = 8 + 5  # seconds, and a spatial code that NIfTI does not define
    with pytest.raises(MaxcaInputError, match=r"t\.nii: NIfTI spatial unit code 5 is not a known"):
        read_volume(write_nifti_img(img, tmp_path / "t.nii"))


def write_nifti_img(img: nib.Nifti1Image, path: Path) -> Path:
    nib.save(img, str(path))
    return path


def test_vector_field_in_metres_is_refused(tmp_path: Path) -> None:
    path = write_vector_field(tmp_path / "v.nii.gz", np.zeros((3, 4, 5, 3), np.float32), np.eye(4))
    img = nib.load(str(path))
    img.header.set_xyzt_units("meter")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header), str(path))
    with pytest.raises(MaxcaInputError, match=r"v\.nii\.gz: vector field stored in 'meter' units"):
        read_vector_field(path)


def test_sform_and_qform_that_disagree_warn_and_the_sform_is_used(tmp_path: Path) -> None:
    qform = np.diag([2.0, 2.0, 2.0, 1.0])
    qform[:3, 3] = [-10.0, -20.0, -30.0]
    sform = qform.copy()
    sform[:3, 3] += [5.0, 0.0, 0.0]
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), None)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=2)  # "aligned": ITK reads the qform of such a file
    path = tmp_path / "forms.nii.gz"
    nib.save(img, str(path))
    with pytest.warns(
        UserWarning, match=r"forms\.nii\.gz: its sform and qform disagree \(by up to 5 "
    ):
        vol = read_volume(path)
    np.testing.assert_allclose(vol.affine, sform)
    _, itk_affine, _ = mio._read_sitk(path, "image")  # why it matters: ITK puts it elsewhere
    np.testing.assert_allclose(itk_affine, qform, atol=1e-5)
    # the same forms, or a qform left unset, read silently
    for q_code, q in ((1, sform), (0, qform)):
        img.set_qform(q, code=q_code)
        nib.save(img, str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            np.testing.assert_allclose(read_volume(path).affine, sform)


def test_a_file_without_forms_warns_and_outputs_keep_its_codes(tmp_path: Path) -> None:
    """Both codes 0: nibabel and ITK place the file differently; an output written like it keeps
    the codes 0, so that each tool places the output where it places the input."""
    img = nib.Nifti1Image(np.arange(120, dtype=np.float32).reshape(4, 5, 6), np.diag([2, 3, 4, 1]))
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    path = tmp_path / "noforms.nii.gz"
    nib.save(img, str(path))
    with pytest.warns(
        UserWarning, match=r"noforms\.nii\.gz: its header sets neither sform nor qform"
    ):
        vol = read_volume(path)
    np.testing.assert_allclose(vol.affine, nib.load(str(path)).affine)  # nibabel's default
    out = write_volume(tmp_path / "out.nii.gz", vol.array * 2, like=vol)
    back = nib.load(str(out))
    assert int(back.header["sform_code"]) == int(back.header["qform_code"]) == 0
    np.testing.assert_allclose(back.affine, vol.affine)
    itk_in, itk_out = sitk.ReadImage(str(path)), sitk.ReadImage(str(out))
    assert itk_out.GetOrigin() == itk_in.GetOrigin()
    assert itk_out.GetDirection() == itk_in.GetDirection()
    np.testing.assert_allclose(itk_out.GetSpacing(), itk_in.GetSpacing())


@pytest.mark.parametrize("kind", ["image", "label"])
def test_an_rgb_nifti_is_refused_in_one_line(tmp_path: Path, kind: str) -> None:
    rgb = np.zeros((4, 5, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(tmp_path / "rgb.nii.gz"))
    with pytest.raises(
        MaxcaInputError,
        match=rf"rgb\.nii\.gz: colour voxels \(R, G, B\); give a single-channel {kind}",
    ):
        read_volume(tmp_path / "rgb.nii.gz", kind)  # type: ignore[arg-type]
