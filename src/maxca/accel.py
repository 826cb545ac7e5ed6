"""Optional speed-ups that keep the model's weights and API: ``torch.compile`` and bf16 autocast.

Neither is on by default. ``benchmarks/speed_options.py`` measures both side by side (docs/
benchmarks.md); an option is recommended only where registration accuracy does not change
(Dice by < 0.002, NJD by < 0.05 points on the validation pairs).

- :func:`compile_model` wraps a model with ``torch.compile`` (TorchInductor). On CPU,
  Inductor generates C++ and needs a C++ compiler (``g++``/``clang++``) on the ``PATH``; the
  first call compiles (minutes on 2 cores), later calls reuse the compiled code.
- :func:`precision_context` returns the autocast context for a precision name: ``"fp32"``
  (nothing) or ``"bf16"`` (``torch.autocast(device_type, torch.bfloat16)``: convolutions and
  matmuls in bfloat16, reductions, norms and softmax in float32). On CPU bf16 is fast only
  where the CPU has AVX512-BF16 or AMX (:func:`cpu_has_bf16`).

Typical use in an entry point::

    model = compile_model(model) if compile else model
    with torch.no_grad(), precision_context(precision, device):
        out = model(fixed, moving)
    flow = out.flow.float()
"""

from __future__ import annotations

import contextlib
import shutil
from typing import Any

import torch
import torch.nn as nn

from maxca.errors import MaxcaInputError

__all__ = ["PRECISIONS", "compile_model", "cpu_has_bf16", "precision_context"]

PRECISIONS = ("fp32", "bf16")


def cpu_has_bf16() -> bool:
    """True when this CPU advertises native bfloat16 arithmetic (AVX512-BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return bool(torch.backends.mkldnn.is_available())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def precision_context(
    precision: str, device: torch.device | str = "cpu"
) -> contextlib.AbstractContextManager[Any]:
    """The context to run a forward pass in: ``"fp32"`` -> no-op, ``"bf16"`` -> autocast.

    Args:
        precision: one of ``PRECISIONS``.
        device: where the model runs (its type picks the autocast device).

    Raises:
        MaxcaInputError: for an unknown precision.
    """
    if precision not in PRECISIONS:
        raise MaxcaInputError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def compile_model(model: nn.Module, mode: str | None = None) -> nn.Module:
    """``torch.compile(model)`` with the Inductor backend (same parameters, same outputs up to
    floating-point reordering).

    Args:
        model: any module (e.g. a registration model; its ``forward`` signature is kept).
        mode: Inductor mode (``None``, ``"reduce-overhead"``, ``"max-autotune"``).

    Raises:
        MaxcaInputError: on CPU when no C++ compiler is found (Inductor needs one).
    """
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if on_cpu and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise MaxcaInputError(
            "torch.compile on CPU needs a C++ compiler (g++ or clang++) on the PATH; "
            "install one (e.g. apt-get install g++) or run without compiling"
        )
    return torch.compile(model, backend="inductor", mode=mode)
