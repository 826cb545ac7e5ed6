"""XCA layer: a naive reference, locality of regional/dilated grouping, masked padding."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import maxca.layers.xca as xca_mod
from maxca.errors import MaxcaInputError
from maxca.layers.partition import pad_to_multiple
from maxca.layers.xca import XCALayer


@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons in double precision (restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


CASES = [(2, (9, 13), (4, 4)), (3, (7, 9, 11), (4, 4, 4)), (3, (8, 5, 6), (4, 2, 3))]


def naive_xca(layer: XCALayer, z: torch.Tensor) -> torch.Tensor:
    """Independent reference: explicit groups of real voxels (partial regions at the borders,
    no padding), per-head F.normalize / softmax, A v, then the output Linear."""
    B, spatial, C = z.shape[0], z.shape[1:-1], z.shape[-1]
    H, c = layer.heads, C // layer.heads
    h = F.layer_norm(z, (C,), layer.norm.weight, layer.norm.bias, layer.norm.eps)
    qkv = layer.qkv(h.movedim(-1, 1)).movedim(1, -1)  # (B, *S, 3C)
    R = layer.region
    out = torch.zeros_like(z)
    coords = list(itertools.product(*(range(s) for s in spatial)))
    if layer.grouping == "regional":
        key = lambda p: tuple(pi // r for pi, r in zip(p, R))  # noqa: E731
    elif layer.grouping == "dilated":
        key = lambda p: tuple(pi % r for pi, r in zip(p, R))  # noqa: E731
    else:
        key = lambda p: 0  # noqa: E731
    groups: dict = {}
    for p in coords:
        groups.setdefault(key(p), []).append(p)
    for b in range(B):
        for members in groups.values():
            idx = tuple(torch.tensor(ax) for ax in zip(*members))
            t = qkv[(b, *idx)]  # (T, 3C)
            q, k, v = t.split(C, dim=-1)
            res = []
            for hh in range(H):
                sl = slice(hh * c, (hh + 1) * c)
                qn = F.normalize(q[:, sl], dim=0)
                kn = F.normalize(k[:, sl], dim=0)
                a = torch.softmax(layer.temperature[hh] * (qn.T @ kn), dim=-1)  # (c, c)
                res.append((a @ v[:, sl].T).T)  # (T, c)
            o = layer.proj(torch.cat(res, dim=-1))
            out[(b, *idx)] = o
    return z + out


def make_layer(d: int, region, grouping: str, C: int = 8, H: int = 2) -> XCALayer:
    torch.manual_seed(0)
    layer = XCALayer(d, C, H, region, grouping)
    with torch.no_grad():  # non-trivial temperatures and norm affine
        layer.temperature.copy_(torch.rand_like(layer.temperature) * 2 + 0.5)
        layer.norm.weight.normal_(1.0, 0.2)
        layer.norm.bias.normal_(0.0, 0.2)
    return layer


@pytest.mark.parametrize("d,spatial,region", CASES)
@pytest.mark.parametrize("grouping", ["regional", "dilated", "global"])
def test_matches_naive_reference(d, spatial, region, grouping):
    layer = make_layer(d, region, grouping)
    z = torch.randn(2, *spatial, 8)
    ref = naive_xca(layer, z)
    torch.testing.assert_close(layer(z), ref, rtol=1e-9, atol=1e-9)
    with torch.no_grad():  # the inference fast path (forward_into)
        torch.testing.assert_close(layer(z), ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("d,spatial,region", CASES)
@pytest.mark.parametrize("grouping", ["regional", "dilated"])
def test_extra_region_of_padding_changes_nothing(d, spatial, region, grouping, monkeypatch):
    layer = make_layer(d, region, grouping)
    z = torch.randn(1, *spatial, 8)
    ref = layer(z)

    def pad_more(x, reg):
        xp, pads = pad_to_multiple(x, reg)
        spec = [0, 0]
        for r in reversed(reg):
            spec += [0, r]  # one whole extra region on every axis
        return F.pad(xp, spec), tuple(p + r for p, r in zip(pads, reg))

    monkeypatch.setattr(xca_mod, "pad_to_multiple", pad_more)
    torch.testing.assert_close(layer(z), ref, rtol=1e-10, atol=1e-10)


def _changed(layer: XCALayer, spatial, p) -> set:
    torch.manual_seed(1)
    z = torch.randn(1, *spatial, 8)
    z2 = z.clone()
    z2[(0, *p)] += torch.randn(8)
    diff = (layer(z2) - layer(z)).abs().amax(-1)[0]
    return {tuple(i) for i in (diff > 1e-12).nonzero().tolist()}


def _halo(p, spatial):
    for off in itertools.product((-1, 0, 1), repeat=len(p)):
        n = tuple(a + o for a, o in zip(p, off))
        if all(0 <= a < s for a, s in zip(n, spatial)):
            yield n


@pytest.mark.parametrize("d,spatial,region", CASES)
def test_regional_locality(d, spatial, region):
    layer = make_layer(d, region, "regional")
    every = set(itertools.product(*(range(s) for s in spatial)))
    for p in [tuple(s // 2 for s in spatial), (0,) * d, tuple(s - 1 for s in spatial)]:
        hit_regions = {tuple(a // r for a, r in zip(n, region)) for n in _halo(p, spatial)}
        expected = {o for o in every if tuple(a // r for a, r in zip(o, region)) in hit_regions}
        assert _changed(layer, spatial, p) == expected


@pytest.mark.parametrize("d,spatial,region", CASES)
def test_dilated_locality(d, spatial, region):
    layer = make_layer(d, region, "dilated")
    every = set(itertools.product(*(range(s) for s in spatial)))
    for p in [tuple(s // 2 for s in spatial), (1,) * d]:
        offsets = {tuple(a % r for a, r in zip(n, region)) for n in _halo(p, spatial)}
        expected = {o for o in every if tuple(a % r for a, r in zip(o, region)) in offsets}
        got = _changed(layer, spatial, p)
        assert got == expected
        assert len(got) < len(every)  # sparse: far from everything changes


def test_bad_arguments():
    with pytest.raises(MaxcaInputError, match=r"channels \(10\) must be divisible by heads \(4\)"):
        XCALayer(3, 10, 4)
    with pytest.raises(MaxcaInputError, match="spatial_dims must be 2 or 3"):
        XCALayer(4, 8, 2)
    with pytest.raises(MaxcaInputError, match="grouping must be one of"):
        XCALayer(3, 8, 2, grouping="diagonal")
    with pytest.raises(MaxcaInputError, match="region must be"):
        XCALayer(3, 8, 2, region=(4, 4))


@pytest.mark.parametrize("mode", [True, "function"])
@pytest.mark.parametrize("d,spatial,region", CASES)
@pytest.mark.parametrize("grouping", ["regional", "dilated", "global"])
def test_head_by_head_checkpointed_path_matches_the_fused_one(d, spatial, region, grouping, mode):
    fused = make_layer(d, region, grouping)
    by_head = make_layer(d, region, grouping)
    by_head.checkpoint_heads = mode
    z = torch.randn(2, *spatial, 8)
    outs, grads = [], []
    for layer in (fused, by_head):
        zi = z.clone().requires_grad_(True)
        out = layer(zi)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        outs.append(out.detach())
        grads.append([zi.grad] + [p.grad for p in layer.parameters()])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-10)
    for ga, gb in zip(*grads):
        torch.testing.assert_close(gb, ga, rtol=1e-9, atol=1e-10)
    with torch.no_grad():  # without autograd the inference fast path runs (round-off apart)
        torch.testing.assert_close(by_head(z), outs[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d,spatial,region", CASES)
@pytest.mark.parametrize("grouping", ["regional", "dilated"])
def test_head_by_head_function_recomputes_a_prelude_with_the_same_gradients(
    d, spatial, region, grouping
):
    """``forward_after(prelude, params, x)`` == ``forward(prelude(x))``, gradients of ``x``,
    the prelude's parameters and the layer's included (float64)."""
    layers = [make_layer(d, region, grouping) for _ in range(2)]
    layers[1].checkpoint_heads = "function"
    torch.manual_seed(1)
    pre = [torch.nn.Linear(5, 8) for _ in range(2)]
    pre[1].load_state_dict(pre[0].state_dict())
    x = torch.randn(2, *spatial, 5)
    outs, grads = [], []
    for layer, lin, fn in zip(layers, pre, ("plain", "after")):
        xi = x.clone().requires_grad_(True)

        def prelude(t, lin=lin):
            return torch.nn.functional.gelu(lin(t))

        out = (
            layer(prelude(xi))
            if fn == "plain"
            else layer.forward_after(prelude, (lin.weight, lin.bias), xi)
        )
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        outs.append(out.detach())
        grads.append(
            [xi.grad, lin.weight.grad, lin.bias.grad] + [p.grad for p in layer.parameters()]
        )
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-10)
    for ga, gb in zip(*grads):
        assert gb is not None
        torch.testing.assert_close(gb, ga, rtol=1e-9, atol=1e-10)
