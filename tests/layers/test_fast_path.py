"""The blocks' inference fast path (no autograd) against the autograd path.

Without autograd (``torch.no_grad`` / inference mode) the XCA branches run
``XCALayer.forward_into`` (per-head joint Gram, buffers reused, residuals in place) and the
mixer and RCAB accumulate in their own buffers. These tests pin that it computes the same
function as the path autograd records, that it really runs, that it never writes into the
caller's tensors, and that the training path (outputs and gradients) does not use it.
"""

from __future__ import annotations

import pytest
import torch

from maxca.layers.attention import make_attention
from maxca.layers.maxca import MultiAxisMixer
from maxca.layers.xca import XCALayer

# sizes divisible by the region (no padding) and not (padding, masked)
SIZES = {2: [(8, 12), (9, 13)], 3: [(8, 8, 12), (7, 9, 11)]}
CASES = [(d, s) for d in (2, 3) for s in SIZES[d]]
XCA_KINDS = ["maxca", "regional", "dilated", "xca"]


def _block(kind: str, d: int, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    m = make_attention(kind, d, 16, heads=4, region=4).to(dtype).eval()
    with torch.no_grad():  # non-trivial temperatures, norm affines and biases
        for name, p in m.named_parameters():
            if name.endswith("temperature"):
                p.copy_(torch.rand_like(p) * 2 + 0.5)
            elif "norm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return m


def _count_calls(monkeypatch, cls, name: str) -> list[int]:
    calls = [0]
    orig = getattr(cls, name)

    def spy(self, *args, **kwargs):
        calls[0] += 1
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, spy)
    return calls


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("kind", XCA_KINDS)
@pytest.mark.parametrize("d,spatial", CASES)
def test_fast_path_equals_the_autograd_path(d, spatial, kind, dtype, rtol, monkeypatch):
    m = _block(kind, d, dtype)
    x = torch.randn(2, 16, *spatial, dtype=dtype)
    x0 = x.clone()
    fast_calls = _count_calls(monkeypatch, XCALayer, "forward_into")
    ref = m(x.clone().requires_grad_(True)).detach()  # autograd records: the training path
    assert fast_calls[0] == 0
    with torch.no_grad():
        fast = m(x)
    assert fast_calls[0] == 2  # both branches took the fast path
    with torch.inference_mode():
        fast_inf = m(x)
    assert torch.equal(x, x0)  # the caller's input is never written into
    # the output owns exactly its own memory (no view into a larger reused buffer)
    assert fast.untyped_storage().nbytes() == fast.numel() * fast.element_size()
    scale = ref.abs().max()
    torch.testing.assert_close(fast, ref, rtol=rtol, atol=rtol * scale)
    torch.testing.assert_close(fast_inf, fast, rtol=0, atol=0)


@pytest.mark.parametrize("d,spatial", CASES)
def test_window_kind_without_autograd_equals_the_autograd_path(d, spatial):
    """SA branches have no ``forward_into``: the mixer's regular path runs, with its GELU and
    RCAB's residual in place, and gives the same numbers."""
    m = _block("window", d, torch.float64)
    x = torch.randn(2, 16, *spatial, dtype=torch.float64)
    x0 = x.clone()
    ref = m(x.clone().requires_grad_(True)).detach()
    with torch.no_grad():
        fast = m(x)
    assert torch.equal(x, x0)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grouping", ["regional", "dilated", "global"])
@pytest.mark.parametrize("d,spatial", CASES)
def test_xca_forward_into_writes_in_place_or_into_a_strided_view(d, spatial, grouping):
    torch.manual_seed(0)
    layer = XCALayer(d, 8, 2, region=4, grouping=grouping).double()
    z = torch.randn(2, *spatial, 8, dtype=torch.float64)
    ref = layer(z.clone().requires_grad_(True)).detach()
    with torch.no_grad():
        inplace = z.clone()
        assert layer.forward_into(inplace, out=inplace) is inplace
        wide = torch.full((2, *spatial, 16), float("nan"), dtype=torch.float64)
        layer.forward_into(z, out=wide[..., 8:], bias=False)
    torch.testing.assert_close(inplace, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(wide[..., 8:] + layer.output_bias(), ref, rtol=1e-12, atol=1e-12)
    assert torch.isnan(wide[..., :8]).all()  # nothing written outside the view


def test_training_path_gradients_do_not_use_the_fast_path(monkeypatch):
    """With autograd on, forward and backward never enter the fast path, and the gradients
    are those of the plain functional composition (checked against float64 finite
    differences on a small block)."""
    fast_calls = _count_calls(monkeypatch, XCALayer, "forward_into")
    mixer_calls = _count_calls(monkeypatch, MultiAxisMixer, "_forward_fast")
    m = _block("maxca", 2, torch.float64)
    m.train()
    x = torch.randn(1, 16, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)
    assert fast_calls[0] == 0 and mixer_calls[0] == 0


def test_fast_path_is_skipped_when_dropout_is_active_or_under_autocast():
    torch.manual_seed(0)
    m = make_attention("maxca", 3, 8, heads=2, region=4, drop=0.1)
    x = torch.randn(1, 6, 7, 8, 8)
    with torch.no_grad():
        assert not m.mixer.fast_path_applies(x)  # training mode, p > 0: dropout must run
        m.eval()
        assert m.mixer.fast_path_applies(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not m.mixer.fast_path_applies(x)
            assert not m.mixer.branch_u.fast_path_applies(x)
    assert not m.mixer.fast_path_applies(x)  # autograd on


# -- chunked execution and buffer reuse (maxca.layers.scratch, XCALayer._mix_chunked) --------


@pytest.mark.parametrize("kind", ["maxca", "regional", "dilated"])
@pytest.mark.parametrize(
    "d,spatial,region", [(2, (12, 16), 4), (3, (8, 12, 8), 4), (3, (12, 8, 8), (4, 2, 4))]
)
def test_chunked_fast_path_equals_the_autograd_path(d, spatial, region, kind, monkeypatch):
    """With chunks forced small (several chunks of groups and of voxels, the last one partial),
    the fast path still computes the autograd path's function, for each grouping."""
    import maxca.layers.scratch as scratch
    import maxca.layers.xca as xca

    monkeypatch.setattr(xca, "XCA_CHUNK_BYTES", 1000)  # one chunk per index of the cut axis
    monkeypatch.setattr(scratch, "ROWS_PER_CHUNK", 37)  # does not divide the voxel count
    torch.manual_seed(0)
    m = make_attention(kind, d, 8, heads=2, region=region).double().eval()
    x = torch.randn(2, 8, *spatial, dtype=torch.float64)
    ref = m(x.clone().requires_grad_(True)).detach()
    with torch.no_grad():
        fast = m(x)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)


def test_scratch_hands_back_the_smallest_fitting_buffer_of_the_right_dtype():
    from maxca.layers.scratch import Scratch

    pool = Scratch()
    like = torch.zeros(1)
    big, small = torch.empty(100), torch.empty(40)
    pool.give(big[10:20])  # a view gives back its whole storage
    pool.give(small)
    pool.give(None)
    assert len(pool) == 2
    t = pool.take((5, 6), like)  # 30 elements: the 40-element buffer is the smallest fit
    assert t.shape == (5, 6) and t.is_contiguous()
    assert t.data_ptr() == small.data_ptr()
    u = pool.take((9, 10), like)  # 90 elements: the 100-element storage
    assert u.data_ptr() == big.data_ptr() and len(pool) == 0
    assert pool.take((3,), like, new=False) is None  # empty pool, no new tensor asked for
    fresh = pool.take((3,), like)
    assert fresh.shape == (3,) and fresh.data_ptr() not in (big.data_ptr(), small.data_ptr())
    pool.give(torch.empty(50, dtype=torch.float64))
    assert pool.take((10,), like, new=False) is None  # float64 buffer never serves float32
    pool.clear()
    assert len(pool) == 0


@pytest.mark.parametrize("rows", [7, 1 << 15])
def test_pooled_layer_norm_equals_nn_layer_norm_and_writes_the_pooled_buffer(rows, monkeypatch):
    import maxca.layers.scratch as scratch

    monkeypatch.setattr(scratch, "ROWS_PER_CHUNK", rows)
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(6)
    with torch.no_grad():
        norm.weight.normal_(1, 0.3)
        norm.bias.normal_(0, 0.3)
    x = torch.randn(2, 5, 4, 6) * 3 + 1
    pool = scratch.Scratch()
    buf = torch.full((300,), float("nan"))
    pool.give(buf)
    with torch.no_grad():
        out = scratch.layer_norm(norm, x, pool)
        assert out.data_ptr() == buf.data_ptr()
        assert torch.equal(out, norm(x))  # the same kernel per row: bit-identical
        assert torch.equal(scratch.layer_norm(norm, x, scratch.Scratch()), norm(x))  # no pool


@pytest.mark.parametrize("grouping", ["regional", "dilated", "global"])
def test_group_tokens_into_a_given_buffer_equals_the_copy(grouping):
    from maxca.layers.partition import group_tokens

    x = torch.randn(2, 8, 4, 12, 5)
    buf = torch.empty(x.numel())
    ref = group_tokens(x, (4, 2, 4), grouping)
    got = group_tokens(x, (4, 2, 4), grouping, out=buf)
    assert torch.equal(got, ref)
    if grouping != "global":  # "global" is a view of x, no copy
        assert got.data_ptr() == buf.data_ptr()


def test_fast_block_allocates_no_more_large_buffers_than_its_convolutions_need(monkeypatch):
    """The MAXCA block's no-autograd call creates, per call, only the large tensors its
    arithmetic needs: the two expansion halves, the two qkv convolution outputs (3C each),
    the first branch's LayerNorm output (the later LayerNorms reuse dead buffers), the
    projection output and RCAB's two convolution outputs: 12 tensors of size C, against 11
    for its convolutions and linears alone (docs/benchmarks.md 2d). No grouped token tensor,
    no full-size LayerNorm output beyond the first."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import maxca.layers.scratch as scratch
    import maxca.layers.xca as xca

    # chunks as small, relative to this test's size, as the defaults are at 80x96x112
    monkeypatch.setattr(xca, "XCA_CHUNK_BYTES", 1 << 15)
    monkeypatch.setattr(scratch, "ROWS_PER_CHUNK", 256)
    torch.manual_seed(0)
    m = make_attention("maxca", 3, 16, heads=4, region=(8, 4, 4)).eval()
    # 8 regions and 8 in-region offsets along the cut axis: chunks of 1/8 (3/8 of C each)
    x = torch.randn(1, 16, 64, 8, 8).contiguous(memory_format=torch.channels_last_3d)
    unit = x.numel() * x.element_size()
    fresh: list[int] = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            seen = {
                a.untyped_storage().data_ptr()
                for a in (*args, *kwargs.values())
                if isinstance(a, torch.Tensor)
            }
            out = func(*args, **kwargs)
            for o in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(o, torch.Tensor) and func is not torch.ops.aten.set_.source_Storage:
                    st = o.untyped_storage()
                    if st.nbytes() >= unit // 2 and st.data_ptr() not in seen:
                        fresh.append(st.nbytes())
            return out

    with torch.no_grad():
        ref = m(x)
        with Spy():
            got = m(x)
    assert torch.equal(got, ref)
    assert sorted(fresh) == sorted([unit] * 6 + [3 * unit] * 2), [n / unit for n in fresh]
