"""Learn2Reg dataset.json parsing and folder datasets."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from maxca.data.learn2reg import load_folder, load_learn2reg
from maxca.errors import MaxcaInputError

from .conftest import BRAIN_SHAPE, make_tiny_dataset, write_nifti


def test_brain_like_dataset(brain_2mm: Path) -> None:
    ds = load_learn2reg(brain_2mm / "dataset.json")
    assert ds.root == brain_2mm.resolve()
    assert len(ds.training) == 12
    assert len(ds.registration_val) == 4
    assert len(ds.evaluation_labels) == 28
    assert ds.evaluation_labels[:3] == [2, 3, 4] and 60 in ds.evaluation_labels
    assert ds.tensor_image_shape == BRAIN_SHAPE
    assert ds.label_names[17] == "Left-Hippocampus" and ds.label_names[0] == "background"
    for entry in ds.training:
        assert entry.image.is_absolute() and entry.image.is_file()
        assert entry.label is not None and entry.label.is_file()
        assert entry.mask is not None and entry.mask.is_file()
        assert "/./" not in str(entry.image)
    assert ds.training[0].image.name == "BRAIN_0001_0000.nii.gz"
    assert ds.training[0].label == brain_2mm.resolve() / "labelsTr" / "BRAIN_0001_0000.nii.gz"
    fixed, moving = ds.registration_val[0]
    assert (fixed.name, moving.name) == ("BRAIN_0014_0000.nii.gz", "BRAIN_0013_0000.nii.gz")
    # subject 13 is not in training: its label is found as labelsTr/<same name>
    assert ds.label_for(moving) == brain_2mm.resolve() / "labelsTr" / "BRAIN_0013_0000.nii.gz"
    assert [e.image.name for e in ds.validation] == [
        "BRAIN_0013_0000.nii.gz",
        "BRAIN_0014_0000.nii.gz",
    ]
    # the folder itself is accepted too
    assert load_learn2reg(brain_2mm).training == ds.training


def _edit(json_path: Path, edit: Callable[[dict], object]) -> Path:
    data = json.loads(json_path.read_text())
    edit(data)
    json_path.write_text(json.dumps(data))
    return json_path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("training"), r"missing key 'training'"),
        (lambda d: d["training"][3].pop("image"), r"training\[3\] has no 'image' key"),
        (
            lambda d: d["registration_val"][1].pop("moving"),
            r"registration_val\[1\] has no 'moving'",
        ),
        (lambda d: d["registration_val"][0].pop("fixed"), r"registration_val\[0\] has no 'fixed'"),
        (
            lambda d: d["training"][2].update(image="./imagesTr/missing.nii.gz"),
            r"training\[2\]\.image refers to a missing file: .*imagesTr/missing\.nii\.gz",
        ),
        (
            lambda d: d["training"][1].update(label="./labelsTr/gone.nii.gz"),
            r"training\[1\]\.label refers to a missing file",
        ),
        (
            lambda d: d["registration_val"][1].update(fixed="./nowhere.nii.gz"),
            r"registration_val\[1\]\.fixed refers to a missing file",
        ),
        (lambda d: d.update(training={"a": 1}), r"'training' must be a list, got dict"),
        (lambda d: d["training"].__setitem__(0, 5), r"training\[0\] must be an object"),
        (lambda d: d.update(evaluation_labels=["x"]), r"'evaluation_labels' must be a list of"),
        (lambda d: d.update(labels={"0": {"one": "a"}}), r"'labels' key 'one' is not an integer"),
        (lambda d: d.update(tensorImageShape={"0": [4, -1]}), r"'tensorImageShape' must be"),
    ],
)
def test_malformed_dataset_json(
    tmp_path: Path, edit: Callable[[dict], object], message: str
) -> None:
    json_path = _edit(make_tiny_dataset(tmp_path), edit)
    with pytest.raises(MaxcaInputError, match=message) as info:
        load_learn2reg(json_path)
    assert str(info.value).startswith(str(json_path)) and "\n" not in str(info.value)


def test_invalid_json_syntax_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "dataset.json"
    bad.write_text('{"training": [\n  {"image": "a.nii.gz",}\n]}')
    with pytest.raises(MaxcaInputError, match=r"dataset\.json: invalid JSON at line 2 column"):
        load_learn2reg(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(MaxcaInputError, match="expected a JSON object at top level, got list"):
        load_learn2reg(bad)
    with pytest.raises(MaxcaInputError, match=r"dataset file not found: .*other/dataset\.json"):
        load_learn2reg(tmp_path / "other" / "dataset.json")


def test_a_key_given_twice_warns_and_the_last_is_used(tmp_path: Path) -> None:
    json_path = make_tiny_dataset(tmp_path)
    text = json_path.read_text()
    # "evaluation_labels" twice, and a second "name", as a hand edit leaves it
    twice = (
        text.rstrip()[:-1] + ', "evaluation_labels": [3], "evaluation_labels": [7], "name": "B"}'
    )
    json_path.write_text(twice)
    with pytest.warns(
        UserWarning,
        match=r"dataset\.json: key\(s\) 'evaluation_labels', 'name' "
        r"given twice in one object; the last one is used",
    ):
        ds = load_learn2reg(json_path)
    assert ds.evaluation_labels == [7] and ds.name == "B"
    json_path.write_text(text)  # no repeated key: no warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_learn2reg(json_path)


def test_fallbacks_label_ids_and_labels_tr(tmp_path: Path) -> None:
    json_path = make_tiny_dataset(tmp_path)

    def drop(d: dict) -> None:
        for e in d["training"]:
            e.pop("label")

    ds = load_learn2reg(_edit(json_path, drop))
    assert ds.evaluation_labels == [3, 7]  # non-zero ids of "labels"
    assert all(e.label == tmp_path / "labelsTr" / e.image.name for e in ds.training)
    assert ds.registration_test == [] and ds.name == "TINY"


def test_load_folder(tmp_path: Path) -> None:
    for name in ("b.nii.gz", "a.nii", "c.nii.gz"):
        write_nifti(tmp_path / "img" / name, np.zeros((2, 3, 4), np.float32))
        write_nifti(tmp_path / "lab" / name, np.zeros((2, 3, 4), np.uint8))
    (tmp_path / "img" / "notes.txt").write_text("not an image")
    ds = load_folder(tmp_path / "img", tmp_path / "lab")
    assert [e.image.name for e in ds.training] == ["a.nii", "b.nii.gz", "c.nii.gz"]
    assert [e.label for e in ds.training] == [tmp_path / "lab" / e.image.name for e in ds.training]
    assert load_folder(tmp_path / "img").training[0].label is None
    (tmp_path / "lab" / "c.nii.gz").unlink()
    with pytest.raises(MaxcaInputError, match=r"no label map named c\.nii\.gz"):
        load_folder(tmp_path / "img", tmp_path / "lab")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaxcaInputError, match="no NIfTI images"):
        load_folder(tmp_path / "empty")
    with pytest.raises(MaxcaInputError, match="image folder not found"):
        load_folder(tmp_path / "nowhere")


def test_missing_json_path_is_not_called_an_image_folder(tmp_path: Path) -> None:
    """A dataset.json path that does not exist is named as a dataset file (issue 15)."""
    from maxca.data.dataset import as_dataset

    missing = tmp_path / "shared" / "data" / "dataset.json"
    with pytest.raises(MaxcaInputError) as info:
        as_dataset(missing)
    message = str(info.value)
    assert "image folder" not in message
    assert message.startswith(f"dataset file not found: {missing}")
    assert "maxca example-data" in message
