"""The paper's network: the CorrMLP coarse-to-fine pyramid with MAXCA in every block.

- M. Meng, M. Fulham, L. Bi, J. Kim. "Advancing Deformable Medical Image Registration with
  Multi-axis Cross-covariance Attention." arXiv:2412.18545, 2024 (the block).
- M. Meng, D. Feng, L. Bi, J. Kim. "Correlation-aware Coarse-to-fine MLPs for Deformable
  Medical Image Registration." CVPR 2024 (the pyramid, "CorrMLP").

The paper puts MAXCA into CorrMLP by replacing the MLP layer (and channel attention) of each
correlation-aware block with the MAXCA block. This module builds that network, written from
the method description (docs/method.md) and the CorrMLP structure (no code was copied).
With ``attention=<kind>`` the same network is built with another block in every slot
(``"none"``: the block is skipped and the correlation-aware block is correlation + conv).

Architecture (``L = 4`` levels; level ``l`` has the padded size ``P / 2**l``, ``P`` a multiple
of 8; ``e_l = enc_channels * 2**l``, ``w_l = dec_channels * 2**l``):

- **Encoder** (shared; fixed and moving run as one batch of ``2B``): level ``l`` is
  ``[AvgPool x2 (l > 0)] -> 2 x (3^d conv -> LeakyReLU(0.2) -> InstanceNorm)``, ``e_l``
  channels.
- **Correlation-aware block** ``CAB(a, b)`` on two ``(B, c, *S)`` maps:
  ``conv_{3^d}(concat[a, corr(a, b), b]) -> (B, w, *S)`` (a plain conv: no activation), then
  the attention block ``x + RCAB(MultiAxisXCA(x))``, whose outer residual ``x`` is the conv
  output. ``corr`` is the local correlation with max displacement 1 (``3^d`` channels).
- **Decoder**, coarsest to finest. Level 3: ``x_3 = CAB(f_3, m_3)``, ``flow_3 = head_3(x_3)``.
  Level ``l < 3``: ``up = 2 * interp_x2(flow_{l+1})`` (bi/trilinear on a corner-aligned grid,
  ``align_corners=True``, as in CorrMLP), ``m'_l = warp(m_l, up)``,
  ``x = CAB(f_l, m'_l)``, ``x_l = CAB(x, U_l(x_{l+1}))`` with ``U_l`` a stride-2 ``2^d``
  transposed conv from ``w_{l+1}`` to ``w_{l+1} / 2 = w_l`` channels followed by a channel
  LayerNorm, and ``flow_l = head_l(x_l) + up``. ``head_l`` is a ``3^d`` conv to ``d``
  channels with weights ``~ N(0, 1e-5)`` and zero bias. The output is ``flow_0``.
- **Diffeomorphic** (``diffeomorphic=True``): the fields are stationary velocities; the moving
  features are warped with the integrated upsampled velocity and the output is integrated
  by :class:`~maxca.models.base.RegistrationModel`.

Parameters at 3-D, ``enc_channels=16, dec_channels=32, heads=4, region=8``, ``attention=
"maxca"``: 29,454,340 (``enc_channels=8, dec_channels=16``: 7,506,148), the figures of the
paper's construction. Compare :mod:`maxca.models.pyramid` (our lighter variant: constant
decoder width, a conv+LeakyReLU merge instead of the second correlation-aware block).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from maxca.layers.checkpoint import maybe_checkpoint
from maxca.layers.factories import conv, conv_transpose_cls
from maxca.models._blocks import ChannelLayerNorm, attention_or_identity
from maxca.models._registry import register_model
from maxca.models.base import ModelConfig, RegistrationModel, as_choice, as_int
from maxca.models.heads import RegistrationHead
from maxca.models.pyramid import Level, coarse_to_fine, shared_encoder
from maxca.spatial import correlation, integrate_velocity, warp

__all__ = ["CorrMAXCAConfig", "CorrMAXCANet", "upsample_flow_corners"]

_LINEAR = {2: "bilinear", 3: "trilinear"}

#: values of ``CorrMAXCAConfig.checkpoint_granularity``
CHECKPOINT_GRANULARITIES = ("block", "stage", "fine")


@dataclass(kw_only=True)
class CorrMAXCAConfig(ModelConfig):
    """Options of :class:`CorrMAXCANet` (common fields: :class:`~maxca.models.base.ModelConfig`).

    Attributes:
        enc_channels: encoder width at level 0; level ``l`` has ``enc_channels * 2**l``.
        dec_channels: decoder width at level 0; level ``l`` has ``dec_channels * 2**l``
            (``heads`` must divide it).
        checkpoint_granularity: with ``checkpoint=True``: ``"block"`` (default: the
            correlation + conv and the attention block are checkpointed separately: the
            fastest, 1.2x the plain step at 40x48x56, but its full-resolution step does not
            fit in 16 GB), ``"stage"`` (each decoder stage is one checkpoint and the block
            inside it is recomputed segment by segment, XCA head by head: 3x less stored
            between forward and backward than ``"block"``, 1.6x the plain step) or ``"fine"``
            (as ``"stage"``, and inside the block each XCA branch, with its half of the 2C
            expansion, is one autograd function that stores only the block input and
            recomputes one head at a time in backward, without the heads ever being re-run by
            the stage's recomputation; the up-sampled coarser features are recomputed inside
            the second block's correlation + conv checkpoint: the lowest backward peak, about
            0.75x that of ``"stage"`` at 160x192x224 by extrapolation, and 1.4x the plain
            step). The same numbers in every case (the heads summed one by one: float32
            differences at the last bits). Measured in ``benchmarks/train_memory.py
            --profile-peak`` and ``benchmarks/checkpoint_cost.py --granularities``.
    """

    enc_channels: int = 16
    dec_channels: int = 32
    checkpoint_granularity: str = "block"

    #: number of resolution levels (level ``l`` has size ``1 / 2**l``)
    levels: ClassVar[int] = 4

    def __post_init__(self) -> None:
        self.enc_channels = as_int(self.enc_channels, "enc_channels", 1)
        self.dec_channels = as_int(self.dec_channels, "dec_channels", 1)
        self.checkpoint_granularity = as_choice(
            self.checkpoint_granularity, "checkpoint_granularity", CHECKPOINT_GRANULARITIES
        )
        super().__post_init__()

    @property
    def stage_checkpoint(self) -> bool:
        """True when decoder stages are checkpointed as a whole (blocks by segments)."""
        return self.checkpoint and self.checkpoint_granularity in ("stage", "fine")

    @property
    def fine_checkpoint(self) -> bool:
        """True with the ``"fine"`` granularity (see the class docstring)."""
        return self.checkpoint and self.checkpoint_granularity == "fine"

    def level_choices(self) -> tuple[int, ...]:
        return tuple(range(self.levels))

    def enc_widths(self) -> tuple[int, ...]:
        """Encoder channels per level, finest first."""
        return tuple(self.enc_channels * 2**lv for lv in range(self.levels))

    def dec_widths(self) -> tuple[int, ...]:
        """Decoder channels per level, finest first."""
        return tuple(self.dec_channels * 2**lv for lv in range(self.levels))


def upsample_flow_corners(flow: torch.Tensor) -> torch.Tensor:
    """CorrMLP's flow upsampling: ``2 * interpolate(flow, x2, linear, align_corners=True)``.

    ``(B, d, *S) -> (B, d, *2S)``. The grid is corner-aligned (the first and last voxels of
    the coarse and fine grids coincide) and the values are doubled; this is the paper's
    construction, kept for fidelity (``maxca.spatial.resize_flow`` uses the cell geometry).
    """
    mode = _LINEAR[flow.dim() - 2]
    return 2.0 * F.interpolate(flow, scale_factor=2, mode=mode, align_corners=True)


def conv_of_parts(layer: nn.Module, parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``layer(torch.cat(parts, dim=1))`` without the concatenation: one convolution per part
    with its slice of ``layer.weight`` (input channels in the order of ``parts``), summed in
    place, plus the bias. ``parts``: ``(B, c_i, *S)``; returns ``(B, C_out, *S)``."""
    weight, bias, start = layer.weight, layer.bias, 0
    out: torch.Tensor | None = None
    for part in parts:
        w = weight[:, start : start + part.shape[1]]
        start += part.shape[1]
        y = layer._conv_forward(part, w, None)  # the layer's own padding, stride, chunking
        out = y if out is None else out.add_(y)  # a conv keeps no output for its backward
    if start != weight.shape[1]:
        raise ValueError(f"parts hold {start} channels, the conv expects {weight.shape[1]}")
    assert out is not None
    if bias is not None:
        out = out.add_(bias.view(1, -1, *([1] * (out.dim() - 2))))
    return out


class CorrelationAwareBlock(nn.Module):
    """``attention(conv(concat[a, corr(a, b), b]))``: ``(B, c, *S) x 2 -> (B, w, *S)``.

    The conv is a plain ``3^d`` conv (no activation); the attention block (any kind, or the
    identity where the level holds none) adds its own outer residual to the conv output.
    With ``config.checkpoint`` the correlation + conv is recomputed in backward; with the
    ``"stage"`` granularity the block checkpoints itself segment by segment
    (``checkpoint="segments"``; ``"fine"``: ``checkpoint="fine"``, see
    :class:`~maxca.layers.maxca.AttentionBlock`) and the decoder level wraps the whole
    correlation-aware block in one more checkpoint (see ``_DecoderLevel``), with ``"block"``
    the block is one checkpoint.
    """

    def __init__(self, config: ModelConfig, level: int, in_channels: int, width: int) -> None:
        super().__init__()
        d = config.spatial_dims
        self.conv = conv(d, 2 * in_channels + 3**d, width, kernel_size=3)
        stage = isinstance(config, CorrMAXCAConfig) and config.stage_checkpoint
        fine = isinstance(config, CorrMAXCAConfig) and config.fine_checkpoint
        # None: the slot checkpoints the whole block
        mode = ("fine" if fine else "segments") if stage else None
        self.attn = attention_or_identity(config, level, width, block_checkpoint=mode)
        self.use_checkpoint = config.checkpoint

    def _fuse(
        self, a: torch.Tensor, b: torch.Tensor, b_map: nn.Module | None = None
    ) -> torch.Tensor:
        if b_map is not None:
            b = b_map(b)
        c = correlation(a, b, max_disp=1)
        # conv(concat[a, c, b]) as the sum of three convolutions with the matching slices of
        # the weight (the same values up to summation order): the 2c + 3^d channel concatenation,
        # the largest tensor of the level, is never materialised (nor copied into the conv's
        # layout), and no single conv input exceeds oneDNN's 2 GiB limit for its fast weight
        # gradient at full resolution (docs/benchmarks.md, 2b)
        return conv_of_parts(self.conv, (a, c, b))

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, b_map: nn.Module | None = None
    ) -> torch.Tensor:
        """``a`` (B, c, *S), ``b`` (B, c, *S), or ``b_map(b)`` is when ``b_map`` is given (it
        is then recomputed with the correlation and conv, and never stored)."""
        x = maybe_checkpoint(self._fuse, a, b, b_map, enabled=self.use_checkpoint)
        return self.attn(x)


class _DecoderLevel(nn.Module):
    """One decoder level ``l``: ``forward(f (B, e_l, *S), m (B, e_l, *S), coarser)`` with
    ``coarser`` None at the coarsest level, else ``(x_{l+1} (B, w_{l+1}, *S/2), field_{l+1}
    (B, d, *S/2))``; returns ``(x_l (B, w_l, *S), field_l (B, d, *S))``.

    With ``config.checkpoint`` and the ``"stage"`` granularity each stage (warp + first block;
    up-sampling + second block) is
    one checkpoint that stores only its inputs, so between forward and backward a level keeps
    its inputs and the two block outputs, and the backward of a stage holds one block's
    segment boundaries plus one segment (a few full-size tensors) at a time. With ``"fine"``
    the up-sampling ``U_l`` runs inside the second block's correlation + conv checkpoint, so
    its output is never stored across the block's backward.
    """

    def __init__(self, config: CorrMAXCAConfig, level: int, coarsest: bool) -> None:
        super().__init__()
        d = config.spatial_dims
        enc, dec = config.enc_widths()[level], config.dec_widths()[level]
        self.diffeomorphic, self.int_steps = config.diffeomorphic, config.int_steps
        self.use_checkpoint = config.stage_checkpoint
        self.fine = config.fine_checkpoint
        self.block1 = CorrelationAwareBlock(config, level, enc, dec)
        if not coarsest:
            coarse = config.dec_widths()[level + 1]
            self.up = nn.Sequential(
                conv_transpose_cls(d)(coarse, coarse // 2, kernel_size=2, stride=2),
                ChannelLayerNorm(coarse // 2),
            )
            self.block2 = CorrelationAwareBlock(config, level, dec, dec)
        self.head = RegistrationHead(d, dec)

    def _stage1(
        self, fixed: torch.Tensor, moving: torch.Tensor, field_up: torch.Tensor
    ) -> torch.Tensor:
        flow_up = integrate_velocity(field_up, self.int_steps) if self.diffeomorphic else field_up
        return self.block1(fixed, warp(moving, flow_up))

    def _stage2(self, x: torch.Tensor, coarser: torch.Tensor) -> torch.Tensor:
        if self.fine:  # the up-sampling is recomputed inside the fuse's checkpoint
            return self.block2(x, coarser, self.up)
        return self.block2(x, self.up(coarser))

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, coarser: Level | None) -> Level:
        ckpt = self.use_checkpoint
        if coarser is None:
            x = maybe_checkpoint(self.block1, fixed, moving, enabled=ckpt)
            return x, self.head(x)
        field_up = upsample_flow_corners(coarser[1])  # (B, d, *S)
        x = maybe_checkpoint(self._stage1, fixed, moving, field_up, enabled=ckpt)
        x = maybe_checkpoint(self._stage2, x, coarser[0], enabled=ckpt)
        return x, self.head(x) + field_up


@register_model("corrmaxca", CorrMAXCAConfig)
class CorrMAXCANet(RegistrationModel):
    """The paper's network: ``(fixed, moving) (B, C, *S) -> RegistrationOutput``.

    See the module docstring. Any input size works (padded at the end of each axis to a
    multiple of 8, the flow cropped back).
    """

    config_cls = CorrMAXCAConfig

    def __init__(self, config: CorrMAXCAConfig) -> None:
        super().__init__(config)
        d, n, enc = config.spatial_dims, config.levels, config.enc_widths()
        self.encoder = shared_encoder(d, config.in_channels, enc)
        # decoder[l] works at level l; it runs from l = n-1 (coarsest) down to 0
        self.decoder = nn.ModuleList(
            _DecoderLevel(config, lv, coarsest=lv == n - 1) for lv in range(n)
        )

    @property
    def size_multiple(self) -> int:
        return 2 ** (self.config.levels - 1)

    def predict_field(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        return coarse_to_fine(self.encoder, self.decoder, fixed, moving, self.config.checkpoint)
