"""Rank-generic layer factories: conv/norm/pool classes picked by ``spatial_dims`` (2 or 3)."""

from __future__ import annotations

import torch.nn as nn

from maxca.errors import MaxcaInputError


def check_spatial_dims(spatial_dims: int) -> int:
    """Return ``spatial_dims`` if it is 2 or 3, else raise a clear error."""
    if spatial_dims not in (2, 3):
        raise MaxcaInputError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def conv_cls(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return (nn.Conv2d, nn.Conv3d)[check_spatial_dims(spatial_dims) - 2]


def conv_transpose_cls(spatial_dims: int) -> type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return (nn.ConvTranspose2d, nn.ConvTranspose3d)[check_spatial_dims(spatial_dims) - 2]


def instance_norm_cls(spatial_dims: int) -> type[nn.Module]:
    """``nn.InstanceNorm2d`` or ``nn.InstanceNorm3d``."""
    return (nn.InstanceNorm2d, nn.InstanceNorm3d)[check_spatial_dims(spatial_dims) - 2]


def avg_pool_cls(spatial_dims: int) -> type[nn.Module]:
    """``nn.AvgPool2d`` or ``nn.AvgPool3d``."""
    return (nn.AvgPool2d, nn.AvgPool3d)[check_spatial_dims(spatial_dims) - 2]


def max_pool_cls(spatial_dims: int) -> type[nn.Module]:
    """``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    return (nn.MaxPool2d, nn.MaxPool3d)[check_spatial_dims(spatial_dims) - 2]


def conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    bias: bool = True,
) -> nn.Module:
    """Same-padded convolution of rank ``spatial_dims``: (B, Cin, *S) -> (B, Cout, *S / stride)."""
    return conv_cls(spatial_dims)(
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias
    )
