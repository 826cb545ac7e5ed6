"""Random smooth deformations and bias fields for synthetic subjects and test pairs.

Flows follow ``docs/conventions.md``: ``(d, *S)`` voxel displacements, channel ``k`` along
spatial axis ``k``; warp an image with ``maxca.spatial.warp(image, flow[None])``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from maxca.errors import MaxcaInputError
from maxca.spatial import integrate_velocity

__all__ = ["as_generator", "random_bias_field", "random_smooth_deformation"]

_INTERP = {2: "bilinear", 3: "trilinear"}


def as_generator(generator: torch.Generator | int | None) -> torch.Generator:
    """A CPU ``torch.Generator``: the given one, one seeded with an int, or a fresh unseeded one."""
    if isinstance(generator, torch.Generator):
        return generator
    g = torch.Generator()
    if generator is None:
        g.seed()
    else:
        g.manual_seed(int(generator))
    return g


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or any(s < 2 for s in shape):
        raise MaxcaInputError(
            f"shape must have 2 or 3 axes of at least 2 voxels, got {tuple(shape)}"
        )
    return shape


def _smooth_noise(
    shape: tuple[int, ...], coarse: tuple[int, ...], channels: int, g: torch.Generator
) -> torch.Tensor:
    """Gaussian noise on a ``coarse`` control grid, linearly upsampled to ``shape``.

    The control points sit on the first and last voxel (``align_corners=True``), so the output
    never exceeds the control values. Returns ``(channels, *shape)`` float32.
    """
    noise = torch.randn((1, channels, *coarse), generator=g, dtype=torch.float32)
    up = F.interpolate(noise, size=shape, mode=_INTERP[len(shape)], align_corners=True)
    return up[0]


def random_smooth_deformation(
    shape: Sequence[int],
    magnitude_vox: float,
    smoothness: float,
    generator: torch.Generator | int | None = None,
    diffeomorphic: bool = True,
    steps: int = 7,
    integration_step: int = 1,
) -> torch.Tensor:
    """A random smooth displacement field.

    A velocity is drawn as Gaussian noise on a control grid with one point every ``smoothness``
    voxels (at least 2 per axis, including both ends), linearly upsampled to ``shape`` and
    scaled so that its largest absolute component equals ``magnitude_vox``. With
    ``diffeomorphic`` it is integrated by scaling and squaring (``steps`` squarings,
    ``maxca.spatial.integrate_velocity``), giving an invertible, fold-free map for moderate
    ``magnitude_vox / smoothness``; otherwise the velocity itself is returned as displacement
    (fold-free while ``2 * magnitude_vox < smoothness``).

    Args:
        shape: spatial shape ``S`` (2 or 3 axes).
        magnitude_vox: maximum absolute velocity component, in voxels (>= 0).
        smoothness: control point spacing in voxels (> 0).
        generator: ``torch.Generator``, an int seed, or ``None`` (unseeded).
        diffeomorphic: integrate the velocity (default) or not.
        steps: scaling-and-squaring steps.
        integration_step: integrate on a grid with one point every ``integration_step`` voxels
            per axis (both ends included, ``align_corners`` geometry) and interpolate the
            displacement linearly back to ``shape``: the same velocity (it is piecewise linear
            on a control grid that is coarser still when ``integration_step <= smoothness``),
            ``integration_step ** d`` times fewer voxels to integrate, and a displacement that
            differs from the full-grid integration by interpolation error only (a small
            fraction of a voxel for ``integration_step <= smoothness / 4``; tested). 1 (the
            default) integrates on the full grid.

    Returns:
        ``(d, *S)`` float32 voxel displacement, ``d = len(S)``.
    """
    shape = _check_shape(shape)
    if not magnitude_vox >= 0:
        raise MaxcaInputError(f"magnitude_vox must be >= 0, got {magnitude_vox!r}")
    if not smoothness > 0:
        raise MaxcaInputError(f"smoothness must be > 0, got {smoothness!r}")
    if (
        isinstance(integration_step, bool)
        or int(integration_step) != integration_step
        or (integration_step < 1)
    ):
        raise MaxcaInputError(f"integration_step must be an integer >= 1, got {integration_step!r}")
    g = as_generator(generator)
    coarse = tuple(max(2, math.ceil((s - 1) / smoothness) + 1) for s in shape)
    velocity = _smooth_noise(shape, coarse, len(shape), g)
    peak = velocity.abs().max()
    velocity = velocity * (magnitude_vox / peak) if peak > 0 else torch.zeros_like(velocity)
    if not diffeomorphic:
        return velocity
    step = int(integration_step)
    if step == 1:
        return integrate_velocity(velocity[None], steps)[0]
    # integration grid: n_k points spaced r_k = (S_k - 1) / (n_k - 1) <= step voxels apart
    grid = tuple(max(2, math.ceil((s - 1) / step) + 1) for s in shape)
    spacing = torch.tensor([(s - 1) / (n - 1) for s, n in zip(shape, grid)], dtype=torch.float32)
    ones = (1,) * len(shape)
    mode = _INTERP[len(shape)]
    coarse_v = F.interpolate(velocity[None], size=grid, mode=mode, align_corners=True)
    flow = integrate_velocity(coarse_v / spacing.view(1, -1, *ones), steps)  # grid voxels
    flow = F.interpolate(flow, size=shape, mode=mode, align_corners=True)
    return flow[0] * spacing.view(-1, *ones)  # back to voxels of ``shape``


def random_bias_field(
    shape: Sequence[int],
    strength: float,
    generator: torch.Generator | int | None = None,
    control_points: int = 4,
) -> torch.Tensor:
    """A smooth positive multiplicative bias field ``exp(strength * n(p))``.

    ``n`` is standard Gaussian noise on ``control_points`` points per axis (placed on the first
    and last voxel), linearly upsampled, so ``log(field)`` has standard deviation ``strength``
    at the control points and the field equals 1 everywhere when ``strength == 0``.

    Args:
        shape: spatial shape ``S`` (2 or 3 axes).
        strength: log-domain standard deviation (e.g. 0.1 for roughly +-20 %).
        generator: ``torch.Generator``, an int seed, or ``None``.
        control_points: control points per axis (>= 2).

    Returns:
        ``(*S)`` float32, strictly positive.
    """
    shape = _check_shape(shape)
    if not strength >= 0:
        raise MaxcaInputError(f"strength must be >= 0, got {strength!r}")
    if int(control_points) < 2:
        raise MaxcaInputError(f"control_points must be >= 2, got {control_points!r}")
    g = as_generator(generator)
    coarse = (int(control_points),) * len(shape)
    log_field = _smooth_noise(shape, coarse, 1, g)[0]
    return torch.exp(strength * log_field)
