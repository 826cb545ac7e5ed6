"""Dimension-agnostic building blocks: the MAXCA block, attention kinds, factories."""

from maxca.layers.attention import (
    ATTENTION_KINDS,
    KINDS,
    Branch,
    NoAttention,
    global_sa_memory_bytes,
    make_attention,
)
from maxca.layers.maxca import MAXCA, RCAB, AttentionBlock, MultiAxisMixer
from maxca.layers.sa import SelfAttentionLayer
from maxca.layers.xca import XCALayer

__all__ = [
    "ATTENTION_KINDS",
    "KINDS",
    "MAXCA",
    "RCAB",
    "AttentionBlock",
    "Branch",
    "MultiAxisMixer",
    "NoAttention",
    "SelfAttentionLayer",
    "XCALayer",
    "global_sa_memory_bytes",
    "make_attention",
]
