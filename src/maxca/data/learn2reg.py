"""Learn2Reg ``dataset.json`` parsing and plain-folder datasets.

A Learn2Reg task folder holds ``imagesTr/``, ``labelsTr/``, ``masksTr/`` and a ``dataset.json``
whose paths are relative to the folder (``"./imagesTr/X_0000.nii.gz"``). :func:`load_learn2reg`
resolves them to absolute paths, checks that every referenced file exists and reports any
malformed field with the file and the key, e.g.
``.../dataset.json: training[3] has no 'image' key``.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maxca.data.io import NIFTI_EXTENSIONS, split_extension
from maxca.errors import MaxcaInputError

__all__ = [
    "ImageEntry",
    "Learn2RegDataset",
    "l2r_case_id",
    "load_folder",
    "load_learn2reg",
]


@dataclass(frozen=True)
class ImageEntry:
    """One subject: an image and, when available, its label map and mask (absolute paths)."""

    image: Path
    label: Path | None = None
    mask: Path | None = None


@dataclass
class Learn2RegDataset:
    """A registration dataset with resolved absolute paths.

    Attributes:
        root: folder the relative paths are resolved against.
        training: training subjects.
        registration_val: ``(fixed, moving)`` image pairs for validation.
        registration_test: ``(fixed, moving)`` image pairs for testing.
        evaluation_labels: label ids used for evaluation (``evaluation_labels`` in the json, else
            every non-zero id of ``labels``; empty for a folder dataset).
        label_names: ``{id: name}`` from ``labels`` (first modality).
        tensor_image_shape: spatial shape from ``tensorImageShape`` (first modality) or ``None``.
        validation: extra validation subjects (the non-standard ``validation`` key), if any.
        name: the dataset's ``name``.
    """

    root: Path
    training: list[ImageEntry]
    registration_val: list[tuple[Path, Path]] = field(default_factory=list)
    registration_test: list[tuple[Path, Path]] = field(default_factory=list)
    evaluation_labels: list[int] = field(default_factory=list)
    label_names: dict[int, str] = field(default_factory=dict)
    tensor_image_shape: tuple[int, ...] | None = None
    validation: list[ImageEntry] = field(default_factory=list)
    name: str = ""

    def entry_for(self, image: str | os.PathLike[str]) -> ImageEntry:
        """The entry of ``image`` (from ``training``/``validation``, else built on the fly).

        For an image without an entry, the label is the same file name under ``labelsTr/`` and
        the mask the same under ``masksTr/``, when those files exist.
        """
        image = Path(os.path.abspath(image))
        for entry in (*self.training, *self.validation):
            if entry.image == image:
                return entry
        label = self.root / "labelsTr" / image.name
        mask = self.root / "masksTr" / image.name
        return ImageEntry(
            image=image,
            label=label if label.is_file() else None,
            mask=mask if mask.is_file() else None,
        )

    def label_for(self, image: str | os.PathLike[str]) -> Path | None:
        """Label map of ``image``: its entry's ``label``, else ``labelsTr/<same name>`` if any."""
        return self.entry_for(image).label


def _resolve(root: Path, value: Any, where: str, json_path: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise MaxcaInputError(
            f"{json_path}: {where} must be a non-empty path string, got {value!r}"
        )
    path = Path(os.path.normpath(root / value))
    if not path.is_file():
        raise MaxcaInputError(f"{json_path}: {where} refers to a missing file: {path}")
    return path


def _objects(
    data: dict[str, Any], key: str, json_path: Path, required: tuple[str, ...]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, item)`` for every object of the list ``data[key]`` (absent: none), each
    checked to be an object with the ``required`` keys; a bare string is ``{"image": it}``
    (some tasks list test images as bare paths)."""
    items = data.get(key, [])
    if not isinstance(items, list):
        raise MaxcaInputError(f"{json_path}: '{key}' must be a list, got {type(items).__name__}")
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if isinstance(item, str) and required == ("image",):
            item = {"image": item}
        if not isinstance(item, dict):
            keys = " and ".join(f"'{k}'" for k in required)
            raise MaxcaInputError(
                f"{json_path}: {where} must be an object with {keys}, got {item!r}"
            )
        for k in required:
            if k not in item:
                raise MaxcaInputError(f"{json_path}: {where} has no '{k}' key")
        yield where, item


def _entries(data: dict[str, Any], key: str, root: Path, json_path: Path) -> list[ImageEntry]:
    entries = []
    for where, item in _objects(data, key, json_path, ("image",)):
        image = _resolve(root, item["image"], f"{where}.image", json_path)
        if item.get("label") is not None:
            label: Path | None = _resolve(root, item["label"], f"{where}.label", json_path)
        else:
            candidate = root / "labelsTr" / image.name
            label = candidate if candidate.is_file() else None
        mask = None
        if item.get("mask") is not None:
            mask = _resolve(root, item["mask"], f"{where}.mask", json_path)
        entries.append(ImageEntry(image=image, label=label, mask=mask))
    return entries


def _pairs(data: dict[str, Any], key: str, root: Path, json_path: Path) -> list[tuple[Path, Path]]:
    return [
        (
            _resolve(root, item["fixed"], f"{where}.fixed", json_path),
            _resolve(root, item["moving"], f"{where}.moving", json_path),
        )
        for where, item in _objects(data, key, json_path, ("fixed", "moving"))
    ]


def _first_modality(value: Any) -> Any:
    """``{"0": x}`` -> ``x`` (Learn2Reg keys most fields by modality); anything else unchanged."""
    if isinstance(value, dict) and value and all(str(k).isdigit() for k in value):
        first = value[sorted(value, key=int)[0]]
        if isinstance(first, (dict, list)):
            return first
    return value


def _label_names(data: dict[str, Any], json_path: Path) -> dict[int, str]:
    labels = _first_modality(data.get("labels", {}))
    if not isinstance(labels, dict):
        raise MaxcaInputError(
            f"{json_path}: 'labels' must map label ids to names, got {type(labels).__name__}"
        )
    names = {}
    for key, name in labels.items():
        try:
            names[int(key)] = str(name)
        except ValueError:
            raise MaxcaInputError(
                f"{json_path}: 'labels' key {key!r} is not an integer label id"
            ) from None
    return names


def _evaluation_labels(data: dict[str, Any], names: dict[int, str], json_path: Path) -> list[int]:
    if "evaluation_labels" not in data:
        return sorted(k for k in names if k != 0)
    value = data["evaluation_labels"]
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise MaxcaInputError(
            f"{json_path}: 'evaluation_labels' must be a list of integers, got {value!r}"
        )
    return [int(v) for v in value]


def _shape(data: dict[str, Any], json_path: Path) -> tuple[int, ...] | None:
    if "tensorImageShape" not in data:
        return None
    value = _first_modality(data["tensorImageShape"])
    if not isinstance(value, list) or not all(isinstance(v, int) and v > 0 for v in value):
        raise MaxcaInputError(
            f"{json_path}: 'tensorImageShape' must be a list of positive integers, "
            f"got {data['tensorImageShape']!r}"
        )
    return tuple(value)


def load_learn2reg(path: str | os.PathLike[str]) -> Learn2RegDataset:
    """Parse a Learn2Reg ``dataset.json`` (or the folder that contains it).

    Args:
        path: the json file, or its folder (then ``dataset.json`` inside it is read).

    Returns:
        a :class:`Learn2RegDataset` with absolute, existing paths.

    Raises:
        MaxcaInputError: missing file, invalid JSON, missing ``training``, an entry without
            ``image``, a pair without ``fixed``/``moving``, a referenced file that does not exist,
            or malformed ``labels``/``evaluation_labels``/``tensorImageShape``.
    """
    json_path = Path(path)
    if json_path.is_dir():
        json_path = json_path / "dataset.json"
    json_path = Path(os.path.abspath(json_path))
    if not json_path.is_file():
        raise MaxcaInputError(f"dataset file not found: {json_path}")
    repeated: list[str] = []

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                repeated.append(key)
            seen[key] = value
        return seen

    try:
        data = json.loads(json_path.read_text(encoding="utf-8"), object_pairs_hook=unique)
    except json.JSONDecodeError as exc:
        raise MaxcaInputError(
            f"{json_path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise MaxcaInputError(f"{json_path}: cannot read file ({exc})") from exc
    if not isinstance(data, dict):
        raise MaxcaInputError(
            f"{json_path}: expected a JSON object at top level, got {type(data).__name__}"
        )
    if repeated:  # JSON readers keep the last: say so rather than use it silently
        names = ", ".join(repr(k) for k in dict.fromkeys(repeated))
        warnings.warn(
            f"{json_path}: key(s) {names} given twice in one object; the last one is used",
            UserWarning,
            stacklevel=2,
        )
    if "training" not in data:
        raise MaxcaInputError(f"{json_path}: missing key 'training'")
    root = json_path.parent
    names = _label_names(data, json_path)
    return Learn2RegDataset(
        root=root,
        training=_entries(data, "training", root, json_path),
        registration_val=_pairs(data, "registration_val", root, json_path),
        registration_test=_pairs(data, "registration_test", root, json_path),
        evaluation_labels=_evaluation_labels(data, names, json_path),
        label_names=names,
        tensor_image_shape=_shape(data, json_path),
        validation=_entries(data, "validation", root, json_path),
        name=str(data.get("name", "")),
    )


def load_folder(
    folder: str | os.PathLike[str], labels_folder: str | os.PathLike[str] | None = None
) -> Learn2RegDataset:
    """A dataset from a plain folder of NIfTI images (sorted by name), all used as training.

    Args:
        folder: folder with ``*.nii``/``*.nii.gz`` images.
        labels_folder: optional folder holding a label map with the same file name for every
            image.

    Raises:
        MaxcaInputError: a missing folder, no NIfTI file in it, or an image without label map in
            ``labels_folder``.
    """
    folder = Path(os.path.abspath(folder))
    if not folder.is_dir():
        if folder.suffix.lower() == ".json":
            raise MaxcaInputError(
                f"dataset file not found: {folder} (expected a Learn2Reg dataset.json, a folder "
                "holding one, or a folder of NIfTI images; `maxca example-data example-data` "
                "writes an example dataset)"
            )
        if folder.exists():
            raise MaxcaInputError(f"not a dataset.json or a folder of NIfTI images: {folder}")
        raise MaxcaInputError(f"image folder not found: {folder}")
    images = sorted(
        p for p in folder.iterdir() if p.is_file() and split_extension(p)[1] in NIFTI_EXTENSIONS
    )
    if not images:
        raise MaxcaInputError(f"{folder}: no NIfTI images (.nii, .nii.gz) found")
    labels_dir = None
    if labels_folder is not None:
        labels_dir = Path(os.path.abspath(labels_folder))
        if not labels_dir.is_dir():
            raise MaxcaInputError(f"label folder not found: {labels_dir}")
    entries = []
    for image in images:
        label = None
        if labels_dir is not None:
            label = labels_dir / image.name
            if not label.is_file():
                raise MaxcaInputError(
                    f"{labels_dir}: no label map named {image.name} for image {image}"
                )
        entries.append(ImageEntry(image=image, label=label))
    return Learn2RegDataset(root=folder, training=entries, name=folder.name)


_L2R_NAME = re.compile(r"^(?:.*_)?(\d{4})_\d{4}$")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


def l2r_case_id(path: str | os.PathLike[str]) -> str:
    """The 4-digit Learn2Reg case id of an image file name.

    ``BRAIN_0013_0000.nii.gz`` -> ``"0013"`` (``<task>_<case>_<modality>``); a name ending in a
    number otherwise (``case7.nii.gz``) -> that number zero-padded (``"0007"``).

    Raises:
        MaxcaInputError: no case number in the name.
    """
    stem, _ = split_extension(path)
    match = _L2R_NAME.match(stem)
    if match:
        return match.group(1)
    match = _TRAILING_NUMBER.search(stem)
    if match:
        return f"{int(match.group(1)):04d}"
    raise MaxcaInputError(
        f"cannot find a case number in {Path(path).name!r} (expected e.g. TASK_0001_0000.nii.gz)"
    )
