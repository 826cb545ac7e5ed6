"""From files to a results folder: what ``maxca register`` and ``maxca show`` run.

One pair (:func:`register_files`) writes into ``DIR``::

    warped.nii.gz          moving image warped onto the fixed grid (fixed header/affine)
    warped_labels.nii.gz   moving label map warped with nearest neighbour (with moving labels)
    flow_voxel.nii.gz      voxel displacement of the fixed grid, NIfTI vector (X, Y, Z, 1, d)
    disp_itk.nii.gz        ITK/ANTs displacement field, LPS mm, on the fixed grid
    affine.mat             with affine pre-alignment: the ITK affine (fixed -> moving points)
    disp_deformable_itk.nii.gz  with pre-alignment: the deformable part alone, so that
                           ``-t affine.mat -t disp_deformable_itk.nii.gz`` == ``-t disp_itk.nii.gz``
    metrics.json           Dice before/after, folding, SDlogJ (with fixed + moving labels)
    figure.png             overview figure (with png=True)
    registration.json      inputs, model, model grid, device, timings (used by maxca show)

A dataset (:func:`register_dataset`) writes one such subfolder ``FFFF_MMMM/`` per pair plus
``disp_FFFF_MMMM.nii.gz`` at the top level (the Learn2Reg submission layout) and, when the
dataset has label maps, ``summary.json``/``summary.md`` over the pairs.

Inputs are all read and checked before anything is written, results go to a temporary sibling
folder that replaces ``DIR`` only when complete (:class:`~maxca.inference._output.OutputDir`).
Scores come from :func:`maxca.metrics.evaluate_pair`, the one scoring path of maxca.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from maxca._version import __version__
from maxca.data.io import Volume, read_volume, write_volume
from maxca.data.learn2reg import Learn2RegDataset, load_learn2reg
from maxca.errors import MaxcaInputError
from maxca.inference._output import OutputDir, atomic_file, check_output_dir
from maxca.inference.affine import affine_register, prealign, with_affine, write_itk_affine
from maxca.inference.evaluate import dataset_pairs, pair_name
from maxca.inference.export import (
    l2r_disp_name,
    read_voxel_flow,
    write_itk_displacement,
    write_l2r_displacement,
    write_voxel_flow,
)
from maxca.inference.register import RegistrationResult, register_pair, resolve_device, warp_volume
from maxca.metrics import PairResult, dice, evaluate_pair, summarize, write_summary
from maxca.models.checkpoint import CheckpointInfo, load_checkpoint
from maxca.models.preprocessing import Preprocessing
from maxca.pretrained import resolve_model

__all__ = [
    "RESULT_FILES",
    "PairReport",
    "load_model",
    "pair_metrics",
    "register_dataset",
    "register_files",
    "show_results",
    "write_result",
]

RESULT_FILES = (
    "warped.nii.gz",
    "warped_labels.nii.gz",
    "flow_voxel.nii.gz",
    "disp_itk.nii.gz",
    "metrics.json",
    "figure.png",
    "registration.json",
    "affine.mat",
    "disp_deformable_itk.nii.gz",
    "summary.json",
    "summary.md",
)


@dataclass
class PairReport:
    """What a registration wrote and measured (for printing).

    Attributes:
        name: pair identifier.
        out_dir: the pair's folder (final location).
        files: names of the files written for the pair.
        metrics: the content of ``metrics.json`` (``{}`` without label maps).
        max_displacement: largest displacement length in fixed voxels.
        runtime_s: seconds from reading the inputs to the last write.
        timings: seconds per stage of the registration itself.
        grid_shape, grid_spacing: the model grid.
        device: where the network ran.
    """

    name: str
    out_dir: Path
    files: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)
    max_displacement: float = 0.0
    runtime_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    grid_shape: tuple[int, ...] = ()
    grid_spacing: tuple[float, ...] = ()
    device: str = "cpu"

    @classmethod
    def of(
        cls,
        result: RegistrationResult,
        name: str,
        out_dir: Path,
        files: list[str],
        metrics: dict[str, Any],
        runtime_s: float,
    ) -> PairReport:
        """The report of one registration ``result`` written to ``out_dir``."""
        return cls(
            name=name,
            out_dir=out_dir,
            files=files,
            metrics=metrics,
            max_displacement=_max_displacement(result.flow),
            runtime_s=runtime_s,
            timings=result.timings,
            grid_shape=result.grid.shape,
            grid_spacing=result.grid.spacing,
            device=result.device,
        )


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, CheckpointInfo]:
    """Load a checkpoint (run folder, checkpoint folder, ``.safetensors``, or the name of a
    packaged model, see :mod:`maxca.pretrained`) onto ``device``.

    Returns:
        ``(model, info)`` from :func:`maxca.models.checkpoint.load_checkpoint`, model in eval
        mode.
    """
    dev = resolve_device(device)
    path, _ = resolve_model(path)  # a packaged model's name (``brain``) or a path
    model, info = load_checkpoint(path, map_location=dev)
    model.eval()
    return model, info


def _clean(value: float) -> float | None:
    return float(value) if math.isfinite(float(value)) else None


def pair_metrics(result: RegistrationResult, labels: Sequence[int] | None = None) -> dict[str, Any]:
    """Metrics of a registration with fixed and moving label maps (``metrics.json``).

    See :func:`_score`, which also returns the :class:`~maxca.metrics.PairResult`.
    """
    return _score(result, labels)[0]


def _score(
    result: RegistrationResult, labels: Sequence[int] | None = None, name: str = ""
) -> tuple[dict[str, Any], PairResult | None]:
    """Metrics of a registration with fixed and moving label maps (``metrics.json``).

    Dice before is between the fixed labels and the moving labels resampled onto the fixed grid
    by the identity (nearest); Dice after uses the warped labels. Dice after, the folding
    percentage (``det J <= 0``) and SDlogJ of the flow on the fixed grid come from
    :func:`maxca.metrics.evaluate_pair` (``with_hd95=False``): HD95 is left to ``maxca evaluate``
    (it costs far more than the registration at 1 mm).

    Args:
        result: a registration with ``fixed_labels`` and ``warped_labels``.
        labels: label ids to score (default: every non-zero id of the fixed or moving map).
        name: pair identifier stored in the returned :class:`~maxca.metrics.PairResult`.

    Returns:
        ``(metrics, pair_result)``: a JSON-ready dict (NaN written as ``None``) and the
        :class:`~maxca.metrics.PairResult` (HD95 ``NaN``); ``({}, None)`` without both label
        maps.
    """
    if result.fixed_labels is None or result.warped_labels is None:
        return {}, None
    fixed = result.fixed_labels.array
    if labels is None:
        present = set(np.unique(fixed).tolist())
        if result.moving_labels is not None:
            present |= set(np.unique(result.moving_labels.array).tolist())
        labels = sorted(int(v) for v in present if v != 0)
    labels = [int(v) for v in labels]
    before = dice(fixed, result.moving_on_fixed_grid("label"), labels)
    scores = evaluate_pair(
        fixed,
        result.warped_labels.array,
        result.flow,
        spacing=result.fixed.spacing,
        labels=labels,
        name=name,
        with_hd95=False,
    )
    after = scores.dice
    mean_before = [v for v in before.values() if not math.isnan(v)]
    metrics = {
        "labels": labels,
        "dice_before": _clean(np.mean(mean_before)) if mean_before else None,
        "dice_after": _clean(scores.dice_mean),
        "njd_percent": _clean(scores.njd_percent),
        "sdlogj": _clean(scores.sdlogj),
        "per_label": {
            str(lab): {"dice_before": _clean(before[lab]), "dice_after": _clean(after[lab])}
            for lab in labels
        },
    }
    return metrics, scores


def _inputs_record(paths: dict[str, Path | None]) -> dict[str, str | None]:
    return {k: (str(Path(v).resolve()) if v is not None else None) for k, v in paths.items()}


def write_result(
    result: RegistrationResult,
    folder: str | os.PathLike[str],
    metrics: dict[str, Any] | None = None,
    png: bool = False,
    record: dict[str, Any] | None = None,
) -> list[str]:
    """Write a registration's files into ``folder`` (each file atomically).

    Args:
        result: from :func:`~maxca.inference.register.register_pair`.
        folder: target folder (created if needed).
        metrics: written as ``metrics.json`` when non-empty.
        png: also draw ``figure.png``.
        record: extra entries for ``registration.json``.

    Returns:
        the names of the written files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fixed = result.fixed
    written = []
    write_volume(folder / "warped.nii.gz", result.warped.array, fixed.affine, like=fixed)
    written.append("warped.nii.gz")
    if result.warped_labels is not None:
        write_volume(
            folder / "warped_labels.nii.gz",
            result.warped_labels.array,
            fixed.affine,
            like=fixed,
            dtype=result.warped_labels.array.dtype,
        )
        written.append("warped_labels.nii.gz")
    write_voxel_flow(folder / "flow_voxel.nii.gz", result.flow, fixed)
    written.append("flow_voxel.nii.gz")
    write_itk_displacement(folder / "disp_itk.nii.gz", result.flow, fixed.affine)
    written.append("disp_itk.nii.gz")
    if result.affine is not None:  # pre-aligned: the chain affine + deformable field too
        with atomic_file(folder / "affine.mat", ".mat") as tmp:
            write_itk_affine(tmp, result.affine, fixed.ndim)
        written.append("affine.mat")
        if result.deformable_flow is not None:
            name = "disp_deformable_itk.nii.gz"
            write_itk_displacement(folder / name, result.deformable_flow, fixed.affine)
            written.append(name)
    if metrics:
        _write_json(folder / "metrics.json", metrics)
        written.append("metrics.json")
    if png:
        _figure(result, folder / "figure.png")
        written.append("figure.png")
    info = {
        "maxca_version": __version__,
        "grid": {"shape": list(result.grid.shape), "spacing": list(result.grid.spacing)},
        "device": result.device,
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "max_displacement_voxel": _max_displacement(result.flow),
        **(record or {}),
    }
    _write_json(folder / "registration.json", info)
    written.append("registration.json")
    return written


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_file(path, ".json") as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _max_displacement(flow: np.ndarray) -> float:
    return float(np.sqrt((flow.astype(np.float64) ** 2).sum(axis=0)).max()) if flow.size else 0.0


def _figure(result: RegistrationResult, path: Path) -> None:
    from maxca.viz.figures import registration_figure

    moving_labels = None
    if result.moving_labels is not None:
        moving_labels = result.moving_on_fixed_grid("label")
    registration_figure(
        result.fixed.array,
        result.moving_on_fixed_grid("image"),
        result.warped.array,
        result.flow,
        path,
        fixed_label=None if result.fixed_labels is None else result.fixed_labels.array,
        warped_label=None if result.warped_labels is None else result.warped_labels.array,
        moving_label=moving_labels,
        spacing=result.fixed.spacing,
    )


def _read_inputs(
    fixed: str | os.PathLike[str],
    moving: str | os.PathLike[str],
    fixed_labels: str | os.PathLike[str] | None,
    moving_labels: str | os.PathLike[str] | None,
    ndim: int | None,
) -> tuple[Volume, Volume, Volume | None, Volume | None]:
    f = read_volume(fixed, "image", expected_ndim=ndim)
    m = read_volume(moving, "image", expected_ndim=f.ndim)
    fl = None if fixed_labels is None else read_volume(fixed_labels, "label", expected_ndim=f.ndim)
    ml = (
        None if moving_labels is None else read_volume(moving_labels, "label", expected_ndim=f.ndim)
    )
    return f, m, fl, ml


def _model_ndim(model: nn.Module, info: CheckpointInfo | None) -> int | None:
    dims = getattr(model, "spatial_dims", None)
    if dims is None:
        dims = Preprocessing.of(info).spatial_dims
    return None if dims is None else int(dims)


def _register(
    model: nn.Module,
    info: CheckpointInfo | None,
    f: Volume,
    m: Volume,
    ml: Volume | None,
    fl: Volume | None,
    device: str | torch.device,
    diffeomorphic: bool | None,
    refine_steps: int,
    affine: bool,
) -> RegistrationResult:
    """:func:`register_pair`, after an affine pre-alignment of ``m`` (and ``ml``) to ``f``
    when ``affine`` (:mod:`maxca.inference.affine`); the result then holds the total flow."""
    if not affine:
        return register_pair(model, info, f, m, ml, fl, device, diffeomorphic, refine_steps)
    t0 = time.perf_counter()
    T = affine_register(f, m).matrix
    seconds = time.perf_counter() - t0
    m_pre = prealign(m, T)
    ml_pre = None if ml is None else prealign(ml, T)
    result = register_pair(model, info, f, m_pre, ml_pre, fl, device, diffeomorphic, refine_steps)
    result = with_affine(result, T, m, ml)
    result.timings["affine"] = seconds
    result.timings["total"] = result.timings.get("total", 0.0) + seconds
    return result


def register_files(
    model: nn.Module,
    info: CheckpointInfo | None,
    fixed: str | os.PathLike[str],
    moving: str | os.PathLike[str],
    out: str | os.PathLike[str],
    moving_labels: str | os.PathLike[str] | None = None,
    fixed_labels: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    diffeomorphic: bool | None = None,
    refine_steps: int = 0,
    png: bool = False,
    overwrite: bool = False,
    labels: Sequence[int] | None = None,
    affine: bool = False,
) -> PairReport:
    """Register one pair of image files and write the results folder ``out``.

    Everything is read and computed before the folder is written; ``out`` is complete or
    untouched (see the module docstring for its files).

    Args:
        model, info: from :func:`load_model`.
        fixed, moving: image files (NIfTI, ``.mha``, ``.nrrd``).
        out: results folder; refused if it already holds files unless ``overwrite``.
        moving_labels: moving label map (same grid as the moving image).
        fixed_labels: fixed label map (same grid as the fixed image); with ``moving_labels`` it
            gives ``metrics.json``.
        device, diffeomorphic, refine_steps: see :func:`~maxca.inference.register.register_pair`.
        png: draw ``figure.png``.
        overwrite: replace the results in an existing folder.
        labels: label ids for the metrics (default all non-zero).
        affine: align the moving image affinely first (SimpleITK, any contrast; for inputs
            that are not roughly aligned); writes ``affine.mat`` and the deformable field too.

    Returns:
        a :class:`PairReport`.
    """
    t0 = time.perf_counter()
    out_path = check_output_dir(out, overwrite)
    if fixed_labels is not None and moving_labels is None:
        raise MaxcaInputError("--fixed-labels needs --moving-labels to compute Dice")
    f, m, fl, ml = _read_inputs(
        fixed, moving, fixed_labels, moving_labels, _model_ndim(model, info)
    )
    result = _register(model, info, f, m, ml, fl, device, diffeomorphic, refine_steps, affine)
    metrics = pair_metrics(result, labels)
    record = {
        "inputs": _inputs_record(
            {
                "fixed": Path(fixed),
                "moving": Path(moving),
                "fixed_labels": None if fixed_labels is None else Path(fixed_labels),
                "moving_labels": None if moving_labels is None else Path(moving_labels),
            }
        ),
        "model": str(getattr(info, "path", "")),
        "diffeomorphic": bool(diffeomorphic),
        "refine_steps": int(refine_steps),
        "affine": None if result.affine is None else np.round(result.affine, 6).tolist(),
    }
    with OutputDir(out_path, overwrite, stale=RESULT_FILES) as tmp:
        files = write_result(result, tmp, metrics, png, record)
    return PairReport.of(result, out_path.name, out_path, files, metrics, time.perf_counter() - t0)


def register_dataset(
    model: nn.Module,
    info: CheckpointInfo | None,
    dataset: Learn2RegDataset | str | os.PathLike[str],
    out: str | os.PathLike[str],
    pairs: str = "registration_val",
    device: str | torch.device = "cpu",
    diffeomorphic: bool | None = None,
    refine_steps: int = 0,
    png: bool = False,
    overwrite: bool = False,
    on_pair: Callable[[int, int, PairReport], None] | None = None,
    affine: bool = False,
) -> list[PairReport]:
    """Register every pair of a Learn2Reg pair list into ``out`` (Learn2Reg submission layout).

    Writes ``out/FFFF_MMMM/`` (the files of :func:`register_files`) and
    ``out/disp_FFFF_MMMM.nii.gz`` per pair; with label maps in the dataset, each pair gets a
    ``metrics.json`` (on the dataset's ``evaluation_labels``) and ``out`` a ``summary.json`` and
    ``summary.md``. Every image is checked to exist and every case id to parse before the first
    registration; ``out`` appears only when all pairs are done.

    Args:
        on_pair: called as ``on_pair(index, total, report)`` after each pair (for progress).
        affine: affine pre-alignment of every pair (see :func:`register_files`).
    """
    ds = dataset if isinstance(dataset, Learn2RegDataset) else load_learn2reg(dataset)
    out_path = check_output_dir(out, overwrite)
    items = dataset_pairs(ds, pairs)
    labels = ds.evaluation_labels or None
    ndim = _model_ndim(model, info)
    reports: list[PairReport] = []
    scored: list[PairResult] = []
    stale = ("disp_*.nii.gz", "summary.json", "summary.md", *(f"*/{n}" for n in RESULT_FILES))
    with OutputDir(out_path, overwrite, stale=stale) as tmp:
        for i, (fixed, moving) in enumerate(items):
            t_pair = time.perf_counter()
            name = pair_name(fixed, moving)
            f_lab, m_lab = ds.label_for(fixed), ds.label_for(moving)
            if f_lab is None or m_lab is None:
                f_lab = m_lab = None
            f, m, fl, ml = _read_inputs(fixed, moving, f_lab, m_lab, ndim)
            result = _register(
                model, info, f, m, ml, fl, device, diffeomorphic, refine_steps, affine
            )
            metrics, scores = _score(result, labels, name)
            record = {
                "inputs": _inputs_record(
                    {
                        "fixed": fixed,
                        "moving": moving,
                        "fixed_labels": f_lab,
                        "moving_labels": m_lab,
                    }
                ),
                "model": str(getattr(info, "path", "")),
                "diffeomorphic": bool(diffeomorphic),
                "refine_steps": int(refine_steps),
                "affine": None if result.affine is None else np.round(result.affine, 6).tolist(),
            }
            files = write_result(result, tmp / name, metrics, png, record)
            write_l2r_displacement(tmp / l2r_disp_name(fixed, moving), result.flow, f.affine)
            if scores is not None:
                scored.append(scores)
            report = PairReport.of(
                result, name, out_path / name, files, metrics, time.perf_counter() - t_pair
            )
            reports.append(report)
            del result
            if on_pair is not None:
                on_pair(i, len(items), report)
        if scored:
            write_summary(summarize(scored), tmp / "summary.json", tmp / "summary.md")
    return reports


def show_results(
    results: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> Path:
    """Draw the overview figure of a results folder written by :func:`register_files`.

    Reads ``registration.json`` (input paths), ``warped.nii.gz``, ``flow_voxel.nii.gz`` and, if
    present, the label maps.

    Args:
        results: a pair's results folder.
        out: the PNG to write (default ``<results>/figure.png``).

    Returns:
        the written path.
    """
    from maxca.viz.figures import registration_figure

    folder = Path(results)
    record_path = folder / "registration.json"
    if not record_path.is_file():
        raise MaxcaInputError(f"{folder}: no registration.json (not a maxca register folder?)")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        inputs = record["inputs"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise MaxcaInputError(f"{record_path}: unreadable ({type(exc).__name__}: {exc})") from exc
    fixed = read_volume(inputs["fixed"], "image")
    moving = read_volume(inputs["moving"], "image", expected_ndim=fixed.ndim)
    warped = read_volume(folder / "warped.nii.gz", "image", expected_ndim=fixed.ndim)
    flow, _ = read_voxel_flow(folder / "flow_voxel.nii.gz")
    if flow.shape[1:] != fixed.shape or warped.shape != fixed.shape:
        raise MaxcaInputError(f"{folder}: results do not match the fixed image grid {fixed.shape}")
    zero = torch.zeros((1, *flow.shape), dtype=torch.float32)
    moving_on_fixed = warp_volume(moving, zero, fixed.affine, "image")[0, 0].numpy()
    labels: dict[str, np.ndarray | None] = {"fixed": None, "moving": None, "warped": None}
    if inputs.get("fixed_labels"):
        labels["fixed"] = read_volume(inputs["fixed_labels"], "label", fixed.ndim).array
    if inputs.get("moving_labels"):
        ml = read_volume(inputs["moving_labels"], "label", fixed.ndim)
        labels["moving"] = warp_volume(ml, zero, fixed.affine, "label")[0, 0].numpy()
    if (folder / "warped_labels.nii.gz").is_file():
        labels["warped"] = read_volume(folder / "warped_labels.nii.gz", "label", fixed.ndim).array
    target = Path(out) if out is not None else folder / "figure.png"
    if not target.parent.is_dir():
        raise MaxcaInputError(f"output folder does not exist: {target.parent}")
    return registration_figure(
        fixed.array,
        moving_on_fixed,
        warped.array,
        flow,
        target,
        fixed_label=labels["fixed"],
        warped_label=labels["warped"],
        moving_label=labels["moving"],
        spacing=fixed.spacing,
        title=folder.name,
    )
