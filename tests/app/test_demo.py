"""``maxca demo`` end to end on a tiny grid (8 mm, a tiny network, three steps): the printed
report agrees with the files written, the held-out pair is kept out of training, an earlier demo
folder is replaced while other folders are refused, and bad options are one-line errors with exit
code 2 through the command line."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from maxca import cli
from maxca.app.demo import MARKER, run_demo
from maxca.metrics import dice

TINY = {
    "subjects": 2,
    "steps": 3,
    "seed": 1,
    "spacing_mm": 8.0,
    "lr": 0.03,  # large enough for three steps to move labels: Dice after differs from before
    "model_config": {"enc_channels": 2, "dec_channels": 4, "heads": 1, "region": 2},
    "progress": False,
}


def _run(argv: list) -> int:
    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    out = tmp_path_factory.mktemp("demo") / "out"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        result = run_demo(out=out, **TINY)
    return out, text.getvalue(), result


def _report_value(text: str, name: str) -> float:
    match = re.search(rf"\b{name} (\d+\.\d+)", text)
    assert match, f"no '{name}' value in the report:\n{text}"
    return float(match.group(1))


def test_report_matches_files(demo):
    out, text, result = demo
    assert result.resolve() == out.resolve()
    reg = out / "registration"
    for name in ("warped.nii.gz", "warped_labels.nii.gz", "flow_voxel.nii.gz", "disp_itk.nii.gz"):
        assert (reg / name).is_file(), name
    assert (reg / "figure.png").stat().st_size > 1000
    assert (out / "run" / "checkpoints" / "last" / "model.safetensors").is_file()

    metrics = json.loads((reg / "metrics.json").read_text())
    record = json.loads((out / MARKER).read_text())
    assert metrics["labels"] == [1, 2, 3, 4, 5, 6]
    assert metrics["dice_after"] != metrics["dice_before"]  # so the checks below tell them apart
    assert _report_value(text, "before") == round(metrics["dice_before"], 3)
    assert _report_value(text, "after") == round(metrics["dice_after"], 3)
    assert record["status"] == "done"
    assert record["dice_before"] == metrics["dice_before"]
    assert record["dice_after"] == metrics["dice_after"]
    assert record["njd_percent"] == metrics["njd_percent"]
    assert record["steps_trained"] == TINY["steps"]
    assert f"({TINY['steps']} steps)" in text
    assert str(Path("registration") / "figure.png") in text

    # Dice after is the overlap of the fixed labels with the written warped labels
    pair = json.loads((reg / "registration.json").read_text())["inputs"]
    fixed_labels = np.asarray(nib.load(pair["fixed_labels"]).dataobj)
    warped_labels = np.asarray(nib.load(reg / "warped_labels.nii.gz").dataobj)
    scores = dice(fixed_labels, warped_labels, metrics["labels"])
    assert np.mean(list(scores.values())) == pytest.approx(metrics["dice_after"])
    # the runtimes add up (data + training + registration <= total)
    times = record["runtime_s"]
    assert times["data"] + times["training"] + times["registration"] <= times["total"] + 1e-3


def test_held_out_pair_is_not_trained_on(demo):
    out, _, _ = demo
    data = json.loads((out / "data" / "dataset.json").read_text())
    training = {entry["image"] for entry in data["training"]}
    assert len(training) == TINY["subjects"]
    (pair,) = data["registration_val"]
    assert pair["fixed"] != pair["moving"]
    assert pair["fixed"] not in training and pair["moving"] not in training
    record = json.loads((out / "registration" / "registration.json").read_text())["inputs"]
    assert Path(record["fixed"]) == (out / "data" / pair["fixed"]).resolve()
    assert Path(record["moving"]) == (out / "data" / pair["moving"]).resolve()
    config = (out / "run" / "config.yaml").read_text()
    assert str((out / "data" / "dataset.json").resolve()) in config
    assert "val_pairs: null" in config


def test_earlier_demo_is_replaced_other_folders_are_refused(tmp_path, monkeypatch, capsys):
    import maxca.app.demo as demo_module

    # refused: a folder with files of its own and no demo.json; nothing is touched
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert _run(["demo", "--out", other, "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("maxca: error: output directory already holds files")
        and err.count("\n") == 1
    )
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]

    # an earlier demo: its parts are removed, other files are kept
    earlier = tmp_path / "earlier"
    for part in ("data", "run", "registration"):
        (earlier / part).mkdir(parents=True)
        (earlier / part / "old.txt").write_text("old")
    (earlier / MARKER).write_text(json.dumps({"maxca_demo": "0.0", "status": "running"}))
    (earlier / "notes.txt").write_text("mine")
    assert demo_module._prepare_output(earlier, overwrite=False) == earlier.resolve()
    assert sorted(p.name for p in earlier.iterdir()) == ["notes.txt"]
    # a marker that is not ours does not count
    (other / MARKER).write_text(json.dumps({"something": "else"}))
    with pytest.raises(demo_module.MaxcaInputError, match="no earlier maxca demo"):
        demo_module._prepare_output(other, overwrite=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subjects", "1"], "--subjects must be an integer >= 2"),
        (["--device", "cuda"], "CUDA is not available"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    assert _run(["demo", "--out", out, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maxca: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_python_api_checks_its_arguments(tmp_path):
    from maxca.errors import MaxcaInputError

    with pytest.raises(MaxcaInputError, match="--steps"):
        run_demo(out=tmp_path / "a", steps=0)
    with pytest.raises(MaxcaInputError, match="--minutes"):
        run_demo(out=tmp_path / "b", minutes=-1.0)
    with pytest.raises(MaxcaInputError, match=r"device must be one of .* or .cuda:N., got .tpu."):
        run_demo(out=tmp_path / "c", device="tpu")
    assert not any(tmp_path.iterdir())
