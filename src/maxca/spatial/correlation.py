"""Local correlation cost volume between two feature maps."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from maxca._checks import check_floating, check_image, check_int, shape_str
from maxca.errors import MaxcaInputError

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
    check_image(fixed, "fixed")
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
    return _Correlation.apply(fixed.contiguous(), moving.contiguous(), m)


def _shift_slices(spatial: tuple[int, ...], m: int) -> list[tuple[slice, ...]]:
    """Index of the ``(B, C, *S)`` window of a padded tensor for each offset, channel order."""
    return [
        (slice(None), slice(None)) + tuple(slice(m + o, m + o + n) for o, n in zip(off, spatial))
        for off in correlation_offsets(len(spatial), m)
    ]


class _Correlation(torch.autograd.Function):
    """Correlation with a hand-written backward.

    Autograd's own backward of the per-offset slices allocates and zero-fills one padded
    gradient per offset (27 in 3-D) and sums them; here both gradients are accumulated in place
    into a single buffer each, which is several times faster at full resolution.
    """

    @staticmethod
    def forward(ctx, fixed: torch.Tensor, moving: torch.Tensor, m: int) -> torch.Tensor:  # type: ignore[override]
        d = fixed.dim() - 2
        spatial = tuple(fixed.shape[2:])
        padded = F.pad(moving, [m] * (2 * d)) if m > 0 else moving  # (B, C, *(S + 2m))
        dtype = torch.promote_types(fixed.dtype, moving.dtype)
        slices = _shift_slices(spatial, m)
        out = torch.empty((fixed.shape[0], len(slices), *spatial), dtype=dtype, device=fixed.device)
        for j, sl in enumerate(slices):  # fused multiply-sum over channels, no temporary
            torch.linalg.vecdot(fixed.to(dtype), padded[sl].to(dtype), dim=1, out=out[:, j])
        out.mul_(1.0 / fixed.shape[1])  # sum -> mean over channels
        ctx.save_for_backward(fixed, padded)
        ctx.m = m
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        fixed, padded = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        m = ctx.m
        spatial = tuple(fixed.shape[2:])
        scale = 1.0 / fixed.shape[1]
        want_fixed, want_moving = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_fixed = torch.zeros_like(fixed, dtype=grad_out.dtype) if want_fixed else None
        grad_padded = torch.zeros_like(padded, dtype=grad_out.dtype) if want_moving else None
        for j, sl in enumerate(_shift_slices(spatial, m)):
            g = grad_out[:, j].unsqueeze(1)  # (B, 1, *S)
            if grad_fixed is not None:
                grad_fixed.addcmul_(padded[sl], g, value=scale)
            if grad_padded is not None:
                grad_padded[sl].addcmul_(fixed, g, value=scale)
        grad_moving = None
        if grad_padded is not None:
            grad_moving = grad_padded[
                (slice(None), slice(None)) + tuple(slice(m, m + n) for n in spatial)
            ]
        return grad_fixed, grad_moving, None
