"""Input checks shared by the losses; failures are one-line :class:`MaxcaInputError`s."""

from __future__ import annotations

import torch

from maxca.errors import MaxcaInputError


def shape_str(shape: torch.Size | tuple[int, ...]) -> str:
    """``(1, 3, 8)`` for a shape."""
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def check_spatial_tensor(x: object, name: str, spatial_dims: int, floating: bool = True) -> None:
    """``x`` must be a ``(B, C, *S)`` tensor with ``spatial_dims`` spatial axes."""
    if not isinstance(x, torch.Tensor):
        raise MaxcaInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != spatial_dims + 2:
        raise MaxcaInputError(
            f"{name} must have shape (B, C, *S) with {spatial_dims} spatial axes "
            f"({spatial_dims + 2}-D), got shape {shape_str(x.shape)}"
        )
    if floating and not x.is_floating_point():
        raise MaxcaInputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_same_shape(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str) -> None:
    """``a`` and ``b`` must have identical shapes."""
    if a.shape != b.shape:
        raise MaxcaInputError(
            f"{a_name} and {b_name} must have the same shape, got {shape_str(a.shape)} "
            f"and {shape_str(b.shape)}"
        )


def check_flow(flow: object, spatial_dims: int, min_size: int) -> torch.Tensor:
    """``flow``: a floating ``(B, d, *S)`` tensor, ``d = spatial_dims``, sizes >= min_size."""
    check_spatial_tensor(flow, "flow", spatial_dims)
    assert isinstance(flow, torch.Tensor)
    if flow.shape[1] != spatial_dims:
        raise MaxcaInputError(
            f"flow must have {spatial_dims} channels (one per spatial axis), "
            f"got shape {shape_str(flow.shape)}"
        )
    if min(flow.shape[2:]) < min_size:
        raise MaxcaInputError(
            f"flow needs at least {min_size} voxels along every spatial axis, "
            f"got shape {shape_str(flow.shape)}"
        )
    return flow


def working_dtype(x: torch.Tensor) -> torch.dtype:
    """Float32 for half-precision inputs (sums of squares overflow), the input dtype otherwise."""
    return torch.promote_types(x.dtype, torch.float32)
