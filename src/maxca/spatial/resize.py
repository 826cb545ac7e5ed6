"""Changing the resolution of flows and images with the cell geometry of docs/conventions.md.

Voxels are cells: along an axis resized from ``n`` to ``m`` voxels, the centre of new voxel ``i``
sits at old coordinate ``(i + 0.5) * n / m - 0.5`` (``align_corners=False`` in
``F.interpolate``, the geometry of average pooling: a coarse voxel covers a block of fine ones).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from maxca._checks import check_choice, check_flow, check_image, check_size

__all__ = ["resize_flow", "resize_image", "RESIZE_MODES"]

RESIZE_MODES = ("linear", "nearest")
_LINEAR = {2: "bilinear", 3: "trilinear"}


def _interpolate(x: torch.Tensor, size: tuple[int, ...], mode: str) -> torch.Tensor:
    """``F.interpolate`` with the cell geometry; ``x`` is floating ``(B, C, *S)``."""
    if mode == "linear":
        return F.interpolate(x, size=size, mode=_LINEAR[x.dim() - 2], align_corners=False)
    # "nearest-exact" picks the old voxel whose cell holds the new voxel's centre; plain
    # "nearest" (floor(i * n / m)) would be shifted by half a voxel.
    return F.interpolate(x, size=size, mode="nearest-exact")


def resize_flow(flow: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample a voxel flow to a new spatial size and rescale it to the new voxel units.

    Args:
        flow: ``(B, d, *S)`` floating displacement in voxels of its grid (channel ``k`` along
            spatial axis ``k``).
        size: new spatial size ``(D0', D1'[, D2'])``, ``d`` positive integers.

    Returns:
        ``(B, d, *size)``: linear (bi/trilinear) resampling with ``align_corners=False`` (cell
        geometry), then channel ``k`` multiplied by ``size[k] / S[k]``. A constant flow ``c``
        resized from ``n`` to ``2n`` voxels becomes ``2c``. Downsampling by an integer factor
        ``f`` averages pairs of neighbours only when ``f == 2``; no anti-aliasing is applied.
    """
    d = check_flow(flow, "flow")
    new = check_size(size, d, "size")
    old = tuple(flow.shape[2:])
    out = _interpolate(flow, new, "linear")  # (B, d, *size)
    scale = [m / n for m, n in zip(new, old)]
    if any(s != 1.0 for s in scale):
        out = torch.stack([out[:, k] * scale[k] for k in range(d)], dim=1)
    return out


def resize_image(image: torch.Tensor, size: Sequence[int], mode: str = "linear") -> torch.Tensor:
    """Resample an image or label map to a new spatial size with the cell geometry.

    Args:
        image: ``(B, C, *S)``; floating, or integer/bool (label maps).
        size: new spatial size, one positive integer per spatial axis.
        mode: ``"linear"`` (bi/trilinear, ``align_corners=False``) or ``"nearest"``
            (``"nearest-exact"``: each new voxel takes the old voxel whose cell contains its
            centre; values are copied exactly, so label sets are preserved).

    Returns:
        ``(B, C, *size)``. ``"nearest"`` keeps the input dtype; ``"linear"`` keeps a floating
        dtype and turns an integer/bool input into float32.
    """
    check_choice(mode, "mode", RESIZE_MODES)
    d = check_image(image, "image")
    new = check_size(size, d, "size")
    if image.is_floating_point():
        return _interpolate(image, new, mode)
    if mode == "linear":
        return _interpolate(image.float(), new, mode)
    wide = image.dtype in (torch.int32, torch.int64)
    out = _interpolate(image.to(torch.float64 if wide else torch.float32), new, mode)
    return out.round().to(image.dtype)
