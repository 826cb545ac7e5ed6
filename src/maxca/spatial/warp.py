"""Backward ("pull") warping of images and label maps by a voxel displacement field.

``warp(image, flow)(p) = image(p + flow(p))`` for every voxel ``p`` of the flow's grid, with
channel ``k`` of ``flow`` the displacement along spatial axis ``k`` in voxels (array order; see
docs/conventions.md). One implementation serves 2-D and 3-D.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from maxca._checks import check_choice, check_flow_matches, check_image
from maxca.spatial.grid import identity_grid
from maxca.spatial.sample import PADDING_MODES, sample_grid, work_dtype

__all__ = ["warp", "Warp", "WARP_MODES", "PADDING_MODES"]

WARP_MODES = ("linear", "nearest")


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

    Implementation: :func:`maxca.spatial.sample.sample_grid` at the coordinates ``p + u(p)``
    (voxel index ``p`` is exactly voxel centre ``p``; axes of size 1 behave as any other).
    Differentiable with respect to ``image`` and (for ``mode="linear"``) ``flow``.
    """
    check_choice(mode, "mode", WARP_MODES)
    check_choice(padding_mode, "padding_mode", PADDING_MODES)
    check_image(image, "image")
    check_flow_matches(flow, image, "flow", "the image")

    work = work_dtype(image, flow.dtype, mode)
    grid = identity_grid(image.shape[2:], device=flow.device, dtype=work)  # (d, *S), read-only
    return sample_grid(image, grid + flow.to(work), mode=mode, padding_mode=padding_mode)


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
