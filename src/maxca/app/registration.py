"""From files to a results folder: what ``maxca register`` and ``maxca show`` run.

One pair (:func:`register_files`) writes into ``DIR``::

    warped.nii.gz          moving image warped onto the fixed grid (fixed header/affine)
    warped_labels.nii.gz   moving label map warped with nearest neighbour (with moving labels)
    flow_voxel.nii.gz      voxel displacement of the fixed grid, NIfTI vector (X, Y, Z, 1, d)
    disp_itk.nii.gz        ITK/ANTs displacement field, LPS mm, on the fixed grid
    affine.mat             with affine pre-alignment (and the ``itk`` output): the ITK affine
                           (fixed -> moving points; registration.json records it always)
    disp_deformable_itk.nii.gz  likewise: the deformable part alone, so that
                           ``-t disp_deformable_itk.nii.gz -t affine.mat`` == ``-t disp_itk.nii.gz``
                           (antsApplyTransforms order: the point goes through the first listed
                           transform first)
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

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from maxca._checks import SIMILARITIES
from maxca._version import __version__
from maxca.app import memory as _memory
from maxca.app._writers import write_itk_field_fast, write_voxel_flow_fast
from maxca.data.io import Volume, check_headers, read_volume, write_volume
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
)
from maxca.inference.register import (
    RegistrationResult,
    check_passes,
    register_pair,
    resolve_device,
    warp_volume,
)
from maxca.metrics import PairResult, dice, evaluate_pair, summarize, write_summary
from maxca.models.checkpoint import CheckpointInfo, load_checkpoint
from maxca.models.preprocessing import Preprocessing
from maxca.pretrained import resolve_model

__all__ = [
    "DEFAULT_OUTPUTS",
    "OUTPUTS",
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


#: what ``--outputs`` can choose: warped image, warped labels, voxel flow, ITK/ANTs field,
#: Learn2Reg ``disp_FFFF_MMMM.nii.gz`` (datasets only); registration.json is always written,
#: metrics.json with fixed and moving label maps
OUTPUTS = ("warped", "labels", "flow", "itk", "l2r")
#: the default outputs (``l2r`` is added for a dataset)
DEFAULT_OUTPUTS = ("warped", "labels", "flow", "itk")


def parse_outputs(text: str | Sequence[str] | None, dataset: bool = False) -> tuple[str, ...]:
    """The outputs named in ``text`` (``"warped,flow"`` or a sequence), checked.

    ``None`` gives :data:`DEFAULT_OUTPUTS` (plus ``l2r`` for a dataset).
    """
    if text is None:
        return (*DEFAULT_OUTPUTS, "l2r") if dataset else DEFAULT_OUTPUTS
    names = text.replace(",", " ").split() if isinstance(text, str) else list(text)
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown or not names:
        raise MaxcaInputError(
            f"--outputs takes a comma-separated list of {', '.join(OUTPUTS)}, got {text!r}"
        )
    if "l2r" in names and not dataset:
        raise MaxcaInputError("--outputs l2r (disp_FFFF_MMMM.nii.gz) is for --dataset only")
    return tuple(n for n in OUTPUTS if n in names)


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
        passes: how many times the network ran (cascaded inference).
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
    passes: int = 1

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
            passes=result.passes,
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
    try:
        model, info = load_checkpoint(path, map_location=dev)
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and "alloc" not in str(exc).lower():
            raise
        raise MaxcaInputError(
            f"{path}: the model that its model.json describes does not fit in memory "
            f"({type(exc).__name__}); is model.json corrupt?"
        ) from None
    _check_finite_weights(model, path)
    model.eval()
    return model, info


def _check_finite_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Refuse a model with NaN/Inf weights (they give all-NaN or absurd displacements)."""
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise MaxcaInputError(
                    f"{path}: weight {name} is not finite (NaN/Inf): the checkpoint is corrupt"
                )


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
    before = dice(fixed, _moving_labels_on_fixed_grid(result), labels)
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


def _same_grid(a: Volume, b: Volume) -> bool:
    return a.shape == b.shape and np.allclose(a.affine, b.affine, rtol=0, atol=1e-6)


def _moving_labels_on_fixed_grid(result: RegistrationResult) -> np.ndarray:
    """The moving labels on the fixed grid by the identity: the array itself when both are on
    the same grid (nearest-neighbour resampling at the voxel centres is then the identity), else
    resampled."""
    ml = result.moving_labels
    if ml is not None and _same_grid(ml, result.fixed):
        return ml.array
    return result.moving_on_fixed_grid("label")


def _inputs_record(paths: dict[str, Path | None]) -> dict[str, str | None]:
    return {k: (str(Path(v).resolve()) if v is not None else None) for k, v in paths.items()}


def file_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file's content (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
    return {"size": size, "sha256": digest.hexdigest()}


def _fingerprints(paths: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The content fingerprint of each given input (recorded so that ``maxca show`` can tell
    when an input file was replaced after the registration)."""
    return {k: file_fingerprint(v) for k, v in paths.items() if v is not None}


def _check_unchanged(record: dict[str, Any], record_path: Path) -> None:
    """Refuse inputs whose content differs from the one registered (``input_fingerprints`` of
    ``registration.json``; folders written before it was recorded are not checked)."""
    recorded = record.get("input_fingerprints") or {}
    if not isinstance(recorded, dict):
        raise MaxcaInputError(f"{record_path}: unreadable input_fingerprints")
    for role, path in (record.get("inputs") or {}).items():
        want = recorded.get(role)
        if not path or not isinstance(want, dict) or not Path(path).is_file():
            continue  # a missing file is reported by its reader
        have = file_fingerprint(path)
        if have != {"size": want.get("size"), "sha256": want.get("sha256")}:
            raise MaxcaInputError(
                f"{path}: the {role.replace('_', ' ')} input changed after this registration "
                f"(content differs from the one recorded in {record_path.name}); register again"
            )


def _pair_record(
    input_paths: dict[str, Any],
    fingerprints: dict[str, dict[str, Any]],
    info: CheckpointInfo | None,
    result: RegistrationResult,
    diffeomorphic: bool | None,
    refine_steps: int,
    refine_similarity: str | None,
) -> dict[str, Any]:
    """The entries of one pair's ``registration.json`` that :func:`write_result` adds to."""
    return {
        "inputs": _inputs_record(input_paths),
        "input_fingerprints": fingerprints,
        "model": str(getattr(info, "path", "")),
        "diffeomorphic": bool(diffeomorphic),
        "refine_steps": int(refine_steps),
        "refine_similarity": refine_similarity if refine_steps else None,
        "passes": result.passes,
        "affine": None if result.affine is None else np.round(result.affine, 6).tolist(),
    }


def write_result(
    result: RegistrationResult,
    folder: str | os.PathLike[str],
    metrics: dict[str, Any] | None = None,
    png: bool = False,
    record: dict[str, Any] | None = None,
    outputs: Sequence[str] | None = None,
    compress: bool = False,
) -> list[str]:
    """Write a registration's files into ``folder`` (each file atomically).

    The displacement fields (``flow_voxel.nii.gz``, ``disp_itk.nii.gz``) are float32 and, unless
    ``compress``, written as stored gzip (valid ``.nii.gz`` at the raw size, written at disk
    speed; see :mod:`maxca.app._writers`) in a second thread while the images are written.

    Args:
        result: from :func:`~maxca.inference.register.register_pair`.
        folder: target folder (created if needed).
        metrics: written as ``metrics.json`` when non-empty.
        png: also draw ``figure.png``.
        record: extra entries for ``registration.json``.
        outputs: which of ``warped, labels, flow, itk`` to write (default all four).
        compress: zlib-compress the displacement fields (level 1; smaller, slower).

    Returns:
        the names of the written files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fixed = result.fixed
    chosen = set(DEFAULT_OUTPUTS if outputs is None else outputs)
    level = 1 if compress else 0
    written = []

    def fields() -> list[str]:
        names = []
        if "flow" in chosen:
            write_voxel_flow_fast(folder / "flow_voxel.nii.gz", result.flow, fixed, level)
            names.append("flow_voxel.nii.gz")
        if "itk" in chosen:
            if result.flow.shape[0] == 3:
                write_itk_field_fast(folder / "disp_itk.nii.gz", result.flow, fixed.affine, level)
            else:
                write_itk_displacement(folder / "disp_itk.nii.gz", result.flow, fixed.affine)
            names.append("disp_itk.nii.gz")
        return names

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(fields)
        if "warped" in chosen:
            write_volume(folder / "warped.nii.gz", result.warped.array, fixed.affine, like=fixed)
            written.append("warped.nii.gz")
        if result.warped_labels is not None and "labels" in chosen:
            write_volume(
                folder / "warped_labels.nii.gz",
                result.warped_labels.array,
                fixed.affine,
                like=fixed,
                dtype=result.warped_labels.array.dtype,
            )
            written.append("warped_labels.nii.gz")
        written.extend(pending.result())
    if result.affine is not None and "itk" in chosen:  # pre-aligned: the chain too (ITK files)
        with atomic_file(folder / "affine.mat", ".mat") as tmp:
            write_itk_affine(tmp, result.affine, fixed.ndim)
        written.append("affine.mat")
        if result.deformable_flow is not None:
            name = "disp_deformable_itk.nii.gz"
            if result.deformable_flow.shape[0] == 3:
                write_itk_field_fast(folder / name, result.deformable_flow, fixed.affine, level)
            else:
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


def _grid_shape(info: CheckpointInfo | None, fixed_shape: Sequence[int]) -> tuple[int, ...]:
    shape = Preprocessing.of(info).shape
    if shape is None:
        return tuple(fixed_shape)
    shape = tuple(int(s) for s in shape)
    return shape if len(shape) == len(fixed_shape) else tuple(fixed_shape)


def check_pair_memory(
    model: nn.Module,
    info: CheckpointInfo | None,
    fixed: str | os.PathLike[str],
    moving: str | os.PathLike[str],
    labels: bool,
    refine_steps: int,
    max_memory_gb: float | None,
) -> int | None:
    """Estimate the peak memory of registering ``moving`` to ``fixed`` from the file headers
    (no image data is read) and refuse when it does not fit (:mod:`maxca.app.memory`).

    Returns:
        the estimate in bytes, or ``None`` when a header could not be read (the full read then
        reports the problem).

    Raises:
        MaxcaInputError: the estimate exceeds ``max_memory_gb`` or, without it, the memory
            available now.
    """
    f_shape, m_shape = _memory.header_shape(fixed), _memory.header_shape(moving)
    if f_shape is None or m_shape is None:
        return None
    grid = _grid_shape(info, f_shape)
    estimate = _memory.estimate_memory(model, f_shape, m_shape, grid, labels, refine_steps > 0)
    what = (
        f"fixed {'x'.join(map(str, f_shape))}, moving {'x'.join(map(str, m_shape))}, "
        f"model grid {'x'.join(map(str, grid))}"
    )
    _memory.check_memory(estimate, max_memory_gb, what)
    return estimate


def _check_geometry(volume: Volume, what: str, path: str | os.PathLike[str]) -> None:
    """Refuse an image whose affine is singular (a zero-length axis, collinear axes), and a
    fixed image one voxel thick (the flow and its Jacobian live on the fixed grid)."""
    d = volume.ndim
    matrix = np.asarray(volume.affine, np.float64)[:d, :d]
    spacing = np.linalg.norm(matrix, axis=0)
    if (
        not np.all(np.isfinite(matrix))
        or np.any(spacing <= 1e-9)
        or (abs(np.linalg.det(matrix)) <= 1e-9 * float(np.prod(spacing)))
    ):
        raise MaxcaInputError(
            f"the {what} image {path} has a degenerate affine (zero spacing or collinear "
            f"axes): {np.round(matrix, 6).tolist()}"
        )
    if what == "fixed" and min(volume.shape) < 2:  # the flow lives on the fixed grid
        shape = "x".join(str(n) for n in volume.shape)
        raise MaxcaInputError(
            f"the fixed image {path} is {shape} voxels: a {d}-D registration needs at least 2 "
            f"along every axis (a single slice? register it with a 2-D model)"
        )


def _warn_if_constant(volume: Volume, what: str, path: str | os.PathLike[str]) -> None:
    array = volume.array
    if array.size and float(array.min()) == float(array.max()):
        warnings.warn(
            f"the {what} image {path} is constant (every voxel {float(array.min()):g}): "
            "there is nothing to register, the result will be meaningless",
            UserWarning,
            stacklevel=3,
        )


#: a label map with more distinct values than this is more likely an intensity image
MAX_LABELS = 1000


def _label_ids(volume: Volume) -> tuple[np.ndarray, bool]:
    """The distinct values of a label map, and whether they were counted on a sample (every
    7th voxel beyond 1M voxels: enough to tell a label map from an image at a fraction of the
    cost; the count is then a lower bound)."""
    flat = np.asarray(volume.array).ravel()
    sampled = flat.size > 1_000_000
    return np.unique(flat[::7] if sampled else flat), sampled


def _warn_about_labels(
    fixed_labels: Volume | None,
    moving_labels: Volume | None,
    fixed_path: str | os.PathLike[str] | None,
    moving_path: str | os.PathLike[str] | None,
) -> None:
    """Warn (one line each) when a label map looks like an intensity image (more than
    :data:`MAX_LABELS` distinct values: e.g. an integer MR/CT image given as ``--moving-labels``)
    or when the two label maps share no non-zero id (every Dice would be 0)."""
    ids = {}
    for what, volume, path in (
        ("fixed", fixed_labels, fixed_path),
        ("moving", moving_labels, moving_path),
    ):
        if volume is None:
            continue
        ids[what], sampled = _label_ids(volume)
        if len(ids[what]) > MAX_LABELS:
            count = f"at least {len(ids[what])}" if sampled else str(len(ids[what]))
            warnings.warn(
                f"the {what} label map {path} has {count} distinct values: is it an intensity "
                "image rather than a label map?",
                UserWarning,
                stacklevel=3,
            )
    if len(ids) == 2:
        shared = np.intersect1d(ids["fixed"], ids["moving"])
        if not np.any(shared != 0) and (np.any(ids["fixed"] != 0) and np.any(ids["moving"] != 0)):
            warnings.warn(
                f"the label maps {fixed_path} and {moving_path} share no label id: every Dice "
                "will be 0 (do both use the same label table?)",
                UserWarning,
                stacklevel=3,
            )


def check_refine_similarity(similarity: str | None) -> None:
    """Refuse a refinement similarity that :func:`~maxca.inference.refine.refine_flow` does not
    know (``None`` = the model's own) before anything is read."""
    if similarity is not None and similarity not in SIMILARITIES:
        raise MaxcaInputError(
            f"refine similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}"
        )


def _register_checked(
    model: nn.Module,
    info: CheckpointInfo | None,
    inputs: tuple[Volume, Volume, Volume | None, Volume | None],
    device: str | torch.device,
    diffeomorphic: bool | None,
    refine_steps: int,
    progress: bool,
    affine: bool = False,
    precision: str = "fp32",
    similarity: str | None = None,
    passes: int | None = None,
) -> RegistrationResult:
    """:func:`_register` with a bad geometry reported as bad input, not a crash, the
    ``--refine`` progress bar, the refinement's similarity (``None``: the model's) and the
    network passes (``None``: the model's default)."""
    f, m, fl, ml = inputs
    options: dict[str, Any] = {}
    if progress and refine_steps:
        options["progress"] = True
    if similarity is not None:
        options["similarity"] = similarity
    try:
        return _register(
            model,
            info,
            f,
            m,
            ml,
            fl,
            device,
            diffeomorphic,
            refine_steps,
            affine,
            options or None,
            precision,
            passes,
        )
    except np.linalg.LinAlgError as exc:
        raise MaxcaInputError(
            f"the image geometry is degenerate (singular or zero-spacing affine): {exc}"
        ) from None


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
    refine_options: dict[str, Any] | None = None,
    precision: str = "fp32",
    passes: int | None = None,
) -> RegistrationResult:
    """:func:`register_pair`, after an affine pre-alignment of ``m`` (and ``ml``) to ``f``
    when ``affine`` (:mod:`maxca.inference.affine`); the result then holds the total flow."""
    opts: dict[str, Any] = {"precision": precision, "passes": passes}
    if refine_options:
        opts["refine_options"] = refine_options
    if not affine:
        return register_pair(model, info, f, m, ml, fl, device, diffeomorphic, refine_steps, **opts)
    t0 = time.perf_counter()
    T = affine_register(f, m).matrix
    seconds = time.perf_counter() - t0
    m_pre = prealign(m, T)
    ml_pre = None if ml is None else prealign(ml, T)
    result = register_pair(
        model, info, f, m_pre, ml_pre, fl, device, diffeomorphic, refine_steps, **opts
    )
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
    *,
    outputs: Sequence[str] | None = None,
    compress: bool = False,
    max_memory_gb: float | None = None,
    progress: bool = False,
    precision: str = "fp32",
    refine_similarity: str | None = None,
    passes: int | None = None,
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
        outputs, compress: see :func:`write_result`.
        max_memory_gb: memory budget in GB (default: the memory available now); the estimate
            is checked from the file headers before any data is read.
        progress: show a progress bar for ``refine_steps`` (stderr, only on a terminal).
        precision: ``"fp32"`` or ``"bf16"`` (the network's forward under bfloat16 autocast;
            see :func:`~maxca.inference.register.register_pair`).
        refine_similarity: the similarity that ``refine_steps`` optimise (``"ncc"``,
            ``"mse"`` or ``"mind"``; ``None``: the model's own, NCC for the packaged ones).
            MIND-SSC compares local structure, for pairs of two different contrasts.
        passes: how many times the network runs, each pass on the moving image warped by the
            passes before (cascaded inference; ``None``: 1, or with ``refine_steps`` the
            model's recorded ``refine.passes`` when it has one); see
            :func:`~maxca.inference.register.register_pair`.
        affine: align the moving image affinely first (SimpleITK, any contrast; for inputs
            that are not roughly aligned); writes ``affine.mat`` and the deformable field too.

    Returns:
        a :class:`PairReport`.
    """
    t0 = time.perf_counter()
    out_path = check_output_dir(out, overwrite)
    if fixed_labels is not None and moving_labels is None:
        raise MaxcaInputError("--fixed-labels needs --moving-labels to compute Dice")
    if outputs is not None and moving_labels is None and "labels" in parse_outputs(outputs):
        raise MaxcaInputError("--outputs labels needs --moving-labels (the label map to warp)")
    outputs = parse_outputs(outputs)
    check_refine_similarity(refine_similarity)
    if passes is not None:
        check_passes(passes)
    check_pair_memory(
        model, info, fixed, moving, moving_labels is not None, refine_steps, max_memory_gb
    )
    inputs = _read_inputs(fixed, moving, fixed_labels, moving_labels, _model_ndim(model, info))
    input_paths = {
        "fixed": Path(fixed),
        "moving": Path(moving),
        "fixed_labels": None if fixed_labels is None else Path(fixed_labels),
        "moving_labels": None if moving_labels is None else Path(moving_labels),
    }
    fingerprints = _fingerprints(input_paths)  # of the files as read, before the long part
    _check_geometry(inputs[0], "fixed", fixed)
    _check_geometry(inputs[1], "moving", moving)
    if not affine:  # with it, a constant image is an error of the pre-alignment
        _warn_if_constant(inputs[0], "fixed", fixed)
        _warn_if_constant(inputs[1], "moving", moving)
    _warn_about_labels(inputs[2], inputs[3], fixed_labels, moving_labels)
    run: dict[str, Any] = {
        "progress": progress,
        "affine": affine,
        "precision": precision,
        "similarity": refine_similarity,
        "passes": passes,
    }
    result = _register_checked(model, info, inputs, device, diffeomorphic, refine_steps, **run)
    metrics = pair_metrics(result, labels)
    record = _pair_record(
        input_paths, fingerprints, info, result, diffeomorphic, refine_steps, refine_similarity
    )
    with OutputDir(out_path, overwrite, stale=RESULT_FILES) as tmp:
        files = write_result(result, tmp, metrics, png, record, outputs, compress)
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
    *,
    outputs: Sequence[str] | None = None,
    compress: bool = False,
    max_memory_gb: float | None = None,
    progress: bool = False,
    precision: str = "fp32",
    refine_similarity: str | None = None,
    passes: int | None = None,
) -> list[PairReport]:
    """Register every pair of a Learn2Reg pair list into ``out`` (Learn2Reg submission layout).

    Writes ``out/FFFF_MMMM/`` (the files of :func:`register_files`) and
    ``out/disp_FFFF_MMMM.nii.gz`` per pair; with label maps in the dataset, each pair gets a
    ``metrics.json`` (on the dataset's ``evaluation_labels``) and ``out`` a ``summary.json`` and
    ``summary.md``. Every image and label map is checked to exist and have a readable header,
    and every case id to parse, before the first registration; ``out`` appears only when all
    pairs are done.

    Args:
        on_pair: called as ``on_pair(index, total, report)`` after each pair (for progress).
        outputs: as :func:`register_files`, plus ``l2r`` (default: all five).
        compress, max_memory_gb, progress, precision, refine_similarity, passes: as
            :func:`register_files` (the memory of every pair is checked before the first one is
            registered).
        affine: affine pre-alignment of every pair (see :func:`register_files`).
    """
    ds = dataset if isinstance(dataset, Learn2RegDataset) else load_learn2reg(dataset)
    out_path = check_output_dir(out, overwrite)
    outputs = parse_outputs(outputs, dataset=True)
    check_refine_similarity(refine_similarity)
    if passes is not None:
        check_passes(passes)
    items = dataset_pairs(ds, pairs)
    # every header before the first registration: a corrupt file in the last pair must not
    # cost the pairs before it
    files = {path for pair in items for image in pair for path in (image, ds.label_for(image))}
    check_headers(sorted(str(path) for path in files if path is not None))
    for fixed, moving in items:
        has_labels = ds.label_for(fixed) is not None and ds.label_for(moving) is not None
        check_pair_memory(model, info, fixed, moving, has_labels, refine_steps, max_memory_gb)
    labels = ds.evaluation_labels or None
    ndim = _model_ndim(model, info)
    run: dict[str, Any] = {
        "progress": progress,
        "affine": affine,
        "precision": precision,
        "similarity": refine_similarity,
        "passes": passes,
    }
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
            inputs = _read_inputs(fixed, moving, f_lab, m_lab, ndim)
            input_paths = {
                "fixed": fixed,
                "moving": moving,
                "fixed_labels": f_lab,
                "moving_labels": m_lab,
            }
            fingerprints = _fingerprints(input_paths)
            _check_geometry(inputs[0], "fixed", fixed)
            _check_geometry(inputs[1], "moving", moving)
            if not affine:  # with it, a constant image is an error of the pre-alignment
                _warn_if_constant(inputs[0], "fixed", fixed)
                _warn_if_constant(inputs[1], "moving", moving)
            _warn_about_labels(inputs[2], inputs[3], f_lab, m_lab)
            f = inputs[0]
            result = _register_checked(
                model, info, inputs, device, diffeomorphic, refine_steps, **run
            )
            metrics, scores = _score(result, labels, name)
            record = _pair_record(
                input_paths,
                fingerprints,
                info,
                result,
                diffeomorphic,
                refine_steps,
                refine_similarity,
            )
            files = write_result(result, tmp / name, metrics, png, record, outputs, compress)
            if "l2r" in outputs:
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
    _check_unchanged(record, record_path)
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
