"""Exported fields: ITK/ANTs (LPS mm) reproduces our warp with SimpleITK, Learn2Reg naming and
layout, maxca's voxel flow round trip."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch
from scipy.ndimage import map_coordinates

from maxca.data.io import Volume, write_volume
from maxca.errors import MaxcaInputError
from maxca.inference import (
    itk_displacement_image,
    l2r_case_id,
    l2r_disp_name,
    read_itk_displacement,
    read_voxel_flow,
    register_pair,
    write_itk_displacement,
    write_l2r_displacement,
    write_voxel_flow,
)

from .conftest import SHAPE, Info, KnownFlowModel, blobs, centre_of, lia_affine, world_of

GRID = {"shape": [8, 10, 12], "spacing": [3.0, 4.0, 2.4]}


def _smooth_flow(shape):
    """A smooth, non-trivial field on the model grid (up to ~1.2 grid voxels)."""
    idx = [torch.linspace(0, np.pi, n) for n in shape]
    a, b, c = torch.meshgrid(*idx, indexing="ij")
    return torch.stack(
        [1.2 * torch.sin(a) * torch.cos(b), -0.8 * torch.sin(b + c), 0.6 * torch.cos(a - c)]
    )


@pytest.fixture(scope="module")
def pair():
    """Fixed on an LIA grid; moving on an RAS grid with other spacing, shape and origin."""
    f_aff = lia_affine(spacing=(1.5, 2.0, 1.2))
    centre = centre_of(f_aff, SHAPE)
    m_shape = (24, 30, 28)
    m_aff = np.diag([1.3, 1.1, 1.7, 1.0])
    m_aff[:3, 3] = centre - m_aff[:3, :3] @ ((np.array(m_shape) - 1) / 2) + [0.7, -0.4, 0.3]
    fixed = Volume(blobs(world_of(f_aff, SHAPE), centre), f_aff)
    moving = Volume(blobs(world_of(m_aff, m_shape), centre + [2.0, -1.0, 1.5]), m_aff)
    result = register_pair(KnownFlowModel(_smooth_flow), Info(GRID), fixed, moving)
    return fixed, moving, result, centre


def test_flow_and_warp_match_an_independent_computation(pair):
    """D(x) = R_grid u_grid(q(x)) computed with scipy; warped = g(x + D(x)) analytically."""
    fixed, moving, result, centre = pair
    grid = result.grid
    u_grid = _smooth_flow(grid.shape).numpy().astype(np.float64)
    world = world_of(fixed.affine, SHAPE).reshape(3, -1)
    q = np.linalg.solve(grid.affine[:3, :3], world - grid.affine[:3, 3:4])
    u_at = np.stack([map_coordinates(u_grid[k], q, order=1, mode="nearest") for k in range(3)])
    D = grid.affine[:3, :3] @ u_at
    expected_flow = np.linalg.solve(fixed.affine[:3, :3], D).reshape(3, *SHAPE)
    np.testing.assert_allclose(result.flow, expected_flow, atol=1e-4)
    np.testing.assert_allclose(result.displacement_mm.reshape(3, -1), D, atol=1e-4)
    assert np.abs(result.flow).max() > 1.0  # a real deformation, several voxels in places
    expected = blobs((world + D).reshape(3, *SHAPE), centre + [2.0, -1.0, 1.5])
    assert np.abs(result.warped.array - expected).max() < 0.03  # linear interpolation error
    assert np.abs(result.warped.array - fixed.array).max() > 0.1  # and not the fixed image


def test_itk_field_reproduces_our_warp_with_simpleitk(pair, tmp_path):
    fixed, moving, result, _ = pair
    write_volume(tmp_path / "fixed.nii.gz", fixed.array, fixed.affine)
    write_volume(tmp_path / "moving.nii.gz", moving.array, moving.affine)
    path = write_itk_displacement(tmp_path / "disp_itk.nii.gz", result.flow, fixed.affine)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    field = sitk.ReadImage(str(path))
    assert field.GetNumberOfComponentsPerPixel() == 3
    assert field.GetSize() == SHAPE  # sitk size is (i, j, k)
    ref = sitk.ReadImage(str(tmp_path / "fixed.nii.gz"))
    np.testing.assert_allclose(field.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(field.GetDirection(), ref.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(field.GetSpacing(), ref.GetSpacing(), atol=1e-6)
    transform = sitk.DisplacementFieldTransform(field)
    mov = sitk.ReadImage(str(tmp_path / "moving.nii.gz"))
    out = sitk.Resample(mov, ref, transform, sitk.sitkLinear, 0.0)
    itk_warped = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
    np.testing.assert_allclose(itk_warped, result.warped.array, atol=2e-4)
    # the vectors are LPS mm: x and y of our RAS displacement change sign
    disp = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0, 3)
    ras = result.displacement_mm
    np.testing.assert_allclose(disp[..., 0], -ras[0], atol=1e-4)
    np.testing.assert_allclose(disp[..., 1], -ras[1], atol=1e-4)
    np.testing.assert_allclose(disp[..., 2], ras[2], atol=1e-4)


def test_itk_field_two_dimensional(tmp_path):
    aff = np.array([[0.0, 1.5, 0, 3], [-1.0, 0, 0, 7], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    rng = np.random.default_rng(1)
    flow = rng.normal(0, 0.7, (2, 12, 10))
    moving = Volume(blobs(world_of(aff, (12, 10)), centre_of(aff, (12, 10))), aff)
    warped = register_pair(
        KnownFlowModel(lambda s: torch.from_numpy(flow).float(), 2), Info(), moving, moving
    ).warped.array
    write_volume(tmp_path / "m.nii.gz", moving.array, aff)
    path = write_itk_displacement(tmp_path / "d.nii.gz", flow, aff)
    mov = sitk.ReadImage(str(tmp_path / "m.nii.gz"))
    out = sitk.Resample(mov, mov, sitk.DisplacementFieldTransform(sitk.ReadImage(str(path))))
    inner = (slice(2, -2), slice(2, -2))
    np.testing.assert_allclose(sitk.GetArrayFromImage(out).T[inner], warped[inner], atol=2e-4)


def test_l2r_displacement_layout_and_name(tmp_path):
    aff = lia_affine()
    flow = np.random.default_rng(0).normal(size=(3, *SHAPE)).astype(np.float32)
    name = l2r_disp_name("imagesTr/BRAIN_0013_0000.nii.gz", "/x/BRAIN_0014_0000.nii.gz")
    assert name == "disp_0013_0014.nii.gz"
    path = write_l2r_displacement(tmp_path / name, flow, aff)
    img = nib.load(str(path))
    assert img.shape == (*SHAPE, 3)  # channels last, 4-D: what the challenge script reads
    np.testing.assert_allclose(img.affine, aff)
    np.testing.assert_allclose(img.get_fdata()[..., 1], flow[1], atol=1e-6)
    back, back_aff = read_voxel_flow(path)
    np.testing.assert_allclose(back, flow, atol=1e-6)
    np.testing.assert_allclose(back_aff, aff)


def test_l2r_displacement_grid_in_metres_is_read_in_mm(tmp_path):
    """Voxel displacements have no unit; the grid's affine is converted to mm (as ITK does)."""
    aff = lia_affine()
    flow = np.random.default_rng(1).normal(size=(3, *SHAPE)).astype(np.float32)
    metres = aff.copy()
    metres[:3, :] /= 1000.0
    img = nib.Nifti1Image(np.moveaxis(flow, 0, -1), metres)
    img.header.set_xyzt_units("meter")
    nib.save(img, str(tmp_path / "disp_0001_0002.nii.gz"))
    back, back_aff = read_voxel_flow(tmp_path / "disp_0001_0002.nii.gz")
    np.testing.assert_allclose(back, flow, atol=1e-6)  # values untouched
    np.testing.assert_allclose(back_aff, aff, atol=1e-6)


def test_case_ids():
    assert l2r_case_id("OASIS_0395_0000.nii.gz") == "0395"
    assert l2r_case_id("a/b/LungCT_0001_0001.nii") == "0001"
    assert l2r_case_id("case7.mha") == "0007"
    with pytest.raises(MaxcaInputError, match="case number"):
        l2r_case_id("fixed.nii.gz")


def test_voxel_flow_round_trip_and_itk_field_refused(tmp_path):
    aff = lia_affine()
    fixed = Volume(np.zeros(SHAPE, np.float32), aff)
    flow = np.random.default_rng(2).normal(size=(3, *SHAPE)).astype(np.float32)
    path = write_voxel_flow(tmp_path / "flow_voxel.nii.gz", flow, fixed)
    assert nib.load(str(path)).shape == (*SHAPE, 1, 3)
    back, back_aff = read_voxel_flow(path)
    np.testing.assert_allclose(back, flow)
    np.testing.assert_allclose(back_aff, aff)
    itk = write_itk_displacement(tmp_path / "disp_itk.nii.gz", flow, aff)
    with pytest.raises(MaxcaInputError, match="ITK field"):
        read_voxel_flow(itk)
    with pytest.raises(MaxcaInputError, match="file not found"):
        read_voxel_flow(tmp_path / "nope.nii.gz")


# ---------------------------------------------------------------------------------------------
# reading ITK displacement fields back into voxel flows
# ---------------------------------------------------------------------------------------------
def test_read_itk_displacement_round_trip_3d_in_memory_and_on_disk(tmp_path) -> None:
    affine = lia_affine()
    flow = _smooth_flow(SHAPE).numpy()
    back = read_itk_displacement(itk_displacement_image(flow, affine), affine, SHAPE)
    assert back.shape == flow.shape and back.dtype == np.float32
    np.testing.assert_allclose(back, flow, atol=1e-5)
    write_itk_displacement(tmp_path / "f.nii.gz", flow, affine)
    np.testing.assert_allclose(
        read_itk_displacement(tmp_path / "f.nii.gz", affine), flow, atol=1e-5
    )


def test_read_itk_displacement_2d_slice_grid(tmp_path) -> None:
    a = np.eye(4)  # an axial slice of an LIA volume: in-plane axes -x and +y
    a[:3, 0], a[:3, 1], a[:3, 2], a[:3, 3] = (-1.5, 0, 0), (0, 1.2, 0), (0, 0, -2.0), (20, 10, 3)
    flow = _smooth_flow((16, 24, 1))[:2, :, :, 0].numpy()
    sitk.WriteImage(itk_displacement_image(flow, a), str(tmp_path / "f.mha"))
    np.testing.assert_allclose(read_itk_displacement(tmp_path / "f.mha", a), flow, atol=1e-5)


def test_read_itk_displacement_known_answer() -> None:
    # a constant LPS displacement D on a grid with spacing s and direction R: u = (R diag(s))^-1 D
    image = sitk.Image([4, 5, 6], sitk.sitkVectorFloat64, 3)
    image.SetSpacing((2.0, 1.0, 4.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    arr = np.zeros((6, 5, 4, 3))
    arr[...] = (3.0, -2.0, 8.0)  # (x, y, z) LPS mm
    field = sitk.GetImageFromArray(arr, isVector=True)
    field.CopyInformation(image)
    u = read_itk_displacement(field)
    assert u.shape == (3, 4, 5, 6)
    # M = R diag(s) = [[0, 1, 0], [-2, 0, 0], [0, 0, 4]]: M u = D gives u = (1, 3, 2)
    np.testing.assert_allclose(u[:, 2, 3, 4], (1.0, 3.0, 2.0), atol=1e-6)
    np.testing.assert_allclose(u.reshape(3, -1).std(axis=1), 0.0, atol=1e-12)


def test_read_itk_displacement_refuses_other_grids_and_non_fields(tmp_path) -> None:
    flow = np.zeros((3, *SHAPE), np.float32)
    image = itk_displacement_image(flow, lia_affine(spacing=(2.0, 2.0, 2.0)))
    with pytest.raises(MaxcaInputError, match="not the fixed image's grid"):
        read_itk_displacement(image, lia_affine())
    with pytest.raises(MaxcaInputError, match=r"field grid \(16, 20, 24\) differs"):
        read_itk_displacement(image, None, (16, 20, 5))
    with pytest.raises(MaxcaInputError, match="of d components, got a 3-D image of 1 comp"):
        read_itk_displacement(sitk.Image([4, 4, 4], sitk.sitkFloat32))
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    with pytest.raises(MaxcaInputError, match="not a readable ITK image"):
        read_itk_displacement(tmp_path / "junk.nii.gz")
