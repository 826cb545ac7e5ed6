"""A one-page picture of a registration: images, differences, labels, grid and Jacobian.

Drawn with matplotlib's Agg canvas (no display, no pyplot state). Spatial arrays are in file voxel
order; a plane through axes ``(a, b)`` is shown with axis ``a`` horizontal and axis ``b``
vertical, index 0 at the lower left, in voxel coordinates (``extent`` of half a voxel beyond the
first and last centre), so that image, contours and grid lines share one frame.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from maxca.errors import MaxcaInputError
from maxca.metrics._common import ArrayLike, as_flow, as_numpy, as_spacing, atomic_path, shape_str
from maxca.metrics.jacobian import jacobian_determinant

__all__ = ["registration_figure", "figure_pixel_size", "COLUMNS"]

#: Panel titles, one column each, left to right.
COLUMNS = (
    "fixed",
    "moving",
    "warped",
    "|fixed - moving|",
    "|fixed - warped|",
    "labels on warped",
    "grid p + u(p)",
    "det J",
)
_TITLE_HEIGHT = 0.5  # inches reserved at the top for the title


def figure_pixel_size(
    spatial_dims: int, panel_size: float = 2.0, dpi: int = 100
) -> tuple[int, int]:
    """``(height, width)`` in pixels of :func:`registration_figure`'s PNG.

    One row of ``len(COLUMNS)`` square panels of ``panel_size`` inches per plane (three
    orthogonal mid-planes in 3-D, one in 2-D), plus a ``0.5`` inch title band.
    """
    rows = 3 if spatial_dims == 3 else 1
    return (
        round((rows * panel_size + _TITLE_HEIGHT) * dpi),
        round(len(COLUMNS) * panel_size * dpi),
    )


def _spatial(x: ArrayLike | None, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """``x`` as a float ``(*shape)`` array, dropping leading singleton (batch/channel) axes."""
    if x is None:
        return None
    arr = as_numpy(x, name)
    while arr.ndim > len(shape) and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != shape:
        raise MaxcaInputError(
            f"{name} must have the flow's spatial shape {shape_str(shape)} "
            f"(leading size-1 axes allowed), got {shape_str(as_numpy(x, name).shape)}"
        )
    return arr.astype(np.float64, copy=False)


def _planes(shape: tuple[int, ...]) -> list[tuple[tuple[int, int], tuple[slice | int, ...], str]]:
    """``[(plane_axes, index, row_name)]``: the mid-plane normal to each axis (3-D) or all (2-D)."""
    if len(shape) == 2:
        return [((0, 1), (slice(None), slice(None)), "2-D")]
    out = []
    for normal in range(3):
        mid = shape[normal] // 2
        index: list[slice | int] = [slice(None)] * 3
        index[normal] = mid
        axes = tuple(a for a in range(3) if a != normal)
        out.append(((axes[0], axes[1]), tuple(index), f"axis {normal} = {mid}"))
    return out


def _window(*arrays: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    values = np.concatenate([a.reshape(-1) for a in arrays])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def _show(ax: Axes, plane: np.ndarray, aspect: float, **kwargs: object) -> object:
    n_a, n_b = plane.shape
    return ax.imshow(
        plane.T,
        origin="lower",
        extent=(-0.5, n_a - 0.5, -0.5, n_b - 0.5),
        aspect=aspect,
        interpolation="nearest",
        **kwargs,
    )


def _contours(
    ax: Axes, plane: np.ndarray, colors: dict[int, tuple], linestyle: str, width: float
) -> None:
    n_a, n_b = plane.shape
    xs, ys = np.arange(n_a), np.arange(n_b)
    for lab, color in colors.items():
        m = plane == lab
        if m.any() and not m.all():
            ax.contour(
                xs, ys, m.T.astype(float), levels=[0.5], colors=[color],
                linestyles=linestyle, linewidths=width,
            )  # fmt: skip


def _grid(ax: Axes, ua: np.ndarray, ub: np.ndarray, aspect: float) -> None:
    """Lines of the fixed grid carried to ``p + u(p)`` by the in-plane flow components."""
    n_a, n_b = ua.shape
    step = max(1, round(max(n_a, n_b) / 24))
    ia, ib = np.arange(n_a), np.arange(n_b)
    for i in range(0, n_a, step):  # lines of constant a
        ax.plot(i + ua[i, :], ib + ub[i, :], color="tab:blue", linewidth=0.6)
    for j in range(0, n_b, step):  # lines of constant b
        ax.plot(ia + ua[:, j], j + ub[:, j], color="tab:blue", linewidth=0.6)
    ax.set_xlim(-0.5, n_a - 0.5)
    ax.set_ylim(-0.5, n_b - 0.5)
    ax.set_aspect(aspect)
    ax.set_facecolor("white")


def registration_figure(
    fixed: ArrayLike,
    moving: ArrayLike,
    warped: ArrayLike,
    flow: ArrayLike,
    path: str | os.PathLike[str],
    fixed_label: ArrayLike | None = None,
    warped_label: ArrayLike | None = None,
    moving_label: ArrayLike | None = None,
    title: str | None = None,
    spacing: Sequence[float] | None = None,
    panel_size: float = 2.0,
    dpi: int = 100,
) -> Path:
    """Draw fixed, moving, warped, differences, labels, deformation grid and ``det J`` to a PNG.

    Columns (:data:`COLUMNS`): fixed, moving, warped (one grey window from the fixed and moving
    1st-99th percentiles), ``|fixed - moving|`` and ``|fixed - warped|`` (one shared window),
    the warped image with the fixed label contours (solid) and the warped label contours
    (dashed, same colour per label), the fixed grid deformed to ``p + u(p)`` by the in-plane
    flow components, and the Jacobian determinant of the full flow (diverging colours centred at
    1, folds ``det <= 0`` outlined in gold). Moving label contours, if given, are drawn on the
    moving image. Rows: the three orthogonal mid-planes in 3-D, the image itself in 2-D. The
    PNG has :func:`figure_pixel_size` pixels and is written atomically (temporary PNG in the
    same folder, then ``os.replace``).

    Args:
        fixed: ``(*S)`` fixed image (leading size-1 axes such as ``(1, 1, *S)`` are dropped).
        moving: ``(*S)`` moving image.
        warped: ``(*S)`` moving image warped onto the fixed grid.
        flow: ``(d, *S)`` voxel displacement (``(1, d, *S)`` accepted), ``d`` = 2 or 3.
        path: the PNG file to write; its folder must exist.
        fixed_label: optional ``(*S)`` fixed label map.
        warped_label: optional ``(*S)`` warped moving label map.
        moving_label: optional ``(*S)`` moving label map.
        title: optional figure title.
        spacing: optional voxel sizes (mm) used for the pixel aspect ratio; default isotropic.
        panel_size: panel edge in inches.
        dpi: pixels per inch.

    Returns:
        The written path.
    """
    u = as_flow(flow)
    d = u.shape[0]
    shape = tuple(int(s) for s in u.shape[1:])
    if min(shape) < 2:
        raise MaxcaInputError(
            f"flow must have >= 2 voxels per spatial axis, got {shape_str(shape)}"
        )
    images = {name: _spatial(x, name, shape) for name, x in (("fixed", fixed), ("moving", moving))}
    images["warped"] = _spatial(warped, "warped", shape)
    labels = {
        name: _spatial(x, name, shape)
        for name, x in (
            ("fixed_label", fixed_label),
            ("warped_label", warped_label),
            ("moving_label", moving_label),
        )
    }
    sp = np.ones(d) if spacing is None else as_spacing(spacing, d)
    if not panel_size > 0 or int(dpi) < 10:
        raise MaxcaInputError(f"panel_size must be > 0 and dpi >= 10, got {panel_size}, {dpi}")
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise MaxcaInputError(f"path must end in .png, got {str(target)!r}")
    if not target.parent.is_dir():
        raise MaxcaInputError(f"output folder must exist, got {str(target.parent)!r}")

    fx, mv, wp = images["fixed"], images["moving"], images["warped"]
    assert fx is not None and mv is not None and wp is not None
    vmin, vmax = _window(fx, mv)
    diff_before, diff_after = np.abs(fx - mv), np.abs(fx - wp)
    dmax = max(_window(diff_before, diff_after, low=0.0, high=99.5)[1], 1e-12)
    det = jacobian_determinant(u)
    jmin, jmax = float(det.min()), float(det.max())
    jnorm = TwoSlopeNorm(vmin=min(jmin, 0.0) - 1e-6, vcenter=1.0, vmax=max(jmax, 2.0))
    present = sorted(
        {int(v) for lab in labels.values() if lab is not None for v in np.unique(lab) if v != 0}
    )
    cmap = colormaps["tab10"]
    colors = {lab: cmap(i % 10) for i, lab in enumerate(present)}

    planes = _planes(shape)
    height_px, width_px = figure_pixel_size(d, panel_size, dpi)
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    top = 1.0 - _TITLE_HEIGHT / (height_px / dpi)
    fig.subplots_adjust(left=0.02, right=0.955, bottom=0.01, top=top, wspace=0.08, hspace=0.12)
    axes = np.asarray(fig.subplots(len(planes), len(COLUMNS), squeeze=False))
    if title:
        fig.suptitle(title, fontsize=11, y=1.0 - 0.15 * _TITLE_HEIGHT / (height_px / dpi))

    for row, ((a, b), index, row_name) in enumerate(planes):
        aspect = float(sp[b] / sp[a])
        ax = axes[row]
        gray = {"cmap": "gray", "vmin": vmin, "vmax": vmax}
        _show(ax[0], fx[index], aspect, **gray)
        _show(ax[1], mv[index], aspect, **gray)
        _show(ax[2], wp[index], aspect, **gray)
        _show(ax[3], diff_before[index], aspect, cmap="magma", vmin=0.0, vmax=dmax)
        _show(ax[4], diff_after[index], aspect, cmap="magma", vmin=0.0, vmax=dmax)
        _show(ax[5], wp[index], aspect, **gray)
        if labels["moving_label"] is not None:
            _contours(ax[1], labels["moving_label"][index], colors, "solid", 0.8)
        if labels["fixed_label"] is not None:
            _contours(ax[5], labels["fixed_label"][index], colors, "solid", 1.0)
        if labels["warped_label"] is not None:
            _contours(ax[5], labels["warped_label"][index], colors, "dashed", 0.8)
        if labels["fixed_label"] is None and labels["warped_label"] is None:
            ax[5].text(0.5, 0.05, "no labels", color="w", ha="center", transform=ax[5].transAxes)
        _grid(ax[6], u[a][index], u[b][index], aspect)
        det_plane = det[index]
        im = _show(ax[7], det_plane, aspect, cmap="RdBu_r", norm=jnorm)
        folds = det_plane <= 0
        if folds.any():
            _contours(ax[7], folds.astype(np.int64), {1: (1.0, 0.8, 0.0, 1.0)}, "solid", 1.0)
        ax[7].text(
            0.02, 0.02, f"folds {int(folds.sum())}", fontsize=7, transform=ax[7].transAxes,
            bbox={"facecolor": "white", "alpha": 0.7, "linewidth": 0, "pad": 1},
        )  # fmt: skip
        if row == 0:
            cax = fig.add_axes((0.962, 0.05, 0.006, top - 0.1))
            fig.colorbar(im, cax=cax).ax.tick_params(labelsize=7)
        for col, axis in enumerate(ax):
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(COLUMNS[col], fontsize=8)
        ax[0].set_ylabel(f"{row_name}\n(axis {a} right, {b} up)", fontsize=7)

    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return target
