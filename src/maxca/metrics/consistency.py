"""Inverse consistency: how far registering A to B and B to A are from being each other's inverse.

A registration of fixed image A to moving image B gives the flow ``u_ab`` on A's grid: voxel
``p`` of A corresponds to ``p + u_ab(p)`` in B (the backward-warping convention of
``docs/conventions.md``). The reverse registration gives ``u_ba`` on B's grid. Following ``p``
into B and back gives ``p + r(p)`` with the residual

    ``r(p) = u_ab(p) + u_ba(p + u_ab(p))``

(``u_ba`` sampled by linear interpolation, the nearest border value outside the grid). A pair
of exactly inverse transforms has ``r = 0``; the inverse-consistency error is ``|r|`` in mm.
Both flows must be on grids of the same shape (e.g. both images resampled onto one model grid).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import map_coordinates

from maxca.errors import MaxcaInputError
from maxca.metrics._common import ArrayLike, as_flow, as_mask, as_spacing, shape_str

__all__ = ["inverse_consistency_error", "inverse_consistency_map"]


def inverse_consistency_map(
    flow_ab: ArrayLike, flow_ba: ArrayLike, spacing: ArrayLike | None = None
) -> np.ndarray:
    """Per-voxel inverse-consistency error ``|u_ab(p) + u_ba(p + u_ab(p))|`` on A's grid.

    Args:
        flow_ab: ``(d, *S)`` voxel displacement of the registration A -> B (on A's grid).
        flow_ba: ``(d, *S)`` voxel displacement of the reverse registration B -> A (on B's grid,
            same shape).
        spacing: voxel size per axis (``d`` values, mm); ``None`` measures in voxels.

    Returns:
        ``(*S)`` float64 error, in mm (or voxels without ``spacing``).
    """
    ab, ba = as_flow(flow_ab, "flow_ab"), as_flow(flow_ba, "flow_ba")
    if ab.shape != ba.shape:
        raise MaxcaInputError(
            f"flow_ab and flow_ba must have the same shape, got {shape_str(ab.shape)} and "
            f"{shape_str(ba.shape)}"
        )
    d = ab.shape[0]
    step = np.ones(d) if spacing is None else as_spacing(spacing, d)
    points = np.indices(ab.shape[1:], dtype=np.float64) + ab  # p + u_ab(p), voxels of B
    back = np.stack([map_coordinates(c, points, order=1, mode="nearest") for c in ba])
    residual = (ab + back) * step.reshape((d,) + (1,) * d)
    return np.sqrt(np.sum(residual**2, axis=0))


def inverse_consistency_error(
    flow_ab: ArrayLike,
    flow_ba: ArrayLike,
    mask: ArrayLike | None = None,
    spacing: ArrayLike | None = None,
) -> float:
    """Mean inverse-consistency error over A's grid (or inside ``mask``).

    Args:
        flow_ab: ``(d, *S)`` voxel displacement A -> B (on A's grid).
        flow_ba: ``(d, *S)`` voxel displacement B -> A (same shape).
        mask: optional ``(*S)`` region of A, non-zero = counted (e.g. A's brain mask).
        spacing: voxel size per axis (mm); ``None`` measures in voxels.

    Returns:
        The mean of :func:`inverse_consistency_map` (mm, or voxels), 0 for exact inverses.
    """
    error = inverse_consistency_map(flow_ab, flow_ba, spacing)
    m = as_mask(mask, error.shape)
    values = error if m is None else error[m]
    return float(values.mean())
