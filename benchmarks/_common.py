"""Helpers shared by ``benchmarks/ablation.py``, ``baselines.py`` and ``speed.py`` (not a test).

What lives here, so that the three scripts measure the same thing the same way:

* **data**: the validation pairs of a Learn2Reg dataset (:func:`validation_pairs`,
  :func:`load_pairs`) and the 2-D slice dataset cut out of the 3-D brain data
  (:func:`build_slice_dataset`);
* **metrics**: one function scores every method, :func:`score_flow`: the moving label map is
  carried onto the fixed grid by a voxel flow with nearest neighbour through both affines and
  scored by :func:`maxca.inference.evaluate_flow` (Dice, HD95 in mm, % of voxels with
  ``det J <= 0``, SDlogJ; definitions in ``docs/metrics.md``);
* **ANTs**: importing ANTsPy when it is installed (:func:`import_ants`), its named settings
  (:data:`ANTS_PRESETS`), running it on one pair (:func:`ants_register`) and turning its
  displacement field (ITK, physical mm in ITK's LPS frame) into our voxel flow
  (:func:`itk_field_to_voxel_flow`);
* **models**: the host networks and their width presets (:data:`WIDTHS`), fresh untrained
  checkpoints (:func:`fresh_checkpoint`);
* **tables**: atomic CSV writing, Markdown tables, mean/std helpers.

Nothing here reimplements the library: training is :func:`maxca.training.train`, registration
:func:`maxca.inference.register_pair`, label warping :func:`maxca.inference.warp_volume`
and the metrics :mod:`maxca.metrics`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from maxca.models.checkpoint import CheckpointInfo
    from maxca.models.preprocessing import Preprocessing

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
    """``auto`` -> ``cuda`` when available, else ``cpu``; other names unchanged."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def set_threads(threads: int | None) -> None:
    """Limit torch (and, for ANTs imported later, ITK) to ``threads`` CPU threads."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(int(threads))
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))


def sync(device: str) -> None:
    """Wait for queued CUDA work (so a timer measures it); nothing on the CPU."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# validation pairs and scoring
# ---------------------------------------------------------------------------------------------
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
    fixed: Any
    moving: Any
    fixed_label: Any
    moving_label: Any

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
    from maxca.data import as_dataset
    from maxca.errors import MaxcaInputError
    from maxca.inference.evaluate import dataset_pairs, pair_name

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
    from maxca.data import as_dataset

    return list(as_dataset(dataset).evaluation_labels) or None


def load_pairs(pairs: Iterable[EvalPair]) -> list[LoadedPair]:
    """Read the images and label maps of every pair (2-D or 3-D as stored)."""
    from maxca.data import read_volume

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


def score_flow(pair: LoadedPair, flow: np.ndarray, labels: Sequence[int] | None) -> Any:
    """Score one registration given as a voxel flow ``(d, *S_f)`` on the fixed grid.

    The single metric path of every benchmark: :func:`maxca.inference.evaluate_flow`
    (moving labels warped with nearest neighbour through both affines; Dice, HD95 in mm,
    folding %, SDlogJ).

    Returns:
        a :class:`maxca.metrics.PairResult`.
    """
    from maxca.inference.evaluate import evaluate_flow

    return evaluate_flow(pair.fixed_label, pair.moving_label, flow, labels=labels, name=pair.name)


def identity_flow(pair: LoadedPair) -> np.ndarray:
    """The zero displacement of the fixed grid: affine pre-alignment only."""
    return np.zeros((pair.fixed.ndim, *pair.fixed.shape), dtype=np.float32)


def pair_row(result: Any, seconds: float | None = None) -> dict[str, Any]:
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
PLANES = {"sagittal": 0, "coronal": 1, "axial": 2}  # the RAS world axis normal to the plane
SLICE_META = "slices.json"


def plane_axis(affine: np.ndarray, plane: str) -> int:
    """The array axis of a 3-D grid that is normal to ``plane`` (closest to the world axis:
    x for sagittal, y for coronal, z for axial)."""
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {list(PLANES)}, got {plane!r}")
    row = np.abs(np.asarray(affine, dtype=np.float64)[PLANES[plane], :3])
    return int(np.argmax(row))


def slice_affine(affine: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 4x4 affine of the 2-D slice ``index`` along array ``axis`` of a 3-D grid: its two
    columns are the in-plane array axes (in order), the third the dropped axis, the origin the
    slice's first voxel."""
    a = np.asarray(affine, dtype=np.float64)
    keep = [k for k in range(3) if k != axis]
    out = np.eye(4)
    out[:3, 0] = a[:3, keep[0]]
    out[:3, 1] = a[:3, keep[1]]
    out[:3, 2] = a[:3, axis]
    out[:3, 3] = a[:3, 3] + a[:3, axis] * index
    return out


def slice_offsets(n_slices: int, step: int) -> list[int]:
    """``n_slices`` integer offsets ``step`` apart, centred on 0 (``[-6, -3, 0, 3, 6]``)."""
    if n_slices < 1 or step < 1:
        raise ValueError(f"need n_slices >= 1 and step >= 1, got {n_slices}, {step}")
    return [int(round(step * (j - (n_slices - 1) / 2))) for j in range(n_slices)]


def build_slice_dataset(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    plane: str = "axial",
    n_slices: int = 5,
    step: int = 3,
    split: str = "registration_val",
) -> Path:
    """Cut 2-D slices out of a 3-D Learn2Reg dataset and write them as a 2-D Learn2Reg dataset.

    Every subject of ``training`` and of the ``split`` pairs gives ``n_slices`` slices normal
    to ``plane``, ``step`` voxels apart around the middle of that axis (the same indices for
    every subject: the data are affinely aligned on one grid). Slice ``j`` of subject ``NN`` is
    case ``NNjj``: ``imagesTr/SLICE_NNjj_0000.nii.gz`` and ``labelsTr/`` the same. ``training``
    holds every slice of the training subjects; ``registration_val`` pairs slice ``j`` of the
    fixed subject with slice ``j`` of the moving one, for every source pair. Images keep their
    intensities (float32), label maps their ids, each slice its 2-D affine
    (:func:`slice_affine`), written with :func:`maxca.data.write_volume`.

    The folder is reused when its ``slices.json`` records the same source and parameters, else
    rebuilt (in a temporary sibling folder, renamed into place when complete).

    Returns:
        the path of the written ``dataset.json``.
    """
    from maxca.data import load_learn2reg, read_volume, write_volume
    from maxca.inference.export import l2r_case_id

    src = Path(source)
    src_json = src / "dataset.json" if src.is_dir() else src
    out = Path(out_dir)
    ds = load_learn2reg(src_json)
    pairs = list(getattr(ds, split))
    meta = {
        "source": str(src_json.resolve()),
        "plane": plane,
        "n_slices": int(n_slices),
        "step": int(step),
        "split": split,
        "format": 1,
    }
    if (out / SLICE_META).is_file() and (out / "dataset.json").is_file():
        try:
            old = json.loads((out / SLICE_META).read_text())
        except json.JSONDecodeError:
            old = None
        if isinstance(old, dict) and {k: old.get(k) for k in meta} == meta:
            return out / "dataset.json"

    subjects: dict[Path, Path | None] = {}
    for entry in ds.training:
        subjects[entry.image] = entry.label
    for f, m in pairs:
        for image in (f, m):
            subjects.setdefault(image, ds.label_for(image))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        names: dict[tuple[Path, int], str] = {}
        axis = None
        indices: list[int] = []
        shape2d: list[int] = []
        for image_path, label_path in subjects.items():
            case = int(l2r_case_id(image_path))
            if case > 99:
                raise ValueError(f"case ids above 99 cannot be sliced: {image_path.name}")
            image = read_volume(image_path, "image", expected_ndim=3)
            label = None if label_path is None else read_volume(label_path, "label", 3)
            if axis is None:
                axis = plane_axis(image.affine, plane)
                middle = (image.shape[axis] - 1) // 2
                indices = [middle + o for o in slice_offsets(n_slices, step)]
                shape2d = [n for k, n in enumerate(image.shape) if k != axis]
                if min(indices) < 0 or max(indices) >= image.shape[axis]:
                    raise ValueError(
                        f"{n_slices} slices {step} apart do not fit in {image.shape[axis]} voxels"
                    )
            for j, k in enumerate(indices):
                name = f"SLICE_{case:02d}{j:02d}_0000.nii.gz"
                names[(image_path, j)] = name
                aff = slice_affine(image.affine, axis, k)
                img2d = np.take(image.array, k, axis=axis).astype(np.float32)
                write_volume(tmp / "imagesTr" / name, img2d, aff)
                if label is not None:
                    lab2d = np.take(label.array, k, axis=axis)
                    write_volume(tmp / "labelsTr" / name, lab2d, aff, dtype=lab2d.dtype)
        assert axis is not None

        def entry(image_path: Path, j: int) -> dict[str, str]:
            name = names[(image_path, j)]
            item = {"image": f"./imagesTr/{name}"}
            if subjects[image_path] is not None:
                item["label"] = f"./labelsTr/{name}"
            return item

        data = {
            "name": f"{ds.name or 'DATA'}-2D-{plane}",
            "description": (
                f"{n_slices} {plane} slices (array axis {axis}, indices {indices}) per subject "
                f"of {src_json}, written by benchmarks/_common.py"
            ),
            "tensorImageSize": {"0": "2D"},
            "tensorImageShape": {"0": shape2d},
            "labels": {"0": {str(k): v for k, v in sorted(ds.label_names.items())}},
            "evaluation_labels": list(ds.evaluation_labels),
            "training": [entry(e.image, j) for e in ds.training for j in range(n_slices)],
            split: [
                {"fixed": entry(f, j)["image"], "moving": entry(m, j)["image"]}
                for f, m in pairs
                for j in range(n_slices)
            ],
        }
        (tmp / "dataset.json").write_text(json.dumps(data, indent=1))
        (tmp / SLICE_META).write_text(json.dumps({**meta, "axis": axis, "indices": indices}))
        if out.exists():
            if not (out / SLICE_META).is_file() and any(out.iterdir()):
                raise ValueError(f"{out} exists and is not a slice cache: not replacing it")
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out / "dataset.json"


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


def evaluate_model(
    model: Any,
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
    from maxca.inference import register_pair

    rows = []
    if warmup and pairs:
        p = pairs[0]
        register_pair(model, info, p.fixed, p.moving, device=device, refine_steps=refine_steps)
    for p in pairs:
        sync(device)
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
        sync(device)
        seconds = time.perf_counter() - t0
        row = pair_row(score_flow(p, result.flow, labels), seconds)
        row["network_s"] = result.timings.get("network", math.nan)
        rows.append(row)
    return rows


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


_RAS_LPS = np.diag([-1.0, -1.0, 1.0])


def itk_field_to_voxel_flow(
    field_image: Any,
    fixed_affine: np.ndarray | None = None,
    fixed_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """An ITK/ANTs displacement field on the fixed grid as our voxel flow ``(d, *S)``.

    An ITK field holds at fixed voxel ``p`` the physical displacement ``D`` (mm, in ITK's LPS
    frame) that maps the fixed point ``x(p)`` to the moving point ``x(p) + D``. With the field
    grid's voxel-to-physical matrix ``M = direction @ diag(spacing)`` the voxel displacement is
    ``u = M^-1 D``, which is the flow of ``docs/conventions.md`` (for 3-D grids
    ``M = diag(-1, -1, 1) @ A_f[:3, :3]``, the fixed RAS affine in LPS).

    Args:
        field_image: a SimpleITK vector image, or the path of one (``.nii.gz``, ``.mha``...).
        fixed_affine: the fixed RAS affine: for 3-D fields, checked against the field's own
            geometry (1e-3 mm / 1e-4 tolerance) so that a field of another grid is refused.
        fixed_shape: the fixed grid's shape, checked when given.

    Returns:
        ``(d, *S)`` float32 voxel displacement in our axis order.
    """
    import SimpleITK as sitk  # noqa: N813

    image = field_image
    if not isinstance(image, sitk.Image):
        image = sitk.ReadImage(str(field_image))
    d = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() != d:
        raise ValueError(
            f"expected a {d}-component displacement field, got "
            f"{image.GetNumberOfComponentsPerPixel()} components"
        )
    arr = sitk.GetArrayFromImage(image).astype(np.float64)  # (z, y, x, d) / (y, x, d)
    disp = np.moveaxis(arr, -1, 0).transpose(0, *range(d, 0, -1))  # (d, i, j[, k])
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(d, d)
    M = direction * spacing[None, :]
    shape = tuple(int(s) for s in image.GetSize())
    if fixed_shape is not None and tuple(int(s) for s in fixed_shape) != shape:
        raise ValueError(f"field grid {shape} differs from the fixed grid {tuple(fixed_shape)}")
    if fixed_affine is not None and d == 3:
        a = np.asarray(fixed_affine, dtype=np.float64)
        expected = _RAS_LPS @ a[:3, :3]
        origin = (_RAS_LPS @ a[:3, 3:4])[:, 0]
        if not (
            np.allclose(M, expected, atol=1e-4)
            and np.allclose(image.GetOrigin(), origin, atol=1e-3)
        ):
            raise ValueError("the displacement field's grid is not the fixed image's grid")
    u = np.tensordot(np.linalg.inv(M), disp, axes=1)
    return u.astype(np.float32)


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
    flow = itk_field_to_voxel_flow(composed, fixed_vol.affine, fixed_vol.shape)
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
