"""Inverse-consistency error on transforms with known inverses, against the torch composition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maxca.errors import MaxcaInputError
from maxca.metrics import inverse_consistency_error, inverse_consistency_map
from maxca.spatial import compose

SHAPES = {2: (12, 10), 3: (9, 8, 7)}


def _constant(d: int, t) -> np.ndarray:
    return np.broadcast_to(np.asarray(t, dtype=np.float64).reshape((d,) + (1,) * d),
                           (d, *SHAPES[d])).copy()  # fmt: skip


@pytest.mark.parametrize("d", [2, 3])
def test_opposite_translations_are_consistent_and_equal_ones_are_not(d):
    t = np.linspace(0.4, 1.3, d)
    ab = _constant(d, t)
    np.testing.assert_allclose(inverse_consistency_map(ab, -ab), 0.0, atol=1e-14)
    # following the same translation twice lands 2t away from the start
    err = inverse_consistency_map(ab, ab)
    np.testing.assert_allclose(err, 2 * np.linalg.norm(t), rtol=1e-12)


@pytest.mark.parametrize("d", [2, 3])
def test_spacing_scales_each_axis(d):
    t = np.zeros(d)
    t[0] = 1.0
    spacing = np.arange(2.0, 2.0 + d)
    # u_ba = 0: the residual is u_ab itself, one voxel along axis 0 = spacing[0] mm
    err = inverse_consistency_error(_constant(d, t), np.zeros((d, *SHAPES[d])), spacing=spacing)
    assert err == pytest.approx(spacing[0], rel=1e-12)


@pytest.mark.parametrize("d", [2, 3])
def test_exact_inverse_of_an_affine_map(d):
    rng = np.random.default_rng(7 + d)
    a = rng.normal(scale=0.04, size=(d, d))
    t = rng.normal(scale=0.3, size=d)
    grid = np.indices(SHAPES[d], dtype=np.float64)
    ab = np.einsum("ij,j...->i...", a, grid) + t.reshape((d,) + (1,) * d)  # phi(p) = (I+A)p + t
    inv = np.linalg.inv(np.eye(d) + a)
    ba = np.einsum("ij,j...->i...", inv, grid - t.reshape((d,) + (1,) * d)) - grid
    # inside, p + u_ab(p) stays on the grid, where linear interpolation of a linear field is exact
    inside = np.zeros(SHAPES[d], dtype=bool)
    inside[(slice(2, -2),) * d] = True
    assert np.all((grid + ab)[:, inside] >= 0)
    assert np.all((grid + ab)[:, inside] <= np.array(SHAPES[d]).reshape((d, 1)) - 1)
    assert inverse_consistency_error(ab, ba, mask=inside) == pytest.approx(0.0, abs=1e-10)
    # one direction alone (the other the identity) is far from consistent
    assert inverse_consistency_error(ab, np.zeros_like(ab), mask=inside) > 0.1


@pytest.mark.parametrize("d", [2, 3])
def test_matches_the_torch_composition(d):
    """``|compose(u_ba, u_ab)|``: maxca.spatial's composition gives the same residual."""
    rng = np.random.default_rng(d)
    ab = rng.normal(scale=1.5, size=(d, *SHAPES[d]))
    ba = rng.normal(scale=1.5, size=(d, *SHAPES[d]))
    ref = compose(torch.from_numpy(ba)[None], torch.from_numpy(ab)[None])[0].numpy()
    np.testing.assert_allclose(
        inverse_consistency_map(ab, ba), np.linalg.norm(ref, axis=0), rtol=1e-9, atol=1e-9
    )
    # tensors with a batch axis are accepted as they come out of a model
    assert inverse_consistency_error(torch.from_numpy(ab)[None], ba) == pytest.approx(
        float(np.linalg.norm(ref, axis=0).mean()), rel=1e-9
    )


def test_bad_inputs():
    ab = np.zeros((3, *SHAPES[3]))
    with pytest.raises(MaxcaInputError, match="same shape"):
        inverse_consistency_map(ab, np.zeros((3, 9, 8, 6)))
    with pytest.raises(MaxcaInputError, match="spacing must have 3 values"):
        inverse_consistency_map(ab, ab, spacing=(1.0, 1.0))
    with pytest.raises(MaxcaInputError, match="all-zero mask"):
        inverse_consistency_error(ab, ab, mask=np.zeros(SHAPES[3]))
    with pytest.raises(MaxcaInputError, match="mask must have shape"):
        inverse_consistency_error(ab, ab, mask=np.ones((2, 2)))
    with pytest.raises(MaxcaInputError, match="flow_ba must have shape"):
        inverse_consistency_map(ab, np.zeros((2, 9, 8, 7)))
