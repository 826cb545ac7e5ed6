"""Synthetic deformations and bias fields."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maxca.data.synth import random_bias_field, random_smooth_deformation
from maxca.errors import MaxcaInputError


def jacobian_det(flow: np.ndarray) -> np.ndarray:
    """det(I + grad u) with central differences (numpy reference)."""
    d = flow.shape[0]
    grads = [np.gradient(flow[i], axis=tuple(range(d))) for i in range(d)]
    J = np.empty(flow.shape[1:] + (d, d))
    for i in range(d):
        for j in range(d):
            J[..., i, j] = grads[i][j] + (i == j)
    return np.linalg.det(J)


@pytest.mark.parametrize("shape", [(32, 28), (20, 18, 16)])
def test_smooth_deformation_no_folding(shape: tuple[int, ...]) -> None:
    flow = random_smooth_deformation(shape, magnitude_vox=4.0, smoothness=6.0, generator=0)
    assert flow.shape == (len(shape), *shape) and flow.dtype == torch.float32
    det = jacobian_det(flow.double().numpy())
    assert det.min() > 0
    assert flow.abs().max() > 1.0  # a real deformation, not a no-op


def test_smooth_deformation_magnitude_seed_and_mode() -> None:
    v = random_smooth_deformation((16, 12), 2.5, 5.0, generator=7, diffeomorphic=False)
    assert torch.isclose(v.abs().max(), torch.tensor(2.5))
    v2 = random_smooth_deformation(
        (16, 12), 2.5, 5.0, generator=torch.Generator().manual_seed(7), diffeomorphic=False
    )
    assert torch.equal(v, v2)
    assert not torch.equal(v, random_smooth_deformation((16, 12), 2.5, 5.0, 8, False))
    assert (random_smooth_deformation((8, 8, 8), 0.0, 4.0, 0) == 0).all()
    with pytest.raises(MaxcaInputError, match="smoothness must be > 0"):
        random_smooth_deformation((8, 8), 1.0, 0.0)
    with pytest.raises(MaxcaInputError, match="shape must have 2 or 3 axes"):
        random_smooth_deformation((8,), 1.0, 2.0)


def test_bias_field() -> None:
    field = random_bias_field((12, 10, 8), 0.2, generator=1)
    assert field.shape == (12, 10, 8) and (field > 0).all()
    assert torch.equal(field, random_bias_field((12, 10, 8), 0.2, generator=1))
    log = field.log()
    assert 0.02 < log.std() < 0.6
    # smooth: neighbouring voxels differ far less than the field varies overall
    assert (log[1:] - log[:-1]).abs().max() < 0.5 * (log.max() - log.min())
    assert (random_bias_field((5, 5), 0.0, 3) == 1).all()
