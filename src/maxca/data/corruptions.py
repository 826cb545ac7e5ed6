"""Graded image corruptions for robustness tests: noise, MR artefacts, contrast, anatomy.

Every corruption is a pure function ``fn(image, severity, *, seed=0, labels=None,
spacing=None) -> Corrupted(image, labels)``:

* ``image``: ``(X, Y[, Z])`` numpy array or torch tensor, one spatial volume (no batch or
  channel axis), voxel axes in array order (``X`` = array axis 0, ...; the orientation lives in
  the volume's affine, see ``docs/conventions.md``). The output image has the same shape and
  type (numpy in, numpy out; tensor in, tensor out; floating inputs keep their dtype, integer
  images come back as float32).
* ``severity``: an integer ``0 .. n`` (``n = len(CORRUPTIONS[name].levels)``, 4 for every
  corruption here). Severity 0 returns the input unchanged (a copy with exactly its values);
  severity ``s >= 1`` uses the physical parameter ``levels[s - 1]`` described by
  :func:`severity_levels`.
* ``seed``: an int or a ``torch.Generator``: the same seed gives the same corruption.
* ``labels``: optional ``(X, Y[, Z])`` integer label map on the image's grid. It defines the
  foreground (``labels > 0``) for the noise levels and the lesion site, is required by the
  label-wise contrast re-draw, and is deformed together with the image by ``extreme_anatomy``
  (nearest neighbour). Every other corruption returns it unchanged.
* ``spacing``: voxel size in mm per array axis (default 1 mm); used by ``thick_slices``,
  ``synthetic_lesion`` and ``extreme_anatomy``, whose parameters are in mm.

Without labels the foreground is ``image > 0.1 * (99th percentile of the image)``
(:func:`foreground_mask`).

:data:`CORRUPTIONS` maps each name to a :class:`CorruptionSpec`; :func:`apply_corruption`
validates the name and severity and calls the function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from maxca.data.synth import as_generator, random_smooth_deformation
from maxca.errors import MaxcaInputError
from maxca.spatial import warp

__all__ = [
    "CORRUPTIONS",
    "Corrupted",
    "CorruptionSpec",
    "anatomy_deformation",
    "apply_corruption",
    "bias_field",
    "contrast_gamma",
    "corruption_names",
    "extreme_anatomy",
    "foreground_mask",
    "gaussian_noise",
    "gibbs_ringing",
    "label_contrast",
    "lesion_weight",
    "missing_slab",
    "motion_ghosting",
    "rician_noise",
    "severity_levels",
    "slab_range",
    "smooth_bias_field",
    "synthetic_lesion",
    "thick_slice_matrix",
    "thick_slices",
]

Array = Any  # np.ndarray | torch.Tensor


class Corrupted(NamedTuple):
    """A corrupted image and its label map (the input's, or deformed with the image)."""

    image: Array
    labels: Array | None


# ----------------------------------------------------------------------------------------------
# conversions and checks


def _to_work(image: Array) -> torch.Tensor:
    """``(*S)`` numpy/tensor image -> float64 CPU tensor (a copy)."""
    if isinstance(image, torch.Tensor):
        t = image.detach().to("cpu")
    elif isinstance(image, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(image))
    else:
        raise MaxcaInputError(
            f"image must be a numpy array or a torch tensor, got {type(image).__name__}"
        )
    if t.dim() not in (2, 3):
        raise MaxcaInputError(
            f"image must be a 2-D or 3-D volume (X, Y[, Z]), got shape {tuple(t.shape)}"
        )
    if t.is_complex():
        raise MaxcaInputError("image must be real-valued, got a complex array")
    return t.to(torch.float64).clone()


def _out_dtype(image: Array) -> Any:
    if isinstance(image, torch.Tensor):
        return image.dtype if image.is_floating_point() else torch.float32
    return image.dtype if np.issubdtype(image.dtype, np.floating) else np.float32


def _from_work(work: torch.Tensor, like: Array) -> Array:
    """float64 tensor -> the type (numpy/tensor), dtype and device of ``like``."""
    dtype = _out_dtype(like)
    if isinstance(like, torch.Tensor):
        return work.to(device=like.device, dtype=dtype)
    return work.numpy().astype(dtype)


def _copy(image: Array) -> Array:
    """Severity 0: the input's values, in the output type of the corruption."""
    dtype = _out_dtype(image)
    if isinstance(image, torch.Tensor):
        return image.detach().clone().to(dtype)
    if not isinstance(image, np.ndarray):
        raise MaxcaInputError(
            f"image must be a numpy array or a torch tensor, got {type(image).__name__}"
        )
    return image.astype(dtype, copy=True)


def _labels_work(labels: Array | None, shape: Sequence[int]) -> torch.Tensor | None:
    if labels is None:
        return None
    lab = (
        labels.detach().cpu()
        if isinstance(labels, torch.Tensor)
        else torch.from_numpy(np.ascontiguousarray(labels))
    )
    if lab.is_floating_point() or lab.is_complex():
        raise MaxcaInputError(f"labels must hold integers, got dtype {lab.dtype}")
    if tuple(lab.shape) != tuple(shape):
        raise MaxcaInputError(
            f"labels must have the image's shape {tuple(shape)}, got {tuple(lab.shape)}"
        )
    return lab.to(torch.int64)


def _spacing(spacing: Sequence[float] | None, d: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * d
    sp = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).ravel())
    if len(sp) == 1:
        sp = sp * d
    if len(sp) != d or not all(math.isfinite(s) and s > 0 for s in sp):
        raise MaxcaInputError(f"spacing must be {d} positive values in mm, got {spacing!r}")
    return sp


def _axis(axis: int, d: int) -> int:
    if isinstance(axis, bool) or int(axis) != axis or not -d <= axis < d:
        raise MaxcaInputError(f"axis must be an integer in {-d}..{d - 1}, got {axis!r}")
    return int(axis) % d


def foreground_mask(image: Array, labels: Array | None = None) -> torch.Tensor:
    """The foreground used for noise levels and lesion sites.

    Args:
        image: ``(*S)`` image.
        labels: optional ``(*S)`` label map; when given the foreground is ``labels > 0``.

    Returns:
        ``(*S)`` bool tensor: ``labels > 0``, else ``image > 0.1 * percentile_99(image)``
        (the whole image when that is empty).
    """
    work = _to_work(image)
    lab = _labels_work(labels, work.shape)
    if lab is not None:
        mask = lab > 0
    else:
        p99 = float(np.percentile(work.numpy(), 99.0))
        mask = work > 0.1 * p99
    if not bool(mask.any()):
        mask = torch.ones_like(work, dtype=torch.bool)
    return mask


def _fg_mean(work: torch.Tensor, lab: torch.Tensor | None) -> float:
    mask = (lab > 0) if lab is not None else None
    if mask is None or not bool(mask.any()):
        p99 = float(np.percentile(work.numpy(), 99.0))
        mask = work > 0.1 * p99
    if not bool(mask.any()):
        mask = torch.ones_like(work, dtype=torch.bool)
    mean = float(work[mask].mean())
    if not mean > 0:
        raise MaxcaInputError(
            f"the image's foreground mean must be > 0 to set a noise level by SNR, got {mean:.4g}"
        )
    return mean


# ----------------------------------------------------------------------------------------------
# the corruptions


def gaussian_noise(
    image: Array,
    severity: int,
    *,
    seed: int | torch.Generator = 0,
    labels: Array | None = None,
    spacing: Sequence[float] | None = None,
) -> Corrupted:
    """Additive white Gaussian noise at a signal-to-noise ratio.

    ``out = image + sigma * n``, ``n ~ N(0, 1)`` i.i.d., ``sigma = mean_fg(image) / SNR`` with
    ``mean_fg`` the mean over the foreground (:func:`foreground_mask`). SNR per severity:
    :data:`CORRUPTIONS` ``["gaussian_noise"].levels``.
    """
    snr = _level("gaussian_noise", severity)
    if snr is None:
        return Corrupted(_copy(image), labels)
    work = _to_work(image)
    lab = _labels_work(labels, work.shape)
    sigma = _fg_mean(work, lab) / snr
    g = as_generator(seed)
    noise = torch.randn(work.shape, generator=g, dtype=torch.float64)
    return Corrupted(_from_work(work + sigma * noise, image), labels)


def rician_noise(
    image: Array,
    severity: int,
    *,
    seed: int | torch.Generator = 0,
    labels: Array | None = None,
    spacing: Sequence[float] | None = None,
) -> Corrupted:
    """Rician noise, the noise of magnitude MR images, at a signal-to-noise ratio.

    ``out = sqrt((image + sigma * n1)^2 + (sigma * n2)^2)`` with ``n1, n2 ~ N(0, 1)`` i.i.d. and
    ``sigma = mean_fg(image) / SNR``: non-negative everywhere, and biased upward where the signal
    is low (the background mean becomes ``sigma * sqrt(pi / 2)``).
    """
    snr = _level("rician_noise", severity)
    if snr is None:
        return Corrupted(_copy(image), labels)
    work = _to_work(image)
    lab = _labels_work(labels, work.shape)
    sigma = _fg_mean(work, lab) / snr
    g = as_generator(seed)
    n1 = torch.randn(work.shape, generator=g, dtype=torch.float64)
    n2 = torch.randn(work.shape, generator=g, dtype=torch.float64)
    out = torch.sqrt((work + sigma * n1) ** 2 + (sigma * n2) ** 2)
    return Corrupted(_from_work(out, image), labels)


#: Cosine frequencies per axis of the bias field (0, 1, 2 half-periods over the axis).
BIAS_MAX_FREQUENCY = 2


def smooth_bias_field(
    shape: Sequence[int], amplitude: float, seed: int | torch.Generator = 0
) -> torch.Tensor:
    """A smooth, positive multiplicative field with a given amplitude.

    ``log f(p) = c * sum_k a_k prod_i cos(pi k_i p_i / (n_i - 1))`` over the integer frequency
    vectors ``k`` with ``0 <= k_i <= 2`` (not all zero), ``a_k ~ N(0, 1)``: a band-limited field
    (only the lowest three DCT-I frequencies per axis). ``c`` scales it so that
    ``max |log f| = log(1 + amplitude)``: the field lies in ``[1 / (1 + a), 1 + a]`` and reaches
    one of the bounds.

    Args:
        shape: spatial shape ``(X, Y[, Z])``, every axis >= 2 voxels.
        amplitude: ``a >= 0`` (0 gives a field of ones).
        seed: int or ``torch.Generator``.

    Returns:
        ``(*shape)`` float64 tensor, strictly positive.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 2:
        raise MaxcaInputError(f"shape must have 2 or 3 axes of >= 2 voxels, got {shape}")
    if not amplitude >= 0:
        raise MaxcaInputError(f"amplitude must be >= 0, got {amplitude!r}")
    g = as_generator(seed)
    f = BIAS_MAX_FREQUENCY + 1
    coeff = torch.randn((f,) * len(shape), generator=g, dtype=torch.float64)
    coeff[(0,) * len(shape)] = 0.0
    log_f = coeff
    for n in shape:  # contract one axis at a time with its cosine basis
        p = torch.arange(n, dtype=torch.float64)
        basis = torch.cos(math.pi * torch.arange(f, dtype=torch.float64)[:, None] * p / (n - 1))
        log_f = torch.tensordot(log_f, basis, dims=([0], [0]))  # moves the new axis last
    peak = float(log_f.abs().max())
    scale = math.log1p(amplitude) / peak if peak > 0 else 0.0
    return torch.exp(log_f * scale)


def bias_field(
    image: Array,
    severity: int,
    *,
    seed: int | torch.Generator = 0,
    labels: Array | None = None,
    spacing: Sequence[float] | None = None,
) -> Corrupted:
    """Multiply by a smooth bias field (:func:`smooth_bias_field`) of a given amplitude."""
    amp = _level("bias_field", severity)
    if amp is None:
        return Corrupted(_copy(image), labels)
    work = _to_work(image)
    field = smooth_bias_field(work.shape, amp, seed)
    return Corrupted(_from_work(work * field, image), labels)


def _fft_axes(d: int) -> tuple[int, ...]:
    return tuple(range(d))


def gibbs_ringing(
    image: Array,
    severity: int,
    *,
    seed: int | torch.Generator = 0,
    labels: Array | None = None,
    spacing: Sequence[float] | None = None,
) -> Corrupted:
    """Gibbs ringing from k-space truncation.

    The image's discrete Fourier transform keeps, along every axis, the frequencies with
    ``|k| <= fraction * (n / 2)`` (``fraction`` = the central fraction of k-space kept, per
    severity) and sets the others to zero; the output is the real part of the inverse
    transform. A constant image is unchanged (only its zero frequency is non-zero) and an edge
    overshoots (about 9 % of the step). Deterministic: ``seed`` is not used.
    """
    frac = _level("gibbs_ringing", severity)
    if frac is None:
        return Corrupted(_copy(image), labels)
    work = _to_work(image)
    d = work.dim()
    k = torch.fft.fftn(work, dim=_fft_axes(d))
    for axis, n in enumerate(work.shape):
        freq = torch.fft.fftfreq(n, dtype=torch.float64).abs()  # cycles / voxel, <= 0.5
        keep = (freq <= frac * 0.5 + 1e-12).to(k.dtype)
        view = [1] * d
        view[axis] = n
        k = k * keep.view(view)
    out = torch.fft.ifftn(k, dim=_fft_axes(d)).real
    return Corrupted(_from_work(out, image), labels)


#: Ghosting: every ``GHOST_PERIOD``-th phase-encoding line carries the phase error.
GHOST_PERIOD = 4


def motion_ghosting(
    image: Array,
    severity: int,
    *,
    seed: int | torch.Generator = 0,
    labels: Array | None = None,
    spacing: Sequence[float] | None = None,
    axis: int = 1,
) -> Corrupted:
    """Motion ghosts from k-space phase errors on a fraction of the phase-encoding lines.

    Along ``axis`` (the phase-encoding direction, default array axis 1), the k-space lines
    ``k = r, r + N, r + 2N, ...`` (``N = GHOST_PERIOD = 4``, a quarter of the lines; ``r`` drawn
    from the seed) are multiplied by ``exp(i phi)``, ``phi`` per severity, with a random sign; the
    output is the magnitude of the inverse transform. Such a periodic error adds ``N - 1`` ghost
    copies of the image shifted by multiples of ``n / N`` voxels (FOV / N) along ``axis``, each
    with relative amplitude ``2 sin(phi / 2) / N``.
    """
    phi = _level("motion_ghosting", severity)
    if phi is None:
        return Corrupted(_copy(image), labels)
    work = _to_work(image)
    d = work.dim()
    ax = _axis(axis, d)
    n = work.shape[ax]
    g = as_generator(seed)
    r = int(torch.randint(0, GHOST_PERIOD, (1,), generator=g))
    sign = 1.0 if float(torch.rand((1,), generator=g)) < 0.5 else -1.0
    k = torch.fft.fft(work, dim=ax)
    lines = (torch.arange(n) % GHOST_PERIOD) == r
    factor = torch.ones(n, dtype=k.dtype)
    factor[lines] = complex(math.cos(sign * phi), math.sin(sign * phi))
    view = [1] * d
    view[ax] = n
    out = torch.fft.ifft(k * factor.view(view), dim=ax).abs()
    return Corrupted(_from_work(out, image), labels)


def _interp_matrix(positions: np.ndarray, n: int) -> np.ndarray:
    """``(len(positions), n)`` linear interpolation weights at voxel positions (clamped)."""
    p = np.clip(np.asarray(positions, dtype=np.float64), 0.0, n - 1.0)
    i0 = np.floor(p).astype(np.int64)
    i0 = np.minimum(i0, n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    w = p - i0
    m = np.zeros((p.size, n), dtype=np.float64)
    rows = np.arange(p.size)
    np.add.at(m, (rows, i0), 1.0 - w)
    np.add.at(m, (rows, i1), w)
    return m


def thick_slice_matrix(n: int, thickness_vox: float, offset: float) -> np.ndarray:
    """The ``(n, n)`` linear operator of :func:`thick_slices` along one axis.

    Slices of thickness ``T = thickness_vox`` voxels have centres ``c_j = offset + j T``
    (``j`` such that the slices cover ``[0, n - 1]``); a slice's value is the mean of the
    linearly interpolated profile over ``[c_j - T / 2, c_j + T / 2]`` (midpoint rule with
    ``ceil(4 T)`` points, clamped at the ends); voxel ``i`` takes the linear interpolation of
    the slice values at ``(i - c_0) / T``. Every row sums to 1, so a constant is unchanged.
    """
    T = float(thickness_vox)
    j_lo = math.floor((0.0 - offset) / T) - 1
    j_hi = math.ceil((n - 1.0 - offset) / T) + 1
    centres = offset + T * np.arange(j_lo, j_hi + 1)
    m = max(2, math.ceil(4 * T))
    sub = (np.arange(m) + 0.5) / m - 0.5  # midpoints across one slice, in units of T
    down = _interp_matrix((centres[:, None] + T * sub[None, :]).ravel(), n)
    down = down.reshape(len(centres), m, n).mean(axis=1)  # (J, n)
    up = _interp_matrix((np.arange(n) - centres[0]) / T, len(centres))  # (n, J)
    return up @ down


def thick_slices(
    image: Array,
    severity: int,
    *,
    seed: int | torch.Generator = 0,
    labels: Array | None = None,
    spacing: Sequence[float] | None = None,
    axis: int = 2,
) -> Corrupted:
    """Thick slices: down-sample one axis to a slice thickness in mm, then back.

    Along ``axis`` (default 2; for a 2-D image an axis beyond its last means its last), the
    profile is averaged over slabs ``t`` mm thick (``t`` per severity, converted to voxels with
    ``spacing[axis]``), sampled every ``t`` mm from a random offset, and linearly interpolated
    back onto the original voxels (:func:`thick_slice_matrix`). An image
    constant along ``axis`` is unchanged.
    """
    t_mm = _level("thick_slices", severity)
    if t_mm is None:
        return Corrupted(_copy(image), labels)
    work = _to_work(image)
    d = work.dim()
    ax = _axis(axis if axis < d else d - 1, d)
    sp = _spacing(spacing, d)
    T = t_mm / sp[ax]
    g = as_generator(seed)
    offset = float(torch.rand((1,), generator=g)) * T
    mat = torch.from_numpy(thick_slice_matrix(work.shape[ax], T, offset))
    out = torch.movedim(torch.tensordot(mat, torch.movedim(work, ax, 0), dims=([1], [0])), 0, ax)
    return Corrupted(_from_work(out, image), labels)


def contrast_gamma(
    image: Array,
    severity: int,
    *,
    seed: int | torch.Generator = 0,
    labels: Array | None = None,
    spacing: Sequence[float] | None = None,
) -> Corrupted:
    """A gamma contrast change on the image's own intensity range.

    ``out = lo + (hi - lo) * ((image - lo) / (hi - lo)) ** gamma`` with ``lo, hi`` the image's
    minimum and maximum and ``gamma = exp(+-g)``, ``g`` per severity, the sign drawn from the
    seed: a monotone map that keeps ``lo`` and ``hi``.
    """
    g_level = _level("contrast_gamma", severity)
    if g_level is None:
        return Corrupted(_copy(image), labels)
    work = _to_work(image)
    g = as_generator(seed)
    sign = 1.0 if float(torch.rand((1,), generator=g)) < 0.5 else -1.0
    gamma = math.exp(sign * g_level)
    lo, hi = float(work.min()), float(work.max())
    if hi <= lo:
        return Corrupted(_from_work(work, image), labels)
    out = lo + (hi - lo) * ((work - lo) / (hi - lo)).clamp(0.0, 1.0) ** gamma
    return Corrupted(_from_work(out, image), labels)


def label_contrast(
    image: Array,
    severity: int,
    *,
    seed: int | torch.Generator = 0,
    labels: Array | None = None,
    spacing: Sequence[float] | None = None,
) -> Corrupted:
    """Label-wise contrast re-draw: every structure gets a new random intensity.

    For each non-zero label ``l`` a mean ``m_l`` is drawn uniformly in ``[p1, p99]`` of the
    foreground intensities; voxels of ``l`` become ``(1 - alpha) * image + alpha * m_l``
    (``alpha`` per severity, 1 at the top severity: constant within each label). Label 0
    (background) keeps its intensities. Needs ``labels``.
    """
    alpha = _level("label_contrast", severity)
    if alpha is None:
        if labels is None:
            raise MaxcaInputError("label_contrast needs the image's label map, got labels=None")
        return Corrupted(_copy(image), labels)
    if labels is None:
        raise MaxcaInputError("label_contrast needs the image's label map, got labels=None")
    work = _to_work(image)
    lab = _labels_work(labels, work.shape)
    assert lab is not None
    fg = work[lab > 0]
    if fg.numel() == 0:
        return Corrupted(_from_work(work, image), labels)
    p1, p99 = np.percentile(fg.numpy(), [1.0, 99.0])
    ids = torch.unique(lab)
    ids = ids[ids != 0]
    g = as_generator(seed)
    means = float(p1) + (float(p99) - float(p1)) * torch.rand(
        (len(ids),), generator=g, dtype=torch.float64
    )
    lut = torch.zeros(int(ids.max()) + 1, dtype=torch.float64)
    lut[ids] = means
    new = lut[lab.clamp(min=0)]
    inside = lab > 0
    out = torch.where(inside, (1.0 - alpha) * work + alpha * new, work)
    return Corrupted(_from_work(out, image), labels)


def slab_range(n: int, fraction: float, seed: int | torch.Generator = 0) -> tuple[int, int]:
    """The ``[start, stop)`` voxel range of :func:`missing_slab` along an axis of ``n`` voxels:
    ``round(fraction * n)`` voxels at the start or the end of the axis (drawn from the seed)."""
    width = int(round(fraction * n))
    g = as_generator(seed)
    at_end = float(torch.rand((1,), generator=g)) < 0.5
    return (n - width, n) if at_end else (0, width)


def missing_slab(
    image: Array,
    severity: int,
    *,
    seed: int | torch.Generator = 0,
    labels: Array | None = None,
    spacing: Sequence[float] | None = None,
    axis: int = 2,
) -> Corrupted:
    """Partial field of view: a slab at one end of ``axis`` is set to zero.

    The slab covers ``fraction`` of the axis (per severity) at its start or its end (from the
    seed; :func:`slab_range`); every other voxel keeps its value. The label map is unchanged (it
    stays the truth the registration is scored against).
    """
    frac = _level("missing_slab", severity)
    if frac is None:
        return Corrupted(_copy(image), labels)
    work = _to_work(image)
    d = work.dim()
    ax = _axis(axis if axis < d else d - 1, d)
    start, stop = slab_range(work.shape[ax], frac, seed)
    index = [slice(None)] * d
    index[ax] = slice(start, stop)
    work[tuple(index)] = 0.0
    return Corrupted(_from_work(work, image), labels)


#: Lesion intensity: this factor times the 99th percentile of the foreground (hyperintense).
LESION_CONTRAST = 1.5


def lesion_weight(
    shape: Sequence[int],
    centre: Sequence[float],
    radii_vox: Sequence[float],
) -> torch.Tensor:
    """The blob of :func:`synthetic_lesion`: a smooth weight with compact support.

    With ``r`` the ellipsoidal radius ``sqrt(sum ((p_i - centre_i) / radii_i)^2)``, the weight is
    1 for ``r <= 0.5``, ``cos^2(pi (r - 0.5))`` for ``0.5 < r < 1`` and exactly 0 for
    ``r >= 1``.

    Returns:
        ``(*shape)`` float64 tensor in ``[0, 1]``.
    """
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    r2 = sum(((g - c) / rad) ** 2 for g, c, rad in zip(grids, centre, radii_vox))
    r = torch.sqrt(r2)
    ramp = torch.cos(math.pi * (r - 0.5)) ** 2
    return torch.where(r <= 0.5, torch.ones_like(r), torch.where(r < 1.0, ramp, 0.0 * r))


def _lesion_geometry(
    work: torch.Tensor,
    lab: torch.Tensor | None,
    radius_mm: float,
    sp: tuple[float, ...],
    seed: int | torch.Generator,
) -> tuple[list[float], list[float]]:
    g = as_generator(seed)
    mask = (lab > 0) if lab is not None else None
    if mask is None or not bool(mask.any()):
        p99 = float(np.percentile(work.numpy(), 99.0))
        mask = work > 0.1 * p99
    if not bool(mask.any()):
        mask = torch.ones_like(work, dtype=torch.bool)
    idx = torch.nonzero(mask)
    pick = int(torch.randint(0, idx.shape[0], (1,), generator=g))
    centre = [float(v) for v in idx[pick]]
    stretch = 0.75 + 0.5 * torch.rand((work.dim(),), generator=g, dtype=torch.float64)
    radii = [radius_mm * float(s) / spc for s, spc in zip(stretch, sp)]
    return centre, radii


def synthetic_lesion(
    image: Array,
    severity: int,
    *,
    seed: int | torch.Generator = 0,
    labels: Array | None = None,
    spacing: Sequence[float] | None = None,
) -> Corrupted:
    """A synthetic lesion: a smooth blob of abnormal (bright) intensity.

    The blob (:func:`lesion_weight`) is centred on a random foreground voxel, with semi-axes
    ``radius * s_i`` mm (``radius`` per severity, ``s_i`` uniform in ``[0.75, 1.25]``);
    ``out = (1 - w) * image + w * L`` with ``L = LESION_CONTRAST * p99(foreground)``. Voxels
    with ``w = 0`` (outside the blob) keep their values exactly. Labels are unchanged.
    """
    radius = _level("synthetic_lesion", severity)
    if radius is None:
        return Corrupted(_copy(image), labels)
    work = _to_work(image)
    lab = _labels_work(labels, work.shape)
    sp = _spacing(spacing, work.dim())
    centre, radii = _lesion_geometry(work, lab, radius, sp, seed)
    w = lesion_weight(work.shape, centre, radii)
    fg = foreground_mask(work, lab)
    level = LESION_CONTRAST * float(np.percentile(work[fg].numpy(), 99.0))
    out = torch.where(w > 0, (1.0 - w) * work + w * level, work)
    return Corrupted(_from_work(out, image), labels)


#: Control-point spacing (mm) of the velocity field of ``extreme_anatomy``.
ANATOMY_SMOOTHNESS_MM = 40.0
#: Scaling-and-squaring steps of ``extreme_anatomy``.
ANATOMY_STEPS = 10


def anatomy_deformation(
    shape: Sequence[int],
    magnitude_mm: float,
    spacing: Sequence[float] | None = None,
    seed: int | torch.Generator = 0,
) -> torch.Tensor:
    """The diffeomorphism of :func:`extreme_anatomy` as a voxel displacement.

    A stationary velocity field (Gaussian noise on control points every
    ``ANATOMY_SMOOTHNESS_MM`` mm, linearly upsampled, largest component ``magnitude_mm`` mm)
    integrated by scaling and squaring (``ANATOMY_STEPS`` squarings):
    :func:`maxca.data.synth.random_smooth_deformation`. Zero magnitude gives a zero field.

    Returns:
        ``(d, *shape)`` float32 voxel displacement (channel ``k`` along array axis ``k``).
    """
    d = len(shape)
    sp = _spacing(spacing, d)
    mean_sp = float(np.mean(sp))
    return random_smooth_deformation(
        shape,
        magnitude_vox=magnitude_mm / mean_sp,
        smoothness=ANATOMY_SMOOTHNESS_MM / mean_sp,
        generator=as_generator(seed),
        diffeomorphic=True,
        steps=ANATOMY_STEPS,
    )


def extreme_anatomy(
    image: Array,
    severity: int,
    *,
    seed: int | torch.Generator = 0,
    labels: Array | None = None,
    spacing: Sequence[float] | None = None,
) -> Corrupted:
    """Extreme anatomy: image and label map deformed by a large random diffeomorphism.

    The deformation is :func:`anatomy_deformation` (peak velocity per severity, in mm); the image
    is warped with linear interpolation, the label map with nearest neighbour (so it holds only
    its own values or 0 outside), both with zero padding (``maxca.spatial.warp``). The returned
    label map is the new truth for this image.
    """
    mag = _level("extreme_anatomy", severity)
    if mag is None:
        return Corrupted(_copy(image), None if labels is None else _copy_labels(labels))
    work = _to_work(image)
    lab = _labels_work(labels, work.shape)
    flow = anatomy_deformation(work.shape, mag, spacing, seed).to(torch.float64)[None]
    out = warp(work[None, None], flow, mode="linear", padding_mode="zeros")[0, 0]
    new_labels = None
    if lab is not None:
        warped = warp(lab[None, None], flow, mode="nearest", padding_mode="zeros")[0, 0]
        new_labels = _labels_like(warped, labels)
    return Corrupted(_from_work(out, image), new_labels)


def _copy_labels(labels: Array) -> Array:
    return labels.detach().clone() if isinstance(labels, torch.Tensor) else labels.copy()


def _labels_like(lab: torch.Tensor, like: Array) -> Array:
    if isinstance(like, torch.Tensor):
        return lab.to(device=like.device, dtype=like.dtype)
    return lab.numpy().astype(like.dtype)


# ----------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class CorruptionSpec:
    """A registered corruption.

    Attributes:
        fn: ``fn(image, severity, *, seed, labels, spacing) -> Corrupted``.
        parameter: the physical parameter set by the severity.
        unit: its unit (``""`` when dimensionless).
        levels: the parameter at severities ``1 .. len(levels)``.
        needs_labels: the corruption needs the label map.
        changes_labels: the corruption deforms the label map with the image.
    """

    fn: Callable[..., Corrupted]
    parameter: str
    unit: str
    levels: tuple[float, ...]
    needs_labels: bool = False
    changes_labels: bool = False

    @property
    def max_severity(self) -> int:
        """The highest severity."""
        return len(self.levels)


CORRUPTIONS: dict[str, CorruptionSpec] = {
    "gaussian_noise": CorruptionSpec(gaussian_noise, "SNR", "", (30.0, 15.0, 8.0, 4.0)),
    "rician_noise": CorruptionSpec(rician_noise, "SNR", "", (30.0, 15.0, 8.0, 4.0)),
    "bias_field": CorruptionSpec(bias_field, "amplitude", "", (0.1, 0.2, 0.35, 0.5)),
    "gibbs_ringing": CorruptionSpec(
        gibbs_ringing, "k-space fraction kept", "", (0.7, 0.5, 0.35, 0.25)
    ),
    "motion_ghosting": CorruptionSpec(
        motion_ghosting,
        f"phase error on 1/{GHOST_PERIOD} of the lines",
        "rad",
        (math.pi / 8, math.pi / 4, math.pi / 2, math.pi),
    ),
    "thick_slices": CorruptionSpec(thick_slices, "slice thickness", "mm", (3.0, 5.0, 7.0, 9.0)),
    "contrast_gamma": CorruptionSpec(contrast_gamma, "|log gamma|", "", (0.15, 0.3, 0.5, 0.75)),
    "label_contrast": CorruptionSpec(
        label_contrast, "re-drawn weight alpha", "", (0.25, 0.5, 0.75, 1.0), needs_labels=True
    ),
    "missing_slab": CorruptionSpec(missing_slab, "FOV fraction missing", "", (0.1, 0.2, 0.3, 0.4)),
    "synthetic_lesion": CorruptionSpec(
        synthetic_lesion, "lesion radius", "mm", (5.0, 10.0, 15.0, 20.0)
    ),
    "extreme_anatomy": CorruptionSpec(
        extreme_anatomy,
        "peak velocity",
        "mm",
        (4.0, 8.0, 12.0, 16.0),
        changes_labels=True,
    ),
}


def corruption_names() -> list[str]:
    """The registered corruption names, in registry order."""
    return list(CORRUPTIONS)


def _spec(name: str) -> CorruptionSpec:
    if name not in CORRUPTIONS:
        raise MaxcaInputError(f"unknown corruption {name!r}; expected one of {list(CORRUPTIONS)}")
    return CORRUPTIONS[name]


def _check_severity(name: str, severity: int) -> int:
    spec = _spec(name)
    if (
        isinstance(severity, bool)
        or not isinstance(severity, (int, np.integer))
        or not 0 <= severity <= spec.max_severity
    ):
        raise MaxcaInputError(
            f"severity of {name!r} must be an integer in 0..{spec.max_severity}, got {severity!r}"
        )
    return int(severity)


def _level(name: str, severity: int) -> float | None:
    """The parameter at ``severity`` (``None`` at severity 0), validated."""
    s = _check_severity(name, severity)
    return None if s == 0 else CORRUPTIONS[name].levels[s - 1]


def _format_level(spec: CorruptionSpec, value: float) -> str:
    if spec.unit == "rad":
        return f"{spec.parameter} {value / math.pi:.3g} pi rad"
    unit = f" {spec.unit}" if spec.unit else ""
    return f"{spec.parameter} {value:g}{unit}"


def severity_levels(name: str) -> dict[int, str]:
    """What each severity of a corruption means: ``{0: "clean", 1: "SNR 30", ...}``.

    Raises:
        MaxcaInputError: an unknown name.
    """
    spec = _spec(name)
    out = {0: "clean"}
    for s, value in enumerate(spec.levels, start=1):
        out[s] = _format_level(spec, value)
    return out


def apply_corruption(
    name: str,
    image: Array,
    severity: int,
    seed: int | torch.Generator = 0,
    labels: Array | None = None,
    spacing: Sequence[float] | None = None,
) -> Corrupted:
    """Corrupt ``image`` (``(X, Y[, Z])``) with the named corruption at ``severity``.

    Raises:
        MaxcaInputError: an unknown name, a severity outside ``0 .. max``, a missing label map
            for a corruption that needs one.
    """
    spec = _spec(name)
    _check_severity(name, severity)
    if spec.needs_labels and labels is None:
        raise MaxcaInputError(f"corruption {name!r} needs the image's label map, got labels=None")
    return spec.fn(image, int(severity), seed=seed, labels=labels, spacing=spacing)
