"""Local correlation cost volume between two feature maps."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from maxca.errors import MaxcaInputError
from maxca.spatial._checks import check_floating, check_image, check_int, shape_str

__all__ = ["correlation", "correlation_offsets"]


def correlation_offsets(spatial_dims: int, max_disp: int) -> list[tuple[int, ...]]:
    """Offsets of the channels of :func:`correlation`, in channel order.

    ``list(itertools.product(range(-max_disp, max_disp + 1), repeat=spatial_dims))``: offset
    component ``k`` is along spatial axis ``k`` and the last axis varies fastest, so the zero
    offset is the middle channel ``(2 * max_disp + 1) ** spatial_dims // 2``.
    """
    m = check_int(max_disp, "max_disp", 0)
    return list(itertools.product(range(-m, m + 1), repeat=spatial_dims))


def correlation(fixed: torch.Tensor, moving: torch.Tensor, max_disp: int = 1) -> torch.Tensor:
    """Local correlation of ``fixed`` with shifted copies of ``moving``.

    ``out[:, j](p) = mean over channels c of fixed[:, c](p) * moving[:, c](p + o_j)``, with
    ``moving`` taken as zero outside the image and ``o_j`` the ``j``-th offset of
    ``itertools.product(range(-max_disp, max_disp + 1), repeat=d)`` (offset component ``k``
    along spatial axis ``k``; the last axis varies fastest; see :func:`correlation_offsets`).

    ``moving`` is zero-padded once and each offset reads a strided view of it, so the extra
    memory is one padded copy of ``moving`` plus one ``(B, C, *S)`` product at a time.

    Args:
        fixed: ``(B, C, *S)`` floating features, ``S`` of 2 or 3 axes.
        moving: ``(B, C, *S)`` floating features, same shape as ``fixed``.
        max_disp: largest offset along each axis, an integer ``>= 0``.

    Returns:
        ``(B, (2 * max_disp + 1) ** d, *S)`` in the promoted dtype of the inputs.
    """
    d = check_image(fixed, "fixed")
    check_image(moving, "moving")
    if moving.shape != fixed.shape:
        raise MaxcaInputError(
            f"moving must have the shape of fixed {shape_str(fixed.shape)}, "
            f"got {shape_str(moving.shape)}"
        )
    check_floating(fixed, "fixed")
    check_floating(moving, "moving")
    if moving.device != fixed.device:
        raise MaxcaInputError(
            f"moving must be on the device of fixed ({fixed.device}), got {moving.device}"
        )
    m = check_int(max_disp, "max_disp", 0)
    spatial = fixed.shape[2:]
    padded = F.pad(moving, [m] * (2 * d)) if m > 0 else moving  # (B, C, *(S + 2m))
    costs = []
    for offset in correlation_offsets(d, m):
        window = padded[
            (slice(None), slice(None))
            + tuple(slice(m + o, m + o + n) for o, n in zip(offset, spatial))
        ]  # (B, C, *S) view of moving shifted by -offset
        costs.append((fixed * window).mean(dim=1))  # (B, *S)
    return torch.stack(costs, dim=1)  # (B, (2m+1)**d, *S)
