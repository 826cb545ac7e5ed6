"""Attention kinds as a table, and the factory that swaps them by one argument.

Every kind except ``"none"`` is an :class:`~maxca.layers.maxca.AttentionBlock`:
``x + RCAB(MultiAxisMixer(x))``, the same scaffolding as MAXCA (LayerNorm, C -> 2C expansion,
two token mixers on the channel halves, 2C -> C projection, residual channel attention). Only
the two token mixers differ, so comparing kinds isolates the attention mechanism. A token
mixer is one of two layers, each with a token *grouping* switch (docs/method.md):

- :class:`~maxca.layers.xca.XCALayer`: cross-covariance attention (``c x c`` per head);
- :class:`SelfAttentionLayer`: multi-head self-attention (``T x T`` per head).

``KINDS`` maps each kind to its two branches ``(branch_u, branch_v)``:

============  =====================================  ======================================
kind          branch_u (first half)                  branch_v (second half)
============  =====================================  ======================================
maxca         XCA, dilated grouping (sparse, global) XCA, regional grouping (local)
regional      XCA, regional grouping                 XCA, regional grouping
dilated       XCA, dilated grouping                  XCA, dilated grouping
window        SA, regional grouping, shifted (Swin)  SA, regional grouping (Swin)
global_sa     SA, global grouping                    SA, global grouping
xca           XCA, global grouping (XCiT)            XCA, global grouping (XCiT)
none          identity (the block is skipped)
============  =====================================  ======================================

``regional`` and ``dilated`` have exactly MAXCA's parameters (same layers, other grouping), so
they isolate the multi-axis design. ``global_sa`` is quadratic in the number of voxels: its
block owns a token limit (``max_tokens``) and refuses larger inputs with a clear error.

All blocks map ``(B, C, *S) -> (B, C, *S)`` for any spatial size.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn as nn
from torch import Tensor

from maxca.errors import MaxcaInputError
from maxca.layers.factories import check_spatial_dims
from maxca.layers.maxca import MAXCA, AttentionBlock, global_sa_memory_bytes
from maxca.layers.sa import SelfAttentionLayer
from maxca.layers.xca import XCALayer

__all__ = [
    "ATTENTION_KINDS",
    "GLOBAL_SA_MAX_TOKENS",
    "KINDS",
    "Branch",
    "NoAttention",
    "SelfAttentionLayer",
    "global_sa_memory_bytes",
    "make_attention",
]

#: Default token limit of global self-attention (all voxels of a level attend to each other).
GLOBAL_SA_MAX_TOKENS = 4096


@dataclass(frozen=True)
class Branch:
    """One token mixer of an attention kind: which layer, which grouping, shifted or not.

    Attributes:
        layer: ``"xca"`` (:class:`~maxca.layers.xca.XCALayer`) or ``"sa"``
            (:class:`SelfAttentionLayer`).
        grouping: one of ``GROUPINGS`` (``"regional"``, ``"dilated"``, ``"global"``).
        shift: shifted windows (``"sa"`` with regional grouping only).
    """

    layer: str
    grouping: str
    shift: bool = False

    @property
    def quadratic(self) -> bool:
        """True when the branch's cost grows with the square of the number of voxels."""
        return self.layer == "sa" and self.grouping == "global"

    def build(
        self,
        spatial_dims: int,
        channels: int,
        heads: int,
        region: int | Sequence[int],
        drop: float,
    ) -> nn.Module:
        """The branch module, channels-last ``(B, *S, C) -> (B, *S, C)``."""
        if self.layer == "xca":
            return XCALayer(spatial_dims, channels, heads, region, self.grouping, drop=drop)
        return SelfAttentionLayer(
            spatial_dims, channels, heads, region, self.grouping, self.shift, drop
        )


#: ``{kind: (branch_u, branch_v)}``; ``None`` for ``"none"`` (see the module docstring).
KINDS: dict[str, tuple[Branch, Branch] | None] = {
    "maxca": (Branch("xca", "dilated"), Branch("xca", "regional")),
    "regional": (Branch("xca", "regional"), Branch("xca", "regional")),
    "dilated": (Branch("xca", "dilated"), Branch("xca", "dilated")),
    "window": (Branch("sa", "regional", shift=True), Branch("sa", "regional")),
    "global_sa": (Branch("sa", "global"), Branch("sa", "global")),
    "xca": (Branch("xca", "global"), Branch("xca", "global")),
    "none": None,
}

ATTENTION_KINDS = tuple(KINDS)


class NoAttention(nn.Module):
    """The ``"none"`` kind: identity, with the same input validation as the other kinds."""

    max_tokens: int | None = None

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.channels = channels
        self.kind = "none"

    def check_tokens(self, spatial: Sequence[int], batch: int = 1) -> None:
        """No limit: never raises."""

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, C, *S)`` returned unchanged."""
        AttentionBlock.check_input(self, x)  # type: ignore[arg-type]
        return x


def make_attention(
    kind: str,
    spatial_dims: int | None = None,
    channels: int | None = None,
    heads: int = 4,
    region: int | Sequence[int] = 8,
    checkpoint: bool | str = False,
    drop: float = 0.0,
    max_tokens: int | None = GLOBAL_SA_MAX_TOKENS,
    *,
    dim: int | None = None,
) -> nn.Module:
    """Build an attention block of the given kind; every kind maps ``(B, C, *S) -> (B, C, *S)``.

    Args:
        kind: one of ``ATTENTION_KINDS`` (the keys of :data:`KINDS`).
        spatial_dims: spatial dimensionality, 2 or 3.
        channels: ``C``.
        heads: attention heads per branch (must divide ``channels``).
        region: region (window) size per axis, for the regional and dilated groupings.
        checkpoint: gradient checkpointing inside the block: ``False``, ``True``/``"block"``
            , ``"segments"`` or ``"fine"`` (see :class:`~maxca.layers.maxca.AttentionBlock`).
        drop: dropout rate.
        max_tokens: token limit of the quadratic kind ``global_sa`` (its block refuses larger
            inputs with a clear error; ``None`` = no limit). Ignored by the other kinds.
        dim: deprecated spelling of ``spatial_dims`` (a ``DeprecationWarning``; removed in the
            next release).

    Returns:
        :class:`~maxca.layers.maxca.MAXCA` for ``"maxca"``, :class:`NoAttention` for
        ``"none"``, else an :class:`~maxca.layers.maxca.AttentionBlock` whose ``kind`` names it.
    """
    if dim is not None:
        warnings.warn(
            "make_attention(dim=...) is deprecated; use spatial_dims=...",
            DeprecationWarning,
            stacklevel=2,
        )
        if spatial_dims is not None and spatial_dims != dim:
            raise MaxcaInputError(f"got spatial_dims={spatial_dims} and dim={dim}; give one")
        spatial_dims = dim
    if spatial_dims is None or channels is None:
        raise MaxcaInputError("make_attention needs spatial_dims and channels")
    check_spatial_dims(spatial_dims)
    if kind not in KINDS:
        raise MaxcaInputError(f"unknown attention kind {kind!r}; choose one of {ATTENTION_KINDS}")
    branches = KINDS[kind]
    if branches is None:
        return NoAttention(spatial_dims, channels)
    if kind == "maxca":
        return MAXCA(spatial_dims, channels, heads, region, drop, checkpoint)
    u, v = (b.build(spatial_dims, channels, heads, region, drop) for b in branches)
    limit = max_tokens if any(b.quadratic for b in branches) else None
    return AttentionBlock(
        spatial_dims, channels, u, v, drop, checkpoint, max_tokens=limit, kind=kind
    )
