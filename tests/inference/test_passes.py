"""Cascaded inference (``register_pair(passes=N)``): the flows of the passes compose, each pass
sees the moving image warped by the passes before, the model's recorded ``refine.passes``
applies only when refining, and bad values are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maxca.data.io import Volume
from maxca.errors import MaxcaInputError
from maxca.inference import register_pair
from maxca.spatial import compose, warp

from .conftest import SHAPE, Info, KnownFlowModel, blob_volume, centre_of, lia_affine

GRID = {"shape": [8, 10, 12], "spacing": [3.0, 4.0, 2.4]}


def _pair() -> tuple[Volume, Volume]:
    aff = lia_affine()
    c = centre_of(aff, SHAPE)
    return blob_volume(aff, SHAPE, c), blob_volume(aff, SHAPE, c + np.array([2.0, -1.0, 1.5]))


def _smooth(shape: tuple[int, ...]) -> torch.Tensor:
    """A smooth, position-dependent flow (voxels), so that composition is not a plain sum."""
    axes = torch.meshgrid(*(torch.linspace(0, np.pi, n) for n in shape), indexing="ij")
    return torch.stack([0.8 * torch.sin(axes[(k + 1) % 3]) for k in range(3)])


@pytest.mark.parametrize("passes", [1, 2, 3])
def test_constant_flows_add_up(passes):
    """A constant shift ``c`` per pass composes to ``passes * c`` (border padding: exact)."""
    c = (0.5, -0.25, 0.75)
    model = KnownFlowModel(lambda s: torch.tensor(c).reshape(3, 1, 1, 1).expand(3, *s).contiguous())
    fixed, moving = _pair()
    res = register_pair(model, Info(GRID), fixed, moving, passes=passes)
    assert len(model.calls) == passes and res.passes == passes
    expected = torch.tensor(c).reshape(1, 3, 1, 1, 1) * passes
    torch.testing.assert_close(res.grid_flow, expected.expand_as(res.grid_flow), atol=1e-5, rtol=0)


def test_each_pass_sees_the_moving_image_warped_by_the_passes_before():
    model = KnownFlowModel(_smooth)
    fixed, moving = _pair()
    res = register_pair(model, Info(GRID), fixed, moving, passes=3)
    (f1, m1), (f2, m2), (f3, m3) = model.inputs
    torch.testing.assert_close(f2, f1)
    torch.testing.assert_close(f3, f1)
    u = _smooth(tuple(GRID["shape"]))[None]
    torch.testing.assert_close(m2, warp(m1, u, mode="linear"), atol=1e-5, rtol=0)
    uu = compose(u, u)
    torch.testing.assert_close(m3, warp(m1, uu, mode="linear"), atol=1e-5, rtol=0)
    torch.testing.assert_close(res.grid_flow, compose(uu, u), atol=1e-5, rtol=0)
    assert not torch.allclose(res.grid_flow, 3 * u, atol=1e-3)  # a composition, not a sum


def test_one_pass_is_the_default_and_unchanged():
    fixed, moving = _pair()
    a = register_pair(KnownFlowModel(_smooth), Info(GRID), fixed, moving)
    b = register_pair(KnownFlowModel(_smooth), Info(GRID), fixed, moving, passes=1)
    assert a.passes == b.passes == 1
    torch.testing.assert_close(a.grid_flow, _smooth(tuple(GRID["shape"]))[None])
    np.testing.assert_array_equal(a.flow, b.flow)


def test_recorded_refine_passes_apply_only_when_refining():
    data = {**GRID, "refine": {"passes": 2, "regularise": "update"}}
    fixed, moving = _pair()
    plain = KnownFlowModel(_smooth)
    assert register_pair(plain, Info(data), fixed, moving).passes == 1
    assert len(plain.calls) == 1
    refined = KnownFlowModel(_smooth)
    res = register_pair(refined, Info(data), fixed, moving, refine_steps=1)
    assert res.passes == 2 and len(refined.calls) == 2
    explicit = KnownFlowModel(_smooth)
    res = register_pair(explicit, Info(data), fixed, moving, refine_steps=1, passes=3)
    assert res.passes == 3 and len(explicit.calls) == 3


def test_refinement_refines_the_last_pass_against_its_input():
    """Zero refine steps after two passes gives the two passes' composition; one step moves
    only the last pass (its change is small against the composition)."""
    fixed, moving = _pair()
    info = Info({**GRID, "refine": {"passes": 2, "regularise": "update"}})
    res = register_pair(KnownFlowModel(_smooth), info, fixed, moving, refine_steps=1)
    u = _smooth(tuple(GRID["shape"]))[None]
    change = (res.grid_flow - compose(u, u)).abs().max().item()
    assert 0 < change < 0.2  # one Adam step of lr 0.1 voxel, then composed


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_passes_are_refused(bad):
    fixed, moving = _pair()
    model = KnownFlowModel(_smooth)
    with pytest.raises(MaxcaInputError, match="passes must be an integer >= 1"):
        register_pair(model, Info(GRID), fixed, moving, passes=bad)
    assert model.calls == []  # refused before the network ran


def test_bad_recorded_passes_are_refused():
    fixed, moving = _pair()
    info = Info({**GRID, "refine": {"passes": 0}})
    with pytest.raises(MaxcaInputError, match="passes must be an integer >= 1"):
        register_pair(KnownFlowModel(_smooth), info, fixed, moving, refine_steps=1)


def test_refinement_sees_the_last_pass_input(monkeypatch):
    """--refine optimises the last pass's flow against the moving image that pass saw."""
    import maxca.inference.refine as refine_module

    seen = {}
    original = refine_module.refine_flow

    def spy(fixed, moving, flow, steps, **kw):
        seen.update(moving=moving.clone(), flow=flow.clone())
        return original(fixed, moving, flow, steps, **kw)

    monkeypatch.setattr(refine_module, "refine_flow", spy)
    model = KnownFlowModel(_smooth)
    fixed, moving = _pair()
    info = Info({**GRID, "refine": {"passes": 2, "regularise": "update"}})
    register_pair(model, info, fixed, moving, refine_steps=1)
    torch.testing.assert_close(seen["moving"], model.inputs[1][1])
    torch.testing.assert_close(seen["flow"], _smooth(tuple(GRID["shape"]))[None])
