"""registration_figure: writes a readable, non-constant PNG of the documented size; bad shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from maxca.errors import MaxcaInputError
from maxca.viz import COLUMNS, figure_pixel_size, registration_figure


def _scene(shape):
    rng = np.random.default_rng(0)
    grid = np.indices(shape, dtype=np.float64)
    centre = np.array(shape, dtype=np.float64).reshape(-1, *(1,) * len(shape)) / 2
    r = np.sqrt((((grid - centre) / 4.0) ** 2).sum(0))
    fixed = np.exp(-(r**2)) + 0.05 * rng.normal(size=shape)
    moving = np.roll(fixed, 2, axis=0)
    label = (r < 1.0).astype(np.int64)
    flow = np.zeros((len(shape), *shape))
    flow[0] = 2.0
    flow[0, 5:7] -= 4.0  # a fold: du_0/dp_0 = -2 around p_0 = 5..6
    return fixed, moving, label, flow


def test_pixel_size_formula():
    assert len(COLUMNS) == 8
    assert figure_pixel_size(3) == (690, 1600)  # 3 rows x 2 in + 0.5 in title + 0.4 in bars
    assert figure_pixel_size(2, panel_size=1.5, dpi=40) == (96, 480)


def test_3d_figure(tmp_path):
    fixed, moving, label, flow = _scene((16, 14, 12))
    path = tmp_path / "reg.png"
    out = registration_figure(
        fixed, moving, fixed, flow, path,
        fixed_label=label, warped_label=label, moving_label=np.roll(label, 2, axis=0),
        title="3-D test", spacing=(1.0, 1.0, 2.0),
    )  # fmt: skip
    assert out == path
    img = imread(path)
    assert img.shape[:2] == figure_pixel_size(3) == (690, 1600)
    assert img[..., :3].std() > 0.05
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reg.png"]  # no temporary left


def test_2d_figure_batched_torch_inputs_and_no_labels(tmp_path):
    fixed, moving, _, flow = _scene((20, 18))
    path = tmp_path / "reg2d.png"
    registration_figure(
        torch.from_numpy(fixed)[None, None], moving[None], fixed, torch.from_numpy(flow)[None],
        path, dpi=40,
    )  # fmt: skip
    img = imread(path)
    assert img.shape[:2] == figure_pixel_size(2, dpi=40) == (116, 640)
    assert img[..., :3].std() > 0.05


def test_bad_shapes_rejected(tmp_path):
    fixed, moving, label, flow = _scene((10, 12))
    path = tmp_path / "x.png"
    with pytest.raises(MaxcaInputError, match=r"warped must have the flow's spatial shape 10x12"):
        registration_figure(fixed, moving, fixed[:, :8], flow, path)
    with pytest.raises(MaxcaInputError, match=r"fixed_label must have .* 10x12 .* got 10x11"):
        registration_figure(fixed, moving, fixed, flow, path, fixed_label=label[:, :11])
    with pytest.raises(MaxcaInputError, match=r"flow must have shape \(d, \*S\)"):
        registration_figure(fixed, moving, fixed, flow[:1], path)
    with pytest.raises(MaxcaInputError, match=r"path must end in .png"):
        registration_figure(fixed, moving, fixed, flow, tmp_path / "x.jpg")
    with pytest.raises(MaxcaInputError, match=r"output folder must exist"):
        registration_figure(fixed, moving, fixed, flow, tmp_path / "no" / "x.png")
    assert list(tmp_path.iterdir()) == []
