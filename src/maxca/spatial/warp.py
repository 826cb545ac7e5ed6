"""Backward ("pull") warping of images and label maps by a voxel displacement field.

``warp(image, flow)(p) = image(p + flow(p))`` for every voxel ``p`` of the flow's grid, with
channel ``k`` of ``flow`` the displacement along spatial axis ``k`` in voxels (array order; see
docs/conventions.md). One implementation serves 2-D and 3-D.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from maxca.spatial._checks import (
    check_choice,
    check_flow_matches,
    check_image,
)
from maxca.spatial.grid import identity_grid

__all__ = ["warp", "Warp", "WARP_MODES", "PADDING_MODES"]

WARP_MODES = ("linear", "nearest")
PADDING_MODES = ("zeros", "border")

_GRID_SAMPLE_MODE = {"linear": "bilinear", "nearest": "nearest"}  # "bilinear" is trilinear in 3-D
_PAD_MODE = {"zeros": "constant", "border": "replicate"}


def _working_dtype(image: torch.Tensor, flow: torch.Tensor, mode: str) -> torch.dtype:
    """Floating dtype in which grid_sample runs (image and grid must share it)."""
    if image.is_floating_point():
        return torch.promote_types(image.dtype, flow.dtype)
    if mode == "nearest" and image.dtype in (torch.int32, torch.int64):
        return torch.float64  # exact for every int32 and for int64 labels below 2**53
    return torch.promote_types(flow.dtype, torch.float32)  # bool, uint8, int8, int16: exact


def warp(
    image: torch.Tensor,
    flow: torch.Tensor,
    mode: str = "linear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Warp ``image`` by the voxel displacement ``flow``: ``out(p) = image(p + flow(p))``.

    Args:
        image: ``(B, C, *S)`` with ``S = (D0, D1[, D2])``; floating, or an integer/bool label map.
        flow: ``(B, d, *S)`` floating displacement in voxels, ``d = len(S)``; channel ``k`` moves
            along spatial axis ``k`` (array order). The batch sizes must be equal (no
            broadcasting).
        mode: ``"linear"`` (bi/trilinear) or ``"nearest"`` (for label maps: the output holds only
            values present in ``image`` or the padding value).
        padding_mode: ``"zeros"`` (samples outside the image are linearly blended with zero, as
            if the image were surrounded by zeros) or ``"border"`` (coordinates are clamped to
            the image).

    Returns:
        ``(B, C, *S)``. Floating images: the promoted dtype of ``image`` and ``flow``.
        Integer/bool images: ``mode="nearest"`` returns the image's dtype with the values
        copied exactly; ``mode="linear"`` returns the flow's floating dtype (promoted with
        float32).

    Implementation: ``F.grid_sample`` with ``align_corners=True`` on coordinates normalised as
    ``2 * (p + u) / (size - 1) - 1`` in grid_sample's reversed (x = last axis) channel order, so
    voxel index ``p`` is exactly voxel centre ``p``. Axes of size 1 are padded by one voxel on
    each side (zeros or replicated, per ``padding_mode``) so no division by zero occurs and
    displacements along them still behave as for any other axis. Differentiable with respect to
    ``image`` and (for ``mode="linear"``) ``flow``.
    """
    check_choice(mode, "mode", WARP_MODES)
    check_choice(padding_mode, "padding_mode", PADDING_MODES)
    d = check_image(image, "image")
    check_flow_matches(flow, image, "flow", "the image")

    # integer/bool label maps warped with "nearest" come back in their own dtype
    out_dtype = image.dtype if (mode == "nearest" and not image.is_floating_point()) else None
    work = _working_dtype(image, flow, mode)
    src = image.to(work)
    flow = flow.to(work)

    sizes = list(image.shape[2:])
    offsets = [0] * d
    if 1 in sizes:
        pad: list[int] = []  # F.pad order: last axis first, (before, after) pairs
        for k in reversed(range(d)):
            pad += [1, 1] if sizes[k] == 1 else [0, 0]
        src = F.pad(src, pad, mode=_PAD_MODE[padding_mode])
        offsets = [1 if n == 1 else 0 for n in sizes]
        sizes = [3 if n == 1 else n for n in sizes]

    grid = identity_grid(image.shape[2:], device=flow.device, dtype=work)  # (d, *S), read-only
    # (B, *S, d), last dim in grid_sample order (x = last spatial axis)
    sample = torch.stack(
        [
            (grid[k] + flow[:, k] + offsets[k]) * (2.0 / (sizes[k] - 1)) - 1.0
            for k in reversed(range(d))
        ],
        dim=-1,
    )
    out = F.grid_sample(
        src,
        sample,
        mode=_GRID_SAMPLE_MODE[mode],
        padding_mode=padding_mode,
        align_corners=True,
    )
    if out_dtype is not None:
        out = out.round().to(out_dtype)
    return out


class Warp(nn.Module):
    """``warp`` as a module with ``mode`` and ``padding_mode`` fixed at construction.

    ``forward(image (B, C, *S), flow (B, d, *S)) -> (B, C, *S)``; see :func:`warp`.
    """

    def __init__(self, mode: str = "linear", padding_mode: str = "zeros") -> None:
        super().__init__()
        self.mode = check_choice(mode, "mode", WARP_MODES)
        self.padding_mode = check_choice(padding_mode, "padding_mode", PADDING_MODES)

    def forward(self, image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        return warp(image, flow, mode=self.mode, padding_mode=self.padding_mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, padding_mode={self.padding_mode!r}"
