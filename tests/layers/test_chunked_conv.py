"""Convolutions split by channels above oneDNN's 2 GiB limit: same values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maxca.layers import factories
from maxca.layers.factories import ChunkedConv2d, ChunkedConv3d, conv, conv_cls


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize(("c_in", "c_out"), [(7, 3), (3, 9), (11, 10)])
def test_split_conv_equals_the_plain_conv(monkeypatch, spatial_dims, c_in, c_out) -> None:
    torch.manual_seed(0)
    size = (9, 8) if spatial_dims == 2 else (6, 5, 7)
    layer = conv(spatial_dims, c_in, c_out).double()
    assert isinstance(layer, (ChunkedConv2d, ChunkedConv3d))
    x = torch.randn(2, c_in, *size, dtype=torch.float64, requires_grad=True)
    fn = (F.conv2d, F.conv3d)[spatial_dims - 2]

    def reference():
        y = fn(x, layer.weight, layer.bias, padding=1)
        g = torch.autograd.grad((y * y.detach().sin()).sum(), (x, layer.weight, layer.bias))
        return y.detach(), g

    y0, g0 = reference()
    calls = []
    real = type(layer).__mro__[2]._conv_forward  # nn.ConvNd's own

    def spy(self, input, weight, bias):
        calls.append((input.shape[1], weight.shape[0]))
        return real(self, input, weight, bias)

    monkeypatch.setattr(type(layer).__mro__[2], "_conv_forward", spy)
    # a limit of 2 channels' worth of bytes: every call is split in chunks of <= 2 channels
    per_channel = x[:, :1].numel() * x.element_size()
    monkeypatch.setattr(factories, "ONEDNN_MAX_BYTES", 2 * per_channel)
    y = layer(x)
    g = torch.autograd.grad((y * y.detach().sin()).sum(), (x, layer.weight, layer.bias))
    assert len(calls) == -(-c_in // 2) * -(-c_out // 2)  # in chunks x out chunks
    assert all(ci <= 2 and co <= 2 for ci, co in calls)
    torch.testing.assert_close(y, y0, rtol=0, atol=1e-12)
    for a, b in zip(g, g0):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_below_the_limit_and_without_autograd_nothing_is_split(monkeypatch) -> None:
    layer = conv_cls(3)(4, 5, 3, padding=1)
    x = torch.randn(1, 4, 5, 6, 7)
    monkeypatch.setattr(factories, "ONEDNN_MAX_BYTES", 8)  # everything would be split
    with torch.no_grad():
        y_ng = layer(x)  # inference: one call, the plain path
    monkeypatch.setattr(factories, "ONEDNN_MAX_BYTES", 2**31 - 1)
    y = layer(x)  # training-time call below the limit: the plain path
    torch.testing.assert_close(y_ng, y, rtol=0, atol=0)
    torch.testing.assert_close(y, F.conv3d(x, layer.weight, layer.bias, padding=1), rtol=0, atol=0)
