"""The harness shared by ``benchmarks/ablation.py``, ``baselines.py`` and ``speed.py`` (not a
test, not library code): command-line parsing, the model width presets (:data:`WIDTHS`) and
fresh untrained checkpoints, ANTsPy (:func:`import_ants`, :data:`ANTS_PRESETS`,
:func:`ants_register`), and tables/CSV files.

The library logic the scripts need is in the package and only re-exported here: validation
pairs, registration and scoring in :mod:`maxca.app.pairs`, the 2-D slice dataset in
:mod:`maxca.data.slices`, ITK fields read back into voxel flows by
:func:`maxca.inference.export.read_itk_displacement`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from maxca.app.pairs import (
    EvalPair,
    LoadedPair,
    evaluate_model,
    evaluation_labels,
    identity_flow,
    load_pairs,
    pair_row,
    score_flow,
    validation_pairs,
)
from maxca.app.pairs import synchronize as sync
from maxca.data.slices import PLANES, build_slice_dataset, plane_axis, slice_affine, slice_offsets
from maxca.inference import resolve_device as _resolve_device
from maxca.inference.export import read_itk_displacement

if TYPE_CHECKING:
    from maxca.models.preprocessing import Preprocessing

__all__ = [  # the library names the scripts take from here, next to the harness's own
    "EvalPair",
    "LoadedPair",
    "PLANES",
    "build_slice_dataset",
    "evaluate_model",
    "evaluation_labels",
    "identity_flow",
    "load_pairs",
    "pair_row",
    "plane_axis",
    "read_itk_displacement",
    "score_flow",
    "slice_affine",
    "slice_offsets",
    "sync",
    "validation_pairs",
]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BRAIN_1MM = SHARED_DATA / "brain-synth" / "dataset.json"
BRAIN_2MM = SHARED_DATA / "brain-synth-2mm" / "dataset.json"
RESULTS = REPO / "benchmarks" / "results"

HOSTS = ("pyramid", "unet", "hybrid")
ATTENTIONS = ("maxca", "window", "xca", "none")

#: Channel widths per host: ``full`` = the registered defaults (the authors'/reference widths),
#: ``small`` = about a quarter of the cost, for CPU tables. The same preset is used for every
#: attention kind of a host, so a row differs from its ``none`` row only by the attention.
WIDTHS: dict[str, dict[str, dict[str, Any]]] = {
    "pyramid": {
        "full": {},
        "small": {"enc_channels": 8, "dec_channels": 16, "first_attention_level": 1},
    },
    "unet": {
        "full": {},
        "small": {
            "enc_channels": [8, 16, 16, 16],
            "dec_channels": [16, 16, 16, 16, 16],
            "final_channels": [8, 8],
        },
    },
    "hybrid": {
        "full": {},
        "small": {
            "stem_channels": [8, 16],
            "embed_channels": 16,
            "dec_channels": [32, 16, 16, 8],
        },
    },
}


# ---------------------------------------------------------------------------------------------
# command-line helpers
# ---------------------------------------------------------------------------------------------
def parse_names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``, each checked against ``allowed`` (order kept, no repeats).

    Raises:
        ValueError: an unknown or repeated name, or an empty list.
    """
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"no {what} given")
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ValueError(f"unknown {what} {bad}; expected some of {list(allowed)}")
    if len(set(names)) != len(names):
        raise ValueError(f"repeated {what} in {names}")
    return names


def parse_ints(text: str, what: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (non-negative, no repeats)."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise ValueError(f"{what} must be distinct integers >= 0, got {text!r}")
    return values


def resolve_device(name: str) -> str:
    """The device name for ``--device`` (``auto`` -> ``cuda`` when available, else ``cpu``)."""
    return str(_resolve_device(name))


def add_training_pair_args(p: argparse.ArgumentParser) -> None:
    """``--dataset`` (brain-synth-2mm), ``--subjects`` (``lo-hi``) and ``--offset``: the
    directed pairs of *training* subjects of :func:`training_pairs`."""
    p.add_argument("--dataset", default=str(SHARED_DATA / "brain-synth-2mm/dataset.json"))
    p.add_argument("--subjects", default="1-12", help="training subjects, e.g. 1-12")
    p.add_argument("--offset", type=int, default=5, help="pair subject i with subject i+offset")


def training_pairs(subjects: str, offset: int) -> list[tuple[str, str]]:
    """``(fixed, moving)`` 4-digit ids: subject i with subject i + ``offset`` (wrapping) over
    the subjects ``lo-hi``."""
    lo, hi = (int(v) for v in subjects.split("-"))
    subs = [f"{i:04d}" for i in range(lo, hi + 1)]
    return [(subs[i], subs[(i + offset) % len(subs)]) for i in range(len(subs))]


def set_threads(threads: int | None) -> None:
    """Limit torch (and, for ANTs imported later, ITK) to ``threads`` CPU threads."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(int(threads))
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))


def interleaved_times(
    runs: Mapping[str, Callable[[], Any]], repeats: int
) -> dict[str, list[float]]:
    """Seconds of each callable, timed in turn (round ``r`` runs every one once) ``repeats``
    times after one warm-up call each: variants compared side by side share the machine's
    drifts."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def interleaved_medians(runs: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each callable (:func:`interleaved_times`)."""
    return {k: statistics.median(v) for k, v in interleaved_times(runs, repeats).items()}


#: columns of a before/after timing table (:func:`variant_rows`, :func:`write_variant_report`)
VARIANT_COLUMNS = [
    "part", "pass", "variant", "threads", "median_s", "ratio", "repeats", "max_abs_diff",
]  # fmt: skip


def variant_rows(
    part: str,
    pas: str,
    medians: Mapping[str, float],
    diff: float | None,
    threads: int,
    repeats: int,
) -> list[dict[str, Any]]:
    """Rows ``previous`` and ``current`` of one timed part: median seconds, the ratio to
    ``previous`` and, on the ``current`` row, the largest difference of the two outputs."""
    return [
        {
            "part": part,
            "pass": pas,
            "variant": variant,
            "threads": threads,
            "median_s": medians[variant],
            "ratio": medians[variant] / medians["previous"],
            "repeats": repeats,
            "max_abs_diff": diff if variant == "current" else 0.0,
        }
        for variant in ("previous", "current")
    ]


class VariantRecorder:
    """Collects :func:`variant_rows` of timed parts (``rows``); ``verbose`` also prints a line
    per part (medians, ratio and the largest difference of the two variants' outputs)."""

    def __init__(self, threads: int, repeats: int, verbose: bool = True) -> None:
        self.threads, self.repeats, self.verbose = threads, repeats, verbose
        self.rows: list[dict[str, Any]] = []

    def __call__(
        self, part: str, pas: str, medians: Mapping[str, float], diff: float | None
    ) -> None:
        self.rows.extend(variant_rows(part, pas, medians, diff, self.threads, self.repeats))
        if self.verbose:
            ratio = medians["current"] / medians["previous"]
            shown = "n/a" if diff is None else f"{diff:.2e}"
            print(
                f"{part} {pas}: {medians['previous']:.3f} s -> {medians['current']:.3f} s "
                f"({ratio:.2f}x), max diff {shown}",
                flush=True,
            )


def write_variant_report(
    out: str | os.PathLike[str], stem: str, rows: Sequence[Mapping[str, Any]], note: str
) -> str:
    """Write ``out/stem.csv`` and ``out/stem.md`` (``note``, then the table) of
    :func:`variant_rows` rows; returns the table."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / f"{stem}.csv", rows, VARIANT_COLUMNS)
    table = markdown_table(
        ["part", "pass", "variant", "median s", "ratio", "max abs diff"],
        [
            [
                r["part"],
                r["pass"],
                r["variant"],
                f"{r['median_s']:.3f}",
                f"{r['ratio']:.2f}",
                "" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}",
            ]
            for r in rows
        ],
    )
    atomic_write_text(folder / f"{stem}.md", note + "\n\n" + table)
    return table


def add_timing_args(p: argparse.ArgumentParser, threads: int, repeats: int, out: str) -> None:
    """``--dataset``, ``--pair`` (two training subjects of brain-synth-2mm), ``--threads``,
    ``--repeats`` and ``--out`` (default ``out`` under the repository) of a before/after timing
    script."""
    p.add_argument("--dataset", default=str(BRAIN_2MM))
    p.add_argument("--pair", default="0001,0006", help="two training subjects: fixed,moving")
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--out", default=str(REPO / out))


def brain_model_pair(dataset: str | os.PathLike[str], pair: str) -> tuple[Any, Any, Any, Any]:
    """The packaged ``brain`` model on the CPU and two brain-synth images on its grid.

    ``pair`` is ``"FFFF,MMMM"`` (training subjects, fixed then moving) of the Learn2Reg
    ``dataset``. Returns ``(model, info, fixed, moving)``, the images ``(1, 1, *S)`` normalised
    as the model expects."""
    from maxca.app import load_model
    from maxca.data.io import read_volume
    from maxca.inference.register import model_grid, model_input
    from maxca.models.preprocessing import Preprocessing

    subjects = pair.split(",")
    if len(subjects) != 2:
        raise SystemExit(f"--pair must be two subjects FIXED,MOVING, got {pair!r}")
    model, info = load_model("brain", "cpu")
    prep = Preprocessing.of(info)
    root = Path(dataset).parent
    vols = [read_volume(root / f"imagesTr/BRAIN_{s}_0000.nii.gz", "image") for s in subjects]
    grid = model_grid(vols[0], prep)
    fixed, moving = (model_input(v, grid, prep) for v in vols)
    return model, info, fixed, moving


def parse_subject_pairs(p: argparse.ArgumentParser, text: str) -> list[tuple[int, int]]:
    """``"3:14,14:3"`` -> ``[(3, 14), (14, 3)]`` (fixed, moving subject numbers); anything else
    ends the script through ``p.error`` (exit code 2, one line on stderr)."""
    try:
        pairs = [tuple(int(v) for v in item.split(":")) for item in text.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(len(pr) != 2 for pr in pairs):
        p.error(f"--pairs must be FIXED:MOVING subject numbers, got {text!r}")
    return [(pr[0], pr[1]) for pr in pairs]


def brain_benchmark_setup(dataset: str, model_name: str, threads: int) -> SimpleNamespace:
    """Threads, the Learn2Reg ``dataset`` and a model on the CPU for the per-pair brain scripts.

    Returns a namespace with ``ds`` (the dataset), ``root`` (its folder), ``labels`` (its
    evaluation labels), ``model``, ``info``, ``prep`` (the model's
    :class:`~maxca.models.preprocessing.Preprocessing`) and ``int_steps`` (its integration
    steps)."""
    from maxca.app import load_model
    from maxca.data.learn2reg import load_learn2reg
    from maxca.models.preprocessing import Preprocessing

    set_threads(threads)
    ds = load_learn2reg(dataset)
    model, info = load_model(model_name, "cpu")
    return SimpleNamespace(
        ds=ds,
        root=Path(dataset).parent,
        labels=list(ds.evaluation_labels),
        model=model,
        info=info,
        prep=Preprocessing.of(info),
        int_steps=int(getattr(model.config, "int_steps", 7)),
    )


def write_table_report(
    path: Path, preamble: str, header: Sequence[str], table: Sequence[Sequence[Any]]
) -> str:
    """Write ``preamble``, a blank line and the Markdown table of ``header``/``table`` to
    ``path`` (atomically), print it, and return the text."""
    text = preamble + "\n\n" + markdown_table(list(header), [list(r) for r in table])
    atomic_write_text(path, text)
    print(text)
    return text


SUBJECT_FOLDERS = {"image": "imagesTr", "label": "labelsTr", "mask": "masksTr"}


def subject_volume(env: SimpleNamespace, sub: int, kind: str) -> Any:
    """Subject ``sub``'s image, label map or brain mask (``kind``: ``"image"``, ``"label"``,
    ``"mask"``) of the dataset of :func:`brain_benchmark_setup`, as a
    :class:`~maxca.data.io.Volume` (label maps and masks read as labels)."""
    from maxca.data.io import read_volume

    path = env.root / SUBJECT_FOLDERS[kind] / f"{env.ds.name}_{sub:04d}_0000.nii.gz"
    return read_volume(path, "image" if kind == "image" else "label")


class GridScorer:
    """Scores flows of one brain pair on a model grid: the fixed and moving label maps and the
    fixed brain mask of subjects ``fixed``/``moving`` (:func:`subject_volume`) resampled onto
    ``grid`` (nearest neighbour).

    ``scorer(flow)`` with ``flow`` ``(1, 3, *grid.shape)`` voxels returns ``(dice, njd)``: the
    mean Dice over ``env.labels`` of the moving label map warped by nearest neighbour, and the
    % of non-positive Jacobian determinants inside the fixed brain (``brain``, a boolean
    ``grid.shape`` array)."""

    def __init__(self, env: SimpleNamespace, fixed: int, moving: int, grid: Any) -> None:
        from maxca.inference.register import resample_to_grid

        def on_grid(sub: int, kind: str) -> Any:
            return resample_to_grid(subject_volume(env, sub, kind), grid, "label")

        self.labels = env.labels
        self.fixed_labels = on_grid(fixed, "label")[0, 0].numpy()
        self.moving_labels = on_grid(moving, "label").float()
        self.brain = on_grid(fixed, "mask")[0, 0].numpy() > 0

    def __call__(self, flow: Any) -> tuple[float, float]:
        import torch

        from maxca.metrics import njd_percent
        from maxca.metrics.overlap import dice
        from maxca.spatial import warp

        with torch.no_grad():
            warped = warp(self.moving_labels, flow, mode="nearest")[0, 0].numpy()
        d = float(np.nanmean(list(dice(self.fixed_labels, warped, self.labels).values())))
        return d, njd_percent(flow[0].detach().numpy(), self.brain)


# ---------------------------------------------------------------------------------------------
# validation pairs and scoring
# ---------------------------------------------------------------------------------------------
def nan_mean_std(values: Iterable[float], ddof: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of the finite values (``(nan, nan)`` when there are none;
    the std is ``nan`` when fewer than ``ddof + 1`` values)."""
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    std = float(arr.std(ddof=ddof)) if arr.size > ddof else math.nan
    return float(arr.mean()), std


def summary_over_pairs(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean (and std over pairs, ``ddof = 0``) of the per-pair rows of one method."""
    out: dict[str, float] = {"n_pairs": float(len(rows))}
    for key in ("dice", "hd95", "njd_percent", "sdlogj", "seconds"):
        mean, std = nan_mean_std(r[key] for r in rows)
        out[f"{key}_mean"] = mean
        out[f"{key}_std"] = std
    return out


# ---------------------------------------------------------------------------------------------
# the 2-D setting: slices of the 3-D brain data, written as a Learn2Reg dataset
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def host_options(host: str, small: bool) -> dict[str, Any]:
    """The width options of ``host`` (``create_model(host, **options)``)."""
    if host not in WIDTHS:
        raise ValueError(f"unknown host {host!r}; expected one of {list(WIDTHS)}")
    return json.loads(json.dumps(WIDTHS[host]["small" if small else "full"]))  # a deep copy


def data_record(
    shape: Sequence[int], spacing: Sequence[float], normalise: str = "minmax"
) -> Preprocessing:
    """The preprocessing record of a model grid (what the trainer writes into a checkpoint)."""
    from maxca.models.preprocessing import Preprocessing

    return Preprocessing(
        shape=tuple(int(s) for s in shape),
        spacing=tuple(float(s) for s in spacing),
        spatial_dims=len(shape),
        in_channels=1,
        normalise=normalise,
        percentiles=(1.0, 99.0),
        resize="resample",
        label_ids=(),
        loss={
            "similarity": "ncc",
            "window": 9,
            "weights": {"similarity": 1.0, "diffusion": 1.0, "bending": 0.0, "dice": 0.0},
        },
    )


def fresh_checkpoint(
    path: str | os.PathLike[str],
    host: str,
    attention: str,
    shape: Sequence[int],
    spacing: Sequence[float],
    small: bool = False,
    seed: int = 0,
) -> Path:
    """Write an untrained checkpoint of ``host`` with ``attention`` on a model grid of
    ``shape`` at ``spacing`` mm (``create_model`` + ``save_checkpoint``)."""
    import torch

    from maxca.models import create_model
    from maxca.training import save_checkpoint

    torch.manual_seed(seed)
    model = create_model(
        host, spatial_dims=len(shape), attention=attention, **host_options(host, small)
    )
    return save_checkpoint(path, model, data=data_record(shape, spacing))


# ---------------------------------------------------------------------------------------------
# ANTs (optional)
# ---------------------------------------------------------------------------------------------
#: Named ANTsPy settings. ``SyN`` = ANTsPy's defaults (affine stage, then SyN with mutual
#: information, 40x20x0 iterations: no iteration at full resolution). ``SyN-CC`` = a stronger
#: setting: the same stages with local cross-correlation (radius 2) and 100x70x50 SyN
#: iterations. ``SyNCC`` and ``SyNOnly`` are ANTsPy's own named transforms.
ANTS_PRESETS: dict[str, dict[str, Any]] = {
    "SyN": {"type_of_transform": "SyN"},
    "SyN-CC": {
        "type_of_transform": "SyN",
        "syn_metric": "CC",
        "syn_sampling": 2,
        "reg_iterations": (100, 70, 50),
    },
    "SyNCC": {"type_of_transform": "SyNCC"},
    "SyNOnly": {"type_of_transform": "SyNOnly"},
}


def import_ants(threads: int | None = None) -> Any | None:
    """ANTsPy (``import ants``) or ``None`` when it is not installed (``pip install
    maxca[ants]``). ``threads`` sets ITK's thread count first."""
    if threads is not None:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))
    try:
        import ants  # type: ignore[import-not-found]
    except ImportError:
        return None
    return ants


@dataclass
class AntsOutput:
    """What :func:`ants_register` returns."""

    flow: np.ndarray
    seconds: float
    warped_labels: np.ndarray | None = None
    jacobian: np.ndarray | None = None
    files: dict[str, str] = field(default_factory=dict)


def ants_register(
    ants: Any,
    fixed: str | os.PathLike[str],
    moving: str | os.PathLike[str],
    workdir: str | os.PathLike[str],
    preset: Mapping[str, Any],
    moving_label: str | os.PathLike[str] | None = None,
    seed: int | None = 0,
    jacobian: bool = False,
) -> AntsOutput:
    """Register ``moving`` to ``fixed`` (image files) with ANTsPy and return our voxel flow.

    ``seconds`` times ``ants.registration`` alone. The forward transforms (SyN warp + affine)
    are then composed into one displacement field on the fixed grid
    (``ants.apply_transforms(..., compose=prefix)``) and converted by
    :func:`itk_field_to_voxel_flow`. With ``moving_label``, the label map is also warped by
    ANTs itself (``interpolator="genericLabel"``), a cross-check of the conversion; with
    ``jacobian``, ANTs' own Jacobian determinant of the composed field is returned too.
    """
    import inspect

    from maxca.data import read_volume

    fixed_vol = read_volume(fixed, "image")
    if fixed_vol.ndim == 2 and np.abs(fixed_vol.affine[2, :2]).max() > 1e-6:
        # ITK keeps only the x-y part of a 2-D NIfTI's orientation: slices whose in-plane axes
        # leave the x-y plane (sagittal, coronal) get a degenerate geometry there
        raise ValueError("ANTs on 2-D slices needs in-plane axes in the x-y plane (axial)")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    f_img = ants.image_read(str(fixed))
    m_img = ants.image_read(str(moving))
    kwargs = dict(preset)
    if seed is not None and "random_seed" in inspect.signature(ants.registration).parameters:
        kwargs["random_seed"] = int(seed)
    t0 = time.perf_counter()
    reg = ants.registration(f_img, m_img, outprefix=str(work / "reg_"), **kwargs)
    seconds = time.perf_counter() - t0
    composed = ants.apply_transforms(
        f_img, m_img, transformlist=reg["fwdtransforms"], compose=str(work / "fwd_")
    )
    if not composed or not Path(composed).is_file():
        raise RuntimeError(f"ANTs did not write the composed field {composed!r}")
    flow = read_itk_displacement(composed, fixed_vol.affine, fixed_vol.shape)
    out = AntsOutput(flow=flow, seconds=seconds, files={"field": str(composed)})
    if moving_label is not None:
        m_lab = ants.image_read(str(moving_label))
        warped = ants.apply_transforms(
            f_img, m_lab, transformlist=reg["fwdtransforms"], interpolator="genericLabel"
        )
        out.warped_labels = np.rint(warped.numpy()).astype(np.int64)
    if jacobian:
        jac = ants.create_jacobian_determinant_image(f_img, composed, do_log=False, geom=False)
        out.jacobian = np.asarray(jac.numpy(), dtype=np.float64)
    return out


# ---------------------------------------------------------------------------------------------
# tables and files
# ---------------------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` significant digits, NaN/None as ``-``."""
    if value is None or value == "":
        return "-"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{digits}g}"
    return str(value)


def pm(mean: float, std: float, digits: int = 3, signed: bool = False) -> str:
    """``mean ± std`` (just the mean when the std is undefined); ``signed``: ``+0.012``."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    sign = "+" if signed else ""
    if std is None or math.isnan(std):
        return f"{mean:{sign}.{digits}f}"
    return f"{mean:{sign}.{digits}f} ± {std:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table (first column left-aligned, the others right-aligned)."""
    align = [":---"] + ["---:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width plain-text table for the terminal."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def parse_model(text: str) -> tuple[str, Path]:
    """``LABEL=PATH`` or ``PATH`` (label = the folder name)."""
    if "=" in text:
        label, path = text.split("=", 1)
        return label.strip(), Path(path)
    return Path(text).name, Path(text)


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as committed results record it: relative to the repository root (a data set
    under ``../shared/data`` becomes ``../shared/data/...``), never the machine's absolute path.
    """
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    return Path(os.path.relpath(p.absolute(), REPO)).as_posix()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (the library's :mod:`maxca._atomic` helper)."""
    from maxca._atomic import atomic_write_text as write

    return write(path, text)


def _csv_value(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return value


def append_csv_row(path: str | os.PathLike[str], row: Mapping[str, Any]) -> Path:
    """Append one row to a CSV file (header written when the file is new)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    return path


def write_csv(
    path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> Path:
    """Write ``rows`` (missing keys empty, floats at full precision) atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k, "")) for k in columns})
    return atomic_write_text(path, buf.getvalue())


def read_csv(path: str | os.PathLike[str], numeric: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Rows of a CSV file (``[]`` when absent); columns in ``numeric`` become floats (empty ->
    NaN)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    keys = set(numeric)
    for row in rows:
        for k in keys & set(row):
            row[k] = float(row[k]) if row[k] not in ("", None) else math.nan
    return rows


def run_logged(fn: Callable[[], Any], what: str) -> tuple[Any, str]:
    """``(fn(), "ok")``, or ``(None, "error: ...")`` when ``fn`` raises (the message printed)."""
    try:
        return fn(), "ok"
    except Exception as exc:  # a benchmark cell failing must not stop the others
        text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        print(f"  {what} failed: {text}", flush=True)
        return None, f"error: {text}"
