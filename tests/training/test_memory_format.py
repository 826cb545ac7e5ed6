"""The channels-last layout: the helpers, the layers that see it, and the trainer's option."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from maxca.accel import MEMORY_FORMATS, resolve_memory_format, to_memory_format
from maxca.errors import MaxcaInputError
from maxca.losses import RegistrationLoss
from maxca.models import create_model
from maxca.spatial import correlation
from maxca.training import Trainer, load_checkpoint, load_config

from .conftest import TINY_CONFIG


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["loss"]]


CL = {4: torch.channels_last, 5: torch.channels_last_3d}


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (2, 3, 4, 5, 6)])
def test_to_memory_format_changes_strides_not_values(shape) -> None:
    x = torch.randn(*shape)
    y = to_memory_format(x, "channels_last")
    assert y.is_contiguous(memory_format=CL[len(shape)]) and not y.is_contiguous()
    assert y.shape == x.shape and torch.equal(y, x)
    z = to_memory_format(y, "contiguous")
    assert z.is_contiguous() and torch.equal(z, x)


def test_to_memory_format_leaves_other_ranks_and_converts_module_weights() -> None:
    v = torch.randn(3, 4, 5)
    assert to_memory_format(v, "channels_last") is v
    net = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3), torch.nn.Linear(4, 4))
    assert to_memory_format(net, "channels_last") is net
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not net[0].weight.is_contiguous()
    assert net[1].weight.is_contiguous()  # 2-D weights have no channels-last layout
    with pytest.raises(MaxcaInputError, match="'channels_last' or 'contiguous'"):
        to_memory_format(v, "auto")


def test_resolve_memory_format() -> None:
    assert MEMORY_FORMATS == ("auto", "channels_last", "contiguous")
    assert resolve_memory_format("auto", "cpu", 3) == "channels_last"
    assert resolve_memory_format("auto", "cpu", 2) == "contiguous"
    assert resolve_memory_format("auto", torch.device("cuda"), 3) == "contiguous"
    assert resolve_memory_format("channels_last", "cuda", 2) == "channels_last"
    assert resolve_memory_format("contiguous", "cpu", 3) == "contiguous"
    with pytest.raises(MaxcaInputError, match="memory_format must be one of"):
        resolve_memory_format("nhwc")


def test_correlation_of_channels_last_inputs_matches_and_backpropagates() -> None:
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(1, 4, 5, 6, 7, dtype=torch.float64, generator=gen)
    m = torch.randn(1, 4, 5, 6, 7, dtype=torch.float64, generator=gen)
    grads = []
    for layout in ("contiguous", "channels_last"):
        a = to_memory_format(f.clone(), layout).requires_grad_()
        b = to_memory_format(m.clone(), layout).requires_grad_()
        out = correlation(a, b, max_disp=1)
        out.backward(torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape).sin())
        grads.append((out.detach(), a.grad, b.grad))
    for ref, got in zip(grads[0], grads[1]):
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)


def test_a_3d_network_gives_the_same_loss_and_gradients_in_both_layouts() -> None:
    gen = torch.Generator().manual_seed(1)
    fixed = torch.rand(1, 1, 16, 12, 20, dtype=torch.float64, generator=gen)
    moving = torch.rand(1, 1, 16, 12, 20, dtype=torch.float64, generator=gen)
    loss_fn = RegistrationLoss(3, "ncc", {"similarity": 1.0, "diffusion": 1.0}, window=5)
    results = []
    for layout in ("contiguous", "channels_last"):
        torch.manual_seed(0)
        model = create_model(
            "pyramid_small", spatial_dims=3, enc_channels=4, dec_channels=8, heads=2, region=2
        ).double()
        to_memory_format(model, layout)
        f, m = to_memory_format(fixed, layout), to_memory_format(moving, layout)
        out = model(f, m)
        loss, _ = loss_fn(f, out.warped, out.flow)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((loss.detach(), out.flow.detach(), grads))
    (l0, f0, g0), (l1, f1, g1) = results
    torch.testing.assert_close(l1, l0, atol=1e-12, rtol=0)
    torch.testing.assert_close(f1, f0, atol=1e-10, rtol=0)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-10, rtol=1e-8, msg=name)


def test_trainer_option_lays_out_weights_and_trains_alike(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    common = [tiny_overrides[0], "val_every=0", "budget.steps=4", "ckpt_every=4", "log_every=1"]
    with pytest.raises(MaxcaInputError, match="memory_format must be one of"):
        load_config(TINY_CONFIG, [*common, "memory_format=nhwc"])
    trainers = {}
    for layout in ("contiguous", "channels_last"):
        cfg = load_config(
            TINY_CONFIG, [*common, f"memory_format={layout}", f"run_dir={tmp_path / layout}"]
        )
        trainers[layout] = Trainer(cfg)
    auto = Trainer(load_config(TINY_CONFIG, [*common, f"run_dir={tmp_path / 'auto'}"]))
    assert auto.memory_format == "contiguous"  # 2-D images: auto keeps the default layout
    convs = [
        t.module.get_submodule(n).weight
        for t in trainers.values()
        for n, mod in t.module.named_modules()
        if isinstance(mod, torch.nn.Conv2d)
    ]
    half = len(convs) // 2
    assert convs and all(w.is_contiguous() for w in convs[:half])
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs[half:])
    assert not all(w.is_contiguous() for w in convs[half:])
    for t in trainers.values():
        t.fit()
    # Adam turns the rounding noise of gradients that are zero in exact arithmetic (a bias
    # before a normalisation) into lr-sized steps, so weights are compared by what they do:
    # the losses of every step agree to float rounding, the predicted flows to 2 %.
    losses = {
        k: [float(r["loss"]) for r in _rows(tmp_path / k)] for k in ("contiguous", "channels_last")
    }
    assert len(losses["contiguous"]) == 4
    assert losses["channels_last"] == pytest.approx(losses["contiguous"], rel=1e-5, abs=1e-7)
    gen = torch.Generator().manual_seed(2)
    f, m = torch.rand(2, 1, 1, 32, 32, generator=gen)
    with torch.no_grad():
        flows = {k: t.module.eval()(f, m).flow for k, t in trainers.items()}
    scale = float(flows["contiguous"].abs().max())
    assert scale > 0.05  # the networks predict something
    assert float((flows["channels_last"] - flows["contiguous"]).abs().max()) < 0.02 * scale
    b = trainers["channels_last"].module.state_dict()
    saved, _ = load_checkpoint(tmp_path / "channels_last", "last")
    for name, value in saved.state_dict().items():
        assert value.is_contiguous() and torch.equal(value, b[name]), name
