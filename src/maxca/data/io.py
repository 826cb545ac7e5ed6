"""Reading and writing medical volumes with their RAS voxel-to-world affine.

Arrays are kept in the **file's voxel order** (NIfTI i, j, k as nibabel's ``get_fdata()``
returns them; see ``docs/conventions.md``). Nothing is ever transposed to follow anatomy: the
orientation lives in the 4x4 RAS+ affine (mm). SimpleITK formats (``.mha``, ``.mhd``, ``.nrrd``,
``.nhdr``) are read and written through SimpleITK, whose ``z, y, x`` arrays are reversed into
``i, j, k`` order and whose LPS origin/direction/spacing are converted to the same RAS affine
nibabel would give for the same grid.

Writes are atomic: the data go to a hidden temporary file in the target directory (its name
keeps the real extension so the libraries pick the format) which then replaces the target with
``os.replace``. A failed write leaves neither a partial file nor a temporary one.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import SimpleITK as sitk  # noqa: N813 (the library's own idiom)

from maxca._atomic import atomic_path
from maxca.errors import MaxcaInputError

__all__ = [
    "NIFTI_EXTENSIONS",
    "READ_EXTENSIONS",
    "SITK_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "Volume",
    "check_affine",
    "check_headers",
    "check_same_grid",
    "checked_path",
    "nifti_affine_mm",
    "ras_lps_flip",
    "read_vector_field",
    "read_volume",
    "split_extension",
    "write_vector_field",
    "write_volume",
]

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
SITK_EXTENSIONS = (".mha", ".mhd", ".nrrd", ".nhdr")
READ_EXTENSIONS = NIFTI_EXTENSIONS + SITK_EXTENSIONS
# Single-file formats only: a two-file header (.mhd/.nhdr) names its data file, which an
# atomic rename of the header alone would break.
WRITE_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".nrrd")


def ras_lps_flip(size: int = 3) -> np.ndarray:
    """The matrix between RAS (NIfTI, maxca) and LPS (ITK) world coordinates.

    x and y change sign, z and the homogeneous coordinate do not: ``diag(-1, -1, 1)`` for
    ``size=3``, ``diag(-1, -1, 1, 1)`` for ``size=4``. It is its own inverse, so it maps both
    ways: ``lps_points = F @ ras_points``, ``lps_affine[:3] = F @ ras_affine[:3]`` and, for a
    4x4 transform of points, ``T_lps = F4 @ T_ras @ F4``.
    """
    if size not in (3, 4):
        raise MaxcaInputError(f"ras_lps_flip size must be 3 or 4, got {size!r}")
    return np.diag([-1.0, -1.0, 1.0, 1.0][:size])


_RAS_LPS = ras_lps_flip(3)

GRID_TOLERANCE_MM = 1e-3


@dataclass
class Volume:
    """A spatial array with its voxel-to-world affine.

    Attributes:
        array: ``(D0, D1[, D2])`` array in the file's voxel order (i, j, k); float32 for images,
            an integer dtype for label maps.
        affine: ``(4, 4)`` float64 RAS+ voxel-to-world matrix in mm: the world position of
            voxel centre ``p`` is ``affine[:3, :3] @ p + affine[:3, 3]``. For 2-D volumes the
            first two columns describe the two array axes.
        header: optional format-specific header (a ``nibabel.Nifti1Header`` for NIfTI files,
            a dict of SimpleITK metadata otherwise), used by :func:`write_volume` via ``like``.
        path: the file the volume was read from, if any.
    """

    array: np.ndarray
    affine: np.ndarray
    header: Any | None = None
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise MaxcaInputError(
                f"Volume affine must be a 4x4 matrix, got shape {self.affine.shape}"
            )
        if self.array.ndim not in (2, 3):
            raise MaxcaInputError(
                f"Volume array must be 2-D or 3-D, got shape {tuple(self.array.shape)}"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape ``(D0, D1[, D2])``."""
        return tuple(int(s) for s in self.array.shape)

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return int(self.array.ndim)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each array axis (norms of the affine's first ``ndim`` columns)."""
        norms = np.linalg.norm(self.affine[:3, : self.ndim], axis=0)
        return tuple(float(s) for s in norms)


# ----------------------------------------------------------------------------------------------
# helpers


def split_extension(path: str | os.PathLike[str]) -> tuple[str, str]:
    """Split ``path``'s file name into ``(stem, extension)``, ``.nii.gz`` counted as one.

    The extension is returned lower-case; an unknown one is returned as Python's suffix.
    """
    name = Path(path).name
    lower = name.lower()
    for ext in READ_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)], ext
    suffix = Path(name).suffix
    return name[: len(name) - len(suffix)], suffix.lower()


def _one_line(exc: BaseException) -> str:
    """``TypeName: message`` of an exception on a single line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _squeeze_trailing(arr: np.ndarray, min_ndim: int) -> np.ndarray:
    """Drop trailing singleton axes while the array has more than ``min_ndim`` axes."""
    while arr.ndim > min_ndim and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr


def _check_ndim(arr: np.ndarray, path: Path, expected_ndim: int | None) -> np.ndarray:
    if expected_ndim is not None and expected_ndim not in (2, 3):
        raise MaxcaInputError(f"expected_ndim must be 2, 3 or None, got {expected_ndim!r}")
    arr = _squeeze_trailing(arr, expected_ndim if expected_ndim is not None else 3)
    if expected_ndim is not None and arr.ndim != expected_ndim:
        raise MaxcaInputError(
            f"{path}: expected a {expected_ndim}-D volume, got array of shape {arr.shape}"
        )
    if arr.ndim not in (2, 3):
        raise MaxcaInputError(
            f"{path}: expected a 2-D or 3-D volume, got array of shape {arr.shape}"
        )
    return arr


def _finish_array(arr: np.ndarray, path: Path, kind: str, expected_ndim: int | None) -> np.ndarray:
    """Shape checks, then dtype/value checks for an image or a label map."""
    arr = _check_ndim(arr, path, expected_ndim)
    if kind == "image":
        source = np.asarray(arr)
        with np.errstate(over="ignore", invalid="ignore"):
            arr = source.astype(np.float32, copy=False)
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(arr.size - np.count_nonzero(finite))
            # a finite value of a wider type (float64) can overflow float32: say so, not "NaN"
            was_finite = np.isfinite(source) if source.dtype.kind == "f" else True
            over = int(np.count_nonzero(~finite & was_finite))
            if over:
                largest = float(np.max(np.abs(source[~finite & was_finite])))
                raise MaxcaInputError(
                    f"{path}: image has {over} voxel(s) beyond the float32 range (|value| up to "
                    f"{largest:.3g}, float32 ends at {float(np.finfo(np.float32).max):.3g}); "
                    "rescale the intensities"
                )
            raise MaxcaInputError(
                f"{path}: image has {bad} NaN/Inf voxel(s); expected finite intensities"
            )
        return arr
    # labels
    if np.issubdtype(arr.dtype, np.integer):
        return np.asarray(arr)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.floating):
        raise MaxcaInputError(f"{path}: label map has dtype {arr.dtype}; expected integers")
    finite = np.isfinite(arr)
    if not finite.all():
        raise MaxcaInputError(f"{path}: label map has NaN/Inf values; expected integer label ids")
    rounded = np.round(arr)
    # label ids stored as floats, or as integers with a NIfTI scaling, come back with float
    # rounding (2.9999998): within LABEL_ROUNDING of an integer they are that integer
    frac = np.abs(arr - rounded) > LABEL_ROUNDING * np.maximum(1.0, np.abs(rounded))
    if frac.any():
        example = float(arr[frac].flat[0])
        raise MaxcaInputError(
            f"{path}: label map has non-integer values (e.g. {example:g}); "
            "expected integer label ids (is this an image rather than a label file?)"
        )
    return rounded.astype(np.int64)


#: relative distance to an integer below which a float label value is that integer (float32 keeps
#: about 7 digits: a scaled or float-stored id comes back within a few 1e-7 of it)
LABEL_ROUNDING = 1e-5


# ----------------------------------------------------------------------------------------------
# SimpleITK geometry


def _sitk_affine(img: sitk.Image) -> np.ndarray:
    """RAS 4x4 voxel-to-world affine of a SimpleITK image (first three axes)."""
    dim = img.GetDimension()
    n = min(dim, 3)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)[:n, :n]
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)[:n]
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)[:n]
    lps = np.eye(4)
    lps[:n, :n] = direction * spacing[None, :]
    lps[:n, 3] = origin
    affine = np.eye(4)
    affine[:3, :] = _RAS_LPS @ lps[:3, :]
    return affine


def _sitk_geometry(
    affine: np.ndarray, ndim: int
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(spacing, origin, row-major direction) in LPS for an ``ndim``-D SimpleITK image."""
    lps = _RAS_LPS @ np.asarray(affine, dtype=np.float64)[:3, :]
    matrix = lps[:ndim, :ndim]
    spacing = np.linalg.norm(matrix, axis=0)
    if np.any(spacing <= 0):
        raise MaxcaInputError(f"affine has a zero-length axis (spacing {spacing.tolist()})")
    direction = matrix / spacing[None, :]
    origin = lps[:ndim, 3]
    return (
        tuple(float(s) for s in spacing),
        tuple(float(o) for o in origin),
        tuple(float(v) for v in direction.ravel()),
    )


# ----------------------------------------------------------------------------------------------
# reading


def _read_nifti(path: Path, kind: str) -> tuple[np.ndarray, np.ndarray, Any]:
    try:
        img = nib.load(str(path))
        if img.get_data_dtype().names:  # RGB24/RGBA32: one record of channels per voxel
            raise MaxcaInputError(
                f"{path}: colour voxels ({', '.join(img.get_data_dtype().names)}); give a "
                f"single-channel {kind} (e.g. one channel, or a grey-level conversion)"
            )
        if np.issubdtype(img.get_data_dtype(), np.complexfloating):
            raise MaxcaInputError(
                f"{path}: complex-valued {kind} ({img.get_data_dtype()}); give a real image, "
                "e.g. the magnitude"
            )
        if kind == "image":
            with np.errstate(over="ignore", invalid="ignore"):
                arr = img.get_fdata(dtype=np.float32)
            if not np.isfinite(arr).all():
                # read again at full precision, so that _finish_array can tell a value beyond the
                # float32 range (finite in a float64 file or after scaling) from a NaN/Inf
                arr = np.asarray(img.dataobj)
        else:
            arr = np.asarray(img.dataobj)
        header = img.header.copy()
        _warn_if_forms_disagree(header, arr.shape, path)
        affine = nifti_affine_mm(img.affine, header, path)
    except MaxcaInputError:
        raise
    except Exception as exc:  # nibabel/gzip/zlib raise many types for corrupt files
        raise MaxcaInputError(f"{path}: cannot read NIfTI file ({_one_line(exc)})") from exc
    return arr, affine, header


def _warn_if_forms_disagree(header: Any, shape: tuple[int, ...], path: Path) -> None:
    """Warn when a NIfTI file's sform and qform (both set) place the image differently.

    maxca reads the sform (nibabel's choice); ITK (SimpleITK, ANTs) reads the qform for some
    sform codes (e.g. 2, "aligned"), so two tools can put the same file in different places.
    The disagreement is measured as the largest distance between the two world positions of the
    image's corner voxels; below a tenth of the smallest voxel spacing it is rounding."""
    try:
        codes = int(header["sform_code"]), int(header["qform_code"])
        if codes == (0, 0):
            warnings.warn(
                f"{path}: its header sets neither sform nor qform (both codes 0), so tools "
                "disagree on where it lies (nibabel and maxca: the Analyze convention from the "
                "voxel sizes; ITK/ANTs: origin 0, LPS axes); outputs keep the codes 0, but set "
                "the sform before comparing with ITK tools",
                UserWarning,
                stacklevel=2,
            )
            return
        if min(codes) <= 0:
            return
        sform, qform = header.get_sform(), header.get_qform()
        scale = _NIFTI_UNIT_MM.get(header.get_xyzt_units()[0], 1.0)
    except Exception:  # an unreadable form or unit: the other checks report what matters
        return
    n = min(len(shape), 3)
    corners = np.array(
        [
            [*(c[k] * (shape[k] - 1) for k in range(n)), *([0] * (3 - n)), 1]
            for c in np.ndindex(*[2] * n)
        ],
        dtype=np.float64,
    )
    gap = scale * float(np.max(np.linalg.norm(((sform - qform) @ corners.T)[:3], axis=0)))
    spacing = scale * np.linalg.norm(sform[:3, :n], axis=0)
    if np.isfinite(gap) and gap > 0.1 * float(np.min(spacing)):
        warnings.warn(
            f"{path}: its sform and qform disagree (by up to {gap:.3g} mm over the image; "
            f"sform code {int(header['sform_code'])}); maxca uses the sform, as nibabel "
            "does, while ITK-based tools (ANTs) may use the qform: outputs carry the sform as both",
            UserWarning,
            stacklevel=2,
        )


#: NIfTI spatial units (nibabel's names for ``xyzt_units``) -> millimetres; "unknown" is taken as
#: mm, as nibabel, SimpleITK and most tools do.
_NIFTI_UNIT_MM = {"mm": 1.0, "unknown": 1.0, "meter": 1000.0, "micron": 1e-3}


def nifti_affine_mm(affine: np.ndarray, header: Any, path: str | os.PathLike[str]) -> np.ndarray:
    """The NIfTI ``affine`` in millimetres, from the spatial unit of ``header``'s ``xyzt_units``.

    nibabel returns the sform/qform as stored, in the file's unit; ITK (hence SimpleITK and ANTs)
    converts metres and microns to mm. maxca works in mm, so a file in metres or microns has its
    affine (rotation-zoom and translation) scaled to mm here, and ``header`` (a copy the caller
    owns) is set to mm, so that an output written ``like`` this volume stays in the same place.

    Args:
        affine: ``(4, 4)`` voxel-to-world matrix as stored.
        header: the file's ``Nifti1Header``/``Nifti2Header`` (modified when the unit is not mm).
        path: for the error message.

    Returns:
        ``(4, 4)`` float64 affine in mm.
    """
    a = np.array(affine, dtype=np.float64)
    try:
        space, time = header.get_xyzt_units()
    except Exception as exc:  # a spatial code nibabel does not know (4-7)
        code = int(np.asarray(header["xyzt_units"])) & 7
        raise MaxcaInputError(
            f"{path}: NIfTI spatial unit code {code} is not a known unit "
            "(1 = meter, 2 = mm, 3 = micron, 0 = unknown, read as mm)"
        ) from exc
    scale = _NIFTI_UNIT_MM.get(space)
    if scale is None:
        raise MaxcaInputError(
            f"{path}: NIfTI spatial unit {space!r} is not a length (expected mm, meter or micron)"
        )
    if scale != 1.0:
        a[:3, :] *= scale
        header.set_xyzt_units("mm", time)
    return a


def _read_sitk(path: Path, kind: str) -> tuple[np.ndarray, np.ndarray, Any]:
    try:
        img = sitk.ReadImage(str(path))
        arr = sitk.GetArrayFromImage(img)
    except Exception as exc:  # SimpleITK raises RuntimeError with a multi-line message
        raise MaxcaInputError(f"{path}: cannot read image file ({_one_line(exc)})") from exc
    dim = img.GetDimension()
    # sitk arrays are (z, y, x[, components]): reverse the spatial axes into (i, j, k).
    perm = list(range(dim))[::-1]
    if arr.ndim == dim + 1:  # vector pixels: components stay last
        perm.append(dim)
    arr = np.transpose(arr, perm)  # images are cast to float32 (range checked) by _finish_array
    header = {key: img.GetMetaData(key) for key in img.GetMetaDataKeys()}
    return arr, _sitk_affine(img), header


def checked_path(
    path: str | os.PathLike[str], allowed: Sequence[str], refusal: str, must_exist: bool = False
) -> tuple[Path, str]:
    """``(Path(path), extension)`` when the extension is one of ``allowed`` (and, with
    ``must_exist``, the file exists); else a one-line error
    ``"<path>: <refusal> '<ext>'; expected one of ..."`` or ``"file not found: <path>"``.
    """
    path = Path(path)
    _, ext = split_extension(path)
    if ext not in allowed:
        raise MaxcaInputError(
            f"{path}: {refusal} {ext or '(none)'!r}; expected one of {', '.join(allowed)}"
        )
    if must_exist and not path.is_file():
        raise MaxcaInputError(f"file not found: {path}")
    return path, ext


def read_volume(
    path: str | os.PathLike[str],
    kind: Literal["image", "label"] = "image",
    expected_ndim: int | None = None,
) -> Volume:
    """Read a 2-D or 3-D image or label map with its RAS affine.

    ``.nii``/``.nii.gz`` are read with nibabel, ``.mha``/``.mhd``/``.nrrd``/``.nhdr`` with
    SimpleITK (its ``(z, y, x)`` array reversed into the file's ``(i, j, k)`` voxel order, its LPS
    geometry converted to RAS, so both readers give the same affine for the same grid).

    Args:
        path: the file.
        kind: ``"image"`` -> float32 array (NIfTI scaling applied), NaN/Inf rejected;
            ``"label"`` -> integer array (the file's integer dtype; float-stored label maps with
            integer values become int64, others are rejected).
        expected_ndim: 2 or 3 to require that many spatial axes. Trailing singleton axes are
            squeezed down to ``expected_ndim`` (down to 3 when it is ``None``; a 2-D image stored
            as ``(X, Y, 1)`` therefore needs ``expected_ndim=2``).

    Returns:
        a :class:`Volume` with ``array`` of shape ``(D0, D1[, D2])``.

    Raises:
        MaxcaInputError: missing file, unsupported extension, unreadable/corrupt file, wrong
            number of dimensions, NaN/Inf in an image, non-integer values in a label map.
    """
    if kind not in ("image", "label"):
        raise MaxcaInputError(f"kind must be 'image' or 'label', got {kind!r}")
    path, ext = checked_path(path, READ_EXTENSIONS, "unsupported file extension", True)
    if ext in NIFTI_EXTENSIONS:
        arr, affine, header = _read_nifti(path, kind)
    else:
        arr, affine, header = _read_sitk(path, kind)
    arr = _finish_array(arr, path, kind, expected_ndim)
    check_affine(affine, arr.ndim, path)
    return Volume(array=arr, affine=affine, header=header, path=path)


def check_headers(paths: Sequence[str | os.PathLike[str]]) -> None:
    """Read the header of every file (not its voxels): missing, unsupported or unreadable files
    are reported before any work starts (training reads its subjects lazily, step by step).

    NIfTI headers are read with nibabel (``nib.load`` is lazy), the others with SimpleITK's
    ``ReadImageInformation``. A file whose header is fine but whose voxel data is truncated is
    only found when it is read.

    Raises:
        MaxcaInputError: the first bad file, in one line.
    """
    for item in paths:
        path, ext = checked_path(item, READ_EXTENSIONS, "unsupported file extension", True)
        try:
            if ext in NIFTI_EXTENSIONS:
                nib.load(str(path))
            else:
                reader = sitk.ImageFileReader()
                reader.SetFileName(str(path))
                reader.ReadImageInformation()
        except Exception as exc:  # nibabel/gzip/SimpleITK raise many types
            kind = "NIfTI file" if ext in NIFTI_EXTENSIONS else "image file"
            raise MaxcaInputError(f"{path}: cannot read {kind} ({_one_line(exc)})") from exc


def check_affine(affine: np.ndarray, ndim: int, path: str | os.PathLike[str] | None = None) -> None:
    """Refuse a voxel-to-world affine that cannot place an ``ndim``-D grid in space.

    The first ``ndim`` columns of ``affine[:3]`` (one per array axis, in mm) must be finite,
    non-zero and linearly independent; any orientation is accepted, e.g. a 2-D coronal slice
    whose two axes run along x and z.

    Raises:
        MaxcaInputError: naming the file, for NaN/Inf entries, a zero-length column (zero
            voxel spacing) or parallel columns (a singular affine).
    """
    where = f"{path}: " if path is not None else ""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise MaxcaInputError(f"{where}affine is not a finite 4x4 matrix: {a.tolist()}")
    columns = a[:3, :ndim]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 1e-9):
        raise MaxcaInputError(
            f"{where}affine has a zero-length axis (voxel spacing {np.round(spacing, 6).tolist()}"
            " mm); fix the header's pixdim/sform"
        )
    singular = np.linalg.svd(columns / spacing, compute_uv=False)
    if singular[-1] < 1e-6:
        raise MaxcaInputError(
            f"{where}affine is singular: its {ndim} axis columns {np.round(columns, 6).tolist()} "
            "are parallel; fix the header's sform/qform"
        )


def read_vector_field(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI vector image written by :func:`write_vector_field`.

    Returns:
        ``(field, affine)`` with ``field`` of shape ``(*S, d)`` (channels last, float32) where
        ``S`` has ``d`` axes, and the 4x4 RAS affine.
    """
    path, _ = checked_path(path, NIFTI_EXTENSIONS, "vector fields are read from NIfTI, got", True)
    try:
        img = nib.load(str(path))
        data = img.get_fdata(dtype=np.float32)
        space = img.header.get_xyzt_units()[0]
    except Exception as exc:
        raise MaxcaInputError(f"{path}: cannot read NIfTI file ({_one_line(exc)})") from exc
    if space not in ("mm", "unknown"):
        # the vectors would be in that unit too, and tools disagree on whether to scale them
        raise MaxcaInputError(
            f"{path}: vector field stored in {space!r} units; maxca reads vector fields in mm"
        )
    if data.ndim != 5 or data.shape[3] != 1 or data.shape[4] not in (2, 3):
        raise MaxcaInputError(
            f"{path}: expected a vector field of shape (X, Y, Z, 1, d) with d in (2, 3), "
            f"got {data.shape}"
        )
    d = data.shape[4]
    spatial = data[:, :, :, 0, :]
    if d == 2:
        if spatial.shape[2] != 1:
            raise MaxcaInputError(
                f"{path}: 2-component vector field must have Z = 1, got shape {data.shape}"
            )
        spatial = spatial[:, :, 0, :]
    return np.ascontiguousarray(spatial), np.asarray(img.affine, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# writing


def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor, without importing torch here
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _cast(arr: np.ndarray, dtype: Any, path: Path) -> np.ndarray:
    if arr.dtype == np.bool_ and dtype is None:
        return arr.astype(np.uint8)
    if dtype is None:
        return arr
    target = np.dtype(dtype)
    if np.issubdtype(target, np.integer) and np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or np.any(arr != np.round(arr)):
            raise MaxcaInputError(
                f"{path}: cannot write non-integer values with integer dtype {target}"
            )
        info = np.iinfo(target)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise MaxcaInputError(
                f"{path}: values [{arr.min():g}, {arr.max():g}] do not fit dtype {target}"
            )
    return arr.astype(target)


def _atomic_write(path: Path, ext: str, writer: Any) -> None:
    """Call ``writer(tmp_path)`` then move the temporary file onto ``path``."""
    try:
        with atomic_path(path, ext) as tmp:
            writer(tmp)
    except Exception as exc:
        if isinstance(exc, MaxcaInputError):
            raise
        raise MaxcaInputError(f"{path}: cannot write file ({_one_line(exc)})") from exc


def _nifti_image(
    arr: np.ndarray, affine: np.ndarray, like: Volume | None, intent: str = "none"
) -> nib.Nifti1Image:
    return nifti_image_with_header(arr, affine, like.header if like is not None else None, intent)


def nifti_image_with_header(
    arr: np.ndarray, affine: np.ndarray, base: Any = None, intent: str = "none"
) -> nib.Nifti1Image:
    """``arr`` as a NIfTI image with ``affine`` as sform and qform and ``intent``.

    A NIfTI ``base`` header is copied (its sform/qform codes kept, 1 where one is unset, both 0
    when both are, its data scaling dropped); any other ``base`` gives a fresh header in mm with
    codes 1. The data type is ``arr``'s."""
    if isinstance(base, nib.Nifti1Header):
        header = base.copy()
        sform_code = int(header["sform_code"]) or 1
        qform_code = int(header["qform_code"]) or 1
        no_forms = int(header["sform_code"]) == int(header["qform_code"]) == 0
    else:
        header = nib.Nifti1Header()
        header.set_xyzt_units("mm")
        sform_code = qform_code = 1
        no_forms = False
    header.set_data_dtype(arr.dtype)
    header.set_slope_inter(np.nan, np.nan)  # never inherit a scaling from `like`
    header.set_intent(intent)
    img = nib.Nifti1Image(arr, affine, header=header)
    if no_forms and np.allclose(img.header.get_base_affine(), affine, rtol=0, atol=1e-6):
        # the grid of a file without forms, read with nibabel's default affine, stays without:
        # each tool then places the output where it places that input
        sform_code = qform_code = 0
    img.set_sform(affine, code=sform_code)
    img.set_qform(affine, code=qform_code)
    return img


def sitk_image(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A scalar SimpleITK image of ``array`` (``(*S)``, our voxel order) with the geometry of the
    RAS ``affine`` (converted to ITK's LPS spacing, origin and direction)."""
    arr = np.asarray(array)
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose()), isVector=False)
    spacing, origin, direction = _sitk_geometry(affine, arr.ndim)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def write_volume(
    path: str | os.PathLike[str],
    array: Any,
    affine: np.ndarray | None = None,
    like: Volume | None = None,
    dtype: Any = None,
) -> Path:
    """Atomically write a 2-D or 3-D array with its RAS affine.

    The format follows the extension: ``.nii``/``.nii.gz`` (nibabel) or ``.mha``/``.nrrd``
    (SimpleITK; the RAS affine becomes LPS origin/direction/spacing, the array is reversed into
    SimpleITK's ``(z, y, x)`` order). The file is first written to
    ``<dir>/.<stem>.tmp-XXXXXXXX<ext>`` and then moved onto ``path`` with ``os.replace``.
    Parent directories are created.

    Args:
        path: output file.
        array: ``(D0, D1[, D2])`` numpy array or torch tensor in voxel order (i, j, k).
        affine: 4x4 RAS voxel-to-world matrix; defaults to ``like.affine``.
        like: a volume whose NIfTI header (units, sform/qform codes, description) is reused; its
            scaling and intent are never copied.
        dtype: on-disk dtype (default: the array's; bool -> uint8). Floats are only cast to an
            integer dtype when every value is an integer in range.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path, ext = checked_path(path, WRITE_EXTENSIONS, "cannot write extension")
    if affine is None:
        if like is None:
            raise MaxcaInputError(f"{path}: write_volume needs an affine or a `like` volume")
        affine = like.affine
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise MaxcaInputError(f"{path}: affine must be 4x4, got shape {affine.shape}")
    arr = _to_numpy(array)
    if arr.ndim not in (2, 3):
        raise MaxcaInputError(f"{path}: expected a 2-D or 3-D array, got shape {arr.shape}")
    arr = _cast(arr, dtype, path)

    if ext in NIFTI_EXTENSIONS:
        img = _nifti_image(arr, affine, like)

        def writer(tmp: Path) -> None:
            nib.save(img, str(tmp))

    else:

        def writer(tmp: Path) -> None:
            sitk.WriteImage(sitk_image(arr, affine), str(tmp), useCompression=True)

    _atomic_write(path, ext, writer)
    return path


def write_vector_field(
    path: str | os.PathLike[str],
    field: Any,
    affine: np.ndarray,
    like: Volume | None = None,
) -> Path:
    """Atomically write a vector field as a NIfTI vector image (intent ``VECTOR``).

    NIfTI stores vectors in its 5th dimension, so a field of shape ``(X, Y, Z, d)`` is written
    with shape ``(X, Y, Z, 1, d)`` (a 2-D field ``(X, Y, 2)`` as ``(X, Y, 1, 1, 2)``). The
    components are written as given (e.g. voxel displacements, channels last); converting
    units or frames is the caller's business (see ``docs/conventions.md``).

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        field: ``(*S, d)`` numpy array or torch tensor, ``len(S) == d`` in (2, 3).
        affine: 4x4 RAS affine of the grid ``S``.
        like: optional volume whose NIfTI header is reused (see :func:`write_volume`).
    """
    path = Path(path)
    _, ext = split_extension(path)
    if ext not in NIFTI_EXTENSIONS:
        raise MaxcaInputError(f"{path}: vector fields are written as NIfTI, got {ext!r}")
    arr = _to_numpy(field)
    if arr.ndim not in (3, 4) or arr.shape[-1] != arr.ndim - 1:
        raise MaxcaInputError(
            f"{path}: expected a field of shape (*S, d) with d = len(S) in (2, 3), "
            f"got shape {arr.shape}"
        )
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise MaxcaInputError(f"{path}: affine must be 4x4, got shape {affine.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    d = arr.shape[-1]
    spatial = arr.shape[:-1] + (1,) * (3 - d)
    arr5 = arr.reshape(*spatial, 1, d)
    img = _nifti_image(arr5, affine, like, intent="vector")

    def writer(tmp: Path) -> None:
        nib.save(img, str(tmp))

    _atomic_write(path, ext, writer)
    return path


# ----------------------------------------------------------------------------------------------
# grids


def check_same_grid(a: Volume, b: Volume, what: str, tol_mm: float = GRID_TOLERANCE_MM) -> None:
    """Raise unless ``a`` and ``b`` share shape and affine.

    The affines are compared by the world positions of the grid's corner voxels, which must agree
    within ``tol_mm`` (default 1e-3 mm).

    Args:
        a, b: the volumes.
        what: what is compared, used as the message prefix (e.g. ``"fixed image vs label"``).
    """
    if a.shape != b.shape:
        raise MaxcaInputError(f"{what}: grid shapes differ: {a.shape} vs {b.shape}")
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in a.shape], indexing="ij"))
    corners = corners.reshape(a.ndim, -1)
    homog = np.zeros((4, corners.shape[1]))
    homog[: a.ndim] = corners
    homog[3] = 1.0
    diff = np.abs((a.affine - b.affine) @ homog).max()
    if diff > tol_mm:
        raise MaxcaInputError(
            f"{what}: affines differ by up to {diff:.4g} mm (tolerance {tol_mm:g} mm)"
        )
