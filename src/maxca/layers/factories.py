"""Rank-generic layer factories: conv/norm/pool classes picked by ``spatial_dims`` (2 or 3)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from maxca.errors import MaxcaInputError


def check_spatial_dims(spatial_dims: int) -> int:
    """Return ``spatial_dims`` if it is 2 or 3, else raise a clear error."""
    if spatial_dims not in (2, 3):
        raise MaxcaInputError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


#: oneDNN (PyTorch's CPU convolutions) falls back to its naive reference kernel for the
#: weight gradient when the input or the output of a convolution exceeds 2**31 bytes (measured:
#: a 91-channel 160x192x224 float32 input, or 96 output channels at that size, take the
#: ``ref:any`` backward-weights kernel, minutes to hours instead of seconds). Convolutions made
#: here split such a call by channels (see :class:`_ChunkedConv`).
ONEDNN_MAX_BYTES = 2**31 - 1


class _ChunkedConv:
    """Mixin for ``nn.Conv2d``/``nn.Conv3d``: the same function and parameters, but when autograd
    is on and the input or the output would exceed :data:`ONEDNN_MAX_BYTES` on the CPU, the call
    is split into convolutions over channel chunks (input channels summed, output channels
    concatenated), each below the limit, so the weight gradient runs oneDNN's optimised kernel.
    The same numbers up to summation order; below the limit (every size but full-resolution
    3-D training of wide networks) nothing changes."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        plain = super()._conv_forward  # type: ignore[misc]
        if (
            input.device.type != "cpu"
            or not torch.is_grad_enabled()
            or self.groups != 1  # type: ignore[attr-defined]
            or self.padding_mode != "zeros"  # type: ignore[attr-defined]
        ):
            return plain(input, weight, bias)
        item = input.element_size()
        per_in = input.numel() // input.shape[1] * item  # bytes of one input channel
        per_out = per_in * _out_fraction(self, input)  # bytes of one output channel (estimate)
        c_out, c_in = weight.shape[0], weight.shape[1]
        if per_in * c_in <= ONEDNN_MAX_BYTES and per_out * c_out <= ONEDNN_MAX_BYTES:
            return plain(input, weight, bias)
        in_step = max(1, int(ONEDNN_MAX_BYTES // per_in))
        out_step = max(1, int(ONEDNN_MAX_BYTES // max(per_out, 1)))
        outs = []
        for o in range(0, c_out, out_step):
            w_o = weight[o : o + out_step]
            y = None
            for i in range(0, c_in, in_step):
                part = plain(input[:, i : i + in_step], w_o[:, i : i + in_step], None)
                y = part if y is None else y.add_(part)  # conv keeps no output for backward
            if bias is not None:
                shape = (1, -1) + (1,) * (input.dim() - 2)
                y = y.add_(bias[o : o + out_step].view(shape))
            outs.append(y)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def _out_fraction(module: Any, input: Tensor) -> float:
    """Output voxels per input voxel of a convolution (1 for same-padded stride 1)."""
    stride = module.stride if isinstance(module.stride, tuple) else (module.stride,)
    return 1.0 / float(math.prod(stride))


class ChunkedConv2d(_ChunkedConv, nn.Conv2d):
    """``nn.Conv2d`` that splits calls too large for oneDNN's fast weight gradient."""


class ChunkedConv3d(_ChunkedConv, nn.Conv3d):
    """``nn.Conv3d`` that splits calls too large for oneDNN's fast weight gradient."""


def conv_cls(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d`` (as :class:`ChunkedConv2d`/:class:`ChunkedConv3d`: the same
    parameters and results, with oneDNN's 2 GiB limit handled)."""
    return (ChunkedConv2d, ChunkedConv3d)[check_spatial_dims(spatial_dims) - 2]


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
