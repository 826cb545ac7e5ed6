"""Cross-covariance attention (XCA) on grouped tokens, with masked padding.

One implementation serves regional XCA, dilated XCA and plain global XCA (XCiT), in 2-D and
3-D. See ``docs/conventions.md`` and the method description (docs/method.md).

Per group of tokens and per head (``c`` channels, ``T`` tokens), with ``q, k, v`` of shape
``(T, c)``::

    A = softmax(tau_h * (q / |q|)^T (k / |k|))     # (c, c); norms taken along the token axis
    out = v A^T                                    # (T, c)

Padding: the input is projected first (LayerNorm and the depth-aware ``3^d`` convolution, with
the convolution's own zero padding at the image border), and only then are ``q``, ``k``, ``v``
zero-padded up to a multiple of the region size. A zero token adds nothing to ``q k^T`` nor
to the token-axis norms, so padded tokens are exactly masked out: the output at real voxels is
independent of how much padding a size needs. Normalisation is applied to the small ``c x c``
Gram matrix instead of the large ``q``/``k`` tensors (the same numbers, two fewer passes over
memory).

Without autograd (``torch.no_grad`` / inference mode), :meth:`XCALayer.forward_into` computes
the same function faster: one ``2c x 2c`` Gram matrix of ``[q_h, k_h]`` per head yields the
cross-covariance and both norms at once, and buffers are reused in place. The path autograd
records is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from maxca.errors import MaxcaInputError
from maxca.layers.checkpoint import maybe_checkpoint
from maxca.layers.factories import check_spatial_dims, conv_cls
from maxca.layers.partition import (
    GROUPINGS,
    as_tuple,
    group_tokens,
    pad_to_multiple,
    padding_for,
    split_shape,
    split_view,
    ungroup_view,
)
from maxca.layers.scratch import Scratch, layer_norm

#: target size in bytes of one chunk of grouped tokens in the inference fast path
#: (:meth:`XCALayer._mix_chunked`): large enough that each chunk's GEMMs run at full speed, small
#: enough that the chunk buffers are a fraction of the ``(B*G, T, 3C')`` tokens they replace.
XCA_CHUNK_BYTES = 32 << 20


def check_heads(channels: int, heads: int) -> None:
    """Raise a clear error unless ``heads`` is positive and divides ``channels``."""
    if heads < 1 or channels % heads != 0:
        raise MaxcaInputError(
            f"channels ({channels}) must be divisible by heads ({heads}): "
            f"choose heads among {[h for h in range(1, channels + 1) if channels % h == 0]}"
        )


def xca_mixing_matrix(
    q: Tensor, k: Tensor, temperature: Tensor, heads: int, eps: float = 1e-12
) -> Tensor:
    """Per-group, per-head cross-covariance attention ``A = softmax(tau_h * qn^T kn)``.

    Args:
        q, k: ``(G, T, C')`` (any strides with unit channel stride), ``C' = heads * c``; tokens
            on axis 1. Zero tokens contribute nothing (masked padding).
        temperature: ``(heads, 1, 1)``.
        heads: ``H``.
        eps: lower bound of the token-axis norms (as in ``F.normalize``).

    Returns:
        ``(G, H, c, c)``; row ``i`` of head ``h`` holds the weights of output channel ``i``.
    """
    G, _, Cp = q.shape
    c = Cp // heads
    # (G, C', C') Gram over tokens; its diagonal blocks are the per-head Grams. One batched
    # GEMM on the strided slices beats H small ones, and costs C'^2 per token, << the conv.
    gram = q.transpose(1, 2) @ k
    gram = gram.view(G, heads, c, heads, c).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)
    qn = torch.linalg.vector_norm(q, dim=1).clamp_min(eps).view(G, heads, c, 1)
    kn = torch.linalg.vector_norm(k, dim=1).clamp_min(eps).view(G, heads, 1, c)
    return torch.softmax(gram / (qn * kn) * temperature, dim=-1)


def xca_mixing_matrix_from_grams(grams: Tensor, temperature: Tensor, eps: float = 1e-12) -> Tensor:
    """:func:`xca_mixing_matrix` from each head's joint Gram matrix of ``[q_h, k_h]``.

    Args:
        grams: ``(H, G, 2c, 2c)``: ``[q_h, k_h]^T [q_h, k_h]`` over the tokens of each group
            (``q_h``, ``k_h``: ``(T, c)``). Its ``q_h^T k_h`` block is the head's
            cross-covariance and the diagonals of its ``q_h^T q_h`` and ``k_h^T k_h`` blocks are
            the squared token-axis norms, so one small GEMM per head replaces the
            cross-covariance GEMM and two norm passes over ``q`` and ``k``.
        temperature: ``(H, 1, 1)``.
        eps: lower bound of the norms.

    Returns:
        ``(G, H, c, c)``, the same numbers as :func:`xca_mixing_matrix` up to round-off.
    """
    c = grams.shape[-1] // 2
    gram = grams[..., :c, c:]  # (H, G, c, c)
    qn = grams[..., :c, :c].diagonal(dim1=-2, dim2=-1).sqrt().clamp_min(eps).unsqueeze(-1)
    kn = grams[..., c:, c:].diagonal(dim1=-2, dim2=-1).sqrt().clamp_min(eps).unsqueeze(-2)
    attn = torch.softmax(gram / (qn * kn) * temperature.unsqueeze(1), dim=-1)
    return attn.transpose(0, 1)  # (G, H, c, c)


def autograd_free() -> bool:
    """True when no graph is recorded (``torch.no_grad`` or inference mode): the layers'
    fast inference paths may then reuse buffers in place."""
    return not torch.is_grad_enabled()


def dropout_active(module: nn.Module) -> bool:
    """True if any dropout inside ``module`` would drop values (training mode, ``p > 0``)."""
    return any(m.training and m.p > 0 for m in module.modules() if isinstance(m, nn.Dropout))


def inference_fast_path(module: nn.Module, x: Tensor) -> bool:
    """Whether ``module``'s in-place inference path may serve a call on ``x``: no autograd, no
    autocast on ``x``'s device, no active dropout inside ``module``."""
    return (
        autograd_free()
        and not torch.is_autocast_enabled(x.device.type)
        and not dropout_active(module)
    )


class XCALayer(nn.Module):
    """One XCA layer: ``z + Dropout(Linear(XCA(Conv3^d(LayerNorm(z)))))`` with a token grouping.

    Args:
        spatial_dims: 2 or 3.
        channels: ``C'`` = ``heads * c``.
        heads: number of heads ``H`` (must divide ``channels``).
        region: region size ``R`` per axis (ignored by ``grouping="global"``).
        grouping: ``"regional"`` (tokens = voxels of one region), ``"dilated"`` (tokens = the
            voxels at one in-region offset across all regions) or ``"global"`` (all voxels).
        qkv_kernel: kernel size of the depth-aware qkv projection (3 per docs/method.md; 1 gives the
            Linear projection of XCiT).
        drop: dropout rate after the output projection.

    Input and output: channels-last ``(B, *S, C')``, any ``S``.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        heads: int,
        region: int | Sequence[int] = 8,
        grouping: str = "regional",
        qkv_kernel: int = 3,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        check_heads(channels, heads)
        if grouping not in GROUPINGS:
            raise MaxcaInputError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
        self.channels, self.heads, self.grouping = channels, heads, grouping
        self.region = as_tuple(region, spatial_dims)
        self.norm = nn.LayerNorm(channels)
        self.qkv = conv_cls(spatial_dims)(
            channels, 3 * channels, qkv_kernel, padding=qkv_kernel // 2
        )
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.proj = nn.Linear(channels, channels)
        self.drop = nn.Dropout(drop)
        #: when True (and autograd is on), run head by head, each head under gradient
        #: checkpointing: the same numbers up to summation order, a quarter (1 / heads) of the
        #: activation memory in backward, one more forward of the layer in time. Set by
        #: ``AttentionBlock(checkpoint="segments")``. ``"function"``: head by head as one
        #: autograd function that stores only its input ``z`` and, in backward, recomputes the
        #: LayerNorm and then each head alone with its gradients (set by
        #: ``AttentionBlock(checkpoint="fine")``): the same numbers, no head is run by an outer
        #: checkpoint's recomputation, and one head's activations at a time in backward.
        self.checkpoint_heads: bool | str = False

    def _head(self, h: Tensor, hd: int, B: int, spatial: tuple[int, ...]) -> Tensor:
        """Head ``hd``'s contribution to the output projection (without bias), from the
        normalised input ``h`` (B, C', *S) (channels-last memory): ``(B, *S, C')``."""
        out, padded, region = self._head_tokens(h, hd, spatial)
        out = ungroup_view(out, B, padded, region, self.grouping).reshape(B, *padded, self.channels)
        if padded != spatial:
            out = out[(slice(None), *(slice(0, s) for s in spatial))]
        return out

    def _head_tokens(
        self, h: Tensor, hd: int, spatial: tuple[int, ...]
    ) -> tuple[Tensor, tuple[int, ...], tuple[int, ...]]:
        """:meth:`_head` before un-grouping: ``(B*G, T, C')`` in token order, with the padded
        size and the region."""
        v, mix, padded, region = self._head_factors(h, hd, spatial)
        return torch.bmm(v, mix), padded, region  # (B*G, T, C')

    def _head_factors(
        self, h: Tensor, hd: int, spatial: tuple[int, ...]
    ) -> tuple[Tensor, Tensor, tuple[int, ...], tuple[int, ...]]:
        """The two factors of :meth:`_head_tokens`' product: ``v`` ``(B*G, T, c)`` and the
        head's mixing-and-projection matrices ``(B*G, c, C')``; padded size and region."""
        Cp, c = self.channels, self.channels // self.heads
        idx = torch.cat([torch.arange(hd * c, (hd + 1) * c) + j * Cp for j in range(3)])
        conv_fn = (F.conv2d, F.conv3d)[self.spatial_dims - 2]
        qkv = conv_fn(h, self.qkv.weight[idx], self.qkv.bias[idx], padding=self.qkv.padding)
        qkv = qkv.movedim(1, -1)  # (B, *S, 3c)
        region = spatial if self.grouping == "global" else self.region
        qkv, _ = pad_to_multiple(qkv, region)
        padded = tuple(qkv.shape[1:-1])
        tok = group_tokens(qkv, region, self.grouping)  # (B*G, T, 3c)
        del qkv
        q, k, v = tok.split(c, dim=-1)
        attn = xca_mixing_matrix(q, k, self.temperature[hd : hd + 1], 1)[:, 0]  # (B*G, c, c)
        mix = torch.einsum("gij,oi->gjo", attn, self.proj.weight[:, hd * c : (hd + 1) * c])
        return v, mix, padded, region

    def _grouped_grad(self, grad: Tensor) -> Tensor:
        """The gradient of a head's output ``(B, *S, C')`` in the token layout of
        :meth:`_head_tokens`, ``(B*G, T, C')`` (zero at padded tokens)."""
        region = tuple(grad.shape[1:-1]) if self.grouping == "global" else self.region
        gp, _ = pad_to_multiple(grad, region)
        return group_tokens(gp, region, self.grouping)

    def _forward_by_head(self, z: Tensor) -> Tensor:
        B, spatial = z.shape[0], tuple(z.shape[1:-1])
        h = self.norm(z).movedim(-1, 1)  # (B, C', *S), channels-last memory
        out = self.proj.bias.expand(z.shape)
        for hd in range(self.heads):
            out = out + maybe_checkpoint(self._head, h, hd, B, spatial)
        if self.training and self.drop.p > 0:
            out = self.drop(out)
        return z + out

    def forward_after(self, prelude, prelude_params: tuple[Tensor, ...], x: Tensor) -> Tensor:  # noqa: ANN001
        """``forward(prelude(x))`` with the prelude recomputed inside the head-by-head function
        (``checkpoint_heads="function"``, autograd on, no dropout): only ``x`` is stored.
        ``prelude_params`` are the parameters ``prelude`` uses (their gradients flow)."""
        if not (torch.is_grad_enabled() and self.checkpoint_heads == "function") or (
            self.training and self.drop.p > 0
        ):
            return self(prelude(x))
        return _HeadByHead.apply(
            self, prelude, len(prelude_params), x, *prelude_params, *self._params()
        )

    def _params(self) -> tuple[Tensor, ...]:
        """The parameters the head-by-head function differentiates, in its argument order."""
        return (
            self.norm.weight,
            self.norm.bias,
            self.qkv.weight,
            self.qkv.bias,
            self.temperature,
            self.proj.weight,
            self.proj.bias,
        )

    def fast_path_applies(self, z: Tensor) -> bool:
        """Whether :meth:`forward_into` may serve ``forward(z)``: no autograd, no autocast,
        no active dropout."""
        return inference_fast_path(self, z)

    def output_bias(self) -> Tensor:
        """The output projection's bias ``(C',)``: what ``forward_into(..., bias=False)``
        leaves out."""
        return self.proj.bias

    def _qkv_by_head(self) -> tuple[Tensor, Tensor]:
        """The qkv convolution's weight and bias with output channels reordered to
        ``[q_0, k_0, q_1, k_1, ..., q_{H-1}, k_{H-1}, v]`` (``c`` channels each; ``v`` as
        before), so that each head's ``[q_h, k_h]`` is one ``2c``-channel slice."""
        Cp, H = self.channels, self.heads
        c = Cp // H
        dev = self.qkv.weight.device
        qk = torch.arange(2 * Cp, device=dev).view(2, H, c).transpose(0, 1).reshape(-1)
        idx = torch.cat([qk, torch.arange(2 * Cp, 3 * Cp, device=dev)])
        return self.qkv.weight[idx], self.qkv.bias[idx]

    def forward_into(
        self,
        z: Tensor,
        out: Tensor | None = None,
        bias: bool = True,
        scratch: Scratch | None = None,
    ) -> Tensor:
        """``forward(z)`` without autograd, written into ``out``: the inference fast path.

        Args:
            z: channels-last ``(B, *S, C')``; not modified unless ``out`` is ``z``.
            out: ``(B, *S, C')``: ``z`` itself (the residual is then added in place, no new
                tensor), another tensor that does not overlap ``z``, or None for a new
                contiguous one.
            bias: add the output projection's bias (False: leave it to the caller, who adds
                a linear map of it, see :meth:`output_bias`).
            scratch: dead buffers of the caller's call (:class:`~maxca.layers.scratch.Scratch`):
                the LayerNorm output is written into a pooled buffer when one fits (and given
                back once the qkv convolution has read it), as are the grouped tokens on the
                padded and global paths; no new memory to page-fault in under the default
                allocator. None: new tensors.

        Returns ``out``. The same function as :meth:`forward` up to float round-off; differs in
        how it is computed: each head's cross-covariance and both token-axis norms come from one
        ``2c x 2c`` Gram matrix of ``[q_h, k_h]`` (:func:`xca_mixing_matrix_from_grams`; the qkv
        convolution's output channels are reordered for it, :meth:`_qkv_by_head`), and the
        residual sum is written straight into ``out``. When the size is a multiple of the
        region (no padding), regional and dilated groupings run a chunk of groups at a time
        (:meth:`_mix_chunked`), never materialising the grouped tokens. Only under
        ``torch.no_grad`` / inference mode without autocast (:meth:`fast_path_applies`);
        dropout is not applied.
        """
        B, spatial, Cp, H = z.shape[0], tuple(z.shape[1:-1]), self.channels, self.heads
        c = Cp // H
        h = layer_norm(self.norm, z, scratch)  # (B, *S, C')
        w, b = self._qkv_by_head()
        conv_fn = (F.conv2d, F.conv3d)[self.spatial_dims - 2]
        qkv = conv_fn(h.movedim(-1, 1), w, b, padding=self.qkv.padding).movedim(1, -1)
        if scratch is not None:  # (B, *S, 3C') exists: h is dead
            scratch.give(h)
        region = spatial if self.grouping == "global" else self.region
        if out is None:
            out = torch.empty_like(z, memory_format=torch.contiguous_format)
        if self.grouping != "global" and not any(padding_for(spatial, region)):
            self._mix_chunked(qkv, z, out, bias)
            return out
        qkv, pads = pad_to_multiple(qkv, region)  # zero tokens = masked out
        padded = tuple(qkv.shape[1:-1])
        tok_buf = None
        if scratch is not None and self.grouping != "global":
            tok_buf = scratch.take((qkv.numel(),), qkv)
        # (B*G, T, 3C'), channels [q0 k0 q1 k1 .. v]
        tok = group_tokens(qkv, region, self.grouping, out=tok_buf)
        # once grouped, qkv is dead (unless tok is a view of it, "global"): the product below
        # is written into its memory instead of a new (B, *S, C') tensor (one fewer large
        # allocation to page-fault in under the default allocator)
        dead = qkv if tok.data_ptr() != qkv.data_ptr() and qkv.is_contiguous() else None
        del h, qkv
        grams = tok.new_empty(H, tok.shape[0], 2 * c, 2 * c)
        for hd in range(H):  # one small GEMM per head reads [q_h, k_h] once
            a = tok[..., 2 * c * hd : 2 * c * (hd + 1)]  # (B*G, T, 2c) strided
            torch.bmm(a.transpose(1, 2), a, out=grams[hd])
        attn = xca_mixing_matrix_from_grams(grams, self.temperature)  # (B*G, H, c, c)
        wp = self.proj.weight.view(Cp, H, c)
        mix = torch.einsum("ghij,ohi->ghjo", attn, wp).reshape(-1, Cp, Cp)
        v = tok[..., 2 * Cp :]  # (B*G, T, C') strided
        o = v.new_empty(v.shape) if dead is None else dead.view(-1)[: v.numel()].view(v.shape)
        if bias:
            torch.baddbmm(self.proj.bias, v, mix, out=o)  # (B*G, T, C')
        else:
            torch.bmm(v, mix, out=o)
        del dead, v
        if self.grouping == "global":  # tokens are already in spatial order
            return torch.add(z, o.view(z.shape), out=out)
        ov = ungroup_view(o, B, padded, region, self.grouping)  # (B, g0, R0, ..., C')
        if any(pads):  # one copy into spatial order (into tok's dead memory), then crop
            full = tok.view(-1)[: o.numel()].view(B, *padded, Cp)
            full.view(ov.shape).copy_(ov)
            torch.add(z, full[(slice(None), *(slice(0, s) for s in spatial))], out=out)
            del full
        else:  # residual add fused with the un-grouping: one pass, through a view of out
            torch.add(split_view(z, region), ov, out=out.view(ov.shape))
        if scratch is not None:  # the grouped tokens are dead: the caller's next call may reuse
            del ov, o
            scratch.give(tok)
        return out

    def _mix_chunked(self, qkv: Tensor, z: Tensor, out: Tensor, bias: bool) -> None:
        """``out = z + XCA output`` from ``qkv`` ``(B, *S, 3C')`` (channels
        ``[q0 k0 q1 k1 .. v]``, ``S`` a multiple of the region), a chunk of groups at a time.

        The groups are cut along the first axis of the grouping's outer grid (regions along
        axis 0 for ``"regional"``, in-region offsets along axis 0 for ``"dilated"``): each
        chunk's tokens are copied into one small buffer reused by every chunk, its mixing
        matrices computed, ``v A^T`` written into a second small buffer and added, un-grouped,
        into ``out``'s view of that chunk. No ``(B*G, T, 3C')`` token tensor is materialised:
        under the default allocator the call page-faults in ~1/``chunks`` of that memory, and
        its peak is lower by it. Numbers: identical per group to the unchunked path (each group's
        Gram, softmax and product are computed alone either way)."""
        H, Cp, d = self.heads, self.channels, self.spatial_dims
        c = Cp // H
        region = self.region
        t = qkv.view(split_shape(qkv.shape, region))  # (B, g0, R0, g1, R1, ..., 3C')
        zs = z.view(split_shape(z.shape, region))
        os_ = out.view(split_shape(out.shape, region))
        g_axes = [1 + 2 * i for i in range(d)]
        r_axes = [2 + 2 * i for i in range(d)]
        outer, inner = (g_axes, r_axes) if self.grouping == "regional" else (r_axes, g_axes)
        perm = [0, *outer, *inner, 1 + 2 * d]
        inv = [perm.index(i) for i in range(len(perm))]
        axis = outer[0]
        n_axis = t.shape[axis]
        n_chunks = max(1, min(n_axis, -(-qkv.numel() * qkv.element_size() // XCA_CHUNK_BYTES)))
        step = -(-n_axis // n_chunks)
        n_tok = math.prod(t.shape[a] for a in inner)
        per = qkv.numel() // n_axis  # elements of qkv per index of the chunked axis
        tok_buf = qkv.new_empty(per * step)
        o_buf = qkv.new_empty(per // 3 * step)
        wp = self.proj.weight.view(Cp, H, c)
        b = self.proj.bias if bias else None
        for a in range(0, n_axis, step):
            n = min(step, n_axis - a)
            tc = t.narrow(axis, a, n).permute(*perm)  # (B, *outer_c, *inner, 3C')
            tok = tok_buf[: tc.numel()].view(tc.shape)
            tok.copy_(tc)
            tok = tok.view(-1, n_tok, 3 * Cp)  # (G_c, T, 3C')
            grams = tok.new_empty(H, tok.shape[0], 2 * c, 2 * c)
            for hd in range(H):
                qk = tok[..., 2 * c * hd : 2 * c * (hd + 1)]  # (G_c, T, 2c) strided
                torch.bmm(qk.transpose(1, 2), qk, out=grams[hd])
            attn = xca_mixing_matrix_from_grams(grams, self.temperature)  # (G_c, H, c, c)
            mix = torch.einsum("ghij,ohi->ghjo", attn, wp).reshape(-1, Cp, Cp)
            v = tok[..., 2 * Cp :]  # (G_c, T, C') strided
            o = o_buf[: v.numel()].view(v.shape)
            if b is not None:
                torch.baddbmm(b, v, mix, out=o)
            else:
                torch.bmm(v, mix, out=o)
            ov = o.view(*tc.shape[:-1], Cp).permute(*inv)  # (B, g0_c, R0, ..., C') split order
            torch.add(zs.narrow(axis, a, n), ov, out=os_.narrow(axis, a, n))

    def forward(self, z: Tensor) -> Tensor:
        """``z``: channels-last ``(B, *S, C')`` -> same shape."""
        if self.fast_path_applies(z):
            return self.forward_into(z)
        if self.checkpoint_heads == "function" and torch.is_grad_enabled():
            if self.training and self.drop.p > 0:
                return self._forward_by_head(z)  # dropout needs its RNG replayed: checkpoint
            return _HeadByHead.apply(self, None, 0, z, *self._params())
        if self.checkpoint_heads and torch.is_grad_enabled():
            return self._forward_by_head(z)
        B, spatial, Cp, H = z.shape[0], tuple(z.shape[1:-1]), self.channels, self.heads
        c = Cp // H
        h = self.norm(z)  # (B, *S, C') contiguous
        qkv = self.qkv(h.movedim(-1, 1)).movedim(1, -1)  # (B, *S, 3C'), channels-last memory
        region = spatial if self.grouping == "global" else self.region
        qkv, pads = pad_to_multiple(qkv, region)  # zero tokens = masked out
        padded = tuple(qkv.shape[1:-1])
        tok = group_tokens(qkv, region, self.grouping)  # (B*G, T, 3C')
        del h, qkv  # free what is no longer needed before the next large allocation
        q, k, v = tok.split(Cp, dim=-1)  # strided (B*G, T, C') each
        attn = xca_mixing_matrix(q, k, self.temperature, H)  # (B*G, H, c, c)
        # Fold "A v" (block-diagonal over heads) and the output Linear into one C'xC' matrix
        # per group: out = v @ M + b, M[(h, j), o] = sum_i A[h, i, j] W[o, (h, i)].
        w = self.proj.weight.view(Cp, H, c)
        mix = torch.einsum("ghij,ohi->ghjo", attn, w).reshape(-1, Cp, Cp)
        out = torch.baddbmm(self.proj.bias, v, mix)  # (B*G, T, C') contiguous
        del tok, q, k, v
        if self.training and self.drop.p > 0:
            out = self.drop(out)
        if self.grouping == "global":  # tokens are already in spatial order
            return z + out.view(z.shape)
        out = ungroup_view(out, B, padded, region, self.grouping)  # (B, g0, R0, ..., C')
        if any(pads):
            zp, _ = pad_to_multiple(z, region)
            res = zp + out.reshape(zp.shape)
            return res[(slice(None), *(slice(0, s) for s in spatial))].contiguous()
        # residual add fused with the un-grouping: one pass, written in z's layout
        # (TensorIterator lays the result out like its first operand, z: contiguous)
        return (split_view(z, region) + out).view(z.shape)


class _HeadByHead(torch.autograd.Function):
    """``XCALayer._forward_by_head`` (without dropout) as one autograd function, optionally
    after a ``prelude`` (the block's expansion into this branch's half).

    ``apply(layer, prelude, n_pre, x, *prelude_params, *layer._params())``: ``z = prelude(x)``
    (``z = x`` when ``prelude`` is None; ``prelude_params``, the first ``n_pre`` tensors after
    ``x``, are the parameters it uses; ``x`` channels-last ``(B, *S, C_in)``), output
    ``z + proj.bias + sum_h head_h(LayerNorm(z))`` ``(B, *S, C')``, heads summed
    in order: the same numbers as ``_forward_by_head``. Forward builds no graph and saves only
    ``x``. Backward recomputes ``z`` (without a graph) and ``h = LayerNorm(z)``, then for each
    head recomputes its output from ``h`` and takes its gradients (``h`` and the head's
    parameters) before the next head, then the LayerNorm's backward, and last recomputes the
    prelude with its graph for its backward (so the prelude's saved tensors are never alive
    together with a head's), under the forward's autocast state. The parameters' gradients
    are returned as the gradients of the function's parameter arguments.
    """

    @staticmethod
    def forward(ctx, layer, prelude, n_pre, x, *params):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x)
        ctx.layer, ctx.prelude, ctx.pre_params = layer, prelude, params[:n_pre]
        dev = x.device.type  # backward recomputes under the same autocast state
        ctx.amp = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        z = x if prelude is None else prelude(x)
        B, spatial = z.shape[0], tuple(z.shape[1:-1])
        h = layer.norm(z).movedim(-1, 1)  # (B, C', *S), channels-last memory
        out = layer.proj.bias.expand(z.shape)
        for hd in range(layer.heads):
            out = out + layer._head(h, hd, B, spatial)
        del h
        return z + out

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        dev, enabled, dtype = ctx.amp
        with torch.autocast(dev, dtype=dtype, enabled=enabled):
            return _HeadByHead._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):  # noqa: ANN001, ANN205
        (x,) = ctx.saved_tensors
        layer: XCALayer = ctx.layer
        params = layer._params()
        grads: list[Tensor | None] = [None] * len(params)
        head_params = params[2:6]  # qkv weight, qkv bias, temperature, proj weight
        with torch.no_grad():  # the prelude's graph is rebuilt after the heads (below)
            z = x if ctx.prelude is None else ctx.prelude(x)
        with torch.enable_grad():
            zd = z.detach().requires_grad_(True)
            del z
            spatial = tuple(zd.shape[1:-1])
            h = layer.norm(zd).movedim(-1, 1)
            hd_ = h.detach().requires_grad_(True)
            grad_h: Tensor | None = None
            grad_tok = layer._grouped_grad(grad)  # once, not one un-grouped copy per head
            for hd in range(layer.heads):
                # the gradients of out = bmm(v, mix) without materialising out (the same two
                # products autograd's bmm backward computes)
                v, mix = layer._head_factors(hd_, hd, spatial)[:2]
                with torch.no_grad():
                    gv = torch.bmm(grad_tok, mix.transpose(1, 2))
                    gmix = torch.bmm(v.transpose(1, 2), grad_tok)
                g = torch.autograd.grad(
                    (v, mix), (hd_, *head_params), (gv, gmix), allow_unused=True
                )
                del v, mix, gv, gmix
                grad_h = g[0] if grad_h is None else grad_h.add_(g[0])
                for i, gi in enumerate(g[1:], start=2):
                    if gi is not None:
                        grads[i] = gi if grads[i] is None else grads[i].add_(gi)
                del g
            del hd_, grad_tok
            gz, gw, gb = torch.autograd.grad(h, (zd, params[0], params[1]), grad_h)
            del h, grad_h, zd
            gz = gz.add_(grad)  # the residual
            grads[0], grads[1] = gw, gb
            grads[6] = grad.sum(dim=tuple(range(grad.dim() - 1)))  # proj.bias
            if ctx.prelude is None:
                return (None, None, None, gz, *grads)
            xd = x.detach().requires_grad_(True)
            g = torch.autograd.grad(ctx.prelude(xd), (xd, *ctx.pre_params), gz, allow_unused=True)
        return (None, None, None, g[0], *g[1:], *grads)
