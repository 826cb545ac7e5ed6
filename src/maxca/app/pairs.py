"""Labelled validation pairs of a dataset, read into memory, registered by a model and scored:
the one evaluation path of the benchmarks (``benchmarks/``) and of anything that compares
methods pair by pair.

Every method is scored the same way, given as a voxel flow ``(d, *S_f)`` on the fixed grid:
:func:`score_flow` carries the moving label map onto the fixed grid (nearest, through both
affines) and calls :func:`maxca.inference.evaluate_flow` (Dice, HD95 in mm, folding %,
SDlogJ; ``docs/metrics.md``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from maxca.data import as_dataset, read_volume
from maxca.data.io import Volume
from maxca.errors import MaxcaInputError
from maxca.inference import register_pair
from maxca.inference.evaluate import dataset_pairs, evaluate_flow, pair_name
from maxca.metrics import PairResult
from maxca.models.checkpoint import CheckpointInfo
from maxca.models.preprocessing import Preprocessing

__all__ = [
    "EvalPair",
    "LoadedPair",
    "evaluate_model",
    "evaluation_labels",
    "identity_flow",
    "load_pairs",
    "pair_row",
    "score_flow",
    "synchronize",
    "validation_pairs",
]


def synchronize(device: Any) -> None:
    """Wait for queued CUDA work (so a timer measures it); nothing on the CPU."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


@dataclass(frozen=True)
class EvalPair:
    """One validation pair of image and label files (absolute paths)."""

    name: str
    fixed: Path
    moving: Path
    fixed_label: Path
    moving_label: Path


@dataclass
class LoadedPair:
    """An :class:`EvalPair` read into memory (:class:`maxca.data.Volume` objects)."""

    pair: EvalPair
    fixed: Volume
    moving: Volume
    fixed_label: Volume
    moving_label: Volume

    @property
    def name(self) -> str:
        return self.pair.name


def validation_pairs(dataset: Any, split: str = "registration_val") -> list[EvalPair]:
    """The labelled ``(fixed, moving)`` pairs of a dataset's pair list.

    Args:
        dataset: a ``dataset.json`` path or a :class:`maxca.data.Learn2RegDataset`.
        split: ``registration_val`` or ``registration_test``.

    Raises:
        maxca.errors.MaxcaInputError: no such pairs, or an image without label map.
    """
    ds = as_dataset(dataset)
    out = []
    for fixed, moving in dataset_pairs(ds, split):
        f_lab, m_lab = ds.label_for(fixed), ds.label_for(moving)
        if f_lab is None or m_lab is None:
            raise MaxcaInputError(f"{ds.root}: pair {fixed.name} <- {moving.name} has no labels")
        out.append(EvalPair(pair_name(fixed, moving), fixed, moving, f_lab, m_lab))
    return out


def evaluation_labels(dataset: Any) -> list[int] | None:
    """The dataset's ``evaluation_labels`` (``None``: every non-zero label is scored)."""
    return list(as_dataset(dataset).evaluation_labels) or None


def load_pairs(pairs: Iterable[EvalPair]) -> list[LoadedPair]:
    """Read the images and label maps of every pair (2-D or 3-D as stored)."""
    out = []
    for p in pairs:
        fixed = read_volume(p.fixed, "image")
        out.append(
            LoadedPair(
                p,
                fixed,
                read_volume(p.moving, "image", expected_ndim=fixed.ndim),
                read_volume(p.fixed_label, "label", expected_ndim=fixed.ndim),
                read_volume(p.moving_label, "label", expected_ndim=fixed.ndim),
            )
        )
    return out


def score_flow(pair: LoadedPair, flow: np.ndarray, labels: Sequence[int] | None) -> PairResult:
    """Score one registration given as a voxel flow ``(d, *S_f)`` on the fixed grid.

    The single metric path of every benchmark: :func:`maxca.inference.evaluate_flow`
    (moving labels warped with nearest neighbour through both affines; Dice, HD95 in mm,
    folding %, SDlogJ).

    Returns:
        a :class:`maxca.metrics.PairResult`.
    """
    return evaluate_flow(pair.fixed_label, pair.moving_label, flow, labels=labels, name=pair.name)


def identity_flow(pair: LoadedPair) -> np.ndarray:
    """The zero displacement of the fixed grid: affine pre-alignment only."""
    return np.zeros((pair.fixed.ndim, *pair.fixed.shape), dtype=np.float32)


def pair_row(result: PairResult, seconds: float | None = None) -> dict[str, Any]:
    """The per-pair scalars of a :class:`~maxca.metrics.PairResult` as a CSV row."""
    s = result.scalars()
    return {
        "pair": result.name,
        "dice": s["dice_mean"],
        "hd95": s["hd95_mean"],
        "njd_percent": s["njd_percent"],
        "sdlogj": s["sdlogj"],
        "seconds": seconds if seconds is not None else math.nan,
    }


def evaluate_model(
    model: nn.Module,
    info: CheckpointInfo | Preprocessing | None,
    pairs: Sequence[LoadedPair],
    labels: Sequence[int] | None,
    device: str = "cpu",
    refine_steps: int = 0,
    warmup: bool = True,
) -> list[dict[str, Any]]:
    """Register every pair with a model through :func:`maxca.inference.register_pair` and
    score it with :func:`score_flow`.

    ``seconds`` of a row is the wall time of ``register_pair`` (normalise and resample both
    images onto the model grid, the network, the optional refinement, the flow brought back
    onto the fixed grid and the moving image and labels warped); ``network_s`` the network's
    own share (from the pipeline's timings, not synchronised on CUDA). With ``warmup`` the first
    pair is registered once before the timed runs (first-call overheads).
    """
    rows = []
    if warmup and pairs:
        p = pairs[0]
        register_pair(model, info, p.fixed, p.moving, device=device, refine_steps=refine_steps)
    for p in pairs:
        synchronize(device)
        t0 = time.perf_counter()
        result = register_pair(
            model,
            info,
            p.fixed,
            p.moving,
            p.moving_label,
            p.fixed_label,
            device=device,
            refine_steps=refine_steps,
        )
        synchronize(device)
        seconds = time.perf_counter() - t0
        row = pair_row(score_flow(p, result.flow, labels), seconds)
        row["network_s"] = result.timings.get("network", math.nan)
        rows.append(row)
    return rows
