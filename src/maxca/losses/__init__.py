"""Losses: image similarity (local NCC, MIND-SSC, MSE, soft Dice), flow regularisers (diffusion,
bending energy) and the composite ``RegistrationLoss`` with named terms. All are ``nn.Module``s for
2-D and 3-D inputs that follow the inputs' device and dtype."""

from maxca.losses.composite import RegistrationLoss
from maxca.losses.regularizers import BendingEnergy, Diffusion
from maxca.losses.similarity import MIND, MSE, DiceLoss, LocalNCC, box_sum, mind_ssc, one_hot

__all__ = [
    "MIND",
    "MSE",
    "BendingEnergy",
    "DiceLoss",
    "Diffusion",
    "LocalNCC",
    "RegistrationLoss",
    "box_sum",
    "mind_ssc",
    "one_hot",
]
