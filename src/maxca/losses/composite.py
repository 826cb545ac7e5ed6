"""``RegistrationLoss``: weighted similarity + regularisation (+ Dice) with named terms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from maxca._checks import SIMILARITIES
from maxca.errors import MaxcaInputError
from maxca.layers.factories import check_spatial_dims
from maxca.losses.regularizers import BendingEnergy, Diffusion
from maxca.losses.similarity import MIND, MSE, DiceLoss, LocalNCC

__all__ = ["SIMILARITIES", "TERMS", "RegistrationLoss"]

TERMS = ("similarity", "diffusion", "bending", "dice")
DEFAULT_WEIGHTS = {"similarity": 1.0, "diffusion": 1.0}


class RegistrationLoss(nn.Module):
    """``total = sum_name weights[name] * term[name]`` over the terms with a non-zero weight.

    Terms (unweighted, each a scalar):

    * ``similarity``: :class:`LocalNCC` (``-mean(cc)``, -1 is a perfect match), :class:`MSE` or
      :class:`MIND` (MIND-SSC descriptors, 0 is a perfect match; for pairs of different
      contrasts) between ``fixed`` and ``warped``;
    * ``diffusion``: :class:`Diffusion` (l2) of ``flow``;
    * ``bending``: :class:`BendingEnergy` of ``flow``;
    * ``dice``: :class:`DiceLoss` between ``fixed_onehot`` and ``warped_onehot``.

    Args:
        spatial_dims: 2 or 3.
        similarity: ``"ncc"``, ``"mse"`` or ``"mind"``.
        weights: ``{term: weight}``, missing terms weigh 0 (default
            ``{"similarity": 1, "diffusion": 1}``); weights must be >= 0.
        window: NCC window (odd); not used by ``"mse"`` and ``"mind"`` (MIND-SSC with its
            defaults: patch radius 1, neighbours 2 voxels away).
        labels: label ids for the Dice term when it is given integer label maps.
    """

    def __init__(
        self,
        spatial_dims: int,
        similarity: str = "ncc",
        weights: Mapping[str, float] | None = None,
        window: int | Sequence[int] = 9,
        labels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if similarity not in SIMILARITIES:
            raise MaxcaInputError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise MaxcaInputError(f"unknown loss term(s) {unknown} in weights; expected {TERMS}")
        for name, w in weights.items():
            if not float(w) >= 0:
                raise MaxcaInputError(f"loss weight {name!r} must be >= 0, got {w!r}")
        self.weights = {name: float(weights.get(name, 0.0)) for name in TERMS}
        if not any(self.weights.values()):
            raise MaxcaInputError(f"all loss weights are 0: {weights}")
        self.similarity_name = similarity
        self.similarity: nn.Module
        if similarity == "ncc":
            self.similarity = LocalNCC(self.spatial_dims, window)
        elif similarity == "mind":
            self.similarity = MIND(self.spatial_dims)
        else:
            self.similarity = MSE(self.spatial_dims)
        self.diffusion = Diffusion(self.spatial_dims)
        self.bending = BendingEnergy(self.spatial_dims)
        self.dice = DiceLoss(labels)

    def extra_repr(self) -> str:
        active = {k: v for k, v in self.weights.items() if v}
        return f"spatial_dims={self.spatial_dims}, weights={active}"

    def forward(
        self,
        fixed: torch.Tensor,
        warped: torch.Tensor,
        flow: torch.Tensor,
        fixed_onehot: torch.Tensor | None = None,
        warped_onehot: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its unweighted named terms.

        Args:
            fixed: ``(B, C, *S)`` fixed image.
            warped: ``(B, C, *S)`` moving image warped by ``flow``.
            flow: ``(B, d, *S')`` voxel displacement (any resolution).
            fixed_onehot, warped_onehot: ``(B, L, *S)`` one-hot / probabilities (or integer
                ``(B, 1, *S)`` maps with ``labels``); required when the Dice weight is > 0.

        Returns:
            ``(total, {name: term})`` with only the terms of non-zero weight, so that
            ``total == sum(weights[name] * term)``.
        """
        w = self.weights
        terms: dict[str, torch.Tensor] = {}
        if w["similarity"]:
            terms["similarity"] = self.similarity(fixed, warped)
        if w["diffusion"]:
            terms["diffusion"] = self.diffusion(flow)
        if w["bending"]:
            terms["bending"] = self.bending(flow)
        if w["dice"]:
            if fixed_onehot is None or warped_onehot is None:
                raise MaxcaInputError(
                    f"the dice weight is {w['dice']:g} but fixed_onehot and/or warped_onehot "
                    "were not given"
                )
            terms["dice"] = self.dice(fixed_onehot, warped_onehot)
        names = list(terms)
        total = w[names[0]] * terms[names[0]]
        for name in names[1:]:
            total = total + w[name] * terms[name]
        return total, terms
