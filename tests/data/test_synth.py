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


@pytest.mark.parametrize("shape", [(61, 47), (40, 36, 44)])
def test_coarse_integration_matches_full_grid(shape: tuple[int, ...]) -> None:
    """Integrating the same velocity on a grid every 2 voxels and interpolating back agrees with
    the full-grid integration up to interpolation error, keeps the field fold-free and the
    seed's identity; zero amplitude stays the exact identity."""
    full = random_smooth_deformation(shape, 3.0, 12.0, generator=3)
    coarse = random_smooth_deformation(shape, 3.0, 12.0, generator=3, integration_step=2)
    assert coarse.shape == full.shape and coarse.dtype == torch.float32
    diff = (coarse - full).abs()
    assert diff.mean() < 0.03 * full.abs().max()
    assert torch.quantile(diff.flatten(), 0.99) < 0.1 * full.abs().max()
    assert jacobian_det(coarse.double().numpy()).min() > 0
    assert torch.equal(
        coarse, random_smooth_deformation(shape, 3.0, 12.0, generator=3, integration_step=2)
    )
    # a coarser integration grid drifts further from the full-grid answer
    coarser = random_smooth_deformation(shape, 3.0, 12.0, generator=3, integration_step=4)
    assert (coarser - full).abs().mean() > diff.mean()
    zero = random_smooth_deformation(shape, 0.0, 12.0, generator=3, integration_step=2)
    assert (zero == 0).all()
    for bad in (0, 1.5, True):
        with pytest.raises(MaxcaInputError, match="integration_step must be an integer >= 1"):
            random_smooth_deformation(shape, 1.0, 4.0, integration_step=bad)
