"""Jacobian determinant of the transformation ``p -> p + u(p)`` of a voxel flow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch

from maxca._checks import check_flow, shape_str
from maxca.errors import MaxcaInputError

__all__ = ["jacobian_determinant", "determinant"]

T = TypeVar("T", bound=Any)


def jacobian_determinant(flow: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian ``J = I + grad u`` of ``phi(p) = p + u(p)`` at every voxel.

    Derivatives are taken in voxel units with ``torch.gradient``: central differences
    ``(u(p + e_k) - u(p - e_k)) / 2`` in the interior and one-sided first-order differences
    ``u(1) - u(0)`` and ``u(n-1) - u(n-2)`` on the first and last voxel of each axis, so the
    output has the input's full spatial size (and is exact for affine flows everywhere).
    ``J[i, j] = delta_ij + d u_i / d p_j`` with ``u_i`` channel ``i`` (spatial axis ``i``);
    the determinant is expanded explicitly (2x2 / 3x3 formula). Values ``<= 0`` mark folding.

    Args:
        flow: ``(B, d, *S)`` floating displacement in voxels, every spatial size ``>= 2``.

    Returns:
        ``(B, *S)`` in the flow's dtype; differentiable.
    """
    d = check_flow(flow, "flow")
    if min(flow.shape[2:]) < 2:
        raise MaxcaInputError(
            "flow must have at least 2 voxels along every spatial axis to take derivatives, "
            f"got shape {shape_str(flow.shape)}"
        )
    grads = torch.gradient(flow, dim=tuple(range(2, 2 + d)))  # d x (B, d, *S): d/dp_j
    # J[i][j] = delta_ij + d u_i / d p_j, each (B, *S)
    J = [[grads[j][:, i] + (1.0 if i == j else 0.0) for j in range(d)] for i in range(d)]
    return determinant(J)


def determinant(J: Sequence[Sequence[T]]) -> T:  # noqa: N803 (matrix name)
    """Determinant of a field of 2x2 or 3x3 matrices given as nested lists ``J[i][j]`` of
    same-shape tensors or arrays (explicit expansion, no batching of the matrix axes)."""
    if len(J) == 2:
        return J[0][0] * J[1][1] - J[0][1] * J[1][0]
    return (
        J[0][0] * (J[1][1] * J[2][2] - J[1][2] * J[2][1])
        - J[0][1] * (J[1][0] * J[2][2] - J[1][2] * J[2][0])
        + J[0][2] * (J[1][0] * J[2][1] - J[1][1] * J[2][0])
    )
