"""Normalisation, crop/pad, resampling and augmentation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from maxca.data.io import Volume
from maxca.data.transforms import (
    AugmentConfig,
    affine_warp,
    augment,
    crop_or_pad,
    crop_or_pad_volume,
    normalise_intensity,
    random_affine,
    random_flip,
    random_intensity,
    resample_volume,
    undo_crop_or_pad,
)
from maxca.errors import MaxcaInputError

from .conftest import AFFINE_2MM


def world(affine: np.ndarray, index: Sequence[float] | np.ndarray) -> np.ndarray:
    p = np.zeros(4)
    p[: len(index)] = index
    p[3] = 1
    return (affine @ p)[:3]


def test_normalisation_known_values() -> None:
    x = np.array([[2.0, 4.0], [6.0, 10.0]])
    np.testing.assert_allclose(normalise_intensity(x, "minmax"), [[0, 0.25], [0.5, 1.0]])
    z = normalise_intensity(x, "zscore")
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-6
    ramp = np.arange(101, dtype=np.float32)  # p1 = 1, p99 = 99
    p = normalise_intensity(ramp, "percentile")
    assert p[0] == 0 and p[1] == 0 and p[-1] == 1 and p[-2] == 1
    np.testing.assert_allclose(p[50], 49 / 98, rtol=1e-6)
    mask = np.array([[True, True], [False, False]])
    np.testing.assert_allclose(normalise_intensity(x, "minmax", mask=mask), [[0, 1], [2, 4]])
    assert (normalise_intensity(np.full((3, 3), 5.0), "zscore") == 0).all()
    with pytest.raises(MaxcaInputError, match="normalisation must be one of"):
        normalise_intensity(x, "max")  # type: ignore[arg-type]


@pytest.mark.parametrize("target", [(9, 10, 3), (4, 7, 8), (6, 6, 6)])
def test_crop_or_pad_undo(target: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 7, 5)).astype(np.float32)
    out, record = crop_or_pad(x, target)
    assert out.shape == (2, *target)
    back = undo_crop_or_pad(out, record)
    assert back.shape == x.shape
    # every voxel that survived comes back exactly, the cropped ones are 0
    kept = undo_crop_or_pad(np.ones_like(out), record).astype(bool)
    np.testing.assert_array_equal(back[kept], x[kept])
    assert (back[~kept] == 0).all()
    if all(t >= s for t, s in zip(target, x.shape[1:])):
        np.testing.assert_array_equal(back, x)
    # centred: odd remainder goes to the end
    out_t, rec_t = crop_or_pad(torch.from_numpy(x), target)
    np.testing.assert_array_equal(out_t.numpy(), out)
    assert rec_t == record


def test_crop_or_pad_offsets_and_affine() -> None:
    x = np.arange(5.0)
    out, rec = crop_or_pad(x, (8,), value=-1)
    np.testing.assert_array_equal(out, [-1, 0, 1, 2, 3, 4, -1, -1])
    out, rec = crop_or_pad(x, (2,))
    np.testing.assert_array_equal(out, [1, 2])
    vol = Volume(np.zeros((6, 7, 5), np.float32), AFFINE_2MM)
    cropped, rec = crop_or_pad_volume(vol, (4, 9, 5))
    # the same data voxel has the same world position before and after
    for p_in in [(1, 0, 0), (3, 2, 4)]:
        p_out = tuple(np.add(p_in, rec.offset))
        np.testing.assert_allclose(world(cropped.affine, p_out), world(vol.affine, p_in))
    with pytest.raises(MaxcaInputError, match="expected trailing shape"):
        undo_crop_or_pad(np.zeros((3, 3, 3)), rec)


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({"shape": (5, 4, 7)}, (5, 4, 7)),
        ({"spacing": 3.0}, (7, 5, 5)),
        ({"shape": (20, 6, 7)}, None),
    ],
)
def test_resample_keeps_physical_centre(kwargs: dict, shape: tuple[int, ...] | None) -> None:
    rng = np.random.default_rng(0)
    vol = Volume(rng.uniform(size=(10, 8, 7)).astype(np.float32), AFFINE_2MM)
    out = resample_volume(vol, **kwargs)
    if shape is not None:
        assert out.shape == shape
    centre_in = world(vol.affine, (np.array(vol.shape) - 1) / 2)
    centre_out = world(out.affine, (np.array(out.shape) - 1) / 2)
    np.testing.assert_allclose(centre_out, centre_in, atol=1e-9)
    if "shape" in kwargs:  # the physical extent (cells) is kept
        extent_in = np.array(vol.spacing) * vol.shape
        np.testing.assert_allclose(np.array(out.spacing) * out.shape, extent_in)
    else:
        np.testing.assert_allclose(out.spacing, (3.0, 3.0, 3.0))
    # orientation (direction cosines) is kept
    np.testing.assert_allclose(
        out.affine[:3, :3] / out.spacing, vol.affine[:3, :3] / vol.spacing, atol=1e-12
    )


def test_resample_values() -> None:
    # a linear ramp is reproduced exactly by linear interpolation (no antialias: up-sampling)
    ramp = np.broadcast_to(np.arange(6.0)[:, None], (6, 4)).astype(np.float32)
    up = resample_volume(Volume(ramp, np.eye(4)), shape=(12, 4))
    # new voxel j sits at old index (j + 0.5) / 2 - 0.5, clamped at the borders
    expected = np.clip((np.arange(12) + 0.5) / 2 - 0.5, 0, 5)
    np.testing.assert_allclose(up.array[:, 0], expected, atol=1e-6)
    # labels: nearest, dtype kept, only existing values
    labels = np.random.default_rng(1).choice(np.array([0, 4, 9], np.uint8), size=(9, 8, 7))
    out = resample_volume(Volume(labels, np.eye(4)), shape=(5, 11, 4), kind="label")
    assert out.array.dtype == np.uint8
    assert set(np.unique(out.array)) <= {0, 4, 9}
    with pytest.raises(MaxcaInputError, match="exactly one of shape or spacing"):
        resample_volume(Volume(labels, np.eye(4)))


def test_affine_warp_rot90_and_identity() -> None:
    x = torch.arange(25, dtype=torch.float32).reshape(1, 5, 5)
    lab = torch.arange(25).reshape(1, 5, 5)
    rot = np.array([[0.0, -1.0], [1.0, 0.0]])  # out[p] = in[c + R (p - c)]
    out, out_lab = affine_warp(x, rot, lab)
    expected = np.rot90(x[0].numpy(), k=-1)  # out[i, j] = in[4 - j, i]
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-4)
    np.testing.assert_array_equal(out_lab[0].numpy(), expected.astype(np.int64))
    assert out_lab.dtype == torch.int64
    # a translation by +1 voxel along axis 1 in 3-D
    vol = torch.rand(1, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    moved, _ = affine_warp(vol, np.eye(3), translation=(0, 1, 0))
    torch.testing.assert_close(moved[:, :, :-1], vol[:, :, 1:], atol=1e-5, rtol=0)


def test_random_affine_zero_range_is_identity_and_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 6, 7, 8, generator=g)
    lab = torch.randint(0, 3, (1, 6, 7, 8), generator=g)
    same, same_lab = random_affine(img, lab, torch.Generator(), rotation_deg=0, scale=0)
    torch.testing.assert_close(same, img, atol=1e-5, rtol=0)
    assert torch.equal(same_lab, lab)
    a, la = random_affine(img, lab, torch.Generator().manual_seed(5), rotation_deg=8, scale=0.1)
    b, lb = random_affine(img, lab, torch.Generator().manual_seed(5), rotation_deg=8, scale=0.1)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.allclose(a, img)
    assert set(torch.unique(la).tolist()) <= {0, 1, 2}


def test_random_flip_consistent_and_label_swap() -> None:
    img = torch.arange(12.0).reshape(1, 3, 4)
    lab = torch.tensor([[[1, 1, 2, 2]] * 3])
    out, out_lab = random_flip(
        img, lab, torch.Generator(), axes=[1], p=1.0, label_swap={1: 2, 2: 1}
    )
    assert torch.equal(out, torch.flip(img, [2]))
    assert torch.equal(out_lab, lab)  # flipped [2, 2, 1, 1] and swapped back to [1, 1, 2, 2]
    none, _ = random_flip(img, None, torch.Generator(), p=0.0)
    assert torch.equal(none, img)
    with pytest.raises(MaxcaInputError, match=r"flip axes must be in \[0, 1\]"):
        random_flip(img, None, axes=[2])


def test_random_intensity_and_augment() -> None:
    img = torch.rand(1, 5, 6, 7, generator=torch.Generator().manual_seed(1))
    a = random_intensity(img, torch.Generator().manual_seed(2))
    b = random_intensity(img, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and a.shape == img.shape and a.dtype == img.dtype
    assert not torch.equal(a, img)
    # gamma only keeps the range and the order of intensities
    g = random_intensity(img, torch.Generator().manual_seed(3), gamma=0.5, gain=0, noise_std=0)
    torch.testing.assert_close(g.amin(), img.amin())
    torch.testing.assert_close(g.amax(), img.amax())
    assert torch.equal(torch.argsort(g.flatten()), torch.argsort(img.flatten()))
    lab = (img > 0.5).long()
    cfg = AugmentConfig(flip_axes=(0,), rotation_deg=3)
    x1, l1 = augment(img, lab, torch.Generator().manual_seed(4), cfg)
    x2, l2 = augment(img, lab, torch.Generator().manual_seed(4), cfg)
    assert torch.equal(x1, x2) and torch.equal(l1, l2) and l1.dtype == torch.int64
    with pytest.raises(MaxcaInputError, match="does not match image shape"):
        augment(img, lab[:, :2], None, cfg)


def test_normalize_intensity_is_a_deprecated_alias() -> None:
    from maxca.data.transforms import normalize_intensity

    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    with pytest.warns(DeprecationWarning, match="use normalise_intensity"):
        old = normalize_intensity(x, "zscore")
    np.testing.assert_array_equal(old, normalise_intensity(x, "zscore"))
