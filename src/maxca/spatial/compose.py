"""Composition of voxel displacement fields (docs/conventions.md)."""

from __future__ import annotations

import torch

from maxca._checks import check_flow, check_flow_matches
from maxca.spatial.warp import warp

__all__ = ["compose"]


def compose(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The single flow equal to warping by ``a`` and then by ``b``.

    ``warp(warp(img, a), b) == warp(img, compose(a, b))`` (up to interpolation), with

        ``compose(a, b)(p) = b(p) + a(p + b(p))``.

    ``a`` is sampled at ``p + b(p)`` by linear interpolation with **border** padding: where
    ``p + b(p)`` leaves the grid, the displacement of the nearest border voxel is used (zero
    padding would pull displacements towards zero near the edges). Differentiable in both.

    Args:
        a: ``(B, d, *S)`` flow applied first (voxels, channel ``k`` along spatial axis ``k``).
        b: ``(B, d, *S)`` flow applied second, same shape as ``a``.

    Returns:
        ``(B, d, *S)``.
    """
    check_flow(b, "b")
    check_flow_matches(a, b, "a", "b")
    return b + warp(a, b, mode="linear", padding_mode="border")
