"""Forward contract, training, checkpointing and gradients of every registered model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from maxca.errors import MaxcaInputError
from maxca.layers.attention import ATTENTION_KINDS
from maxca.models import RegistrationHead, RegistrationOutput, create_model, list_models
from maxca.models._blocks import AttentionSlot
from maxca.spatial import integrate_velocity, warp

from .conftest import SHAPES, TINY, pair, tiny_model

MODELS = ["pyramid", "unet", "hybrid", "corrmaxca"]


def test_every_registered_model_has_tiny_test_widths() -> None:
    assert sorted(TINY) == list_models()


# every host x attention kind x {2-D, 3-D}; pyramid_small shares pyramid's code: one build
FORWARD_CASES = [(name, kind, d) for name in MODELS for kind in ATTENTION_KINDS for d in (2, 3)] + [
    ("pyramid_small", "maxca", 2),
    ("pyramid_small", "none", 2),
]


@pytest.mark.parametrize(("name", "attention", "spatial_dims"), FORWARD_CASES)
def test_forward_shapes_and_near_identity_at_init(
    name: str, attention: str, spatial_dims: int
) -> None:
    model = tiny_model(name, spatial_dims, attention=attention).eval()
    batch = 2 if spatial_dims == 2 else 1
    fixed, moving = pair(spatial_dims, batch=batch)
    with torch.no_grad():
        out = model(fixed, moving)
    assert isinstance(out, RegistrationOutput)
    assert out.flow.shape == (batch, spatial_dims) + SHAPES[spatial_dims]
    assert out.warped.shape == moving.shape
    assert out.velocity is None
    assert torch.isfinite(out.flow).all()
    # heads start at N(0, 1e-5): a fresh model is (almost) the identity transform
    assert out.flow.abs().max() < 1e-2
    torch.testing.assert_close(out.warped, moving, atol=1e-2, rtol=0)


def test_default_attention_placement() -> None:
    def levels(model: torch.nn.Module) -> list[int]:
        return sorted(m.level for m in model.modules() if isinstance(m, AttentionSlot))

    # pyramid: fuse block at all 4 levels + merge block at the 3 non-coarsest ones
    assert levels(tiny_model("pyramid", 2)) == [0, 0, 1, 1, 2, 2, 3]
    assert levels(tiny_model("pyramid", 2, blocks_per_level=1)) == [0, 1, 2, 3]
    assert levels(tiny_model("pyramid_small", 2)) == [1, 1, 2, 2, 3]
    assert levels(tiny_model("pyramid", 2, attention_levels=(0, 2))) == [0, 0, 2, 2]
    assert levels(tiny_model("unet", 2)) == [0, 1, 2, 3, 4]
    assert levels(tiny_model("hybrid", 2, depths=(2, 1, 1))) == [2, 2, 3, 4]
    assert levels(tiny_model("hybrid", 2, attention_levels=(0, 1, 4))) == [0, 1, 4]
    assert levels(tiny_model("pyramid", 2, attention="none")) == []


def test_padding_is_at_the_end_of_each_axis_and_cropped_exactly() -> None:
    model = tiny_model("pyramid", 2, attention="maxca").eval()
    fixed, moving = pair(2)  # 19 x 26 -> network grid 24 x 32
    assert model.padded_size(fixed.shape[2:]) == (24, 32)
    pad = [0, 32 - 26, 0, 24 - 19]
    big_f, big_m = F.pad(fixed, pad, mode="replicate"), F.pad(moving, pad, mode="replicate")
    with torch.no_grad():
        small = model(fixed, moving).flow
        big = model(big_f, big_m).flow
    torch.testing.assert_close(small, big[:, :, :19, :26], rtol=0, atol=0)
    zero = tiny_model("pyramid", 2, attention="maxca", pad_mode="zeros").eval()
    zero.load_state_dict(model.state_dict())
    with torch.no_grad():
        z = zero(fixed, moving).flow
        z_big = zero(F.pad(fixed, pad), F.pad(moving, pad)).flow
    torch.testing.assert_close(z, z_big[:, :, :19, :26], rtol=0, atol=0)
    assert not torch.equal(z, small)  # the pad mode matters near the end of the axes


def _blob_pair(size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A moving image of two Gaussian blobs, a smooth known flow, and fixed = warp(moving)."""
    grid = torch.stack(
        torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 2, indexing="ij")
    )
    c = (size - 1) / 2
    moving = torch.exp(-((grid[0] - c + 4) ** 2 + (grid[1] - c) ** 2) / 30.0)
    moving = moving + 0.7 * torch.exp(-((grid[0] - c - 6) ** 2 + (grid[1] - c - 5) ** 2) / 15.0)
    flow = torch.stack(
        [
            2.0 * torch.sin(math.pi * grid[1] / (size - 1)),
            1.5 * torch.cos(math.pi * grid[0] / (size - 1)),
        ]
    )[None]
    moving = moving[None, None]
    return warp(moving, flow), moving, flow


def test_training_steps_reduce_the_loss() -> None:
    fixed, moving, _ = _blob_pair()
    model = tiny_model("pyramid", 2, attention="maxca")
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    with torch.no_grad():
        before = F.mse_loss(model(fixed, moving).warped, fixed).item()
    for _ in range(30):
        optimiser.zero_grad()
        loss = F.mse_loss(model(fixed, moving).warped, fixed)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        after = F.mse_loss(model(fixed, moving).warped, fixed).item()
    assert after < 0.7 * before, (before, after)


def _scale_heads(model: torch.nn.Module, std: float = 0.05) -> None:
    """Give the heads visible weights so the flow is far from zero (reproducible)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, RegistrationHead):
                w = m.conv.weight
                w.copy_(torch.randn(w.shape, generator=gen) * std)


@pytest.mark.parametrize("name", MODELS)
def test_diffeomorphic_returns_velocity_and_its_exponential(name: str) -> None:
    model = tiny_model(name, 2, attention="xca", diffeomorphic=True, int_steps=5).eval()
    std = {"pyramid": 0.05, "unet": 0.5, "hybrid": 1.0, "corrmaxca": 0.05}[name]
    _scale_heads(model, std=std)  # |v| ~ voxels
    fixed, moving = pair(2)
    with torch.no_grad():
        out = model(fixed, moving)
    assert out.velocity is not None
    assert out.velocity.shape == out.flow.shape == (1, 2) + SHAPES[2]
    assert out.velocity.abs().max() > 0.5
    assert (out.flow - out.velocity).abs().max() > 1e-2
    torch.testing.assert_close(out.flow, integrate_velocity(out.velocity, 5))
    torch.testing.assert_close(out.warped, warp(moving, out.flow))


def _loss(out: RegistrationOutput, fixed: torch.Tensor) -> torch.Tensor:
    weights = torch.linspace(-1.0, 1.0, out.flow.numel()).reshape(out.flow.shape)
    return F.mse_loss(out.warped, fixed) + (out.flow * weights).sum()


@pytest.mark.parametrize(
    ("name", "spatial_dims", "attention"),
    [
        ("pyramid", 2, "maxca"),
        ("pyramid", 3, "window"),
        ("unet", 2, "maxca"),
        ("hybrid", 2, "xca"),
        ("corrmaxca", 3, "maxca"),
        ("corrmaxca", 2, "dilated"),
    ],
)
def test_checkpointing_gives_the_same_output_and_gradients(
    name: str, spatial_dims: int, attention: str
) -> None:
    plain = tiny_model(name, spatial_dims, attention=attention)
    ckpt = tiny_model(name, spatial_dims, attention=attention, checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    _scale_heads(plain)
    _scale_heads(ckpt)
    fixed, moving = pair(spatial_dims)
    tol: dict = {}
    if name == "corrmaxca":
        # it checkpoints its blocks segment by segment and XCA head by head: the same terms
        # summed in another order, so compare in float64, where that order does not show
        plain, ckpt, fixed, moving = plain.double(), ckpt.double(), fixed.double(), moving.double()
        tol = {"rtol": 1e-9, "atol": 1e-9}
    outs = []
    for model in (plain, ckpt):
        out = model(fixed, moving)
        _loss(out, fixed).backward()
        outs.append(out)
    torch.testing.assert_close(outs[1].flow, outs[0].flow, **tol)
    torch.testing.assert_close(outs[1].warped, outs[0].warped, **tol)
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert p.grad is not None and q.grad is not None, n
        torch.testing.assert_close(q.grad.to(p.grad.dtype), p.grad, msg=n, **tol)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("pyramid", {}),
        ("pyramid", {"diffeomorphic": True}),
        ("unet", {}),
        ("hybrid", {"attention_levels": (0, 1, 2, 3, 4)}),
        ("corrmaxca", {}),
        ("corrmaxca", {"diffeomorphic": True, "attention": "regional"}),
    ],
)
def test_gradients_reach_every_parameter(name: str, overrides: dict) -> None:
    model = tiny_model(name, 2, **{"attention": "maxca", **overrides})
    fixed, moving = pair(2)
    _loss(model(fixed, moving), fixed).backward()
    params = dict(model.named_parameters())
    assert not [n for n, p in params.items() if p.grad is None]
    # every gradient is non-zero, except possibly in squeeze-excitation MLPs: with tiny widths
    # their ReLU has 2 hidden units, which a seeded init can leave inactive (a true zero)
    zero = [n for n, p in params.items() if not p.grad.abs().sum() and ".se." not in n]
    assert not zero


def test_global_sa_explicit_full_resolution_level_is_refused_with_the_memory() -> None:
    model = tiny_model("pyramid", 2, attention="global_sa", attention_levels=(0,))
    fixed, moving = torch.rand(2, 1, 1, 80, 96)  # 7680 tokens at level 0
    with pytest.raises(MaxcaInputError, match=r"(?i)GB"):
        model(fixed, moving)


def test_global_sa_is_skipped_where_it_does_not_fit_with_default_levels() -> None:
    model = tiny_model("pyramid", 2, attention="global_sa", global_sa_max_tokens=200)
    # 19 x 26 -> 24 x 32: levels 0 (768 tokens) and 1 (192) ... 3 (12)
    assert model.attention_plan(SHAPES[2]) == {0: False, 1: True, 2: True, 3: True}
    fixed, moving = pair(2)
    with torch.no_grad():
        out = model(fixed, moving)  # runs; level 0 is the identity
    assert out.flow.shape == (1, 2) + SHAPES[2]
    strict = tiny_model(
        "pyramid", 2, attention="global_sa", global_sa_max_tokens=200, attention_levels=(0, 1)
    )
    assert strict.attention_plan(SHAPES[2]) == {0: True, 1: True}
    with pytest.raises(MaxcaInputError, match=r"(?i)memory|GB|MB|tokens"):
        strict(fixed, moving)


def test_documented_global_sa_levels_for_brain_sizes() -> None:
    """The module docstrings name the levels where global SA fits at 2 mm and 1 mm."""
    sizes = {"mm2": (80, 96, 112), "mm1": (160, 192, 224)}
    expected = {
        "pyramid": {"mm2": [3], "mm1": []},
        "unet": {"mm2": [3, 4], "mm1": [4]},
        "hybrid": {"mm2": [3, 4], "mm1": [4]},
        "corrmaxca": {"mm2": [3], "mm1": []},
    }
    for name, by_size in expected.items():
        model = create_model(name, spatial_dims=3, attention="global_sa")
        for key, levels in by_size.items():
            plan = model.attention_plan(sizes[key])
            assert [lv for lv, runs in plan.items() if runs] == levels, (name, key, plan)
