"""Displacement fields for other tools: ITK/ANTs (LPS mm), Learn2Reg (voxels), maxca's own.

Formats (``docs/conventions.md``); ``flow`` is always a ``(d, *S)`` voxel displacement of the
fixed grid with affine ``A`` (channel ``k`` along array axis ``k``):

* **ITK/ANTs** (:func:`write_itk_displacement`): a vector image on the fixed grid whose vectors
  are the physical displacement in **LPS** mm, ``diag(-1, -1, 1) @ A[:3, :d] @ u``, with the
  fixed grid's origin/spacing/direction converted from RAS to LPS. Written through SimpleITK
  (its arrays are ``(z, y, x, component)``, the reverse of our axis order), float64 by default so
  that ``sitk.DisplacementFieldTransform(sitk.ReadImage(path))`` accepts it directly; then
  ``sitk.Resample(moving, fixed, transform, sitk.sitkLinear)`` and ``antsApplyTransforms -t
  disp_itk.nii.gz`` reproduce our warped image. :func:`read_itk_displacement` reads such a field
  (ours or one ANTs wrote) back into a voxel flow.
* **Learn2Reg** (:func:`write_l2r_displacement`): ``disp_FFFF_MMMM.nii.gz`` holding the voxel
  displacement with shape ``(*S, d)`` (channels last, 4-D NIfTI for 3-D images) and the fixed
  affine, as the challenge's evaluation script reads it.
* **maxca** (:func:`write_voxel_flow`): ``flow_voxel.nii.gz``, the voxel displacement as a NIfTI
  vector image ``(X, Y, Z, 1, d)`` (intent ``VECTOR``) with the fixed header, marked in its
  ``descrip`` field so it is not mistaken for an ITK field.

All writes are atomic (temporary file beside the target, then ``os.replace``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk  # noqa: N813 (the library's own idiom)

from maxca.data.io import (
    NIFTI_EXTENSIONS,
    Volume,
    checked_path,
    nifti_affine_mm,
    ras_lps_flip,
    write_vector_field,
)
from maxca.data.learn2reg import l2r_case_id
from maxca.errors import MaxcaInputError
from maxca.inference._output import atomic_file
from maxca.metrics._common import as_flow

__all__ = [
    "VOXEL_FLOW_DESCRIP",
    "itk_displacement_image",
    "l2r_case_id",
    "l2r_disp_name",
    "read_itk_displacement",
    "read_voxel_flow",
    "write_itk_displacement",
    "write_l2r_displacement",
    "write_voxel_flow",
]

#: ``descrip`` header text that marks maxca's voxel-displacement files.
VOXEL_FLOW_DESCRIP = "maxca voxel displacement"

_RAS_LPS = ras_lps_flip(3)


def _flow_and_affine(flow: Any, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(flow as a float64 (d, *S) array, affine as a float64 (4, 4) array)``, checked."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise MaxcaInputError(f"affine must be 4x4, got shape {a.shape}")
    return as_flow(flow), a


def itk_displacement_image(flow: Any, affine: np.ndarray, dtype: Any = np.float64) -> sitk.Image:
    """The ITK displacement field (LPS mm) of a voxel flow on a grid with RAS affine ``affine``.

    Args:
        flow: ``(d, *S)`` voxel displacement (numpy or torch).
        affine: ``(4, 4)`` RAS affine of the grid ``S``.
        dtype: ``np.float64`` (what ``sitk.DisplacementFieldTransform`` requires) or
            ``np.float32``.

    Returns:
        a ``d``-D SimpleITK vector image of ``d`` components: pixel ``p`` holds the LPS
        displacement in mm; origin, spacing and direction are those of the grid in LPS.
    """
    u, a = _flow_and_affine(flow, affine)
    d = u.shape[0]
    disp_lps = np.tensordot(_RAS_LPS @ a[:3, :d], u, axes=1)[:d]  # (d, *S), LPS mm
    lps = _RAS_LPS @ a[:3, :]
    matrix = lps[:d, :d]
    spacing = np.linalg.norm(matrix, axis=0)
    if np.any(spacing <= 0) or abs(np.linalg.det(matrix)) < 1e-12:
        raise MaxcaInputError(f"affine has a degenerate {d}-D part: {a[:3, :d].tolist()}")
    direction = matrix / spacing[None, :]
    # sitk arrays are (z, y, x, component): reverse our spatial axes, components last
    arr = np.ascontiguousarray(disp_lps.transpose(*range(d, 0, -1), 0).astype(dtype))
    image = sitk.GetImageFromArray(arr, isVector=True)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in lps[:d, 3]))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return image


def read_itk_displacement(
    field: sitk.Image | str | os.PathLike[str],
    fixed_affine: np.ndarray | None = None,
    fixed_shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Read an ITK/ANTs displacement field of the fixed grid back into a voxel flow.

    The inverse of :func:`itk_displacement_image`: an ITK field holds at fixed voxel ``p`` the
    physical displacement ``D`` (mm, ITK's LPS frame) from the fixed point ``x(p)`` to the
    moving point ``x(p) + D``. With the field grid's voxel-to-physical matrix
    ``M = direction @ diag(spacing)`` the voxel flow is ``u = M^-1 D`` (docs/conventions.md).

    Args:
        field: a SimpleITK vector image of ``d`` components, or the path of one
            (``.nii.gz``, ``.mha``, ...), e.g. ANTs' ``*Warp.nii.gz``.
        fixed_affine: the fixed ``(4, 4)`` RAS affine; when given, the field's grid must be
            the fixed grid (direction/spacing within 1e-4, origin within 1e-3 mm).
        fixed_shape: the fixed grid's shape, checked when given.

    Returns:
        ``(d, *S)`` float32 voxel displacement in maxca's array axis order.

    Raises:
        MaxcaInputError: not a ``d``-component field, or a field of another grid.
    """
    image = field
    if not isinstance(image, sitk.Image):
        try:
            image = sitk.ReadImage(str(field))
        except RuntimeError as exc:
            raise MaxcaInputError(f"{field}: not a readable ITK image") from exc
    d = image.GetDimension()
    if d not in (2, 3) or image.GetNumberOfComponentsPerPixel() != d:
        raise MaxcaInputError(
            f"expected a 2-D or 3-D displacement field of d components, got a {d}-D image of "
            f"{image.GetNumberOfComponentsPerPixel()} components"
        )
    arr = sitk.GetArrayFromImage(image).astype(np.float64)  # (z, y, x, d) / (y, x, d)
    disp = np.moveaxis(arr, -1, 0).transpose(0, *range(d, 0, -1))  # (d, i, j[, k])
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(d, d)
    M = direction * spacing[None, :]
    shape = tuple(int(s) for s in image.GetSize())
    if fixed_shape is not None and tuple(int(s) for s in fixed_shape) != shape:
        raise MaxcaInputError(
            f"field grid {shape} differs from the fixed grid {tuple(fixed_shape)}"
        )
    if fixed_affine is not None:
        lps = _RAS_LPS @ np.asarray(fixed_affine, dtype=np.float64)[:3, :]
        if not (
            np.allclose(M, lps[:d, :d], atol=1e-4)
            and np.allclose(image.GetOrigin(), lps[:d, 3], atol=1e-3)
        ):
            raise MaxcaInputError("the displacement field's grid is not the fixed image's grid")
    return np.tensordot(np.linalg.inv(M), disp, axes=1).astype(np.float32)


def write_itk_displacement(
    path: str | os.PathLike[str], flow: Any, affine: np.ndarray, dtype: Any = np.float64
) -> Path:
    """Atomically write the ITK/ANTs displacement field of ``flow`` (see the module docstring).

    Args:
        path: ``.nii.gz``/``.nii`` (read by ``antsApplyTransforms``), ``.mha`` or ``.nrrd``.
        flow: ``(d, *S)`` voxel displacement of the fixed grid.
        affine: ``(4, 4)`` RAS affine of the fixed grid.
        dtype: on-disk component type, ``np.float64`` (default) or ``np.float32``.
    """
    path, ext = checked_path(
        path, (*NIFTI_EXTENSIONS, ".mha", ".nrrd"), "cannot write an ITK field with extension"
    )
    image = itk_displacement_image(flow, affine, dtype)
    with atomic_file(path, ext) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


def write_l2r_displacement(path: str | os.PathLike[str], flow: Any, affine: np.ndarray) -> Path:
    """Atomically write a Learn2Reg displacement file: voxel displacement, shape ``(*S, d)``.

    Args:
        path: target, normally ``disp_FFFF_MMMM.nii.gz`` (see :func:`l2r_disp_name`).
        flow: ``(d, *S)`` voxel displacement of the fixed grid.
        affine: ``(4, 4)`` RAS affine of the fixed grid (written as sform and qform).
    """
    path, ext = checked_path(path, NIFTI_EXTENSIONS, "Learn2Reg displacement files are NIfTI, got")
    u, a = _flow_and_affine(flow, affine)
    channels_last = np.ascontiguousarray(np.moveaxis(u, 0, -1).astype(np.float32))
    image = nib.Nifti1Image(channels_last, a)
    image.header.set_xyzt_units("mm")
    image.set_sform(a, code=1)
    image.set_qform(a, code=1)
    with atomic_file(path, ext) as tmp:
        nib.save(image, str(tmp))
    return path


def write_voxel_flow(path: str | os.PathLike[str], flow: Any, fixed: Volume) -> Path:
    """Atomically write maxca's voxel flow as a NIfTI vector image with the fixed header.

    Args:
        path: ``.nii.gz`` or ``.nii`` file.
        flow: ``(d, *S)`` voxel displacement of ``fixed``'s grid.
        fixed: the fixed volume (affine and NIfTI header reused).
    """
    u, _ = _flow_and_affine(flow, fixed.affine)
    if tuple(u.shape[1:]) != fixed.shape:
        raise MaxcaInputError(
            f"flow grid {tuple(u.shape[1:])} differs from the fixed grid {fixed.shape}"
        )
    header = fixed.header.copy() if isinstance(fixed.header, nib.Nifti1Header) else None
    if header is None:
        header = nib.Nifti1Header()
        header.set_xyzt_units("mm")
    header["descrip"] = VOXEL_FLOW_DESCRIP.encode()
    like = Volume(fixed.array, fixed.affine, header)
    return write_vector_field(path, np.moveaxis(u, 0, -1).astype(np.float32), fixed.affine, like)


def read_voxel_flow(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a voxel displacement: maxca's ``flow_voxel.nii.gz`` or a Learn2Reg ``disp_*`` file.

    Accepted layouts: ``(*S, d)`` (Learn2Reg, channels last, ``d == len(S)``) and the NIfTI vector
    image ``(X, Y, Z, 1, d)`` that :func:`write_voxel_flow` writes. A vector image without maxca's
    marker is refused: it is most likely an ITK field in LPS mm, not a voxel displacement.

    Returns:
        ``(flow (d, *S) float32, affine (4, 4))``.
    """
    path, _ = checked_path(
        path, NIFTI_EXTENSIONS, "displacement files are read from NIfTI, got", True
    )
    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
        descrip = bytes(image.header.get("descrip", b"")).split(b"\0")[0].decode(errors="replace")
    except Exception as exc:  # nibabel/gzip raise many types for corrupt files
        text = " ".join(str(exc).split())
        raise MaxcaInputError(
            f"{path}: cannot read NIfTI file ({type(exc).__name__}: {text})"
        ) from exc
    # voxel displacements have no unit: only the grid's affine is converted to mm
    affine = nifti_affine_mm(image.affine, image.header.copy(), path)
    if data.ndim == 5:
        if data.shape[3] != 1 or data.shape[4] not in (2, 3):
            raise MaxcaInputError(
                f"{path}: expected a (X, Y, Z, 1, d) vector image, got {data.shape}"
            )
        if VOXEL_FLOW_DESCRIP not in descrip:
            raise MaxcaInputError(
                f"{path}: a vector image without maxca's voxel-flow marker (an ITK field in LPS "
                "mm?); pass flow_voxel.nii.gz or a Learn2Reg disp_*.nii.gz file"
            )
        d = data.shape[4]
        data = data[:, :, :, 0, :] if d == 3 else data[:, :, 0, 0, :]
    d = data.shape[-1]
    if data.ndim != d + 1 or d not in (2, 3):
        raise MaxcaInputError(
            f"{path}: expected a displacement of shape (*S, d) with d = len(S) in (2, 3), "
            f"got {data.shape}"
        )
    if not np.all(np.isfinite(data)):
        raise MaxcaInputError(f"{path}: displacement has NaN/Inf values")
    return np.ascontiguousarray(np.moveaxis(data, -1, 0)), affine


def l2r_disp_name(fixed: str | os.PathLike[str], moving: str | os.PathLike[str]) -> str:
    """``disp_FFFF_MMMM.nii.gz`` for a fixed and a moving image path (Learn2Reg convention)."""
    return f"disp_{l2r_case_id(fixed)}_{l2r_case_id(moving)}.nii.gz"
