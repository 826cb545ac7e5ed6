"""compose: warp(warp(img, a), b) == warp(img, compose(a, b))."""

from __future__ import annotations

import pytest
import torch

from maxca.errors import MaxcaInputError
from maxca.spatial import compose, warp

SHAPES = {2: (9, 11), 3: (6, 7, 8)}  # tiny, non-cubic: axis mix-ups fail

DIMS = [2, 3]


def _constant(shift, shape, batch=1):
    d = len(shape)
    return torch.tensor(shift, dtype=torch.float64).view(1, d, *(1,) * d).expand(batch, d, *shape)


def _interior(x, margin):
    d = x.dim() - 2
    return x[(slice(None), slice(None)) + (slice(margin, -margin),) * d]


@pytest.mark.parametrize("d", DIMS)
def test_integer_second_flow_is_exact(d, smooth_field):
    # b an integer translation: both sides sample the image at p + b + a(p + b) exactly
    shape = SHAPES[d]
    image = smooth_field(shape, channels=2, amp=1.0, seed=1)
    a = smooth_field(shape, amp=1.2, seed=2)
    b = _constant((1, -1, 1)[:d], shape)
    sequential = warp(warp(image, a), b)
    composed = warp(image, compose(a, b))
    torch.testing.assert_close(_interior(composed, 2), _interior(sequential, 2), atol=1e-12, rtol=0)


@pytest.mark.parametrize("d", DIMS)
def test_integer_first_flow_is_exact(d, smooth_field):
    shape = SHAPES[d]
    image = torch.rand(1, 1, *shape, dtype=torch.float64)
    a = _constant((-1, 2, 1)[:d], shape)
    b = smooth_field(shape, amp=1.0, seed=3)
    sequential = warp(warp(image, a), b)
    composed = warp(image, compose(a, b))
    torch.testing.assert_close(_interior(composed, 3), _interior(sequential, 3), atol=1e-12, rtol=0)


@pytest.mark.parametrize("d", DIMS)
def test_smooth_fields_match_sequential_warping(d, wave_field):
    # both sides differ only by linear-interpolation error (about 0.02 for these fields); the
    # margin keeps the points p + b(p) + a(...) of the compared voxels inside the image
    shape = (32, 30) if d == 2 else (16, 15, 17)
    image = wave_field(shape, channels=1, amp=1.0, wavelength=24.0, seed=4).expand(2, 1, *shape)
    a = wave_field(shape, batch=2, amp=2.0, wavelength=16.0, seed=5)
    b = wave_field(shape, batch=2, amp=2.0, wavelength=16.0, seed=6)
    sequential = _interior(warp(warp(image, a), b), 5)
    diff = (_interior(warp(image, compose(a, b)), 5) - sequential).abs().max()
    assert diff < 0.03
    # the test can tell: adding the flows, or composing in the other order, is clearly off
    assert (_interior(warp(image, a + b), 5) - sequential).abs().max() > 0.1
    assert (_interior(warp(image, compose(b, a)), 5) - sequential).abs().max() > 0.1


@pytest.mark.parametrize("d", DIMS)
def test_zero_is_neutral_and_translations_add(d, smooth_field):
    shape = SHAPES[d]
    a = smooth_field(shape, amp=2.0, seed=7)
    zero = torch.zeros_like(a)
    torch.testing.assert_close(compose(a, zero), a, atol=1e-12, rtol=0)
    torch.testing.assert_close(compose(zero, a), a, atol=1e-12, rtol=0)
    s, t = _constant((0.3, -1.2, 2.0)[:d], shape), _constant((-0.7, 0.4, 0.5)[:d], shape)
    torch.testing.assert_close(compose(s, t), s + t, atol=1e-12, rtol=0)  # border padding


def test_gradients_reach_both(smooth_field):
    a = smooth_field((6, 7), amp=1.0, seed=8).requires_grad_(True)
    b = smooth_field((6, 7), amp=1.0, seed=9).requires_grad_(True)
    (compose(a, b) ** 2).sum().backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_shape_mismatch():
    with pytest.raises(MaxcaInputError, match=r"a must have shape \(1, 2, 4, 5\) to match b"):
        compose(torch.zeros(1, 2, 4, 6), torch.zeros(1, 2, 4, 5))
    with pytest.raises(MaxcaInputError, match=r"b must have 3 channels"):
        compose(torch.zeros(1, 3, 4, 5, 6), torch.zeros(1, 1, 4, 5, 6))
