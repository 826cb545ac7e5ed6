"""The geometry of registration: identity grids, warping, resizing, composition, integration of
velocity fields, correlation cost volumes and Jacobian determinants.

Every function is N-D (2-D and 3-D from one implementation), follows the device and dtype of its
inputs and is differentiable. Axis, flow and interpolation conventions: docs/conventions.md
(flows are ``(B, d, *S)`` voxel displacements, channel ``k`` along spatial axis ``k``).
"""

from maxca.spatial.compose import compose
from maxca.spatial.correlation import correlation, correlation_offsets
from maxca.spatial.grid import clear_grid_cache, identity_grid
from maxca.spatial.integrate import VecInt, integrate_velocity
from maxca.spatial.jacobian import jacobian_determinant
from maxca.spatial.resize import resize_flow, resize_image
from maxca.spatial.warp import Warp, warp

__all__ = [
    "identity_grid",
    "clear_grid_cache",
    "warp",
    "Warp",
    "resize_flow",
    "resize_image",
    "integrate_velocity",
    "VecInt",
    "compose",
    "correlation",
    "correlation_offsets",
    "jacobian_determinant",
]
