"""Fixtures for the training tests: a tiny synthetic 2-D Learn2Reg dataset and the tiny config.

Subjects are one blob template (three nested/adjacent structures with distinct intensities)
deformed by different smooth random deformations, so a registration network can learn to align
them within a few steps and Dice over labels 1-3 is meaningful.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from maxca.data import random_smooth_deformation
from maxca.spatial import warp

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "tiny-2d.yaml"
SHAPE = (32, 32)


def _template(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D blob image (float32) and its label map (0 background, 1, 2, 3)."""
    y, x = np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij")
    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    label = np.zeros(shape, np.uint8)
    label[((y - cy) / 11) ** 2 + ((x - cx) / 9) ** 2 <= 1] = 1
    label[((y - cy + 3) / 4) ** 2 + ((x - cx) / 5) ** 2 <= 1] = 2
    label[((y - cy - 6) / 3) ** 2 + ((x - cx - 2) / 3) ** 2 <= 1] = 3
    image = np.choose(label, np.array([0.0, 0.5, 0.2, 1.0], np.float32)).astype(np.float32)
    return image, label


def make_blob_dataset(root: Path, n: int = 6, shape: tuple[int, int] = SHAPE) -> Path:
    """Write ``n`` deformed blob subjects and a dataset.json (``n - 2`` training subjects,
    validation pairs between the last two and the first one)."""
    image, label = _template(shape)
    img_t = torch.from_numpy(image)[None, None]
    lab_t = torch.from_numpy(label.astype(np.int64))[None, None]
    entries = []
    for i in range(n):
        flow = random_smooth_deformation(shape, magnitude_vox=2.0, smoothness=8, generator=i)
        warped = warp(img_t, flow[None])[0, 0].numpy().astype(np.float32)
        warped_label = warp(lab_t, flow[None], mode="nearest")[0, 0].numpy().astype(np.uint8)
        name = f"BLOB_{i:04d}_0000.nii.gz"
        for folder, array in (("imagesTr", warped), ("labelsTr", warped_label)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, np.eye(4)), str(root / folder / name))
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    data = {
        "name": "BLOB",
        "labels": {"0": {"0": "background", "1": "outer", "2": "inner", "3": "spot"}},
        "evaluation_labels": [1, 2, 3],
        "tensorImageShape": {"0": list(shape)},
        "training": entries[: n - 2],
        "registration_val": [
            {"fixed": entries[n - 1]["image"], "moving": entries[n - 2]["image"]},
            {"fixed": entries[0]["image"], "moving": entries[n - 1]["image"]},
        ],
    }
    (root / "dataset.json").write_text(json.dumps(data, indent=1))
    return root / "dataset.json"


@pytest.fixture(scope="session")
def blob_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dataset.json of a tiny blob dataset (written once per test session)."""
    return make_blob_dataset(tmp_path_factory.mktemp("blob"))


@pytest.fixture
def tiny_overrides(blob_dataset: Path, tmp_path: Path) -> list[str]:
    """Overrides that point the tiny config at the blob dataset and a fresh run directory."""
    return [f"data.path={blob_dataset}", f"run_dir={tmp_path / 'run'}"]
