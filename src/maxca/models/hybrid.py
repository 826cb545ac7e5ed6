"""TransMorph-style hybrid: conv stem, attention stages in the encoder, conv decoder.

- J. Chen, E. C. Frey, Y. He, W. P. Segars, Y. Li, Y. Du. "TransMorph: Transformer for
  unsupervised medical image registration." Medical Image Analysis 82, 2022 (the hybrid).
- M. Meng, M. Fulham, L. Bi, J. Kim. "Advancing Deformable Medical Image Registration with
  Multi-axis Cross-covariance Attention." arXiv:2412.18545, 2024 (MAXCA as a drop-in block).

Written from those descriptions; no code was copied.

Architecture (level ``l`` has spatial size ``P / 2**l`` of the padded input size ``P``, a
multiple of 16):

- input ``concat[fixed, moving]`` (``2C`` channels);
- conv stem: level 0 ``3^d conv -> LeakyReLU(0.2)`` to ``stem_channels[0]``; level 1
  avg-pool x2 then a conv to ``stem_channels[1]``;
- patch embedding to level 2 (stride-2 ``2^d`` conv + channel LayerNorm, ``embed_channels``),
  then encoder stages at levels 2, 3, 4 (1/4 .. 1/16) with ``depths[i]`` attention blocks each
  and widths ``embed_channels * 2**i``, joined by patch merging (stride-2 conv + LayerNorm,
  doubling the width);
- decoder from level 4: for ``l = 3 .. 0``: trilinear/bilinear upsample x2, concat the skip of
  level ``l`` (stage outputs at 3 and 2, stem outputs at 1 and 0), two ``3^d conv ->
  LeakyReLU`` to ``dec_channels[3 - l]``; then the registration head at full resolution.

Attention placement: the default ``attention_levels`` are the encoder stages ``(2, 3, 4)``.
Levels 0 and 1 may be listed too: one attention block then follows the stem conv there
(full- and half-resolution attention, which MAXCA makes affordable). A stage not listed keeps
its patch embedding/merging but has no attention blocks. With the defaults, ``global_sa`` runs
only where the tokens of a stage fit its ``max_tokens`` (default 4096): for an 80x96x112 input
levels 3 (10x12x14 = 1680 tokens) and 4 (5x6x7 = 210); for 160x192x224 level 4 (10x12x14)
only. Listed levels are strict (an input too large is refused with a ``MaxcaInputError``
naming the memory needed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from maxca.layers.factories import avg_pool_cls, conv_cls
from maxca.models._blocks import ChannelLayerNorm, ConvBlock, attention_or_identity
from maxca.models._registry import register_model
from maxca.models.base import ModelConfig, RegistrationModel, as_int, as_int_tuple
from maxca.models.heads import RegistrationHead

__all__ = ["HybridConfig", "HybridNet"]

_STAGE_LEVELS = (2, 3, 4)


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class HybridConfig(ModelConfig):
    """Options of :class:`HybridNet` (common fields: :class:`~maxca.models.base.ModelConfig`).

    Attributes:
        stem_channels: widths of the conv stem at levels 0 and 1.
        embed_channels: width of the first attention stage (level 2); it doubles per stage.
        depths: attention blocks in the stages at levels 2, 3, 4.
        dec_channels: decoder widths at levels 3, 2, 1, 0.
    """

    stem_channels: tuple[int, ...] = (16, 32)
    embed_channels: int = 32
    depths: tuple[int, ...] = (2, 2, 2)
    dec_channels: tuple[int, ...] = (64, 32, 32, 16)

    def __post_init__(self) -> None:
        self.stem_channels = as_int_tuple(self.stem_channels, "stem_channels", length=2)
        self.embed_channels = as_int(self.embed_channels, "embed_channels", 1)
        self.depths = as_int_tuple(self.depths, "depths", minimum=0, length=3)
        self.dec_channels = as_int_tuple(self.dec_channels, "dec_channels", length=4)
        super().__post_init__()

    def level_choices(self) -> tuple[int, ...]:
        return (0, 1) + _STAGE_LEVELS

    def default_levels(self) -> tuple[int, ...]:
        return _STAGE_LEVELS


# ---------------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------------
class _Downsample(nn.Sequential):
    """Patch embedding / merging: stride-2 ``2^d`` conv + channel LayerNorm,
    ``(B, Cin, *S) -> (B, Cout, *S/2)``."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__(
            conv_cls(spatial_dims)(in_channels, out_channels, kernel_size=2, stride=2),
            ChannelLayerNorm(out_channels),
        )


class _Stage(nn.Sequential):
    """``depth`` attention blocks at one level (identity when the level has no attention)."""

    def __init__(self, config: HybridConfig, level: int, channels: int, depth: int) -> None:
        super().__init__(*(attention_or_identity(config, level, channels) for _ in range(depth)))


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
class HybridNet(RegistrationModel):
    """Conv stem + attention encoder + conv decoder: ``(fixed, moving) (B, C, *S) ->
    RegistrationOutput``. See the module docstring; any input size works (padded to a multiple
    of 16)."""

    config_cls = HybridConfig

    def __init__(self, config: HybridConfig) -> None:
        super().__init__(config)
        d, stem, dec = config.spatial_dims, config.stem_channels, config.dec_channels
        widths = [config.embed_channels * 2**i for i in range(len(_STAGE_LEVELS))]
        self.stem0 = ConvBlock(d, 2 * config.in_channels, stem[0])
        self.attn0 = attention_or_identity(config, 0, stem[0])
        self.pool = avg_pool_cls(d)(2)
        self.stem1 = ConvBlock(d, stem[0], stem[1])
        self.attn1 = attention_or_identity(config, 1, stem[1])
        self.down = nn.ModuleList(
            _Downsample(d, stem[1] if i == 0 else widths[i - 1], widths[i])
            for i in range(len(_STAGE_LEVELS))
        )
        self.stages = nn.ModuleList(
            _Stage(config, lv, widths[i], config.depths[i]) for i, lv in enumerate(_STAGE_LEVELS)
        )
        # decoder[i] works at level 3 - i with skip widths (stage 3, stage 2, stem 1, stem 0)
        skips = [widths[1], widths[0], stem[1], stem[0]]
        ins = [widths[2]] + list(dec[:-1])
        self.decoder = nn.ModuleList(
            nn.Sequential(ConvBlock(d, cin + skip, cout), ConvBlock(d, cout, cout))
            for cin, skip, cout in zip(ins, skips, dec)
        )
        self.head = RegistrationHead(d, dec[-1])

    @property
    def size_multiple(self) -> int:
        return 2 ** _STAGE_LEVELS[-1]

    def predict_field(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        x = torch.cat([fixed, moving], dim=1)  # (B, 2C, *P)
        s0 = self.attn0(self.stem0(x))  # (B, stem0, *P)
        s1 = self.attn1(self.stem1(self.pool(s0)))  # (B, stem1, *P/2)
        x = s1
        skips = [s0, s1]
        for down, stage in zip(self.down, self.stages):
            x = stage(down(x))  # level 2 + i: (B, embed * 2**i, *P / 2**(2+i))
            skips.append(x)
        skips.pop()  # the deepest stage output is the decoder's input, not a skip
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        for block in self.decoder:
            x = F.interpolate(x, scale_factor=2.0, mode=mode, align_corners=False)
            x = block(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)  # (B, d, *P)


# ---------------------------------------------------------------------------------------------
# registered variants
# ---------------------------------------------------------------------------------------------
# Stem (16, 32), stages of width 32, 64, 128 with two attention blocks each at 1/4 .. 1/16,
# decoder (64, 32, 32, 16): a TransMorph-like layout at a CPU-friendly width.
register_model("hybrid", HybridConfig)(HybridNet)
