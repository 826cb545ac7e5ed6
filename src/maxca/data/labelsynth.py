"""Training images synthesised from label maps alone (contrast-agnostic training).

Each training volume is drawn afresh from a label map (SynthMorph-style, Hoffmann et al., IEEE
TMI 2022; our own implementation):

1. optionally deform the label map with a random smooth diffeomorphism (nearest-neighbour
   resampling, so it stays a label map);
2. give every label a random mean intensity and spread (labels may share or swap intensities),
   with the background dark with probability ``p_dark_background`` (skull-stripped scans);
3. partial-volume blur (Gaussian, random sigma), random down-sampling of one axis and back
   (thick slices / anisotropic resolution);
4. multiply by a random smooth bias field, apply a random gamma, add Gaussian noise;
5. normalise the intensities as at inference (``normalise``: min-max, percentile, z-score).

Every draw comes from a ``torch.Generator``, so a volume is a pure function of its seed.
Arrays are ``(*S)`` in the file's voxel order (``docs/conventions.md``); intensities before
normalisation lie in ``[0, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from maxca.data.dataset import PairDataset
from maxca.data.synth import as_generator, random_bias_field, random_smooth_deformation
from maxca.data.transforms import normalise_intensity
from maxca.errors import MaxcaInputError
from maxca.spatial import warp

__all__ = [
    "LabelSynthConfig",
    "SynthPairDataset",
    "T2_LIKE",
    "deform_label_map",
    "fixed_contrast_image",
    "gaussian_blur",
    "random_label_intensities",
    "synthesize_image",
]

_INTERP = {2: "bilinear", 3: "trilinear"}
PAIR_CONTRASTS = ("independent", "shared")


@dataclass(frozen=True)
class LabelSynthConfig:
    """Ranges of the random draws of :func:`synthesize_image` (each drawn uniformly).

    Attributes:
        deform_vox: largest velocity component of the random deformation of each label map,
            in voxels (the amplitude is drawn in ``[0, deform_vox]``; 0 disables it).
        deform_smoothness: control-point spacing of that deformation, in voxels.
        deform_integration_step: the deformation's velocity is integrated on a grid with one
            point every ``deform_integration_step`` voxels and its displacement interpolated
            back (:func:`maxca.data.synth.random_smooth_deformation`): 2 integrates 8x fewer
            voxels in 3-D (0.33 s instead of 1.56 s per 80x96x112 label map on one thread,
            mean difference 0.01 voxel); 1 integrates on the full grid.
        mean_range: range of each label's mean intensity.
        std_max: largest within-label standard deviation (drawn in ``[0, std_max]``).
        p_share: probability that a label copies the mean of another random label.
        p_dark_background: probability that label 0 is given intensity 0 (skull-stripped scans).
        blur_max: largest partial-volume blur sigma, in voxels.
        p_thick: probability of down-sampling one random axis and back.
        thick_max: largest down-sampling factor of that axis (drawn in ``[1, thick_max]``).
        bias_max: largest log-domain strength of the smooth multiplicative bias field.
        gamma_std: standard deviation of ``log(gamma)``.
        noise_max: largest noise standard deviation, relative to the ``[0, 1]`` range.
        pair_contrast: ``"independent"``: the two images of a training pair get independent
            random contrasts (SynthMorph's choice: cross-contrast pairs; needs a label loss
            only); ``"shared"``: both get the same per-label means and spreads (every other
            draw stays independent), so an intensity similarity such as NCC can be trained
            alongside Dice: contrast-agnostic for same-contrast pairs.
        p_real: probability that a training pair uses the two subjects' own images and label
            maps as read (no synthesis, no random deformation) instead of synthesised ones:
            mixes the acquired contrast into contrast-agnostic training. 0 (default): every
            pair is synthesised. The draw has its own random stream, so 0 reproduces the
            draws of a configuration without this option.
    """

    deform_vox: float = 3.0
    deform_smoothness: float = 12.0
    deform_integration_step: int = 2
    mean_range: tuple[float, float] = (0.0, 1.0)
    std_max: float = 0.1
    p_share: float = 0.2
    p_dark_background: float = 0.8
    blur_max: float = 1.0
    p_thick: float = 0.5
    thick_max: float = 3.0
    bias_max: float = 0.3
    gamma_std: float = 0.25
    noise_max: float = 0.05
    pair_contrast: str = "independent"
    p_real: float = 0.0

    def __post_init__(self) -> None:
        if self.pair_contrast not in PAIR_CONTRASTS:
            raise MaxcaInputError(
                f"pair_contrast must be one of {PAIR_CONTRASTS}, got {self.pair_contrast!r}"
            )
        for name in ("deform_vox", "std_max", "blur_max", "bias_max", "gamma_std", "noise_max"):
            if not getattr(self, name) >= 0:
                raise MaxcaInputError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("p_share", "p_dark_background", "p_thick", "p_real"):
            if not 0 <= getattr(self, name) <= 1:
                raise MaxcaInputError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not self.deform_smoothness > 0:
            raise MaxcaInputError(f"deform_smoothness must be > 0, got {self.deform_smoothness!r}")
        step = self.deform_integration_step
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise MaxcaInputError(f"deform_integration_step must be an integer >= 1, got {step!r}")
        if not self.thick_max >= 1:
            raise MaxcaInputError(f"thick_max must be >= 1, got {self.thick_max!r}")
        lo, hi = self.mean_range
        if not lo <= hi:
            raise MaxcaInputError(f"mean_range must be (low, high) with low <= high, got {lo, hi}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _u(g: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return float(low + (high - low) * torch.rand((), generator=g))


def deform_label_map(
    label: torch.Tensor,
    magnitude_vox: float,
    smoothness: float,
    generator: torch.Generator,
    integration_step: int = 1,
) -> torch.Tensor:
    """Warp a label map ``(*S)`` by a random smooth diffeomorphism (nearest neighbour).

    ``magnitude_vox == 0`` returns the input unchanged (the identity). ``integration_step``: see
    :func:`maxca.data.synth.random_smooth_deformation`. Returns ``(*S)`` with the input's dtype
    and only values present in the input.
    """
    if magnitude_vox == 0:
        return label
    flow = random_smooth_deformation(
        label.shape, magnitude_vox, smoothness, generator, integration_step=integration_step
    )
    warped = warp(label[None, None].to(torch.float32), flow[None], mode="nearest")
    return warped[0, 0].round().to(label.dtype)


def _label_index(label: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``(*S)`` position of each voxel's label value in the sorted ``ids`` (which hold them all)."""
    flat = label.reshape(-1).to(torch.int64).contiguous()
    return torch.bucketize(flat, ids.to(torch.int64)).reshape(label.shape)


def random_label_intensities(
    label: torch.Tensor,
    config: LabelSynthConfig,
    generator: torch.Generator,
    ids: torch.Tensor | None = None,
    noise_generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Piecewise-constant-plus-noise image ``(*S)`` float32: per label ``l``, ``mean_l +
    std_l * N(0, 1)`` (means in ``config.mean_range``, spreads in ``[0, std_max]``).

    The means and spreads are a function of ``generator`` and of the sorted label ``ids``
    (default: those present in ``label``; give the union of two maps to draw the same contrast
    for both); the voxel noise comes from ``noise_generator`` (default ``generator``).
    """
    present = torch.unique(label)
    ids = present if ids is None else torch.unique(ids.to(torch.int64))
    if not bool(torch.isin(present.to(torch.int64), ids).all()):
        raise MaxcaInputError("ids must include every label value of the map")
    n = int(ids.numel())
    lo, hi = config.mean_range
    means = lo + (hi - lo) * torch.rand(n, generator=generator)
    share = torch.rand(n, generator=generator) < config.p_share
    donors = torch.randint(0, n, (n,), generator=generator)
    means = torch.where(share, means[donors], means)
    stds = config.std_max * torch.rand(n, generator=generator)
    if int(ids[0]) == 0 and _u(generator) < config.p_dark_background:
        means[0], stds[0] = 0.0, 0.0
    index = _label_index(label, ids)
    noise = torch.randn(label.shape, generator=noise_generator or generator)
    return (means[index] + stds[index] * noise).to(torch.float32)


def gaussian_blur(image: torch.Tensor, sigma: Sequence[float] | float) -> torch.Tensor:
    """Separable Gaussian blur of ``(*S)`` (``sigma`` in voxels, per axis or one value;
    0 leaves an axis untouched); borders replicate the edge voxels."""
    nd = image.ndim
    sigmas = [float(sigma)] * nd if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    if len(sigmas) != nd:
        raise MaxcaInputError(f"sigma needs {nd} values, got {sigmas}")
    x = image[None, None].to(torch.float32)
    conv = (F.conv2d, F.conv3d)[nd - 2]
    for axis, s in enumerate(sigmas):
        if s <= 0:
            continue
        radius = max(1, int(math.ceil(3 * s)))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (t / s) ** 2)
        kernel = kernel / kernel.sum()
        shape = [1, 1] + [1] * nd
        shape[2 + axis] = kernel.numel()
        pad = [0, 0] * nd
        pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = radius
        x = conv(F.pad(x, pad, mode="replicate"), kernel.reshape(shape))
    return x[0, 0]


def _thick_axis(image: torch.Tensor, axis: int, factor: float) -> torch.Tensor:
    """Down-sample ``axis`` by ``factor`` (linear, after a matching blur) and back."""
    size = list(image.shape)
    small = list(size)
    small[axis] = max(2, int(round(size[axis] / factor)))
    sigma = [0.0] * image.ndim
    sigma[axis] = 0.5 * factor  # slice-profile blur before decimation
    x = gaussian_blur(image, sigma)[None, None]
    mode = _INTERP[image.ndim]
    x = F.interpolate(x, size=small, mode=mode, align_corners=False)
    x = F.interpolate(x, size=size, mode=mode, align_corners=False)
    return x[0, 0]


def synthesize_image(
    label: torch.Tensor,
    generator: torch.Generator | int | None = None,
    config: LabelSynthConfig | None = None,
    normalise: str | None = "minmax",
    contrast: tuple[torch.Generator, torch.Tensor] | None = None,
) -> torch.Tensor:
    """An image ``(*S)`` float32 with fresh random contrast, drawn from a label map ``(*S)``.

    The steps are those of the module docstring (without the deformation: see
    :func:`deform_label_map`). With ``normalise`` the result is normalised exactly as
    inference normalises a scan (:func:`maxca.data.transforms.normalise_intensity`).
    ``contrast=(generator, ids)`` draws the per-label means/spreads from that generator over
    those label ids (see :func:`random_label_intensities`), e.g. the same for two images.
    """
    if label.ndim not in (2, 3):
        raise MaxcaInputError(f"label map must have 2 or 3 axes, got shape {tuple(label.shape)}")
    if label.is_floating_point():
        raise MaxcaInputError("label map must hold integers")
    cfg = config or LabelSynthConfig()
    g = as_generator(generator)
    if contrast is None:
        image = random_label_intensities(label, cfg, g)
    else:
        image = random_label_intensities(label, cfg, contrast[0], contrast[1], noise_generator=g)
    blur = _u(g, 0.0, cfg.blur_max)
    if blur > 0:
        image = gaussian_blur(image, blur)
    if _u(g) < cfg.p_thick:
        axis = int(torch.randint(0, label.ndim, (), generator=g))
        image = _thick_axis(image, axis, _u(g, 1.0, cfg.thick_max))
    image = image * random_bias_field(label.shape, _u(g, 0.0, cfg.bias_max), g)
    lo, hi = image.min(), image.max()
    image = (image - lo) / (hi - lo) if hi > lo else torch.zeros_like(image)
    gamma = math.exp(cfg.gamma_std * float(torch.randn((), generator=g)))
    image = image.clamp_min(0) ** gamma
    image = image + _u(g, 0.0, cfg.noise_max) * torch.randn(label.shape, generator=g)
    if normalise is not None:
        image = torch.from_numpy(normalise_intensity(image.numpy(), normalise))  # type: ignore[arg-type]
    return image.to(torch.float32).contiguous()


class SynthPairDataset(PairDataset):
    """Training pairs whose images are synthesised from the subjects' label maps.

    Pairs, epochs, caching and seeding are those of :class:`PairDataset` (the image files are
    read once for their grid only); each item draws, for the fixed and the moving subject, a
    deformed label map (:func:`deform_label_map`) and an image of fresh random contrast
    (:func:`synthesize_image`), seeded by ``(seed, epoch, pair index, role)``. With
    ``synth.p_real > 0`` a pair is, with that probability (seeded by role 3), the two subjects'
    own images and label maps as read instead.

    Items: ``fixed``/``moving`` ``(1, *S)`` float32 and ``fixed_label``/``moving_label``
    ``(1, *S)`` int64 (the deformed label maps the images were drawn from).

    Args:
        dataset, **kwargs: as :class:`PairDataset` (``augment`` is not supported: the synthesis
            is the augmentation).
        synth: the synthesis ranges (default :class:`LabelSynthConfig`).
    """

    def __init__(self, *args: Any, synth: LabelSynthConfig | None = None, **kwargs: Any) -> None:
        if kwargs.get("augment"):
            raise MaxcaInputError("data.augment cannot be combined with data.synth (it is one)")
        kwargs["use_labels"] = True
        super().__init__(*args, **kwargs)
        self.synth = synth or LabelSynthConfig()

    def __getitem__(self, index: int) -> dict[str, Any]:
        self._real = False
        if self.synth.p_real > 0 and -len(self) <= index < len(self):
            self._real = _u(self._generator(index % len(self), 3)) < self.synth.p_real
        if self.synth.pair_contrast == "shared" and -len(self) <= index < len(self):
            f, m = self._pairs[index % len(self)]
            ids = [self.load_subject(k)[1] for k in (f, m)]
            union = torch.from_numpy(np.union1d(*[np.unique(a) for a in ids if a is not None]))
            self._contrast = (self._generator(index % len(self), 2), union.to(torch.int64))
        else:
            self._contrast = None
        return super().__getitem__(index)

    def _volume(
        self, subject: int, item: int, role: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if getattr(self, "_real", False):  # this pair uses the images as read
            return super()._volume(subject, item, role)
        _, label_array = self.load_subject(subject)
        if label_array is None:
            raise MaxcaInputError(
                f"data.synth=labels needs a label map for every training subject; "
                f"{self.subjects[subject].image} has none"
            )
        g = self._generator(item, role)
        label = torch.from_numpy(np.asarray(label_array).astype(np.int64))
        cfg = self.synth
        label = deform_label_map(
            label,
            _u(g, 0.0, cfg.deform_vox),
            cfg.deform_smoothness,
            g,
            cfg.deform_integration_step,
        )
        contrast = getattr(self, "_contrast", None)
        if contrast is not None:  # the pair's contrast: a fresh copy of the same generator
            contrast = (_clone(contrast[0]), contrast[1])
        image = synthesize_image(label, g, cfg, self.normalise, contrast)
        return image[None], label[None]


def _clone(generator: torch.Generator) -> torch.Generator:
    copy = torch.Generator()
    copy.set_state(generator.get_state())
    return copy


# FreeSurfer label -> relative intensity of a T2-weighted-like contrast (fluid bright, white
# matter dark, grey matter in between): the order of a T1 image reversed for most tissues.
T2_LIKE: dict[int, float] = {
    0: 0.0,
    2: 0.30, 41: 0.30,  # cerebral white matter
    3: 0.62, 42: 0.62,  # cerebral cortex
    4: 1.00, 43: 1.00, 5: 1.00, 44: 1.00, 14: 1.00, 15: 1.00, 24: 0.95, 72: 1.00,  # CSF spaces
    7: 0.34, 46: 0.34,  # cerebellar white matter
    8: 0.58, 47: 0.58,  # cerebellar cortex
    10: 0.45, 49: 0.45,  # thalamus
    11: 0.60, 50: 0.60,  # caudate
    12: 0.52, 51: 0.52,  # putamen
    13: 0.40, 52: 0.40,  # pallidum
    16: 0.38,  # brain stem
    17: 0.66, 53: 0.66, 18: 0.64, 54: 0.64,  # hippocampus, amygdala
    26: 0.56, 58: 0.56, 28: 0.42, 60: 0.42,  # accumbens, ventral DC
    30: 0.20, 62: 0.20, 85: 0.35,  # vessels, optic chiasm
}  # fmt: skip


def fixed_contrast_image(
    label: torch.Tensor,
    table: dict[int, float],
    generator: torch.Generator | int | None = 0,
    noise: float = 0.02,
    blur: float = 0.5,
    default: float = 0.5,
) -> torch.Tensor:
    """An image ``(*S)`` float32 in ``[0, 1]`` with a *given* contrast: each label's intensity
    from ``table`` (``default`` for labels not in it), then a Gaussian blur of ``blur`` voxels
    (partial volume) and Gaussian noise of ``noise`` (seeded). E.g. ``T2_LIKE`` re-synthesises
    brain label maps in a T2-like intensity order for the contrast-robustness benchmark."""
    if label.is_floating_point():
        raise MaxcaInputError("label map must hold integers")
    g = as_generator(generator)
    ids = torch.unique(label)
    values = torch.tensor([float(table.get(int(i), default)) for i in ids])
    image = values[_label_index(label, ids)]
    if blur > 0:
        image = gaussian_blur(image, blur)
    image = image + noise * torch.randn(label.shape, generator=g)
    return image.clamp(0, 1).to(torch.float32)
