"""Scoring registrations from files (``maxca evaluate``): a single flow, or a folder of Learn2Reg
``disp_*`` files, written as per-pair CSVs and a summary.

The scores themselves come from :func:`maxca.inference.evaluate.evaluate_flow`, which calls
:func:`maxca.metrics.evaluate_pair`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from maxca.data.io import read_volume
from maxca.data.learn2reg import Learn2RegDataset, load_learn2reg
from maxca.errors import MaxcaInputError
from maxca.inference._output import OutputDir
from maxca.inference.evaluate import dataset_pairs, evaluate_flow, pair_name
from maxca.inference.export import l2r_disp_name, read_voxel_flow
from maxca.metrics import PairResult, summarize, write_pair_csv, write_summary

__all__ = ["evaluate_dataset", "evaluate_files", "write_evaluation"]


def _written_by_maxca(path: str | os.PathLike[str]) -> bool:
    """Whether a displacement file is maxca's ``flow_voxel`` (its header's marker)."""
    import nibabel as nib

    from maxca.inference.export import VOXEL_FLOW_DESCRIP

    header = nib.load(str(path)).header
    descrip = bytes(header.get("descrip", b"")).split(b"\0")[0].decode(errors="replace")
    return VOXEL_FLOW_DESCRIP in descrip


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
    strict_labels: bool = False,
) -> PairResult:
    """:func:`evaluate_flow` on files: two label maps and a voxel displacement file.

    ``flow`` is maxca's ``flow_voxel.nii.gz`` or a Learn2Reg ``disp_*.nii.gz`` on the fixed grid.
    The pair name defaults to ``FFFF_MMMM`` of a ``disp_FFFF_MMMM`` file, the folder name of a
    ``flow_voxel`` file, else the file's stem. With ``strict_labels`` (the user's own
    ``--labels`` for one pair) an id that is in neither label map is refused (a typo would
    otherwise score as a NaN Dice).
    """
    fixed = read_volume(fixed_labels, kind="label")
    moving = read_volume(moving_labels, kind="label", expected_ndim=fixed.ndim)
    if labels is not None and not len(labels):
        raise MaxcaInputError("no label id to score (--labels is empty)")
    if strict_labels and labels is not None:
        present = np.union1d(np.unique(fixed.array), np.unique(moving.array))
        missing = sorted(set(int(v) for v in labels) - set(int(v) for v in present))
        if missing:
            raise MaxcaInputError(
                f"label id(s) {', '.join(map(str, missing))} appear in neither label map "
                f"({fixed_labels}, {moving_labels})"
            )
    u, flow_affine = read_voxel_flow(flow)
    same_grid = np.allclose(flow_affine, fixed.affine, atol=1e-3)
    if _written_by_maxca(flow) and not same_grid:
        raise MaxcaInputError(
            f"{flow} was computed on another grid than the fixed label map {fixed_labels} "
            "(the affines differ): give the fixed labels of that registration"
        )
    if not same_grid and not np.allclose(flow_affine, np.eye(4), atol=1e-6):
        # Learn2Reg disp_* files carry no geometry by convention (often an identity affine) and
        # are scored as on the fixed grid; one whose header holds another grid is suspicious
        warnings.warn(
            f"{flow} has another affine than the fixed label map {fixed_labels}: scored as a "
            "displacement on the fixed grid (the Learn2Reg convention), check that it is",
            UserWarning,
            stacklevel=2,
        )
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
    if labels is not None and out:
        never = [
            int(k) for k in labels if all(not np.isfinite(r.dice.get(int(k), np.nan)) for r in out)
        ]
        if never:
            warnings.warn(
                f"label id(s) {', '.join(map(str, never))} scored in no pair (in no label map?): "
                "left out of every mean",
                UserWarning,
                stacklevel=2,
            )
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
