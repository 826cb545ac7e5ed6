"""Integration of stationary velocity fields by scaling and squaring."""

from __future__ import annotations

import torch
import torch.nn as nn

from maxca._checks import check_flow, check_int
from maxca.spatial.compose import compose

__all__ = ["integrate_velocity", "VecInt"]


def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Displacement ``u = exp(v)`` of a stationary velocity field by scaling and squaring.

    ``u = v / 2**steps``, then ``steps`` times ``u = compose(u, u) = u + warp(u, u)`` (``u``
    sampled at ``p + u(p)`` with linear interpolation and border padding; see
    :func:`~maxca.spatial.compose`). ``steps=0`` returns ``velocity`` itself. A constant
    velocity ``c`` integrates to the translation ``c`` exactly; ``exp(-v)`` approximately
    inverts ``exp(v)``.

    Args:
        velocity: ``(B, d, *S)`` stationary velocity in voxels (channel ``k`` along axis ``k``).
        steps: number of squarings, an integer ``>= 0`` (default 7).

    Returns:
        ``(B, d, *S)`` displacement in voxels. Differentiable with respect to ``velocity``.
    """
    check_flow(velocity, "velocity")
    steps = check_int(steps, "steps", 0)
    if steps == 0:
        return velocity
    u = velocity / (2.0**steps)
    for _ in range(steps):
        u = compose(u, u)
    return u


class VecInt(nn.Module):
    """:func:`integrate_velocity` as a module: ``forward(velocity (B, d, *S)) -> (B, d, *S)``.

    No shape is needed at construction (identity grids are cached per shape/device/dtype).
    """

    def __init__(self, steps: int = 7) -> None:
        super().__init__()
        self.steps = check_int(steps, "steps", 0)

    def forward(self, velocity: torch.Tensor) -> torch.Tensor:
        return integrate_velocity(velocity, self.steps)

    def extra_repr(self) -> str:
        return f"steps={self.steps}"
