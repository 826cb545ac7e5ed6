"""Region / dilated / global token grouping of channels-last feature maps, and its inverse.

All functions take channels-last tensors ``(B, *S, C)`` whose spatial size is a multiple of the
region size on every axis (pad first with :func:`pad_to_multiple`). The permutations are
generated from the rank, so 2-D and 3-D share one implementation.

Groupings, for a padded size ``S = g * R`` per axis (``g`` regions of ``R`` voxels):

- ``"regional"``: one group per region, its tokens are the ``prod(R)`` voxels inside it;
- ``"dilated"``: one group per in-region offset, its tokens are the ``prod(g)`` voxels sitting
  at that offset in every region (a grid of stride ``R`` spanning the image);
- ``"global"``: one group, all voxels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from maxca.errors import MaxcaInputError

GROUPINGS = ("regional", "dilated", "global")


def as_tuple(value: int | Sequence[int], n: int, name: str = "region") -> tuple[int, ...]:
    """Normalise a scalar or per-axis sequence to an ``n``-tuple of positive ints."""
    out = (value,) * n if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != n or any(v < 1 for v in out):
        raise MaxcaInputError(f"{name} must be a positive int or {n} positive ints, got {value!r}")
    return out


def padding_for(shape: Sequence[int], region: Sequence[int]) -> tuple[int, ...]:
    """Voxels to append at the end of each axis so that it becomes a multiple of ``region``."""
    return tuple((-s) % r for s, r in zip(shape, region))


def pad_to_multiple(x: Tensor, region: Sequence[int]) -> tuple[Tensor, tuple[int, ...]]:
    """Zero-pad a channels-last tensor ``(B, *S, C)`` at the end of every spatial axis.

    Returns the padded tensor and the per-axis padding. No copy when nothing is needed.
    """
    spatial = x.shape[1:-1]
    pads = padding_for(spatial, region)
    if not any(pads):
        return x, pads
    spec: list[int] = [0, 0]  # channel axis (last) is not padded
    for p in reversed(pads):
        spec += [0, p]
    return F.pad(x, spec), pads


def split_shape(shape: Sequence[int], region: Sequence[int]) -> tuple[int, ...]:
    """``(B, *S, *tail)`` -> ``(B, g0, R0, g1, R1, ..., *tail)`` with ``g = S // R`` per axis
    (``S`` a multiple of ``region``): the shape of :func:`split_view`, for ``Tensor.view``
    (splitting axes is always a view, whatever the strides)."""
    d = len(region)
    out: list[int] = [int(shape[0])]
    for s, r in zip(shape[1 : 1 + d], region):
        out += [int(s) // r, r]
    return (*out, *(int(s) for s in shape[1 + d :]))


def _split_view(x: Tensor, region: Sequence[int]) -> tuple[Tensor, tuple[int, ...]]:
    """View ``(B, *S, *tail)`` as ``(B, g0, R0, g1, R1, ..., *tail)``; returns grid counts ``g``."""
    d = len(region)
    spatial = x.shape[1 : 1 + d]
    grid = tuple(s // r for s, r in zip(spatial, region))
    shape: list[int] = [x.shape[0]]
    for g, r in zip(grid, region):
        shape += [g, r]
    return x.reshape(*shape, *x.shape[1 + d :]), grid


def channels_last_format(spatial_dims: int) -> torch.memory_format:
    """``torch.channels_last`` (2-D) or ``torch.channels_last_3d`` (3-D)."""
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def group_tokens(
    x: Tensor, region: Sequence[int], grouping: str, out: Tensor | None = None
) -> Tensor:
    """Group a channels-last tensor into token sequences, channels kept innermost.

    Args:
        x: ``(B, *S, C)``, ``S`` a multiple of ``region`` on every axis.
        region: region size per axis.
        grouping: ``"regional"``, ``"dilated"`` or ``"global"``.
        out: optional contiguous tensor of ``x.numel()`` elements to copy the tokens into
            (the result is a view of it; not used by ``"global"``, which copies nothing).

    Returns:
        ``(B * G, T, C)`` contiguous (one copy; none for ``"global"``): ``G`` groups of ``T``
        tokens. Channels stay innermost, so the copy moves whole ``C``-vectors (good locality)
        and ``x[..., a:b]`` channel slices stay valid strided matrices.
    """
    d = len(region)
    B, C = x.shape[0], x.shape[-1]
    if grouping == "global":
        return x.reshape(B, -1, C)
    t, grid = _split_view(x, region)  # (B, g0, R0, ..., C)
    g_axes = [1 + 2 * i for i in range(d)]
    r_axes = [2 + 2 * i for i in range(d)]
    if grouping == "regional":
        outer, inner = g_axes, r_axes
    elif grouping == "dilated":
        outer, inner = r_axes, g_axes
    else:
        raise MaxcaInputError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
    n_tok = 1
    for a in inner:
        n_tok *= t.shape[a]
    perm = t.permute(0, *outer, *inner, 1 + 2 * d)
    if out is None:
        return perm.reshape(-1, n_tok, C)
    out.view(perm.shape).copy_(perm)
    return out.view(-1, n_tok, C)


def ungroup_view(
    t: Tensor, batch: int, spatial: Sequence[int], region: Sequence[int], grouping: str
) -> Tensor:
    """Strided view of grouped tokens ``(B * G, T, C)`` in split spatial order.

    Returns ``(B, g0, R0, g1, R1, ..., C)`` (a view, no copy): reshape it to ``(B, *S, C)``
    (which copies) or combine it element-wise with ``x.view(B, g0, R0, ..., C)``.
    """
    d = len(region)
    C = t.shape[-1]
    if grouping == "global":
        return t.reshape(batch, *spatial, C)
    grid = tuple(s // r for s, r in zip(spatial, region))
    outer, inner = (grid, tuple(region)) if grouping == "regional" else (tuple(region), grid)
    v = t.view(batch, *outer, *inner, C)
    perm: list[int] = [0]
    for i in range(d):
        perm += [1 + i, 1 + d + i] if grouping == "regional" else [1 + d + i, 1 + i]
    perm.append(1 + 2 * d)
    return v.permute(*perm)


def split_view(x: Tensor, region: Sequence[int]) -> Tensor:
    """View ``(B, *S, C)`` as ``(B, g0, R0, g1, R1, ..., C)`` (no copy)."""
    return _split_view(x, region)[0]
