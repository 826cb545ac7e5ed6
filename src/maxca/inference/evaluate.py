"""Scoring a registration given as a voxel flow, and the pair names of a Learn2Reg dataset.

A voxel displacement ``u`` of the fixed grid (maxca's ``flow_voxel.nii.gz`` or a Learn2Reg
``disp_FFFF_MMMM.nii.gz``) carries the moving label map onto the fixed grid with nearest
neighbour, never linear interpolation: fixed voxel ``p`` takes the moving label at the world point
``A_f (p + u(p))`` (which is moving voxel ``p + u(p)`` when both share a grid, the Learn2Reg
case). Metrics come from :func:`maxca.metrics.evaluate_pair`; ``l2r_compat`` switches to the
Learn2Reg evaluation script's definitions and its own label warping. Scoring files and folders
(``maxca evaluate``) is :mod:`maxca.app.evaluation`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maxca.data.io import Volume, check_same_grid
from maxca.data.learn2reg import Learn2RegDataset
from maxca.errors import MaxcaInputError
from maxca.inference.export import l2r_case_id
from maxca.inference.register import warp_volume
from maxca.metrics import PairResult, evaluate_pair, l2r_warp_labels

__all__ = ["PAIR_LISTS", "dataset_pairs", "evaluate_flow", "pair_name"]

PAIR_LISTS = ("registration_val", "registration_test")


def pair_name(fixed: str | os.PathLike[str], moving: str | os.PathLike[str]) -> str:
    """``FFFF_MMMM`` from the Learn2Reg case ids of the two image paths."""
    return f"{l2r_case_id(fixed)}_{l2r_case_id(moving)}"


def dataset_pairs(dataset: Learn2RegDataset, pairs: str) -> list[tuple[Path, Path]]:
    """The ``(fixed, moving)`` image paths of ``dataset``'s pair list ``pairs``."""
    if pairs not in PAIR_LISTS:
        raise MaxcaInputError(f"pairs must be one of {list(PAIR_LISTS)}, got {pairs!r}")
    items = list(getattr(dataset, pairs))
    if not items:
        raise MaxcaInputError(f"dataset {dataset.root} has no '{pairs}' pairs")
    names = [pair_name(f, m) for f, m in items]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise MaxcaInputError(f"'{pairs}' has pairs with the same case ids: {duplicates}")
    return items


def evaluate_flow(
    fixed_labels: Volume,
    moving_labels: Volume,
    flow: np.ndarray,
    labels: Sequence[int] | None = None,
    landmarks: tuple[Any, Any] | None = None,
    l2r_compat: bool = False,
    name: str = "",
    mask: np.ndarray | None = None,
) -> PairResult:
    """Score one registration given as a voxel flow on the fixed grid.

    Args:
        fixed_labels: fixed label map (its grid is the flow's grid).
        moving_labels: moving label map (any grid; the same grid as the fixed one for
            ``l2r_compat``).
        flow: ``(d, *S_f)`` voxel displacement of the fixed grid.
        labels: label ids to score (``None``: every non-zero label present).
        landmarks: optional ``(fixed, moving)`` landmark CSV paths or ``(N, d)`` voxel arrays.
        l2r_compat: Learn2Reg script definitions and label warping.
        name: pair identifier for the CSV.
        mask: optional fixed-grid mask for the Jacobian metrics.

    Returns:
        the :class:`~maxca.metrics.PairResult`.
    """
    d = fixed_labels.ndim
    u = np.asarray(flow, dtype=np.float32)
    if u.shape != (d, *fixed_labels.shape):
        raise MaxcaInputError(
            f"displacement shape {tuple(u.shape[1:])} differs from the fixed label grid "
            f"{fixed_labels.shape} (expected ({d}, {', '.join(map(str, fixed_labels.shape))}))"
        )
    same_grid = moving_labels.shape == fixed_labels.shape
    if same_grid:
        try:
            check_same_grid(fixed_labels, moving_labels, "")
        except MaxcaInputError:
            same_grid = False
    if l2r_compat:
        if moving_labels.shape != fixed_labels.shape:
            raise MaxcaInputError(
                f"--l2r-compat needs fixed and moving label maps on one grid, got "
                f"{fixed_labels.shape} and {moving_labels.shape}"
            )
        warped = l2r_warp_labels(moving_labels.array, u)
        moving_on_fixed = moving_labels.array
    else:
        flow_t = torch.from_numpy(u)[None]
        warped = warp_volume(moving_labels, flow_t, fixed_labels.affine, "label")[0, 0].numpy()
        moving_on_fixed = moving_labels.array if same_grid else None
    return evaluate_pair(
        fixed_labels.array,
        warped,
        u,
        spacing=fixed_labels.spacing,
        labels=labels,
        mask=mask,
        landmarks=landmarks,
        l2r_compat=l2r_compat,
        moving_label=moving_on_fixed,
        name=name,
    )
