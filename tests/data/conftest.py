"""Fixtures for the data tests: a brain-like 2 mm dataset and tiny synthetic datasets (all
built here: no test needs ../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

AFFINE_2MM = np.array(
    [[-2.0, 0, 0, 79], [0, 0, 2, -128], [0, -2, 0, 97], [0, 0, 0, 1]], dtype=np.float64
)
#: the grid of the brain-like dataset (the shared 2 mm data are 80x96x112 on the same affine)
BRAIN_SHAPE = (20, 24, 28)
#: 28 evaluation labels, FreeSurfer ids as in the shared brain-synth data
BRAIN_LABELS = [2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28,
                41, 42, 43, 44, 46, 47, 49, 50, 53, 60]  # fmt: skip
#: registration_val of the brain-like dataset: (fixed, moving) subject numbers
BRAIN_PAIRS = [(14, 13), (13, 14), (1, 13), (2, 14)]


def make_brain_like_dataset(root: Path, seed: int = 0) -> Path:
    """A small dataset laid out like the shared ``brain-synth-2mm`` (built here, so the tests
    that once needed ``../shared`` always run).

    14 subjects ``BRAIN_00NN_0000.nii.gz`` on ``BRAIN_SHAPE`` with the LIA 2 mm affine
    ``AFFINE_2MM`` (sform code 4, MNI): images stored as uint8 with a slope of 1/255 (values
    0..1, max 1), label maps (int16, the 28 ``BRAIN_LABELS`` in blocks plus background),
    brain masks; subjects 1-12 in ``training``, 13 and 14 in ``validation``;
    ``registration_val`` = ``BRAIN_PAIRS``. Returns the folder.
    """
    rng = np.random.default_rng(seed)
    training, validation = [], []
    for n in range(1, 15):
        name = f"BRAIN_{n:04d}_0000.nii.gz"
        labels = np.zeros(BRAIN_SHAPE, np.int16)
        # 28 slabs along the last axis, jittered per subject, background at the borders
        bounds = np.linspace(0, BRAIN_SHAPE[2], len(BRAIN_LABELS) + 1).astype(int)
        for k, lab in enumerate(BRAIN_LABELS):
            labels[2:-2, 2:-2, bounds[k] : bounds[k + 1]] = lab
        labels = np.roll(labels, int(rng.integers(-1, 2)), axis=0)
        image = np.where(labels > 0, 0.2 + 0.8 * (labels % 7) / 6.0, 0.0)
        image = image + rng.uniform(0, 0.05, BRAIN_SHAPE) * (labels > 0)
        image = np.clip(image / image.max(), 0, 1)
        stored = np.round(image * 255).astype(np.uint8)
        img = nib.Nifti1Image(stored, AFFINE_2MM)
        img.header.set_slope_inter(1 / 255, 0)
        img.set_sform(AFFINE_2MM, code=4)
        img.set_qform(AFFINE_2MM, code=4)
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        nib.save(img, str(root / "imagesTr" / name))
        write_nifti(root / "labelsTr" / name, labels, AFFINE_2MM)
        write_nifti(root / "masksTr" / name, (labels > 0).astype(np.uint8), AFFINE_2MM)
        entry = {
            "image": f"./imagesTr/{name}",
            "label": f"./labelsTr/{name}",
            "mask": f"./masksTr/{name}",
        }
        (training if n <= 12 else validation).append(entry)
    names = {str(lab): f"label-{lab}" for lab in BRAIN_LABELS}
    names.update({"0": "background", "17": "Left-Hippocampus"})
    meta = {
        "name": "BRAIN",
        "tensorImageShape": {"0": list(BRAIN_SHAPE)},
        "labels": {"0": names},
        "evaluation_labels": BRAIN_LABELS,
        "training": training,
        "validation": [{"image": e["image"]} for e in validation],
        "registration_val": [
            {
                "fixed": f"./imagesTr/BRAIN_{f:04d}_0000.nii.gz",
                "moving": f"./imagesTr/BRAIN_{m:04d}_0000.nii.gz",
            }
            for f, m in BRAIN_PAIRS
        ],  # fmt: skip
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return root


@pytest.fixture(scope="session")
def brain_2mm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A brain-like 2 mm Learn2Reg folder built for the tests (:func:`make_brain_like_dataset`)."""
    return make_brain_like_dataset(tmp_path_factory.mktemp("brain-2mm"))


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Plain nibabel write (independent of the code under test)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def make_tiny_dataset(root: Path, n: int = 4, shape=(6, 7, 8), seed: int = 0) -> Path:
    """A Learn2Reg-style folder with ``n`` subjects of ``shape`` and a dataset.json."""
    rng = np.random.default_rng(seed)
    training = []
    for i in range(n):
        name = f"TINY_{i:04d}_0000.nii.gz"
        image = rng.uniform(10, 200, size=shape).astype(np.float32)
        label = rng.choice(np.array([0, 3, 7], dtype=np.uint8), size=shape)
        write_nifti(root / "imagesTr" / name, image)
        write_nifti(root / "labelsTr" / name, label)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    data = {
        "name": "TINY",
        "labels": {"0": {"0": "background", "3": "three", "7": "seven"}},
        "tensorImageShape": {"0": list(shape)},
        "training": training,
        "registration_val": [
            {"fixed": training[0]["image"], "moving": training[1]["image"]},
            {"fixed": training[1]["image"], "moving": training[0]["image"]},
        ],
    }
    (root / "dataset.json").write_text(json.dumps(data))
    return root / "dataset.json"


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Path of the dataset.json of a 4-subject 6x7x8 dataset with labels {0, 3, 7}."""
    return make_tiny_dataset(tmp_path / "tiny")
