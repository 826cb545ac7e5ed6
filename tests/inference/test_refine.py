"""Instance optimisation improves the match from the network's flow and keeps its contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maxca.data.io import Volume
from maxca.errors import MaxcaInputError
from maxca.inference import refine_flow, register_pair
from maxca.metrics import njd_percent
from maxca.spatial import warp

from .conftest import SHAPE, Info, KnownFlowModel, blobs, centre_of, lia_affine, world_of


def _pair():
    aff = lia_affine(spacing=(2.0, 2.0, 2.0))
    c = centre_of(aff, SHAPE)
    fixed = blobs(world_of(aff, SHAPE), c)
    moving = blobs(world_of(aff, SHAPE), c + np.array([2.5, -2.0, 1.5]))  # ~1-1.3 voxel shifts
    return torch.from_numpy(fixed)[None, None], torch.from_numpy(moving)[None, None]


def test_refine_improves_the_match():
    fixed, moving = _pair()
    init = torch.zeros(1, 3, *SHAPE)
    weights = {"similarity": 1.0, "diffusion": 1.0, "dice": 0.5}  # dice: training only, ignored
    refined = refine_flow(fixed, moving, init, steps=10, weights=weights)
    assert refined.shape == init.shape and not refined.requires_grad
    before = (fixed - moving).abs().mean()
    after = (fixed - warp(moving, refined)).abs().mean()
    assert after < 0.5 * before


def test_refine_with_mind_aligns_a_negated_contrast():
    # the moving image in a negated contrast (background still 0, like the padding): MIND-SSC
    # compares structure, so refining against it aligns as with the same contrast, while NCC
    # pushes the flow the wrong way (scored with the moving image in the fixed's contrast)
    fixed, moving = _pair()
    init = torch.zeros(1, 3, *SHAPE)
    before = (fixed - moving).abs().mean()
    mind = refine_flow(fixed, -moving, init, steps=20, similarity="mind")
    same = refine_flow(fixed, moving, init, steps=20, similarity="mind")
    ncc = refine_flow(fixed, -moving, init, steps=20, similarity="ncc")
    torch.testing.assert_close(mind, same, atol=1e-4, rtol=0)
    assert (fixed - warp(moving, mind)).abs().mean() < 0.3 * before
    assert (fixed - warp(moving, ncc)).abs().mean() > before


def test_refine_zero_steps_and_bad_arguments():
    fixed, moving = _pair()
    init = torch.randn(1, 3, *SHAPE) * 0.1
    assert torch.equal(refine_flow(fixed, moving, init, 0), init)
    with pytest.raises(MaxcaInputError, match="steps"):
        refine_flow(fixed, moving, init, -1)
    with pytest.raises(MaxcaInputError, match="flow must have shape"):
        refine_flow(fixed, moving, init[:, :2], 3)
    with pytest.raises(MaxcaInputError, match="regularise"):
        refine_flow(fixed, moving, init, 3, regularise="velocity")


def _diffusion(flow: torch.Tensor) -> float:
    return sum(float((flow.diff(dim=k) ** 2).mean()) for k in (2, 3, 4))


def test_update_mode_regularises_the_change_not_the_prediction():
    """With no similarity term, ``update`` leaves a rough prediction exactly as it is (the
    regulariser's gradient vanishes there), while ``field`` smooths it."""
    fixed, moving = _pair()
    torch.manual_seed(0)
    init = torch.randn(1, 3, *SHAPE) * 0.5
    only_smooth = {"similarity": 0.0, "diffusion": 1.0}
    kept = refine_flow(fixed, moving, init, 5, weights=only_smooth, regularise="update")
    assert torch.equal(kept, init)
    smoothed = refine_flow(fixed, moving, init, 5, weights=only_smooth)  # "field", the default
    assert _diffusion(smoothed) < 0.9 * _diffusion(init)
    # with the similarity on, the update mode still moves the field
    moved = refine_flow(fixed, moving, init, 5, regularise="update")
    assert not torch.equal(moved, init)


def test_register_pair_refine_weights(monkeypatch: pytest.MonkeyPatch):
    """The record's ``refine`` entry gives the defaults; its training weights reach the
    refinement only in ``field`` mode; explicit options win."""
    import maxca.inference.refine as refine_module

    seen: list[dict] = []

    def spy(fixed, moving, flow, steps, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append(kwargs)
        return flow

    monkeypatch.setattr(refine_module, "refine_flow", spy)
    aff = lia_affine(spacing=(2.0, 2.0, 2.0))
    image = Volume(blobs(world_of(aff, SHAPE), centre_of(aff, SHAPE)), aff)
    loss = {"similarity": "ncc", "window": 5, "weights": {"similarity": 1.0, "diffusion": 0.1}}
    info = Info({"loss": loss})
    stub = KnownFlowModel(lambda s: torch.zeros(3, *s))
    register_pair(stub, info, image, image, refine_steps=2)
    register_pair(stub, info, image, image, refine_steps=2, refine_options={"regularise": "update"})
    assert seen[0]["window"] == 5 and seen[0]["weights"] == loss["weights"]
    assert seen[1]["window"] == 5 and "weights" not in seen[1]
    recorded = Info({"loss": loss, "refine": {"regularise": "update", "lr": 0.05}})
    register_pair(stub, recorded, image, image, refine_steps=2)
    assert seen[2]["regularise"] == "update" and seen[2]["lr"] == 0.05
    assert "weights" not in seen[2]
    register_pair(stub, recorded, image, image, refine_steps=2, refine_options={"lr": 0.2})
    assert seen[3]["lr"] == 0.2 and seen[3]["regularise"] == "update"
    # a record whose refine entry refine_flow could not take is refused in one line
    for bad in ({"steps": 5}, [0.05]):
        with pytest.raises(MaxcaInputError, match="data.refine"):
            register_pair(stub, Info({"refine": bad}), image, image, refine_steps=2)


def test_refine_velocity_returns_its_integral():
    from maxca.spatial import integrate_velocity

    fixed, moving = _pair()
    v0 = torch.zeros(1, 3, *SHAPE)
    seen: list[tuple[int, torch.Tensor]] = []
    out = refine_flow(
        fixed, moving, v0, steps=5, velocity=v0, int_steps=4,
        callback=lambda step, field: seen.append((step, field.clone())),
    )  # fmt: skip
    assert out.abs().max() > 0
    # the callback sees every step's velocity; the result is the last one integrated
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5]
    assert not seen[-1][1].requires_grad
    torch.testing.assert_close(out, integrate_velocity(seen[-1][1], 4))
    # the exponential of a small smooth velocity: fold-free
    assert njd_percent(out[0]) == 0.0


def test_register_pair_with_refine_moves_the_flow():
    aff = lia_affine(spacing=(2.0, 2.0, 2.0))
    c = centre_of(aff, SHAPE)
    fixed = Volume(blobs(world_of(aff, SHAPE), c), aff)
    moving = Volume(blobs(world_of(aff, SHAPE), c + np.array([2.5, -2.0, 1.5])), aff)
    stub = KnownFlowModel(lambda s: torch.zeros(3, *s))
    plain = register_pair(stub, Info(), fixed, moving)
    refined = register_pair(stub, Info(), fixed, moving, refine_steps=10)
    assert np.abs(plain.flow).max() == 0.0
    err_plain = np.abs(plain.warped.array - fixed.array).mean()
    err_refined = np.abs(refined.warped.array - fixed.array).mean()
    assert err_refined < 0.8 * err_plain
    assert "refine" in refined.timings
    # a diffeomorphic request refines the velocity and integrates it
    diffeo = register_pair(stub, Info(), fixed, moving, diffeomorphic=True, refine_steps=3)
    assert np.abs(diffeo.flow).max() > 0


def test_refine_on_a_coarser_grid_changes_the_field_by_a_linear_upsampling():
    """``resolution=2`` optimises the change on a grid half as fine: on a 9^3 grid its nodes
    are the even voxels (corners aligned), so the change at every odd voxel is the mean of its
    two even neighbours along each axis; it still improves the match, and with no similarity
    the field does not move."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 1, 3, 3, 3, generator=g)
    fixed = torch.nn.functional.interpolate(coarse, size=(9, 9, 9), mode="trilinear")
    moving = torch.roll(fixed, shifts=1, dims=2)
    init = torch.randn(1, 3, 9, 9, 9, generator=g) * 0.1
    out = refine_flow(fixed, moving, init, 10, regularise="update", resolution=2, window=3)
    change = out - init
    assert change.abs().max() > 1e-3
    odd, left, right = (torch.tensor(i) for i in ([1, 3, 5, 7], [0, 2, 4, 6], [2, 4, 6, 8]))
    for axis in (2, 3, 4):
        mid = 0.5 * (change.index_select(axis, left) + change.index_select(axis, right))
        torch.testing.assert_close(change.index_select(axis, odd), mid, atol=1e-6, rtol=0)
    before = (fixed - warp(moving, init)).abs().mean()
    assert (fixed - warp(moving, out)).abs().mean() < before
    only_smooth = {"similarity": 0.0, "diffusion": 1.0}
    kept = refine_flow(
        fixed, moving, init, 5, weights=only_smooth, regularise="update", resolution=2
    )
    torch.testing.assert_close(kept, init, atol=0, rtol=0)
    # a velocity refined on the coarse grid is still integrated (fold-free here)
    v = refine_flow(
        fixed, moving, init, 3, velocity=init, regularise="update", resolution=3, window=3
    )
    assert v.shape == init.shape and njd_percent(v[0]) == 0.0
    with pytest.raises(MaxcaInputError, match="resolution must be an integer >= 1"):
        refine_flow(fixed, moving, init, 3, regularise="update", resolution=0)
    with pytest.raises(MaxcaInputError, match='needs regularise="update"'):
        refine_flow(fixed, moving, init, 3, resolution=2)
