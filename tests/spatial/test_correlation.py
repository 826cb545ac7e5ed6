"""correlation: channel order, known answers, brute-force reference, gradients, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from maxca.errors import MaxcaInputError
from maxca.spatial import correlation, correlation_offsets

SHAPES = {2: (9, 11), 3: (6, 7, 8)}  # tiny, non-cubic: axis mix-ups fail

DIMS = [2, 3]


def _brute_force(fixed: np.ndarray, moving: np.ndarray, m: int) -> np.ndarray:
    """Reference: explicit loops over offsets and voxels, zero outside the image."""
    B, C, *spatial = fixed.shape
    offsets = list(itertools.product(range(-m, m + 1), repeat=len(spatial)))
    out = np.zeros((B, len(offsets), *spatial))
    for j, o in enumerate(offsets):
        for p in np.ndindex(*spatial):
            q = tuple(pk + ok for pk, ok in zip(p, o))
            if all(0 <= qk < n for qk, n in zip(q, spatial)):
                out[(slice(None), j) + p] = (fixed[(..., *p)] * moving[(..., *q)]).mean(axis=1)
    return out


@pytest.mark.parametrize(("d", "m", "channels"), [(2, 1, 9), (3, 1, 27), (2, 2, 25), (3, 0, 1)])
def test_channel_count_and_order(d, m, channels):
    out = correlation(torch.rand(2, 4, *SHAPES[d]), torch.rand(2, 4, *SHAPES[d]), max_disp=m)
    assert out.shape == (2, channels, *SHAPES[d])
    offsets = correlation_offsets(d, m)
    assert offsets == list(itertools.product(range(-m, m + 1), repeat=d))
    assert offsets[channels // 2] == (0,) * d


@pytest.mark.parametrize(("d", "axis"), [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)])
def test_shift_by_one_voxel_known_answer(d, axis):
    fixed = torch.rand(2, 5, *SHAPES[d], dtype=torch.float64)
    moving = torch.roll(fixed, shifts=1, dims=2 + axis)  # moving(p) = fixed(p - e_axis)
    out = correlation(fixed, moving, max_disp=1)
    offset = tuple(1 if k == axis else 0 for k in range(d))
    channel = out[:, correlation_offsets(d, 1).index(offset)]
    expected = (fixed**2).mean(dim=1)
    last = [slice(None)] * (d + 1)
    last[1 + axis] = -1
    expected[tuple(last)] = 0.0  # p + e_axis leaves the image: zero padding
    torch.testing.assert_close(channel, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("d", "m"), [(2, 2), (3, 1)])
def test_matches_brute_force(d, m):
    gen = torch.Generator().manual_seed(0)
    shape = (5, 6) if d == 2 else (3, 4, 5)
    fixed = torch.randn(2, 3, *shape, dtype=torch.float64, generator=gen)
    moving = torch.randn(2, 3, *shape, dtype=torch.float64, generator=gen)
    out = correlation(fixed, moving, max_disp=m)
    np.testing.assert_allclose(
        out.numpy(), _brute_force(fixed.numpy(), moving.numpy(), m), atol=1e-12
    )


def test_zero_offset_channel_is_channel_mean_product():
    fixed, moving = torch.rand(1, 6, 4, 5, 6), torch.rand(1, 6, 4, 5, 6)
    out = correlation(fixed, moving, max_disp=1)
    torch.testing.assert_close(out[:, 13], (fixed * moving).mean(dim=1))


def test_gradients_reach_both():
    fixed = torch.rand(1, 3, 4, 5, requires_grad=True)
    moving = torch.rand(1, 3, 4, 5, requires_grad=True)
    correlation(fixed, moving, max_disp=2).square().sum().backward()
    assert fixed.grad.abs().sum() > 0 and moving.grad.abs().sum() > 0


def test_shape_mismatch():
    with pytest.raises(
        MaxcaInputError,
        match=r"moving must have the shape of fixed \(1, 3, 4, 5\), got \(1, 3, 4, 6\)",
    ):
        correlation(torch.rand(1, 3, 4, 5), torch.rand(1, 3, 4, 6))


def test_bad_rank_and_max_disp():
    with pytest.raises(MaxcaInputError, match=r"fixed must have shape \(B, C, \*S\)"):
        correlation(torch.rand(3, 4, 5), torch.rand(3, 4, 5))
    with pytest.raises(MaxcaInputError, match="max_disp must be an integer >= 0, got -1"):
        correlation(torch.rand(1, 3, 4, 5), torch.rand(1, 3, 4, 5), max_disp=-1)
    with pytest.raises(MaxcaInputError, match="fixed must be a floating-point tensor"):
        correlation(torch.ones(1, 3, 4, 5, dtype=torch.int64), torch.rand(1, 3, 4, 5))
