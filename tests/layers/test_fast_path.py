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
