"""Registration heads: features to a displacement (or velocity) field."""

from __future__ import annotations

import torch
import torch.nn as nn

from maxca.layers.factories import conv

__all__ = ["RegistrationHead"]


class RegistrationHead(nn.Module):
    """A ``3^d`` conv from ``in_channels`` features to ``d`` channels: ``(B, Cin, *S) ->
    (B, d, *S)``, channel ``k`` the displacement along spatial axis ``k`` in voxels of ``S``.

    Weights are drawn from ``N(0, std**2)`` with ``std = 1e-5`` and the bias is zero, so a
    freshly built network predicts an almost-zero (identity) deformation.
    """

    def __init__(self, spatial_dims: int, in_channels: int, std: float = 1e-5) -> None:
        super().__init__()
        self.conv = conv(spatial_dims, in_channels, spatial_dims, kernel_size=3)
        nn.init.normal_(self.conv.weight, mean=0.0, std=std)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
