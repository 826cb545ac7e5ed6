"""The one gradient-checkpointing wrapper (always ``use_reentrant=False``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint


def maybe_checkpoint(fn: Callable[..., Any], *args: Any, enabled: bool = True) -> Any:
    """Call ``fn(*args)``; when ``enabled`` and autograd is on, recompute its activations in
    backward instead of storing them (``torch.utils.checkpoint``, non-reentrant)."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
