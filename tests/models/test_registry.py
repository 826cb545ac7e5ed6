"""The model registry, config dataclasses and the errors a user can cause."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from maxca.errors import MaxcaInputError
from maxca.models import (
    CorrMAXCAConfig,
    HybridConfig,
    PyramidConfig,
    PyramidNet,
    UNetConfig,
    count_parameters,
    create_model,
    get_config_class,
    list_models,
    model_from_config,
    register_model,
)

from .conftest import TINY, pair, tiny_model


def test_list_models_and_config_classes() -> None:
    assert list_models() == ["corrmaxca", "hybrid", "pyramid", "pyramid_small", "unet"]
    assert get_config_class("corrmaxca") is CorrMAXCAConfig
    assert get_config_class("pyramid") is PyramidConfig
    assert get_config_class("pyramid_small") is PyramidConfig
    assert get_config_class("unet") is UNetConfig
    assert get_config_class("hybrid") is HybridConfig


def test_variants_share_one_implementation_with_other_defaults() -> None:
    big = create_model("pyramid", spatial_dims=2)
    small = create_model("pyramid_small", spatial_dims=2)
    assert type(big) is type(small) is PyramidNet
    assert (big.config.enc_channels, big.config.dec_channels) == (16, 32)
    assert (small.config.enc_channels, small.config.dec_channels) == (8, 16)
    assert small.model_name == "pyramid_small"
    assert count_parameters(small) < count_parameters(big)
    # explicit options override a variant's defaults
    assert create_model("pyramid_small", spatial_dims=2, dec_channels=8).config.dec_channels == 8


def test_count_parameters() -> None:
    model = tiny_model("unet", 2)
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == total > 0
    model.head.conv.weight.requires_grad_(False)
    assert count_parameters(model) == total - model.head.conv.weight.numel()
    assert count_parameters(model, trainable_only=False) == total


def test_register_model_rejects_a_second_builder_under_a_taken_name() -> None:
    @dataclass
    class Cfg:
        x: int = 1

    with pytest.raises(ValueError, match="already registered"):
        register_model("pyramid", Cfg)(lambda cfg: torch.nn.Identity())


@pytest.mark.parametrize("name", list(TINY))
def test_config_json_round_trip_rebuilds_an_identical_network(name: str) -> None:
    model = tiny_model(name, 2, attention="maxca", region=(4, 2)).eval()
    text = json.dumps(model.config_dict())
    rebuilt = model_from_config(json.loads(text)).eval()
    assert type(rebuilt) is type(model)
    assert rebuilt.model_name == name
    assert rebuilt.config == model.config  # tuples came back as tuples
    assert isinstance(rebuilt.config.region, tuple)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    fixed, moving = pair(2)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(fixed, moving).flow, model(fixed, moving).flow)
    cfg_type = type(model.config)
    assert cfg_type.from_json(model.config.to_json()) == model.config
    assert cfg_type.from_dict(model.config.to_dict()) == model.config


def test_config_normalises_scalars_and_lists_to_per_axis_tuples() -> None:
    cfg = PyramidConfig(spatial_dims=3, region=4, attention_levels=[2, 0])
    assert cfg.region == (4, 4, 4)
    assert cfg.attention_levels == (0, 2)
    assert PyramidConfig(spatial_dims=2, region=[6, 4]).region == (6, 4)
    assert UNetConfig(enc_channels=[4, 4], dec_channels=[4, 4, 4]).enc_channels == (4, 4)
    assert HybridConfig(depths=[0, 1, 2]).depths == (0, 1, 2)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: create_model("voxelmorph"), r"unknown model 'voxelmorph'.*pyramid"),
        (lambda: create_model("pyramid", attention="swin"), r"attention must be one of.*'swin'"),
        (lambda: create_model("pyramid", spatial_dims=4), r"spatial_dims must be 2 or 3, got 4"),
        (lambda: create_model("pyramid", enc_chanels=8), r"unknown option.*enc_chanels"),
        (lambda: create_model("pyramid", region=(4, 4)), r"region must have 3 entries"),
        (
            lambda: create_model("pyramid", attention_levels=(4,)),
            r"attention_levels.*\[0, 1, 2, 3\]",
        ),
        (lambda: create_model("pyramid", blocks_per_level=3), r"blocks_per_level must be 1 or 2"),
        (lambda: create_model("unet", dec_channels=(8, 8)), r"dec_channels must have 5 entries"),
        (lambda: create_model("hybrid", attention_levels=(5,)), r"attention_levels"),
        (lambda: create_model("pyramid", diffeomorphic="yes"), r"diffeomorphic must be true or"),
        (lambda: create_model("pyramid", pad_mode="reflect"), r"pad_mode must be one of"),
        (lambda: create_model("pyramid", heads=0), r"heads must be an integer >= 1, got 0"),
        (lambda: create_model("pyramid", drop=1.0), r"drop must be a number in \[0, 1\), got 1.0"),
        (lambda: create_model("corrmaxca", drop="0.1"), r"drop must be a number in \[0, 1\)"),
        (lambda: create_model("corrmaxca", attention_levels=(4,)), r"attention_levels"),
        (lambda: model_from_config({"spatial_dims": 2}), r"'name' key"),
        (lambda: PyramidConfig.from_dict({"depth": 3}), r"unknown field.*depth"),
        (lambda: PyramidConfig.from_json("{not json"), r"JSON"),
    ],
)
def test_bad_options_raise_clear_errors(call, match: str) -> None:
    with pytest.raises(MaxcaInputError, match=match):
        call()


@pytest.mark.parametrize("name", ["pyramid", "unet", "hybrid", "corrmaxca"])
def test_dropout_rate_is_set_from_the_config_in_every_attention_block(name: str) -> None:
    from maxca.layers import AttentionBlock

    model = create_model(name, spatial_dims=2, drop=0.2)
    blocks = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    assert blocks
    rates = {d.p for b in blocks for d in b.modules() if isinstance(d, torch.nn.Dropout)}
    assert rates == {0.2}
    assert model_from_config(model.config_dict()).config.drop == 0.2


def test_heads_must_divide_the_widths() -> None:
    with pytest.raises(MaxcaInputError):
        create_model("pyramid", spatial_dims=2, dec_channels=10, heads=4)


@pytest.mark.parametrize(
    ("fixed_shape", "moving_shape", "match"),
    [
        ((1, 1, 12, 14, 10), (1, 1, 12, 14, 11), r"same shape.*\(1, 1, 12, 14, 10\).*11\)"),
        ((1, 1, 12, 14), (1, 1, 12, 14), r"fixed must have 5 dims .* got shape \(1, 1, 12, 14\)"),
        ((1, 2, 8, 8, 8), (1, 2, 8, 8, 8), r"in_channels=1 channels, got shape \(1, 2, 8, 8, 8\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(fixed_shape, moving_shape, match: str) -> None:
    model = tiny_model("pyramid", 3)
    with pytest.raises(MaxcaInputError, match=match):
        model(torch.rand(fixed_shape), torch.rand(moving_shape))


def test_integer_and_mismatched_dtype_inputs_are_refused() -> None:
    model = tiny_model("unet", 2)
    img = torch.zeros(1, 1, 8, 8, dtype=torch.int64)
    with pytest.raises(MaxcaInputError, match="floating"):
        model(img, img)
    img = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(MaxcaInputError, match=r"torch.float32 tensor on cpu.*got torch.float64"):
        model(img, img)


def test_a_model_built_without_the_registry_still_exports_its_config() -> None:
    model = PyramidNet(PyramidConfig(spatial_dims=2, enc_channels=4, dec_channels=8, heads=2))
    rebuilt = model_from_config(model.config_dict())
    assert rebuilt.config == model.config
