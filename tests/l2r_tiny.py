"""A tiny synthetic 3-D Learn2Reg dataset laid out like brain-synth (LIA axes, 4-digit case ids,
``registration_val`` pairs with labels), shared by the tests of ``maxca.data.slices``,
``maxca.app.pairs`` and the benchmark harness. Built with the library's own writers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from maxca.data import random_smooth_deformation, write_volume
from maxca.spatial import warp

SHAPE = (20, 16, 24)  # axis0 R->L, axis1 S->I (axial slices are 20x24), axis2 P->A
SPACING = 2.0
LABELS = (1, 2, 3)


def lia_affine(spacing: float = SPACING, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """An affine with brain-synth's "LIA" axes, centred on the world origin."""
    a = np.zeros((4, 4))
    a[0, 0], a[2, 1], a[1, 2], a[3, 3] = -spacing, -spacing, spacing, 1.0
    a[:3, 3] = -a[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return a


def template(shape: tuple[int, ...] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Three nested/adjacent ellipsoids (labels 1, 2, 3) and an image of distinct intensities."""
    grids = np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij")
    c = [(s - 1) / 2 for s in shape]
    r = [(g - ci) for g, ci in zip(grids, c)]
    label = np.zeros(shape, np.uint8)
    label[(r[0] / 8) ** 2 + (r[1] / 6) ** 2 + (r[2] / 10) ** 2 <= 1] = 1
    label[((r[0] + 2) / 4) ** 2 + (r[1] / 4) ** 2 + ((r[2] - 2) / 5) ** 2 <= 1] = 2
    label[((r[0] - 3) / 3) ** 2 + (r[1] / 3) ** 2 + ((r[2] + 4) / 3) ** 2 <= 1] = 3
    image = np.choose(label, np.array([0.0, 0.5, 0.2, 1.0], np.float32)).astype(np.float32)
    return image, label


def make_tiny_dataset(root: Path, n: int = 6) -> Path:
    """``n`` deformed copies of the template as ``TINY_00NN_0000.nii.gz`` (NN = 1..n):
    training 1..n-2, ``registration_val`` (n, n-1), (n-1, n), (1, n-1)."""
    image, label = template()
    img_t = torch.from_numpy(image)[None, None]
    lab_t = torch.from_numpy(label.astype(np.int64))[None, None]
    affine = lia_affine()
    names = []
    for i in range(1, n + 1):
        flow = random_smooth_deformation(SHAPE, magnitude_vox=1.5, smoothness=8, generator=i)
        img = warp(img_t, flow[None])[0, 0].numpy()
        lab = warp(lab_t, flow[None], mode="nearest")[0, 0].numpy().astype(np.uint8)
        name = f"TINY_{i:04d}_0000.nii.gz"
        write_volume(root / "imagesTr" / name, img.astype(np.float32), affine)
        write_volume(root / "labelsTr" / name, lab, affine, dtype=np.uint8)
        names.append(name)

    def img(i: int) -> str:
        return f"./imagesTr/{names[i - 1]}"

    data = {
        "name": "TINY",
        "labels": {"0": {"0": "background", "1": "outer", "2": "inner", "3": "spot"}},
        "evaluation_labels": list(LABELS),
        "tensorImageShape": {"0": list(SHAPE)},
        "training": [
            {"image": img(i), "label": f"./labelsTr/{names[i - 1]}"} for i in range(1, n - 1)
        ],
        "registration_val": [
            {"fixed": img(n), "moving": img(n - 1)},
            {"fixed": img(n - 1), "moving": img(n)},
            {"fixed": img(1), "moving": img(n - 1)},
        ],
    }
    (root / "dataset.json").write_text(json.dumps(data, indent=1))
    return root / "dataset.json"
