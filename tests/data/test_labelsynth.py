"""Images synthesised from label maps: each augmentation's known answer or property, seeding,
the training-pair dataset, and the trainer's ``data.synth: labels`` mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from maxca.data.labelsynth import (
    LabelSynthConfig,
    SynthPairDataset,
    _thick_axis,
    deform_label_map,
    gaussian_blur,
    random_label_intensities,
    synthesize_image,
)
from maxca.errors import MaxcaInputError

# every random step off: the image is a pure lookup of the label's mean
FLAT = LabelSynthConfig(
    deform_vox=0.0, std_max=0.0, p_share=0.0, p_dark_background=0.0, blur_max=0.0,
    p_thick=0.0, bias_max=0.0, gamma_std=0.0, noise_max=0.0,
)  # fmt: skip


def _labels(shape=(20, 24, 16), seed: int = 0) -> torch.Tensor:
    """Nested boxes/blobs with ids {0, 2, 3, 17, 41} (non-contiguous, like FreeSurfer)."""
    label = torch.zeros(shape, dtype=torch.int64)
    grids = torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in shape), indexing="ij")
    c = [(s - 1) / 2 for s in shape]
    r = sum(((g - ci) / (s / 2.5)) ** 2 for g, ci, s in zip(grids, c, shape))
    label[r <= 1] = 2
    label[r <= 0.5] = 3
    label[(r <= 0.15)] = 17
    label[(grids[0] < c[0]) & (r <= 0.3) & (r > 0.15)] = 41
    return label


def _per_label_values(image: torch.Tensor, label: torch.Tensor) -> dict[int, torch.Tensor]:
    return {int(v): image[label == v] for v in torch.unique(label)}


def test_intensities_follow_the_labels() -> None:
    label = _labels()
    image = synthesize_image(label, 3, FLAT, normalise=None)
    values = _per_label_values(image, label)
    for v in values.values():  # constant inside each label
        assert torch.allclose(v, v[0].expand_as(v))
    means = sorted(float(v[0]) for v in values.values())
    assert len(set(np.round(means, 6))) == len(means)  # p_share=0: distinct with probability 1
    assert min(means) == 0.0 and max(means) == pytest.approx(1.0)  # min-max to [0, 1]


def test_within_label_spread_is_bounded_by_std_max() -> None:
    label = _labels((40, 40, 40))
    cfg = LabelSynthConfig(**{**FLAT.to_dict(), "std_max": 0.05, "p_dark_background": 1.0})
    g = torch.Generator().manual_seed(1)
    image = random_label_intensities(label, cfg, g)
    for key, v in _per_label_values(image, label).items():
        if key == 0:  # dark background: exactly zero, no spread
            assert torch.count_nonzero(v) == 0
        else:
            assert float(v.std()) <= 0.05 * 1.1


def test_labels_may_share_intensities() -> None:
    label = _labels()
    cfg = LabelSynthConfig(**{**FLAT.to_dict(), "p_share": 1.0})
    shared = 0
    for seed in range(10):
        values = _per_label_values(
            random_label_intensities(label, cfg, torch.Generator().manual_seed(seed)), label
        )
        means = [round(float(v[0]), 7) for v in values.values()]
        shared += len(set(means)) < len(means)
    assert shared >= 5


def test_zero_amplitude_deformation_is_the_identity() -> None:
    label = _labels()
    g = torch.Generator().manual_seed(0)
    assert torch.equal(deform_label_map(label, 0.0, 8.0, g), label)


def test_deformation_keeps_label_values_and_moves_boundaries() -> None:
    label = _labels((32, 32, 32))
    g = torch.Generator().manual_seed(0)
    out = deform_label_map(label, 3.0, 8.0, g)
    assert out.dtype == label.dtype and out.shape == label.shape
    assert set(torch.unique(out).tolist()) <= set(torch.unique(label).tolist())
    changed = float((out != label).float().mean())
    assert 0.005 < changed < 0.5
    # integrated on a grid every 2 voxels: nearly the same label map from the same draw
    g = torch.Generator().manual_seed(0)
    coarse = deform_label_map(label, 3.0, 8.0, g, integration_step=2)
    assert set(torch.unique(coarse).tolist()) <= set(torch.unique(label).tolist())
    assert float((coarse != out).float().mean()) < 0.25 * changed


def test_gaussian_blur_matches_scipy_and_keeps_constants() -> None:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(24, 20, 22)).astype(np.float32))
    ours = gaussian_blur(x, 1.3).numpy()
    ref = ndimage.gaussian_filter(x.numpy().astype(np.float64), 1.3, mode="nearest", truncate=3.0)
    # scipy's radius is int(truncate * sigma + 0.5) = 4, ours ceil(3 * sigma) = 4: same kernel
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    const = torch.full((10, 12), 0.7)
    torch.testing.assert_close(gaussian_blur(const, 2.0), const)
    torch.testing.assert_close(gaussian_blur(x, 0.0), x)  # sigma 0: untouched


def test_thick_slices_leave_an_image_constant_along_that_axis_unchanged() -> None:
    rng = np.random.default_rng(1)
    plane = torch.from_numpy(rng.normal(size=(16, 18)).astype(np.float32))
    image = plane[:, :, None].expand(16, 18, 20).contiguous()  # constant along axis 2
    torch.testing.assert_close(_thick_axis(image, 2, 3.0), image, atol=1e-5, rtol=0)
    varied = _thick_axis(image, 0, 3.0)  # along a varying axis: detail is lost
    assert float((varied - image).abs().mean()) > 0.05
    assert float(varied.std()) < float(image.std())


def test_bias_gamma_and_noise_change_contrast_but_keep_label_order() -> None:
    label = _labels((30, 30, 30))
    base = synthesize_image(label, 5, FLAT, normalise=None)
    gamma_only = LabelSynthConfig(**{**FLAT.to_dict(), "gamma_std": 0.5})
    varied = synthesize_image(label, 5, gamma_only, normalise=None)
    b = {k: float(v[0]) for k, v in _per_label_values(base, label).items()}
    v = {k: float(x[0]) for k, x in _per_label_values(varied, label).items()}
    assert sorted(b, key=b.get) == sorted(v, key=v.get)  # gamma is monotone
    assert any(abs(b[k] - v[k]) > 1e-3 for k in b)
    noisy = LabelSynthConfig(**{**FLAT.to_dict(), "noise_max": 0.05})
    image = synthesize_image(label, 5, noisy, normalise=None)
    resid = [float(x.std()) for x in _per_label_values(image, label).values() if x.numel() > 100]
    assert 0 < max(resid) <= 0.05 * 1.1
    biased = LabelSynthConfig(**{**FLAT.to_dict(), "bias_max": 0.3})
    image = synthesize_image(label, 6, biased, normalise=None)
    inside = _per_label_values(image, label)[2]
    assert float(inside.std()) > 1e-3  # the smooth field varies across a label


def test_same_seed_same_image_other_seed_other_image_2d_and_3d() -> None:
    for shape in ((40, 36), (20, 24, 16)):
        label = _labels(shape) if len(shape) == 3 else _labels((40, 36, 3))[:, :, 1]
        a = synthesize_image(label, 11)
        b = synthesize_image(label, 11)
        c = synthesize_image(label, 12)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
        assert a.shape == label.shape and a.dtype == torch.float32
        assert float(a.min()) == 0.0 and float(a.max()) == pytest.approx(1.0)


def test_bad_inputs() -> None:
    with pytest.raises(MaxcaInputError, match="integers"):
        synthesize_image(torch.zeros(4, 4, 4), 0)
    with pytest.raises(MaxcaInputError, match="2 or 3 axes"):
        synthesize_image(torch.zeros(4, dtype=torch.int64), 0)
    with pytest.raises(MaxcaInputError, match="p_thick"):
        LabelSynthConfig(p_thick=1.5)
    with pytest.raises(MaxcaInputError, match="thick_max"):
        LabelSynthConfig(thick_max=0.5)
    with pytest.raises(MaxcaInputError, match="deform_integration_step"):
        LabelSynthConfig(deform_integration_step=0)


# ---------------------------------------------------------------------------------------------
def test_synth_pair_dataset_draws_images_from_the_labels(tiny_dataset) -> None:
    ds = SynthPairDataset(tiny_dataset, seed=3, synth=FLAT, normalise=None)
    item = ds[0]
    for role in ("fixed", "moving"):
        image, label = item[role][0], item[f"{role}_label"][0]
        for v in _per_label_values(image, label).values():  # constant within each label
            assert torch.allclose(v, v[0].expand_as(v))
        original, _ = ds.load_subject(ds.pairs[0][0 if role == "fixed" else 1])
        assert not np.allclose(image.numpy(), original)  # not the image on disk
    again = SynthPairDataset(tiny_dataset, seed=3, synth=FLAT, normalise=None)[0]
    assert torch.equal(item["fixed"], again["fixed"])
    other = SynthPairDataset(tiny_dataset, seed=4, synth=FLAT, normalise=None)[0]
    assert not torch.equal(item["fixed"], other["fixed"])


def test_synth_pair_dataset_refuses_augment(tiny_dataset) -> None:
    with pytest.raises(MaxcaInputError, match="augment"):
        SynthPairDataset(tiny_dataset, augment=True)


def test_shared_pair_contrast_gives_both_images_the_same_label_intensities(tiny_dataset) -> None:
    flat = FLAT.to_dict()
    for mode, same in (("shared", True), ("independent", False)):
        cfg = LabelSynthConfig(**{**flat, "pair_contrast": mode})
        item = SynthPairDataset(tiny_dataset, seed=5, synth=cfg, normalise=None)[1]
        f = _per_label_values(item["fixed"][0], item["fixed_label"][0])
        m = _per_label_values(item["moving"][0], item["moving_label"][0])
        common = sorted(set(f) & set(m))
        equal = [bool(torch.allclose(f[k][0], m[k][0])) for k in common]
        assert all(equal) if same else not all(equal)
    with pytest.raises(MaxcaInputError, match="pair_contrast"):
        LabelSynthConfig(pair_contrast="joint")


def test_fixed_contrast_image_follows_the_table() -> None:
    from maxca.data.labelsynth import T2_LIKE, fixed_contrast_image

    label = torch.zeros(30, 30, 30, dtype=torch.int64)
    label[5:25, 5:25, 5:25] = 2  # white matter
    label[10:20, 10:20, 10:20] = 4  # ventricle
    image = fixed_contrast_image(label, T2_LIKE, 0, noise=0.0, blur=0.0)
    assert float(image[15, 15, 15]) == pytest.approx(1.0)  # fluid bright
    assert float(image[7, 7, 7]) == pytest.approx(0.30)  # white matter dark
    assert float(image[0, 0, 0]) == 0.0
    noisy = fixed_contrast_image(label, T2_LIKE, 0, noise=0.05, blur=0.0)
    assert 0.03 < float((noisy - image)[label == 2].std()) < 0.07


def test_p_real_mixes_in_the_images_as_read(tiny_dataset) -> None:
    from maxca.data.dataset import PairDataset

    plain = PairDataset(tiny_dataset, seed=2, use_labels=True, normalise=None)
    n = len(plain)
    for p, expect in ((1.0, "all"), (0.0, "none"), (0.5, "some")):
        cfg = LabelSynthConfig(**{**FLAT.to_dict(), "p_real": p})
        ds = SynthPairDataset(tiny_dataset, seed=2, synth=cfg, normalise=None)
        real = []
        for i in range(n):
            a, b = ds[i], plain[i]
            same = all(torch.equal(a[k], b[k]) for k in ("fixed", "moving", "moving_label"))
            real.append(same)
        if expect == "all":
            assert all(real)
        elif expect == "none":
            assert not any(real)
        else:
            assert any(real) and not all(real)
    # the draw has its own stream: synthesised pairs are those of p_real = 0
    cfg0 = LabelSynthConfig(**FLAT.to_dict())
    mixed = SynthPairDataset(
        tiny_dataset,
        seed=2,
        synth=LabelSynthConfig(**{**FLAT.to_dict(), "p_real": 0.5}),
        normalise=None,
    )
    pure = SynthPairDataset(tiny_dataset, seed=2, synth=cfg0, normalise=None)
    for i in range(n):
        a, b = mixed[i], plain[i]
        if not torch.equal(a["fixed"], b["fixed"]):
            assert torch.equal(a["fixed"], pure[i]["fixed"])
    with pytest.raises(MaxcaInputError, match="p_real"):
        LabelSynthConfig(p_real=1.5)
