"""jacobian_determinant: identity, affine flows, folding, a NumPy reference, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maxca.errors import MaxcaInputError
from maxca.spatial import identity_grid, jacobian_determinant

SHAPES = {2: (9, 11), 3: (6, 7, 8)}  # tiny, non-cubic: axis mix-ups fail

DIMS = [2, 3]


@pytest.mark.parametrize("d", DIMS)
def test_zero_flow_gives_one(d):
    out = jacobian_determinant(torch.zeros(2, d, *SHAPES[d]))
    assert out.shape == (2, *SHAPES[d])
    assert torch.equal(out, torch.ones_like(out))


@pytest.mark.parametrize("d", DIMS)
def test_linear_flow_gives_det_of_identity_plus_matrix(d):
    # u(p) = A p + t: exact everywhere, the one-sided boundary differences included
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(d, d, generator=gen, dtype=torch.float64) * 0.4
    t = torch.randn(d, generator=gen, dtype=torch.float64)
    grid = identity_grid(SHAPES[d], dtype=torch.float64)
    flow = (torch.einsum("ij,j...->i...", A, grid) + t.view(d, *(1,) * d))[None]
    out = jacobian_determinant(flow)
    expected = torch.linalg.det(torch.eye(d, dtype=torch.float64) + A)
    torch.testing.assert_close(out, torch.full_like(out, expected.item()), atol=1e-12, rtol=0)


def test_axis_assignment_of_the_matrix():
    # u_0 = 0.5 * p_1 (shear) leaves det = 1; u_0 = 0.5 * p_0 gives 1.5, u_1 = 0.5 * p_1 too
    grid = identity_grid((6, 7), dtype=torch.float64)
    shear = torch.stack([0.5 * grid[1], torch.zeros_like(grid[1])])[None]
    torch.testing.assert_close(
        jacobian_determinant(shear), torch.ones(1, 6, 7, dtype=torch.float64)
    )
    stretch = torch.stack([0.5 * grid[0], 0.5 * grid[1]])[None]
    torch.testing.assert_close(
        jacobian_determinant(stretch), torch.full((1, 6, 7), 2.25, dtype=torch.float64)
    )


@pytest.mark.parametrize("d", DIMS)
def test_folded_field_is_negative_where_expected(d):
    # u_0 = a sin(w p_0): the central difference is a cos(w p_0) sin(w), so the determinant is
    # 1 + a sin(w) cos(w p_0) in the interior; with a = 3 it is negative where cos(w p_0) < -1/3
    shape = (16, 5) if d == 2 else (16, 4, 5)
    a, w = 3.0, 2 * math.pi / 16
    grid = identity_grid(shape, dtype=torch.float64)
    flow = torch.zeros(1, d, *shape, dtype=torch.float64)
    flow[0, 0] = a * torch.sin(w * grid[0])
    out = jacobian_determinant(flow)[0]
    p0 = torch.arange(1, 15, dtype=torch.float64)
    expected = 1 + a * math.sin(w) * torch.cos(w * p0)
    torch.testing.assert_close(out[1:-1], expected.view(-1, *(1,) * (d - 1)).expand_as(out[1:-1]))
    assert (out[1:-1] < 0).any() and (out[1:-1] > 0).any()
    assert torch.equal(out[1:-1] < 0, (expected < 0).view(-1, *(1,) * (d - 1)).expand_as(out[1:-1]))


@pytest.mark.parametrize("d", DIMS)
def test_matches_numpy_gradient_and_det(d, smooth_field):
    flow = smooth_field(SHAPES[d], batch=2, amp=3.0, seed=1)
    out = jacobian_determinant(flow).numpy()
    f = flow.numpy()
    for b in range(2):
        grads = np.stack(
            [np.stack(np.gradient(f[b, i], axis=tuple(range(d))), axis=-1) for i in range(d)],
            axis=-2,
        )  # (*S, d, d): [..., i, j] = d u_i / d p_j
        np.testing.assert_allclose(out[b], np.linalg.det(np.eye(d) + grads), atol=1e-10)


def test_gradient_flows():
    flow = torch.rand(1, 3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    jacobian_determinant(flow).sum().backward()
    assert flow.grad is not None and flow.grad.abs().sum() > 0


def test_bad_inputs():
    with pytest.raises(MaxcaInputError, match=r"flow must have 3 channels"):
        jacobian_determinant(torch.zeros(1, 2, 4, 5, 6))
    with pytest.raises(MaxcaInputError, match=r"at least 2 voxels along every spatial axis"):
        jacobian_determinant(torch.zeros(1, 3, 1, 5, 6))
    with pytest.raises(MaxcaInputError, match=r"flow must have shape \(B, d, \*S\)"):
        jacobian_determinant(torch.zeros(2, 4, 5))
