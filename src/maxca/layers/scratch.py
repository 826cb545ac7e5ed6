"""Reuse of dead buffers inside one inference call of a block.

Under glibc's default allocator every large CPU tensor is a fresh ``mmap``: the kernel
page-faults and zeroes it on first touch, which at 80x96x112 x 32 channels costs about as much as
an element-wise pass over it. Inside one forward call of a MAXCA block several large
intermediates die before others of the same size are needed (the mixer's LayerNorm output once
both expansion halves exist, the first branch's LayerNorm and token buffers once its output is
written). :class:`Scratch` hands such dead buffers to the later allocations of the same call.

A :class:`Scratch` lives for one call and is then dropped: no memory is kept across calls, and the
peak memory of the call is not raised (a buffer is only held where the unpooled code also held
it, or where it is reused before the next large allocation; see ``AttentionBlock._body_fast``).
Only used without autograd: a buffer handed out here may be overwritten, which a recorded graph
could not tolerate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn as nn
from torch import Tensor


class Scratch:
    """A pool of dead buffers of one call, each the whole storage of a tensor nobody uses.

    ``give(t)`` returns ``t``'s storage to the pool (the caller promises no live tensor uses
    it); ``take(shape, like)`` returns a contiguous tensor of ``shape`` with ``like``'s dtype and
    device, a view of the smallest pooled buffer that is large enough (removed from the pool), or
    a new ``torch.empty`` when none is. Its values are undefined, as with ``torch.empty``.
    """

    def __init__(self) -> None:
        self._free: list[Tensor] = []

    def __len__(self) -> int:
        return len(self._free)

    def give(self, t: Tensor | None) -> None:
        """Put ``t``'s whole storage back in the pool (no-op for None)."""
        if t is None:
            return
        flat = t.new_empty(0).set_(t.untyped_storage())  # 1-D over the whole storage
        self._free.append(flat)

    def take(self, shape: Sequence[int], like: Tensor, new: bool = True) -> Tensor | None:
        """A contiguous ``shape`` tensor of ``like``'s dtype and device: pooled, else new
        (``new=False``: None instead of a new tensor)."""
        n = math.prod(int(s) for s in shape)
        best = -1
        for i, b in enumerate(self._free):
            fits = b.dtype == like.dtype and b.device == like.device and b.numel() >= n
            if fits and (best < 0 or b.numel() < self._free[best].numel()):
                best = i
        if best < 0:
            return like.new_empty(tuple(shape)) if new else None
        return self._free.pop(best)[:n].view(tuple(shape))

    def clear(self) -> None:
        """Drop every pooled buffer (they are freed unless referenced elsewhere)."""
        self._free.clear()


#: rows (voxels) per chunk of :func:`layer_norm` and the mixer's fused expansion: a chunk's
#: temporaries (~4 MB at 32 channels) are reused from the heap and stay in cache.
ROWS_PER_CHUNK = 1 << 15


def layer_norm(norm: nn.LayerNorm, x: Tensor, scratch: Scratch | None = None) -> Tensor:
    """``norm(x)`` (``x``: ``(..., C)``, normalised over the last axis), written into a pooled
    buffer when ``scratch`` holds one large enough, else a new tensor.

    Into a pooled buffer it runs ``nn.LayerNorm`` on chunks of :data:`ROWS_PER_CHUNK` rows and
    copies each chunk's result into place: the same kernel per row, so the same numbers, with
    no large new tensor to page-fault in (PyTorch's ``native_layer_norm.out`` would allocate
    one and copy it)."""
    if scratch is None or len(norm.normalized_shape) != 1 or not x.is_contiguous():
        return norm(x)
    if x.device.type != "cpu":  # page faults are a CPU cost; CUDA's allocator caches
        return norm(x)
    out = scratch.take(x.shape, x, new=False)
    if out is None:  # nothing pooled fits: one new tensor, as nn.LayerNorm would make
        return norm(x)
    C = x.shape[-1]
    x2, o2 = x.view(-1, C), out.view(-1, C)
    for i in range(0, x2.shape[0], ROWS_PER_CHUNK):
        o2[i : i + ROWS_PER_CHUNK].copy_(norm(x2[i : i + ROWS_PER_CHUNK]))
    return out
