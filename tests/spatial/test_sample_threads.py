"""The threaded CPU sampler :func:`maxca.spatial.sample.grid_sample_cpu`: equal to one
``F.grid_sample`` call for every split, padding and mode, with the same gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maxca.spatial import sample as S
from maxca.spatial.sample import grid_sample_cpu


def _grid(shape, seed=0, spread=1.1, dtype=torch.float64):
    """A random normalised grid ``(1, *shape, d)``, partly outside ``[-1, 1]``."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand((1, *shape, len(shape)), generator=gen, dtype=dtype) * 2 - 1) * spread


def _reference(src, grid, mode, padding_mode):
    return F.grid_sample(src, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


@pytest.mark.parametrize("shape", [(7, 5, 6), (9, 11)])  # first axis not a multiple of 2 or 4
@pytest.mark.parametrize("threads", [2, 3, 4, 7])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_split_equals_one_call_exactly(shape, threads, mode, padding_mode, monkeypatch):
    monkeypatch.setattr(S, "SPLIT_MIN_POINTS", 1)  # split even these tiny grids
    gen = torch.Generator().manual_seed(1)
    src = torch.randn((1, 3, *shape), generator=gen, dtype=torch.float64)
    grid = _grid(shape)
    out = grid_sample_cpu(src, grid, mode, padding_mode, threads=threads)
    assert out.shape == (1, 3, *shape)
    assert torch.equal(out, _reference(src, grid, mode, padding_mode))


def test_output_grid_of_another_size(monkeypatch):
    """The output grid need not have the input's size (resampling between grids)."""
    monkeypatch.setattr(S, "SPLIT_MIN_POINTS", 1)
    src = torch.randn(1, 2, 6, 7, 8, dtype=torch.float64)
    grid = _grid((5, 3, 4), seed=3)
    out = grid_sample_cpu(src, grid, "bilinear", "zeros", threads=2)
    assert torch.equal(out, _reference(src, grid, "bilinear", "zeros"))


def test_gradients_match_one_call(monkeypatch):
    monkeypatch.setattr(S, "SPLIT_MIN_POINTS", 1)
    gen = torch.Generator().manual_seed(2)
    src = torch.randn(1, 3, 9, 6, 5, generator=gen, dtype=torch.float64)
    grid = _grid((9, 6, 5), seed=4, spread=0.9)
    weights = torch.randn(1, 3, 9, 6, 5, generator=gen, dtype=torch.float64)
    grads = []
    for split in (True, False):
        s, g = src.clone().requires_grad_(), grid.clone().requires_grad_()
        if split:
            out = grid_sample_cpu(s, g, "bilinear", "border", threads=4)
        else:
            out = _reference(s, g, "bilinear", "border")
        (out * weights).sum().backward()
        grads.append((s.grad, g.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=1e-12)
    assert torch.equal(grads[0][1], grads[1][1])  # each grid point's gradient comes from one slab


def test_split_is_used_only_where_it_can_help(monkeypatch):
    """One call for a batch, a single thread or a small grid; slabs otherwise."""
    calls: list[int] = []
    real = F.grid_sample

    def counting(src, grid, **kw):
        calls.append(grid.shape[0])
        return real(src, grid, **kw)

    monkeypatch.setattr(S.F, "grid_sample", counting)
    src = torch.randn(1, 1, 8, 8, 8)
    grid = _grid((8, 8, 8), dtype=torch.float32)
    monkeypatch.setattr(S, "SPLIT_MIN_POINTS", 512)
    grid_sample_cpu(src, grid, threads=2)
    grid_sample_cpu(src, grid, threads=1)
    grid_sample_cpu(src.expand(2, -1, -1, -1, -1), grid.expand(2, -1, -1, -1, -1), threads=2)
    monkeypatch.setattr(S, "SPLIT_MIN_POINTS", 513)
    grid_sample_cpu(src, grid, threads=2)
    assert calls == [2, 1, 2, 1]  # slabs, one thread, a batch of 2 as it is, small grid


def test_sample_grid_is_unchanged_by_threads(monkeypatch):
    """The public sampler gives the same values on 1 and 3 threads (3 slabs of 10 rows)."""
    monkeypatch.setattr(S, "SPLIT_MIN_POINTS", 1)
    gen = torch.Generator().manual_seed(5)
    image = torch.randn(1, 2, 10, 9, 8, generator=gen)
    coords = torch.rand(3, 10, 9, 8, generator=gen) * 9
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = S.sample_grid(image, coords)
        torch.set_num_threads(3)
        three = S.sample_grid(image, coords)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, three)
