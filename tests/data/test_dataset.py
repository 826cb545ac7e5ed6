"""PairDataset: items, labels, preprocessing, pickling and DataLoader workers."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from maxca.data.dataset import PairDataset
from maxca.data.learn2reg import load_learn2reg
from maxca.data.transforms import AugmentConfig
from maxca.errors import MaxcaInputError


def test_items_shapes_dtypes_labels(tiny_dataset: Path) -> None:
    ds = PairDataset(tiny_dataset, mode="random", target_shape=(8, 8, 8), num_pairs_per_epoch=6)
    assert len(ds) == 6
    item = ds[0]
    assert set(item) == {
        "fixed",
        "moving",
        "fixed_label",
        "moving_label",
        "fixed_path",
        "moving_path",
    }
    for key in ("fixed", "moving"):
        assert item[key].shape == (1, 8, 8, 8) and item[key].dtype == torch.float32
        # minmax-normalised inside the original 6x7x8 box, zero padding outside
        assert item[key].min() >= 0.0 and item[key].max() == 1.0
    for key in ("fixed_label", "moving_label"):
        assert item[key].shape == (1, 8, 8, 8) and item[key].dtype == torch.int64
        assert set(torch.unique(item[key]).tolist()) <= {0, 3, 7}
    assert item["fixed_path"] != item["moving_path"]
    assert item["fixed_path"].endswith(".nii.gz") and Path(item["fixed_path"]).is_file()
    f, m = ds.pairs[0]
    assert item["fixed_path"] == str(ds.subjects[f].image)


def test_pairs_are_seeded_and_epochs_differ(tiny_dataset: Path) -> None:
    a = PairDataset(tiny_dataset, num_pairs_per_epoch=20, seed=1)
    b = PairDataset(tiny_dataset, num_pairs_per_epoch=20, seed=1)
    assert a.pairs == b.pairs and all(f != m for f, m in a.pairs)
    first = a.pairs
    a.set_epoch(1)
    assert a.pairs != first


def test_explicit_and_atlas_modes(tiny_dataset: Path) -> None:
    val = PairDataset(tiny_dataset, mode="pairs")  # registration_val: (0, 1), (1, 0)
    assert len(val) == 2
    ds = load_learn2reg(tiny_dataset)
    assert val[0]["fixed_path"] == str(ds.training[0].image)
    assert val[0]["moving_path"] == str(ds.training[1].image)
    assert val[1]["fixed_path"] == str(ds.training[1].image)
    by_index = PairDataset(ds, mode="pairs", pairs=[(2, 3)])
    assert by_index[0]["moving_path"] == str(ds.training[3].image)
    atlas = PairDataset(ds, mode="atlas", atlas=2)
    assert len(atlas) == 3 and all(f == 2 for f, _ in atlas.pairs)
    external = PairDataset(ds, mode="atlas", atlas=ds.training[0].image, use_labels=False)
    assert len(external) == 4 and "fixed_label" not in external[0]
    with pytest.raises(MaxcaInputError, match="atlas index 9 out of range"):
        PairDataset(ds, mode="atlas", atlas=9)
    with pytest.raises(MaxcaInputError, match="pair mode must be one of"):
        PairDataset(ds, mode="everything")


def test_values_match_file_and_cache(tiny_dataset: Path) -> None:
    ds = PairDataset(tiny_dataset, mode="pairs", normalise=None, cache=True)
    item = ds[0]
    import nibabel as nib

    raw = nib.load(item["fixed_path"]).get_fdata(dtype=np.float32)
    np.testing.assert_array_equal(item["fixed"][0].numpy(), raw)
    assert len(ds._cache) == 2
    item["fixed"].zero_()  # modifying an item never corrupts the cache
    np.testing.assert_array_equal(ds[0]["fixed"][0].numpy(), raw)
    no_cache = PairDataset(tiny_dataset, mode="pairs", normalise=None, cache=False)
    no_cache[0]
    assert no_cache._cache == {}


def test_augmentation_reproducible_and_resample(tiny_dataset: Path) -> None:
    cfg = AugmentConfig(rotation_deg=10, scale=0.1)
    a = PairDataset(tiny_dataset, augment=cfg, seed=3, target_shape=(12, 14, 16), resize="resample")
    b = PairDataset(tiny_dataset, augment=cfg, seed=3, target_shape=(12, 14, 16), resize="resample")
    ia, ib = a[1], b[1]
    assert ia["fixed"].shape == (1, 12, 14, 16)
    assert torch.equal(ia["fixed"], ib["fixed"]) and torch.equal(
        ia["moving_label"], ib["moving_label"]
    )
    assert set(torch.unique(ia["moving_label"]).tolist()) <= {0, 3, 7}
    plain = PairDataset(tiny_dataset, seed=3, target_shape=(12, 14, 16), resize="resample")
    assert not torch.equal(plain[1]["fixed"], ia["fixed"])


def test_pickle_and_dataloader_workers(tiny_dataset: Path) -> None:
    ds = PairDataset(tiny_dataset, num_pairs_per_epoch=4, augment=True, seed=2)
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[3]["moving"], ds[3]["moving"])
    ds.preload()
    loader = DataLoader(ds, batch_size=2, num_workers=1)
    batches = list(loader)
    assert len(batches) == 2
    assert batches[0]["fixed"].shape == (2, 1, 6, 7, 8)
    assert batches[0]["fixed_label"].dtype == torch.int64
    # workers give the same items as the main process
    torch.testing.assert_close(batches[1]["moving"][1], ds[3]["moving"])


def test_shape_mismatch_and_bad_options(tmp_path: Path) -> None:
    from .conftest import make_tiny_dataset

    json_a = make_tiny_dataset(tmp_path / "a", n=2, shape=(5, 6, 7))
    ds = load_learn2reg(json_a)
    other = make_tiny_dataset(tmp_path / "b", n=2, shape=(5, 6, 8))
    ds.training[1] = load_learn2reg(other).training[0]
    with pytest.raises(MaxcaInputError, match="pass target_shape"):
        PairDataset(ds, mode="pairs", pairs=[(0, 1)])[0]
    assert PairDataset(ds, mode="pairs", pairs=[(0, 1)], target_shape=(6, 6, 6))[0]["fixed"].shape
    with pytest.raises(MaxcaInputError, match="normalise must be one of"):
        PairDataset(ds, normalise="unit")
    with pytest.raises(MaxcaInputError, match=r"target_shape \(6, 6\) has 2 axes"):
        PairDataset(ds, mode="pairs", pairs=[(0, 1)], target_shape=(6, 6))[0]


def test_brain_like_pairs(brain_2mm: Path) -> None:
    ds = PairDataset(brain_2mm, mode="pairs", target_shape=(80, 96, 112))  # upsampled 4x
    assert len(ds) == 4
    item = ds[2]  # (01, 13)
    assert Path(item["fixed_path"]).name == "BRAIN_0001_0000.nii.gz"
    assert Path(item["moving_path"]).name == "BRAIN_0013_0000.nii.gz"
    assert item["fixed"].shape == item["moving_label"].shape == (1, 80, 96, 112)
    labels = set(torch.unique(item["moving_label"]).tolist())
    assert 0 in labels and set(load_learn2reg(brain_2mm).evaluation_labels) <= labels
