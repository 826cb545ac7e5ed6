"""Helpers for the inference tests: tiny volumes with flipped, anisotropic affines, tiny models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from maxca.data.io import Volume
from maxca.models import RegistrationOutput, create_model
from maxca.spatial import warp

SHAPE = (16, 20, 24)


def lia_affine(spacing=(1.5, 2.0, 1.2), origin=(20.0, 10.0, -15.0)) -> np.ndarray:
    """An "LIA" affine like the brain data: axis0 right->left (-x), axis1 superior->inferior
    (-z), axis2 posterior->anterior (+y), anisotropic spacing."""
    a = np.zeros((4, 4))
    a[0, 0] = -spacing[0]
    a[2, 1] = -spacing[1]
    a[1, 2] = spacing[2]
    a[:3, 3] = origin
    a[3, 3] = 1.0
    return a


def world_of(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``(3, *shape)`` world coordinates of every voxel centre (independent of the code tested)."""
    d = len(shape)
    idx = np.indices(shape, dtype=np.float64).reshape(d, -1)
    return (affine[:3, :d] @ idx + affine[:3, 3:4]).reshape(3, *shape)


def blobs(world: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """A smooth image of world coordinates ``(3, *S)``: two Gaussian blobs (sigma 5-6 mm)."""
    c = np.asarray(centre, dtype=np.float64).reshape(3, *([1] * (world.ndim - 1)))
    r1 = ((world - c - np.array([3.0, -2.0, 4.0]).reshape(c.shape)) ** 2).sum(0)
    r2 = ((world - c + np.array([4.0, 3.0, 2.0]).reshape(c.shape)) ** 2).sum(0)
    return (np.exp(-r1 / (2 * 6.0**2)) + 0.6 * np.exp(-r2 / (2 * 5.0**2))).astype(np.float32)


def centre_of(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    d = len(shape)
    return affine[:3, :d] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]


def blob_volume(affine: np.ndarray, shape: tuple[int, ...], centre: np.ndarray) -> Volume:
    return Volume(blobs(world_of(affine, shape), centre), affine)


def labels_of(image: np.ndarray, dtype=np.int16) -> np.ndarray:
    """Three labels (0, 7, 300) from intensity thresholds."""
    lab = np.zeros(image.shape, dtype=dtype)
    lab[image > 0.3] = 7
    lab[image > 0.7] = 300
    return lab


class KnownFlowModel(nn.Module):
    """A stand-in network that returns a known flow on the model grid.

    ``flow_fn(shape) -> (d, *shape)`` tensor; ``calls`` records the input shapes.
    """

    def __init__(self, flow_fn: Callable[[tuple[int, ...]], torch.Tensor], spatial_dims: int = 3):
        super().__init__()
        self.flow_fn = flow_fn
        self.spatial_dims = spatial_dims
        self.calls: list[tuple[int, ...]] = []
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> RegistrationOutput:
        shape = tuple(fixed.shape[2:])
        self.calls.append(shape)
        self.inputs.append((fixed.detach().clone(), moving.detach().clone()))
        flow = self.flow_fn(shape).to(fixed)[None]
        return RegistrationOutput(flow=flow, warped=warp(moving, flow))


class Info:
    """A minimal CheckpointInfo stand-in: only ``data`` is used."""

    def __init__(self, data: dict | None = None) -> None:
        self.data = data or {}
        self.path = Path("stub")


def tiny_model(spatial_dims: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return create_model(
        "pyramid_small",
        spatial_dims=spatial_dims,
        enc_channels=2,
        dec_channels=4,
        heads=1,
        region=2,
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny 3-D model with a 2 mm, 16x20x24 model grid."""
    from maxca.models.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "model"
    data = {"shape": [16, 20, 24], "spacing": [2.0, 2.0, 2.0], "normalise": "minmax"}
    save_checkpoint(path, tiny_model(3), data={**data, "spatial_dims": 3})
    return path
