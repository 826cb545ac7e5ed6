"""Fast writing of the large results of one registration.

Most of the end-to-end time of a 1 mm registration used to go to gzip-compressing ~150 MB of
float64/float32 displacement fields. Here the fields are written in float32 as *stored* gzip
(``compresslevel=0``: a valid ``.nii.gz`` that every reader opens, at the raw size, written at
disk speed) unless ``compress`` is asked for (zlib level 1, what nibabel uses by default). The
ITK/ANTs field is written with nibabel too: a NIfTI vector image (intent ``VECTOR``, shape
``(X, Y, Z, 1, d)``) holding the LPS displacement in mm on the fixed grid, which ITK's NIfTI
reader turns into the same origin/spacing/direction/vectors as
:func:`maxca.inference.export.itk_displacement_image`; read it with
``sitk.ReadImage(path, sitk.sitkVectorFloat64)`` for ``sitk.DisplacementFieldTransform``.
"""

from __future__ import annotations

import contextlib
import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from maxca._atomic import atomic_path
from maxca.data.io import Volume, nifti_image_with_header
from maxca.errors import MaxcaInputError
from maxca.inference.export import VOXEL_FLOW_DESCRIP

__all__ = ["gzip_level", "save_nifti", "write_itk_field_fast", "write_voxel_flow_fast"]

_RAS_LPS = np.diag([-1.0, -1.0, 1.0])


@contextlib.contextmanager
def gzip_level(level: int) -> Iterator[None]:
    """Within the block nibabel writes ``.gz`` files with zlib ``level`` (0 = stored)."""
    opener = nib.openers.Opener
    old = opener.default_compresslevel
    opener.default_compresslevel = int(level)
    try:
        yield
    finally:
        opener.default_compresslevel = old


def save_nifti(image: nib.Nifti1Image, path: str | os.PathLike[str], level: int) -> Path:
    """Atomically save a NIfTI image; ``.nii.gz`` with zlib ``level`` (0 = stored, no
    compression)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.name.endswith(".gz"):
            with (
                open(tmp, "wb") as raw,
                gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=int(level), mtime=0) as gz,
            ):
                image.to_file_map(nib.Nifti1Image.make_file_map({"image": gz, "header": gz}))
        else:
            nib.save(image, str(tmp))
    return path


def _vector_image(field: np.ndarray, affine: np.ndarray, header: Any = None) -> nib.Nifti1Image:
    """``field`` ``(d, *S)`` as a NIfTI vector image ``(X, Y, Z, 1, d)`` float32."""
    d = field.shape[0]
    channels_last = np.moveaxis(field, 0, -1).astype(np.float32, copy=False)
    spatial = channels_last.shape[:-1] + (1,) * (3 - d)
    arr = np.ascontiguousarray(channels_last.reshape(*spatial, 1, d))
    return nifti_image_with_header(arr, affine, header, intent="vector")


def write_voxel_flow_fast(
    path: str | os.PathLike[str], flow: np.ndarray, fixed: Volume, level: int = 0
) -> Path:
    """``flow_voxel.nii.gz`` as :func:`maxca.inference.export.write_voxel_flow` writes it
    (fixed header, maxca's ``descrip`` marker), float32, zlib ``level``.

    Args:
        flow: ``(d, *S)`` voxel displacement of ``fixed``'s grid.
    """
    if tuple(flow.shape[1:]) != fixed.shape:
        raise MaxcaInputError(
            f"flow grid {tuple(flow.shape[1:])} differs from the fixed grid {fixed.shape}"
        )
    image = _vector_image(flow, np.asarray(fixed.affine, np.float64), fixed.header)
    image.header["descrip"] = VOXEL_FLOW_DESCRIP.encode()
    return save_nifti(image, path, level)


def write_itk_field_fast(
    path: str | os.PathLike[str], flow: np.ndarray, affine: np.ndarray, level: int = 0
) -> Path:
    """The ITK/ANTs displacement field (LPS mm on the fixed grid) of a 3-D voxel flow, float32.

    Args:
        flow: ``(3, *S)`` voxel displacement of the fixed grid.
        affine: ``(4, 4)`` RAS affine of the fixed grid.
    """
    a = np.asarray(affine, np.float64)
    d = flow.shape[0]
    if d != 3:
        raise MaxcaInputError("the fast ITK writer handles 3-D fields only")
    matrix = (_RAS_LPS @ a[:3, :3]).astype(np.float32)
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise MaxcaInputError(f"affine has a degenerate 3-D part: {a[:3, :3].tolist()}")
    disp = np.tensordot(matrix, flow.astype(np.float32, copy=False), axes=1)
    header = nib.Nifti1Header()
    header.set_xyzt_units("mm")
    return save_nifti(_vector_image(disp, a, header), path, level)
