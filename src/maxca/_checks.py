"""The one checks module: argument validation and the shared vocabulary of maxca.

Every failure is a one-line :class:`~maxca.errors.MaxcaInputError` naming what was expected and
what was given. The constant tuples of allowed values (normalisations, pair modes, similarity
terms, devices) live here once; config, data, losses and inference import them.
Shapes print as ``(1, 3, 8)`` for tensors (:func:`shape_str`) and ``2x3x4`` for the arrays of
the metrics (:func:`dims_str`).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from maxca.errors import MaxcaInputError

#: intensity normalisations (:func:`maxca.data.transforms.normalise_intensity`)
NORMALISATIONS = ("minmax", "percentile", "zscore")
#: how training pairs are drawn (``data.pairs`` of a config)
PAIR_MODES = ("random", "atlas", "pairs")
#: image similarity terms of the registration loss
SIMILARITIES = ("ncc", "mse", "mind")
#: device names accepted by :func:`resolve_device` (``cuda:N`` too)
DEVICES = ("auto", "cpu", "cuda")


def shape_str(shape: Sequence[int]) -> str:
    """``(1, 3, 8)`` for any sequence of ints (``torch.Size`` prints as ``torch.Size([...])``)."""
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def dims_str(shape: Sequence[int]) -> str:
    """``(2, 3, 4)`` written as ``2x3x4`` (``scalar`` for ``()``), as the metrics report arrays."""
    return "x".join(str(int(s)) for s in shape) if len(shape) else "scalar"


def check_tensor(x: object, name: str) -> torch.Tensor:
    """Return ``x`` if it is a tensor."""
    if not isinstance(x, torch.Tensor):
        raise MaxcaInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_image(x: object, name: str = "image") -> int:
    """Check ``x`` is ``(B, C, *S)`` with 2 or 3 spatial axes; return the number of spatial axes."""
    x = check_tensor(x, name)
    if x.dim() not in (4, 5):
        raise MaxcaInputError(
            f"{name} must have shape (B, C, *S) with 2 or 3 spatial axes (a 4-D or 5-D tensor), "
            f"got {x.dim()}-D shape {shape_str(x.shape)}"
        )
    return x.dim() - 2


def check_spatial_tensor(x: object, name: str, spatial_dims: int, floating: bool = True) -> None:
    """``x`` must be a ``(B, C, *S)`` tensor with ``spatial_dims`` spatial axes."""
    x = check_tensor(x, name)
    if x.dim() != spatial_dims + 2:
        raise MaxcaInputError(
            f"{name} must have shape (B, C, *S) with {spatial_dims} spatial axes "
            f"({spatial_dims + 2}-D), got shape {shape_str(x.shape)}"
        )
    if floating:
        check_floating(x, name)


def check_same_shape(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str) -> None:
    """``a`` and ``b`` must have identical shapes."""
    if a.shape != b.shape:
        raise MaxcaInputError(
            f"{a_name} and {b_name} must have the same shape, got {shape_str(a.shape)} "
            f"and {shape_str(b.shape)}"
        )


def check_flow(
    x: object, name: str = "flow", spatial_dims: int | None = None, min_size: int = 1
) -> int:
    """Check ``x`` is a floating ``(B, d, *S)`` flow, ``d`` = number of spatial axes; return d.

    Args:
        x: the candidate flow.
        name: what the message calls it.
        spatial_dims: the required ``d``; ``None`` accepts 2 or 3.
        min_size: the least number of voxels along every spatial axis.
    """
    if spatial_dims is not None:
        check_spatial_tensor(x, name, spatial_dims)
    x = check_tensor(x, name)
    if x.dim() not in (4, 5):
        raise MaxcaInputError(
            f"{name} must have shape (B, d, *S) with d = 2 or 3 spatial axes (a 4-D or 5-D "
            f"tensor), got {x.dim()}-D shape {shape_str(x.shape)}"
        )
    d = x.dim() - 2
    if x.shape[1] != d:
        raise MaxcaInputError(
            f"{name} must have {d} channels (one displacement per spatial axis) for "
            f"{d} spatial axes, got shape {shape_str(x.shape)}"
        )
    check_floating(x, name)
    if min(x.shape[2:]) < min_size:
        raise MaxcaInputError(
            f"{name} needs at least {min_size} voxels along every spatial axis, "
            f"got shape {shape_str(x.shape)}"
        )
    return d


def check_floating(x: torch.Tensor, name: str) -> None:
    """Check ``x`` has a floating-point dtype."""
    if not x.is_floating_point():
        raise MaxcaInputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_flow_matches(
    flow: object, reference: torch.Tensor, name: str = "flow", ref_name: str = "the image"
) -> None:
    """Check ``flow`` is ``(B, d, *S)`` for ``reference`` of shape ``(B, C, *S)``, same device."""
    flow = check_tensor(flow, name)
    d = reference.dim() - 2
    expected = (reference.shape[0], d, *reference.shape[2:])
    if tuple(flow.shape) != expected:
        raise MaxcaInputError(
            f"{name} must have shape {shape_str(expected)} to match {ref_name} of shape "
            f"{shape_str(reference.shape)}, got {shape_str(flow.shape)}"
        )
    check_floating(flow, name)
    check_same_device(flow, reference, name, ref_name)


def check_same_device(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str) -> None:
    """Check both tensors live on one device."""
    if a.device != b.device:
        raise MaxcaInputError(
            f"{a_name} must be on the device of {b_name} ({b.device}), got {a.device}"
        )


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise MaxcaInputError(f"{name} must be one of {options}, got {value!r}")
    return value


def as_int(value: object) -> int | None:
    """``value`` as an int if it is an integer (Python or NumPy, not a bool), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def check_int(value: object, name: str, minimum: int) -> int:
    """Return ``value`` as an int if it is an integer (not a bool) ``>= minimum``."""
    out = as_int(value)
    if out is None or out < minimum:
        raise MaxcaInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return out


def check_size(size: object, d: int, name: str = "size") -> tuple[int, ...]:
    """Return ``size`` as a tuple of ``d`` positive ints."""
    try:
        out = tuple(as_int(s) for s in size)  # type: ignore[union-attr]
    except TypeError:
        out = None
    if out is None or len(out) != d or any(s is None or s < 1 for s in out):
        raise MaxcaInputError(
            f"{name} must be a sequence of {d} positive integers (one per spatial axis), "
            f"got {size!r}"
        )
    return out  # type: ignore[return-value]


def check_device_name(name: str) -> str:
    """``name`` when it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``N`` a GPU index >= 0).

    Raises:
        MaxcaInputError: anything else (one line naming the accepted forms).
    """
    text = str(name)
    head, sep, index = text.partition(":")
    if text in DEVICES or (head == "cuda" and sep and index.isdigit() and index.isascii()):
        return text
    raise MaxcaInputError(f"device must be one of {list(DEVICES)} or 'cuda:N', got {text!r}")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device for ``device``: ``"auto"``/``None`` -> CUDA when available, else CPU.

    ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` are taken as they are; CUDA must be available and,
    for ``cuda:N``, have a GPU of index ``N``.
    """
    name = "auto" if device is None else check_device_name(str(device))
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MaxcaInputError(f"device {name!r} requested but CUDA is not available here")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise MaxcaInputError(
            f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist "
            "(indices from 0)"
        )
    return dev
