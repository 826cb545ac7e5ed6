"""Dual-stream coarse-to-fine correlation pyramid with an attention block at every level.

Our lighter variant of the CorrMLP pyramid. The paper's network itself (CorrMLP with MAXCA in
every correlation-aware block, 29,454,340 parameters at encoder 16 / decoder 32) is
``corrmaxca`` (:mod:`maxca.models.corrmaxca`). ``pyramid`` (3,188,044 parameters at the same
widths) and ``pyramid_small`` differ from it in:

- decoder width: ``dec_channels`` at every level (the paper: ``dec * 2**l``, 32/64/128/256);
- second block per level: ``concat -> 3^d conv + LeakyReLU -> attention`` on (first block's
  output, upsampled coarser features), without a correlation between them (the paper: the
  same correlation-aware block, correlation + concat + conv + block);
- fuse conv: conv + LeakyReLU before the block (the paper: a plain conv);
- upsampling of decoder features: a transposed conv keeping the width (the paper: ``w_{l+1}``
  to ``w_{l+1} / 2``), then a channel LayerNorm;
- flow upsampling: ``resize_flow`` with the cell geometry (half-voxel centred; the paper:
  corner-aligned ``align_corners=True``), values x2 in both;
- ``pyramid_small`` also halves the widths and has no attention at full resolution.

- M. Meng, M. Fulham, L. Bi, J. Kim. "Advancing Deformable Medical Image Registration with
  Multi-axis Cross-covariance Attention." arXiv:2412.18545, 2024.
- M. Meng, D. Feng, L. Bi, J. Kim. "Correlation-aware Coarse-to-fine MLPs for Deformable
  Medical Image Registration." CVPR 2024 (the pyramid).

Written from the method description (docs/method.md); no code was copied.

Architecture (``L = 4`` levels; level ``l`` has spatial size ``P / 2**l`` of the padded input
size ``P``, a multiple of ``2**(L-1) = 8``):

- **Encoder** (shared weights; fixed and moving run as one batch of ``2B`` through it, which is
  the same as running them separately since instance norm is per sample): level ``l`` is
  ``[AvgPool x2 (l > 0)] -> 2 x (3^d conv -> LeakyReLU(0.2) -> InstanceNorm)`` with
  ``enc_channels * 2**l`` channels.
- **Decoder**, coarsest to finest, constant width ``dec_channels`` at every level: the coarse
  levels are cheap at any width (``2**d`` times fewer voxels per level) and the full-resolution
  level dominates the cost, so a constant width keeps the cost predictable. At level ``l``:
  warp the moving features with the field so far (upsampled from level ``l + 1`` with
  ``resize_flow``, values x2; zero at the coarsest level, where nothing is warped), local
  correlation (``3^d`` channels, max displacement 1) between fixed and warped-moving
  features, ``concat[fixed, correlation, warped moving] -> 3^d conv + LeakyReLU`` (fuse) ->
  attention block; below the coarsest level, merge with the coarser decoder features
  upsampled by a stride-2 transposed conv and a channel LayerNorm
  (``concat -> 3^d conv + LeakyReLU``) and, with ``blocks_per_level=2``, a second attention
  block. A :class:`~maxca.models.heads.RegistrationHead` predicts a residual field added to
  the upsampled one. The level-0 field is the output (flow, or velocity when diffeomorphic;
  then the moving features are warped with the integrated upsampled velocity).

Attention placement with ``attention_levels=None``: levels ``first_attention_level .. 3``.
``global_sa`` then runs only where the tokens of a level fit its ``max_tokens`` (default
4096): for an 80x96x112 input that is level 3 (10x12x14 = 1680 tokens) only; for 160x192x224 no
level fits (level 3 has 20x24x28 = 13440 tokens) and every ``global_sa`` block is the identity.
Listing levels explicitly (e.g. ``attention_levels=(0,)``) makes them strict: an input too large
for global self-attention there is refused with a ``MaxcaInputError`` naming the memory needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from maxca.errors import MaxcaInputError
from maxca.layers.checkpoint import maybe_checkpoint
from maxca.layers.factories import avg_pool_cls, conv_transpose_cls
from maxca.models._blocks import ChannelLayerNorm, ConvBlock, attention_or_identity
from maxca.models._registry import register_model
from maxca.models.base import ModelConfig, RegistrationModel, as_int
from maxca.models.heads import RegistrationHead
from maxca.spatial import correlation, integrate_velocity, resize_flow, warp

__all__ = ["PyramidConfig", "PyramidNet"]


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class PyramidConfig(ModelConfig):
    """Options of :class:`PyramidNet` (common fields: :class:`~maxca.models.base.ModelConfig`).

    Attributes:
        enc_channels: width ``c`` of the encoder's level 0; level ``l`` has ``c * 2**l``.
        dec_channels: width of every decoder level (heads must divide it).
        blocks_per_level: attention blocks per decoder level: 1 (after the fuse conv) or 2
            (also after the merge with the coarser level; the coarsest level has no merge).
        first_attention_level: with ``attention_levels=None``, attention runs at levels
            ``first_attention_level .. 3`` (0 = every level, 1 = none at full resolution).
    """

    enc_channels: int = 16
    dec_channels: int = 32
    blocks_per_level: int = 2
    first_attention_level: int = 0

    #: number of resolution levels (level ``l`` has size ``1 / 2**l``)
    levels: ClassVar[int] = 4

    def __post_init__(self) -> None:
        self.enc_channels = as_int(self.enc_channels, "enc_channels", 1)
        self.dec_channels = as_int(self.dec_channels, "dec_channels", 1)
        self.blocks_per_level = as_int(self.blocks_per_level, "blocks_per_level", 1)
        if self.blocks_per_level > 2:
            raise MaxcaInputError(f"blocks_per_level must be 1 or 2, got {self.blocks_per_level}")
        self.first_attention_level = as_int(self.first_attention_level, "first_attention_level", 0)
        if self.first_attention_level >= self.levels:
            raise MaxcaInputError(
                f"first_attention_level must be in 0..{self.levels - 1}, "
                f"got {self.first_attention_level}"
            )
        super().__post_init__()

    def level_choices(self) -> tuple[int, ...]:
        return tuple(range(self.levels))

    def default_levels(self) -> tuple[int, ...]:
        return tuple(range(self.first_attention_level, self.levels))


# ---------------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------------
Level = tuple[torch.Tensor, torch.Tensor]
"""What one decoder level returns: ``(features (B, D, *S), field (B, d, *S))``."""


class _EncoderLevel(nn.Module):
    """``[AvgPool x2] -> 2 x (3^d conv -> LeakyReLU -> InstanceNorm)``: ``(B, Cin, *S) ->
    (B, Cout, *S / 2**pool)``."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, pool: bool):
        super().__init__()
        self.pool = avg_pool_cls(spatial_dims)(2) if pool else nn.Identity()
        self.convs = nn.Sequential(
            ConvBlock(spatial_dims, in_channels, out_channels, norm=True),
            ConvBlock(spatial_dims, out_channels, out_channels, norm=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(self.pool(x))


class _DecoderLevel(nn.Module):
    """One decoder level: correlation, fuse, attention, [merge, attention], residual head.

    ``forward(fixed_feat (B, c, *S), moving_feat (B, c, *S), coarser)`` with ``coarser`` None
    at the coarsest level, else ``(features (B, D, *S/2), field (B, d, *S/2))``; returns
    ``(features (B, D, *S), field (B, d, *S))``.
    """

    def __init__(self, config: PyramidConfig, level: int, feat_channels: int, coarsest: bool):
        super().__init__()
        d, width = config.spatial_dims, config.dec_channels
        self.diffeomorphic = config.diffeomorphic
        self.int_steps = config.int_steps
        self.use_checkpoint = config.checkpoint
        self.fuse = ConvBlock(d, 2 * feat_channels + 3**d, width)
        self.attn_fuse = attention_or_identity(config, level, width)
        self.coarsest = coarsest
        if not coarsest:
            self.up = nn.Sequential(
                conv_transpose_cls(d)(width, width, kernel_size=2, stride=2),
                ChannelLayerNorm(width),
            )
            self.merge = ConvBlock(d, 2 * width, width)
            self.attn_merge = (
                attention_or_identity(config, level, width)
                if config.blocks_per_level == 2
                else nn.Identity()
            )
        self.head = RegistrationHead(d, width)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, coarser: Level | None) -> Level:
        field_up = None
        if coarser is not None:
            field_up = resize_flow(coarser[1], fixed.shape[2:])  # (B, d, *S), values x2
        ckpt = self.use_checkpoint
        if field_up is None:
            x = maybe_checkpoint(self._fuse, fixed, moving, enabled=ckpt)
        else:
            x = maybe_checkpoint(self._fuse, fixed, moving, field_up, enabled=ckpt)
        x = self.attn_fuse(x)  # (B, D, *S); checkpointed by itself
        if coarser is not None:
            x = maybe_checkpoint(self._merge, x, coarser[0], enabled=ckpt)
            x = self.attn_merge(x)
        residual = self.head(x)  # (B, d, *S)
        return x, residual if field_up is None else field_up + residual

    def _fuse(
        self, fixed: torch.Tensor, moving: torch.Tensor, field_up: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Warp, correlate, concat, conv: ``-> (B, D, *S)``."""
        if field_up is not None:
            flow_up = (
                integrate_velocity(field_up, self.int_steps) if self.diffeomorphic else field_up
            )
            moving = warp(moving, flow_up)
        corr = correlation(fixed, moving, max_disp=1)  # (B, 3**d, *S)
        return self.fuse(torch.cat([fixed, corr, moving], dim=1))

    def _merge(self, x: torch.Tensor, coarser: torch.Tensor) -> torch.Tensor:
        """Concat with the upsampled coarser features (B, D, *S/2), conv: ``-> (B, D, *S)``."""
        return self.merge(torch.cat([x, self.up(coarser)], dim=1))


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
class PyramidNet(RegistrationModel):
    """Dual-stream correlation pyramid: ``(fixed, moving) (B, C, *S) -> RegistrationOutput``.

    Registered as ``pyramid`` and ``pyramid_small``; lighter than the paper's network
    ``corrmaxca`` (the differences are listed in the module docstring, with the architecture).
    Any input size works (padded to a multiple of 8 at the end of each axis, the flow cropped
    back).
    """

    config_cls = PyramidConfig

    def __init__(self, config: PyramidConfig) -> None:
        super().__init__(config)
        d, c, n = config.spatial_dims, config.enc_channels, config.levels
        widths = [c * 2**lv for lv in range(n)]
        self.encoder = shared_encoder(d, config.in_channels, widths)
        # decoder[l] works at level l; it runs from l = n-1 (coarsest) down to 0
        self.decoder = nn.ModuleList(
            _DecoderLevel(config, lv, widths[lv], coarsest=lv == n - 1) for lv in range(n)
        )

    @property
    def size_multiple(self) -> int:
        return 2 ** (self.config.levels - 1)

    def predict_field(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        return coarse_to_fine(self.encoder, self.decoder, fixed, moving, self.config.checkpoint)


def shared_encoder(d: int, in_channels: int, widths: Sequence[int]) -> nn.ModuleList:
    """The encoder levels shared by fixed and moving: level ``l`` maps ``widths[l - 1]``
    channels (``in_channels`` at level 0) to ``widths[l]``, halving the size from level 1."""
    return nn.ModuleList(
        _EncoderLevel(d, in_channels if lv == 0 else widths[lv - 1], widths[lv], lv > 0)
        for lv in range(len(widths))
    )


def coarse_to_fine(
    encoder: nn.ModuleList,
    decoder: nn.ModuleList,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    checkpoint: bool,
) -> torch.Tensor:
    """The flow ``(B, d, *P)`` of a dual-stream pyramid.

    ``fixed`` and ``moving`` ``(B, C, *P)`` go through ``encoder`` in one pass (stacked on the
    batch axis); ``decoder[l]`` takes the level-``l`` features of both and the result of
    ``decoder[l + 1]`` (``None`` at the coarsest level) and returns ``(features, flow)``."""
    b = fixed.shape[0]
    x = torch.cat([fixed, moving], dim=0)  # (2B, C, *P): one pass of the shared encoder
    feats = []
    for level in encoder:
        x = maybe_checkpoint(level, x, enabled=checkpoint)
        feats.append(x)  # level l: (2B, e_l, *P / 2**l)
    del x
    coarser = None
    for lv in reversed(range(len(decoder))):
        feat = feats.pop()  # level lv; dropped from the list once used
        coarser = decoder[lv](feat[:b], feat[b:], coarser)
        del feat
    assert coarser is not None
    return coarser[1]  # (B, d, *P)


# ---------------------------------------------------------------------------------------------
# registered variants
# ---------------------------------------------------------------------------------------------
# The authors' widths: encoder 16 (16, 32, 64, 128), decoder 32, attention at every level, two
# blocks per level.
register_model("pyramid", PyramidConfig)(PyramidNet)

# A CPU variant (the lightest; the module docstring says how it differs from ``corrmaxca``):
# encoder 8 (8, 16, 32, 64), decoder 16, no attention at full resolution (levels 1..3, two
# blocks each). Full-resolution attention is most of the pyramid's cost; level 0 keeps
# its correlation, fuse, merge and head, so fine displacements are still resolved there. Sized so
# that a training step at 80x96x112 on 2 CPU threads stays well under 10 s.
register_model(
    "pyramid_small",
    PyramidConfig,
    defaults={"enc_channels": 8, "dec_channels": 16, "first_attention_level": 1},
)(PyramidNet)
