"""Regularity of a deformation: Jacobian determinant, folding percentage and SDlogJ.

A flow is ``(d, *S)`` (or ``(1, d, *S)``), a voxel displacement ``u`` with channel ``k`` along
spatial axis ``k``; the transformation is ``phi(p) = p + u(p)``. Derivatives are taken in voxel
units, so the determinant is the local volume ratio of ``phi`` and does not depend on the
voxel spacing.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from maxca.errors import MaxcaInputError
from maxca.metrics._common import ArrayLike, as_flow, as_mask, shape_str

__all__ = [
    "jacobian_determinant_array",
    "njd_percent",
    "njd_percent_of",
    "sdlogj",
    "sdlogj_of",
    "LOG_CLIP",
]

#: Positive determinants are clipped to at least this value before the logarithm in
#: :func:`sdlogj`, so one nearly singular voxel cannot dominate the standard deviation.
LOG_CLIP = 1e-9


def jacobian_determinant_array(flow: ArrayLike) -> np.ndarray:
    """:func:`maxca.spatial.jacobian_determinant` for one numpy flow, in float64.

    ``J = I + grad u`` of ``phi(p) = p + u(p)`` with central differences inside and one-sided
    differences on the first and last voxel of every axis (exact for affine flows everywhere).

    Args:
        flow: ``(d, *S)`` (or ``(1, d, *S)``) voxel displacement, ``d = len(S)`` in (2, 3),
            every size ``>= 2``; numpy array, torch tensor or nested sequence.

    Returns:
        ``(*S)`` float64 determinant; values ``<= 0`` mark folding.
    """
    import torch

    from maxca.spatial.jacobian import jacobian_determinant as _torch_determinant

    u = as_flow(flow)
    if min(u.shape[1:]) < 2:
        raise MaxcaInputError(
            "flow must have at least 2 voxels along every spatial axis to take derivatives, "
            f"got shape {shape_str(u.shape)}"
        )
    return _torch_determinant(torch.from_numpy(np.ascontiguousarray(u))[None])[0].numpy()


def jacobian_determinant(flow: ArrayLike) -> np.ndarray:
    """Deprecated name of :func:`jacobian_determinant_array` (kept for one release; the torch
    function of that name is :func:`maxca.spatial.jacobian_determinant`)."""
    warnings.warn(
        "maxca.metrics.jacobian_determinant is deprecated; use jacobian_determinant_array "
        "(numpy) or maxca.spatial.jacobian_determinant (torch)",
        DeprecationWarning,
        stacklevel=2,
    )
    return jacobian_determinant_array(flow)


def njd_percent(flow: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Percentage of voxels (inside ``mask``) where the Jacobian determinant is ``<= 0``.

    Args:
        flow: ``(d, *S)`` voxel displacement.
        mask: optional ``(*S)`` region, non-zero = counted; ``None`` counts every voxel.

    Returns:
        ``100 * #{det <= 0} / #voxels`` in ``[0, 100]``.
    """
    return njd_percent_of(jacobian_determinant_array(flow), mask)


def njd_percent_of(det: np.ndarray, mask: ArrayLike | None = None) -> float:
    """:func:`njd_percent` from a determinant computed once
    (:func:`jacobian_determinant_array`)."""
    m = as_mask(mask, det.shape)
    values = det if m is None else det[m]
    return 100.0 * float(np.count_nonzero(values <= 0)) / values.size


def sdlogj(flow: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Standard deviation of ``log(det J)`` over the voxels (inside ``mask``) with ``det J > 0``.

    Folded voxels (``det <= 0``) have no logarithm and are left out (they are counted by
    :func:`njd_percent`); positive determinants below :data:`LOG_CLIP` are raised to it first.
    The standard deviation is the population one (``ddof = 0``).

    Args:
        flow: ``(d, *S)`` voxel displacement.
        mask: optional ``(*S)`` region, non-zero = used; ``None`` uses every voxel.

    Returns:
        The standard deviation (0 for any affine flow); ``NaN`` when no voxel has ``det > 0``.
    """
    return sdlogj_of(jacobian_determinant_array(flow), mask)


def sdlogj_of(det: np.ndarray, mask: ArrayLike | None = None) -> float:
    """:func:`sdlogj` from a determinant computed once (:func:`jacobian_determinant_array`)."""
    m = as_mask(mask, det.shape)
    values = det if m is None else det[m]
    values = values[values > 0]
    if values.size == 0:
        return math.nan
    return float(np.log(np.maximum(values, LOG_CLIP)).std())
