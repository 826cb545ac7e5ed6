"""Learn2Reg compatibility: metrics exactly as the public challenge evaluation script computes them.

The Learn2Reg evaluation script (``MDL-UzL/L2R``, ``evaluation/evaluation.py`` and
``evaluation/utils.py``) differs from maxca's own metrics (:mod:`maxca.metrics.overlap`,
:mod:`maxca.metrics.jacobian`, :mod:`maxca.metrics.landmarks`) in several ways that change the
numbers. The functions here re-implement its definitions (our own code, written from the
script's behaviour) so that ``--l2r-compat`` results can be compared with the leaderboard:

* Dice and HD95 give ``NaN`` for a label absent from the fixed **or the moving** label map (not
  the warped one), so both need the moving labels.
* HD95 ignores the voxel spacing (unit spacing: the result is in voxels, not mm) and uses the
  DeepMind ``surface-distance`` definition: surface elements ("surfels") are the corners of the
  voxel grid whose 2x2(x2) neighbourhood is partly inside the structure, each weighted by the
  area (contour length in 2-D) of the marching-cubes surface through it; distances are taken
  between surfel positions and the 95th percentile is area-weighted. A structure that vanished
  from the warped map gives ``inf``.
* The Jacobian determinant uses the kernel ``[-0.5, 0, 0.5]`` with zero padding and then drops
  two voxels at each border; SDlogJ is the standard deviation of ``log(clip(det + 3, 1e-9,
  1e9))``: the ``+ 3`` shift is part of the script's definition and makes its value much
  smaller than the standard SDlogJ.
* TRE interpolates the displacement with cubic splines (``map_coordinates`` default
  ``order=3``, zero outside the grid) instead of linearly.
* Segmentations are warped with nearest-neighbour ``map_coordinates(order=0)`` (zero outside
  the grid): :func:`l2r_warp_labels` reproduces it.

The script is written for 3-D volumes; these functions also accept 2-D inputs, with the same
definitions in two dimensions. Flows are ``(d, *S)`` voxel displacements in maxca's convention;
a Learn2Reg ``disp_*.nii.gz`` submission holds ``(*S, d)``, i.e. ``np.moveaxis(disp, -1, 0)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.ndimage import correlate1d, distance_transform_edt, map_coordinates

from maxca._optional import require
from maxca.errors import MaxcaInputError
from maxca.metrics._common import (
    ArrayLike,
    as_flow,
    as_label_map,
    as_labels,
    as_mask,
    as_numpy,
    as_spacing,
    shape_str,
)
from maxca.metrics.landmarks import _as_point_pairs
from maxca.spatial.jacobian import determinant

__all__ = [
    "L2R_CROP",
    "L2R_SHIFT",
    "l2r_dice",
    "l2r_hd95",
    "l2r_jacobian_determinant",
    "l2r_njd",
    "l2r_sdlogj",
    "l2r_tre",
    "l2r_warp_labels",
    "surface_distances",
    "robust_hausdorff",
]

#: Voxels dropped at each border of the script's Jacobian determinant.
L2R_CROP = 2
#: The constant the script adds to the determinant before its logarithm.
L2R_SHIFT = 3.0
_CLIP = (1e-9, 1e9)


# --------------------------------------------------------------------------------------------
# Jacobian determinant, SDlogJ, folding
# --------------------------------------------------------------------------------------------


def l2r_jacobian_determinant(flow: ArrayLike) -> np.ndarray:
    """The script's Jacobian determinant of ``p -> p + u(p)``, cropped by two voxels per border.

    Each derivative is the correlation with ``[-0.5, 0, 0.5]`` along one axis with zero padding
    (``scipy.ndimage`` ``mode='constant'``); the identity is added and the outer
    ``L2R_CROP = 2`` voxels of every axis are dropped. In the interior this equals the central
    differences of :func:`maxca.metrics.jacobian.jacobian_determinant`.

    Args:
        flow: ``(d, *S)`` voxel displacement, every spatial size ``>= 5``.

    Returns:
        ``(*(S - 4))`` float64 determinant.
    """
    u = as_flow(flow)
    d = u.shape[0]
    if min(u.shape[1:]) <= 2 * L2R_CROP:
        raise MaxcaInputError(
            f"flow must have at least {2 * L2R_CROP + 1} voxels along every spatial axis for the "
            f"Learn2Reg Jacobian (it drops {L2R_CROP} per border), got shape {shape_str(u.shape)}"
        )
    kernel = np.array([-0.5, 0.0, 0.5])
    crop = (slice(L2R_CROP, -L2R_CROP),) * d
    J = []
    for i in range(d):
        row = []
        for j in range(d):
            g = correlate1d(u[i], kernel, axis=j, mode="constant", cval=0.0)[crop]
            row.append(g + 1.0 if i == j else g)
        J.append(row)
    return determinant(J)


def _l2r_values(det: np.ndarray, mask: ArrayLike | None, full_shape: tuple[int, ...]) -> np.ndarray:
    m = as_mask(mask, full_shape)
    if m is None:
        return det.reshape(-1)
    m = m[(slice(L2R_CROP, -L2R_CROP),) * det.ndim]
    if not m.any():
        raise MaxcaInputError(
            f"mask must select at least one voxel away from the {L2R_CROP}-voxel border that "
            "the Learn2Reg Jacobian drops, got none"
        )
    return det[m]


def l2r_sdlogj(flow: ArrayLike, mask: ArrayLike | None = None) -> float:
    """The script's SDlogJ: ``std(log(clip(det + 3, 1e-9, 1e9)))`` over the cropped grid.

    ``det`` is :func:`l2r_jacobian_determinant`; with a mask, only voxels where the mask
    (cropped the same way) is non-zero are used, as the script does with its
    ``masked_evaluation`` option. Population standard deviation (``ddof = 0``).

    Args:
        flow: ``(d, *S)`` voxel displacement.
        mask: optional ``(*S)`` binary region (non-zero = used).

    Returns:
        The script's SDlogJ value (0 for any affine flow).
    """
    u = as_flow(flow)
    det = l2r_jacobian_determinant(u)
    values = _l2r_values(det, mask, u.shape[1:])
    return float(np.log(np.clip(values + L2R_SHIFT, *_CLIP)).std())


def l2r_njd(flow: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Percentage of voxels of the script's cropped Jacobian determinant that are ``<= 0``.

    The script's own ``num_foldings`` is computed on the shifted and clipped value
    ``clip(det + 3, 1e-9, 1e9) <= 0``, which can never hold, so it always reports 0 folds. This
    function counts what that line evidently means: ``det <= 0`` with the script's determinant
    and crop (:func:`l2r_jacobian_determinant`), as a percentage of the counted voxels, to be
    comparable with :func:`maxca.metrics.jacobian.njd_percent`.

    Args:
        flow: ``(d, *S)`` voxel displacement.
        mask: optional ``(*S)`` binary region (non-zero = counted), cropped like the determinant.

    Returns:
        Percentage in ``[0, 100]``.
    """
    u = as_flow(flow)
    det = l2r_jacobian_determinant(u)
    values = _l2r_values(det, mask, u.shape[1:])
    return 100.0 * float(np.count_nonzero(values <= 0)) / values.size


# --------------------------------------------------------------------------------------------
# Surface distances (DeepMind definition) and HD95
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _surfel_area_table(spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(table, kernel)``: surfel area (3-D) or contour length (2-D) of each neighbourhood code.

    The marching-cubes tables are MONAI's (``monai.metrics.utils``, which ships the DeepMind
    ``surface-distance`` tables); the 3-D areas are recomputed in float64 from the triangle
    normals in the same order of operations as ``surface-distance``, so they match it bit for
    bit.
    """
    mu = require("monai.metrics.utils", "hd95", "Learn2Reg-compatible HD95")

    kernel = np.asarray(mu.ENCODING_KERNEL[len(spacing)], dtype=np.int64)
    if len(spacing) == 2:
        table = np.asarray(mu.create_table_neighbour_code_to_contour_length(spacing)[0])
        return table.astype(np.float64), kernel
    try:
        normals = mu._get_neighbour_code_to_normals_table().double().cpu().numpy()  # (256, 4, 3)
    except AttributeError:  # pragma: no cover - only if MONAI drops the private helper
        table = mu.create_table_neighbour_code_to_surface_area(spacing)[0]
        return np.asarray(table.cpu(), dtype=np.float64), kernel
    s0, s1, s2 = spacing
    table = np.zeros(normals.shape[0])
    for code, tri in enumerate(normals):
        total = 0.0
        for n in tri:
            total += float(np.linalg.norm([n[0] * s1 * s2, n[1] * s0 * s2, n[2] * s0 * s1]))
        table[code] = total
    return table, kernel


def _neighbour_codes(mask: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Neighbourhood code at every voxel corner: ``(*S + 1)`` for a ``(*S)`` mask.

    Corner ``c`` sits between voxels ``c - 1`` and ``c`` on every axis; its code adds
    ``kernel[o]`` for each offset ``o`` in ``{0, 1}^d`` whose voxel ``c - 1 + o`` is inside.
    """
    padded = np.pad(mask.astype(np.int64), 1)
    out_shape = tuple(n + 1 for n in mask.shape)
    codes = np.zeros(out_shape, dtype=np.int64)
    for offset in np.ndindex(*kernel.shape):
        window = tuple(slice(o, o + n) for o, n in zip(offset, out_shape))
        codes += kernel[offset] * padded[window]
    return codes


def surface_distances(
    mask_a: ArrayLike, mask_b: ArrayLike, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Surfel distances between two binary structures (DeepMind ``surface-distance`` definition).

    Surfels are the voxel corners whose 2x2(x2) neighbourhood is partly inside the structure;
    each carries the marching-cubes surface area (contour length in 2-D) in mm^2 (mm). The
    distance of a surfel to the other structure is the Euclidean distance in mm to the nearest
    surfel of the other structure (``scipy.ndimage.distance_transform_edt`` on the corner grid).

    Args:
        mask_a: ``(*S)`` boolean (non-zero = inside), ``S`` 2-D or 3-D.
        mask_b: ``(*S)`` boolean of the same shape.
        spacing: ``len(S)`` voxel sizes.

    Returns:
        ``(dist_a_to_b, area_a, dist_b_to_a, area_b)``, each 1-D and unsorted. A structure
        without voxels has no surfels (empty arrays) and every distance to it is ``inf``.
    """
    a = as_label_map(mask_a, "mask_a") != 0
    b = as_label_map(mask_b, "mask_b", shape=a.shape) != 0
    sp = tuple(as_spacing(spacing, a.ndim).tolist())
    union = a | b
    if not union.any():
        empty = np.zeros(0)
        return empty, empty, empty, empty
    box = tuple(
        slice(int(idx[0]), int(idx[-1]) + 1)
        for idx in (
            np.flatnonzero(union.any(axis=tuple(k for k in range(a.ndim) if k != ax)))
            for ax in range(a.ndim)
        )
    )
    table, kernel = _surfel_area_table(sp)
    full = table.size - 1
    result = []
    borders, areas = [], []
    for m in (a[box], b[box]):
        codes = _neighbour_codes(m, kernel)
        border = (codes != 0) & (codes != full)
        borders.append(border)
        areas.append(table[codes[border]])
    dist_maps = [
        distance_transform_edt(~border, sampling=sp) if border.any() else None for border in borders
    ]
    for src, dst in ((0, 1), (1, 0)):
        n = int(borders[src].sum())
        dmap = dist_maps[dst]
        result.append(np.full(n, np.inf) if dmap is None else dmap[borders[src]])
        result.append(areas[src])
    return result[0], result[1], result[2], result[3]


def _percentile_distance(dist: np.ndarray, area: np.ndarray, percent: float) -> float:
    """Area-weighted percentile: the smallest distance whose cumulative area share reaches it."""
    if dist.size == 0:
        return math.inf
    order = np.lexsort((area, dist))  # by distance, ties by area
    d, w = dist[order], area[order]
    cum = np.cumsum(w) / np.sum(w)
    idx = int(np.searchsorted(cum, percent / 100.0))
    return float(d[min(idx, d.size - 1)])


def robust_hausdorff(
    mask_a: ArrayLike, mask_b: ArrayLike, spacing: Sequence[float], percent: float = 95.0
) -> float:
    """Area-weighted ``percent``-th percentile symmetric Hausdorff distance of two structures.

    For each direction, surfels are sorted by distance (:func:`surface_distances`) and the
    distance at which their cumulative area share first reaches ``percent / 100`` is taken; the
    result is the larger direction. ``inf`` if either structure is empty.
    """
    if not 0.0 <= float(percent) <= 100.0:
        raise MaxcaInputError(f"percent must be in [0, 100], got {percent}")
    d_ab, w_a, d_ba, w_b = surface_distances(mask_a, mask_b, spacing)
    return max(_percentile_distance(d_ab, w_a, percent), _percentile_distance(d_ba, w_b, percent))


def _l2r_maps(
    fixed_label: ArrayLike, moving_label: ArrayLike, warped_label: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = as_label_map(fixed_label, "fixed_label")
    m = as_label_map(moving_label, "moving_label", shape=f.shape)
    w = as_label_map(warped_label, "warped_label", shape=f.shape)
    return f, m, w


def _per_label(
    fixed_label: ArrayLike,
    moving_label: ArrayLike,
    warped_label: ArrayLike,
    labels: Sequence[int] | None,
    score: Callable[[np.ndarray, np.ndarray], float],
) -> dict[int, float]:
    """``{label: score(fixed == label, warped == label)}``, ``NaN`` where the label is absent
    from the fixed or the moving map (the script's rule for which labels count)."""
    f, m, w = _l2r_maps(fixed_label, moving_label, warped_label)
    out: dict[int, float] = {}
    for lab in as_labels(labels, f, m):
        mf = f == lab
        present = mf.any() and (m == lab).any()
        out[lab] = score(mf, w == lab) if present else math.nan
    return out


def l2r_dice(
    fixed_label: ArrayLike,
    moving_label: ArrayLike,
    warped_label: ArrayLike,
    labels: Sequence[int] | None = None,
) -> dict[int, float]:
    """The script's Dice per label: ``NaN`` when the label is absent from fixed or moving.

    Args:
        fixed_label: ``(*S)`` fixed label map.
        moving_label: ``(*S)`` moving label map (only used to decide which labels count).
        warped_label: ``(*S)`` moving labels warped onto the fixed grid.
        labels: labels to score; ``None`` = every non-zero label of the fixed or moving map.

    Returns:
        ``{label: 2 |F ∩ W| / (|F| + |W|)}``.
    """

    def dice_of(mf: np.ndarray, mw: np.ndarray) -> float:
        return 2.0 * int(np.logical_and(mf, mw).sum()) / (int(mf.sum()) + int(mw.sum()))

    return _per_label(fixed_label, moving_label, warped_label, labels, dice_of)


def l2r_hd95(
    fixed_label: ArrayLike,
    moving_label: ArrayLike,
    warped_label: ArrayLike,
    labels: Sequence[int] | None = None,
) -> dict[int, float]:
    """The script's HD95 per label, in voxels (unit spacing), DeepMind surfel definition.

    The arguments are those of :func:`l2r_dice`.

    Returns:
        ``{label: hd95_voxels}``: ``NaN`` when the label is absent from fixed or moving,
        ``inf`` when it is absent from the warped map only.
    """

    def hd95_of(mf: np.ndarray, mw: np.ndarray) -> float:
        return robust_hausdorff(mf, mw, (1.0,) * mf.ndim, 95.0)

    return _per_label(fixed_label, moving_label, warped_label, labels, hd95_of)


# --------------------------------------------------------------------------------------------
# TRE and label warping
# --------------------------------------------------------------------------------------------


def l2r_tre(
    fixed_pts: ArrayLike, moving_pts: ArrayLike, flow: ArrayLike, spacing: Sequence[float]
) -> np.ndarray:
    """The script's TRE: ``|| (p + u(p) - q) * spacing ||`` with ``u`` cubic-spline interpolated.

    ``u(p)`` comes from ``map_coordinates(order=3, mode='constant')`` (the scipy defaults the
    script relies on); ``spacing`` is the moving image's voxel size in mm.

    Args:
        fixed_pts: ``(N, d)`` fixed landmarks (voxels).
        moving_pts: ``(N, d)`` moving landmarks (voxels).
        flow: ``(d, *S)`` voxel displacement.
        spacing: ``d`` voxel sizes in mm.

    Returns:
        ``(N,)`` errors in mm.
    """
    u = as_flow(flow)
    d = u.shape[0]
    p, q = _as_point_pairs(fixed_pts, moving_pts, d)
    sp = as_spacing(spacing, d)
    disp = np.stack([map_coordinates(u[k], p.T, order=3, mode="constant") for k in range(d)], 1)
    return np.linalg.norm((p + disp - q) * sp, axis=1)


def l2r_warp_labels(moving_label: ArrayLike, flow: ArrayLike) -> np.ndarray:
    """Warp a label map as the script does: ``map_coordinates(moving, p + u(p), order=0)``.

    Nearest-neighbour sampling, 0 outside the grid (``mode='constant'``).

    Args:
        moving_label: ``(*S)`` moving label map.
        flow: ``(d, *S)`` voxel displacement on the same grid.

    Returns:
        ``(*S)`` warped labels, dtype of ``moving_label``.
    """
    u = as_flow(flow)
    lab = as_numpy(moving_label, "moving_label")
    if lab.shape != u.shape[1:]:
        raise MaxcaInputError(
            f"moving_label must have the flow's spatial shape {shape_str(u.shape[1:])}, "
            f"got {shape_str(lab.shape)}"
        )
    coords = np.indices(lab.shape, dtype=np.float64) + u
    return map_coordinates(lab, coords, order=0, mode="constant")
