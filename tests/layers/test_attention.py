"""The MAXCA block and every attention kind: shapes, gradients, checkpointing, padding, errors."""

from __future__ import annotations

import pytest
import torch

from maxca import layers
from maxca.errors import MaxcaInputError
from maxca.layers.attention import ATTENTION_KINDS, KINDS, make_attention
from maxca.layers.maxca import MAXCA
from maxca.layers.sa import SelfAttentionLayer
from maxca.layers.xca import XCALayer

SIZES = {2: (9, 13), 3: (7, 9, 11)}


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_every_kind_odd_sizes_shapes_and_gradients(d, kind):
    torch.manual_seed(0)
    m = make_attention(kind, d, 16, heads=2, region=4)
    x = torch.randn(2, 16, *SIZES[d], requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    if kind == "none":
        assert torch.equal(y, x)
    else:
        assert not torch.allclose(y, x)


@pytest.mark.parametrize("mode", [True, "segments", "fine"])
@pytest.mark.parametrize("kind", [k for k in ATTENTION_KINDS if k != "none"])
def test_checkpointing_gives_same_output_and_gradients(kind, mode):
    torch.manual_seed(0)
    a = make_attention(kind, 3, 8, heads=2, region=4)
    b = make_attention(kind, 3, 8, heads=2, region=4, checkpoint=mode)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 8, 6, 7, 9)
    outs, grads = [], []
    for m in (a, b):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    # "segments"/"fine" sum the XCA heads one by one: the same terms in another order (float32)
    tol = {} if mode is True else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(outs[0], outs[1], **tol)
    for ga, gb in zip(*grads):
        torch.testing.assert_close(ga, gb, **tol)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("mode", ["segments", "fine"])
def test_fine_checkpointing_gives_the_same_numbers_in_float64(d, mode):
    """MAXCA with its branch-level checkpointing vs the plain block, float64, odd sizes."""
    torch.manual_seed(0)
    a = make_attention("maxca", d, 8, heads=2, region=4).double()
    b = make_attention("maxca", d, 8, heads=2, region=4, checkpoint=mode).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 8, *SIZES[d], dtype=torch.float64)
    w = torch.randn_like(x)
    outs, grads = [], []
    for m in (a, b):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        (y * w).sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-10)
    for (name, _), ga, gb in zip([("x", None), *a.named_parameters()], *grads):
        assert gb is not None, name
        torch.testing.assert_close(gb, ga, rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", ["maxca", "regional", "dilated", "window"])
def test_extra_padding_never_changes_the_block_output(d, kind, monkeypatch):
    """Padding one whole extra region/window on every axis changes nothing at real voxels."""
    import torch.nn.functional as F

    import maxca.layers.sa as sa_mod
    import maxca.layers.xca as xca_mod
    from maxca.layers.partition import pad_to_multiple

    torch.manual_seed(0)
    m = make_attention(kind, d, 8, heads=2, region=4).double()
    x = torch.randn(1, 8, *SIZES[d], dtype=torch.float64)
    ref = m(x)

    def pad_more(t, reg):
        tp, pads = pad_to_multiple(t, reg)
        spec = [0, 0]
        for r in reversed(reg):
            spec += [0, r]
        return F.pad(tp, spec), tuple(p + r for p, r in zip(pads, reg))

    monkeypatch.setattr(xca_mod, "pad_to_multiple", pad_more)
    monkeypatch.setattr(sa_mod, "pad_to_multiple", pad_more)
    torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)


def test_maxca_public_and_region_per_axis():
    assert layers.MAXCA is MAXCA
    m = MAXCA(3, 8, heads=2, region=(4, 2, 3))
    x = torch.randn(1, 8, 5, 7, 4)
    assert m(x).shape == x.shape


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(MaxcaInputError, match=r"channels \(12\) must be divisible by heads \(5\)"):
        MAXCA(3, 12, heads=5)
    with pytest.raises(MaxcaInputError, match="unknown attention kind 'swin'"):
        make_attention("swin", 3, 8)
    with pytest.raises(MaxcaInputError, match="spatial_dims must be 2 or 3"):
        make_attention("maxca", 1, 8)
    m = MAXCA(3, 8, heads=2, region=4)
    with pytest.raises(MaxcaInputError, match=r"expected a 5-D input .* got shape \(1, 8, 6, 6\)"):
        m(torch.randn(1, 8, 6, 6))
    with pytest.raises(MaxcaInputError, match="expected 8 channels, got 4"):
        m(torch.randn(1, 4, 6, 6, 6))


def test_global_sa_refuses_with_memory_figure_and_runs_below_limit():
    m = make_attention("global_sa", 3, 8, heads=2, max_tokens=500)
    with pytest.raises(MaxcaInputError, match=r"8x8x8 = 512 tokens would need .* GB"):
        m(torch.randn(1, 8, 8, 8, 8))
    assert m(torch.randn(1, 8, 7, 8, 8)).shape == (1, 8, 7, 8, 8)


def test_global_sa_layer_matches_multihead_reference():
    torch.manual_seed(0)
    layer = SelfAttentionLayer(2, 8, 2, grouping="global").double()
    z = torch.randn(1, 5, 6, 8, dtype=torch.float64)
    h = layer.norm(z).reshape(1, 30, 8)
    q, k, v = layer.qkv(h).split(8, dim=-1)
    outs = []
    for hh in range(2):
        s = slice(4 * hh, 4 * hh + 4)
        a = torch.softmax(q[0, :, s] @ k[0, :, s].T / 2.0, dim=-1)
        outs.append(a @ v[0, :, s])
    ref = z + layer.proj(torch.cat(outs, -1)).reshape(z.shape)
    torch.testing.assert_close(layer(z), ref)


def test_window_attention_is_local():
    """A perturbation changes window-SA outputs only in windows (shifted or not) touching it."""
    torch.manual_seed(0)
    m = make_attention("window", 2, 8, heads=2, region=4).double()
    x = torch.randn(1, 8, 24, 24, dtype=torch.float64)
    x2 = x.clone()
    x2[0, :, 2, 2] += 1.0
    diff = (m(x2) - m(x)).abs().amax(1)[0]
    # the RCAB's two 3x3 convs add a halo of 2; unshifted window [0,4), shifted [0,2)+[2,6)
    assert diff[12:, :].max() == 0 and diff[:, 12:].max() == 0
    assert diff[2, 2] > 0


# -- the kinds table ----------------------------------------------------------------------------
def _mixer_changes(kind: str, d: int, spatial, p, region) -> set:
    """Voxels whose mixer output changes when the input voxel ``p`` is perturbed.

    The mixer is the part of the block that differs between kinds; the RCAB after it has a
    global squeeze-excitation (every output depends on the spatial mean), by design."""
    torch.manual_seed(0)
    m = make_attention(kind, d, 8, heads=2, region=region).double()
    z = torch.randn(1, *spatial, 8, dtype=torch.float64)
    z2 = z.clone()
    z2[(0, *p)] += torch.randn(8, dtype=torch.float64)
    with torch.no_grad():
        diff = (m.mixer(z2) - m.mixer(z)).abs().amax(-1)[0]
    return {tuple(i) for i in (diff > 1e-12).nonzero().tolist()}


def _halo(p, spatial):
    import itertools

    for off in itertools.product((-1, 0, 1), repeat=len(p)):
        n = tuple(a + o for a, o in zip(p, off))
        if all(0 <= a < s for a, s in zip(n, spatial)):
            yield n


LOCALITY = [(2, (9, 13), (4, 4)), (3, (7, 9, 6), (4, 4, 2))]


@pytest.mark.parametrize(("d", "spatial", "region"), LOCALITY)
def test_regional_kind_has_exactly_regional_locality(d, spatial, region):
    import itertools

    every = set(itertools.product(*(range(s) for s in spatial)))
    for p in [tuple(s // 2 for s in spatial), (0,) * d]:
        hit = {tuple(a // r for a, r in zip(n, region)) for n in _halo(p, spatial)}
        expected = {o for o in every if tuple(a // r for a, r in zip(o, region)) in hit}
        assert _mixer_changes("regional", d, spatial, p, region) == expected


@pytest.mark.parametrize(("d", "spatial", "region"), LOCALITY)
def test_dilated_kind_has_exactly_dilated_locality(d, spatial, region):
    import itertools

    every = set(itertools.product(*(range(s) for s in spatial)))
    for p in [tuple(s // 2 for s in spatial), (1,) * d]:
        offs = {tuple(a % r for a, r in zip(n, region)) for n in _halo(p, spatial)}
        expected = {o for o in every if tuple(a % r for a, r in zip(o, region)) in offs}
        got = _mixer_changes("dilated", d, spatial, p, region)
        assert got == expected and len(got) < len(every)


@pytest.mark.parametrize(("d", "spatial", "region"), LOCALITY)
def test_maxca_mixer_locality_is_the_union_of_regional_and_dilated(d, spatial, region):
    p = tuple(s // 2 for s in spatial)
    union = _mixer_changes("regional", d, spatial, p, region) | _mixer_changes(
        "dilated", d, spatial, p, region
    )
    assert _mixer_changes("maxca", d, spatial, p, region) == union


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", ["regional", "dilated"])
def test_regional_and_dilated_have_maxca_parameters(d, kind):
    ref = {n: p.shape for n, p in MAXCA(d, 16, heads=4, region=4).named_parameters()}
    got = {n: p.shape for n, p in make_attention(kind, d, 16, heads=4, region=4).named_parameters()}
    assert got == ref
    assert sum(s.numel() for s in got.values()) == sum(s.numel() for s in ref.values())


def test_kinds_table_names_the_branches_and_builds_them():
    assert tuple(KINDS) == ATTENTION_KINDS
    assert {"maxca", "regional", "dilated", "window", "global_sa", "xca", "none"} == set(KINDS)
    for kind, branches in KINDS.items():
        m = make_attention(kind, 3, 8, heads=2, region=4)
        assert m.kind == kind
        if branches is None:
            continue
        for branch, layer in zip(branches, (m.mixer.branch_u, m.mixer.branch_v)):
            assert layer.grouping == branch.grouping
            assert isinstance(layer, XCALayer if branch.layer == "xca" else SelfAttentionLayer)
    # the token limit is owned by the block, and only the quadratic kind has one
    limits = {k: make_attention(k, 3, 8, heads=2, max_tokens=99).max_tokens for k in KINDS}
    assert limits == {k: (99 if k == "global_sa" else None) for k in KINDS}


def test_dim_keyword_still_works_with_a_deprecation_warning():
    torch.manual_seed(0)
    new = make_attention("maxca", spatial_dims=2, channels=8, heads=2, region=4)
    with pytest.warns(DeprecationWarning, match="spatial_dims"):
        old = make_attention("maxca", dim=2, channels=8, heads=2, region=4)
    old.load_state_dict(new.state_dict())
    x = torch.randn(1, 8, 6, 5)
    torch.testing.assert_close(old(x), new(x))
    with (
        pytest.raises(MaxcaInputError, match="got spatial_dims=3 and dim=2"),
        pytest.warns(DeprecationWarning),
    ):
        make_attention("maxca", 3, 8, dim=2)
    with pytest.raises(MaxcaInputError, match="needs spatial_dims and channels"):
        make_attention("maxca", channels=8)


def test_dropout_is_plumbed_into_every_branch():
    m = make_attention("window", 2, 8, heads=2, region=4, drop=0.25)
    rates = {n: mod.p for n, mod in m.named_modules() if isinstance(mod, torch.nn.Dropout)}
    assert rates and set(rates.values()) == {0.25}
    assert {"mixer.drop", "mixer.branch_u.drop", "mixer.branch_v.drop"} <= set(rates)


def test_shift_needs_regional_grouping_and_sa_grouping_is_checked():
    with pytest.raises(MaxcaInputError, match="shift=True needs grouping='regional'"):
        SelfAttentionLayer(2, 8, 2, grouping="dilated", shift=True)
    with pytest.raises(MaxcaInputError, match="grouping must be one of"):
        SelfAttentionLayer(2, 8, 2, grouping="windowed")


def test_segment_checkpointing_keeps_only_the_segment_boundaries():
    """Inside an outer checkpoint, a segmented block's backward holds less than a plain one."""
    torch.manual_seed(0)
    x = torch.randn(1, 8, 8, 8, 8)
    saved = {}
    for mode in (False, "segments"):
        m = make_attention("maxca", 3, 8, heads=2, region=4, checkpoint=mode)
        total = [0]

        def pack(t, total=total):
            total[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m(x.clone().requires_grad_(True))
        saved[mode] = total[0]
    # the boundaries (u', v', the mixer output) plus the block input: about 4 x C per voxel
    assert saved["segments"] < 0.5 * saved[False], saved
    with pytest.raises(MaxcaInputError, match="checkpoint must be one of"):
        make_attention("maxca", 3, 8, checkpoint="layers")
