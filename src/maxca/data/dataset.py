"""``PairDataset``: (fixed, moving) pairs of preprocessed volumes for training and evaluation.

Each item is a dict of tensors in the file's voxel order (``docs/conventions.md``)::

    fixed, moving               (1, *S) float32
    fixed_label, moving_label   (1, *S) int64   (only when that subject has a label map)
    fixed_path, moving_path     str

The dataset holds only picklable state (paths, numpy arrays, settings), so it works with
DataLoader worker processes. The pairs of an epoch are fixed by ``seed`` and the epoch
(:meth:`PairDataset.set_epoch`), and the augmentation of item ``i`` is seeded by
``(seed, epoch, i)``, so results do not depend on the number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from maxca._checks import NORMALISATIONS, PAIR_MODES
from maxca.data.io import Volume, check_same_grid, read_volume
from maxca.data.learn2reg import ImageEntry, Learn2RegDataset, load_folder, load_learn2reg
from maxca.data.pairs import AtlasPairs, ExplicitPairs, PairSampler, RandomPairs
from maxca.data.transforms import (
    AugmentConfig,
    augment,
    crop_or_pad_volume,
    normalise_intensity,
    resample_volume,
)
from maxca.errors import MaxcaInputError

__all__ = ["PairDataset", "as_dataset"]

RESIZE_MODES = ("crop_or_pad", "resample")


def as_dataset(source: Learn2RegDataset | str | os.PathLike[str]) -> Learn2RegDataset:
    """A :class:`Learn2RegDataset` from itself, a ``dataset.json``, a folder holding one, or a
    plain folder of NIfTI images (no labels)."""
    if isinstance(source, Learn2RegDataset):
        return source
    path = Path(source)
    if path.is_file() or (path / "dataset.json").is_file():
        return load_learn2reg(path)
    return load_folder(path)


class PairDataset(Dataset):
    """Registration pairs from a Learn2Reg dataset or a folder.

    Args:
        dataset: a :class:`Learn2RegDataset`, or a path accepted by :func:`as_dataset`.
        mode: ``"random"`` inter-subject pairs among ``training``; ``"atlas"``: the atlas fixed,
            every other training subject moving; ``"pairs"``: an explicit list (default the
            dataset's ``registration_val``).
        target_shape: spatial shape of every returned volume (default: the file's shape, which
            must then agree within each pair).
        resize: how volumes reach ``target_shape``: ``"crop_or_pad"`` (centred) or
            ``"resample"`` (same physical extent; images linear, labels nearest).
        normalise: ``"minmax"``, ``"percentile"`` (p1-p99 clip), ``"zscore"`` or ``None``;
            statistics of the whole volume as read, before resizing (padding adds zeros).
        augment: ``True`` for the default :class:`AugmentConfig`, a config, or ``None``/``False``.
            Applied to each volume independently (the same geometry to its label map).
        cache: keep decoded, preprocessed volumes in memory (per worker process; call
            :meth:`preload` before creating workers to share them).
        num_pairs_per_epoch: pairs per epoch for ``"random"``/``"atlas"`` (default: the number
            of subjects, respectively of non-atlas subjects) and ``"pairs"`` (cycles the list).
        seed: seed of pair sampling and augmentation.
        pairs: for ``"pairs"``: ``(fixed, moving)`` as image paths or as indices into
            ``training``.
        atlas: for ``"atlas"``: index into ``training`` or the path of an atlas image.
        use_labels: load label maps when the dataset has them.
        spatial_dims: 2 or 3 to require that many axes in every file (default: as read).
    """

    def __init__(
        self,
        dataset: Learn2RegDataset | str | os.PathLike[str],
        mode: str = "random",
        target_shape: Sequence[int] | None = None,
        resize: str = "crop_or_pad",
        normalise: str | None = "minmax",
        augment: bool | AugmentConfig | None = None,
        cache: bool = True,
        num_pairs_per_epoch: int | None = None,
        seed: int = 0,
        pairs: Sequence[tuple[Any, Any]] | None = None,
        atlas: int | str | os.PathLike[str] = 0,
        use_labels: bool = True,
        spatial_dims: int | None = None,
    ) -> None:
        if mode not in PAIR_MODES:
            raise MaxcaInputError(f"pair mode must be one of {PAIR_MODES}, got {mode!r}")
        if resize not in RESIZE_MODES:
            raise MaxcaInputError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        if normalise is not None and normalise not in NORMALISATIONS:
            raise MaxcaInputError(
                f"normalise must be one of {NORMALISATIONS} or None, got {normalise!r}"
            )
        if spatial_dims is not None and spatial_dims not in (2, 3):
            raise MaxcaInputError(f"spatial_dims must be 2, 3 or None, got {spatial_dims!r}")
        self.dataset = as_dataset(dataset)
        self.mode = mode
        self.target_shape = None if target_shape is None else tuple(int(s) for s in target_shape)
        if self.target_shape is not None and (
            len(self.target_shape) not in (2, 3) or min(self.target_shape) < 1
        ):
            raise MaxcaInputError(
                f"target_shape must have 2 or 3 positive sizes, got {tuple(target_shape)}"
            )
        self.resize = resize
        self.normalise = normalise
        if augment is True:
            augment = AugmentConfig()
        self.augment_config: AugmentConfig | None = augment or None
        self.cache = bool(cache)
        self.seed = int(seed)
        self.use_labels = bool(use_labels)
        self.spatial_dims = spatial_dims
        self.subjects, self.sampler = self._build(mode, num_pairs_per_epoch, pairs, atlas)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self.epoch = 0
        self._pairs = self.sampler.pairs(0)

    # ------------------------------------------------------------------------------------------
    def _build(
        self,
        mode: str,
        num_pairs: int | None,
        pairs: Sequence[tuple[Any, Any]] | None,
        atlas: int | str | os.PathLike[str],
    ) -> tuple[list[ImageEntry], PairSampler]:
        ds = self.dataset
        subjects = list(ds.training)
        if mode == "random":
            return subjects, RandomPairs(len(subjects), num_pairs, self.seed)
        if mode == "atlas":
            if isinstance(atlas, (int, np.integer)) and not isinstance(atlas, bool):
                index = int(atlas)
                if not 0 <= index < len(subjects):
                    raise MaxcaInputError(
                        f"atlas index {index} out of range [0, {len(subjects) - 1}]"
                    )
            else:
                atlas_path = Path(os.path.abspath(atlas))
                if not atlas_path.is_file():
                    raise MaxcaInputError(f"atlas image not found: {atlas_path}")
                subjects.append(ds.entry_for(atlas_path))
                index = len(subjects) - 1
            return subjects, AtlasPairs(len(subjects), index, num_pairs, self.seed)
        # explicit pairs
        if pairs is None:
            pairs = ds.registration_val
            if not pairs:
                raise MaxcaInputError(
                    f"pair mode 'pairs' needs `pairs`: dataset {ds.root} has no registration_val"
                )
        index_pairs: list[tuple[int, int]] = []
        if all(isinstance(v, (int, np.integer)) for pair in pairs for v in pair):
            index_pairs = [(int(f), int(m)) for f, m in pairs]
        else:
            subjects = []
            position: dict[Path, int] = {}
            for i, pair in enumerate(pairs):
                if len(pair) != 2:
                    raise MaxcaInputError(f"pairs[{i}] must be (fixed, moving), got {pair!r}")
                ids = []
                for role, value in zip(("fixed", "moving"), pair):
                    path = Path(os.path.abspath(value))
                    if not path.is_file():
                        raise MaxcaInputError(f"pairs[{i}] {role} image not found: {path}")
                    if path not in position:
                        position[path] = len(subjects)
                        subjects.append(ds.entry_for(path))
                    ids.append(position[path])
                index_pairs.append((ids[0], ids[1]))
        return subjects, ExplicitPairs(index_pairs, len(subjects), num_pairs)

    # ------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Draw the pairs of ``epoch`` (call before each epoch; with persistent workers the
        workers keep the pairs they were started with)."""
        self.epoch = int(epoch)
        self.sampler.set_epoch(self.epoch)
        self._pairs = self.sampler.pairs(self.epoch)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """``(fixed_index, moving_index)`` into :attr:`subjects` for the current epoch."""
        return list(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def preload(self) -> None:
        """Decode and preprocess every subject into the cache (requires ``cache=True``)."""
        for i in range(len(self.subjects)):
            self.load_subject(i)

    def load_subject(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Preprocessed ``(image (*S) float32, label (*S) integer or None)`` of a subject."""
        if index in self._cache:
            return self._cache[index]
        entry = self.subjects[index]
        image = read_volume(entry.image, "image", self.spatial_dims)
        label = None
        if self.use_labels and entry.label is not None:
            label = read_volume(entry.label, "label", image.ndim)
            check_same_grid(image, label, f"label {entry.label} vs image {entry.image}")
        if self.normalise is not None:  # before padding, so padded voxels don't count
            normalised = normalise_intensity(image.array, self.normalise)  # type: ignore[arg-type]
            image = Volume(normalised, image.affine, image.header, image.path)
        if self.target_shape is not None and self.target_shape != image.shape:
            if len(self.target_shape) != image.ndim:
                raise MaxcaInputError(
                    f"target_shape {self.target_shape} has {len(self.target_shape)} axes, "
                    f"{entry.image} has {image.ndim}"
                )
            if self.resize == "crop_or_pad":
                image, _ = crop_or_pad_volume(image, self.target_shape)
                if label is not None:
                    label, _ = crop_or_pad_volume(label, self.target_shape)
            else:
                image = resample_volume(image, shape=self.target_shape, kind="image")
                if label is not None:
                    label = resample_volume(label, shape=self.target_shape, kind="label")
        array = image.array
        result = (np.ascontiguousarray(array, dtype=np.float32), None)
        if label is not None:
            result = (result[0], np.ascontiguousarray(label.array))
        if self.cache:
            self._cache[index] = result
        return result

    def _generator(self, index: int, role: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self.epoch, index, role]).generate_state(2)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def _volume(
        self, subject: int, item: int, role: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        array, label_array = self.load_subject(subject)
        image = torch.from_numpy(array.copy())[None]  # (1, *S)
        label = None
        if label_array is not None:
            label = torch.from_numpy(label_array.astype(np.int64))[None]  # (1, *S)
        if self.augment_config is not None:
            image, label = augment(image, label, self._generator(item, role), self.augment_config)
        return image.to(torch.float32).contiguous(), label

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"pair index {index} out of range for {len(self)} pairs")
        index = index % len(self)
        f, m = self._pairs[index]
        fixed, fixed_label = self._volume(f, index, 0)
        moving, moving_label = self._volume(m, index, 1)
        if fixed.shape != moving.shape:
            raise MaxcaInputError(
                f"fixed {self.subjects[f].image} has shape {tuple(fixed.shape[1:])} but moving "
                f"{self.subjects[m].image} has {tuple(moving.shape[1:])}; pass target_shape"
            )
        item: dict[str, Any] = {
            "fixed": fixed,
            "moving": moving,
            "fixed_path": str(self.subjects[f].image),
            "moving_path": str(self.subjects[m].image),
        }
        if fixed_label is not None:
            item["fixed_label"] = fixed_label
        if moving_label is not None:
            item["moving_label"] = moving_label
        return item
