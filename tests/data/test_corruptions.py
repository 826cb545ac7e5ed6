"""Known answers and properties of the graded corruptions (maxca.data.corruptions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import fft as sfft

from maxca.data.corruptions import (
    CORRUPTIONS,
    GHOST_PERIOD,
    LESION_CONTRAST,
    anatomy_deformation,
    apply_corruption,
    foreground_mask,
    lesion_weight,
    severity_levels,
    slab_range,
    smooth_bias_field,
    thick_slice_matrix,
)
from maxca.errors import MaxcaInputError
from maxca.spatial import jacobian_determinant

SHAPE = (20, 24, 16)


def phantom(shape=SHAPE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A float32 image of three nested boxes on a zero background, and its label map."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, dtype=np.int16)
    lab[3:-3, 3:-3, 3:-3] = 1
    lab[6:-6, 6:-6, 5:-5] = 2
    lab[8:12, 9:13, 6:10] = 5
    means = np.array([0.0, 0.4, 0.7, 0.0, 0.0, 1.0], dtype=np.float32)
    image = means[lab] + 0.02 * rng.standard_normal(shape).astype(np.float32) * (lab > 0)
    return image.astype(np.float32), lab


@pytest.mark.parametrize("name", list(CORRUPTIONS))
@pytest.mark.parametrize("as_tensor", [False, True])
def test_severity_zero_is_identity_and_types_kept(name: str, as_tensor: bool) -> None:
    image, lab = phantom()
    image = image + np.float32(0.05)  # no zero voxel, so that a missing slab is a change
    img = torch.from_numpy(image) if as_tensor else image
    labs = torch.from_numpy(lab) if as_tensor else lab
    out = apply_corruption(name, img, 0, seed=1, labels=labs, spacing=(2.0, 2.0, 2.0))
    assert type(out.image) is type(img)
    assert out.image is not img
    np.testing.assert_array_equal(np.asarray(out.image), image)
    np.testing.assert_array_equal(np.asarray(out.labels), lab)
    # every other severity keeps shape and dtype and is a real change
    for s in range(1, CORRUPTIONS[name].max_severity + 1):
        o = apply_corruption(name, img, s, seed=1, labels=labs, spacing=(2.0, 2.0, 2.0))
        assert type(o.image) is type(img) and tuple(o.image.shape) == SHAPE
        assert o.image.dtype == img.dtype
        assert not np.array_equal(np.asarray(o.image), image), (name, s)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_same_seed_same_result_and_levels_described(name: str) -> None:
    image, lab = phantom()
    a = apply_corruption(name, image, 2, seed=7, labels=lab, spacing=(2.0, 2.0, 2.0))
    b = apply_corruption(name, image, 2, seed=7, labels=lab, spacing=(2.0, 2.0, 2.0))
    np.testing.assert_array_equal(a.image, b.image)
    levels = severity_levels(name)
    assert len(levels) >= 5 and levels[0] == "clean"
    assert list(levels) == list(range(len(levels)))
    assert len(CORRUPTIONS[name].levels) == len(levels) - 1


def test_bad_name_and_severity_raise_one_line() -> None:
    image, lab = phantom()
    with pytest.raises(MaxcaInputError, match=r"unknown corruption 'blur'; expected one of"):
        apply_corruption("blur", image, 1)
    with pytest.raises(MaxcaInputError, match=r"unknown corruption 'blur'"):
        severity_levels("blur")
    for bad in (5, -1, 1.5, True, "2"):
        with pytest.raises(
            MaxcaInputError, match=r"severity of 'gaussian_noise' must be an integer in 0\.\.4"
        ):
            apply_corruption("gaussian_noise", image, bad)
    with pytest.raises(
        MaxcaInputError, match="'label_contrast' needs the image's label map, got labels=None"
    ):
        apply_corruption("label_contrast", image, 2)
    with pytest.raises(MaxcaInputError, match="labels must have the image's shape"):
        apply_corruption("gaussian_noise", image, 2, labels=lab[:-1])
    with pytest.raises(MaxcaInputError, match="spacing must be 3 positive values"):
        apply_corruption("thick_slices", image, 2, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(MaxcaInputError, match="image must be a 2-D or 3-D volume"):
        apply_corruption("gaussian_noise", image[None], 1)


@pytest.mark.parametrize("severity", [1, 2, 3, 4])
def test_gaussian_noise_snr_in_foreground(severity: int) -> None:
    image, lab = phantom((40, 40, 40))
    out = apply_corruption("gaussian_noise", image, severity, seed=3, labels=lab).image
    fg = lab > 0
    measured = image[fg].mean() / (out - image)[fg].std()
    assert measured == pytest.approx(CORRUPTIONS["gaussian_noise"].levels[severity - 1], rel=0.03)
    # without labels the foreground is image > 0.1 * p99: here the same voxels
    assert np.array_equal(foreground_mask(image).numpy(), fg)


def test_rician_noise_non_negative_biased_upward_with_requested_sigma() -> None:
    image, lab = phantom((40, 40, 40))
    snr = CORRUPTIONS["rician_noise"].levels[3]
    out = apply_corruption("rician_noise", image, 4, seed=2, labels=lab).image
    assert out.min() >= 0
    sigma = image[lab > 0].mean() / snr
    background = out[lab == 0]
    assert background.mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.03)
    # the second moment of a Rician variable is A^2 + 2 sigma^2
    bright = lab == 5
    a = image[bright]
    assert (out[bright] ** 2).mean() == pytest.approx((a**2).mean() + 2 * sigma**2, rel=0.03)


@pytest.mark.parametrize("severity", [1, 4])
def test_bias_field_positive_smooth_with_amplitude(severity: int) -> None:
    amp = CORRUPTIONS["bias_field"].levels[severity - 1]
    ones = np.ones(SHAPE, dtype=np.float64)
    field = apply_corruption("bias_field", ones, severity, seed=5).image
    assert field.min() > 0
    log_f = np.log(field)
    assert np.abs(log_f).max() == pytest.approx(math.log1p(amp), rel=1e-9)
    assert field.max() <= 1 + amp + 1e-12 and field.min() >= 1 / (1 + amp) - 1e-12
    # band-limited: only the three lowest DCT-I frequencies per axis carry energy
    coeff = sfft.dctn(log_f, type=1)
    low = np.abs(coeff[:3, :3, :3]).max()
    assert np.abs(coeff).max() == pytest.approx(low)
    high = coeff.copy()
    high[:3, :3, :3] = 0
    assert np.abs(high).max() < 1e-9 * low
    # the image is multiplied by the field
    image, lab = phantom()
    out = apply_corruption("bias_field", image, severity, seed=5, labels=lab).image
    np.testing.assert_allclose(out, image * field, rtol=1e-6)
    np.testing.assert_allclose(smooth_bias_field(SHAPE, 0.0, 1).numpy(), 1.0)


def test_gibbs_constant_unchanged_edge_overshoots() -> None:
    const = np.full(SHAPE, 3.5, dtype=np.float64)
    for s in range(1, 5):
        out = apply_corruption("gibbs_ringing", const, s).image
        np.testing.assert_allclose(out, const, rtol=1e-12)
    step = np.zeros((64, 8), dtype=np.float64)
    step[16:48] = 1.0
    out = apply_corruption("gibbs_ringing", step, 2).image
    assert out.max() > 1.05  # overshoot at the edge (about 9 % for a sharp truncation)
    assert out.min() < -0.05  # and undershoot outside
    np.testing.assert_allclose(out.mean(), step.mean(), atol=1e-12)  # DC kept
    # stronger truncation: wider ringing (more of the plateau deviates from 1)
    strong = apply_corruption("gibbs_ringing", step, 4).image
    assert np.abs(strong[16:48] - 1).mean() > np.abs(out[16:48] - 1).mean()


@pytest.mark.parametrize("severity", [1, 2, 3, 4])
def test_ghosting_energy_at_fov_over_n(severity: int) -> None:
    n = 32
    image = np.zeros((8, n, 6), dtype=np.float64)
    image[4, 10, 3] = 1.0  # a point
    phi = CORRUPTIONS["motion_ghosting"].levels[severity - 1]
    out = apply_corruption("motion_ghosting", image, severity, seed=severity).image
    ghost = 2 * math.sin(phi / 2) / GHOST_PERIOD
    for j in range(1, GHOST_PERIOD):
        assert out[4, (10 + j * n // GHOST_PERIOD) % n, 3] == pytest.approx(ghost, rel=1e-9)
    others = np.ones_like(out, dtype=bool)
    others[4, [(10 + j * n // GHOST_PERIOD) % n for j in range(GHOST_PERIOD)], 3] = False
    assert np.abs(out[others]).max() < 1e-12  # nothing anywhere else
    assert 0 < out[4, 10, 3] <= 1.0 + 1e-12
    # energy is conserved (Parseval: a unit-modulus factor on k-space lines)
    assert (out**2).sum() == pytest.approx(1.0, rel=1e-9)


def test_thick_slices_constant_along_axis_unchanged_and_blurs_across() -> None:
    rng = np.random.default_rng(0)
    plane = rng.uniform(0, 1, size=(10, 12, 1))
    image = np.repeat(plane, 30, axis=2)  # constant along axis 2
    for s in range(1, 5):
        out = apply_corruption("thick_slices", image, s, seed=s, spacing=(1.0, 1.0, 1.0)).image
        np.testing.assert_allclose(out, image, rtol=1e-12, atol=1e-12)
    # rows of the operator sum to one; a thicker slab smooths a profile more
    for t in (1.5, 3.0, 4.5):
        m = thick_slice_matrix(40, t, 0.3)
        np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
    profile = np.zeros((1, 1, 40))
    profile[..., 20] = 1.0
    thin = apply_corruption("thick_slices", profile, 1, seed=0, spacing=(1.0, 1.0, 1.0)).image
    thick = apply_corruption("thick_slices", profile, 4, seed=0, spacing=(1.0, 1.0, 1.0)).image
    assert thick.max() < thin.max() < 1.0
    # the thickness is in mm: 9 mm at 3 mm spacing equals 3 mm at 1 mm spacing (same seed)
    a = apply_corruption("thick_slices", profile, 4, seed=2, spacing=(1.0, 1.0, 3.0)).image
    b = apply_corruption("thick_slices", profile, 1, seed=2, spacing=(1.0, 1.0, 1.0)).image
    np.testing.assert_allclose(a, b, atol=1e-12)


def test_gamma_monotone_and_keeps_range() -> None:
    image, lab = phantom()
    order = np.argsort(image.ravel(), kind="stable")
    for s in range(1, 5):
        out = apply_corruption("contrast_gamma", image, s, seed=s).image
        assert np.all(np.diff(out.ravel()[order]) >= 0)
        assert out.min() == pytest.approx(image.min()) and out.max() == pytest.approx(image.max())


def test_label_contrast_constant_within_each_label() -> None:
    image, lab = phantom()
    out = apply_corruption("label_contrast", image, 4, seed=1, labels=lab).image
    fg = image[lab > 0]
    lo, hi = np.percentile(fg, [1, 99])
    means = []
    for lv in (1, 2, 5):
        vals = out[lab == lv]
        assert np.ptp(vals) < 1e-6
        assert lo - 1e-6 <= vals[0] <= hi + 1e-6
        means.append(vals[0])
    assert len(set(np.round(means, 6))) == 3
    np.testing.assert_array_equal(out[lab == 0], image[lab == 0])  # background kept
    # intermediate severity: the blend (1 - alpha) * image + alpha * m_l
    alpha = CORRUPTIONS["label_contrast"].levels[1]
    mid = apply_corruption("label_contrast", image, 2, seed=1, labels=lab).image
    for lv, m in zip((1, 2, 5), means):
        np.testing.assert_allclose(
            mid[lab == lv], (1 - alpha) * image[lab == lv] + alpha * m, atol=1e-6
        )


def test_missing_slab_zeroes_exactly_the_slab() -> None:
    image, lab = phantom()
    image = image + 1.0  # no zero voxel before
    for s in range(1, 5):
        frac = CORRUPTIONS["missing_slab"].levels[s - 1]
        out = apply_corruption("missing_slab", image, s, seed=s).image
        start, stop = slab_range(SHAPE[2], frac, s)
        assert stop - start == round(frac * SHAPE[2]) and (start == 0 or stop == SHAPE[2])
        assert np.all(out[:, :, start:stop] == 0)
        keep = np.ones(SHAPE[2], dtype=bool)
        keep[start:stop] = False
        np.testing.assert_array_equal(out[:, :, keep], image[:, :, keep])
    ends = {slab_range(30, 0.2, seed)[0] for seed in range(20)}
    assert ends == {0, 24}  # both ends of the axis occur


def test_lesion_changes_only_inside_blob() -> None:
    image, lab = phantom((32, 32, 32))
    sp = (2.0, 2.0, 2.0)
    for s in (1, 4):
        out = apply_corruption("synthetic_lesion", image, s, seed=4, labels=lab, spacing=sp).image
        changed = out != image
        assert changed.any()
        idx = np.argwhere(changed)
        extent_mm = (idx.max(0) - idx.min(0)) * np.array(sp)
        radius = CORRUPTIONS["synthetic_lesion"].levels[s - 1]
        assert np.all(extent_mm <= 2 * 1.25 * radius)
        centre = idx.mean(0)
        assert lab[tuple(np.round(centre).astype(int))] > 0 or s == 4  # sits in the foreground
        level = LESION_CONTRAST * np.percentile(image[lab > 0], 99)
        assert out.max() == pytest.approx(level, rel=1e-6)  # the core reaches the lesion level
    w = lesion_weight((21, 21), (10.0, 10.0), (4.0, 8.0)).numpy()
    assert w[10, 10] == 1.0 and w[10, 13] == 1.0 and w[14, 10] == 0.0 and w[10, 18] == 0.0
    assert 0 < w[13, 10] < 1 and w.min() == 0 and w.max() == 1


def test_extreme_anatomy_identity_labels_and_folding_free() -> None:
    image, lab = phantom((32, 32, 32))
    sp = (2.0, 2.0, 2.0)
    zero = anatomy_deformation((32, 32, 32), 0.0, sp, seed=1)
    assert torch.count_nonzero(zero) == 0
    top = CORRUPTIONS["extreme_anatomy"].max_severity
    for seed in range(3):
        out = apply_corruption("extreme_anatomy", image, top, seed=seed, labels=lab, spacing=sp)
        assert set(np.unique(out.labels)) <= set(np.unique(lab)) | {0}
        assert out.labels.dtype == lab.dtype
        assert not np.array_equal(out.labels, lab)
        flow = anatomy_deformation(
            (32, 32, 32), CORRUPTIONS["extreme_anatomy"].levels[-1], sp, seed
        )
        assert float(flow.abs().max()) > 3.0  # a large deformation (voxels)
        assert float(jacobian_determinant(flow[None]).min()) > 0  # folding-free
        # the image and the labels move together: each label keeps its intensity on average
        for lv in (1, 2, 5):
            inside = out.labels == lv
            assert abs(out.image[inside].mean() - image[lab == lv].mean()) < 0.1


def test_corruptions_work_in_2d() -> None:
    image, lab = phantom((24, 20, 16))
    image, lab = image[..., 8], lab[..., 8]
    for name in CORRUPTIONS:
        out = apply_corruption(name, image, 3, seed=0, labels=lab, spacing=(1.0, 1.0))
        assert out.image.shape == image.shape
