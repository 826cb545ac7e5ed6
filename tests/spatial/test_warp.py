"""warp / Warp: identity, shifts, scipy and SimpleITK references, labels, gradients, errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch
from scipy import ndimage

from maxca.errors import MaxcaInputError
from maxca.spatial import Warp, warp

SHAPES = {2: (9, 11), 3: (6, 7, 8)}  # tiny, non-cubic: axis mix-ups fail

DIMS = [2, 3]
SCIPY_MODE = {"zeros": "grid-constant", "border": "nearest"}


def _shifted(img: np.ndarray, shift: tuple[int, ...], padding_mode: str) -> np.ndarray:
    """Reference: out[..., p] = img[..., p + shift], zero (or the clamped voxel) outside."""
    spatial = img.shape[2:]
    idx = np.indices(spatial) + np.reshape(shift, (-1,) + (1,) * len(spatial))
    inside = np.all([(idx[k] >= 0) & (idx[k] < n) for k, n in enumerate(spatial)], axis=0)
    clipped = tuple(np.clip(idx[k], 0, n - 1) for k, n in enumerate(spatial))
    out = img[(slice(None), slice(None)) + clipped]
    return out if padding_mode == "border" else out * inside


def _scipy_warp(img: np.ndarray, flow: np.ndarray, order: int, padding_mode: str) -> np.ndarray:
    """Reference: map_coordinates at p + flow(p) for every batch element and channel."""
    spatial = img.shape[2:]
    out = np.empty_like(img)
    for b in range(img.shape[0]):
        coords = np.indices(spatial) + flow[b]
        for c in range(img.shape[1]):
            out[b, c] = ndimage.map_coordinates(
                img[b, c], coords, order=order, mode=SCIPY_MODE[padding_mode], cval=0.0
            )
    return out


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_zero_flow_is_identity(d, mode, padding_mode):
    image = torch.rand(2, 3, *SHAPES[d])
    out = warp(image, torch.zeros(2, d, *SHAPES[d]), mode=mode, padding_mode=padding_mode)
    assert out.shape == image.shape and out.dtype == image.dtype
    if mode == "nearest":
        assert torch.equal(out, image)
    else:
        torch.testing.assert_close(out, image, rtol=0, atol=1e-6)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_integer_translation_is_a_shift(d, mode, padding_mode):
    shift = (1, -2) if d == 2 else (1, -1, 2)
    image = torch.rand(2, 2, *SHAPES[d], dtype=torch.float64)
    flow = torch.tensor(shift, dtype=torch.float64).view(1, d, *(1,) * d)
    flow = flow.expand(2, d, *SHAPES[d]).contiguous()
    out = warp(image, flow, mode=mode, padding_mode=padding_mode)
    expected = _shifted(image.numpy(), shift, padding_mode)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-12)
    if padding_mode == "zeros":  # zeros entered on the side the content left
        assert (out[:, :, -1] == 0).all()  # shift +1 along axis 0: last slice from outside


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_linear_matches_scipy_map_coordinates(d, padding_mode, smooth_field):
    shape = SHAPES[d]
    image = torch.rand(
        2, 2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    flow = smooth_field(shape, batch=2, amp=2.5, seed=2)  # reaches outside the image
    out = warp(image, flow, padding_mode=padding_mode)
    expected = _scipy_warp(image.numpy(), flow.numpy(), 1, padding_mode)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("d", DIMS)
def test_nearest_matches_scipy_order0(d, smooth_field):
    shape = SHAPES[d]
    image = torch.rand(1, 1, *shape, dtype=torch.float64)
    flow = smooth_field(shape, amp=2.0, seed=3)
    out = warp(image, flow, mode="nearest")
    expected = _scipy_warp(image.numpy(), flow.numpy(), 0, "zeros")
    np.testing.assert_array_equal(out.numpy(), expected)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_nearest_keeps_label_values(d, padding_mode, smooth_field):
    shape = SHAPES[d]
    gen = torch.Generator().manual_seed(4)
    labels = torch.tensor([3.0, 7.0, 11.0, 42.0])[
        torch.randint(0, 4, (2, 1, *shape), generator=gen)
    ]
    flow = smooth_field(shape, batch=2, amp=3.0, seed=5, dtype=torch.float32)
    out = warp(labels, flow, mode="nearest", padding_mode=padding_mode)
    allowed = {3.0, 7.0, 11.0, 42.0} | ({0.0} if padding_mode == "zeros" else set())
    assert set(out.unique().tolist()) <= allowed
    assert len(set(out.unique().tolist()) - {0.0}) > 1  # not trivially constant


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_nearest_integer_labels_round_trip_dtype(dtype, smooth_field):
    shape = SHAPES[3]
    gen = torch.Generator().manual_seed(6)
    labels = torch.randint(0, 2 if dtype == torch.bool else 200, (1, 1, *shape), generator=gen)
    labels = labels.to(dtype)
    flow = smooth_field(shape, amp=2.0, seed=7, dtype=torch.float32)
    out = warp(labels, flow, mode="nearest")
    assert out.dtype == dtype
    reference = warp(labels.double(), flow.double(), mode="nearest")
    assert torch.equal(out, reference.to(dtype))


def test_nearest_large_int64_labels_exact():
    labels = torch.full((1, 1, 4, 5), 2**40 + 3, dtype=torch.int64)
    labels[0, 0, 1, 2] = 2**45 + 1
    out = warp(labels, torch.zeros(1, 2, 4, 5), mode="nearest")
    assert torch.equal(out, labels)


def test_linear_on_integer_image_returns_float():
    image = torch.arange(20).view(1, 1, 4, 5)
    flow = torch.zeros(1, 2, 4, 5)
    flow[:, 1] = 0.5
    out = warp(image, flow, padding_mode="border")
    assert out.dtype == torch.float32
    assert out[0, 0, 0, 0] == 0.5 and out[0, 0, 0, 4] == 4.0


def test_dtype_promotion():
    out = warp(torch.rand(1, 1, 4, 5, dtype=torch.float64), torch.zeros(1, 2, 4, 5))
    assert out.dtype == torch.float64
    out = warp(torch.rand(1, 1, 4, 5), torch.zeros(1, 2, 4, 5))
    assert out.dtype == torch.float32


@pytest.mark.parametrize("u0", [0.25, -0.6])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_size_one_axis(u0, padding_mode, smooth_field):
    # a 3-D volume with a single slice behaves like the 2-D image with zeros/border above/below
    image2d = torch.rand(1, 1, 5, 6, dtype=torch.float64)
    flow2d = smooth_field((5, 6), amp=1.0, seed=8)
    flow3d = torch.cat([torch.full((1, 1, 5, 6), u0, dtype=torch.float64), flow2d], 1)
    out = warp(image2d[:, :, None], flow3d[:, :, None], padding_mode=padding_mode)
    weight = 1.0 - abs(u0) if padding_mode == "zeros" else 1.0
    expected = weight * warp(image2d, flow2d, padding_mode=padding_mode)
    torch.testing.assert_close(out[:, :, 0], expected, rtol=0, atol=1e-12)
    nearest = warp(image2d[:, :, None], flow3d[:, :, None], "nearest", padding_mode)[:, :, 0]
    nearest2d = warp(image2d, flow2d, "nearest", padding_mode)
    inside = abs(u0) < 0.5 or padding_mode == "border"
    torch.testing.assert_close(nearest, nearest2d if inside else torch.zeros_like(nearest2d))


@pytest.mark.parametrize("d", DIMS)
def test_gradients_reach_image_and_flow(d, smooth_field):
    shape = SHAPES[d]
    image = torch.rand(2, 2, *shape, dtype=torch.float64, requires_grad=True)
    flow = smooth_field(shape, batch=2, amp=1.5, seed=9).requires_grad_(True)
    weights = torch.rand(2, 2, *shape, dtype=torch.float64)
    (warp(image, flow) * weights).sum().backward()
    for t in (image, flow):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    assert (flow.grad.abs().sum(dim=(0, *range(2, 2 + d))) > 0).all()  # every channel


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 3)])
def test_gradcheck(padding_mode, shape):
    gen = torch.Generator().manual_seed(10)
    image = torch.rand(1, 1, *shape, dtype=torch.float64, generator=gen, requires_grad=True)
    flow = (torch.rand(1, len(shape), *shape, dtype=torch.float64, generator=gen) * 2 - 1) * 0.7
    flow.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda i, f: warp(i, f, padding_mode=padding_mode), (image, flow)
    )


def test_against_simpleitk_displacement_field_transform(smooth_field):
    shape = (6, 7, 8)
    gen = torch.Generator().manual_seed(11)
    image = torch.rand(1, 1, *shape, dtype=torch.float64, generator=gen)
    flow = smooth_field(shape, amp=1.5, seed=12)
    ours = warp(image, flow)[0, 0].numpy()

    # sitk arrays are (z, y, x) = our axes (0, 1, 2); ITK vectors are (x, y, z) = ours reversed
    moving = sitk.GetImageFromArray(image[0, 0].numpy())
    field = sitk.GetImageFromArray(flow[0].numpy()[::-1].transpose(1, 2, 3, 0).copy(), True)
    transform = sitk.DisplacementFieldTransform(field)
    itk = sitk.GetArrayFromImage(sitk.Resample(moving, moving, transform, sitk.sitkLinear, 0.0))

    coords = np.indices(shape) + flow[0].numpy()
    inside = np.all([(coords[k] >= 0) & (coords[k] <= n - 1) for k, n in enumerate(shape)], 0)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(ours[inside], itk[inside], rtol=0, atol=1e-9)


def test_module_matches_function(smooth_field):
    image = torch.rand(1, 2, *SHAPES[3], dtype=torch.float64)
    flow = smooth_field(SHAPES[3], amp=2.0, seed=13)
    module = Warp(mode="nearest", padding_mode="border")
    assert torch.equal(module(image, flow), warp(image, flow, "nearest", "border"))
    assert "nearest" in repr(module)


# ---- bad inputs -------------------------------------------------------------------------------


def test_bad_image_rank():
    with pytest.raises(MaxcaInputError, match=r"image must have shape \(B, C, \*S\).*got 3-D"):
        warp(torch.rand(1, 4, 5), torch.zeros(1, 1, 4, 5))


def test_flow_spatial_mismatch_message():
    with pytest.raises(
        MaxcaInputError,
        match=r"flow must have shape \(1, 3, 8, 10, 12\) to match the image of shape "
        r"\(1, 2, 8, 10, 12\), got \(1, 3, 8, 10, 11\)",
    ):
        warp(torch.rand(1, 2, 8, 10, 12), torch.zeros(1, 3, 8, 10, 11))


def test_flow_channel_count():
    with pytest.raises(
        MaxcaInputError, match=r"flow must have shape \(1, 3, 4, 5, 6\).*got \(1, 2"
    ):
        warp(torch.rand(1, 1, 4, 5, 6), torch.zeros(1, 2, 4, 5, 6))


def test_flow_rank_mismatch():
    with pytest.raises(MaxcaInputError, match=r"flow must have shape \(1, 2, 4, 5\).*got \(1, 3,"):
        warp(torch.rand(1, 1, 4, 5), torch.zeros(1, 3, 4, 5, 6))


def test_batch_mismatch():
    with pytest.raises(MaxcaInputError, match=r"flow must have shape \(2, 2, 4, 5\).*got \(1, 2"):
        warp(torch.rand(2, 1, 4, 5), torch.zeros(1, 2, 4, 5))


def test_integer_flow():
    with pytest.raises(MaxcaInputError, match="flow must be a floating-point tensor, got"):
        warp(torch.rand(1, 1, 4, 5), torch.zeros(1, 2, 4, 5, dtype=torch.int64))


def test_non_tensor_input():
    with pytest.raises(MaxcaInputError, match="image must be a torch.Tensor, got ndarray"):
        warp(np.zeros((1, 1, 4, 5)), torch.zeros(1, 2, 4, 5))


@pytest.mark.parametrize("mode", ["bilinear", "cubic", None])
def test_unknown_mode(mode):
    with pytest.raises(MaxcaInputError, match="mode must be one of 'linear', 'nearest', got"):
        warp(torch.rand(1, 1, 4, 5), torch.zeros(1, 2, 4, 5), mode=mode)
    with pytest.raises(MaxcaInputError, match="mode must be one of 'linear', 'nearest', got"):
        Warp(mode=mode)


def test_unknown_padding_mode():
    with pytest.raises(MaxcaInputError, match="padding_mode must be one of 'zeros', 'border'"):
        warp(torch.rand(1, 1, 4, 5), torch.zeros(1, 2, 4, 5), padding_mode="reflection")
