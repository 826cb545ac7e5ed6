"""Scoring registrations from files: a single flow, or a folder of Learn2Reg ``disp_*`` files.

A voxel displacement ``u`` of the fixed grid (maxca's ``flow_voxel.nii.gz`` or a Learn2Reg
``disp_FFFF_MMMM.nii.gz``) carries the moving label map onto the fixed grid with nearest
neighbour, never linear interpolation: fixed voxel ``p`` takes the moving label at the world point
``A_f (p + u(p))`` (which is moving voxel ``p + u(p)`` when both share a grid, the Learn2Reg
case). Metrics come from :func:`maxca.metrics.evaluate_pair`; ``l2r_compat`` switches to the
Learn2Reg evaluation script's definitions and its own label warping.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maxca.data.io import Volume, check_same_grid, read_volume
from maxca.data.learn2reg import Learn2RegDataset, load_learn2reg
from maxca.errors import MaxcaInputError
from maxca.inference._output import OutputDir
from maxca.inference.export import l2r_case_id, l2r_disp_name, read_voxel_flow
from maxca.inference.register import warp_volume
from maxca.metrics import (
    PairResult,
    evaluate_pair,
    l2r_warp_labels,
    summarize,
    write_pair_csv,
    write_summary,
)

__all__ = [
    "PAIR_LISTS",
    "dataset_pairs",
    "evaluate_dataset",
    "evaluate_flow",
    "evaluate_files",
    "pair_name",
    "write_evaluation",
]

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


def _default_name(flow_path: Path) -> str:
    stem = flow_path.name
    for ext in (".nii.gz", ".nii"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
    if stem.startswith("disp_"):
        return stem[len("disp_") :]
    if stem == "flow_voxel":
        return flow_path.resolve().parent.name
    return stem


def evaluate_files(
    fixed_labels: str | os.PathLike[str],
    moving_labels: str | os.PathLike[str],
    flow: str | os.PathLike[str],
    labels: Sequence[int] | None = None,
    landmarks: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
    l2r_compat: bool = False,
    name: str | None = None,
) -> PairResult:
    """:func:`evaluate_flow` on files: two label maps and a voxel displacement file.

    ``flow`` is maxca's ``flow_voxel.nii.gz`` or a Learn2Reg ``disp_*.nii.gz`` on the fixed grid.
    The pair name defaults to ``FFFF_MMMM`` of a ``disp_FFFF_MMMM`` file, the folder name of a
    ``flow_voxel`` file, else the file's stem.
    """
    fixed = read_volume(fixed_labels, kind="label")
    moving = read_volume(moving_labels, kind="label", expected_ndim=fixed.ndim)
    u, _ = read_voxel_flow(flow)
    if u.shape[0] != fixed.ndim:
        raise MaxcaInputError(
            f"{flow}: a {u.shape[0]}-D displacement for {fixed.ndim}-D label maps"
        )
    return evaluate_flow(
        fixed,
        moving,
        u,
        labels=labels,
        landmarks=landmarks,
        l2r_compat=l2r_compat,
        name=name if name is not None else _default_name(Path(flow)),
    )


def evaluate_dataset(
    results: str | os.PathLike[str],
    dataset: Learn2RegDataset | str | os.PathLike[str],
    pairs: str = "registration_val",
    labels: Sequence[int] | None = None,
    l2r_compat: bool = False,
    on_pair: Callable[[int, int, PairResult], None] | None = None,
) -> list[PairResult]:
    """Score every pair of a dataset's pair list from ``disp_FFFF_MMMM.nii.gz`` files.

    Args:
        results: folder holding one ``disp_FFFF_MMMM.nii.gz`` per pair (Learn2Reg layout, as
            ``maxca register --dataset`` writes it).
        dataset: a :class:`~maxca.data.learn2reg.Learn2RegDataset` or its ``dataset.json``.
        pairs: ``"registration_val"`` or ``"registration_test"``.
        labels: label ids (default: the dataset's ``evaluation_labels``, else all non-zero).
        l2r_compat: Learn2Reg script definitions.
        on_pair: called as ``on_pair(index, total, result)`` after each pair.

    Raises:
        MaxcaInputError: a missing folder or ``disp`` file (all missing ones are named before
            anything is computed), an image without label map.
    """
    ds = dataset if isinstance(dataset, Learn2RegDataset) else load_learn2reg(dataset)
    folder = Path(results)
    if not folder.is_dir():
        raise MaxcaInputError(f"results directory not found: {folder}")
    items = dataset_pairs(ds, pairs)
    jobs = []
    missing = []
    for fixed, moving in items:
        disp = folder / l2r_disp_name(fixed, moving)
        if not disp.is_file():
            missing.append(disp.name)
        f_lab, m_lab = ds.label_for(fixed), ds.label_for(moving)
        for image, lab in ((fixed, f_lab), (moving, m_lab)):
            if lab is None:
                raise MaxcaInputError(f"no label map for {image} in {ds.root}")
        jobs.append((pair_name(fixed, moving), disp, f_lab, m_lab))
    if missing:
        raise MaxcaInputError(
            f"{folder}: missing {len(missing)} displacement file(s): {', '.join(missing[:4])}"
            + (" ..." if len(missing) > 4 else "")
        )
    if labels is None and ds.evaluation_labels:
        labels = ds.evaluation_labels
    out = []
    for i, (name, disp, f_lab, m_lab) in enumerate(jobs):
        result = evaluate_files(f_lab, m_lab, disp, labels, None, l2r_compat, name)
        out.append(result)
        if on_pair is not None:
            on_pair(i, len(jobs), result)
    return out


def write_evaluation(
    results: Sequence[PairResult], out: str | os.PathLike[str], overwrite: bool = False
) -> Path:
    """Write ``pairs/<name>.csv`` per pair, ``summary.json`` and ``summary.md`` into ``out``.

    The folder appears complete or not at all (see :class:`~maxca.inference._output.OutputDir`);
    an existing non-empty folder is refused unless ``overwrite``.
    """
    summary = summarize(results)
    names = [r.name or f"pair{i:03d}" for i, r in enumerate(results)]
    if len(set(names)) != len(names):
        raise MaxcaInputError(f"pair names must be distinct, got {names}")
    stale = ("pairs/*.csv", "summary.json", "summary.md")
    with OutputDir(out, overwrite, stale=stale) as tmp:
        (tmp / "pairs").mkdir()
        for name, result in zip(names, results):
            write_pair_csv(result, tmp / "pairs" / f"{name}.csv")
        write_summary(summary, tmp / "summary.json", tmp / "summary.md")
    return Path(os.path.abspath(out))
