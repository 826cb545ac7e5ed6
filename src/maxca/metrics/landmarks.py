"""Landmarks: reading voxel-coordinate CSV files and the target registration error (TRE).

Landmark coordinates are voxel indices in file order (axis 0, axis 1[, axis 2]), one landmark
per row, as in the Learn2Reg ``keypoints``/``landmarks`` CSV files. A fixed landmark ``p`` is
carried into moving voxel space by the flow as ``p + u(p)`` (the backward-warping convention of
``docs/conventions.md``), and compared there with its moving counterpart ``q``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np
from scipy.ndimage import map_coordinates

from maxca.errors import MaxcaInputError
from maxca.metrics._common import ArrayLike, as_flow, as_numpy, as_spacing, shape_str

__all__ = ["read_landmarks_csv", "tre", "warp_points"]


def read_landmarks_csv(path: str | os.PathLike[str], dim: int | None = None) -> np.ndarray:
    """Read landmarks from a comma-separated file into an ``(N, d)`` float64 array.

    Each row holds the ``d`` voxel coordinates of one landmark (file axis order). Blank lines
    are skipped, spaces around values are allowed, and a first line that is not numeric is
    taken as a header and skipped.

    Args:
        path: the CSV file.
        dim: the expected number of coordinates per row; ``None`` accepts 2 or 3.

    Returns:
        ``(N, d)`` voxel coordinates, ``N >= 1``.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise MaxcaInputError(f"landmark file must exist, got {p!r}")
    try:
        with open(p, encoding="utf-8-sig", newline="") as fh:
            rows = [
                (n, r) for n, r in enumerate(csv.reader(fh), start=1) if any(c.strip() for c in r)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MaxcaInputError(f"landmark file {p!r} must be readable text CSV: {exc}") from exc
    values: list[list[float]] = []
    for idx, (line_no, row) in enumerate(rows):
        try:
            values.append([float(c) for c in row])
        except ValueError:
            if idx == 0:  # a header line
                continue
            raise MaxcaInputError(
                f"landmark file {p!r} line {line_no}: expected numbers, got {','.join(row)!r}"
            ) from None
    if not values:
        raise MaxcaInputError(f"landmark file {p!r} must hold at least one landmark, got none")
    widths = {len(v) for v in values}
    if len(widths) != 1:
        raise MaxcaInputError(
            f"landmark file {p!r}: expected the same number of coordinates on every row, "
            f"got rows of {sorted(widths)} values"
        )
    width = widths.pop()
    expected = (2, 3) if dim is None else (dim,)
    if width not in expected:
        want = " or ".join(str(e) for e in expected)
        raise MaxcaInputError(
            f"landmark file {p!r}: expected {want} coordinates per row, got {width}"
        )
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise MaxcaInputError(f"landmark file {p!r}: coordinates must be finite")
    return arr


def _as_points(points: ArrayLike, d: int, name: str) -> np.ndarray:
    arr = as_numpy(points, name).astype(np.float64, copy=False)
    if arr.ndim != 2 or arr.shape[1] != d:
        raise MaxcaInputError(f"{name} must have shape (N, {d}), got {shape_str(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise MaxcaInputError(f"{name} must be finite")
    return arr


def _as_point_pairs(
    fixed_pts: ArrayLike, moving_pts: ArrayLike, d: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate corresponding landmark lists: two ``(N, d)`` float arrays of equal length."""
    p = _as_points(fixed_pts, d, "fixed_pts")
    q = _as_points(moving_pts, d, "moving_pts")
    if p.shape != q.shape:
        raise MaxcaInputError(
            f"fixed_pts and moving_pts must pair up, got {p.shape[0]} fixed and "
            f"{q.shape[0]} moving landmarks"
        )
    return p, q


def warp_points(points: ArrayLike, flow: ArrayLike, order: int = 1) -> np.ndarray:
    """Map fixed-space voxel points ``p`` to moving space: ``p + u(p)``.

    ``u`` is interpolated at ``p`` with ``scipy.ndimage.map_coordinates`` (``order=1``:
    linear; values beyond the grid repeat the nearest border voxel).

    Args:
        points: ``(N, d)`` voxel coordinates on the flow's grid, inside ``[-0.5, S - 0.5]``.
        flow: ``(d, *S)`` voxel displacement.
        order: spline order of the interpolation (1 = linear).

    Returns:
        ``(N, d)`` moving-space voxel coordinates.
    """
    u = as_flow(flow)
    d = u.shape[0]
    pts = _as_points(points, d, "points")
    size = np.asarray(u.shape[1:], dtype=np.float64)
    outside = np.any((pts < -0.5) | (pts > size - 0.5), axis=1)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise MaxcaInputError(
            f"landmarks must lie inside the {shape_str(u.shape[1:])} grid, "
            f"got {int(outside.sum())} outside (first: row {i}, {pts[i].tolist()})"
        )
    disp = np.stack(
        [map_coordinates(u[k], pts.T, order=order, mode="nearest") for k in range(d)], axis=1
    )
    return pts + disp


def tre(
    fixed_pts: ArrayLike, moving_pts: ArrayLike, flow: ArrayLike, spacing: Sequence[float]
) -> np.ndarray:
    """Target registration error of every landmark pair, in mm.

    ``TRE_i = || (p_i + u(p_i) - q_i) * spacing ||`` with ``p_i`` the fixed landmark, ``q_i`` its
    moving counterpart (both voxel coordinates of the common grid) and ``u`` interpolated
    linearly at ``p_i`` (see :func:`warp_points`).

    Args:
        fixed_pts: ``(N, d)`` fixed landmarks (voxels).
        moving_pts: ``(N, d)`` corresponding moving landmarks (voxels).
        flow: ``(d, *S)`` voxel displacement on the fixed grid.
        spacing: ``d`` voxel sizes in mm along the array axes.

    Returns:
        ``(N,)`` float64 errors in mm.
    """
    u = as_flow(flow)
    d = u.shape[0]
    p, q = _as_point_pairs(fixed_pts, moving_pts, d)
    sp = as_spacing(spacing, d)
    return np.linalg.norm((warp_points(p, u) - q) * sp, axis=1)
