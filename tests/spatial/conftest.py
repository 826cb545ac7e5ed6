"""Shared fixtures for the spatial tests: tiny seeded inputs only."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
import torch.nn.functional as F


@pytest.fixture
def smooth_field() -> Callable[..., torch.Tensor]:
    """Factory: a smooth random field (B, C, *shape) with values in about [-amp, amp]."""

    def make(
        shape: Sequence[int],
        channels: int | None = None,
        batch: int = 1,
        amp: float = 1.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor:
        d = len(shape)
        c = d if channels is None else channels
        gen = torch.Generator().manual_seed(seed)
        coarse = torch.rand((batch, c) + (3,) * d, generator=gen, dtype=dtype) * 2 - 1
        mode = "bilinear" if d == 2 else "trilinear"
        return amp * F.interpolate(coarse, size=tuple(shape), mode=mode, align_corners=True)

    return make


@pytest.fixture
def wave_field() -> Callable[..., torch.Tensor]:
    """Factory: an infinitely smooth field (B, C, *shape): per channel a sum of two plane waves
    with random directions and phases, wavelength >= ``wavelength`` voxels, values in [-amp, amp].
    """

    def make(
        shape: Sequence[int],
        channels: int | None = None,
        batch: int = 1,
        amp: float = 1.0,
        wavelength: float = 16.0,
        seed: int = 0,
    ) -> torch.Tensor:
        d = len(shape)
        c = d if channels is None else channels
        gen = torch.Generator().manual_seed(seed)
        p = torch.stack(
            torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
        )  # (d, *shape)
        out = torch.zeros(batch, c, *shape, dtype=torch.float64)
        for b in range(batch):
            for ch in range(c):
                for _ in range(2):
                    w = torch.rand(d, generator=gen, dtype=torch.float64) * 2 - 1
                    w = w / w.norm() * (2 * torch.pi / wavelength)
                    phase = torch.rand((), generator=gen, dtype=torch.float64) * 2 * torch.pi
                    out[b, ch] += 0.5 * amp * torch.sin(torch.einsum("k,k...->...", w, p) + phase)
        return out

    return make
