"""Learn2Reg-compatible metrics: predictable differences from maxca's own definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from maxca.errors import MaxcaInputError
from maxca.metrics import (
    hd95,
    jacobian_determinant_array,
    l2r_dice,
    l2r_hd95,
    l2r_jacobian_determinant,
    l2r_njd,
    l2r_sdlogj,
    l2r_tre,
    l2r_warp_labels,
    njd_percent,
    sdlogj,
    tre,
)
from maxca.metrics.l2r import _percentile_distance, _surfel_area_table, robust_hausdorff


def _cube(shape, start, size, label=1):
    m = np.zeros(shape, dtype=np.int16)
    m[tuple(slice(s, s + size) for s in start)] = label
    return m


def test_l2r_jacobian_is_the_cropped_central_difference_determinant():
    rng = np.random.default_rng(0)
    flow = ndimage.gaussian_filter(rng.normal(size=(3, 9, 8, 7)), (0, 1, 1, 1)) * 3
    ours = jacobian_determinant_array(flow)
    theirs = l2r_jacobian_determinant(flow)
    assert theirs.shape == (5, 4, 3)
    np.testing.assert_allclose(theirs, ours[2:-2, 2:-2, 2:-2], rtol=0, atol=1e-12)


def test_l2r_sdlogj_adds_three_and_crops():
    # u_0 = p_0^2 / 2 over 9 voxels: det = 1 + p_0 inside (central differences), 1.5 and 8.5
    # at the two ends (one-sided). Ours: std(log det) over all of it; the script: std of
    # log(det + 3) over p_0 = 2..6 only.
    p0 = np.arange(9.0)
    flow = np.zeros((3, 9, 5, 6))
    flow[0] = (0.5 * p0**2)[:, None, None]
    ours = np.log([1.5, 2, 3, 4, 5, 6, 7, 8, 8.5]).std()
    theirs = np.log(np.array([3.0, 4, 5, 6, 7]) + 3).std()
    assert sdlogj(flow) == pytest.approx(ours, rel=1e-12)
    assert l2r_sdlogj(flow) == pytest.approx(theirs, rel=1e-12)
    # a mask keeps only p_0 = 2 and 3 of the cropped grid
    mask = np.zeros((9, 5, 6))
    mask[:4] = 1
    assert l2r_sdlogj(flow, mask) == pytest.approx(np.log([6.0, 7.0]).std(), rel=1e-12)


def test_l2r_sdlogj_is_zero_for_zero_and_affine_flows():
    assert l2r_sdlogj(np.zeros((2, 7, 8))) == 0.0
    grid = np.indices((7, 8), dtype=np.float64)
    flow = np.stack([0.2 * grid[0] + 0.1 * grid[1], -0.3 * grid[1]])
    assert l2r_sdlogj(flow) == pytest.approx(0.0, abs=1e-12)


def test_l2r_njd_counts_on_the_cropped_grid(fold_field):
    flow = fold_field  # 18 folded voxels, all inside the cropped 6x4x4 grid
    assert njd_percent(flow) == pytest.approx(100 * 18 / (10 * 8 * 8))
    assert l2r_njd(flow) == pytest.approx(100 * 18 / (6 * 4 * 4))


def test_l2r_hd95_is_in_voxels():
    spacing = (0.8, 1.5, 2.5)
    a = _cube((14, 14, 14), (3, 3, 3), 7)
    b = _cube((14, 14, 14), (3, 3, 5), 7)  # shifted by 2 voxels along axis 2
    assert hd95(a, b, [1], spacing)[1] == pytest.approx(2 * 2.5, rel=1e-6)
    assert l2r_hd95(a, a, b, [1])[1] == 2.0


def test_l2r_skips_labels_absent_from_moving_and_gives_inf_for_vanished():
    fixed = _cube((8, 8, 8), (2, 2, 2), 3) + _cube((8, 8, 8), (5, 5, 5), 2, label=2)
    moving = _cube((8, 8, 8), (2, 2, 2), 3)  # no label 2
    warped = fixed.copy()
    dsc, hd = l2r_dice(fixed, moving, warped, [1, 2]), l2r_hd95(fixed, moving, warped, [1, 2])
    assert dsc[1] == 1.0 and hd[1] == 0.0
    assert math.isnan(dsc[2]) and math.isnan(hd[2])
    # label 1 present in fixed and moving but lost by the warp: Dice 0, HD95 inf
    lost = np.zeros_like(fixed)
    assert l2r_dice(fixed, moving, lost, [1])[1] == 0.0
    assert l2r_hd95(fixed, moving, lost, [1])[1] == math.inf


def test_surfel_area_table_hand_values():
    table3, kernel3 = _surfel_area_table((1.0, 1.0, 1.0))
    assert table3[0] == 0.0 and table3[255] == 0.0
    assert table3[1] == pytest.approx(math.sqrt(3) / 8)  # one corner: triangle of side 1/sqrt2
    assert table3[kernel3[1].sum()] == pytest.approx(1.0)  # one face of the cube: unit square
    table_aniso, _ = _surfel_area_table((2.0, 3.0, 5.0))
    assert table_aniso[kernel3[1].sum()] == pytest.approx(3.0 * 5.0)  # face normal to axis 0
    table2, kernel2 = _surfel_area_table((2.0, 3.0))
    assert table2[kernel2[1].sum()] == pytest.approx(3.0)  # edge along axis 1
    assert table2[1] == pytest.approx(0.5 * math.hypot(2.0, 3.0))  # one corner: diagonal


def test_area_weighted_percentile():
    d = np.array([2.0, 0.0, 1.0])
    assert _percentile_distance(d, np.array([0.06, 0.9, 0.04]), 95) == 2.0  # cum .9 .94 1
    assert _percentile_distance(d, np.array([0.04, 0.9, 0.06]), 95) == 1.0  # cum .9 .96 1
    assert _percentile_distance(np.zeros(0), np.zeros(0), 95) == math.inf


def test_surfel_hausdorff_of_single_pixels():
    # corners of pixel (2, 2) vs pixel (2, 3): half the corners coincide, half are 1 apart
    a = np.zeros((5, 6), bool)
    b = a.copy()
    a[2, 2] = b[2, 3] = True
    assert robust_hausdorff(a, b, (1.0, 1.0), 95) == 1.0
    assert robust_hausdorff(a, b, (1.0, 1.0), 50) == 0.0
    assert robust_hausdorff(a, b, (1.0, 4.0), 95) == 4.0


def test_l2r_tre_uses_cubic_interpolation():
    # u_0 = p_0^2: linear interpolation at p_0 = 7.5 gives (49 + 64) / 2 = 56.5; the cubic
    # spline reproduces the parabola (56.25) away from the border
    grid = np.indices((16, 5), dtype=np.float64)
    flow = np.stack([grid[0] ** 2, np.zeros((16, 5))])
    p = np.array([[7.5, 2.0]])
    q = np.array([[7.5, 2.0]])
    assert tre(p, q, flow, (1.0, 1.0))[0] == pytest.approx(56.5)
    assert l2r_tre(p, q, flow, (1.0, 1.0))[0] == pytest.approx(56.25, abs=1e-2)


def test_l2r_warp_labels_pulls_with_zero_outside():
    moving = np.arange(1, 6)[:, None] * np.ones((5, 3), dtype=np.int64)
    flow = np.zeros((2, 5, 3))
    flow[0] = 1.0  # warped(p) = moving(p + e_0)
    out = l2r_warp_labels(moving, flow)
    np.testing.assert_array_equal(out[:, 0], [2, 3, 4, 5, 0])
    assert out.dtype == moving.dtype


def test_l2r_bad_inputs():
    with pytest.raises(MaxcaInputError, match=r"at least 5 voxels .* got shape 2x4x9"):
        l2r_sdlogj(np.zeros((2, 4, 9)))
    with pytest.raises(MaxcaInputError, match=r"moving_label must have shape 4x4, got 4x5"):
        l2r_dice(np.zeros((4, 4)), np.zeros((4, 5)), np.zeros((4, 4)), [1])
    mask = np.zeros((6, 6))
    mask[0, :] = 1  # only border voxels, dropped by the crop
    with pytest.raises(MaxcaInputError, match=r"away from the 2-voxel border"):
        l2r_njd(np.zeros((2, 6, 6)), mask)
