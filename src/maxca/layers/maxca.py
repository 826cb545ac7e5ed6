"""The MAXCA block: multi-axis (regional + dilated) cross-covariance attention with RCAB.

Meng, Fulham, Bi, Kim. "Advancing Deformable Medical Image Registration with Multi-axis
Cross-covariance Attention", arXiv 2412.18545. Implemented from our description in docs/method.md::

    MAXCA(x)         = x + RCAB(MultiAxisXCA(x))
    MultiAxisXCA(x)  = x + Dropout(Linear_2C->C([DilatedXCA(u), RegionalXCA(v)]))
                       with [u, v] = GELU(Linear_C->2C(LayerNorm(x)))
    RCAB(x)          = x + SE(Conv3(LeakyReLU_0.2(Conv3(LayerNorm(x)))))

The scaffolding (:class:`MultiAxisMixer`, :class:`RCAB`, :class:`AttentionBlock`) is shared with
the attention baselines in :mod:`maxca.layers.attention`, which swap only the two token mixers,
so an ablation isolates the attention mechanism.

Internally everything is channels-last (``(B, *S, C)``), where LayerNorm and Linear need no
permute and oneDNN convolutions run fastest on CPU.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from maxca.errors import MaxcaInputError
from maxca.layers import scratch as _scratch
from maxca.layers.checkpoint import maybe_checkpoint
from maxca.layers.factories import check_spatial_dims, conv_cls
from maxca.layers.scratch import Scratch, layer_norm
from maxca.layers.xca import XCALayer, autograd_free, inference_fast_path

#: values of ``AttentionBlock(checkpoint=...)``
CHECKPOINT_MODES = (False, True, "block", "segments", "fine")


def global_sa_memory_bytes(tokens: int, heads: int, batch: int = 1, itemsize: int = 4) -> int:
    """Memory of the ``batch x heads x tokens x tokens`` attention matrix of global SA."""
    return int(batch) * int(heads) * int(tokens) ** 2 * int(itemsize)


class MultiAxisMixer(nn.Module):
    """Expand to 2C, run two token mixers in parallel on the halves, project back, residual.

    Args:
        channels: ``C``.
        branch_u: mixer for the first half (channels-last ``(B, *S, C)`` -> same).
        branch_v: mixer for the second half.
        drop: dropout after the output projection.

    Input and output: channels-last ``(B, *S, C)``.
    """

    def __init__(self, channels: int, branch_u: nn.Module, branch_v: nn.Module, drop: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.expand = nn.Linear(channels, 2 * channels)
        self.act = nn.GELU()
        self.branch_u, self.branch_v = branch_u, branch_v
        self.proj = nn.Linear(2 * channels, channels)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, *S, C)`` channels-last."""
        if self.fast_path_applies(x):
            return self._forward_fast(x)
        u, v = self.expand_halves(x)
        return self.project(self.branch_u(u), self.branch_v(v), x)

    def fast_path_applies(self, x: Tensor) -> bool:
        """Whether :meth:`_forward_fast` serves ``forward(x)``: no autograd, no autocast, no
        active dropout, and both branches offer ``forward_into`` and ``output_bias`` (the XCA
        layers do)."""
        branches = (self.branch_u, self.branch_v)
        return inference_fast_path(self, x) and all(
            hasattr(b, "forward_into") and hasattr(b, "output_bias") for b in branches
        )

    def _expand(self, h: Tensor, i: int) -> Tensor:
        """Half ``i`` (0: u, 1: v) of ``GELU(Linear_{C->2C}(h))`` (B, *S, C); the GELU is
        applied in place when autograd is off (the linear's output is ours)."""
        C = h.shape[-1]
        we = self.expand.weight[i * C : (i + 1) * C]
        be = self.expand.bias[i * C : (i + 1) * C]
        y = F.linear(h, we, be)
        if autograd_free() and isinstance(self.act, nn.GELU):
            return torch.ops.aten.gelu_(y, approximate=self.act.approximate)
        return self.act(y)

    def expand_halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``GELU(Linear_{C->2C}(LayerNorm(x)))`` as its two halves ``u, v`` (B, *S, C) each.

        The C -> 2C expansion and the 2C -> C projection are applied as two halves each, so
        u and v come out contiguous and no concatenation is materialised (same arithmetic)."""
        h = self.norm(x)
        return self._expand(h, 0), self._expand(h, 1)

    def _forward_fast(self, x: Tensor, scratch: Scratch | None = None) -> Tensor:
        """``forward`` without autograd: each branch adds its mixer output to its half in
        place (``half + mixer(half)``, no new tensor), and the branches' output-projection
        biases are folded into the 2C -> C projection's bias (``b_p + W_p [b_u; b_v]``, a
        ``C``-vector) instead of being added to every voxel. The same function up to float
        round-off.

        LayerNorm, expansion and GELU run fused over chunks of voxels
        (:data:`~maxca.layers.scratch.ROWS_PER_CHUNK`), so the LayerNorm output is never a
        full-size tensor. With ``scratch``, the halves ``u``, ``v`` are given to it once the
        projection has read them (the caller's next LayerNorm may reuse them)."""
        C = x.shape[-1]
        halves = self._expand_fused(x)  # u, v: (B, *S, C) each, ours
        for i, branch in enumerate((self.branch_u, self.branch_v)):
            halves[i] = branch.forward_into(halves[i], out=halves[i], bias=False, scratch=scratch)
        wp = self.proj.weight
        bias = torch.addmv(self.proj.bias, wp[:, :C], self.branch_u.output_bias())
        bias = torch.addmv(bias, wp[:, C:], self.branch_v.output_bias())
        u2, v2 = halves[0].view(-1, C), halves[1].view(-1, C)  # (N, C)
        out = torch.addmm(bias, u2, wp[:, :C].t()).addmm_(v2, wp[:, C:].t())
        if scratch is not None:
            del u2, v2
            for half in halves:
                scratch.give(half)
        return out.view(x.shape).add_(x)  # (B, *S, C)

    def _expand_fused(self, x: Tensor) -> list[Tensor]:
        """``[u, v] = GELU(Linear_{C->2C}(LayerNorm(x)))`` without autograd, chunk by chunk of
        voxels: each chunk's LayerNorm output is small and in cache when both halves' GEMMs
        read it. ``x``: ``(B, *S, C)``; returns two new contiguous ``(B, *S, C)`` tensors.
        The same kernels per row as :meth:`expand_halves`, so the same numbers."""
        C = x.shape[-1]
        x2 = x.reshape(-1, C)
        halves = [x.new_empty(x.shape) for _ in range(2)]
        flat = [h.view(-1, C) for h in halves]
        we, be = self.expand.weight, self.expand.bias
        gelu = isinstance(self.act, nn.GELU)
        # on CPU, chunks that stay in cache; elsewhere (CUDA) one chunk: no launches per chunk
        rows = _scratch.ROWS_PER_CHUNK if x.device.type == "cpu" else max(1, x2.shape[0])
        for r in range(0, x2.shape[0], rows):
            hc = self.norm(x2[r : r + rows])
            for i in range(2):
                oc = flat[i][r : r + rows]
                torch.addmm(be[i * C : (i + 1) * C], hc, we[i * C : (i + 1) * C].t(), out=oc)
                if gelu:
                    torch.ops.aten.gelu_(oc, approximate=self.act.approximate)
                else:
                    oc.copy_(self.act(oc))
        return halves

    def project(self, u: Tensor, v: Tensor, x: Tensor) -> Tensor:
        """``x + Dropout(Linear_{2C->C}([u, v]))`` (B, *S, C)."""
        C = x.shape[-1]
        wp = self.proj.weight
        out = F.linear(u, wp[:, :C], self.proj.bias)
        # .to() is a no-op in fp32; under bf16 autocast the in-place addmm needs one dtype
        out.view(-1, C).addmm_(v.reshape(-1, C).to(out.dtype), wp[:, C:].t().to(out.dtype))
        if self.training and self.drop.p > 0:
            out = self.drop(out)
        return out.to(x.dtype).add_(x)  # the residual stream keeps x's dtype


class RCAB(nn.Module):
    """Residual channel-attention block: ``x + SE(Conv3(LeakyReLU(Conv3(LayerNorm(x)))))``.

    SE is squeeze-and-excitation: global mean, 1x1 conv C -> C/4, ReLU, 1x1 conv -> C, sigmoid,
    rescale. Input and output: channels-last ``(B, *S, C)``.
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 4) -> None:
        super().__init__()
        conv = conv_cls(spatial_dims)
        self.spatial_dims = spatial_dims
        self.norm = nn.LayerNorm(channels)
        self.conv1 = conv(channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.conv2 = conv(channels, channels, 3, padding=1)
        hidden = max(1, channels // reduction)
        self.se = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def forward(
        self,
        x: Tensor,
        skip: Tensor | None = None,
        overwrite: bool = False,
        scratch: Scratch | None = None,
    ) -> Tensor:
        """``x``: ``(B, *S, C)`` channels-last; returns ``x + SE(...)`` (``+ skip`` if given).

        ``overwrite``: the caller no longer needs ``x``; without autograd the result is then
        accumulated in ``x``'s memory (no new tensor). Ignored while autograd records.
        ``scratch``: dead buffers of the caller's call (no autograd only): the LayerNorm output
        is written into one of them, and the pool is emptied before the convolutions."""
        if scratch is not None and autograd_free():
            n = layer_norm(self.norm, x, scratch)
            scratch.clear()  # nothing after this point fits a pooled buffer: free them
        else:
            n = self.norm(x)
        h = self.conv1(n.movedim(-1, 1))  # (B, C, *S) in channels-last memory
        del n
        h = self.conv2(self.act(h)).movedim(1, -1)  # (B, *S, C)
        dims = tuple(range(1, 1 + self.spatial_dims))
        w = self.se(h.mean(dim=dims))  # (B, C)
        w = w.view(w.shape[0], *([1] * self.spatial_dims), w.shape[1])
        same_dtype = x.dtype == torch.promote_types(x.dtype, torch.result_type(h, w))
        if overwrite and autograd_free() and same_dtype:
            out = x.addcmul_(h, w)
        else:
            out = torch.addcmul(x, h, w)
        return out if skip is None else out.add_(skip)


class AttentionBlock(nn.Module):
    """``x + RCAB(MultiAxisMixer(x))`` on ``(B, C, *S)`` tensors; the mixers decide the kind.

    Args:
        spatial_dims: 2 or 3.
        channels: ``C``.
        branch_u, branch_v: the two token mixers (channels-last in and out).
        drop: dropout rate.
        checkpoint: gradient checkpointing inside the block: ``False``; ``True`` or
            ``"block"``: recompute the whole block in backward (stores only its input);
            ``"segments"``: recompute it segment by segment (each half with its expansion,
            RCAB; XCA branches head by head), which lowers the peak of the block's own backward to
            about one segment (use it inside an outer checkpoint that stores only the block's
            input, as the ``corrmaxca`` host does; alone it stores the segment boundaries).
        max_tokens: the block's token limit: an input of more than ``max_tokens`` voxels is
            refused with a clear error naming the memory global self-attention would need
            (``None``: no limit; only the quadratic kind ``global_sa`` sets one).
        kind: the name of the kind in :data:`maxca.layers.attention.KINDS` (for ``repr``).

    Input: ``(B, C, *S)``, any spatial size. Output: same shape (channels-last memory format).
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        branch_u: nn.Module,
        branch_v: nn.Module,
        drop: float = 0.0,
        checkpoint: bool | str = False,
        max_tokens: int | None = None,
        kind: str = "custom",
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.channels = channels
        if checkpoint not in CHECKPOINT_MODES:
            raise MaxcaInputError(
                f"checkpoint must be one of {CHECKPOINT_MODES}, got {checkpoint!r}"
            )
        self.checkpoint: bool | str = checkpoint
        self.max_tokens = max_tokens
        self.kind = kind
        self.mixer = MultiAxisMixer(channels, branch_u, branch_v, drop)
        self.rcab = RCAB(spatial_dims, channels)
        if checkpoint in ("segments", "fine"):
            for branch in (branch_u, branch_v):
                if hasattr(branch, "checkpoint_heads"):
                    branch.checkpoint_heads = True if checkpoint == "segments" else "function"

    def check_input(self, x: Tensor) -> None:
        """Raise a clear error for a wrong rank or channel count."""
        if x.dim() != self.spatial_dims + 2:
            raise MaxcaInputError(
                f"expected a {self.spatial_dims + 2}-D input (B, C, *spatial) for spatial_dims="
                f"{self.spatial_dims}, got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.channels:
            raise MaxcaInputError(
                f"expected {self.channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})"
            )

    def check_tokens(self, spatial: Sequence[int], batch: int = 1) -> None:
        """Raise :class:`MaxcaInputError` if ``prod(spatial)`` exceeds ``max_tokens``."""
        n = math.prod(int(s) for s in spatial)
        if self.max_tokens is None or n <= self.max_tokens:
            return
        heads = int(getattr(self.mixer.branch_u, "heads", 1))
        gb = global_sa_memory_bytes(n, heads, batch) / 1e9
        raise MaxcaInputError(
            f"global self-attention over {'x'.join(map(str, spatial))} = {n} tokens would need "
            f"{gb:,.1f} GB for its {heads}-head {n}x{n} attention matrices (limit "
            f"max_tokens={self.max_tokens}); use it at coarser levels only, or attention='maxca'"
        )

    def _body(self, x: Tensor) -> Tensor:
        # x + RCAB(mixer(x)); the mixer's output is a new tensor, so RCAB may accumulate in it
        if self.mixer.fast_path_applies(x):
            return self._body_fast(x)
        return self.rcab(self.mixer(x), skip=x, overwrite=True)

    def _body_fast(self, x: Tensor) -> Tensor:
        """``_body`` without autograd, with one :class:`~maxca.layers.scratch.Scratch` for the
        whole call: the mixer's and the branches' dead LayerNorm and token buffers are reused
        by later LayerNorms and groupings of the same call (RCAB's included), and dropped at
        its end. The same numbers as ``_body``."""
        pool = Scratch()
        m = self.mixer._forward_fast(x, scratch=pool)
        return self.rcab(m, skip=x, overwrite=True, scratch=pool)  # its LayerNorm into u or v

    def _body_segments(self, x: Tensor) -> Tensor:
        """``_body`` with each segment recomputed in backward (same numbers)."""
        mix = self.mixer
        u = maybe_checkpoint(self._half, x, 0)  # LayerNorm + expansion recomputed per half
        v = maybe_checkpoint(self._half, x, 1)
        m = mix.project(u, v, x)
        del u, v
        return maybe_checkpoint(self.rcab, m, x)

    def _body_fine(self, x: Tensor) -> Tensor:
        """``_body`` for ``checkpoint="fine"`` (same numbers, see the class docstring)."""
        mix = self.mixer
        halves = []
        for i, branch in enumerate((mix.branch_u, mix.branch_v)):
            if getattr(branch, "checkpoint_heads", None) == "function":
                pre = (mix.norm.weight, mix.norm.bias, mix.expand.weight, mix.expand.bias)
                halves.append(branch.forward_after(functools.partial(self._expand, i=i), pre, x))
            else:
                halves.append(maybe_checkpoint(self._half, x, i))
        m = mix.project(halves[0], halves[1], x)
        del halves
        return maybe_checkpoint(self.rcab, m, x)

    def _expand(self, x: Tensor, i: int) -> Tensor:
        """Half ``i`` (0: u, 1: v) of ``GELU(Linear_{C->2C}(LayerNorm(x)))``: (B, *S, C)."""
        return self.mixer._expand(self.mixer.norm(x), i)

    def _half(self, x: Tensor, i: int) -> Tensor:
        """Branch ``i`` (0: u, 1: v) of the mixer on ``x`` (B, *S, C), its expansion included."""
        mix = self.mixer
        return (mix.branch_u, mix.branch_v)[i](self._expand(x, i))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, C, *S)`` -> ``(B, C, *S)``; refused up front beyond ``max_tokens``."""
        self.check_input(x)
        self.check_tokens(tuple(x.shape[2:]), x.shape[0])
        xl = x.movedim(1, -1).contiguous()  # (B, *S, C); free if x is channels-last already
        if self.checkpoint == "segments" and torch.is_grad_enabled():
            return self._body_segments(xl).movedim(-1, 1)
        if self.checkpoint == "fine" and torch.is_grad_enabled():
            return self._body_fine(xl).movedim(-1, 1)
        return maybe_checkpoint(self._body, xl, enabled=bool(self.checkpoint)).movedim(-1, 1)


class MAXCA(AttentionBlock):
    """The MAXCA block: dilated XCA and regional XCA in parallel on two channel halves.

    Args:
        spatial_dims: 2 or 3.
        channels: ``C`` (each XCA branch works on ``C`` channels after the 2C expansion).
        heads: heads per XCA branch (must divide ``C``).
        region: region size ``R`` per axis (int or per-axis sequence), default 8.
        drop: dropout rate.
        checkpoint: gradient checkpointing.

    Input and output: ``(B, C, *S)`` of any spatial size. Padding up to a multiple of ``R`` is
    masked out, so it never changes the output at real voxels.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        heads: int = 4,
        region: int | Sequence[int] = 8,
        drop: float = 0.0,
        checkpoint: bool | str = False,
    ) -> None:
        # the branch layers validate spatial_dims and heads (one clear error each)
        super().__init__(
            spatial_dims,
            channels,
            XCALayer(spatial_dims, channels, heads, region, "dilated", drop=drop),
            XCALayer(spatial_dims, channels, heads, region, "regional", drop=drop),
            drop=drop,
            checkpoint=checkpoint,
            kind="maxca",
        )
