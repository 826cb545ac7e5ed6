"""A one-page picture of a registration: images, differences, labels, grid and Jacobian.

Drawn with matplotlib's Agg canvas (no display, no pyplot state). Spatial arrays are in file voxel
order. In 3-D the rows are the standard radiological views found from the grid's RAS affine
(:func:`display_planes`): axial (patient's right on the left, anterior up), coronal (right on
the left, superior up) and sagittal (anterior on the left, superior up), whatever the file's
axis order (e.g. LIA). Each panel shows a 2-D array ``(horizontal, vertical)`` with index 0 at
the lower left, in voxel units (``extent`` of half a voxel beyond the first and last centre), so
that image, contours and grid lines share one frame.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from maxca.errors import MaxcaInputError
from maxca.metrics._common import ArrayLike, as_flow, as_numpy, as_spacing, atomic_path, shape_str
from maxca.metrics.jacobian import jacobian_determinant_array

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "COLUMNS",
    "DisplayPlane",
    "build_registration_figure",
    "display_planes",
    "figure_pixel_size",
    "registration_figure",
]

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
_BAR_HEIGHT = 0.4  # inches reserved at the bottom for the colour bars
_FOLD_COLOUR = (1.0, 0.8, 0.0, 1.0)


def figure_pixel_size(
    spatial_dims: int, panel_size: float = 2.0, dpi: int = 100
) -> tuple[int, int]:
    """``(height, width)`` in pixels of :func:`registration_figure`'s PNG.

    One row of ``len(COLUMNS)`` square panels of ``panel_size`` inches per plane (three
    orthogonal mid-planes in 3-D, one in 2-D), plus a ``0.5`` inch title band and a ``0.4``
    inch band for the colour bars.
    """
    rows = 3 if spatial_dims == 3 else 1
    return (
        round((rows * panel_size + _TITLE_HEIGHT + _BAR_HEIGHT) * dpi),
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


@dataclass(frozen=True)
class DisplayPlane:
    """One row of the figure: a plane through a 3-D (or the whole 2-D) array, as displayed.

    Attributes:
        name: ``axial``, ``coronal``, ``sagittal`` (or ``2-D``).
        normal: the voxel axis normal to the plane (``-1`` in 2-D).
        index: the slice index along ``normal``.
        h_axis, v_axis: the voxel axes shown horizontally (left to right) and vertically (bottom
            to top).
        h_flip, v_flip: whether that voxel axis runs against the screen direction (index 0 on
            the right / at the top).
        left, up: the anatomical direction (``R``, ``L``, ``A``, ``P``, ``S``, ``I``) at the
            panel's left and top ("" without an orientation).
    """

    name: str
    normal: int
    index: int
    h_axis: int
    v_axis: int
    h_flip: bool = False
    v_flip: bool = False
    left: str = ""
    up: str = ""

    def take(self, arr: np.ndarray) -> np.ndarray:
        """The displayed ``(horizontal, vertical)`` 2-D array of a ``(*S)`` array."""
        if self.normal >= 0:
            arr = np.take(arr, self.index, axis=self.normal)
            axes = [a for a in range(3) if a != self.normal]
        else:
            axes = [0, 1]
        plane = arr if axes.index(self.h_axis) == 0 else arr.T
        if self.h_flip:
            plane = plane[::-1, :]
        if self.v_flip:
            plane = plane[:, ::-1]
        return plane

    def in_plane_flow(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The displayed horizontal and vertical displacement (voxels, screen directions) of a
        ``(d, *S)`` voxel flow."""
        uh = self.take(u[self.h_axis]) * (-1.0 if self.h_flip else 1.0)
        uv = self.take(u[self.v_axis]) * (-1.0 if self.v_flip else 1.0)
        return uh, uv


_POSITIVE, _NEGATIVE = "RAS", "LPI"


def display_planes(shape: Sequence[int], affine: np.ndarray | None = None) -> list[DisplayPlane]:
    """The rows of the figure for a grid of ``shape`` with RAS voxel-to-world ``affine``.

    3-D: the mid-planes ``axial``, ``coronal``, ``sagittal`` in that order, in radiological
    orientation: axial with the patient's right on the left and anterior up, coronal with right
    on the left and superior up, sagittal with anterior on the left and superior up. Each voxel
    axis is matched to the world axis it is closest to (an oblique grid is shown in its nearest
    orientation). ``affine=None`` takes the voxel axes as R, A, S. 2-D: one plane, array
    axis 0 horizontal, axis 1 vertical.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return [DisplayPlane("2-D", -1, 0, 0, 1)]
    a = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    cols = a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0)
    # voxel axis -> (world axis, sign), one world axis per voxel axis (greedy by |cosine|)
    world_of: dict[int, tuple[int, int]] = {}
    free_world, free_vox = {0, 1, 2}, {0, 1, 2}
    for _ in range(3):
        v, w = max(
            ((v, w) for v in free_vox for w in free_world), key=lambda vw: abs(cols[vw[1], vw[0]])
        )
        world_of[v] = (w, 1 if cols[w, v] >= 0 else -1)
        free_vox.discard(v)
        free_world.discard(w)
    vox = {w: (v, sign) for v, (w, sign) in world_of.items()}  # world axis -> (voxel, sign)
    r, ant, sup = vox[0], vox[1], vox[2]

    def plane(name: str, normal: tuple[int, int], h: tuple[int, int], v: tuple[int, int],
              h_towards: int, left: str, up: str) -> DisplayPlane:  # fmt: skip
        # h_towards: +1 if the horizontal axis should grow towards the world axis' + end
        return DisplayPlane(
            name, normal[0], shape[normal[0]] // 2, h[0], v[0],
            h_flip=h[1] != h_towards, v_flip=v[1] < 0, left=left, up=up,
        )  # fmt: skip

    return [
        plane("axial", sup, r, ant, -1, "R", "A"),  # right on the left: x grows to the left
        plane("coronal", ant, r, sup, -1, "R", "S"),
        plane("sagittal", r, ant, sup, -1, "A", "S"),  # anterior on the left
    ]


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


class FigureOptions(TypedDict, total=False):
    """The keyword options :func:`registration_figure` passes on to
    :func:`build_registration_figure` (defaults and meaning there)."""

    fixed_label: ArrayLike | None
    warped_label: ArrayLike | None
    moving_label: ArrayLike | None
    title: str | None
    spacing: Sequence[float] | None
    panel_size: float
    dpi: int
    affine: np.ndarray | None


def registration_figure(
    fixed: ArrayLike,
    moving: ArrayLike,
    warped: ArrayLike,
    flow: ArrayLike,
    path: str | os.PathLike[str],
    **options: Unpack[FigureOptions],
) -> Path:
    """Draw fixed, moving, warped, differences, labels, deformation grid and ``det J`` to a PNG.

    Columns (:data:`COLUMNS`): fixed, moving, warped (one grey window from the fixed and moving
    1st-99th percentiles), ``|fixed - moving|`` and ``|fixed - warped|`` (one shared window,
    with a colour bar), the warped image with the fixed label contours (solid) and the warped
    label contours (dashed, same colour per label; a legend says which is which), the fixed
    grid deformed to ``p + u(p)`` by the in-plane flow components, and the Jacobian determinant
    of the full flow (diverging colours centred at 1 with a colour bar, folds ``det <= 0``
    outlined in gold, in the legend). Moving label contours, if given, are drawn on the moving
    image. Rows: the axial, coronal and sagittal mid-planes in radiological orientation found
    from ``affine`` (:func:`display_planes`) in 3-D, the image itself in 2-D. The PNG has
    :func:`figure_pixel_size` pixels and is written atomically (temporary PNG in the same
    folder, then ``os.replace``).

    Args:
        fixed: ``(*S)`` fixed image (leading size-1 axes such as ``(1, 1, *S)`` are dropped).
        moving: ``(*S)`` moving image.
        warped: ``(*S)`` moving image warped onto the fixed grid.
        flow: ``(d, *S)`` voxel displacement (``(1, d, *S)`` accepted), ``d`` = 2 or 3.
        path: the PNG file to write; its folder must exist.
        options: by keyword, those of :func:`build_registration_figure`:
        fixed_label: optional ``(*S)`` fixed label map.
        warped_label: optional ``(*S)`` warped moving label map.
        moving_label: optional ``(*S)`` moving label map.
        title: optional figure title.
        spacing: optional voxel sizes (mm) used for the pixel aspect ratio; default isotropic.
        panel_size: panel edge in inches.
        dpi: pixels per inch.
        affine: ``(4, 4)`` RAS voxel-to-world affine of the fixed grid, for the orientation of
            the 3-D views (default: voxel axes taken as R, A, S).

    Returns:
        The written path.
    """
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise MaxcaInputError(f"path must end in .png, got {str(target)!r}")
    if not target.parent.is_dir():
        raise MaxcaInputError(f"output folder must exist, got {str(target.parent)!r}")
    fig = build_registration_figure(fixed, moving, warped, flow, **options)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
    return target


def build_registration_figure(
    fixed: ArrayLike,
    moving: ArrayLike,
    warped: ArrayLike,
    flow: ArrayLike,
    fixed_label: ArrayLike | None = None,
    warped_label: ArrayLike | None = None,
    moving_label: ArrayLike | None = None,
    title: str | None = None,
    spacing: Sequence[float] | None = None,
    panel_size: float = 2.0,
    dpi: int = 100,
    affine: np.ndarray | None = None,
) -> Figure:
    """The :class:`~matplotlib.figure.Figure` that :func:`registration_figure` saves (same
    arguments, without ``path``)."""
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
    if affine is not None and np.asarray(affine).shape != (4, 4):
        raise MaxcaInputError(f"affine must be 4x4, got shape {np.asarray(affine).shape}")

    fx, mv, wp = images["fixed"], images["moving"], images["warped"]
    assert fx is not None and mv is not None and wp is not None
    vmin, vmax = _window(fx, mv)
    diff_before, diff_after = np.abs(fx - mv), np.abs(fx - wp)
    dmax = max(_window(diff_before, diff_after, low=0.0, high=99.5)[1], 1e-12)
    det = jacobian_determinant_array(u)
    jmin, jmax = float(det.min()), float(det.max())
    jnorm = TwoSlopeNorm(vmin=min(jmin, 0.0) - 1e-6, vcenter=1.0, vmax=max(jmax, 2.0))
    present = sorted(
        {int(v) for lab in labels.values() if lab is not None for v in np.unique(lab) if v != 0}
    )
    cmap = colormaps["tab10"]
    colors = {lab: cmap(i % 10) for i, lab in enumerate(present)}

    planes = display_planes(shape, affine)
    height_px, width_px = figure_pixel_size(d, panel_size, dpi)
    height_in = height_px / dpi
    fig = Figure(figsize=(width_px / dpi, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    top = 1.0 - _TITLE_HEIGHT / height_in
    bottom = _BAR_HEIGHT / height_in
    fig.subplots_adjust(left=0.02, right=0.995, bottom=bottom, top=top, wspace=0.08, hspace=0.12)
    axes = np.asarray(fig.subplots(len(planes), len(COLUMNS), squeeze=False))
    if title:
        fig.suptitle(title, fontsize=11, y=1.0 - 0.15 * _TITLE_HEIGHT / height_in)

    diff_image = det_image = None
    for row, pl in enumerate(planes):
        aspect = float(sp[pl.v_axis] / sp[pl.h_axis])
        ax = axes[row]
        gray = {"cmap": "gray", "vmin": vmin, "vmax": vmax}
        _show(ax[0], pl.take(fx), aspect, **gray)
        _show(ax[1], pl.take(mv), aspect, **gray)
        _show(ax[2], pl.take(wp), aspect, **gray)
        _show(ax[3], pl.take(diff_before), aspect, cmap="magma", vmin=0.0, vmax=dmax)
        diff_image = _show(ax[4], pl.take(diff_after), aspect, cmap="magma", vmin=0.0, vmax=dmax)
        _show(ax[5], pl.take(wp), aspect, **gray)
        if labels["moving_label"] is not None:
            _contours(ax[1], pl.take(labels["moving_label"]), colors, "solid", 0.8)
        if labels["fixed_label"] is not None:
            _contours(ax[5], pl.take(labels["fixed_label"]), colors, "solid", 1.0)
        if labels["warped_label"] is not None:
            _contours(ax[5], pl.take(labels["warped_label"]), colors, "dashed", 0.8)
        if labels["fixed_label"] is None and labels["warped_label"] is None:
            ax[5].text(0.5, 0.05, "no labels", color="w", ha="center", transform=ax[5].transAxes)
        uh, uv = pl.in_plane_flow(u)
        _grid(ax[6], uh, uv, aspect)
        det_plane = pl.take(det)
        det_image = _show(ax[7], det_plane, aspect, cmap="RdBu_r", norm=jnorm)
        folds = det_plane <= 0
        if folds.any():
            _contours(ax[7], folds.astype(np.int64), {1: _FOLD_COLOUR}, "solid", 1.0)
        ax[7].text(
            0.02, 0.02, f"folds {int(folds.sum())}", fontsize=7, transform=ax[7].transAxes,
            bbox={"facecolor": "white", "alpha": 0.7, "linewidth": 0, "pad": 1},
        )  # fmt: skip
        for col, axis in enumerate(ax):
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(COLUMNS[col], fontsize=8)
        if pl.left:
            where = f"left {pl.left}, up {pl.up}"
        else:
            where = f"axis {pl.h_axis} right, {pl.v_axis} up"
        slice_text = "" if pl.normal < 0 else f" {pl.index}"
        ax[0].set_ylabel(f"{pl.name}{slice_text}\n({where})", fontsize=7)
        if pl.left:
            ax[0].text(0.02, 0.5, pl.left, color="yellow", fontsize=7, va="center",
                       transform=ax[0].transAxes)  # fmt: skip
            ax[0].text(0.5, 0.97, pl.up, color="yellow", fontsize=7, ha="center", va="top",
                       transform=ax[0].transAxes)  # fmt: skip

    # legends: label contours and fold outlines
    handles = [
        Line2D([], [], color="0.3", linestyle="solid", label="fixed labels (solid)"),
        Line2D([], [], color="0.3", linestyle="dashed", label="warped labels (dashed)"),
    ]
    axes[0, 5].legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1.0),
                      fontsize=5, framealpha=0.7)  # fmt: skip
    fold = Line2D([], [], color=_FOLD_COLOUR, label="folds (det J <= 0)")
    axes[0, 7].legend(handles=[fold], loc="upper center", fontsize=5, framealpha=0.7)
    # colour bars under the difference columns and the Jacobian column
    bar_h = 0.25 * bottom
    for image, cols, name in ((diff_image, (3, 4), "|difference|"), (det_image, (7,), "det J")):
        left_box = axes[-1, cols[0]].get_position()
        right_box = axes[-1, cols[-1]].get_position()
        cax = fig.add_axes((left_box.x0, 0.3 * bottom, right_box.x1 - left_box.x0, bar_h))
        bar = fig.colorbar(image, cax=cax, orientation="horizontal")
        bar.ax.tick_params(labelsize=6)
        bar.ax.set_title(name, fontsize=6, pad=1)
    return fig
