"""RegistrationLoss: weighted sum of named terms."""

from __future__ import annotations

import pytest
import torch

from maxca.errors import MaxcaInputError
from maxca.losses import (
    MSE,
    BendingEnergy,
    DiceLoss,
    Diffusion,
    LocalNCC,
    RegistrationLoss,
    one_hot,
)


def _inputs(d: int, dtype: torch.dtype = torch.float32):  # noqa: ANN202
    g = torch.Generator().manual_seed(0)
    shape = (2, 1) + (8,) * d
    fixed = torch.rand(shape, generator=g, dtype=dtype)
    warped = torch.rand(shape, generator=g, dtype=dtype, requires_grad=True)
    flow = torch.randn((2, d) + (8,) * d, generator=g, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1) + (8,) * d, generator=g)
    return fixed, warped, flow, labels


@pytest.mark.parametrize("d", [2, 3])
def test_total_is_weighted_sum_of_terms(d: int) -> None:
    fixed, warped, flow, labels = _inputs(d)
    weights = {"similarity": 1.0, "diffusion": 0.5, "bending": 2.0, "dice": 0.3}
    loss = RegistrationLoss(d, "ncc", weights, window=5, labels=[1, 2])
    f_oh = one_hot(labels, [1, 2])
    w_oh = torch.softmax(torch.randn(f_oh.shape), 1)
    total, terms = loss(fixed, warped, flow, f_oh, w_oh)
    assert set(terms) == set(weights)
    torch.testing.assert_close(total, sum(weights[k] * terms[k] for k in terms))
    # each term is the standalone module's value
    torch.testing.assert_close(terms["similarity"], LocalNCC(d, 5)(fixed, warped))
    torch.testing.assert_close(terms["diffusion"], Diffusion(d)(flow))
    torch.testing.assert_close(terms["bending"], BendingEnergy(d)(flow))
    torch.testing.assert_close(terms["dice"], DiceLoss()(f_oh, w_oh))
    total.backward()
    assert warped.grad is not None and warped.grad.abs().sum() > 0
    assert flow.grad is not None and flow.grad.abs().sum() > 0


def test_defaults_mse_and_dtype() -> None:
    fixed, warped, flow, _ = _inputs(2, torch.float64)
    total, terms = RegistrationLoss(2, "mse")(fixed, warped, flow)
    assert set(terms) == {"similarity", "diffusion"} and total.dtype == torch.float64
    torch.testing.assert_close(total, MSE()(fixed, warped) + Diffusion(2)(flow))


def test_errors() -> None:
    fixed, warped, flow, _ = _inputs(2)
    with pytest.raises(MaxcaInputError, match=r"unknown loss term\(s\) \['smooth'\]"):
        RegistrationLoss(2, weights={"smooth": 1.0})
    with pytest.raises(MaxcaInputError, match="similarity must be one of"):
        RegistrationLoss(2, similarity="mi")
    with pytest.raises(MaxcaInputError, match="all loss weights are 0"):
        RegistrationLoss(2, weights={"similarity": 0})
    with pytest.raises(MaxcaInputError, match="must be >= 0"):
        RegistrationLoss(2, weights={"diffusion": -1})
    with pytest.raises(MaxcaInputError, match="window must be an odd integer"):
        RegistrationLoss(2, window=8)
    loss = RegistrationLoss(2, weights={"similarity": 1, "dice": 1})
    with pytest.raises(MaxcaInputError, match="dice weight is 1 but fixed_onehot"):
        loss(fixed, warped, flow)
    with pytest.raises(MaxcaInputError, match="same shape"):
        RegistrationLoss(2)(fixed, warped[..., :4], flow)
