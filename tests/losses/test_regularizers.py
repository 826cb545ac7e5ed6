"""Diffusion and bending energy regularisers."""

from __future__ import annotations

import pytest
import torch

from maxca.errors import MaxcaInputError
from maxca.losses import BendingEnergy, Diffusion


def coords(shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    return list(torch.meshgrid(*[torch.arange(s, dtype=dtype) for s in shape], indexing="ij"))


def flow_from(components: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(components)[None]  # (1, d, *S)


@pytest.mark.parametrize("shape", [(6, 7), (5, 6, 4)])
def test_diffusion_constant_and_ramp(shape: tuple[int, ...]) -> None:
    d = len(shape)
    reg = Diffusion(d)
    const = torch.ones(2, d, *shape, dtype=torch.float64) * 3.7
    assert reg(const).item() == 0.0
    a = 0.7
    p = coords(shape)
    ramp = flow_from([a * p[0]] + [torch.zeros(shape, dtype=torch.float64)] * (d - 1))
    # only axis 0 of channel 0 changes, by a: (1/d) * (a^2 / d)
    assert reg(ramp).item() == pytest.approx(a**2 / d**2)
    assert Diffusion(d, penalty="l1")(ramp).item() == pytest.approx(a / d**2)
    # a ramp along the last axis on the last channel gives the same value
    ramp_last = flow_from([torch.zeros(shape, dtype=torch.float64)] * (d - 1) + [a * p[-1]])
    assert reg(ramp_last).item() == pytest.approx(a**2 / d**2)


def test_diffusion_matches_direct_formula() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 3, 4, 5, 6, generator=g, dtype=torch.float64)
    expected = (
        (u[:, :, 1:] - u[:, :, :-1]).pow(2).mean()
        + (u[:, :, :, 1:] - u[:, :, :, :-1]).pow(2).mean()
        + (u[:, :, :, :, 1:] - u[:, :, :, :, :-1]).pow(2).mean()
    ) / 3
    torch.testing.assert_close(Diffusion(3)(u), expected)


@pytest.mark.parametrize("shape", [(6, 7), (5, 6, 4)])
def test_bending_energy_known_values(shape: tuple[int, ...]) -> None:
    d = len(shape)
    reg = BendingEnergy(d)
    p = coords(shape)
    zero = torch.zeros(shape, dtype=torch.float64)
    # any affine flow has no bending energy
    affine = flow_from([0.3 * p[0] - 0.2 * p[1] + 1.0] + [0.5 * p[-1] + 0.1 * p[0]] * (d - 1))
    assert reg(affine).item() == pytest.approx(0.0, abs=1e-20)
    c = 0.4
    quad = flow_from([c * p[0] ** 2] + [zero] * (d - 1))  # d2u/dp0^2 = 2c
    assert reg(quad).item() == pytest.approx(4 * c**2 / d)
    mixed = flow_from([zero] * (d - 1) + [c * p[0] * p[1]])  # d2u/dp0dp1 = c, counted twice
    assert reg(mixed).item() == pytest.approx(2 * c**2 / d)
    both = flow_from([c * p[0] ** 2 + c * p[0] * p[1]] + [zero] * (d - 1))
    assert reg(both).item() == pytest.approx(6 * c**2 / d)


def test_regularizer_gradients_dtype_and_errors() -> None:
    u = torch.randn(1, 2, 6, 6, requires_grad=True)
    (Diffusion(2)(u) + BendingEnergy(2)(u)).backward()
    assert u.grad is not None and u.grad.abs().sum() > 0
    assert Diffusion(2)(u.double()).dtype == torch.float64
    with pytest.raises(MaxcaInputError, match=r"flow must have 3 channels"):
        Diffusion(3)(torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(MaxcaInputError, match=r"flow must have shape \(B, C, \*S\) with 2 spatial"):
        Diffusion(2)(torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(MaxcaInputError, match="at least 3 voxels"):
        BendingEnergy(2)(torch.zeros(1, 2, 2, 5))
    with pytest.raises(MaxcaInputError, match="penalty must be 'l1' or 'l2'"):
        Diffusion(2, penalty="l3")
