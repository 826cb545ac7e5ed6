"""register_pair: model grid geometry, resampling without half-voxel shifts, flows back on the
fixed grid in the right units, labels warped with nearest neighbour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maxca.app.registration import pair_metrics
from maxca.data.io import Volume
from maxca.errors import MaxcaInputError
from maxca.inference import model_grid, register_pair, resolve_device
from maxca.models.checkpoint import load_checkpoint

from .conftest import (
    SHAPE,
    Info,
    KnownFlowModel,
    blob_volume,
    blobs,
    centre_of,
    labels_of,
    lia_affine,
    tiny_model,
    world_of,
)


def _constant(c):
    def fn(shape):
        return (
            torch.tensor(c, dtype=torch.float32)
            .reshape(-1, *([1] * len(shape)))
            .expand(len(c), *shape)
        )

    return fn


def _zero(shape):
    return torch.zeros(len(shape), *shape)


def test_model_grid_keeps_orientation_and_centre():
    aff = lia_affine()
    fixed = Volume(np.zeros(SHAPE, np.float32), aff)
    grid = model_grid(fixed, {"shape": [8, 10, 12], "spacing": [3.0, 4.0, 2.5]})
    assert grid.shape == (8, 10, 12)
    np.testing.assert_allclose(grid.spacing, (3.0, 4.0, 2.5))
    # same direction cosines as the fixed image (flipped axes kept)
    np.testing.assert_allclose(
        grid.affine[:3, :3] / grid.spacing, aff[:3, :3] / np.array(fixed.spacing), atol=1e-12
    )
    np.testing.assert_allclose(centre_of(grid.affine, grid.shape), centre_of(aff, SHAPE))
    # only a shape: the fixed extent is spread over it
    g2 = model_grid(fixed, {"shape": [8, 10, 12]})
    np.testing.assert_allclose(g2.spacing, (3.0, 4.0, 2.4))
    # only a spacing: the shape is the extent divided by it
    g3 = model_grid(fixed, {"spacing": 3.0})
    assert g3.shape == (8, 13, 10)
    # nothing: the fixed grid itself
    g4 = model_grid(fixed, {})
    assert g4.shape == SHAPE and np.array_equal(g4.affine, aff)
    with pytest.raises(MaxcaInputError, match="data.shape"):
        model_grid(fixed, {"shape": [8, 10]})


def test_inputs_resampled_onto_model_grid_without_shift():
    """The network sees the images at the world positions of its grid voxels (finer grid, no
    smoothing). Linear interpolation errs by up to ~0.025 at the blob peaks (0.002 on average);
    a half-voxel shift would err by ~0.12 (0.023 on average)."""
    aff = lia_affine()
    c = centre_of(aff, SHAPE)
    fixed = blob_volume(aff, SHAPE, c)
    stub = KnownFlowModel(_zero)
    data = {"shape": [20, 24, 30], "spacing": [1.2, 1.6, 0.96], "normalise": None}
    result = register_pair(stub, Info(data), fixed, fixed)
    seen = stub.inputs[0][0][0, 0].numpy()
    expected = blobs(world_of(result.grid.affine, result.grid.shape), c)
    inside = np.zeros(result.grid.shape, bool)
    inside[1:-1, 1:-1, 1:-1] = True  # the outermost grid voxels reach past the image
    error = np.abs(seen - expected)[inside]
    assert error.max() < 0.04
    assert error.mean() < 0.005


@pytest.mark.parametrize(
    "data",
    [
        {},  # the fixed grid itself
        {"shape": [7, 9, 11], "spacing": [2.3, 3.1, 1.7]},  # coarser, non-integer ratios
        {"shape": [21, 25, 29], "spacing": [1.1, 1.7, 1.0]},  # finer
    ],
)
def test_zero_flow_is_exact_identity(data):
    aff = lia_affine()
    fixed = blob_volume(aff, SHAPE, centre_of(aff, SHAPE))
    lab = Volume(labels_of(fixed.array), aff)
    result = register_pair(KnownFlowModel(_zero), Info(data), fixed, fixed, lab, lab)
    assert result.flow.shape == (3, *SHAPE)
    assert np.abs(result.flow).max() < 1e-6
    np.testing.assert_allclose(result.warped.array, fixed.array, atol=1e-5)
    assert np.array_equal(result.warped_labels.array, lab.array)
    assert result.warped_labels.array.dtype == np.int16
    np.testing.assert_array_equal(result.warped.affine, aff)


def test_constant_grid_flow_becomes_fixed_voxels():
    """A displacement of c model voxels is c * spacing_grid / spacing_fixed fixed voxels."""
    aff = lia_affine(spacing=(1.5, 2.0, 1.2))
    fixed = blob_volume(aff, SHAPE, centre_of(aff, SHAPE))
    data = {"shape": [8, 13, 10], "spacing": [3.0, 3.0, 3.0]}
    c = (0.5, -1.0, 0.25)
    result = register_pair(KnownFlowModel(_constant(c)), Info(data), fixed, fixed)
    expected = np.array(c) * np.array([3.0 / 1.5, 3.0 / 2.0, 3.0 / 1.2])
    np.testing.assert_allclose(
        result.flow.reshape(3, -1), np.repeat(expected[:, None], np.prod(SHAPE), 1), atol=1e-5
    )
    # the physical displacement is R_grid @ c (flipped axes: signs follow the affine)
    phys = result.displacement_mm[:, 0, 0, 0]
    np.testing.assert_allclose(phys, result.grid.affine[:3, :3] @ np.array(c), atol=1e-5)


def test_integer_shift_recovered_exactly():
    """moving = fixed shifted by s voxels; the flow s (given on a 2x coarser grid) warps it back
    exactly, image and labels, with the signs of the pull convention."""
    aff = lia_affine()
    fixed = blob_volume(aff, SHAPE, centre_of(aff, SHAPE))
    flab = labels_of(fixed.array)
    s = (2, -2, 4)  # fixed voxels
    moving = np.zeros_like(fixed.array)
    mlab = np.zeros_like(flab)
    src = tuple(slice(max(0, -k), n - max(0, k)) for k, n in zip(s, SHAPE))
    dst = tuple(slice(max(0, k), n - max(0, -k)) for k, n in zip(s, SHAPE))
    moving[dst] = fixed.array[src]  # moving(p + s) = fixed(p)
    mlab[dst] = flab[src]
    data = {"shape": [8, 10, 12], "spacing": [3.0, 4.0, 2.4]}  # exactly 2x the fixed spacing
    c = tuple(k / 2 for k in s)
    result = register_pair(
        KnownFlowModel(_constant(c)),
        Info(data),
        fixed,
        Volume(moving, aff),
        Volume(mlab, aff),
        Volume(flab, aff),
    )
    np.testing.assert_allclose(result.flow[:, 5, 5, 5], s, atol=1e-5)
    np.testing.assert_allclose(result.warped.array[src], fixed.array[src], atol=1e-5)
    assert np.array_equal(result.warped_labels.array[src], flab[src])
    assert set(np.unique(result.warped_labels.array)) <= {0, 7, 300}


@pytest.mark.parametrize("image_spacing", [(2.0, 2.0, 2.0), (1.0, 1.0, 1.0)])
def test_self_registration_with_trained_model_format(tiny_checkpoint, image_spacing):
    """A real (fresh) network on its own grid and on a 1 mm image with a 2 mm model grid."""
    model, info = load_checkpoint(tiny_checkpoint)
    scale = 2.0 / image_spacing[0]
    shape = tuple(int(n * scale) for n in SHAPE)
    aff = lia_affine(spacing=image_spacing)
    fixed = blob_volume(aff, shape, centre_of(aff, shape))
    lab = Volume(labels_of(fixed.array), aff)
    result = register_pair(model, info, fixed, fixed, lab, lab)
    assert result.grid.shape == SHAPE
    assert np.sqrt((result.flow**2).sum(0)).max() < 0.5
    assert np.array_equal(result.warped_labels.array, lab.array)
    metrics = pair_metrics(result)
    assert metrics["dice_after"] == 1.0 and metrics["dice_before"] == 1.0
    assert metrics["labels"] == [7, 300]


def test_label_map_on_another_grid_is_refused():
    aff = lia_affine()
    fixed = blob_volume(aff, SHAPE, centre_of(aff, SHAPE))
    shifted = aff.copy()
    shifted[:3, 3] += 1.0
    bad = Volume(labels_of(fixed.array), shifted)
    with pytest.raises(MaxcaInputError, match="label map grid differs from its image"):
        register_pair(KnownFlowModel(_zero), Info(), fixed, fixed, moving_labels=bad)
    small = Volume(labels_of(fixed.array)[:-1], aff)
    with pytest.raises(MaxcaInputError, match="fixed label map grid differs"):
        register_pair(KnownFlowModel(_zero), Info(), fixed, fixed, fixed_labels=small)


def test_dimension_mismatch_is_refused():
    aff = lia_affine()
    fixed = blob_volume(aff, SHAPE, centre_of(aff, SHAPE))
    with pytest.raises(MaxcaInputError, match="registers 2-D images"):
        register_pair(KnownFlowModel(_zero, spatial_dims=2), Info(), fixed, fixed)


def test_diffeomorphic_integrates_a_plain_models_output():
    aff = lia_affine()
    fixed = blob_volume(aff, SHAPE, centre_of(aff, SHAPE))

    def linear(shape):  # a smooth, non-constant field: its exponential differs from itself
        x = torch.linspace(-1, 1, shape[0]).reshape(-1, 1, 1).expand(*shape)
        return torch.stack([0.8 * x, 0.8 * x, torch.zeros(shape)])

    plain = register_pair(KnownFlowModel(linear), Info(), fixed, fixed)
    diffeo = register_pair(KnownFlowModel(linear), Info(), fixed, fixed, diffeomorphic=True)
    from maxca.spatial import integrate_velocity

    expected = integrate_velocity(linear(SHAPE)[None], 7)[0].numpy()
    np.testing.assert_allclose(diffeo.flow, expected, atol=1e-5)
    assert np.abs(plain.flow - diffeo.flow).max() > 1e-2


def test_two_dimensional_pair():
    aff = np.array([[0.0, 1.5, 0, 3], [-1.0, 0, 0, 7], [0, 0, 2.0, 0], [0, 0, 0, 1]])
    world = world_of(aff, (18, 14))
    img = blobs(world, centre_of(aff, (18, 14)))
    fixed = Volume(img, aff)
    lab = Volume(labels_of(img), aff)
    data = {"shape": [9, 7], "spacing": [3.0, 2.0]}
    result = register_pair(KnownFlowModel(_constant((1.0, -0.5)), 2), Info(data), fixed, fixed, lab)
    assert result.flow.shape == (2, 18, 14)
    # axis 0 has 1.0 mm voxels (column (0, -1, 0)), axis 1 1.5 mm (column (1.5, 0, 0))
    np.testing.assert_allclose(result.flow[:, 4, 4], [1.0 * 3.0 / 1.0, -0.5 * 2.0 / 1.5], atol=1e-5)
    zero = register_pair(tiny_model(2), Info(data), fixed, fixed, lab)
    assert np.sqrt((zero.flow**2).sum(0)).max() < 0.5
    assert np.array_equal(zero.warped_labels.array, lab.array)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(MaxcaInputError, match="device must be one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(MaxcaInputError, match="CUDA is not available"):
            resolve_device("cuda")
    for bad in ("gpu", "cuda:x", "cuda:-1", "cuda:", "cpu:0", "cuda:１"):
        with pytest.raises(MaxcaInputError, match=r"device must be one of .* or 'cuda:N'"):
            resolve_device(bad)


def test_resolve_device_checks_the_gpu_index(monkeypatch):
    """``cuda:N`` names one GPU: an index the machine does not have is refused in one line."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(MaxcaInputError, match=r"'cuda:2' requested but only 2 GPU\(s\) exist"):
        resolve_device("cuda:2")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(tiny_checkpoint):
    model, info = load_checkpoint(tiny_checkpoint)
    aff = lia_affine(spacing=(1.0, 1.0, 1.0))
    shape = tuple(2 * n for n in SHAPE)
    fixed = blob_volume(aff, shape, centre_of(aff, shape))
    moving = blob_volume(aff, shape, centre_of(aff, shape) + np.array([1.0, -2.0, 0.5]))
    lab = Volume(labels_of(moving.array), aff)
    cpu = register_pair(model, info, fixed, moving, lab, device="cpu")
    gpu = register_pair(model, info, fixed, moving, lab, device="cuda")
    assert gpu.device.startswith("cuda")
    np.testing.assert_allclose(gpu.flow, cpu.flow, atol=1e-3)
    np.testing.assert_allclose(gpu.warped.array, cpu.warped.array, atol=1e-3)
    assert gpu.warped_labels.array.dtype == lab.array.dtype
