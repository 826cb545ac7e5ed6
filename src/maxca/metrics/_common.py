"""Input checks and small helpers shared by the metric modules (numpy arrays in and out).

Every public metric accepts numpy arrays, torch tensors or anything ``np.asarray`` takes. Spatial
arrays are in file voxel order ``(*S)``; flows are ``(d, *S)`` voxel displacements with channel
``k`` along spatial axis ``k`` (see ``docs/conventions.md``).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maxca import _atomic
from maxca._checks import dims_str as shape_str
from maxca.errors import MaxcaInputError

ArrayLike = Any  # numpy array, torch tensor, or nested sequence


def as_numpy(x: ArrayLike, name: str) -> np.ndarray:
    """Return ``x`` as a numpy array; torch tensors are detached and moved to the CPU."""
    if x is None:
        raise MaxcaInputError(f"{name} must be an array, got None")
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise MaxcaInputError(f"{name} must be array-like, got {type(x).__name__}") from exc


def as_flow(flow: ArrayLike, name: str = "flow") -> np.ndarray:
    """Check and return a float64 flow ``(d, *S)`` with ``d`` in (2, 3) and ``d == len(S)``.

    A leading batch axis of size 1, ``(1, d, *S)`` as models return it, is dropped.
    """
    arr = as_numpy(flow, name)
    if arr.ndim in (4, 5) and arr.shape[0] == 1 and arr.shape[1] == arr.ndim - 2:
        arr = arr[0]
    if arr.ndim not in (3, 4) or arr.shape[0] != arr.ndim - 1:
        raise MaxcaInputError(
            f"{name} must have shape (d, *S) with d = 2 or 3 spatial axes and d channels "
            f"(or (1, d, *S)), got shape {shape_str(arr.shape)}"
        )
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise MaxcaInputError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if min(arr.shape[1:]) < 1:
        raise MaxcaInputError(f"{name} must not be empty, got shape {shape_str(arr.shape)}")
    return arr.astype(np.float64, copy=False)


def as_label_map(x: ArrayLike, name: str, shape: Sequence[int] | None = None) -> np.ndarray:
    """Check and return a 2-D or 3-D label map ``(*S)``; with ``shape``, it must equal it."""
    arr = as_numpy(x, name)
    if shape is not None:
        if tuple(arr.shape) != tuple(shape):
            raise MaxcaInputError(
                f"{name} must have shape {shape_str(shape)}, got {shape_str(arr.shape)}"
            )
    elif arr.ndim not in (2, 3):
        raise MaxcaInputError(
            f"{name} must be a 2-D or 3-D label map, got shape {shape_str(arr.shape)}"
        )
    return arr


def as_mask(mask: ArrayLike | None, shape: Sequence[int], name: str = "mask") -> np.ndarray | None:
    """Return ``mask`` (non-zero = inside) as a boolean ``(*S)`` array, or ``None``."""
    if mask is None:
        return None
    arr = as_numpy(mask, name)
    if tuple(arr.shape) != tuple(shape):
        raise MaxcaInputError(
            f"{name} must have shape {shape_str(shape)}, got {shape_str(arr.shape)}"
        )
    out = arr != 0
    if not out.any():
        raise MaxcaInputError(f"{name} must select at least one voxel, got an all-zero mask")
    return out


def as_spacing(spacing: ArrayLike, ndim: int, name: str = "spacing") -> np.ndarray:
    """Return ``spacing`` as ``ndim`` positive finite floats (mm per voxel along each axis)."""
    arr = as_numpy(spacing, name).astype(np.float64, copy=False).reshape(-1)
    if arr.size != ndim:
        raise MaxcaInputError(
            f"{name} must have {ndim} values (one per spatial axis), got {arr.size}"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise MaxcaInputError(f"{name} must be positive and finite, got {arr.tolist()}")
    return arr


def as_labels(labels: Sequence[int] | None, *maps: np.ndarray) -> list[int]:
    """Return ``labels`` as ints; ``None`` means every non-zero label present in any of ``maps``."""
    if labels is None:
        found: set[int] = set()
        for m in maps:
            found.update(int(v) for v in np.unique(m) if v != 0)
        return sorted(found)
    out = []
    for lab in np.asarray(labels).reshape(-1).tolist():
        if not float(lab).is_integer():
            raise MaxcaInputError(f"labels must be integers, got {lab!r}")
        out.append(int(lab))
    if len(set(out)) != len(out):
        raise MaxcaInputError(f"labels must be distinct, got {out}")
    return out


def finite_or_none(x: float) -> float | None:
    """``x`` as a float, or ``None`` when it is NaN or infinite (for strict JSON)."""
    x = float(x)
    return x if math.isfinite(x) else None


def atomic_path(path: str | os.PathLike[str]) -> contextlib.AbstractContextManager[Path]:
    """:func:`maxca._atomic.atomic_path` for result files: the output folder must exist."""
    return _atomic.atomic_path(path, suffix=Path(path).suffix, make_parents=False)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; the output folder must exist."""
    _atomic.atomic_write_text(path, text, make_parents=False)
