"""The one sampler: values of an image at arbitrary voxel coordinates.

Every resampling in maxca goes through :func:`sample_grid`: warping by a flow
(:func:`maxca.spatial.warp`), moving images between grids through their affines
(:mod:`maxca.inference.register`) and resizing volumes
(:func:`maxca.data.transforms.resample_volume`).
Voxel index ``p`` is voxel centre ``p``: ``F.grid_sample`` with ``align_corners=True`` on
coordinates normalised as ``2 p / (n - 1) - 1``, channels reversed into grid_sample's
x = last axis order (docs/conventions.md).

On CPU, ``F.grid_sample`` parallelises over the batch only (torch 2.13), so a single pair
(``B = 1``) ran on one thread whatever ``torch.get_num_threads()`` said. :func:`grid_sample_cpu`
splits the output grid into as many slabs as there are threads along its first axis and samples
them as a batch of views of the same image (no copy): the values are bit-for-bit those of one
call (each output point is computed by the same code from the same inputs), and on 2 threads a
3-D warp of 80x96x112 by a smooth flow took 0.56x the time forward and 0.62x forward + backward
(``benchmarks/sampler_threads.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from maxca._checks import check_choice, shape_str
from maxca.errors import MaxcaInputError

__all__ = [
    "SAMPLE_MODES",
    "PADDING_MODES",
    "sample_grid",
    "apply_affine",
    "volume_tensor",
    "work_dtype",
    "grid_sample_cpu",
]

SAMPLE_MODES = ("linear", "nearest")
PADDING_MODES = ("zeros", "border")

_GRID_SAMPLE_MODE = {"linear": "bilinear", "nearest": "nearest"}  # "bilinear" is trilinear in 3-D
_PAD_MODE = {"zeros": "constant", "border": "replicate"}


def work_dtype(image: torch.Tensor, coords_dtype: torch.dtype, mode: str) -> torch.dtype:
    """The floating dtype grid_sample runs in (image and coordinates must share it).

    Floating images: the promoted dtype of image and coordinates. Integer/bool label maps:
    float64 for int32/int64 with ``"nearest"`` (exact for every int32 and every int64 below
    ``2**53``), else the coordinates' dtype promoted with float32 (exact for bool, uint8, int8,
    int16).
    """
    if image.is_floating_point():
        return torch.promote_types(image.dtype, coords_dtype)
    if mode == "nearest" and image.dtype in (torch.int32, torch.int64):
        return torch.float64
    return torch.promote_types(coords_dtype, torch.float32)


def apply_affine(matrix: np.ndarray, offset: np.ndarray, points: torch.Tensor) -> torch.Tensor:
    """``matrix @ points + offset`` for points ``(d, *S)`` -> ``(d, *S)`` (same dtype/device).

    Zero entries of ``matrix`` are skipped, so an axis-aligned map costs ``d`` multiplications
    per voxel and copies no rounding noise from the zero terms.
    """
    d = points.shape[0]
    out = [
        sum(float(matrix[i, j]) * points[j] for j in range(d) if matrix[i, j] != 0.0)
        + float(offset[i])
        for i in range(d)
    ]
    return torch.stack([o if torch.is_tensor(o) else torch.full_like(points[0], o) for o in out])


def sample_grid(
    image: torch.Tensor,
    coords: torch.Tensor,
    mode: str = "linear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Sample ``image`` at voxel coordinates ``coords``: ``out(q) = image(coords(q))``.

    Args:
        image: ``(B, C, *S_in)`` with 2 or 3 spatial axes; floating, or an integer/bool label map.
        coords: ``(d, *S_out)`` (shared by the batch) or ``(B, d, *S_out)`` floating voxel
            coordinates in ``image``'s array axis order (channel ``k`` = index along axis ``k``).
        mode: ``"linear"`` (bi/trilinear) or ``"nearest"`` (label maps: values copied exactly).
        padding_mode: ``"zeros"`` (outside the image is zero, blended linearly at the edge) or
            ``"border"`` (coordinates clamped to the image).

    Returns:
        ``(B, C, *S_out)``: integer/bool images sampled ``"nearest"`` keep their dtype; every
        other case returns :func:`work_dtype`. Differentiable with respect to ``image`` and
        (linear) ``coords``.

    Axes of size 1 are padded by one voxel on each side (zeros or replicated, per
    ``padding_mode``), so grid_sample never divides by zero and coordinates along them behave
    as along any other axis.
    """
    check_choice(mode, "mode", SAMPLE_MODES)
    check_choice(padding_mode, "padding_mode", PADDING_MODES)
    d = image.dim() - 2
    if coords.dim() == d + 1:
        coords = coords.unsqueeze(0).expand(image.shape[0], *coords.shape)
    if coords.dim() != d + 2 or coords.shape[1] != d:
        raise MaxcaInputError(
            f"coords must have {d} channels for a {d}-D image, got shape {shape_str(coords.shape)}"
        )
    work = work_dtype(image, coords.dtype, mode)
    src = image.to(work)
    coords = coords.to(work)
    sizes: Sequence[int] = list(image.shape[2:])
    offsets = [0] * d
    if 1 in sizes:  # grid_sample cannot normalise a size-1 axis: pad it to 3 voxels
        pad: list[int] = []  # F.pad order: last axis first, (before, after) pairs
        for k in reversed(range(d)):
            pad += [1, 1] if sizes[k] == 1 else [0, 0]
        src = F.pad(src, pad, mode=_PAD_MODE[padding_mode])
        offsets = [1 if n == 1 else 0 for n in sizes]
        sizes = [3 if n == 1 else n for n in sizes]
    sample = torch.stack(
        [(coords[:, k] + offsets[k]) * (2.0 / (sizes[k] - 1)) - 1.0 for k in reversed(range(d))],
        dim=-1,
    )  # (B, *S_out, d) in grid_sample's x = last axis order
    out = grid_sample_cpu(src, sample, _GRID_SAMPLE_MODE[mode], padding_mode)
    if mode == "nearest" and not image.is_floating_point():
        out = out.round().to(image.dtype)
    return out


#: below this many output points a single ``F.grid_sample`` call is kept (splitting costs more)
SPLIT_MIN_POINTS = 32_768


def grid_sample_cpu(
    src: torch.Tensor,
    grid: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    threads: int | None = None,
) -> torch.Tensor:
    """``F.grid_sample(src, grid, mode, padding_mode, align_corners=True)``, threaded on CPU.

    Args:
        src: ``(B, C, *S_in)`` (2 or 3 spatial axes).
        grid: ``(B, *S_out, d)`` normalised coordinates in grid_sample's x = last axis order.
        mode, padding_mode: as ``F.grid_sample``.
        threads: slabs to split into (default ``torch.get_num_threads()``).

    Returns:
        ``(B, C, *S_out)``, equal to the single call. A CPU tensor with ``B = 1``, ``k > 1``
        threads and at least :data:`SPLIT_MIN_POINTS` output points is sampled as ``k`` slabs
        of the first output axis (the grid padded by repeating its last slab when that axis is
        not a multiple of ``k``), each with a view of ``src``; otherwise in one call (CUDA,
        batches, small grids). Differentiable as ``F.grid_sample`` (the gradient of ``src``
        is the sum over slabs: equal up to float rounding).
    """
    k = torch.get_num_threads() if threads is None else int(threads)
    n = grid.shape[1]
    k = min(k, n)
    if (
        src.device.type != "cpu"
        or src.shape[0] != 1
        or k < 2
        or grid[0, ..., 0].numel() < SPLIT_MIN_POINTS
    ):
        return F.grid_sample(src, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    pad = -n % k
    if pad:
        grid = torch.cat([grid, grid[:, -1:].expand(1, pad, *grid.shape[2:])], dim=1)
    slabs = grid.reshape(k, (n + pad) // k, *grid.shape[2:])  # (k, n / k, *S_out[1:], d)
    out = F.grid_sample(
        src.expand(k, *src.shape[1:]),
        slabs,
        mode=mode,
        padding_mode=padding_mode,
        align_corners=True,
    )  # (k, C, n / k, *S_out[1:])
    out = out.transpose(0, 1).reshape(1, src.shape[1], n + pad, *out.shape[3:])
    return out[:, :, :n] if pad else out


def volume_tensor(array: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """A ``(*S)`` numpy volume as a ``(1, 1, *S)`` tensor :func:`sample_grid` can read.

    Floating arrays keep their dtype; label maps keep an integer dtype torch has (uint16 ->
    int32, uint32/uint64 -> int64, bool -> uint8), so nearest sampling copies them exactly.
    """
    arr = np.ascontiguousarray(array)
    if arr.dtype == np.uint16:
        arr = arr.astype(np.int32)
    elif arr.dtype in (np.uint32, np.uint64):
        arr = arr.astype(np.int64)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    return torch.from_numpy(arr)[None, None].to(device)
