"""Fixtures for the data tests: the shared example dataset and tiny synthetic datasets."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BRAIN_2MM = SHARED_DATA / "brain-synth-2mm"
AFFINE_2MM = np.array(
    [[-2.0, 0, 0, 79], [0, 0, 2, -128], [0, -2, 0, 97], [0, 0, 0, 1]], dtype=np.float64
)


@pytest.fixture
def brain_2mm() -> Path:
    """The shared 2 mm brain-synth folder (skips when the shared data are absent)."""
    if not (BRAIN_2MM / "dataset.json").is_file():
        pytest.skip(f"shared example data not found at {BRAIN_2MM}")
    return BRAIN_2MM


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
