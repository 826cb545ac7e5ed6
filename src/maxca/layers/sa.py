"""Multi-head self-attention on grouped tokens: the SA counterpart of :mod:`maxca.layers.xca`.

One layer serves Swin-style (shifted) window attention (``grouping="regional"``), dilated
self-attention and global self-attention (``grouping="global"``), in 2-D and 3-D. The
attention kinds built from it are listed in :mod:`maxca.layers.attention`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from maxca.errors import MaxcaInputError
from maxca.layers.factories import check_spatial_dims
from maxca.layers.partition import GROUPINGS, as_tuple, group_tokens, pad_to_multiple, ungroup_view
from maxca.layers.xca import check_heads

__all__ = ["SelfAttentionLayer"]


def _sdpa_heads(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Tensor | None) -> Tensor:
    """Multi-head SDPA on token matrices ``(G, T, C)`` -> ``(G, T, C)``."""
    G, T, C = q.shape
    c = C // heads

    def split(t: Tensor) -> Tensor:
        return t.reshape(G, T, heads, c).transpose(1, 2)  # (G, H, T, c)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(G, T, C)


class SelfAttentionLayer(nn.Module):
    """Multi-head self-attention on grouped tokens, channels-last, residual.

    ``z + Dropout(Linear(SDPA(Linear_qkv(LayerNorm(z)))))`` within each token group:

    - ``grouping="regional"``: non-overlapping windows of ``R`` voxels (Swin window attention);
      with ``shift=True`` the windows are displaced by ``R // 2`` per axis. The shift is done
      by zero padding at the start (rather than Swin's cyclic roll), so no window mixes
      opposite image borders;
    - ``grouping="dilated"``: the voxels at one in-region offset across all regions;
    - ``grouping="global"``: all voxels (quadratic in their number; the block that holds the
      layer owns the token limit, see :class:`~maxca.layers.maxca.AttentionBlock`).

    Padding tokens (up to a multiple of ``R``, and the shift) are masked out as keys, so any
    size works and padding never changes the output at real voxels.

    Args:
        spatial_dims: 2 or 3.
        channels: ``C'`` (``heads`` must divide it).
        heads: attention heads.
        region: window size ``R`` per axis (ignored by ``grouping="global"``).
        grouping: one of ``GROUPINGS``.
        shift: shifted windows (regional grouping only).
        drop: dropout after the output projection.

    Input and output: channels-last ``(B, *S, C')``.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        heads: int,
        region: int | Sequence[int] = 8,
        grouping: str = "regional",
        shift: bool = False,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        check_heads(channels, heads)
        if grouping not in GROUPINGS:
            raise MaxcaInputError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
        if shift and grouping != "regional":
            raise MaxcaInputError(f"shift=True needs grouping='regional', got {grouping!r}")
        self.heads, self.grouping = heads, grouping
        self.region = as_tuple(region, spatial_dims)
        self.shift = tuple(r // 2 for r in self.region) if shift else (0,) * spatial_dims
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.drop = nn.Dropout(drop)

    def forward(self, z: Tensor) -> Tensor:
        """``z``: ``(B, *S, C')`` channels-last -> same shape."""
        B, spatial, C = z.shape[0], tuple(z.shape[1:-1]), z.shape[-1]
        qkv = self.qkv(self.norm(z))  # (B, *S, 3C')
        if self.grouping == "global":
            q, k, v = qkv.reshape(B, -1, 3 * C).split(C, dim=-1)  # (B, N, C') each
            out = self.proj(_sdpa_heads(q, k, v, self.heads, None))
            return z + self.drop(out.reshape(z.shape))
        valid = torch.ones((1, *spatial, 1), dtype=torch.bool, device=z.device)
        if any(self.shift):
            spec: list[int] = [0, 0]
            for s in reversed(self.shift):
                spec += [s, 0]
            qkv, valid = F.pad(qkv, spec), F.pad(valid, spec)
        qkv, pads = pad_to_multiple(qkv, self.region)
        valid, _ = pad_to_multiple(valid, self.region)
        padded = tuple(qkv.shape[1:-1])
        tok = group_tokens(qkv, self.region, self.grouping)  # (B*G, T, 3C')
        q, k, v = tok.split(C, dim=-1)
        mask = None
        if any(pads) or any(self.shift):
            keys = group_tokens(valid, self.region, self.grouping)[..., 0]  # (G, T)
            mask = keys.repeat(B, 1)[:, None, None, :]  # (B*G, 1, 1, T), True = attend
        out = self.proj(_sdpa_heads(q, k, v, self.heads, mask))  # (B*G, T, C')
        out = ungroup_view(out, B, padded, self.region, self.grouping).reshape(B, *padded, C)
        out = out[(slice(None), *(slice(s, s + n) for s, n in zip(self.shift, spatial)))]
        return z + self.drop(out)
