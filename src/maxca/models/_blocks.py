"""Small blocks the host networks share: conv blocks, a channel LayerNorm, attention slots."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from maxca.layers.attention import make_attention
from maxca.layers.checkpoint import maybe_checkpoint
from maxca.layers.factories import conv, instance_norm_cls
from maxca.models.base import ModelConfig

__all__ = ["ConvBlock", "ChannelLayerNorm", "AttentionSlot", "attention_or_identity"]


class ConvBlock(nn.Sequential):
    """``k^d`` conv -> LeakyReLU(0.2) [-> InstanceNorm]: ``(B, Cin, *S) -> (B, Cout, *S/stride)``
    (odd ``kernel_size``, same padding)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        norm: bool = False,
        kernel_size: int = 3,
        stride: int = 1,
    ) -> None:
        layers: list[nn.Module] = [
            conv(spatial_dims, in_channels, out_channels, kernel_size, stride=stride),
            nn.LeakyReLU(0.2),
        ]
        if norm:
            layers.append(instance_norm_cls(spatial_dims)(out_channels))
        super().__init__(*layers)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``(B, C, *S)`` (no permutes): each voxel's ``C``
    values are normalised to zero mean and unit variance, then scaled and shifted per channel.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)  # (B, C, *S)
        # variance as the mean of the centred squares: on CPU, torch's ``var`` over a
        # non-innermost axis took ~3x this whole forward (torch 2.13, 16 x 80x96x112)
        inv_std = torch.rsqrt(centred.square().mean(dim=1, keepdim=True) + self.eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(self.bias.view(shape), centred * inv_std, self.weight.view(shape))


class AttentionSlot(nn.Module):
    """The configured attention block at one resolution level of a host: ``(B, C, *S) ->
    (B, C, *S)``, residual.

    ``global_sa`` blocks cost memory quadratic in the number of tokens ``prod(S)``. When the
    config leaves ``attention_levels`` at ``None`` (host defaults), a ``global_sa`` block whose
    input has more tokens than its ``max_tokens`` is skipped (identity) and the decision is
    taken per forward from the actual size. When the user listed the levels explicitly, the
    block always runs and refuses (its own ``max_tokens``, see
    :class:`~maxca.layers.maxca.AttentionBlock`) an input that is too large with a
    ``MaxcaInputError`` naming the memory it would need.
    ``config.checkpoint`` recomputes the block in backward.
    """

    def __init__(
        self,
        config: ModelConfig,
        level: int,
        channels: int,
        block_checkpoint: bool | str | None = None,
    ) -> None:
        super().__init__()
        kwargs = {}
        if config.global_sa_max_tokens is not None:
            kwargs["max_tokens"] = config.global_sa_max_tokens
        self.block = make_attention(
            config.attention,
            config.spatial_dims,
            channels,
            heads=config.heads,
            region=config.region,
            drop=config.drop,
            checkpoint=False if block_checkpoint is None else block_checkpoint,
            **kwargs,
        )
        self.level = level
        self.strict = config.attention_levels is not None
        # the slot recomputes the whole block, unless the host chose the block's own mode
        self.use_checkpoint = config.checkpoint and block_checkpoint is None

    @property
    def max_tokens(self) -> int | None:
        """Token limit of the block (set only by quadratic kinds, ``global_sa``), else ``None``."""
        limit = getattr(self.block, "max_tokens", None)
        return None if limit is None else int(limit)

    def runs_at(self, spatial: tuple[int, ...] | torch.Size) -> bool:
        """Whether the block runs (rather than being skipped) on an input of spatial size
        ``spatial``; a strict block always runs (and may refuse the input)."""
        limit = self.max_tokens
        return self.strict or limit is None or math.prod(spatial) <= limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.runs_at(x.shape[2:]):
            return x
        return maybe_checkpoint(self.block, x, enabled=self.use_checkpoint)

    def extra_repr(self) -> str:
        return f"level={self.level}, strict={self.strict}"


def attention_or_identity(
    config: ModelConfig, level: int, channels: int, block_checkpoint: bool | str | None = None
) -> nn.Module:
    """An :class:`AttentionSlot` when ``level`` holds attention in ``config``, else identity.

    ``block_checkpoint`` (``None``: the slot checkpoints the whole block when
    ``config.checkpoint``) sets the block's own checkpointing mode instead (see
    :class:`~maxca.layers.maxca.AttentionBlock`)."""
    if level in config.levels_with_attention:
        return AttentionSlot(config, level, channels, block_checkpoint)
    return nn.Identity()
