"""Classical affine pre-alignment (SimpleITK), before the network's deformable registration.

``affine_register(fixed, moving)`` finds the world-to-world map ``T`` (RAS mm, a ``(4, 4)``
matrix) such that the moving image sampled at ``T x`` matches the fixed image at ``x``
(Mattes mutual information, so any contrast; rigid then affine, three resolutions, the
centres of mass aligned first, so large shifts and rotations are recovered).

To register with the network after it, give the moving image the affine ``T^-1 A_m``
(:func:`prealign`): in world space it then sits on the fixed image, and every later step of
``register_pair`` is unchanged. The total transform of a fixed point ``x`` is
``T (x + D(x))`` with ``D`` the network's displacement; ITK/ANTs apply it as the chain
``-t affine.mat -t field.nii.gz`` (the last listed is applied first), or as one composed field.

ITK works in LPS: ``T_lps = F T_ras F`` with ``F = diag(-1, -1, 1)``; :func:`write_itk_affine`
and :func:`read_itk_affine` convert.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maxca.data.io import Volume, _sitk_geometry, ras_lps_flip
from maxca.errors import MaxcaInputError

__all__ = ["AffineResult", "affine_register", "prealign", "read_itk_affine", "write_itk_affine"]

_FLIP = ras_lps_flip(4)  # RAS <-> LPS (an involution)


@dataclass(frozen=True)
class AffineResult:
    """Result of :func:`affine_register`.

    Attributes:
        matrix: ``(4, 4)`` RAS world map ``T``: fixed point ``x`` -> moving point ``T x``.
        metric: final Mattes mutual information (negative; lower is better).
        seconds: wall time.
    """

    matrix: np.ndarray
    metric: float
    seconds: float


def _to_sitk(volume: Volume):  # noqa: ANN202 - SimpleITK image
    import SimpleITK as sitk

    d = volume.ndim
    array = np.asarray(volume.array, dtype=np.float32)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(*range(d - 1, -1, -1))))
    spacing, origin, direction = _sitk_geometry(volume.affine, d)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def _lps_matrix(transform, d: int) -> np.ndarray:  # noqa: ANN001 - sitk transform
    """``(4, 4)`` homogeneous LPS matrix of a SimpleITK matrix-offset transform of dimension d."""
    M = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(d, d)
    c = np.asarray(transform.GetCenter(), dtype=np.float64)
    t = np.asarray(transform.GetTranslation(), dtype=np.float64)
    out = np.eye(4)
    out[:d, :d] = M
    out[:d, 3] = c + t - M @ c
    return out


def _check(fixed: Volume, moving: Volume) -> int:
    d = fixed.ndim
    if moving.ndim != d:
        raise MaxcaInputError(f"fixed image is {d}-D but moving image is {moving.ndim}-D")
    for what, v in (("fixed", fixed), ("moving", moving)):
        a = np.asarray(v.array)
        if not np.isfinite(a).all():
            raise MaxcaInputError(f"{what} image has non-finite values: cannot align it")
        if float(a.max()) <= float(a.min()):
            raise MaxcaInputError(f"{what} image is constant: nothing to align")
    return d


def affine_register(
    fixed: Volume,
    moving: Volume,
    shrink: tuple[int, ...] = (4, 2, 1),
    iterations: int = 100,
    sampling: float = 0.2,
    seed: int = 0,
    threads: int | None = None,
) -> AffineResult:
    """Affine registration of ``moving`` to ``fixed`` (any grids, any contrasts).

    A rigid stage (centres of mass aligned, then rotation + translation) is followed by a full
    affine stage initialised from it; each stage runs coarse to fine over ``shrink`` factors
    (Gaussian smoothing of ``shrink / 2`` voxels), regular-step gradient descent with
    physical-shift scaling, Mattes mutual information on a seeded random ``sampling`` fraction
    of the fixed voxels.

    Args:
        fixed, moving: 2-D or 3-D volumes with their RAS affines.
        shrink: down-sampling factors of the resolution levels, coarse to fine.
        iterations: optimiser iterations per level and stage.
        sampling: fraction of voxels the metric samples (``(0, 1]``).
        seed: seed of the metric's sampling (the result is deterministic for a seed).
        threads: SimpleITK threads (default: its own default).

    Returns:
        an :class:`AffineResult` with ``T`` in RAS mm.
    """
    import SimpleITK as sitk

    d = _check(fixed, moving)
    if not 0 < sampling <= 1:
        raise MaxcaInputError(f"sampling must be in (0, 1], got {sampling!r}")
    if not shrink or any(int(s) < 1 for s in shrink):
        raise MaxcaInputError(f"shrink factors must be >= 1, got {shrink!r}")
    t0 = time.perf_counter()
    f_img, m_img = _to_sitk(fixed), _to_sitk(moving)
    rigid = sitk.Euler3DTransform() if d == 3 else sitk.Euler2DTransform()
    rigid = sitk.CenteredTransformInitializer(
        f_img, m_img, rigid, sitk.CenteredTransformInitializerFilter.MOMENTS
    )

    def run(initial):  # noqa: ANN001, ANN202
        R = sitk.ImageRegistrationMethod()
        R.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        R.SetMetricSamplingStrategy(R.RANDOM)
        R.SetMetricSamplingPercentage(float(sampling), int(seed))
        R.SetInterpolator(sitk.sitkLinear)
        R.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0,
            minStep=1e-4,
            numberOfIterations=int(iterations),
            relaxationFactor=0.6,
            gradientMagnitudeTolerance=1e-8,
        )
        R.SetOptimizerScalesFromPhysicalShift()
        R.SetShrinkFactorsPerLevel([int(s) for s in shrink])
        R.SetSmoothingSigmasPerLevel([s / 2.0 for s in shrink])
        R.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        R.SetInitialTransform(initial, inPlace=True)
        if threads is not None:
            R.SetNumberOfThreads(int(threads))
        R.Execute(f_img, m_img)
        return initial, float(R.GetMetricValue())

    rigid, _ = run(rigid)
    affine = sitk.AffineTransform(d)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    affine, metric = run(affine)
    lps = _lps_matrix(affine, d)
    ras = _FLIP @ lps @ _FLIP
    if not np.isfinite(ras).all() or abs(np.linalg.det(ras[:d, :d])) < 1e-6:
        raise MaxcaInputError("affine pre-alignment failed (degenerate transform)")
    return AffineResult(matrix=ras, metric=metric, seconds=time.perf_counter() - t0)


def prealign(moving: Volume, matrix: np.ndarray) -> Volume:
    """The moving volume re-placed in world space by ``T^-1`` (same voxels, affine
    ``T^-1 A_m``): sampled at world ``x`` it gives the original moving image at ``T x``."""
    T = np.asarray(matrix, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise MaxcaInputError(f"affine pre-alignment must be a finite 4x4 matrix, got {T.shape}")
    return Volume(moving.array, np.linalg.inv(T) @ moving.affine, moving.header, moving.path)


def write_itk_affine(path: str | os.PathLike[str], matrix: np.ndarray, spatial_dims: int = 3) -> Path:
    """Write ``T`` (RAS, fixed -> moving points) as an ITK affine transform file (``.mat``
    for ANTs, or ``.txt``/``.tfm``), in ITK's LPS convention."""
    import SimpleITK as sitk

    d = int(spatial_dims)
    lps = _FLIP @ np.asarray(matrix, dtype=np.float64) @ _FLIP
    tx = sitk.AffineTransform(d)
    tx.SetMatrix(tuple(float(v) for v in lps[:d, :d].ravel()))
    tx.SetTranslation(tuple(float(v) for v in lps[:d, 3]))
    path = Path(path)
    sitk.WriteTransform(tx, str(path))
    return path


def read_itk_affine(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an ITK affine/rigid transform file as a ``(4, 4)`` RAS matrix (fixed -> moving)."""
    import SimpleITK as sitk

    try:
        tx = sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        raise MaxcaInputError(f"cannot read an ITK transform from {path}") from exc
    d = tx.GetDimension()
    if d not in (2, 3):
        raise MaxcaInputError(f"{path}: expected a 2-D or 3-D transform, got {d}-D")
    # a linear transform is known by where it sends the origin and the unit vectors
    origin = np.asarray(tx.TransformPoint((0.0,) * d), dtype=np.float64)
    lps = np.eye(4)
    for i in range(d):
        unit = tuple(1.0 if j == i else 0.0 for j in range(d))
        lps[:d, i] = np.asarray(tx.TransformPoint(unit), dtype=np.float64) - origin
    lps[:d, 3] = origin
    probe = np.linspace(-50.0, 50.0, d)  # check linearity at another point
    expected = lps[:d, :d] @ probe + origin
    if not np.allclose(tx.TransformPoint(tuple(probe)), expected, atol=1e-6):
        raise MaxcaInputError(f"{path} holds a non-linear transform, not an affine one")
    return _FLIP @ lps @ _FLIP
