"""How much memory a registration needs, estimated before anything is allocated.

``maxca register`` reads only the image headers (:func:`header_shape`), estimates the peak
resident memory of the whole registration (:func:`estimate_memory`) and refuses with the estimate
and a way out when it exceeds the budget (:func:`check_memory`): ``--max-memory GB`` or the
memory available now (:func:`available_memory`, from ``/proc/meminfo`` and the cgroup limit).

The formula is linear in the voxel counts, with constants measured on a 2-core Xeon VM
(torch 2.13.0 CPU, 2026-11-30) from the peak resident set size (``ru_maxrss``) minus the
resident size before the registration, and rounded up:

* images (read, normalise, flow, sampling grid, warped image, metrics, writing): measured 140
  bytes per fixed voxel without labels, 210 with fixed and moving label maps (1 mm pair,
  160x192x224, both images on the same grid, with a network on a 32^3 grid); used: 120 per
  fixed voxel and 40 per moving voxel, plus 55 and 25 with label maps (160 and 240 for that
  pair);
* network (no gradients) on the model grid: measured 900-1060 bytes per grid voxel for
  ``pyramid_small``, 1900-2800 for ``pyramid``, 1900-3000 for ``unet``, 750-1130 for
  ``hybrid`` (grids 48x56x64 and 80x96x112); used: 100 MiB plus 48 bytes per grid voxel per
  channel of width, the width being the sum over the config's ``*channels`` entries of their
  largest value (24 for ``pyramid_small``: 1152 bytes per voxel; 48 for ``pyramid``, 80 for
  ``unet``, 128 for ``hybrid``); ``--refine`` adds 400 bytes per grid voxel (gradients);
* 400 MiB for the interpreter, torch and the weights (measured 345 MiB).

The estimate is 10-50 % above what was measured: for the 1 mm pair with ``pyramid_small`` on
an 80x96x112 grid about 3.0 GB (measured peak 2.4-2.5 GB). For a 512^3 pair it is about 31 GB,
which is why such a registration is refused on a 24 GB machine instead of failing after a
minute with an allocation error.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maxca.errors import MaxcaInputError

__all__ = [
    "available_memory",
    "check_memory",
    "estimate_memory",
    "header_shape",
    "model_width",
]

GIB = 2**30
BASE_BYTES = 400 * 2**20
FIXED_BYTES_PER_VOXEL = 120
FIXED_LABEL_BYTES_PER_VOXEL = 55
MOVING_BYTES_PER_VOXEL = 40
MOVING_LABEL_BYTES_PER_VOXEL = 25
NETWORK_BASE_BYTES = 100 * 2**20
NETWORK_BYTES_PER_VOXEL_PER_CHANNEL = 48
REFINE_BYTES_PER_VOXEL = 400
DEFAULT_WIDTH = 24


def model_width(model: Any) -> int:
    """Sum over the model config's ``*channels`` entries of their largest value.

    A stand-in for the activation width at full resolution (``pyramid_small``: 8 + 16 = 24).
    Models without such a config count as :data:`DEFAULT_WIDTH`.
    """
    config = getattr(model, "config", None)
    if config is None:
        return DEFAULT_WIDTH
    values = vars(config) if hasattr(config, "__dict__") else {}
    total = 0
    for key, value in values.items():
        if not key.endswith("channels") or key == "in_channels":
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            total += value
        elif isinstance(value, (tuple, list)) and value:
            total += max(int(v) for v in value)
    return total or DEFAULT_WIDTH


def estimate_memory(
    model: Any,
    fixed_shape: Sequence[int],
    moving_shape: Sequence[int],
    grid_shape: Sequence[int],
    labels: bool = True,
    refine: bool = False,
) -> int:
    """Conservative peak memory of one registration in bytes (see the module docstring).

    Args:
        model: the network (its ``config`` gives the width).
        fixed_shape, moving_shape: spatial shapes of the fixed and moving images.
        grid_shape: spatial shape of the model grid.
        labels: label maps are warped and scored.
        refine: instance optimisation runs (``--refine``).
    """
    n_fixed = math.prod(int(s) for s in fixed_shape)
    n_moving = math.prod(int(s) for s in moving_shape)
    n_grid = math.prod(int(s) for s in grid_shape)
    per_fixed = FIXED_BYTES_PER_VOXEL + (FIXED_LABEL_BYTES_PER_VOXEL if labels else 0)
    per_moving = MOVING_BYTES_PER_VOXEL + (MOVING_LABEL_BYTES_PER_VOXEL if labels else 0)
    per_grid = NETWORK_BYTES_PER_VOXEL_PER_CHANNEL * model_width(model)
    if refine:
        per_grid += REFINE_BYTES_PER_VOXEL
    images = per_fixed * n_fixed + per_moving * n_moving
    return BASE_BYTES + NETWORK_BASE_BYTES + images + per_grid * n_grid


def _cgroup_free() -> int | None:
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            return max(int(limit) - usage, 0)
    return None


def available_memory() -> int | None:
    """Bytes that can be allocated now without swapping, or ``None`` when unknown.

    ``MemAvailable`` of ``/proc/meminfo`` (Linux), bounded by the cgroup (container) limit;
    elsewhere the free physical pages (``os.sysconf``), if the platform reports them.
    """
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        available = None
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            available = None
    cgroup = _cgroup_free()
    if cgroup is not None:
        available = cgroup if available is None else min(available, cgroup)
    return available


def header_shape(path: str | os.PathLike[str]) -> tuple[int, ...] | None:
    """The spatial shape an image file declares in its header, without reading its data.

    Trailing singleton axes are dropped. ``None`` when the header cannot be read (the full read
    then reports the problem).
    """
    name = str(path).lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            shape = tuple(int(s) for s in nib.load(str(path)).shape)
        else:
            import SimpleITK as sitk  # noqa: N813

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            shape = tuple(int(s) for s in reader.GetSize())
    except Exception:  # noqa: BLE001 (any unreadable header: the real read reports it)
        return None
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape[:3]


def check_memory(estimate: int, max_memory_gb: float | None, what: str) -> None:
    """Refuse a registration whose estimated peak memory exceeds the budget.

    Args:
        estimate: bytes, from :func:`estimate_memory`.
        max_memory_gb: the budget in GB (``--max-memory``); ``None`` = :func:`available_memory`
            (no check when that is unknown).
        what: the inputs, for the message (e.g. ``"fixed 512x512x512, model grid 80x96x112"``).

    Raises:
        MaxcaInputError: the estimate does not fit, with the estimate and the ways out.
    """
    if max_memory_gb is not None:
        budget, source = float(max_memory_gb) * GIB, f"--max-memory {max_memory_gb:g} GB"
    else:
        free = available_memory()
        if free is None:
            return
        budget, source = float(free), f"{free / GIB:.1f} GB available"
    if estimate <= budget:
        return
    raise MaxcaInputError(
        f"this registration needs about {estimate / GIB:.1f} GB of memory ({what}) but "
        f"{source}: resample the images to a coarser grid (e.g. 2 mm) or free memory, or give "
        "--max-memory GB to allow more (e.g. with swap)"
    )
