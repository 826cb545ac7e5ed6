"""resize_flow / resize_image: voxel-unit rescaling and the cell geometry of conventions.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maxca.errors import MaxcaInputError
from maxca.spatial import resize_flow, resize_image, warp


@pytest.mark.parametrize(
    ("old", "new"),
    [((4, 6), (8, 12)), ((4, 6), (8, 9)), ((4, 6, 5), (8, 12, 10)), ((4, 6, 8), (2, 9, 8))],
)
def test_constant_flow_is_rescaled_per_axis(old, new):
    d = len(old)
    c = torch.tensor([1.5, -0.75, 0.5][:d], dtype=torch.float64)
    flow = c.view(1, d, *(1,) * d).expand(2, d, *old)
    out = resize_flow(flow, new)
    assert out.shape == (2, d, *new)
    for k in range(d):
        torch.testing.assert_close(out[:, k], torch.full_like(out[:, k], c[k] * new[k] / old[k]))


def test_doubling_size_doubles_constant_flow():
    flow = torch.full((1, 3, 3, 4, 5), 0.8)
    torch.testing.assert_close(resize_flow(flow, (6, 8, 10)), torch.full((1, 3, 6, 8, 10), 1.6))


def test_same_size_is_identity():
    flow = torch.rand(1, 2, 5, 7)
    assert torch.equal(resize_flow(flow, (5, 7)), flow)


@pytest.mark.parametrize(("n", "m"), [(4, 8), (6, 4), (5, 7)])
def test_linear_ramp_follows_cell_geometry(n, m):
    # new voxel i is centred at old coordinate (i + 0.5) * n / m - 0.5 (clamped at the edges)
    ramp = torch.arange(n, dtype=torch.float64).view(1, 1, n, 1).expand(1, 1, n, 3)
    out = resize_image(ramp, (m, 2))[0, 0, :, 0]
    expected = np.clip((np.arange(m) + 0.5) * n / m - 0.5, 0, n - 1)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("d", [2, 3])
def test_halving_equals_average_pooling(d):
    image = torch.rand(2, 3, *(4, 6, 8)[:d], dtype=torch.float64)
    pooled = (F.avg_pool2d if d == 2 else F.avg_pool3d)(image, 2)
    torch.testing.assert_close(resize_image(image, pooled.shape[2:]), pooled)


def test_resized_flow_moves_the_same_physical_points():
    # a translation by t coarse voxels is a translation by 2t fine voxels: warping an upsampled
    # image by the resized flow equals upsampling the warped image (interior, linear ramps)
    coarse = torch.arange(6, dtype=torch.float64).view(1, 1, 6, 1).expand(1, 1, 6, 5).clone()
    flow = torch.zeros(1, 2, 6, 5, dtype=torch.float64)
    flow[:, 0] = 1.0
    a = resize_image(warp(coarse, flow, padding_mode="border"), (12, 10))
    b = warp(resize_image(coarse, (12, 10)), resize_flow(flow, (12, 10)), padding_mode="border")
    torch.testing.assert_close(a[..., 2:-4, :], b[..., 2:-4, :])


def test_nearest_picks_the_cell_containing_the_centre():
    row = torch.tensor([10.0, 20.0, 30.0]).view(1, 1, 3, 1)
    assert resize_image(row, (2, 1), mode="nearest").flatten().tolist() == [10.0, 30.0]
    pair = torch.tensor([1.0, 2.0]).view(1, 1, 2, 1)
    assert resize_image(pair, (4, 1), mode="nearest").flatten().tolist() == [1.0, 1.0, 2.0, 2.0]


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.float32])
def test_nearest_keeps_labels_and_dtype(dtype):
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (1, 1, 5, 6, 7), generator=gen).to(dtype) * 3
    out = resize_image(labels, (9, 4, 11), mode="nearest")
    assert out.dtype == dtype and out.shape == (1, 1, 9, 4, 11)
    assert set(out.unique().tolist()) <= set(labels.unique().tolist())


def test_linear_on_integer_image_returns_float():
    out = resize_image(torch.arange(4).view(1, 1, 2, 2), (4, 4))
    assert out.dtype == torch.float32


def test_gradient_flows():
    flow = torch.rand(1, 2, 4, 5, requires_grad=True)
    resize_flow(flow, (8, 3)).sum().backward()
    assert flow.grad is not None and flow.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [(8,), (8, 8, 8), (8, 0), (8, -2), (8, 2.5), 8, "ab"])
def test_bad_size(size):
    with pytest.raises(MaxcaInputError, match="size must be a sequence of 2 positive integers"):
        resize_flow(torch.zeros(1, 2, 4, 4), size)


def test_bad_flow_channels():
    with pytest.raises(MaxcaInputError, match=r"flow must have 3 channels .* got shape \(1, 2,"):
        resize_flow(torch.zeros(1, 2, 4, 4, 4), (8, 8, 8))


def test_bad_image_and_mode():
    with pytest.raises(MaxcaInputError, match="image must have shape"):
        resize_image(torch.zeros(4, 4), (8, 8))
    with pytest.raises(MaxcaInputError, match="mode must be one of 'linear', 'nearest'"):
        resize_image(torch.zeros(1, 1, 4, 4), (8, 8), mode="area")
