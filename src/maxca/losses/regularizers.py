"""Smoothness regularisers of a flow ``(B, d, *S)`` (voxel displacement, channel ``k`` along
spatial axis ``k``; docs/conventions.md). Derivatives are finite differences in voxel units."""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn

from maxca._checks import check_flow
from maxca.errors import MaxcaInputError
from maxca.layers.factories import check_spatial_dims

__all__ = ["BendingEnergy", "Diffusion"]


class Diffusion(nn.Module):
    """Gradient (diffusion) regulariser: mean penalty of the forward differences of the flow.

    ``loss = (1/d) sum_k mean(|u(p + e_k) - u(p)|^q)``, each mean over batch, the ``d``
    channels and the ``n_k - 1`` valid positions along axis ``k``; ``q = 2`` for ``"l2"``,
    ``1`` for ``"l1"``. A constant flow gives 0; ``u_0 = a p_0`` gives ``a^2 / d^2`` (l2).

    Args:
        spatial_dims: 2 or 3.
        penalty: ``"l2"`` (squared differences) or ``"l1"`` (absolute).
    """

    def __init__(self, spatial_dims: int, penalty: str = "l2") -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if penalty not in ("l1", "l2"):
            raise MaxcaInputError(f"Diffusion penalty must be 'l1' or 'l2', got {penalty!r}")
        self.penalty = penalty

    def extra_repr(self) -> str:
        return f"spatial_dims={self.spatial_dims}, penalty={self.penalty!r}"

    def forward(self, flow: torch.Tensor) -> torch.Tensor:
        """``flow``: ``(B, d, *S)``, every size >= 2 -> scalar."""
        check_flow(flow, "flow", self.spatial_dims, min_size=2)
        terms = []
        for k in range(self.spatial_dims):
            n = flow.shape[2 + k]
            diff = flow.narrow(2 + k, 1, n - 1) - flow.narrow(2 + k, 0, n - 1)
            terms.append(diff.pow(2).mean() if self.penalty == "l2" else diff.abs().mean())
        return torch.stack(terms).mean()


class BendingEnergy(nn.Module):
    """Bending energy: mean over batch, channels and interior voxels of the squared Frobenius
    norm of each channel's Hessian, ``sum_k (d2u/dp_k^2)^2 + 2 sum_{k<l} (d2u/dp_k dp_l)^2``.

    Second derivatives are central differences (``u(p+e) - 2u(p) + u(p-e)`` and
    ``[u(p+e_k+e_l) - u(p+e_k-e_l) - u(p-e_k+e_l) + u(p-e_k-e_l)] / 4``), evaluated on the
    interior voxels (one voxel in from every face). Exact for quadratic flows: an affine flow
    gives 0, ``u_0 = c p_0^2`` gives ``4 c^2 / d`` and ``u_0 = c p_0 p_1`` gives ``2 c^2 / d``.

    Args:
        spatial_dims: 2 or 3.
    """

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)

    def extra_repr(self) -> str:
        return f"spatial_dims={self.spatial_dims}"

    def forward(self, flow: torch.Tensor) -> torch.Tensor:
        """``flow``: ``(B, d, *S)``, every size >= 3 -> scalar."""
        check_flow(flow, "flow", self.spatial_dims, min_size=3)
        d = self.spatial_dims
        sizes = flow.shape[2:]

        def shifted(offsets: dict[int, int]) -> torch.Tensor:
            """The flow at ``p + offsets`` for every interior voxel ``p``."""
            out = flow
            for k in range(d):
                out = out.narrow(2 + k, 1 + offsets.get(k, 0), sizes[k] - 2)
            return out

        centre = shifted({})
        energy = torch.zeros_like(centre)
        for k in range(d):
            second = shifted({k: 1}) - 2 * centre + shifted({k: -1})
            energy = energy + second.pow(2)
        for k, l in itertools.combinations(range(d), 2):
            mixed = (
                shifted({k: 1, l: 1})
                - shifted({k: 1, l: -1})
                - shifted({k: -1, l: 1})
                + shifted({k: -1, l: -1})
            ) / 4
            energy = energy + 2 * mixed.pow(2)
        return energy.mean()
