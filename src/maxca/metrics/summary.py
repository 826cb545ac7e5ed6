"""All metrics of one registered pair, and their summary over a data set.

:func:`evaluate_pair` scores one pair (per-label Dice and HD95, folding percentage, SDlogJ and
the mean TRE) either with maxca's definitions or, with ``l2r_compat=True``, with the Learn2Reg
evaluation script's (:mod:`maxca.metrics.l2r`; see ``docs/metrics.md`` for the differences).
:func:`summarize` aggregates many pairs; :func:`write_pair_csv` and :func:`write_summary` write
the results atomically (a temporary file in the target folder, then ``os.replace``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maxca.errors import MaxcaInputError
from maxca.metrics import l2r
from maxca.metrics._common import (
    ArrayLike,
    as_flow,
    as_label_map,
    as_labels,
    as_spacing,
    atomic_write_text,
    finite_or_none,
    shape_str,
)
from maxca.metrics.jacobian import jacobian_determinant_array, njd_percent_of, sdlogj_of
from maxca.metrics.landmarks import read_landmarks_csv, tre
from maxca.metrics.overlap import dice, hd95

__all__ = [
    "PairResult",
    "SCALAR_METRICS",
    "evaluate_pair",
    "summarize",
    "write_pair_csv",
    "write_summary",
]

#: Per-pair scalar metrics, in report order, with their display names.
SCALAR_METRICS: dict[str, str] = {
    "dice_mean": "Dice (mean over labels)",
    "hd95_mean": "HD95 (mean over labels)",
    "njd_percent": "Folded voxels, det J <= 0 (%)",
    "sdlogj": "SDlogJ",
    "tre_mean": "TRE mean (mm)",
}


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


@dataclass
class PairResult:
    """Metrics of one registered pair.

    Attributes:
        dice: ``{label: Dice}`` (``NaN`` = label not scored, see :func:`evaluate_pair`).
        hd95: ``{label: HD95}`` in mm (in voxels when ``l2r_compat``).
        njd_percent: percentage of voxels with ``det J <= 0``.
        sdlogj: standard deviation of ``log det J`` (the script's variant when ``l2r_compat``).
        tre: ``(N,)`` per-landmark errors in mm, or ``None`` without landmarks.
        l2r_compat: whether the Learn2Reg script's definitions were used.
        name: a pair identifier written in CSV rows (e.g. ``"0001_0002"``).
    """

    dice: dict[int, float]
    hd95: dict[int, float]
    njd_percent: float
    sdlogj: float
    tre: np.ndarray | None = None
    l2r_compat: bool = False
    name: str = ""
    labels: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.labels:
            self.labels = list(self.dice)

    @property
    def dice_mean(self) -> float:
        """Mean Dice over the scored labels (``NaN`` labels skipped; ``NaN`` if none)."""
        return _nanmean(self.dice.values())

    @property
    def hd95_mean(self) -> float:
        """Mean HD95 over the scored labels (``NaN`` skipped; ``inf`` if any label is ``inf``)."""
        return _nanmean(self.hd95.values())

    @property
    def tre_mean(self) -> float:
        """Mean TRE in mm, ``NaN`` without landmarks."""
        return float(np.mean(self.tre)) if self.tre is not None and len(self.tre) else math.nan

    @property
    def hd95_unit(self) -> str:
        """``"mm"``, or ``"voxel"`` for Learn2Reg-compatible results."""
        return "voxel" if self.l2r_compat else "mm"

    def scalars(self) -> dict[str, float]:
        """The per-pair scalar metrics named in :data:`SCALAR_METRICS`."""
        return {
            "dice_mean": self.dice_mean,
            "hd95_mean": self.hd95_mean,
            "njd_percent": float(self.njd_percent),
            "sdlogj": float(self.sdlogj),
            "tre_mean": self.tre_mean,
        }


def _landmark_pair(landmarks: Any, d: int) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(landmarks, (tuple, list)) or len(landmarks) != 2:
        raise MaxcaInputError(
            "landmarks must be a pair (fixed, moving) of (N, d) arrays or CSV paths, "
            f"got {type(landmarks).__name__}"
        )
    pts = []
    for item in landmarks:
        if isinstance(item, (str, os.PathLike)):
            item = read_landmarks_csv(item, dim=d)
        pts.append(item)
    return pts[0], pts[1]


def evaluate_pair(
    fixed_label: ArrayLike,
    warped_label: ArrayLike,
    flow: ArrayLike,
    spacing: Sequence[float],
    labels: Sequence[int] | None,
    mask: ArrayLike | None = None,
    landmarks: Any = None,
    l2r_compat: bool = False,
    moving_label: ArrayLike | None = None,
    name: str = "",
    with_hd95: bool = True,
) -> PairResult:
    """Score one registered pair.

    Args:
        fixed_label: ``(*S)`` fixed label map (file voxel order).
        warped_label: ``(*S)`` moving label map warped onto the fixed grid (nearest neighbour).
        flow: ``(d, *S)`` voxel displacement on the fixed grid (``(1, d, *S)`` accepted).
        spacing: ``d`` voxel sizes in mm of the fixed grid.
        labels: labels to score; ``None`` = every non-zero label present in any label map.
        mask: optional ``(*S)`` region (non-zero = inside) for the folding and SDlogJ metrics.
        landmarks: optional ``(fixed_pts, moving_pts)``: two ``(N, d)`` voxel-coordinate arrays
            or two CSV paths (:func:`~maxca.metrics.landmarks.read_landmarks_csv`).
        l2r_compat: use the Learn2Reg evaluation script's definitions (HD95 in voxels, the
            script's Jacobian, ``+3``-shifted SDlogJ, cubic TRE, labels absent from fixed or
            moving not scored).
        moving_label: ``(*S)`` moving label map; required with ``l2r_compat``, which leaves out
            (``NaN``) labels absent from the moving map as the script does.
        name: identifier of the pair, kept in :attr:`PairResult.name`.
        with_hd95: compute HD95 (needs MONAI, and costs far more than the other metrics at
            1 mm); ``False`` leaves every label's HD95 ``NaN``.

    Returns:
        A :class:`PairResult`. Without ``l2r_compat``, a label absent from both label maps has
        ``NaN`` Dice, and a label absent from either has ``NaN`` HD95.
    """
    u = as_flow(flow)
    d = u.shape[0]
    fixed = as_label_map(fixed_label, "fixed_label")
    warped = as_label_map(warped_label, "warped_label", shape=fixed.shape)
    if u.shape[1:] != fixed.shape:
        raise MaxcaInputError(
            f"flow must have the label maps' spatial shape {shape_str(fixed.shape)}, "
            f"got flow shape {shape_str(u.shape)}"
        )
    sp = as_spacing(spacing, d)
    moving = None
    if moving_label is not None:
        moving = as_label_map(moving_label, "moving_label", shape=fixed.shape)
    elif l2r_compat:
        raise MaxcaInputError(
            "l2r_compat needs moving_label (the Learn2Reg script skips labels absent from the "
            "moving map), got None"
        )
    maps = (fixed, warped) if moving is None else (fixed, warped, moving)
    labs = as_labels(labels, *maps)
    pts = None if landmarks is None else _landmark_pair(landmarks, d)

    if l2r_compat:
        assert moving is not None
        result = PairResult(
            dice=l2r.l2r_dice(fixed, moving, warped, labs),
            hd95=l2r.l2r_hd95(fixed, moving, warped, labs)
            if with_hd95
            else {lab: math.nan for lab in labs},
            njd_percent=l2r.l2r_njd(u, mask),
            sdlogj=l2r.l2r_sdlogj(u, mask),
            tre=None if pts is None else l2r.l2r_tre(pts[0], pts[1], u, sp),
            l2r_compat=True,
            name=name,
            labels=labs,
        )
    else:
        det = jacobian_determinant_array(u)  # once for both folding and SDlogJ
        result = PairResult(
            dice=dice(fixed, warped, labs),
            hd95=hd95(fixed, warped, labs, sp) if with_hd95 else {lab: math.nan for lab in labs},
            njd_percent=njd_percent_of(det, mask),
            sdlogj=sdlogj_of(det, mask),
            tre=None if pts is None else tre(pts[0], pts[1], u, sp),
            l2r_compat=False,
            name=name,
            labels=labs,
        )
    return result


def _fmt(value: float) -> str:
    """A float for CSV: ``repr`` precision, ``nan`` / ``inf`` spelled out."""
    return repr(float(value))


def write_pair_csv(result: PairResult, path: str | os.PathLike[str]) -> None:
    """Write one pair's metrics as a long-format CSV, atomically.

    Columns ``pair,metric,label,value``: one ``dice`` and one ``hd95`` row per label, then the
    scalar rows ``dice_mean``, ``hd95_mean``, ``njd_percent``, ``sdlogj`` and (with landmarks)
    ``tre_mean`` with an empty label. Values are full-precision floats; ``nan`` marks a label
    that was not scored.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["pair", "metric", "label", "value"])
    for lab in result.labels:
        writer.writerow([result.name, "dice", lab, _fmt(result.dice[lab])])
    for lab in result.labels:
        writer.writerow([result.name, "hd95", lab, _fmt(result.hd95[lab])])
    for key, value in result.scalars().items():
        if key == "tre_mean" and result.tre is None:
            continue
        writer.writerow([result.name, key, "", _fmt(value)])
    atomic_write_text(path, buf.getvalue())


def _stats(values: Sequence[float]) -> dict[str, float]:
    """Mean, population std (``ddof = 0``) and count of the non-NaN values."""
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # inf - inf in std
        return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


def summarize(results: Sequence[PairResult]) -> dict[str, Any]:
    """Mean and standard deviation over pairs of every metric, and of Dice/HD95 per label.

    NaN values (unscored labels, pairs without landmarks) are left out of each statistic; the
    standard deviation is the population one (``ddof = 0``, as the Learn2Reg aggregates).

    Args:
        results: the :class:`PairResult` of every pair, all with the same ``l2r_compat``.

    Returns:
        ``{"n_pairs", "l2r_compat", "hd95_unit", "metrics": {name: {"mean", "std", "n"}},
        "per_label": {"dice": {label: {...}}, "hd95": {label: {...}}}}`` where ``n`` counts the
        values used. Labels are in first-seen order.
    """
    results = list(results)
    if not results:
        raise MaxcaInputError("summarize needs at least one PairResult, got none")
    modes = {r.l2r_compat for r in results}
    if len(modes) != 1:
        raise MaxcaInputError(
            "results must all use the same definitions, got a mix of l2r_compat True and False"
        )
    labels: list[int] = []
    for r in results:
        labels.extend(lab for lab in r.labels if lab not in labels)
    scalars = [r.scalars() for r in results]
    return {
        "n_pairs": len(results),
        "l2r_compat": results[0].l2r_compat,
        "hd95_unit": results[0].hd95_unit,
        "metrics": {key: _stats([s[key] for s in scalars]) for key in SCALAR_METRICS},
        "per_label": {
            metric: {
                lab: _stats([getattr(r, metric).get(lab, math.nan) for r in results])
                for lab in labels
            }
            for metric in ("dice", "hd95")
        },
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite_or_none(obj)
    return obj


def _md(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary of :func:`summarize` as a Markdown report (two tables)."""
    mode = "Learn2Reg-compatible" if summary["l2r_compat"] else "maxca"
    unit = summary["hd95_unit"]
    lines = [
        "# Evaluation summary",
        "",
        f"{summary['n_pairs']} pairs, {mode} definitions, HD95 in {unit}s. "
        "Mean and standard deviation over pairs (n = pairs with a value).",
        "",
        "| metric | mean | std | n |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, title in SCALAR_METRICS.items():
        st = summary["metrics"][key]
        if key.startswith("hd95"):
            title = f"{title} ({unit})"
        lines.append(f"| {title} | {_md(st['mean'])} | {_md(st['std'])} | {st['n']} |")
    lines += [
        "",
        "## Per label",
        "",
        f"| label | Dice mean | Dice std | HD95 mean ({unit}) | HD95 std | n |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for lab, st in summary["per_label"]["dice"].items():
        h = summary["per_label"]["hd95"][lab]
        lines.append(
            f"| {lab} | {_md(st['mean'])} | {_md(st['std'])} | {_md(h['mean'])} | "
            f"{_md(h['std'])} | {st['n']} |"
        )
    return "\n".join(lines) + "\n"


def write_summary(
    summary: dict[str, Any],
    json_path: str | os.PathLike[str] | None,
    md_path: str | os.PathLike[str] | None = None,
) -> None:
    """Write the summary of :func:`summarize` as JSON and/or a Markdown table, atomically.

    The JSON is strict: NaN and infinite values are written as ``null`` (the ``n`` beside each
    statistic tells how many values it used). Either path may be ``None`` to skip that file.
    """
    for key in ("n_pairs", "l2r_compat", "hd95_unit", "metrics", "per_label"):
        if key not in summary:
            raise MaxcaInputError(
                f"summary must be the dict returned by summarize(), got one without {key!r}"
            )
    if json_path is not None:
        text = json.dumps(_jsonable(summary), indent=2, allow_nan=False) + "\n"
        atomic_write_text(json_path, text)
    if md_path is not None:
        atomic_write_text(md_path, summary_markdown(summary))
