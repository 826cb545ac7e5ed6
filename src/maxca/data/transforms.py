"""Preprocessing and augmentation of volumes.

* Intensity normalisation (numpy): min-max, percentile clip + min-max, z-score.
* :func:`crop_or_pad` (numpy or torch, centred) returning a :class:`CropPad` record that undoes
  it exactly and updates the affine.
* :func:`resample_volume`: a new shape or spacing on the same physical extent (voxels are cells,
  see ``docs/conventions.md``), linear for images, nearest for labels, affine kept correct.
* Augmentation (torch, per volume, the same geometric change for an image and its label map):
  random flips, small random affine jitter (``affine_grid``/``grid_sample``, linear for images,
  nearest for labels), random gamma/gain/noise. Every random draw comes from a passed
  ``torch.Generator``.

Axis order is always the file's voxel order (``docs/conventions.md``); images are ``(C, *S)``
tensors, label maps ``(1, *S)`` integer tensors.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from maxca._checks import NORMALISATIONS
from maxca.data.io import Volume
from maxca.errors import MaxcaInputError
from maxca.spatial.grid import identity_grid
from maxca.spatial.sample import apply_affine, grid_sample_cpu, sample_grid, volume_tensor

__all__ = [
    "AugmentConfig",
    "CropPad",
    "affine_warp",
    "augment",
    "crop_or_pad",
    "crop_or_pad_volume",
    "normalise_intensity",
    "normalize_intensity",
    "random_affine",
    "random_flip",
    "random_intensity",
    "resample_volume",
    "undo_crop_or_pad",
]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


# ----------------------------------------------------------------------------------------------
# intensity normalisation


def normalise_intensity(
    array: np.ndarray,
    mode: Literal["minmax", "percentile", "zscore"] = "minmax",
    percentiles: tuple[float, float] = (1.0, 99.0),
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Normalise intensities; statistics are taken inside ``mask`` when given.

    Args:
        array: ``(*S)`` image.
        mode: ``"minmax"`` -> ``[0, 1]``; ``"percentile"`` -> clip to the ``percentiles``
            (default p1-p99) then min-max to ``[0, 1]``; ``"zscore"`` -> zero mean, unit
            standard deviation. A constant image gives zeros.
        percentiles: ``(low, high)`` in ``[0, 100]`` for ``"percentile"``.
        mask: optional boolean array of the same shape.

    Returns:
        float32 array of the same shape.
    """
    x = np.asarray(array, dtype=np.float32)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != x.shape:
            raise MaxcaInputError(
                f"normalisation mask shape {mask.shape} differs from image shape {x.shape}"
            )
        values = x[mask]
    else:
        values = x.ravel()
    if values.size == 0:
        raise MaxcaInputError("normalisation: the image (or its mask) has no voxels")
    if mode == "zscore":
        mean, std = float(values.mean()), float(values.std())
        if std == 0.0:
            return np.zeros_like(x)
        return ((x - mean) / std).astype(np.float32)
    if mode == "percentile":
        lo_p, hi_p = percentiles
        if not 0.0 <= lo_p < hi_p <= 100.0:
            raise MaxcaInputError(
                f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}"
            )
        lo, hi = (float(v) for v in np.percentile(values, [lo_p, hi_p]))
        x = np.clip(x, lo, hi)
    elif mode == "minmax":
        lo, hi = float(values.min()), float(values.max())
    else:
        raise MaxcaInputError(f"normalisation must be one of {NORMALISATIONS}, got {mode!r}")
    if hi <= lo:
        return np.zeros_like(x)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def normalize_intensity(*args: Any, **kwargs: Any) -> np.ndarray:
    """Deprecated spelling of :func:`normalise_intensity` (kept for one release)."""
    warnings.warn(
        "normalize_intensity is deprecated; use normalise_intensity",
        DeprecationWarning,
        stacklevel=2,
    )
    return normalise_intensity(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# crop or pad


@dataclass(frozen=True)
class CropPad:
    """What :func:`crop_or_pad` did along the last ``len(original_shape)`` axes.

    ``offset[k]`` maps input to output indices: ``out[p + offset] = in[p]`` (positive = padding
    before, negative = cropping before).
    """

    original_shape: tuple[int, ...]
    target_shape: tuple[int, ...]
    offset: tuple[int, ...]

    def update_affine(self, affine: np.ndarray) -> np.ndarray:
        """Affine of the output grid given the input grid's ``affine`` (same world positions)."""
        shift = np.eye(4)
        shift[: len(self.offset), 3] = [-o for o in self.offset]
        return np.asarray(affine, dtype=np.float64) @ shift

    def inverse(self) -> CropPad:
        """The record that maps the output back onto the input grid."""
        return CropPad(self.target_shape, self.original_shape, tuple(-o for o in self.offset))


def _place(array: ArrayT, record: CropPad, value: float) -> ArrayT:
    """Copy ``array`` (last axes ``record.original_shape``) into a ``target_shape`` canvas."""
    n = len(record.original_shape)
    lead = tuple(array.shape[: array.ndim - n])
    src, dst = [], []
    for size_in, size_out, off in zip(record.original_shape, record.target_shape, record.offset):
        start_in, start_out = max(0, -off), max(0, off)
        length = min(size_in - start_in, size_out - start_out)
        src.append(slice(start_in, start_in + length))
        dst.append(slice(start_out, start_out + length))
    shape = lead + tuple(record.target_shape)
    if isinstance(array, torch.Tensor):
        out = torch.full(shape, value, dtype=array.dtype, device=array.device)
    else:
        out = np.full(shape, value, dtype=array.dtype)
    ellipsis: tuple[Any, ...] = (Ellipsis,)
    out[ellipsis + tuple(dst)] = array[ellipsis + tuple(src)]
    return out


def crop_or_pad(
    array: ArrayT, target_shape: Sequence[int], value: float = 0
) -> tuple[ArrayT, CropPad]:
    """Centred crop and/or pad of the last ``len(target_shape)`` axes.

    Along each axis the difference is split evenly, the odd voxel going to the end:
    ``before = diff // 2`` voxels of padding (or ``(-diff) // 2`` of cropping).

    Args:
        array: ``(..., *S)`` numpy array or torch tensor.
        target_shape: the wanted ``S'``.
        value: fill value of padded voxels.

    Returns:
        ``(out, record)`` with ``out`` of shape ``(..., *S')``; ``undo_crop_or_pad(out, record)``
        restores the input shape (exactly the input where nothing was cropped).
    """
    target = tuple(int(t) for t in target_shape)
    if array.ndim < len(target) or any(t < 1 for t in target):
        raise MaxcaInputError(
            f"crop_or_pad: target shape {target} does not fit array of shape {tuple(array.shape)}"
        )
    original = tuple(int(s) for s in array.shape[array.ndim - len(target) :])
    offset = tuple((t - s) // 2 if t >= s else -((s - t) // 2) for s, t in zip(original, target))
    record = CropPad(original, target, offset)
    return _place(array, record, value), record


def undo_crop_or_pad(array: ArrayT, record: CropPad, value: float = 0) -> ArrayT:
    """Map an array on the output grid of ``record`` back onto its input grid.

    Voxels cropped away by the forward operation come back filled with ``value``.
    """
    n = len(record.target_shape)
    got = tuple(int(s) for s in array.shape[array.ndim - n :]) if array.ndim >= n else ()
    if got != record.target_shape:
        raise MaxcaInputError(
            f"undo_crop_or_pad: expected trailing shape {record.target_shape}, "
            f"got {tuple(array.shape)}"
        )
    return _place(array, record.inverse(), value)


def crop_or_pad_volume(
    volume: Volume, target_shape: Sequence[int], value: float = 0
) -> tuple[Volume, CropPad]:
    """:func:`crop_or_pad` of a :class:`Volume`, its affine shifted so world positions hold."""
    if len(target_shape) != volume.ndim:
        raise MaxcaInputError(
            f"target shape {tuple(target_shape)} has {len(target_shape)} axes, "
            f"volume has {volume.ndim}"
        )
    array, record = crop_or_pad(volume.array, target_shape, value)
    out = Volume(array, record.update_affine(volume.affine), volume.header, volume.path)
    return out, record


# ----------------------------------------------------------------------------------------------
# resampling


def resample_volume(
    volume: Volume,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | float | None = None,
    kind: Literal["image", "label"] = "image",
    antialias: bool = True,
) -> Volume:
    """Resample onto a grid with the same centre and orientation, new shape or spacing.

    Voxels are cells. With ``shape`` the physical extent is kept exactly: along an axis of
    ``n`` -> ``m`` voxels the new spacing is ``old * n / m`` and new voxel ``j`` sits at old
    index ``(j + 0.5) * n / m - 0.5`` (the geometry of ``F.interpolate(align_corners=False)``).
    With ``spacing`` the new spacing is exactly the requested one, ``m = round(n * old / new)``,
    and the grid stays centred on the old one. The affine is updated accordingly
    (``new_affine = affine @ [diag(scale), offset]``). Sampling is
    :func:`maxca.spatial.sample.sample_grid` in float64 with the border value beyond the edge.

    Args:
        volume: the input (2-D or 3-D).
        shape: target spatial shape, or
        spacing: target spacing in mm (scalar or per axis); exactly one of the two.
        kind: ``"image"`` -> linear interpolation (Gaussian pre-smoothing with
            ``sigma = (factor - 1) / 2`` voxels on downsampled axes when ``antialias``);
            ``"label"`` -> nearest neighbour (ties ``x.5`` go to ``x + 1``), dtype kept.
        antialias: see ``kind``.

    Returns:
        the resampled :class:`Volume` (float32 image or the label dtype).
    """
    if (shape is None) == (spacing is None):
        raise MaxcaInputError("resample_volume: give exactly one of shape or spacing")
    if kind not in ("image", "label"):
        raise MaxcaInputError(f"kind must be 'image' or 'label', got {kind!r}")
    nd = volume.ndim
    old_shape = np.array(volume.shape, dtype=np.float64)
    if shape is not None:
        new_shape = np.array([int(s) for s in shape])
        if new_shape.size != nd or np.any(new_shape < 1):
            raise MaxcaInputError(
                f"resample_volume: target shape {tuple(shape)} must have {nd} positive sizes"
            )
        scale = old_shape / new_shape
    else:
        target = np.asarray(spacing, dtype=np.float64).ravel()
        if target.size not in (1, nd) or np.any(target <= 0):
            raise MaxcaInputError(
                f"resample_volume: spacing {spacing!r} must be positive, 1 or {nd} values"
            )
        scale = np.broadcast_to(target, (nd,)) / np.array(volume.spacing)
        new_shape = np.maximum(1, np.round(old_shape / scale)).astype(int)
    # old index x = scale * j + offset, centred: the centres of both grids coincide
    offset = (old_shape - 1) / 2 - scale * (new_shape - 1) / 2

    data = volume.array
    if kind == "image":
        data = data.astype(np.float32, copy=False)
        sigma = np.where(scale > 1, (scale - 1) / 2, 0.0)
        if antialias and np.any(sigma > 0):
            data = ndimage.gaussian_filter(data, sigma=sigma, mode="nearest")
    # old index x = scale * j + offset, sampled in float64 with the border value outside
    coords = apply_affine(
        np.diag(scale), offset, identity_grid(tuple(new_shape), dtype=torch.float64)
    )
    if kind == "label":  # nearest voxel, ties rounded up (x.5 -> x + 1) on every axis
        coords = torch.floor(coords + 0.5)
    mode = "linear" if kind == "image" else "nearest"
    out = sample_grid(volume_tensor(data), coords, mode, "border")[0, 0].numpy()
    out = out.astype(np.float32) if kind == "image" else out.astype(data.dtype, copy=False)
    step = np.eye(4)
    step[:nd, :nd] = np.diag(scale)
    step[:nd, 3] = offset
    return Volume(out, volume.affine @ step, volume.header, volume.path)


# ----------------------------------------------------------------------------------------------
# augmentation (torch, per volume)


def _check_image_label(image: torch.Tensor, label: torch.Tensor | None) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
        raise MaxcaInputError(
            f"augmentation expects an image tensor (C, *S) with 2 or 3 spatial axes, got "
            f"{tuple(getattr(image, 'shape', ()))}"
        )
    if label is not None and (label.ndim != image.ndim or label.shape[1:] != image.shape[1:]):
        raise MaxcaInputError(
            f"label shape {tuple(label.shape)} does not match image shape {tuple(image.shape)}"
        )


def _uniform(generator: torch.Generator | None, low: float, high: float, n: int = 1) -> list[float]:
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return (low + (high - low) * u).tolist()


def random_flip(
    image: torch.Tensor,
    label: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    axes: Sequence[int] | None = None,
    p: float = 0.5,
    label_swap: Mapping[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Flip each of ``axes`` (spatial axis indices, default all) with probability ``p``.

    The same flips are applied to ``image`` ``(C, *S)`` and ``label`` ``(1, *S)``. A flip
    across the left-right axis turns left structures into right ones: pass ``label_swap``
    (e.g. ``{2: 41, 41: 2, ...}``) to relabel them after any flip.
    """
    _check_image_label(image, label)
    nd = image.ndim - 1
    axes = tuple(range(nd)) if axes is None else tuple(int(a) for a in axes)
    if any(not 0 <= a < nd for a in axes):
        raise MaxcaInputError(f"flip axes must be in [0, {nd - 1}], got {axes}")
    draws = _uniform(generator, 0.0, 1.0, len(axes))
    dims = [a + 1 for a, u in zip(axes, draws) if u < p]
    if not dims:
        return image, label
    image = torch.flip(image, dims)
    if label is not None:
        label = torch.flip(label, dims)
        if label_swap:
            swapped = label.clone()
            for src, dst in label_swap.items():
                swapped[label == src] = dst
            label = swapped
    return image, label


def _rotation(nd: int, angles: Sequence[float]) -> np.ndarray:
    """Product of plane rotations in voxel axis order: (0,1) for 2-D; (0,1), (0,2), (1,2) in 3-D."""
    planes = [(0, 1)] if nd == 2 else [(0, 1), (0, 2), (1, 2)]
    rot = np.eye(nd)
    for (a, b), angle in zip(planes, angles):
        r = np.eye(nd)
        c, s = math.cos(angle), math.sin(angle)
        r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
        rot = rot @ r
    return rot


def affine_warp(
    image: torch.Tensor,
    matrix: np.ndarray | torch.Tensor,
    label: torch.Tensor | None = None,
    translation: Sequence[float] | None = None,
    padding_mode: str = "zeros",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resample by a linear map about the volume centre, in voxel axis order.

    The output voxel ``p`` takes the input value at ``c + matrix @ (p - c) + translation`` with
    ``c = (S - 1) / 2`` (pull convention, voxel units). Implemented with ``affine_grid`` and
    ``grid_sample(align_corners=True)``, axes reversed into ``grid_sample``'s x, y, z order.

    Args:
        image: ``(C, *S)`` float tensor, sampled linearly.
        matrix: ``(d, d)`` linear part.
        label: optional ``(1, *S)`` integer tensor, sampled nearest (dtype kept).
        translation: optional shift in voxels (default 0).
        padding_mode: ``grid_sample`` padding for the image (labels pad with 0).
    """
    _check_image_label(image, label)
    nd = image.ndim - 1
    size = np.array(image.shape[1:], dtype=np.float64)
    if np.any(size < 2):
        raise MaxcaInputError(f"affine_warp needs every spatial size >= 2, got {tuple(size)}")
    A = np.asarray(matrix, dtype=np.float64)
    if A.shape != (nd, nd):
        raise MaxcaInputError(f"affine_warp matrix must be ({nd}, {nd}), got {A.shape}")
    t = np.zeros(nd) if translation is None else np.asarray(translation, dtype=np.float64)
    norm = 2.0 / (size - 1)  # normalised n = norm * (p - c)
    lin = (norm[:, None] * A) / norm[None, :]
    shift = norm * t
    theta = np.zeros((nd, nd + 1))
    theta[:, :nd] = lin[::-1, ::-1]  # grid_sample's x is the last array axis
    theta[:, nd] = shift[::-1]
    dtype = image.dtype if image.is_floating_point() else torch.float32
    theta_t = torch.as_tensor(theta, dtype=dtype, device=image.device)[None]
    grid = F.affine_grid(theta_t, [1, image.shape[0], *image.shape[1:]], align_corners=True)
    out = grid_sample_cpu(image[None].to(dtype), grid, "bilinear", padding_mode)[0]
    out_label = None
    if label is not None:
        warped = grid_sample_cpu(label[None].to(dtype), grid, "nearest", "zeros")[0]
        out_label = torch.round(warped).to(label.dtype)
    return out, out_label


def random_affine(
    image: torch.Tensor,
    label: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    rotation_deg: float = 5.0,
    scale: float = 0.05,
    translation_vox: float = 0.0,
    spacing: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Small random affine jitter of an image and its label map (same transform).

    Rotation angles (one in 2-D, three in 3-D) ~ U(-rotation_deg, rotation_deg) degrees, per-axis
    scale ~ 1 + U(-scale, scale), translation ~ U(-translation_vox, translation_vox) voxels.
    With ``spacing`` (mm per axis) the rotation is rigid in mm, otherwise in voxel units.
    The image is sampled linearly, the label nearest (see :func:`affine_warp`).
    """
    _check_image_label(image, label)
    nd = image.ndim - 1
    n_angles = 1 if nd == 2 else 3
    angles = [math.radians(a) for a in _uniform(generator, -rotation_deg, rotation_deg, n_angles)]
    scales = [1.0 + s for s in _uniform(generator, -scale, scale, nd)]
    shifts = _uniform(generator, -translation_vox, translation_vox, nd)
    A = _rotation(nd, angles) @ np.diag(scales)
    if spacing is not None:
        s = np.asarray(spacing, dtype=np.float64)
        if s.shape != (nd,) or np.any(s <= 0):
            raise MaxcaInputError(f"spacing must be {nd} positive values, got {spacing!r}")
        A = np.diag(1.0 / s) @ A @ np.diag(s)
    return affine_warp(image, A, label, translation=shifts)


def random_intensity(
    image: torch.Tensor,
    generator: torch.Generator | None = None,
    gamma: float = 0.3,
    gain: float = 0.1,
    noise_std: float = 0.01,
) -> torch.Tensor:
    """Random gamma, gain and additive Gaussian noise.

    * gamma: ``g = exp(U(-gamma, gamma))`` applied to the image rescaled to [0, 1] by its own
      min/max (then mapped back to the original range, so negative intensities are fine);
    * gain: multiply by ``1 + U(-gain, gain)``;
    * noise: add ``N(0, sigma^2)`` with ``sigma ~ U(0, noise_std)``.

    Args:
        image: ``(C, *S)`` float tensor.

    Returns:
        a tensor of the same shape and dtype.
    """
    _check_image_label(image, None)
    (log_g,) = _uniform(generator, -gamma, gamma)
    (k,) = _uniform(generator, 1.0 - gain, 1.0 + gain)
    (sigma,) = _uniform(generator, 0.0, noise_std)
    out = image
    if gamma > 0:
        lo, hi = out.amin(), out.amax()
        span = (hi - lo).clamp_min(torch.finfo(out.dtype).tiny)
        out = lo + span * ((out - lo) / span).clamp(0, 1) ** math.exp(log_g)
    out = out * k
    if noise_std > 0:
        noise = torch.randn(out.shape, generator=generator, dtype=out.dtype)
        out = out + sigma * noise.to(out.device)
    return out


@dataclass
class AugmentConfig:
    """Per-volume augmentation settings (0 disables a component).

    Attributes:
        flip_axes: spatial axes that may be flipped (default none: a flip of one volume of a
            pair mirrors anatomy, and left/right labels then need ``label_swap``).
        flip_prob: probability of each flip.
        label_swap: label ids exchanged after a flip (``{left: right, right: left, ...}``).
        rotation_deg: maximum absolute rotation angle in degrees.
        scale: maximum relative scale change per axis.
        translation_vox: maximum shift in voxels.
        gamma: maximum absolute log-gamma.
        gain: maximum relative gain change.
        noise_std: maximum standard deviation of the additive noise.
    """

    flip_axes: tuple[int, ...] = ()
    flip_prob: float = 0.5
    label_swap: dict[int, int] | None = None
    rotation_deg: float = 5.0
    scale: float = 0.05
    translation_vox: float = 0.0
    gamma: float = 0.3
    gain: float = 0.1
    noise_std: float = 0.01


def augment(
    image: torch.Tensor,
    label: torch.Tensor | None,
    generator: torch.Generator | None,
    config: AugmentConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Flip, affine jitter and intensity changes of one image ``(C, *S)`` and its label map."""
    cfg = config or AugmentConfig()
    if cfg.flip_axes:
        image, label = random_flip(
            image, label, generator, cfg.flip_axes, cfg.flip_prob, cfg.label_swap
        )
    if cfg.rotation_deg > 0 or cfg.scale > 0 or cfg.translation_vox > 0:
        image, label = random_affine(
            image, label, generator, cfg.rotation_deg, cfg.scale, cfg.translation_vox
        )
    if cfg.gamma > 0 or cfg.gain > 0 or cfg.noise_std > 0:
        image = random_intensity(image, generator, cfg.gamma, cfg.gain, cfg.noise_std)
    return image, label
