"""Data: reading/writing volumes with their RAS affines, Learn2Reg datasets, pair sampling,
preprocessing/augmentation, training pairs and synthetic deformations.

Arrays stay in the file's voxel order; orientation lives in the affine (docs/conventions.md).
"""

from maxca.data.dataset import PairDataset, as_dataset
from maxca.data.io import (
    Volume,
    check_same_grid,
    read_vector_field,
    read_volume,
    write_vector_field,
    write_volume,
)
from maxca.data.learn2reg import ImageEntry, Learn2RegDataset, load_folder, load_learn2reg
from maxca.data.pairs import AtlasPairs, ExplicitPairs, PairSampler, RandomPairs, make_pair_sampler
from maxca.data.synth import random_bias_field, random_smooth_deformation
from maxca.data.transforms import (
    AugmentConfig,
    CropPad,
    affine_warp,
    augment,
    crop_or_pad,
    crop_or_pad_volume,
    normalise_intensity,
    normalize_intensity,
    random_affine,
    random_flip,
    random_intensity,
    resample_volume,
    undo_crop_or_pad,
)

__all__ = [
    "AtlasPairs",
    "AugmentConfig",
    "CropPad",
    "ExplicitPairs",
    "ImageEntry",
    "Learn2RegDataset",
    "PairDataset",
    "PairSampler",
    "RandomPairs",
    "Volume",
    "affine_warp",
    "as_dataset",
    "augment",
    "check_same_grid",
    "crop_or_pad",
    "crop_or_pad_volume",
    "load_folder",
    "load_learn2reg",
    "make_pair_sampler",
    "normalise_intensity",
    "normalize_intensity",
    "random_affine",
    "random_bias_field",
    "random_flip",
    "random_intensity",
    "random_smooth_deformation",
    "read_vector_field",
    "read_volume",
    "resample_volume",
    "undo_crop_or_pad",
    "write_vector_field",
    "write_volume",
]
