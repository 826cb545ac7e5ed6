"""Jacobian determinant, folding percentage and SDlogJ on fields with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maxca.errors import MaxcaInputError
from maxca.metrics import jacobian_determinant_array, njd_percent, sdlogj

SHAPES = {2: (9, 7), 3: (6, 7, 5)}


@pytest.mark.parametrize("d", [2, 3])
def test_zero_field(d):
    flow = np.zeros((d, *SHAPES[d]))
    det = jacobian_determinant_array(flow)
    assert det.shape == SHAPES[d]
    assert np.array_equal(det, np.ones(SHAPES[d]))
    assert njd_percent(flow) == 0.0
    assert sdlogj(flow) == 0.0


@pytest.mark.parametrize("d", [2, 3])
def test_linear_field_has_constant_det(d):
    rng = np.random.default_rng(d)
    A = rng.normal(scale=0.3, size=(d, d))
    grid = np.indices(SHAPES[d], dtype=np.float64)
    flow = np.einsum("ij,j...->i...", A, grid) + 1.7  # u = A p + t
    det = jacobian_determinant_array(flow)
    expected = np.linalg.det(np.eye(d) + A)
    assert expected > 0
    np.testing.assert_allclose(det, expected, rtol=0, atol=1e-12)
    assert sdlogj(flow) == pytest.approx(0.0, abs=1e-12)
    assert njd_percent(flow) == 0.0


def test_axis_assignment():
    # u_0 = 0.5 p_1 is a shear (det 1); u_0 = 0.5 p_0 stretches axis 0 (det 1.5)
    grid = np.indices((5, 6), dtype=np.float64)
    shear = np.stack([0.5 * grid[1], np.zeros((5, 6))])
    stretch = np.stack([0.5 * grid[0], np.zeros((5, 6))])
    np.testing.assert_allclose(jacobian_determinant_array(shear), 1.0)
    np.testing.assert_allclose(jacobian_determinant_array(stretch), 1.5)


def test_known_fold_count(fold_field):
    flow = fold_field
    det = jacobian_determinant_array(flow)
    folded = det <= 0
    assert folded.sum() == 2 * 3 * 3
    assert np.all(folded[4:6, 2:5, 3:6])
    assert njd_percent(flow) == pytest.approx(100 * 18 / (10 * 8 * 8))
    # inside a mask holding the folded voxels and as many unfolded ones: 50 %
    mask = np.zeros((10, 8, 8), dtype=bool)
    mask[4:8, 2:5, 3:6] = True
    assert njd_percent(flow, mask) == pytest.approx(50.0)
    # folded voxels are left out of SDlogJ: all others have det 1
    assert sdlogj(flow) == 0.0


def test_sdlogj_hand_computed():
    # u_0 = p_0^2 / 2 along 5 voxels: du_0/dp_0 = 0.5 (one-sided), 1, 2, 3 (central), 3.5
    p0 = np.arange(5.0)
    flow = np.zeros((3, 5, 3, 4))
    flow[0] = (0.5 * p0**2)[:, None, None]
    det = jacobian_determinant_array(flow)
    np.testing.assert_allclose(det[:, 1, 2], [1.5, 2.0, 3.0, 4.0, 4.5])
    assert sdlogj(flow) == pytest.approx(np.log([1.5, 2.0, 3.0, 4.0, 4.5]).std())


def test_all_folded_gives_nan_sdlogj():
    grid = np.indices((5, 5), dtype=np.float64)
    flow = np.stack([-2.0 * grid[0], np.zeros((5, 5))])  # det = -1 everywhere
    assert njd_percent(flow) == 100.0
    assert math.isnan(sdlogj(flow))


def test_batched_torch_flow_accepted(fold_field):
    flow = torch.from_numpy(fold_field)[None].float()
    assert njd_percent(flow) == pytest.approx(100 * 18 / 640)


def test_bad_flows_and_masks_rejected():
    with pytest.raises(
        MaxcaInputError, match=r"flow must have shape \(d, \*S\).* got shape 2x4x4x4"
    ):
        jacobian_determinant_array(np.zeros((2, 4, 4, 4)))
    with pytest.raises(MaxcaInputError, match=r"at least 2 voxels .* got shape 2x1x4"):
        jacobian_determinant_array(np.zeros((2, 1, 4)))
    with pytest.raises(MaxcaInputError, match=r"mask must have shape 4x4, got 4x5"):
        njd_percent(np.zeros((2, 4, 4)), np.ones((4, 5)))
    with pytest.raises(MaxcaInputError, match=r"mask must select at least one voxel"):
        sdlogj(np.zeros((2, 4, 4)), np.zeros((4, 4)))


def test_one_jacobian_numpy_and_torch_agree_exactly() -> None:
    from maxca.metrics import jacobian_determinant
    from maxca.spatial import jacobian_determinant as torch_jacobian

    u = np.random.default_rng(3).normal(size=(3, 7, 6, 5)) * 2.0
    ours = jacobian_determinant_array(u)
    np.testing.assert_array_equal(ours, torch_jacobian(torch.from_numpy(u)[None])[0].numpy())
    with pytest.warns(DeprecationWarning, match="jacobian_determinant_array"):
        np.testing.assert_array_equal(jacobian_determinant(u), ours)
