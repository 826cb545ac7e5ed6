"""Dimension-agnostic building blocks: the MAXCA block, attention baselines, factories."""

from maxca.layers.attention import (
    ATTENTION_KINDS,
    GlobalSelfAttention,
    GlobalXCA,
    NoAttention,
    WindowAttention,
    global_sa_memory_bytes,
    make_attention,
)
from maxca.layers.maxca import MAXCA, RCAB, AttentionBlock, MultiAxisMixer
from maxca.layers.xca import XCALayer

__all__ = [
    "ATTENTION_KINDS",
    "MAXCA",
    "RCAB",
    "AttentionBlock",
    "GlobalSelfAttention",
    "GlobalXCA",
    "MultiAxisMixer",
    "NoAttention",
    "WindowAttention",
    "XCALayer",
    "global_sa_memory_bytes",
    "make_attention",
]
