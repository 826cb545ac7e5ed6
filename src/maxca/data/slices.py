"""2-D registration data cut out of 3-D volumes: slices of a Learn2Reg dataset, written as a
2-D Learn2Reg dataset with exact 2-D affines.

A slice keeps the world positions of its voxels: its affine's two columns are the in-plane
array axes of the volume (in order), the third the dropped axis, the origin the slice's first
voxel (:func:`slice_affine`). The plane is named by the world axis it is normal to (RAS:
x sagittal, y coronal, z axial) and found as the array axis closest to it (:func:`plane_axis`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from maxca._atomic import atomic_dir
from maxca.data.io import read_volume, write_volume
from maxca.data.learn2reg import l2r_case_id, load_learn2reg
from maxca.errors import MaxcaInputError

__all__ = [
    "PLANES",
    "build_slice_dataset",
    "plane_axis",
    "slice_affine",
    "slice_offsets",
]

PLANES = {"sagittal": 0, "coronal": 1, "axial": 2}  # the RAS world axis normal to the plane
SLICE_META = "slices.json"


def plane_axis(affine: np.ndarray, plane: str) -> int:
    """The array axis of a 3-D grid that is normal to ``plane`` (closest to the world axis:
    x for sagittal, y for coronal, z for axial)."""
    if plane not in PLANES:
        raise MaxcaInputError(f"plane must be one of {list(PLANES)}, got {plane!r}")
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
        raise MaxcaInputError(f"need n_slices >= 1 and step >= 1, got {n_slices}, {step}")
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
    rebuilt (:func:`maxca._atomic.atomic_dir`: in a temporary sibling folder, renamed into place
    when complete); a non-empty folder that is not a slice cache is never replaced.

    Returns:
        the path of the written ``dataset.json``.
    """
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
    if out.is_dir() and not (out / SLICE_META).is_file() and any(out.iterdir()):
        raise MaxcaInputError(f"{out} exists and is not a slice cache: not replacing it")
    with atomic_dir(out) as tmp:
        names: dict[tuple[Path, int], str] = {}
        axis = None
        indices: list[int] = []
        shape2d: list[int] = []
        for image_path, label_path in subjects.items():
            case = int(l2r_case_id(image_path))
            if case > 99:
                raise MaxcaInputError(f"case ids above 99 cannot be sliced: {image_path.name}")
            image = read_volume(image_path, "image", expected_ndim=3)
            label = None if label_path is None else read_volume(label_path, "label", 3)
            if axis is None:
                axis = plane_axis(image.affine, plane)
                middle = (image.shape[axis] - 1) // 2
                indices = [middle + o for o in slice_offsets(n_slices, step)]
                shape2d = [n for k, n in enumerate(image.shape) if k != axis]
                if min(indices) < 0 or max(indices) >= image.shape[axis]:
                    raise MaxcaInputError(
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
                f"of {src_json}, written by maxca.data.slices"
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
    return out / "dataset.json"
