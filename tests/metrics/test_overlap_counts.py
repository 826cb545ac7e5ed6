"""Dice through per-label counts (one pass for all labels) equals the per-label definition,
and the Jacobian computed once gives the same folding and SDlogJ as computed per metric."""

from __future__ import annotations

import math

import numpy as np
import pytest

from maxca.metrics import dice
from maxca.metrics.jacobian import (
    jacobian_determinant_array,
    njd_percent,
    njd_percent_of,
    sdlogj,
    sdlogj_of,
)


def _reference(a: np.ndarray, b: np.ndarray, lab: int) -> float:
    ma, mb = a == lab, b == lab
    total = ma.sum() + mb.sum()
    return 2.0 * (ma & mb).sum() / total if total else math.nan


@pytest.mark.parametrize("ids", [[0, 2, 3, 41, 60], [0, -3, 5], [0, 2_000_000, 7]])
def test_dice_counts_match_the_definition(ids):
    rng = np.random.default_rng(1)
    a = rng.choice(np.array(ids), size=(9, 10, 11))
    b = np.where(rng.random(a.shape) < 0.7, a, rng.choice(np.array(ids), size=a.shape))
    labels = [v for v in ids if v != 0] + [99]  # 99: absent from both -> NaN
    got = dice(a, b, labels)
    for lab in labels:
        ref = _reference(a, b, lab)
        if math.isnan(ref):
            assert math.isnan(got[lab])
        else:
            assert got[lab] == pytest.approx(ref, abs=0, rel=1e-15)


def test_jacobian_once_gives_the_same_folding_and_sdlogj():
    rng = np.random.default_rng(2)
    flow = rng.normal(scale=0.6, size=(3, 8, 9, 10))
    det = jacobian_determinant_array(flow)
    assert njd_percent_of(det) == njd_percent(flow) > 0
    assert sdlogj_of(det) == sdlogj(flow)
