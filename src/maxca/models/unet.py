"""VoxelMorph-style single-stream U-Net with attention blocks in the decoder.

- G. Balakrishnan, A. Zhao, M. R. Sabuncu, J. Guttag, A. V. Dalca. "VoxelMorph: A Learning
  Framework for Deformable Medical Image Registration." IEEE TMI 38(8), 2019 (the U-Net).
- M. Meng, M. Fulham, L. Bi, J. Kim. "Advancing Deformable Medical Image Registration with
  Multi-axis Cross-covariance Attention." arXiv:2412.18545, 2024 (MAXCA as a drop-in block).

Written from those descriptions; no code was copied.

Architecture (``n = len(enc_channels)`` downsamplings, default 4; level ``l`` has spatial size
``P / 2**l`` of the padded input size ``P``, a multiple of ``2**n = 16``):

- input ``concat[fixed, moving]`` (``2C`` channels);
- encoder: at levels ``0 .. n-1`` a ``3^d conv -> LeakyReLU(0.2)`` with ``enc_channels[l]``
  channels (kept as the skip of level ``l``), then max-pool x2;
- decoder: at level ``n`` a conv to ``dec_channels[0]``; then for ``l = n-1 .. 0``: nearest
  upsample x2, concat the skip of level ``l``, conv to ``dec_channels[n - l]``; every decoder
  level ``l`` (``0 .. n``) is followed by its attention block;
- ``final_channels`` extra convs at full resolution, then the registration head.

Attention placement with ``attention_levels=None``: every decoder level ``0 .. n``. ``global_sa``
then runs only where the tokens of a level fit its ``max_tokens`` (default 4096): for an
80x96x112 input levels 3 (10x12x14 = 1680 tokens) and 4 (5x6x7 = 210); for 160x192x224 level 4
(10x12x14) only. Listed levels are strict (an input too large is refused with a
``MaxcaInputError`` naming the memory needed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from maxca.layers.factories import max_pool_cls
from maxca.models._blocks import ConvBlock, attention_or_identity
from maxca.models._registry import register_model
from maxca.models.base import ModelConfig, RegistrationModel, as_int_tuple
from maxca.models.heads import RegistrationHead

__all__ = ["UNetConfig", "UNet"]


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class UNetConfig(ModelConfig):
    """Options of :class:`UNet` (common fields: :class:`~maxca.models.base.ModelConfig`).

    Attributes:
        enc_channels: encoder widths at levels ``0 .. n-1`` (``n`` = number of downsamplings).
        dec_channels: ``n + 1`` decoder widths, from the coarsest level ``n`` to level 0.
        final_channels: widths of the extra full-resolution convs before the head (may be
            empty).
    """

    enc_channels: tuple[int, ...] = (16, 32, 32, 32)
    dec_channels: tuple[int, ...] = (32, 32, 32, 32, 32)
    final_channels: tuple[int, ...] = (16, 16)

    def __post_init__(self) -> None:
        self.enc_channels = as_int_tuple(self.enc_channels, "enc_channels")
        n = len(self.enc_channels)
        self.dec_channels = as_int_tuple(self.dec_channels, "dec_channels", length=n + 1)
        final = self.final_channels
        self.final_channels = () if final in ((), []) else as_int_tuple(final, "final_channels")
        super().__post_init__()

    @property
    def levels(self) -> int:
        """Number of resolution levels (``len(enc_channels) + 1``)."""
        return len(self.enc_channels) + 1

    def level_choices(self) -> tuple[int, ...]:
        return tuple(range(self.levels))


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
class UNet(RegistrationModel):
    """Single-stream U-Net: ``(fixed, moving) (B, C, *S) -> RegistrationOutput``.

    See the module docstring; any input size works (padded to a multiple of ``2**n``).
    """

    config_cls = UNetConfig

    def __init__(self, config: UNetConfig) -> None:
        super().__init__(config)
        d, enc, dec = config.spatial_dims, config.enc_channels, config.dec_channels
        n = len(enc)
        self.encoder = nn.ModuleList(
            ConvBlock(d, 2 * config.in_channels if lv == 0 else enc[lv - 1], enc[lv])
            for lv in range(n)
        )
        self.pool = max_pool_cls(d)(2)
        # decoder[i] works at level n - i
        dec_in = [enc[-1]] + [dec[i - 1] + enc[n - i] for i in range(1, n + 1)]
        self.decoder = nn.ModuleList(ConvBlock(d, cin, cout) for cin, cout in zip(dec_in, dec))
        self.attention = nn.ModuleList(
            attention_or_identity(config, n - i, dec[i]) for i in range(n + 1)
        )
        widths = (dec[-1],) + tuple(config.final_channels)
        self.final = nn.Sequential(
            *(ConvBlock(d, cin, cout) for cin, cout in zip(widths[:-1], widths[1:]))
        )
        self.head = RegistrationHead(d, widths[-1])

    @property
    def size_multiple(self) -> int:
        return 2 ** len(self.config.enc_channels)

    def predict_field(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        x = torch.cat([fixed, moving], dim=1)  # (B, 2C, *P)
        skips = []
        for block in self.encoder:
            x = block(x)  # level l: (B, enc[l], *P / 2**l)
            skips.append(x)
            x = self.pool(x)
        for i, (block, attention) in enumerate(zip(self.decoder, self.attention)):
            if i > 0:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
                x = torch.cat([x, skips[-i]], dim=1)
            x = attention(block(x))  # level n - i: (B, dec[i], *P / 2**(n-i))
        return self.head(self.final(x))  # (B, d, *P)


# ---------------------------------------------------------------------------------------------
# registered variants
# ---------------------------------------------------------------------------------------------
# VoxelMorph's widths: encoder (16, 32, 32, 32), decoder (32, 32, 32, 32, 32), final (16, 16),
# attention after every decoder level.
register_model("unet", UNetConfig)(UNet)
