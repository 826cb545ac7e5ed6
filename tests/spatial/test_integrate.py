"""integrate_velocity / VecInt: scaling and squaring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import expm

from maxca.errors import MaxcaInputError
from maxca.spatial import VecInt, compose, identity_grid, integrate_velocity

SHAPES = {2: (9, 11), 3: (6, 7, 8)}  # tiny, non-cubic: axis mix-ups fail

DIMS = [2, 3]


@pytest.mark.parametrize("d", DIMS)
def test_zero_velocity_gives_zero(d):
    v = torch.zeros(2, d, *SHAPES[d])
    assert torch.equal(integrate_velocity(v), v)


@pytest.mark.parametrize("d", DIMS)
def test_constant_velocity_is_a_translation(d):
    c = torch.tensor([1.7, -2.3, 0.6][:d], dtype=torch.float64)
    v = c.view(1, d, *(1,) * d).expand(1, d, *SHAPES[d]).contiguous()
    torch.testing.assert_close(integrate_velocity(v, steps=7), v, atol=1e-12, rtol=0)


def test_steps_zero_returns_velocity(smooth_field):
    v = smooth_field((5, 6), amp=1.0)
    assert integrate_velocity(v, steps=0) is v


@pytest.mark.parametrize("d", DIMS)
def test_linear_velocity_gives_matrix_power_and_exponential(d):
    # v(p) = A (p - c): each squaring composes affine maps, which linear interpolation does
    # exactly while the sampled points stay inside the grid, so away from the borders
    # u = ((I + A / 2**s)**(2**s) - I)(p - c) to rounding, and that is close to expm(A) - I
    shape, margin = ((25, 25), 7) if d == 2 else ((19, 19, 19), 6)
    A = np.array([[0.12, -0.3, 0.08], [0.25, -0.1, 0.05], [-0.05, 0.15, 0.2]])[:d, :d]
    centre = torch.tensor([(n - 1) / 2 for n in shape], dtype=torch.float64).view(d, *(1,) * d)
    centred = identity_grid(shape, dtype=torch.float64) - centre  # (d, *shape)

    def apply(matrix: np.ndarray) -> torch.Tensor:
        return torch.einsum("ij,j...->i...", torch.from_numpy(matrix), centred)

    steps = 7
    u = integrate_velocity(apply(A)[None], steps=steps)[0]
    # far enough from the borders that no clamped sample influences the compared voxels
    inner = (slice(None),) + (slice(margin, -margin),) * d
    power = np.linalg.matrix_power(np.eye(d) + A / 2**steps, 2**steps) - np.eye(d)
    torch.testing.assert_close(u[inner], apply(power)[inner], atol=1e-9, rtol=0)
    torch.testing.assert_close(u[inner], apply(expm(A) - np.eye(d))[inner], atol=5e-3, rtol=0)
    assert (u[inner] - apply(A)[inner]).abs().max() > 0.05  # differs from u = v


@pytest.mark.parametrize("d", DIMS)
def test_negated_velocity_gives_inverse(d, wave_field):
    # exp(v) composed with exp(-v) is the identity up to interpolation error (about 0.015 here)
    shape = (32, 30) if d == 2 else (16, 15, 17)
    v = wave_field(shape, amp=1.5, wavelength=24.0, seed=3)
    round_trip = compose(integrate_velocity(v), integrate_velocity(-v))
    inner = (slice(None), slice(None)) + (slice(5, -5),) * d
    assert round_trip[inner].abs().max() < 0.03
    assert integrate_velocity(v)[inner].abs().max() > 1.0


def test_module_matches_function_and_gradients(smooth_field):
    v = smooth_field(SHAPES[3], amp=1.0, seed=4).requires_grad_(True)
    out = VecInt(steps=5)(v)
    torch.testing.assert_close(out, integrate_velocity(v, steps=5))
    out.square().sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0
    assert "steps=5" in repr(VecInt(5))


@pytest.mark.parametrize("steps", [-1, 2.5, True, "7"])
def test_bad_steps(steps):
    with pytest.raises(MaxcaInputError, match="steps must be an integer >= 0"):
        integrate_velocity(torch.zeros(1, 2, 4, 4), steps=steps)
    with pytest.raises(MaxcaInputError, match="steps must be an integer >= 0"):
        VecInt(steps)


def test_bad_velocity():
    with pytest.raises(MaxcaInputError, match=r"velocity must have 2 channels"):
        integrate_velocity(torch.zeros(1, 3, 4, 4))
