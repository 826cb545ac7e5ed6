"""Label overlap metrics: Dice and the 95th-percentile Hausdorff distance (HD95) in mm.

Label maps are ``(*S)`` integer (or integral float) arrays in file voxel order, ``S`` 2-D or 3-D,
and both maps of a pair live on the same grid (the fixed image's). Results are per label, as
``{label: value}`` dicts in the order of ``labels``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from maxca._optional import require
from maxca.metrics._common import ArrayLike, as_label_map, as_labels, as_spacing

__all__ = ["dice", "hd95"]


def dice(a: ArrayLike, b: ArrayLike, labels: Sequence[int] | None = None) -> dict[int, float]:
    """Dice overlap ``2 |A ∩ B| / (|A| + |B|)`` of every label in two label maps.

    Args:
        a: ``(*S)`` label map (e.g. the fixed labels).
        b: ``(*S)`` label map of the same shape (e.g. the warped moving labels).
        labels: labels to score; ``None`` scores every non-zero label found in ``a`` or ``b``.

    Returns:
        ``{label: dice}`` in ``[0, 1]``. A label absent from both maps has no defined overlap and
        gets ``NaN`` (so that ``np.nanmean`` over labels skips it); a label present in only one
        map scores ``0``.
    """
    a = as_label_map(a, "a")
    b = as_label_map(b, "b", shape=a.shape)
    out: dict[int, float] = {}
    labs = as_labels(labels, a, b)
    counts = _label_counts(a, b)
    for lab in labs:
        if counts is not None:
            size_a, size_b, both = counts
            inside = 0 <= lab < size_a.size
            n_a = int(size_a[lab]) if inside else 0
            n_b = int(size_b[lab]) if inside else 0
            n_ab = int(both[lab]) if inside else 0
        else:
            ma, mb = a == lab, b == lab
            n_a, n_b, n_ab = int(ma.sum()), int(mb.sum()), int(np.logical_and(ma, mb).sum())
        total = n_a + n_b
        out[lab] = 2.0 * n_ab / total if total else math.nan
    return out


def _label_counts(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """Voxel counts per label id of ``a``, of ``b`` and of ``a == b`` (three passes over the
    maps instead of three per label); ``None`` for negative or very large ids."""
    if a.size == 0:
        return None
    lo = min(int(a.min()), int(b.min()))
    hi = max(int(a.max()), int(b.max()))
    if lo < 0 or hi > 1_000_000:
        return None
    fa, fb = a.ravel().astype(np.intp, copy=False), b.ravel().astype(np.intp, copy=False)
    n = hi + 1
    same = fa[fa == fb]
    return (
        np.bincount(fa, minlength=n),
        np.bincount(fb, minlength=n),
        np.bincount(same, minlength=n),
    )


def hd95(
    a: ArrayLike, b: ArrayLike, labels: Sequence[int] | None, spacing: Sequence[float]
) -> dict[int, float]:
    """95th-percentile symmetric Hausdorff distance of every label, in mm.

    Computed with MONAI's ``compute_hausdorff_distance(percentile=95, spacing=spacing)``: the
    surface of a structure is its set of edge voxels (voxels of the structure with a
    6-/4-connected neighbour outside it); for each direction (A to B, B to A) the distances from
    every edge voxel to the nearest edge voxel of the other structure are measured in mm and
    their 95th percentile taken (linear interpolation, every edge voxel weighted equally); the
    result is the larger of the two directions.

    Args:
        a: ``(*S)`` label map.
        b: ``(*S)`` label map of the same shape.
        labels: labels to score; ``None`` scores every non-zero label found in ``a`` or ``b``.
        spacing: ``len(S)`` voxel sizes in mm along the array axes (file order).

    Returns:
        ``{label: hd95_mm}``. ``NaN`` when the label is absent from either map (a distance to an
        empty structure is undefined; MONAI itself would return ``inf`` or ``NaN`` there).
    """
    a = as_label_map(a, "a")
    b = as_label_map(b, "b", shape=a.shape)
    sp = as_spacing(spacing, a.ndim)
    labs = as_labels(labels, a, b)
    # heavy import, only when needed; MONAI is the optional extra maxca[hd95]
    compute_hausdorff_distance = require("monai.metrics", "hd95", "HD95").compute_hausdorff_distance

    out: dict[int, float] = {}
    for lab in labs:
        ma, mb = a == lab, b == lab
        if not ma.any() or not mb.any():
            out[lab] = math.nan
            continue
        ma, mb = _crop_to_union(ma, mb)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # empty-structure warnings cannot happen here
            value = compute_hausdorff_distance(
                mb[None, None],
                ma[None, None],
                include_background=True,
                percentile=95,
                spacing=sp.tolist(),
            )
        out[lab] = float(value.reshape(-1)[0])
    return out


def _crop_to_union(ma: np.ndarray, mb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop two boolean masks to the bounding box of their union plus a one-voxel zero margin."""
    union = ma | mb
    lo, hi = [], []
    for axis in range(union.ndim):
        proj = np.flatnonzero(union.any(axis=tuple(i for i in range(union.ndim) if i != axis)))
        lo.append(int(proj[0]))
        hi.append(int(proj[-1]) + 1)
    box = tuple(slice(s, e) for s, e in zip(lo, hi))
    pad = [(1, 1)] * union.ndim
    return np.pad(ma[box], pad), np.pad(mb[box], pad)
