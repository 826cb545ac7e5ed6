"""Radiological orientation of the registration figure (issue #15 item 16): rows axial, coronal,
sagittal whatever the file's axis order; checked on the displayed arrays, not on pixels."""

from __future__ import annotations

import numpy as np
import pytest

from maxca.viz.figures import build_registration_figure, display_planes

SHAPE = (20, 16, 24)
# brain-synth's LIA axes: axis 0 towards Left, axis 1 towards Inferior, axis 2 towards Anterior
LIA = np.array(
    [[-2.0, 0, 0, 19], [0, 0, 2.0, -23], [0, -2.0, 0, 15], [0, 0, 0, 1]], dtype=np.float64
)
RAS = np.diag([1.5, 1.5, 1.5, 1.0])


def _world(affine: np.ndarray) -> np.ndarray:
    """``(3, *SHAPE)`` RAS world coordinates (mm) of every voxel centre."""
    idx = np.indices(SHAPE, dtype=np.float64).reshape(3, -1)
    return (affine[:3, :3] @ idx + affine[:3, 3:]).reshape(3, *SHAPE)


@pytest.mark.parametrize("affine", [LIA, RAS], ids=["LIA", "RAS"])
def test_views_are_radiological(affine: np.ndarray) -> None:
    planes = display_planes(SHAPE, affine)
    assert [p.name for p in planes] == ["axial", "coronal", "sagittal"]
    x, y, z = _world(affine)  # towards Right, Anterior, Superior
    # (plane, field growing towards the panel's left, field growing upwards)
    expected = {"axial": (x, y), "coronal": (x, z), "sagittal": (y, z)}
    for p in planes:
        towards_left, upwards = expected[p.name]
        h = p.take(towards_left)
        v = p.take(upwards)
        assert np.all(np.diff(h, axis=0) < 0), p.name  # decreases from left to right
        assert np.all(np.diff(h, axis=1) == 0), p.name
        assert np.all(np.diff(v, axis=1) > 0), p.name  # increases from bottom to top
        assert np.all(np.diff(v, axis=0) == 0), p.name
        normal = {"axial": z, "coronal": y, "sagittal": x}[p.name]
        assert np.ptp(p.take(normal)) == 0  # a plane of constant S, A or R


def test_marker_lands_upper_left_in_the_axial_view_of_lia_data() -> None:
    vol = np.zeros(SHAPE)
    planes = {p.name: p for p in display_planes(SHAPE, LIA)}
    axial = planes["axial"]
    assert axial.normal == 1  # LIA: axis 1 runs along inferior-superior
    index = [slice(None)] * 3
    index[1] = axial.index
    # patient's right (small axis 0) and anterior (large axis 2) in the axial mid-plane
    marker = (2, axial.index, 21)
    vol[marker] = 1.0
    shown = axial.take(vol)  # (horizontal, vertical), origin at the lower left
    h, v = np.argwhere(shown == 1.0)[0]
    assert h < shown.shape[0] // 4 and v > 3 * shown.shape[1] // 4  # upper left
    assert shown.shape == (SHAPE[0], SHAPE[2])


def test_in_plane_flow_follows_the_display() -> None:
    u = np.zeros((3, *SHAPE))
    u[0] = 1.0  # LIA: one voxel towards the patient's left
    axial = display_planes(SHAPE, LIA)[0]
    uh, uv = axial.in_plane_flow(u)
    assert np.all(uh == 1.0) and np.all(uv == 0.0)  # left is on the screen's right
    u_ras = np.zeros((3, *SHAPE))
    u_ras[0] = -1.0  # RAS: towards the left is -x
    uh, _ = display_planes(SHAPE, RAS)[0].in_plane_flow(u_ras)
    assert np.all(uh == 1.0)


def test_figure_has_legends_and_colour_bars() -> None:
    rng = np.random.default_rng(0)
    img = rng.random(SHAPE)
    lab = (img > 0.5).astype(np.int64)
    flow = np.zeros((3, *SHAPE))
    flow[0, 8:10] = -3.0  # a fold
    fig = build_registration_figure(
        img, img, img, flow, fixed_label=lab, warped_label=lab, affine=LIA, dpi=30
    )
    legend_texts = {
        t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()
    }
    assert {"fixed labels (solid)", "warped labels (dashed)", "folds (det J <= 0)"} <= legend_texts
    bar_titles = {ax.get_title() for ax in fig.axes}
    assert {"|difference|", "det J"} <= bar_titles
    ylabels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert [t.split()[0] for t in ylabels] == ["axial", "coronal", "sagittal"]
    assert "left R, up A" in ylabels[0]
