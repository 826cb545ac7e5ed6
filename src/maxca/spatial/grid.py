"""Identity grids of voxel coordinates, cached per (shape, device, dtype).

Axis convention (docs/conventions.md): channel ``k`` of a grid holds the index along spatial
axis ``k`` in array order, so ``identity_grid((D0, D1))[k][i0, i1] == i_k``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch

from maxca._checks import as_int
from maxca.errors import MaxcaInputError

__all__ = ["identity_grid", "clear_grid_cache"]

_CACHE_SIZE = 64
_cache: OrderedDict[tuple, tuple[torch.Tensor, int]] = OrderedDict()
_lock = threading.Lock()


def _normalise_device(device: torch.device | str | int | None) -> torch.device:
    """``torch.device`` with an explicit index for accelerators ("cuda" -> "cuda:0")."""
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _build(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # A normal (non-inference) tensor even when first asked for under torch.inference_mode, so
    # the cached grid can later be used in autograd-recorded computations.
    with torch.inference_mode(False), torch.no_grad():
        axes = [torch.arange(n, device=device, dtype=torch.float64) for n in shape]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)  # (d, *shape)
        return grid.to(dtype).contiguous()


def identity_grid(
    shape: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Voxel coordinates of a grid: a tensor of shape ``(d, *shape)`` with ``d = len(shape)``.

    ``grid[k]`` holds the index along spatial axis ``k`` (array order, not reversed like
    ``grid_sample``'s x, y, z), so ``p + flow(p)`` is ``identity_grid(S) + flow``.

    The result is cached per ``(shape, device, dtype)`` (least recently used, 64 entries) and the
    *same tensor object* is returned on every call: treat it as **read-only**. Never modify it in
    place (``grid += flow`` is a bug; write ``grid + flow``, or ``clone()`` first). As a safety
    net, a cached grid whose version counter shows an in-place change is rebuilt on the next call.

    Args:
        shape: spatial size ``(D0, D1[, D2])``, each a positive integer.
        device: device of the grid (default CPU).
        dtype: dtype of the grid (default ``torch.get_default_dtype()``).

    Returns:
        ``(d, *shape)`` tensor, ``requires_grad=False``.
    """
    try:
        key_shape = tuple(as_int(s) for s in shape)
    except TypeError:
        key_shape = ()
    if not key_shape or any(s is None or s < 1 for s in key_shape):
        raise MaxcaInputError(f"shape must be a sequence of positive integers, got {shape!r}")
    dev = _normalise_device(device)
    dt = torch.get_default_dtype() if dtype is None else dtype
    key = (key_shape, dev, dt)
    with _lock:
        hit = _cache.get(key)
        if hit is not None and hit[0]._version == hit[1]:
            _cache.move_to_end(key)
            return hit[0]
    grid = _build(key_shape, dev, dt)
    with _lock:
        _cache[key] = (grid, grid._version)
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return grid


def clear_grid_cache() -> None:
    """Drop every cached identity grid (frees their memory, e.g. on an accelerator)."""
    with _lock:
        _cache.clear()
