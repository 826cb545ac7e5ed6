"""Shared fixtures for the metric tests: tiny fields with known answers."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def fold_field() -> np.ndarray:
    """(3, 10, 8, 8): u_0 drops by 3 between p_0 = 4 and 5 inside a 3x3 block of (p_1, p_2).

    Rows 1 and 2 of J are the identity, so det J = 1 + du_0/dp_0: the central differences at
    p_0 = 4 and p_0 = 5 are (-3 - 0) / 2 = -1.5 (det -0.5), and 0 (det 1) everywhere else,
    so exactly 2 x 3 x 3 = 18 voxels fold, all at least 2 voxels from the border.
    """
    flow = np.zeros((3, 10, 8, 8))
    flow[0, 5:, 2:5, 3:6] = -3.0
    return flow
