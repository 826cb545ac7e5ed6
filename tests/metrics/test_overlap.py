"""Dice and HD95: hand-computed overlaps, shifted cubes with anisotropic spacing, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maxca.errors import MaxcaInputError
from maxca.metrics import dice, hd95


def test_dice_hand_computed():
    a = np.array([[1, 1, 1, 0], [2, 2, 0, 0]])
    b = np.array([[1, 1, 0, 0], [2, 0, 0, 3]])
    # label 1: |A| = 3, |B| = 2, |A n B| = 2 -> 4/5; label 2: 2, 1, 1 -> 2/3; label 3: 0, 1 -> 0
    out = dice(a, b, [1, 2, 3, 4])
    assert list(out) == [1, 2, 3, 4]
    assert out[1] == pytest.approx(0.8)
    assert out[2] == pytest.approx(2 / 3)
    assert out[3] == 0.0
    assert math.isnan(out[4])  # absent from both maps


def test_dice_default_labels_are_nonzero_union_and_torch_accepted():
    a = torch.tensor([[0, 5], [5, 0]])
    b = np.array([[0.0, 5.0], [7.0, 0.0]])  # float label maps (as nibabel returns them)
    out = dice(a, b)
    assert list(out) == [5, 7]
    assert out[5] == pytest.approx(2 * 1 / 3)
    assert out[7] == 0.0


def _cube(shape, start, size, label=1):
    m = np.zeros(shape, dtype=np.int16)
    m[tuple(slice(s, s + size) for s in start)] = label
    return m


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_hd95_of_shifted_cubes_is_shift_times_spacing(axis):
    spacing = (0.8, 1.5, 2.5)
    k = 2
    start = [3, 3, 3]
    a = _cube((14, 14, 14), start, 7, label=3)
    start[axis] += k
    b = _cube((14, 14, 14), start, 7, label=3)
    out = hd95(a, b, [3], spacing)
    assert out[3] == pytest.approx(k * spacing[axis], rel=1e-6)


def test_hd95_2d_and_identical():
    a = _cube((12, 10), (2, 2), 5)
    b = _cube((12, 10), (2, 5), 5)
    assert hd95(a, b, [1], (0.5, 2.0))[1] == pytest.approx(3 * 2.0, rel=1e-6)
    assert hd95(a, a, [1], (0.5, 2.0))[1] == 0.0


def test_hd95_nan_when_either_structure_is_empty():
    a = _cube((8, 8, 8), (2, 2, 2), 3, label=1)
    b = _cube((8, 8, 8), (2, 2, 2), 3, label=2)
    out = hd95(a, b, [1, 2, 9], (1.0, 1.0, 1.0))
    assert all(math.isnan(v) for v in out.values())


def test_label_map_shape_mismatch_is_rejected():
    with pytest.raises(MaxcaInputError, match=r"b must have shape 4x4, got 4x5"):
        dice(np.zeros((4, 4)), np.zeros((4, 5)), [1])
    with pytest.raises(MaxcaInputError, match=r"b must have shape 4x4x4, got 4x4"):
        hd95(np.zeros((4, 4, 4)), np.zeros((4, 4)), [1], (1, 1, 1))


def test_bad_spacing_labels_and_rank_are_rejected():
    a = np.zeros((4, 4, 4))
    with pytest.raises(MaxcaInputError, match=r"spacing must have 3 values .* got 2"):
        hd95(a, a, [1], (1.0, 1.0))
    with pytest.raises(MaxcaInputError, match=r"spacing must be positive"):
        hd95(a, a, [1], (1.0, 0.0, 1.0))
    with pytest.raises(MaxcaInputError, match=r"labels must be integers, got 1.5"):
        dice(a, a, [1.5])
    with pytest.raises(MaxcaInputError, match=r"a must be a 2-D or 3-D label map, got shape 4"):
        dice(np.zeros(4), np.zeros(4), [1])
