"""identity_grid: values, axis order, caching, read-only safety net."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maxca.errors import MaxcaInputError
from maxca.spatial import clear_grid_cache, identity_grid, warp


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4)])
def test_values_follow_array_axis_order(shape):
    grid = identity_grid(shape, torch.device("cpu"), torch.float32)
    assert grid.shape == (len(shape), *shape)
    assert grid.dtype == torch.float32 and not grid.requires_grad
    # channel k holds the index along array axis k (np.indices is the reference)
    np.testing.assert_array_equal(grid.numpy(), np.indices(shape))
    assert grid[0][(-1,) + (0,) * (len(shape) - 1)] == shape[0] - 1


def test_cached_same_object_per_key():
    a = identity_grid((5, 6), "cpu", torch.float32)
    b = identity_grid([5, 6], torch.device("cpu"), torch.float32)
    assert a is b
    c = identity_grid((5, 6), "cpu", torch.float64)
    assert c is not a and c.dtype == torch.float64
    assert identity_grid((5, 7), "cpu", torch.float32) is not a


def test_default_dtype_and_device():
    grid = identity_grid((2, 3))
    assert grid.dtype == torch.get_default_dtype() and grid.device.type == "cpu"


def test_modified_grid_is_rebuilt():
    clear_grid_cache()
    a = identity_grid((4, 4), "cpu", torch.float32)
    a += 1.0  # a caller breaking the read-only convention
    b = identity_grid((4, 4), "cpu", torch.float32)
    assert b is not a
    assert b[0, 3, 0] == 3 and b[1, 0, 2] == 2


def test_warp_does_not_modify_cached_grid():
    grid = identity_grid((5, 6), "cpu", torch.float32)
    version = grid._version
    flow = torch.rand(2, 2, 5, 6, requires_grad=True)
    warp(torch.rand(2, 1, 5, 6), flow).sum().backward()
    assert grid._version == version
    assert identity_grid((5, 6), "cpu", torch.float32) is grid


def test_grid_first_built_under_inference_mode_supports_autograd_later():
    clear_grid_cache()
    image = torch.rand(1, 1, 4, 5)
    with torch.inference_mode():
        warp(image, torch.zeros(1, 2, 4, 5))
    flow = torch.zeros(1, 2, 4, 5, requires_grad=True)
    warp(image, flow).sum().backward()
    assert flow.grad is not None


@pytest.mark.parametrize("shape", [(), (3, 0), (2.5, 3), 7])
def test_bad_shape(shape):
    with pytest.raises(MaxcaInputError, match="shape must be a sequence of positive integers"):
        identity_grid(shape)
