"""register_files: the files written are the registration's own arrays, and metrics.json is what
the scoring of maxca <= 0.1.0 (``pipeline.score_result``, now replaced by
``metrics.evaluate_pair``) wrote, recomputed here from the metric functions."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import torch
import torch.nn as nn

from maxca.app import register_files
from maxca.data.io import read_volume
from maxca.inference import register_pair
from maxca.metrics import dice, njd_percent, sdlogj
from maxca.models import RegistrationOutput
from maxca.models.preprocessing import Preprocessing
from maxca.spatial import warp

SHAPE = (14, 12, 10)


class WavyModel(nn.Module):
    """A stand-in network whose flow is a fixed smooth wave with some folding."""

    spatial_dims = 3

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> RegistrationOutput:
        idx = torch.meshgrid(
            *(torch.arange(n, dtype=torch.float32) for n in fixed.shape[2:]), indexing="ij"
        )
        flow = torch.stack(
            [
                2.5 * torch.sin(idx[1] / 1.5),
                1.5 * torch.cos(idx[0] / 2.0),
                torch.sin((idx[0] + idx[2]) / 3.0),
            ]
        )[None]
        return RegistrationOutput(flow=flow, warped=warp(moving, flow))


def _save(path, array, affine):
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def test_register_files_writes_the_registration_and_the_old_metrics(tmp_path):
    rng = np.random.default_rng(0)
    f_aff = np.array([[-2.0, 0, 0, 12], [0, 0, 2.0, -9], [0, -2.0, 0, 11], [0, 0, 0, 1]])
    m_aff = f_aff.copy()
    m_aff[:3, 3] += (1.0, -2.0, 0.5)  # the moving image lies on another grid
    fixed = rng.random(SHAPE).astype(np.float32)
    moving = np.roll(fixed, 1, axis=1)
    f_lab = ((fixed > 0.5).astype(np.int16) + 2 * (fixed > 0.8)).astype(np.int16)
    m_lab = ((moving > 0.5).astype(np.int16) + 2 * (moving > 0.8)).astype(np.int16)
    m_lab[0, 0, 0] = 9  # a label of the moving map only, in a corner
    paths = {
        "fixed": _save(tmp_path / "f.nii.gz", fixed, f_aff),
        "moving": _save(tmp_path / "m.nii.gz", moving, m_aff),
        "fixed_labels": _save(tmp_path / "fl.nii.gz", f_lab, f_aff),
        "moving_labels": _save(tmp_path / "ml.nii.gz", m_lab, m_aff),
    }
    prep = Preprocessing(shape=(10, 8, 6), normalise="minmax")
    out = tmp_path / "out"
    report = register_files(WavyModel(), prep, out=out, **paths)  # type: ignore[arg-type]

    volumes = {
        k: read_volume(p, "image" if "labels" not in k else "label") for k, p in paths.items()
    }
    result = register_pair(
        WavyModel(),
        prep,
        volumes["fixed"],
        volumes["moving"],
        volumes["moving_labels"],
        volumes["fixed_labels"],
    )
    flow = np.asarray(nib.load(str(out / "flow_voxel.nii.gz")).dataobj)[:, :, :, 0, :]
    np.testing.assert_array_equal(np.moveaxis(flow, -1, 0), result.flow)
    np.testing.assert_array_equal(read_volume(out / "warped.nii.gz").array, result.warped.array)
    warped_labels = read_volume(out / "warped_labels.nii.gz", "label").array
    np.testing.assert_array_equal(warped_labels, result.warped_labels.array)
    assert np.abs(result.flow).max() > 1.0  # a real deformation, not the identity

    # the reference: maxca 0.1.0's score_result, from the metric functions
    labels = sorted(
        int(v) for v in set(np.unique(f_lab).tolist()) | set(np.unique(m_lab).tolist()) if v
    )
    before = dice(f_lab, result.moving_on_fixed_grid("label"), labels)
    after = dice(f_lab, result.warped_labels.array, labels)
    assert math.isnan(after[9])  # label 9 left the fixed grid: scored NaN, kept in the list

    def clean(v):
        return float(v) if math.isfinite(float(v)) else None

    expected = {
        "labels": labels,
        "dice_before": clean(np.mean([v for v in before.values() if not math.isnan(v)])),
        "dice_after": clean(np.nanmean([after[k] for k in labels])),
        "njd_percent": clean(njd_percent(result.flow)),
        "sdlogj": clean(sdlogj(result.flow)),
        "per_label": {
            str(k): {"dice_before": clean(before[k]), "dice_after": clean(after[k])} for k in labels
        },
    }
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == expected
    assert metrics["njd_percent"] > 0  # the wave folds some voxels
    assert report.metrics == metrics
