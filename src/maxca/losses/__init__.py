"""Losses: image similarity (local NCC, MSE, soft Dice), flow regularisers (diffusion, bending
energy) and the composite ``RegistrationLoss`` with named terms. All are ``nn.Module``s for 2-D
and 3-D inputs that follow the inputs' device and dtype."""

from maxca.losses.composite import RegistrationLoss
from maxca.losses.regularizers import BendingEnergy, Diffusion
from maxca.losses.similarity import MSE, DiceLoss, LocalNCC, one_hot

__all__ = [
    "MSE",
    "BendingEnergy",
    "DiceLoss",
    "Diffusion",
    "LocalNCC",
    "RegistrationLoss",
    "one_hot",
]
