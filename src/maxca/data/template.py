"""A small offline brain dataset made from the MNI152 template that nilearn ships in its wheel.

Used by ``maxca demo`` and by tests: no download, no GPU. Each synthetic "subject" is the
MNI152 2009 T1 template (and its tissue labels) deformed by a random smooth diffeomorphism,
with its own intensity gain/gamma, a smooth multiplicative bias field and noise. The result
is written in the Learn2Reg layout (``imagesTr/``, ``labelsTr/``, ``dataset.json``), so the
demo exercises the same code paths as a user's own data.

Labels (per hemisphere, split at the mid-sagittal plane x = 0 mm): 1/2 CSF left/right,
3/4 grey matter left/right, 5/6 white matter left/right.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maxca._atomic import atomic_write_text
from maxca._optional import require
from maxca.data.io import Volume, write_volume
from maxca.data.synth import random_bias_field, random_smooth_deformation
from maxca.data.transforms import resample_volume
from maxca.errors import MaxcaInputError
from maxca.spatial import warp

LABEL_NAMES = {
    0: "background",
    1: "CSF-left",
    2: "CSF-right",
    3: "GM-left",
    4: "GM-right",
    5: "WM-left",
    6: "WM-right",
}


@dataclass
class Template:
    """The template image (float 0..1) and its tissue label map on one grid."""

    image: Volume
    labels: Volume


def load_template(spacing_mm: float = 3.0, margin_vox: int = 2) -> Template:
    """Load the MNI152 2009 T1 template and GM/WM/brain-mask maps from nilearn's package data.

    The volume is cropped to the brain's bounding box (plus ``margin_vox``) and resampled to
    ``spacing_mm`` isotropic voxels. Labels: see the module docstring.
    """
    datasets = require("nilearn.datasets", "demo", "the demo template")
    t1 = datasets.load_mni152_template(resolution=2)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=2).get_fdata(), np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=2).get_fdata(), np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=2).get_fdata(), np.float32) > 0.5
    img = np.asarray(t1.get_fdata(), np.float32)
    img = np.where(mask, img, 0.0)
    img = img / max(float(np.percentile(img[mask], 99.5)), 1e-6)
    img = np.clip(img, 0, 1)
    csf = np.clip(1.0 - gm - wm, 0, 1)
    tissue = np.argmax(np.stack([csf, gm, wm]), axis=0) + 1  # 1 csf, 2 gm, 3 wm
    affine = np.asarray(t1.affine, np.float64)
    ii, jj, kk = np.meshgrid(*(np.arange(s) for s in img.shape), indexing="ij")
    x_mm = affine[0, 0] * ii + affine[0, 1] * jj + affine[0, 2] * kk + affine[0, 3]
    right = (x_mm > 0).astype(np.int64)  # RAS: +x is the subject's right
    labels = np.where(mask, 2 * (tissue - 1) + 1 + right, 0).astype(np.int16)
    # crop to the brain
    nz = np.argwhere(mask)
    lo = np.maximum(nz.min(0) - margin_vox, 0)
    hi = np.minimum(nz.max(0) + margin_vox + 1, img.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    image = Volume(img[sl].copy(), crop_affine)
    lab = Volume(labels[sl].copy(), crop_affine)
    if abs(spacing_mm - 2.0) > 1e-6:
        image = resample_volume(image, spacing=(spacing_mm,) * 3, kind="image")
        lab = resample_volume(lab, spacing=(spacing_mm,) * 3, kind="label")
    return Template(image, lab)


def synth_subject(
    template: Template,
    seed: int,
    magnitude_vox: float = 3.0,
    smoothness_vox: float = 8.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic subject: the template deformed by a random smooth diffeomorphism, with
    intensity gain/gamma, a multiplicative bias field and Gaussian noise.

    Returns ``(image float32 (*S), labels int16 (*S))`` on the template grid.
    """
    gen = torch.Generator().manual_seed(int(seed))
    shape = template.image.shape
    flow = random_smooth_deformation(shape, magnitude_vox, smoothness_vox, gen)[None]  # (1,3,*S)
    img = torch.from_numpy(np.ascontiguousarray(template.image.array, np.float32))[None, None]
    lab = torch.from_numpy(np.ascontiguousarray(template.labels.array).astype(np.int64))[None, None]
    img_w = warp(img, flow.to(img.dtype))[0, 0]
    lab_w = warp(lab, flow, mode="nearest")[0, 0]
    u = torch.rand(3, generator=gen)
    gain = 0.9 + 0.2 * float(u[0])
    gamma = 0.85 + 0.3 * float(u[1])
    noise_sd = 0.01 + 0.02 * float(u[2])
    bias = random_bias_field(shape, 0.15, gen)
    bias = torch.as_tensor(bias, dtype=torch.float32)
    out = gain * img_w.clamp_min(0) ** gamma * bias
    out = out + noise_sd * torch.randn(out.shape, generator=gen) * (lab_w > 0)
    return out.clamp(0, 1).numpy().astype(np.float32), lab_w.numpy().astype(np.int16)


def make_template_dataset(
    out_dir: str | os.PathLike[str],
    subjects: int = 8,
    spacing_mm: float = 3.0,
    seed: int = 0,
    magnitude_vox: float = 3.0,
    held_out_pairs: int = 1,
) -> Path:
    """Write a Learn2Reg-layout dataset of ``subjects`` synthetic subjects; return dataset.json.

    The last ``2 * held_out_pairs`` subjects are kept out of ``training`` and paired in
    ``registration_val`` as (fixed, moving).
    """
    if subjects < 2 + 2 * held_out_pairs:
        raise MaxcaInputError(
            f"subjects must be at least {2 + 2 * held_out_pairs} (2 for training plus 2 per "
            f"held-out pair), got {subjects}"
        )
    out = Path(out_dir)
    template = load_template(spacing_mm)
    entries = []
    for i in range(1, subjects + 1):
        image, labels = synth_subject(template, seed * 1000 + i, magnitude_vox)
        name = f"DEMO_{i:04d}_0000.nii.gz"
        write_volume(out / "imagesTr" / name, image, template.image.affine)
        write_volume(out / "labelsTr" / name, labels, template.image.affine, dtype=np.int16)
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    n_train = subjects - 2 * held_out_pairs
    held = entries[n_train:]
    pairs = [
        {"fixed": held[2 * k]["image"], "moving": held[2 * k + 1]["image"]}
        for k in range(held_out_pairs)
    ]
    meta = {
        "name": "DEMO",
        "description": "MNI152 2009 template (nilearn) with random smooth deformations",
        "tensorImageSize": {"0": "3D"},
        "tensorImageShape": {"0": list(template.image.shape)},
        "modality": {"0": "MR (synthetic T1w)"},
        "labels": {"0": {str(k): v for k, v in LABEL_NAMES.items()}},
        "evaluation_labels": [k for k in LABEL_NAMES if k],
        "numTraining": n_train,
        "training": entries[:n_train],
        "validation": held,
        "numRegistration_val": len(pairs),
        "registration_val": pairs,
    }
    return atomic_write_text(out / "dataset.json", json.dumps(meta, indent=2))
