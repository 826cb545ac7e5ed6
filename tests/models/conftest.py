"""Shared helpers for the model tests: tiny widths and tiny odd-sized inputs only."""

from __future__ import annotations

from typing import Any

import torch

from maxca.models import create_model

#: spatial sizes of the test inputs (not multiples of any network's size multiple)
SHAPES = {2: (19, 26), 3: (11, 18, 21)}

#: per registered model: config overrides giving a tiny network (fast on 2 CPU cores)
TINY: dict[str, dict[str, Any]] = {
    "pyramid": {"enc_channels": 4, "dec_channels": 8, "heads": 2, "region": 4},
    "pyramid_small": {"heads": 2, "region": 4},
    "corrmaxca": {"enc_channels": 4, "dec_channels": 8, "heads": 2, "region": 4},
    "unet": {
        "enc_channels": (4, 8, 8, 8),
        "dec_channels": (8, 8, 8, 8, 8),
        "final_channels": (4,),
        "heads": 2,
        "region": 4,
    },
    "hybrid": {
        "stem_channels": (4, 8),
        "embed_channels": 8,
        "depths": (1, 1, 1),
        "dec_channels": (8, 8, 8, 4),
        "heads": 2,
        "region": 4,
    },
}


def tiny_model(name: str, spatial_dims: int, **overrides: Any) -> torch.nn.Module:
    """``create_model(name)`` with the tiny widths of :data:`TINY` and ``overrides``."""
    torch.manual_seed(0)
    return create_model(name, spatial_dims=spatial_dims, **{**TINY[name], **overrides})


def pair(
    spatial_dims: int, batch: int = 1, channels: int = 1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``(fixed, moving)`` pair ``(B, C, *SHAPES[d])`` in [0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, channels) + SHAPES[spatial_dims]
    return torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)
