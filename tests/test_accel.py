"""Optional speed-ups: precision contexts and the compile wrapper's checks."""

from __future__ import annotations

import pytest
import torch

from maxca.accel import PRECISIONS, compile_model, precision_context
from maxca.errors import MaxcaInputError
from maxca.layers import MAXCA


def test_bf16_autocast_runs_the_block_in_bfloat16_close_to_fp32() -> None:
    torch.manual_seed(0)
    block = MAXCA(3, 16, heads=2, region=4).eval()
    x = torch.randn(1, 16, 8, 8, 8)
    with torch.no_grad():
        ref = block(x)
        with precision_context("fp32"):
            same = block(x)
        with precision_context("bf16", "cpu"):
            low = block(x)
    assert torch.equal(same, ref)
    diff = (low.float() - ref).abs().max().item()
    # bfloat16 has an 8-bit mantissa: visibly different from fp32, but close
    assert 1e-4 < diff < 0.1 * ref.abs().max().item()


def test_unknown_precision_is_refused() -> None:
    assert PRECISIONS == ("fp32", "bf16")
    with pytest.raises(MaxcaInputError, match=r"precision must be one of \['fp32', 'bf16'\]"):
        precision_context("fp16")


def test_compile_without_a_cpp_compiler_is_refused_with_the_reason(monkeypatch) -> None:
    import maxca.accel as accel

    monkeypatch.setattr(accel.shutil, "which", lambda name: None)
    with pytest.raises(MaxcaInputError, match="needs a C\\+\\+ compiler"):
        compile_model(torch.nn.Linear(2, 2))
