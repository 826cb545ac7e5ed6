"""The paper's network (CorrMLP pyramid + MAXCA): parameter count, structure, flow upsampling."""

from __future__ import annotations

import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from maxca.layers import MAXCA, AttentionBlock
from maxca.layers.factories import conv
from maxca.models import CorrMAXCANet, count_parameters, create_model
from maxca.models._blocks import AttentionSlot, ChannelLayerNorm
from maxca.models.corrmaxca import (
    CorrelationAwareBlock,
    CorrMAXCAConfig,
    conv_of_parts,
    upsample_flow_corners,
)
from maxca.spatial import correlation

from .conftest import pair, tiny_model


def _meta(**config) -> nn.Module:
    """Build on the meta device: no memory for the 29 M parameters, exact shapes."""
    with torch.device("meta"):
        return create_model("corrmaxca", spatial_dims=3, **config)


@pytest.mark.parametrize(("enc", "dec", "expected"), [(16, 32, 29_454_340), (8, 16, 7_506_148)])
def test_parameter_count_is_the_papers(enc: int, dec: int, expected: int) -> None:
    model = _meta(enc_channels=enc, dec_channels=dec, heads=4, region=8, attention="maxca")
    n = count_parameters(model)
    assert abs(n - expected) <= 0.001 * expected, n


def _independent_count(enc: int, dec: int, d: int = 3) -> int:
    """The count from the construction's description alone (convs, blocks, up-samplers)."""

    def conv_n(i: int, o: int, k: int = 3) -> int:
        return i * o * k**d + o

    def block_n(c: int) -> int:
        return sum(p.numel() for p in MAXCA(d, c, heads=4, region=8).parameters())

    e = [enc * 2**lv for lv in range(4)]
    w = [dec * 2**lv for lv in range(4)]
    total = sum(conv_n(e[lv - 1] if lv else 1, e[lv]) + conv_n(e[lv], e[lv]) for lv in range(4))
    for lv in range(4):  # first correlation-aware block + head at every level
        total += conv_n(2 * e[lv] + 3**d, w[lv]) + block_n(w[lv]) + conv_n(w[lv], d)
    for lv in range(3):  # second block; transposed conv w_{l+1} -> w_l and its LayerNorm
        total += conv_n(2 * w[lv] + 3**d, w[lv]) + block_n(w[lv])
        total += w[lv + 1] * w[lv] * 2**d + w[lv] + 2 * w[lv]
    return total


def test_parameter_count_matches_an_independent_count_at_small_widths() -> None:
    model = _meta(enc_channels=4, dec_channels=8, heads=4, region=8)
    assert count_parameters(model) == _independent_count(4, 8)


def test_level_and_width_structure() -> None:
    model = _meta(enc_channels=16, dec_channels=32)
    assert isinstance(model, CorrMAXCANet)
    enc_out = [lv.convs[-1][0].out_channels for lv in model.encoder]
    assert enc_out == [16, 32, 64, 128]
    blocks = {}
    for name, m in model.named_modules():
        if isinstance(m, CorrelationAwareBlock):
            slot = m.attn
            assert isinstance(slot, AttentionSlot) and isinstance(slot.block, MAXCA)
            blocks[name] = (m.conv.in_channels, m.conv.out_channels, slot.level)
    assert blocks == {
        "decoder.0.block1": (2 * 16 + 27, 32, 0),
        "decoder.0.block2": (2 * 32 + 27, 32, 0),
        "decoder.1.block1": (2 * 32 + 27, 64, 1),
        "decoder.1.block2": (2 * 64 + 27, 64, 1),
        "decoder.2.block1": (2 * 64 + 27, 128, 2),
        "decoder.2.block2": (2 * 128 + 27, 128, 2),
        "decoder.3.block1": (2 * 128 + 27, 256, 3),
    }
    for lv, width in enumerate([32, 64, 128]):  # up-sampler: w_{l+1} -> w_{l+1} / 2 = w_l
        up = model.decoder[lv].up
        assert (up[0].in_channels, up[0].out_channels) == (2 * width, width)
        assert up[0].kernel_size == (2, 2, 2) and up[0].stride == (2, 2, 2)
        assert isinstance(up[1], ChannelLayerNorm)
    assert not hasattr(model.decoder[3], "up") and not hasattr(model.decoder[3], "block2")
    assert [model.decoder[lv].head.conv.in_channels for lv in range(4)] == [32, 64, 128, 256]
    # the fuse conv is plain (no activation): the block's outer residual is the conv output
    assert isinstance(model.decoder[0].block1.conv, type(conv(3, 1, 1)))


def test_every_kind_swaps_only_the_block() -> None:
    none = _meta(enc_channels=4, dec_channels=8, attention="none")
    base = {n for n, _ in none.named_parameters()}
    for kind in ("regional", "window", "xca"):
        model = _meta(enc_channels=4, dec_channels=8, attention=kind)
        names = {n for n, _ in model.named_parameters()}
        assert base < names
        assert all(".attn.block." in n for n in names - base)
        kinds = {m.kind for m in model.modules() if isinstance(m, AttentionBlock)}
        assert kinds == {kind}


def test_flow_upsampling_is_corner_aligned_and_doubled() -> None:
    ramp = torch.arange(4.0).view(1, 1, 4, 1).expand(1, 2, 4, 3).contiguous()
    up = upsample_flow_corners(ramp)
    assert up.shape == (1, 2, 8, 6)
    # corner-aligned: first and last fine voxels take the first and last coarse values, x2
    torch.testing.assert_close(up[0, 0, :, 0], 2 * torch.linspace(0, 3, 8))
    torch.testing.assert_close(up[0, :, :, 0], up[0, :, :, 5])
    const = torch.full((1, 3, 2, 3, 4), 1.5)
    torch.testing.assert_close(upsample_flow_corners(const), torch.full((1, 3, 4, 6, 8), 3.0))


def test_head_init_and_near_identity_at_full_widths_on_a_small_input() -> None:
    torch.manual_seed(0)
    model = create_model("corrmaxca", spatial_dims=3, enc_channels=8, dec_channels=16).eval()
    for lv in range(4):
        head = model.decoder[lv].head.conv
        assert head.weight.std() < 3e-5 and not head.bias.any()
    fixed, moving = torch.rand(2, 1, 1, 17, 15, 18)
    with torch.no_grad():
        out = model(fixed, moving)
    assert out.flow.shape == (1, 3, 17, 15, 18)
    assert 0 < out.flow.abs().max() < 1e-2


def test_checkpointing_saves_memory_in_backward_without_changing_results() -> None:
    plain = tiny_model("corrmaxca", 3).double()
    fixed, moving = (t.double() for t in pair(3))
    models = {"plain": plain}
    for granularity in ("block", "stage"):
        m = tiny_model("corrmaxca", 3, checkpoint=True, checkpoint_granularity=granularity)
        m = m.double()
        m.load_state_dict(plain.state_dict())
        models[granularity] = m
    saved = {}
    for key, model in models.items():
        count = [0]

        def pack(t: torch.Tensor, count: list[int] = count) -> torch.Tensor:
            count[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = F.mse_loss(model(fixed, moving).warped, fixed)
        saved[key] = count[0]
        loss.backward()
    # stored between forward and backward: stage < block < half of plain
    assert saved["stage"] < saved["block"] < 0.5 * saved["plain"], saved
    for key in ("block", "stage"):  # float64: the same numbers
        for (n, p), q in zip(plain.named_parameters(), models[key].parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=f"{key} {n}")


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("granularity", ["block", "stage", "fine"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_checkpoint_granularity_keeps_output_and_every_gradient(
    d: int, granularity: str, dtype: torch.dtype
) -> None:
    """The checkpointed network (same weights) gives the plain one's flow and the gradient of
    every parameter: to 1e-10 in float64, 1e-5 in float32 (the heads are summed one by one)."""
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    plain = tiny_model("corrmaxca", d).to(dtype)
    ckpt = tiny_model("corrmaxca", d, checkpoint=True, checkpoint_granularity=granularity)
    ckpt = ckpt.to(dtype)
    ckpt.load_state_dict(plain.state_dict())
    fixed, moving = (t.to(dtype) for t in pair(d))
    flows = []
    for model in (plain, ckpt):
        out = model(fixed, moving)
        (F.mse_loss(out.warped, fixed) + out.flow.square().mean()).backward()
        flows.append(out.flow.detach())
    torch.testing.assert_close(flows[1], flows[0], rtol=0, atol=tol)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert p.grad is not None and q.grad is not None, name
        scale = max(1.0, float(p.grad.abs().max()))
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=tol * scale, msg=name)


def test_fine_granularity_lowers_the_backward_peak_of_live_activations() -> None:
    """Peak of live tensor storage during backward (every storage an op returns, counted
    until freed, the forward's included): ``"fine"`` < ``"stage"`` < the plain network."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Peak(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live: dict[int, int] = {}
            self.now = self.peak = 0

        def _free(self, key: int) -> None:
            self.now -= self.live.pop(key, 0)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    st = t.untyped_storage()
                    key = st.data_ptr()
                    if key not in self.live and st.nbytes():
                        self.live[key] = st.nbytes()
                        self.now += st.nbytes()
                        weakref.finalize(st, self._free, key)
            self.peak = max(self.peak, self.now)
            return out

    # an input large for the widths, so activations (not weights) dominate, as at full size
    torch.manual_seed(0)
    fixed, moving = torch.rand(2, 1, 1, 32, 32, 32)
    plain = tiny_model("corrmaxca", 3)
    peaks = {}
    for granularity in ("plain", "stage", "fine"):
        if granularity == "plain":
            model = plain
        else:
            model = tiny_model("corrmaxca", 3, checkpoint=True, checkpoint_granularity=granularity)
            model.load_state_dict(plain.state_dict())
        tracker = Peak()
        with tracker:  # the forward's stored activations are counted, the peak taken in backward
            out = model(fixed, moving)
            loss = F.mse_loss(out.warped, fixed) + out.flow.square().mean()
            del out
            tracker.peak = tracker.now
            loss.backward()
        peaks[granularity] = tracker.peak
    assert peaks["fine"] < peaks["stage"] < peaks["plain"], peaks


def test_fuse_is_the_conv_of_the_concatenation_without_building_it() -> None:
    """The correlation-aware block's fuse conv runs on [a, corr(a, b), b] part by part (weight
    slices, summed): the conv of the concatenation within rounding, gradients too, and no
    tensor of 2c + 3^d channels is ever created."""
    torch.manual_seed(0)
    config = CorrMAXCAConfig(spatial_dims=3, enc_channels=4, dec_channels=8, heads=2, region=4)
    block = CorrelationAwareBlock(config, 0, 4, 8).double()
    a, b = torch.randn(2, 1, 4, 6, 7, 5, dtype=torch.float64, requires_grad=True)
    ref = block.conv(torch.cat([a, correlation(a, b, max_disp=1), b], dim=1))
    g_ref = torch.autograd.grad(ref.square().sum(), (a, b, block.conv.weight, block.conv.bias))
    widths = []
    conv_forward = block.conv._conv_forward

    def spy(x, w, bias):
        widths.append(x.shape[1])
        return conv_forward(x, w, bias)

    block.conv._conv_forward = spy  # an instance attribute: what _fuse calls
    out = block._fuse(a, b)
    del block.conv._conv_forward
    assert widths == [4, 27, 4]  # a, corr(a, b), b: one conv each
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.autograd.grad(out.square().sum(), (a, b, block.conv.weight, block.conv.bias))
    for x, y in zip(g, g_ref):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-10)
    assert 2 * 4 + 27 not in widths  # the concatenation never reached a module
    with pytest.raises(ValueError, match="parts hold 8 channels, the conv expects 35"):
        conv_of_parts(block.conv, (a, b))


def test_bad_checkpoint_granularity_is_refused() -> None:
    from maxca.errors import MaxcaInputError

    with pytest.raises(MaxcaInputError, match="checkpoint_granularity must be one of"):
        create_model("corrmaxca", checkpoint_granularity="level")


def test_channel_layer_norm_matches_torch_layer_norm() -> None:
    """Known answer: normalising over the channel axis of (B, C, *S) is ``nn.LayerNorm(C)``
    on the channels-last tensor (same affine parameters)."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 4, 3) * 3.0 + 1.5
    norm = ChannelLayerNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 6))
        norm.bias.copy_(torch.linspace(-1.0, 1.0, 6))
    ref = nn.LayerNorm(6, eps=norm.eps)
    with torch.no_grad():
        ref.weight.copy_(norm.weight)
        ref.bias.copy_(norm.bias)
    expected = ref(x.movedim(1, -1)).movedim(-1, 1)
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)


def test_channel_layer_norm_gradients_match_torch_layer_norm() -> None:
    """Backward of the channel LayerNorm equals ``nn.LayerNorm``'s, for the input and the
    affine parameters (float64, so any algebra slip shows)."""
    torch.manual_seed(1)
    x = (torch.randn(1, 5, 4, 3, 2, dtype=torch.float64) * 2.0 - 0.5).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    norm = ChannelLayerNorm(5).double()
    ref = nn.LayerNorm(5, eps=norm.eps).double()
    with torch.no_grad():
        for m in (norm, ref):
            m.weight.copy_(torch.linspace(0.5, 1.5, 5))
            m.bias.copy_(torch.linspace(-0.3, 0.3, 5))
    upstream = torch.randn(1, 5, 4, 3, 2, dtype=torch.float64)
    (norm(x) * upstream).sum().backward()
    (ref(x_ref.movedim(1, -1)).movedim(-1, 1) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(norm.weight.grad, ref.weight.grad)
    torch.testing.assert_close(norm.bias.grad, ref.bias.grad)
