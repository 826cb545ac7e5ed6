"""Optional speed-ups that keep the model's weights and API: ``torch.compile``, bf16 autocast
and the channels-last memory layout.

Compile and bf16 are not on by default. ``benchmarks/speed_options.py`` measures both side by
side (docs/benchmarks.md); an option is recommended only where registration accuracy does not
change (Dice by < 0.002, NJD by < 0.05 points on the validation pairs). The channels-last
layout changes no value (``benchmarks/memory_format.py``) and the trainer uses it by default
for 3-D networks on the CPU.

- :func:`compile_model` wraps a model with ``torch.compile`` (TorchInductor). On CPU,
  Inductor generates C++ and needs a C++ compiler (``g++``/``clang++``) on the ``PATH``; the
  first call compiles (minutes on 2 cores), later calls reuse the compiled code.
- :func:`precision_context` returns the autocast context for a precision name: ``"fp32"``
  (nothing) or ``"bf16"`` (``torch.autocast(device_type, torch.bfloat16)``: convolutions and
  matmuls in bfloat16, reductions, norms and softmax in float32). On CPU bf16 is fast only
  where the CPU has AVX512-BF16 or AMX (:func:`cpu_has_bf16`).
- :func:`resolve_memory_format` / :func:`to_memory_format`: the memory layout of the
  network's parameters and input images. ``"channels_last"`` stores a ``(B, C, *S)`` tensor
  with the channels innermost (``torch.channels_last`` / ``channels_last_3d``), the layout in
  which oneDNN's CPU convolutions need no reordering; same values, same shapes, only the
  strides differ. ``"auto"`` picks it for 3-D training on the CPU (faster there) and keeps
  the default (contiguous) layout otherwise. The trainer's ``memory_format`` option uses these.

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
from maxca.layers.partition import channels_last_format

__all__ = [
    "MEMORY_FORMATS",
    "PRECISIONS",
    "compile_model",
    "cpu_has_bf16",
    "precision_context",
    "resolve_memory_format",
    "to_memory_format",
]

PRECISIONS = ("fp32", "bf16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


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


def resolve_memory_format(
    name: str, device: torch.device | str = "cpu", spatial_dims: int = 3
) -> str:
    """``"channels_last"`` or ``"contiguous"`` for a :data:`MEMORY_FORMATS` name.

    ``"auto"`` is ``"channels_last"`` for 3-D networks on the CPU, where a training step took
    0.78-0.80x as long for ``pyramid`` and 0.83-0.98x for ``unet`` and ``corrmaxca``
    (``benchmarks/memory_format.py``, docs/benchmarks.md), and ``"contiguous"`` otherwise: 2-D
    steps and forward-only passes were not faster, and CUDA was not measured.

    Raises:
        MaxcaInputError: for an unknown name.
    """
    if name not in MEMORY_FORMATS:
        raise MaxcaInputError(f"memory_format must be one of {list(MEMORY_FORMATS)}, got {name!r}")
    if name == "auto":
        on_cpu = torch.device(device).type == "cpu"
        return "channels_last" if on_cpu and spatial_dims == 3 else "contiguous"
    return name


def to_memory_format(x: Any, name: str) -> Any:
    """``x`` (a module or a tensor) in the layout ``name`` (``"channels_last"`` or
    ``"contiguous"``; resolve ``"auto"`` first with :func:`resolve_memory_format`).

    A module's 4-D / 5-D parameters (2-D / 3-D convolution weights) and a ``(B, C, H, W)`` or
    ``(B, C, D, H, W)`` tensor are laid out channels-last (``torch.channels_last`` /
    ``torch.channels_last_3d``) or contiguous; other tensors are returned unchanged. Values and
    shapes never change. A module is converted in place and returned.

    Raises:
        MaxcaInputError: for a name other than ``"channels_last"`` or ``"contiguous"``.
    """
    if name not in ("channels_last", "contiguous"):
        raise MaxcaInputError(
            f"memory layout must be 'channels_last' or 'contiguous', got {name!r}"
        )
    if isinstance(x, nn.Module):
        for p in x.parameters():
            if p.dim() in (4, 5):
                p.data = to_memory_format(p.data, name)
        return x
    if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5):
        return x
    if name == "contiguous":
        return x.contiguous()
    return x.contiguous(memory_format=channels_last_format(x.dim() - 2))
