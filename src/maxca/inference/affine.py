"""Classical affine pre-alignment (SimpleITK), before the network's deformable registration.

``affine_register(fixed, moving)`` finds the world-to-world map ``T`` (RAS mm, a ``(4, 4)``
matrix) such that the moving image sampled at ``T x`` matches the fixed image at ``x``
(Mattes mutual information, so any contrast; rigid then affine, three resolutions, the
centres of mass aligned first, so large shifts and rotations are recovered).

By default the registration runs both ways (moving to fixed, and fixed to moving) and returns
the log-Euclidean mean of ``T`` and the inverse of the reverse map. One direction alone is
biased: on skull-stripped brain pairs that are already aligned, moving-to-fixed mutual
information shrinks ``T`` by 1-3 % along every axis (the moving brain comes out enlarged), and
fixed-to-moving by as much the other way; the mean cancels that bias. The reverse map is not
a second full registration: it starts from the inverse of the forward map and is refined at the
finest level only (affine-only Dice on brain training pairs as with a full reverse run, at a
third of its cost). Swapping the two images gives the inverse map to ~1e-3 (unless one
direction failed and the other was kept).

To register with the network after it, give the moving image the affine ``T^-1 A_m``
(:func:`prealign`): in world space it then sits on the fixed image, and every later step of
``register_pair`` is unchanged. The total transform of a fixed point ``x`` is
``T (x + D(x))`` with ``D`` the network's displacement; ANTs applies it as the chain
``-t field.nii.gz -t affine.mat`` (its usual order, the deformable field listed first, as
``antsRegistration`` writes it), a SimpleITK ``CompositeTransform`` with the affine added first
and the field second, or as one composed field.

ITK works in LPS: ``T_lps = F T_ras F`` with ``F = diag(-1, -1, 1)``; :func:`write_itk_affine`
and :func:`read_itk_affine` convert.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from maxca.data.io import Volume, ras_lps_flip, sitk_image
from maxca.errors import MaxcaInputError
from maxca.inference.register import RegistrationResult

__all__ = [
    "AffineResult",
    "affine_register",
    "prealign",
    "read_itk_affine",
    "with_affine",
    "write_itk_affine",
]

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
    return sitk_image(np.asarray(volume.array, dtype=np.float32), volume.affine)


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
        if min(a.shape) < 4:
            shape = "x".join(str(n) for n in a.shape)
            raise MaxcaInputError(
                f"{what} image is {shape} voxels: affine pre-alignment needs at least 4 along "
                "every axis (register without it: --no-affine)"
            )
    return d


#: scales of a pre-alignment map outside ``[1 / MAX_SCALE, MAX_SCALE]`` are refused
MAX_SCALE = 1.5


def _itk_failure(exc: RuntimeError) -> MaxcaInputError:
    """One line from SimpleITK's multi-line exception text."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    detail = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Description")), "")
    detail = detail or (lines[-1] if lines else type(exc).__name__)
    return MaxcaInputError(
        f"affine pre-alignment failed in SimpleITK ({detail}); check that both headers place the "
        "images in the same world space (units, origin), or register without it (--no-affine)"
    )


def affine_register(
    fixed: Volume,
    moving: Volume,
    shrink: tuple[int, ...] | None = None,
    iterations: int = 100,
    sampling: float = 0.1,
    finest_mm: float = 4.0,
    seed: int = 0,
    threads: int | None = None,
    symmetric: bool = True,
    min_step: float = 3e-3,
    rigid_levels: int | None = 1,
    gradient_filter: bool | None = None,
) -> AffineResult:
    """Affine registration of ``moving`` to ``fixed`` (any grids, any contrasts).

    A rigid stage (centres of mass aligned, then rotation + translation, at the coarsest
    ``rigid_levels`` levels) is followed by a full affine stage initialised from it that runs coarse
    to fine over the ``shrink`` factors (Gaussian smoothing of ``shrink / 2`` voxels); both use
    regular-step gradient descent with physical-shift scaling, stopped when the step falls under
    ``min_step`` mm, and Mattes mutual information on a seeded random ``sampling`` fraction of the
    fixed voxels.

    Args:
        fixed, moving: 2-D or 3-D volumes with their RAS affines.
        shrink: down-sampling factors of the resolution levels, coarse to fine (default:
            ``(4k, 2k, k)`` with ``k`` the factor that brings the fixed image's finest spacing
            to about ``finest_mm``, dropping levels with fewer than 16 fixed-image voxels along
            an axis).
        iterations: optimiser iterations per level and stage.
        sampling: fraction of voxels the metric samples (``(0, 1]``; raised to reach about
            20,000 samples at the finest level; at 1 every voxel is used, with no random draw).
        seed: seed of the metric's sampling, ``>= 0``: the result is deterministic for a seed
            (up to floating-point rounding in ITK's multi-threaded filters, ~1e-13).
            SimpleITK reads a seed of 0 as "seed from the wall clock", so the seed given to
            it is ``seed + 1``.
        threads: SimpleITK threads (default: its own default).
        finest_mm: voxel size of the finest level when ``shrink`` is not given (an affine
            needs no finer detail; 4 mm keeps a brain pair to a few seconds).
        min_step: the optimiser stops when its step (mm, after physical-shift scaling) falls
            under this (``> 0``; on brain pairs 1e-3 mm gives the map of 1e-4 mm to ~1e-3 mm
            in two thirds of the time, and the default 3e-3 mm that of 1e-3 mm to ~0.04 mm in
            0.84x the time).
        rigid_levels: how many of the coarsest levels the rigid stage runs at (``>= 1``, or
            ``None`` for all; default 1: on brain pairs all levels cost ~30 % more for the same
            map).
        gradient_filter: ``True``: ITK precomputes a smoothed gradient image of both images at
            every level (its own default); ``False``: central differences at the sampled points
            only (on brain pairs 0.83x the time, maps within 0.2 mm;
            ``benchmarks/affine_speed.py``), which needs the level's own smoothing: on a small
            sharp-edged phantom registered at full resolution it missed by 4.4 mm where the
            gradient images gave 0.3 mm. ``None`` (default): ``False`` for a registration whose
            levels are all shrunk (smoothed by >= 1 voxel), else ``True``.
        symmetric: register in both directions and return the log-Euclidean mean
            ``expm((logm T + logm R^-1) / 2)`` of the forward map ``T`` and the inverse of the
            reverse map ``R`` (``R`` refined from ``T^-1`` at the finest level: ~1.5x the time
            of one direction; see the module docstring). Falls back to ``T``
            when a matrix logarithm is not real (a reflection) or the two directions disagree
            by more than 10 % or 10 mm (one of them failed: the forward one is kept).

    Returns:
        an :class:`AffineResult` with ``T`` in RAS mm.

    Raises:
        MaxcaInputError: an image with fewer than 4 voxels along an axis, constant or
            non-finite; a SimpleITK failure (e.g. images that do not overlap in world space);
            a map whose scales (singular values of its linear part) fall outside
            ``[1 / MAX_SCALE, MAX_SCALE]`` (e.g. a thick-slice image whose coarse levels
            collapsed): a pre-alignment that far from a rigid one is taken as a failure rather
            than passed on silently.
    """
    d = _check(fixed, moving)
    if shrink is None:
        k = max(1, int(round(finest_mm / min(fixed.spacing))))
        # keep at least 16 voxels per axis at every level (small images get fewer levels);
        # the levels shrink the fixed grid only (ITK smooths the moving image, never shrinks
        # it), so a thick-slice moving image keeps its coarse levels: counting its 27 slices
        # of 6 mm here left one full-resolution level, which collapsed the map along them
        smallest = min(fixed.shape)
        levels = [s for s in (4 * k, 2 * k, k) if smallest // s >= 16]
        shrink = tuple(levels) or (max(1, min(k, smallest // 16)),)
    if isinstance(seed, bool) or int(seed) != seed or not 0 <= int(seed) < 2**32 - 1:
        raise MaxcaInputError(f"affine seed must be an integer in [0, 2**32 - 2], got {seed!r}")
    if not 0 < sampling <= 1:
        raise MaxcaInputError(f"sampling must be in (0, 1], got {sampling!r}")
    if not shrink or any(int(s) < 1 for s in shrink):
        raise MaxcaInputError(f"shrink factors must be >= 1, got {shrink!r}")
    if isinstance(min_step, bool) or not (
        isinstance(min_step, (int, float)) and 0 < min_step < float("inf")
    ):
        raise MaxcaInputError(f"min_step must be a number > 0, got {min_step!r}")
    if rigid_levels is not None and (
        isinstance(rigid_levels, bool) or not isinstance(rigid_levels, int) or rigid_levels < 1
    ):
        raise MaxcaInputError(f"rigid_levels must be an integer >= 1 or None, got {rigid_levels!r}")
    if gradient_filter is not None and not isinstance(gradient_filter, bool):
        raise MaxcaInputError(
            f"gradient_filter must be True, False or None, got {gradient_filter!r}"
        )
    t0 = time.perf_counter()
    f_img, m_img = _to_sitk(fixed), _to_sitk(moving)
    options = (
        tuple(int(v) for v in shrink),
        int(iterations),
        sampling,
        int(seed),
        threads,
        float(min_step),
        gradient_filter,
    )
    try:
        forward, metric = _one_way(f_img, m_img, d, *options, rigid_levels=rigid_levels)
        ras = forward
        if symmetric:
            # the reverse map starts from the inverse of the forward one and refines it at the
            # finest level only (the coarse levels and the rigid stage are done: ~3x cheaper
            # than a second full registration, and within 0.01 of it; see the module docstring)
            reverse, _ = _one_way(
                m_img, f_img, d, (options[0][-1],), *options[1:], start=np.linalg.inv(forward)
            )
            ras = _log_mean(forward, np.linalg.inv(reverse), d)
    except RuntimeError as exc:  # ITK's exceptions (too few voxels, no overlap, ...)
        raise _itk_failure(exc) from exc
    if not np.isfinite(ras).all() or abs(np.linalg.det(ras[:d, :d])) < 1e-6:
        raise MaxcaInputError("affine pre-alignment failed (degenerate transform)")
    scales = np.linalg.svd(ras[:d, :d], compute_uv=False)
    if scales.max() > MAX_SCALE or scales.min() < 1.0 / MAX_SCALE:
        found = ", ".join(f"{s:.2f}" for s in scales)
        raise MaxcaInputError(
            f"affine pre-alignment found an implausible map (scales {found}; expected "
            f"{1 / MAX_SCALE:.2f}-{MAX_SCALE:g}): check the images and their headers, or "
            "register without it (--no-affine)"
        )
    return AffineResult(matrix=ras, metric=metric, seconds=time.perf_counter() - t0)


def _one_way(
    f_img,  # noqa: ANN001 - SimpleITK images
    m_img,  # noqa: ANN001
    d: int,
    shrink: tuple[int, ...],
    iterations: int,
    sampling: float,
    seed: int,
    threads: int | None,
    min_step: float,
    gradient_filter: bool | None,
    start: np.ndarray | None = None,
    rigid_levels: int | None = 1,
) -> tuple[np.ndarray, float]:
    """Rigid (the ``rigid_levels`` coarsest levels of ``shrink``) then affine (every level)
    registration of ``m_img`` to ``f_img``: ``(4, 4)`` RAS ``T``, metric.

    With ``start`` (a ``(4, 4)`` RAS map) the rigid stage is skipped and the affine stage
    starts from ``start``.
    """
    import SimpleITK as sitk  # noqa: N813 (the library's own idiom)

    # at least ~20,000 samples at the finest level (small images: all their voxels), so the
    # mutual-information estimate is not noisy
    def run(initial, levels):  # noqa: ANN001, ANN202
        finest = f_img.GetNumberOfPixels() / max(1, min(levels)) ** d
        fraction = min(1.0, max(float(sampling), 20_000 / max(finest, 1.0)))
        R = sitk.ImageRegistrationMethod()
        R.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        if fraction < 1.0:
            R.SetMetricSamplingStrategy(R.RANDOM)
            # + 1: SimpleITK's seed 0 is sitkWallClock, which made every run differ
            R.SetMetricSamplingPercentage(float(fraction), int(seed) + 1)
        else:  # every voxel: no random draw (a 100 % random draw repeats some, misses others)
            R.SetMetricSamplingStrategy(R.NONE)
        # central differences need smoothed images: a level at full resolution (shrink 1,
        # smoothed by half a voxel) takes ITK's smoothed gradient images unless told otherwise
        filtered = min(levels) < 2 if gradient_filter is None else gradient_filter
        R.SetMetricUseFixedImageGradientFilter(filtered)
        R.SetMetricUseMovingImageGradientFilter(filtered)
        R.SetInterpolator(sitk.sitkLinear)
        R.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0,
            minStep=float(min_step),
            numberOfIterations=int(iterations),
            relaxationFactor=0.6,
            gradientMagnitudeTolerance=1e-8,
        )
        R.SetOptimizerScalesFromPhysicalShift()
        R.SetShrinkFactorsPerLevel(list(levels))
        R.SetSmoothingSigmasPerLevel([s / 2.0 for s in levels])
        R.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        R.SetInitialTransform(initial, inPlace=True)
        if threads is not None:
            R.SetNumberOfThreads(int(threads))
        R.Execute(f_img, m_img)
        return initial, float(R.GetMetricValue())

    affine = sitk.AffineTransform(d)
    if start is None:
        rigid = sitk.Euler3DTransform() if d == 3 else sitk.Euler2DTransform()
        rigid = sitk.CenteredTransformInitializer(
            f_img, m_img, rigid, sitk.CenteredTransformInitializerFilter.MOMENTS
        )
        # the rigid start only needs to be roughly right: the affine stage refines it at
        # every level
        rigid, _ = run(rigid, shrink if rigid_levels is None else shrink[:rigid_levels])
        affine.SetCenter(rigid.GetCenter())
        affine.SetMatrix(rigid.GetMatrix())
        affine.SetTranslation(rigid.GetTranslation())
    else:  # x -> M (x - c) + c + t, centred on the fixed image, equal to ``start`` in LPS
        lps = _FLIP @ np.asarray(start, dtype=np.float64) @ _FLIP
        M, offset = lps[:d, :d], lps[:d, 3]
        size = f_img.GetSize()
        c = np.asarray(f_img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in size]))
        affine.SetCenter(tuple(float(v) for v in c))
        affine.SetMatrix(tuple(float(v) for v in M.ravel()))
        affine.SetTranslation(tuple(float(v) for v in offset - c + M @ c))
    affine, metric = run(affine, shrink)
    lps = _lps_matrix(affine, d)
    return _FLIP @ lps @ _FLIP, metric


def _log_mean(a: np.ndarray, b: np.ndarray, d: int) -> np.ndarray:
    """Log-Euclidean mean ``expm((logm a + logm b) / 2)`` of two ``(4, 4)`` affine maps that
    should agree; ``a`` when they do not (a logarithm is not real, or they differ by more than
    10 % in the linear part or 10 mm in the translation)."""
    from scipy.linalg import expm, logm

    gap = np.linalg.inv(a) @ b
    if np.abs(gap[:d, :d] - np.eye(d)).max() > 0.1 or np.abs(gap[:d, 3]).max() > 10.0:
        return a
    if np.linalg.det(a[:d, :d]) <= 0 or np.linalg.det(b[:d, :d]) <= 0:
        return a
    la, lb = logm(a), logm(b)
    if np.abs(np.imag(la)).max() > 1e-8 or np.abs(np.imag(lb)).max() > 1e-8:
        return a
    out = np.real(expm((np.real(la) + np.real(lb)) / 2.0))
    out[3] = (0.0, 0.0, 0.0, 1.0)
    return out


def prealign(moving: Volume, matrix: np.ndarray) -> Volume:
    """The moving volume re-placed in world space by ``T^-1`` (same voxels, affine
    ``T^-1 A_m``): sampled at world ``x`` it gives the original moving image at ``T x``."""
    T = np.asarray(matrix, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise MaxcaInputError(f"affine pre-alignment must be a finite 4x4 matrix, got {T.shape}")
    return Volume(moving.array, np.linalg.inv(T) @ moving.affine, moving.header, moving.path)


def write_itk_affine(
    path: str | os.PathLike[str], matrix: np.ndarray, spatial_dims: int = 3
) -> Path:
    """Write ``T`` (RAS, fixed -> moving points) as an ITK affine transform file (``.mat``
    for ANTs, or ``.txt``/``.tfm``), in ITK's LPS convention."""
    import SimpleITK as sitk  # noqa: N813 (the library's own idiom)

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
    import SimpleITK as sitk  # noqa: N813 (the library's own idiom)

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


def with_affine(
    result: RegistrationResult,
    matrix: np.ndarray,
    moving: Volume,
    moving_labels: Volume | None = None,
) -> RegistrationResult:
    """The registration of the *original* moving image: compose the pre-alignment ``T`` with
    the deformable result computed on :func:`prealign`-ed inputs.

    For a fixed voxel ``p`` (world ``x = A_f p``) the deformable flow ``u`` gives
    ``x + D(x) = A_f (p + u(p))``; the total map is ``y = T A_f (p + u(p))`` and the returned
    voxel flow is ``u_total(p) = A_f^-1 y - p``, so ``warped(p) = moving(A_m^-1 A_f (p +
    u_total(p)))`` for the original moving affine ``A_m``. The warped image and labels are
    unchanged (they already are the moving image at ``y``); the deformable-only flow is kept
    in ``result.deformable_flow`` for the chain ``affine + field``.

    Args:
        result: :func:`~maxca.inference.register.register_pair` on the pre-aligned moving image.
        matrix: ``T`` (RAS, fixed -> moving points).
        moving, moving_labels: the original (not pre-aligned) inputs.

    Returns:
        a :class:`~maxca.inference.register.RegistrationResult` with ``flow`` the total
        displacement, ``moving``/``moving_labels`` the originals, ``affine`` = ``T`` and
        ``deformable_flow`` = ``u``.
    """
    T = np.asarray(matrix, dtype=np.float64)
    u = np.asarray(result.flow, dtype=np.float64)  # (d, *S)
    d = u.shape[0]
    A = np.asarray(result.fixed.affine, dtype=np.float64)
    grid = np.stack(np.meshgrid(*(np.arange(s, dtype=np.float64) for s in u.shape[1:]),
                                indexing="ij"))  # fmt: skip
    K = np.linalg.pinv(A[:3, :d]) @ T[:3, :3] @ A[:3, :d]  # (d, d) voxel part of A^-1 T A
    offset = np.linalg.pinv(A[:3, :d]) @ (T[:3, :3] @ A[:3, 3] + T[:3, 3] - A[:3, 3])
    pts = grid + u
    total = np.tensordot(K, pts, axes=1) + offset.reshape((d,) + (1,) * d) - grid
    return replace(
        result,
        moving=moving,
        moving_labels=moving_labels,
        flow=total.astype(np.float32),
        affine=T.copy(),
        deformable_flow=np.asarray(result.flow, dtype=np.float32),
    )
