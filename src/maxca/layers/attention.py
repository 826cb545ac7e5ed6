"""Attention kinds with one interface, and the factory that swaps them by one argument.

Every kind except ``"none"`` is an :class:`~maxca.layers.maxca.AttentionBlock`:
``x + RCAB(MultiAxisMixer(x))``, the same scaffolding as MAXCA (LayerNorm, C -> 2C expansion,
two token mixers on the channel halves, 2C -> C projection, residual channel attention). Only
the two token mixers differ, so comparing kinds isolates the attention mechanism:

============  =====================================  ======================================
kind          first half                             second half
============  =====================================  ======================================
maxca         dilated XCA (sparse, global)           regional XCA (local)
window        shifted-window self-attention (Swin)   window self-attention (Swin)
global_sa     global multi-head self-attention       global multi-head self-attention
xca           global XCA (XCiT)                      global XCA (XCiT)
none          identity (the block is skipped)
============  =====================================  ======================================

All modules map ``(B, C, *S) -> (B, C, *S)`` for any spatial size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from maxca.errors import MaxcaInputError
from maxca.layers.factories import check_spatial_dims
from maxca.layers.maxca import MAXCA, AttentionBlock
from maxca.layers.partition import as_tuple, group_tokens, pad_to_multiple, ungroup_view
from maxca.layers.xca import XCALayer, check_heads

ATTENTION_KINDS = ("maxca", "window", "global_sa", "xca", "none")

#: Default token limit of global self-attention (all voxels of a level attend to each other).
GLOBAL_SA_MAX_TOKENS = 4096


def global_sa_memory_bytes(tokens: int, heads: int, batch: int = 1, itemsize: int = 4) -> int:
    """Memory of the ``batch x heads x tokens x tokens`` attention matrix of global SA."""
    return int(batch) * int(heads) * int(tokens) ** 2 * int(itemsize)


def _sdpa_heads(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Tensor | None) -> Tensor:
    """Multi-head SDPA on token matrices ``(G, T, C)`` -> ``(G, T, C)``."""
    G, T, C = q.shape
    c = C // heads

    def split(t: Tensor) -> Tensor:
        return t.reshape(G, T, heads, c).transpose(1, 2)  # (G, H, T, c)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(G, T, C)


class WindowSALayer(nn.Module):
    """Swin-style (shifted) window multi-head self-attention, channels-last, residual.

    ``z + Linear(SDPA(Linear_qkv(LayerNorm(z))))`` within non-overlapping windows of ``R`` voxels.
    With ``shift=True`` the windows are displaced by ``R // 2`` per axis. The shift is done by
    zero padding at the start (rather than Swin's cyclic roll), and padded voxels are masked out
    as keys, so no window mixes opposite image borders and any size works.

    Input and output: ``(B, *S, C)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        heads: int,
        region: int | Sequence[int] = 8,
        shift: bool = False,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        check_heads(channels, heads)
        self.heads = heads
        self.region = as_tuple(region, spatial_dims)
        self.shift = tuple(r // 2 for r in self.region) if shift else (0,) * spatial_dims
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.drop = nn.Dropout(drop)

    def forward(self, z: Tensor) -> Tensor:
        """``z``: ``(B, *S, C)`` channels-last -> same shape."""
        B, spatial, C = z.shape[0], tuple(z.shape[1:-1]), z.shape[-1]
        qkv = self.qkv(self.norm(z))  # (B, *S, 3C)
        valid = torch.ones((1, *spatial, 1), dtype=torch.bool, device=z.device)
        if any(self.shift):
            spec: list[int] = [0, 0]
            for s in reversed(self.shift):
                spec += [s, 0]
            qkv, valid = F.pad(qkv, spec), F.pad(valid, spec)
        qkv, pads = pad_to_multiple(qkv, self.region)
        valid, _ = pad_to_multiple(valid, self.region)
        padded = tuple(qkv.shape[1:-1])
        tok = group_tokens(qkv, self.region, "regional")  # (B*G, P, 3C)
        q, k, v = tok.split(C, dim=-1)
        mask = None
        if any(pads) or any(self.shift):
            keys = group_tokens(valid, self.region, "regional")[..., 0]  # (G, P)
            mask = keys.repeat(B, 1)[:, None, None, :]  # (B*G, 1, 1, P), True = attend
        out = self.proj(_sdpa_heads(q, k, v, self.heads, mask))  # (B*G, P, C)
        out = ungroup_view(out, B, padded, self.region, "regional").reshape(B, *padded, C)
        out = out[(slice(None), *(slice(s, s + n) for s, n in zip(self.shift, spatial)))]
        return z + self.drop(out)


class GlobalSALayer(nn.Module):
    """Global multi-head self-attention over all voxels (``F.scaled_dot_product_attention``).

    Quadratic in the number of voxels. Refuses, with a clear error naming the memory the
    attention matrices would need, inputs of more than ``max_tokens`` voxels (``None``: no
    limit). Input and output: channels-last ``(B, *S, C)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        heads: int,
        max_tokens: int | None = GLOBAL_SA_MAX_TOKENS,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        check_heads(channels, heads)
        self.heads, self.max_tokens = heads, max_tokens
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.drop = nn.Dropout(drop)

    def check_tokens(self, spatial: Sequence[int], batch: int = 1) -> None:
        """Raise :class:`MaxcaInputError` if global SA over ``spatial`` exceeds ``max_tokens``."""
        n = 1
        for s in spatial:
            n *= int(s)
        if self.max_tokens is not None and n > self.max_tokens:
            gb = global_sa_memory_bytes(n, self.heads, batch) / 1e9
            raise MaxcaInputError(
                f"global self-attention over {'x'.join(map(str, spatial))} = {n} tokens would need "
                f"{gb:,.1f} GB for its {self.heads}-head {n}x{n} attention matrices (limit "
                f"max_tokens={self.max_tokens}); use it at coarser levels only, or attention="
                f"'maxca'"
            )

    def forward(self, z: Tensor) -> Tensor:
        """``z``: ``(B, *S, C)`` channels-last -> same shape."""
        B, spatial, C = z.shape[0], tuple(z.shape[1:-1]), z.shape[-1]
        self.check_tokens(spatial, B)
        qkv = self.qkv(self.norm(z)).reshape(B, -1, 3 * C)  # (B, N, 3C)
        q, k, v = qkv.split(C, dim=-1)
        out = self.proj(_sdpa_heads(q, k, v, self.heads, None))
        return z + self.drop(out.reshape(z.shape))


class GlobalSelfAttention(AttentionBlock):
    """Block with global multi-head self-attention in both halves (see module docstring)."""

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        heads: int = 4,
        max_tokens: int | None = GLOBAL_SA_MAX_TOKENS,
        drop: float = 0.0,
        checkpoint: bool = False,
    ) -> None:
        # the branch layers validate spatial_dims and heads (one clear error each)
        super().__init__(
            spatial_dims,
            channels,
            GlobalSALayer(spatial_dims, channels, heads, max_tokens, drop),
            GlobalSALayer(spatial_dims, channels, heads, max_tokens, drop),
            drop=drop,
            checkpoint=checkpoint,
        )
        self.max_tokens = max_tokens

    def check_tokens(self, spatial: Sequence[int], batch: int = 1) -> None:
        """Refuse (clear error with the memory needed) a size beyond ``max_tokens``."""
        self.mixer.branch_u.check_tokens(spatial, batch)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, C, *S)``; refused up front when it has more than ``max_tokens`` voxels."""
        self.check_input(x)
        self.check_tokens(tuple(x.shape[2:]), x.shape[0])
        return super().forward(x)


class WindowAttention(AttentionBlock):
    """Block with Swin-style shifted-window SA and window SA on the two halves."""

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        heads: int = 4,
        region: int | Sequence[int] = 8,
        drop: float = 0.0,
        checkpoint: bool = False,
    ) -> None:
        # the branch layers validate spatial_dims and heads (one clear error each)
        super().__init__(
            spatial_dims,
            channels,
            WindowSALayer(spatial_dims, channels, heads, region, shift=True, drop=drop),
            WindowSALayer(spatial_dims, channels, heads, region, shift=False, drop=drop),
            drop=drop,
            checkpoint=checkpoint,
        )


class GlobalXCA(AttentionBlock):
    """Block with plain global cross-covariance attention (XCiT) on both halves.

    Same depth-aware ``3^d`` qkv projection as MAXCA, so the only difference to MAXCA is the
    token grouping (all voxels instead of regions / dilated grids).
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        heads: int = 4,
        drop: float = 0.0,
        checkpoint: bool = False,
    ) -> None:
        # the branch layers validate spatial_dims and heads (one clear error each)
        super().__init__(
            spatial_dims,
            channels,
            XCALayer(spatial_dims, channels, heads, grouping="global", drop=drop),
            XCALayer(spatial_dims, channels, heads, grouping="global", drop=drop),
            drop=drop,
            checkpoint=checkpoint,
        )


class NoAttention(nn.Module):
    """The ``"none"`` kind: identity, with the same input validation as the other kinds."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, C, *S)`` returned unchanged."""
        AttentionBlock.check_input(self, x)  # type: ignore[arg-type]
        return x


def make_attention(
    kind: str,
    dim: int,
    channels: int,
    heads: int = 4,
    region: int | Sequence[int] = 8,
    checkpoint: bool = False,
    drop: float = 0.0,
    max_tokens: int | None = GLOBAL_SA_MAX_TOKENS,
) -> nn.Module:
    """Build an attention block of the given kind; every kind maps ``(B, C, *S) -> (B, C, *S)``.

    Args:
        kind: one of ``ATTENTION_KINDS`` = maxca | window | global_sa | xca | none.
        dim: spatial dimensionality, 2 or 3.
        channels: ``C``.
        heads: attention heads per branch (must divide ``channels``).
        region: region (window) size per axis, for ``maxca`` and ``window``.
        checkpoint: gradient checkpointing inside the block.
        drop: dropout rate.
        max_tokens: token limit of ``global_sa`` (it refuses larger inputs with a clear error).
    """
    check_spatial_dims(dim)
    if kind not in ATTENTION_KINDS:
        raise MaxcaInputError(f"unknown attention kind {kind!r}; choose one of {ATTENTION_KINDS}")
    if kind == "none":
        return NoAttention(dim, channels)
    if kind == "maxca":
        return MAXCA(dim, channels, heads, region, drop, checkpoint)
    if kind == "window":
        return WindowAttention(dim, channels, heads, region, drop, checkpoint)
    if kind == "global_sa":
        return GlobalSelfAttention(dim, channels, heads, max_tokens, drop, checkpoint)
    return GlobalXCA(dim, channels, heads, drop, checkpoint)
