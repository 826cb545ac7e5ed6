"""The ``maxca`` command line: outputs of register/evaluate/show, exit codes, one-line errors and
no partial output on bad input. Tiny volumes (16x20x24) and a tiny model only."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch

from maxca import __version__, cli
from maxca.errors import MaxcaInputError
from maxca.models import create_model
from maxca.models.checkpoint import save_checkpoint

SHAPE = (16, 20, 24)
AFF = np.array([[-2.0, 0, 0, 15], [0, 0, 2.0, -23], [0, -2.0, 0, 19], [0, 0, 0, 1]])  # LIA 2 mm
LABELS = {0, 4, 17}


def _blob(centre: tuple[float, float, float]) -> np.ndarray:
    idx = np.indices(SHAPE, dtype=np.float64)
    r2 = sum((idx[k] - centre[k]) ** 2 for k in range(3))
    return np.exp(-r2 / (2 * 4.0**2)).astype(np.float32)


def _labels(image: np.ndarray) -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[image > 0.3] = 4
    lab[image > 0.7] = 17
    return lab


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFF) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = create_model(
        "pyramid_small", spatial_dims=3, enc_channels=2, dec_channels=4, heads=1, region=2
    )
    data = {"shape": list(SHAPE), "spacing": [2.0, 2.0, 2.0], "normalise": "minmax"}
    ckpt = save_checkpoint(root / "run" / "checkpoints" / "best", model, data=data)
    fixed, moving = _blob((7.5, 9.5, 11.5)), _blob((8.5, 9.0, 12.5))
    out = {
        "run": root / "run",
        "ckpt": ckpt,
        "fixed": _save(root / "fixed.nii.gz", fixed),
        "moving": _save(root / "moving.nii.gz", moving),
        "fixed_labels": _save(root / "fixed_labels.nii.gz", _labels(fixed)),
        "moving_labels": _save(root / "moving_labels.nii.gz", _labels(moving)),
        "root": root,
    }
    # a tiny Learn2Reg dataset: cases 0001-0003, pairs (0002 <- 0001), (0003 <- 0001)
    ds = root / "ds"
    training = []
    for case, centre in (
        ("0001", (7.5, 9.5, 11.5)),
        ("0002", (8.0, 10.0, 11.0)),
        ("0003", (7.0, 9.0, 12.0)),
    ):
        img = _blob(centre)
        _save(ds / f"imagesTr/T_{case}_0000.nii.gz", img)
        _save(ds / f"labelsTr/T_{case}_0000.nii.gz", _labels(img))
        training.append(
            {
                "image": f"./imagesTr/T_{case}_0000.nii.gz",
                "label": f"./labelsTr/T_{case}_0000.nii.gz",
            }
        )
    pairs = [
        {"fixed": "./imagesTr/T_0002_0000.nii.gz", "moving": "./imagesTr/T_0001_0000.nii.gz"},
        {"fixed": "./imagesTr/T_0003_0000.nii.gz", "moving": "./imagesTr/T_0001_0000.nii.gz"},
    ]
    meta = {
        "name": "T",
        "training": training,
        "registration_val": pairs,
        "evaluation_labels": [4, 17],
    }
    (ds / "dataset.json").write_text(json.dumps(meta))
    out["dataset"] = ds / "dataset.json"
    return out


def _run(argv: list[str]) -> int:
    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)


def _register_args(files: dict[str, Path], out: Path, **replace: Path) -> list:
    f = {**files, **replace}
    return [
        "register", "--model", f["run"], "--fixed", f["fixed"], "--moving", f["moving"],
        "--moving-labels", f["moving_labels"], "--fixed-labels", f["fixed_labels"],
        "--out", out, "--device", "cpu",
    ]  # fmt: skip


def test_version(capsys):
    assert _run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"maxca {__version__}"


def test_register_one_pair(files, tmp_path, capsys):
    out = tmp_path / "res"
    assert _run([*_register_args(files, out), "--png"]) == 0
    stdout = capsys.readouterr().out
    assert "runtime" in stdout and "Dice" in stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "warped.nii.gz", "warped_labels.nii.gz", "flow_voxel.nii.gz", "disp_itk.nii.gz",
            "metrics.json", "figure.png", "registration.json", ".maxca-manifest.json",
        ]
    )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]  # no temporary leftovers
    warped = nib.load(str(out / "warped.nii.gz"))
    np.testing.assert_allclose(warped.affine, AFF)
    assert warped.shape == SHAPE
    lab = nib.load(str(out / "warped_labels.nii.gz"))
    np.testing.assert_allclose(lab.affine, AFF)
    arr = np.asarray(lab.dataobj)
    assert arr.dtype == np.uint8 and set(np.unique(arr)) <= LABELS
    flow = nib.load(str(out / "flow_voxel.nii.gz"))
    assert flow.shape == (*SHAPE, 1, 3)
    field = sitk.ReadImage(str(out / "disp_itk.nii.gz"), sitk.sitkVectorFloat64)
    assert field.GetSize() == SHAPE and field.GetNumberOfComponentsPerPixel() == 3
    sitk.DisplacementFieldTransform(field)  # float32 on disk, float64 as read
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"] == [4, 17]
    assert 0 <= metrics["dice_before"] <= 1 and 0 <= metrics["dice_after"] <= 1
    assert metrics["njd_percent"] >= 0

    # an existing result folder is refused, untouched, unless --overwrite
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert _run(_register_args(files, out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("maxca: error: ") and "--overwrite" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert _run([*_register_args(files, out), "--overwrite"]) == 0
    assert not (out / "figure.png").exists()  # a stale result of the previous run is removed
    assert (out / "warped.nii.gz").stat().st_mtime_ns >= before["warped.nii.gz"]

    # show: the figure again from the folder
    capsys.readouterr()
    assert _run(["show", out, "--out", tmp_path / "fig.png"]) == 0
    assert (tmp_path / "fig.png").stat().st_size > 0


def test_show_refuses_an_input_replaced_after_the_registration(files, tmp_path, capsys):
    import hashlib
    import shutil

    copies = {}
    for role in ("fixed", "moving", "fixed_labels", "moving_labels"):
        copies[role] = tmp_path / files[role].name
        shutil.copyfile(files[role], copies[role])
    out = tmp_path / "res"
    assert _run(_register_args(files, out, **copies)) == 0
    record = json.loads((out / "registration.json").read_text())
    for role, path in copies.items():  # reference: hashlib over the whole file
        data = path.read_bytes()
        assert record["input_fingerprints"][role] == {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    assert _run(["show", out]) == 0
    # another scan saved under the moving image's name: the figure would show the wrong image
    original = copies["moving"].read_bytes()
    shutil.copyfile(files["fixed"], copies["moving"])
    capsys.readouterr()
    assert _run(["show", out, "--out", tmp_path / "new.png"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "moving input changed after this registration" in err
    assert not (tmp_path / "new.png").exists()
    copies["moving"].write_bytes(original)  # the same content again (a copy, new mtime): fine
    assert _run(["show", out, "--out", tmp_path / "new.png"]) == 0
    # a folder written before fingerprints were recorded is drawn as before
    del record["input_fingerprints"]
    (out / "registration.json").write_text(json.dumps(record))
    shutil.copyfile(files["fixed"], copies["moving"])
    assert _run(["show", out, "--out", tmp_path / "old.png"]) == 0


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu", "expected auto, cpu, cuda or cuda:N (a GPU index), got 'gpu'"),
        ("cuda:one", "expected auto, cpu, cuda or cuda:N (a GPU index), got 'cuda:one'"),
    ],
)
def test_register_device_names(files, tmp_path, capsys, device, message):
    out = tmp_path / "res"
    assert _run([*_register_args(files, out)[:-2], "--device", device]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_register_on_a_named_gpu_without_cuda_is_one_line(files, tmp_path, capsys):
    out = tmp_path / "res"
    assert _run([*_register_args(files, out)[:-2], "--device", "cuda:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'cuda:1' requested but CUDA is not available" in err
    assert not out.exists()


def test_inputs_in_metres_register_as_in_mm(files, tmp_path):
    """The same pair stored with its header in metres (affine / 1000, xyzt_units meter) gives
    the same voxel flow, warped image and Dice, and outputs in mm at the same place."""
    metres = {}
    for role in ("fixed", "moving", "fixed_labels", "moving_labels"):
        img = nib.load(str(files[role]))
        m = nib.Nifti1Image(
            np.asarray(img.dataobj), img.affine / np.array([1e3, 1e3, 1e3, 1.0])[:, None]
        )
        m.header.set_xyzt_units("meter")
        metres[role] = tmp_path / f"m_{files[role].name}"
        nib.save(m, str(metres[role]))
    assert _run(_register_args(files, tmp_path / "mm")) == 0
    assert _run(_register_args(files, tmp_path / "m", **metres)) == 0
    for name in ("flow_voxel.nii.gz", "warped.nii.gz", "disp_itk.nii.gz"):
        a, b = nib.load(str(tmp_path / "mm" / name)), nib.load(str(tmp_path / "m" / name))
        np.testing.assert_allclose(b.affine, a.affine, atol=1e-4)
        assert b.header.get_xyzt_units()[0] == "mm"
        np.testing.assert_allclose(b.get_fdata(), a.get_fdata(), atol=1e-4)
    dice = [
        json.loads((tmp_path / d / "metrics.json").read_text())["dice_after"] for d in ("mm", "m")
    ]
    assert dice[0] == pytest.approx(dice[1], abs=1e-6)


def _corrupt(root: Path) -> Path:
    path = root / "corrupt.nii.gz"
    path.write_bytes(b"\x1f\x8b not really gzip")
    return path


def _four_d(root: Path) -> Path:
    return _save(root / "four_d.nii.gz", np.zeros((*SHAPE, 2), np.float32))


def _nan(root: Path) -> Path:
    img = _blob((7.5, 9.5, 11.5))
    img[3, 3, 3] = np.nan
    return _save(root / "nan.nii.gz", img)


def _shifted_labels(root: Path) -> Path:
    aff = AFF.copy()
    aff[:3, 3] += 2.0
    return _save(root / "shifted_labels.nii.gz", np.zeros(SHAPE, np.uint8), aff)


def _bad_checkpoint(root: Path) -> Path:
    import shutil

    bad = root / "bad_ckpt"
    shutil.copytree(root / "run" / "checkpoints" / "best", bad)
    meta = json.loads((bad / "model.json").read_text())
    meta["model"]["dec_channels"] = 8  # the weights were saved with 4
    (bad / "model.json").write_text(json.dumps(meta))
    return bad


@pytest.mark.parametrize(
    ("key", "make", "message"),
    [
        ("fixed", lambda root: root / "missing.nii.gz", "file not found"),
        ("moving", _corrupt, "cannot read"),
        ("fixed", _four_d, "expected a 3-D volume"),
        ("moving", _nan, "NaN/Inf"),
        ("fixed_labels", _shifted_labels, "label map grid differs from its image"),
        ("run", _bad_checkpoint, "does not match its config"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(files, tmp_path, capsys, key, make, message):
    out = tmp_path / "nested" / "res"
    code = _run(_register_args(files, out, **{key: make(files["root"])}))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("maxca: error: ") and err.count("\n") == 1, err
    assert message in err
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary one


_ONE_PAIR = ["register", "--model", "m", "--fixed", "f", "--moving", "m", "--out", "o"]


@pytest.mark.parametrize(
    "argv",
    [
        ["register", "--fixed", "f.nii.gz", "--moving", "m.nii.gz", "--out", "o"],  # no --model
        ["register", "--model", "m", "--fixed", "f.nii.gz", "--out", "o"],  # no --moving
        ["register", "--model", "m", "--dataset", "d.json", "--fixed", "f", "--out", "o"],
        [*_ONE_PAIR, "--refine", "-1"],
        [*_ONE_PAIR, "--refine", "3", "--refine-similarity", "cosine"],
        [*_ONE_PAIR, "--passes", "0"],
        [*_ONE_PAIR, "--passes", "two"],
        ["evaluate", "--flow", "x.nii.gz"],
        ["evaluate", "--results", "r"],
        ["frobnicate"],
        [],
    ],
)
def test_usage_errors_exit_2(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _run(argv) == 2
    assert "error" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_refine_similarity_reaches_the_refinement_and_the_record(files, tmp_path, monkeypatch):
    import maxca.inference.refine as refine_module

    seen: list[dict] = []
    real = refine_module.refine_flow

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(refine_module, "refine_flow", spy)
    runs = {}
    for similarity in ("mind", None):
        out = tmp_path / f"res-{similarity}"
        extra = ["--refine-similarity", similarity] if similarity else []
        assert _run([*_register_args(files, out), "--refine", "3", *extra, "--quiet"]) == 0
        record = json.loads((out / "registration.json").read_text())
        assert record["refine_steps"] == 3 and record["refine_similarity"] == similarity
        runs[similarity] = np.asarray(nib.load(str(out / "flow_voxel.nii.gz")).dataobj)
    # the flag wins over the model's own similarity (NCC here), and it changes the result
    assert seen[0]["similarity"] == "mind" and seen[1].get("similarity", "ncc") == "ncc"
    assert np.abs(runs["mind"] - runs[None]).max() > 1e-4
    # the library call refuses an unknown similarity before reading anything
    from maxca.app import load_model, register_dataset, register_files

    model, info = load_model(files["run"], "cpu")
    with pytest.raises(MaxcaInputError, match="refine similarity must be one of ncc, mse, mind"):
        register_files(
            model, info, files["fixed"], files["moving"], tmp_path / "x", refine_steps=2,
            refine_similarity="cosine",
        )  # fmt: skip
    assert not (tmp_path / "x").exists()
    with pytest.raises(MaxcaInputError, match="refine similarity must be one of"):
        register_dataset(
            model, info, files["dataset"], tmp_path / "y", refine_steps=2,
            refine_similarity="cosine",
        )  # fmt: skip
    assert not (tmp_path / "y").exists()
    # the dataset path passes it on too
    reports = register_dataset(
        model, info, files["dataset"], tmp_path / "z", refine_steps=2, refine_similarity="mse"
    )
    assert seen[-1]["similarity"] == "mse" and len(seen) == 2 + len(reports)
    record = json.loads((reports[0].out_dir / "registration.json").read_text())
    assert record["refine_similarity"] == "mse"


def test_passes_reach_the_network_and_the_record(files, tmp_path, capsys):
    """``--passes 2`` runs the network twice (one pass, composed with itself, moves further)
    and records it; a bad value in the library call is refused before anything is written."""
    flows = {}
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        assert _run([*_register_args(files, out), "--passes", str(n), "--quiet"]) == 0
        record = json.loads((out / "registration.json").read_text())
        assert record["passes"] == n
        flows[n] = np.asarray(nib.load(str(out / "flow_voxel.nii.gz")).dataobj)
    assert "2 network passes" in capsys.readouterr().out
    assert np.abs(flows[2] - flows[1]).max() > 1e-3
    from maxca.app import load_model, register_dataset, register_files

    model, info = load_model(files["run"], "cpu")
    with pytest.raises(MaxcaInputError, match="passes must be an integer >= 1"):
        register_files(model, info, files["fixed"], files["moving"], tmp_path / "x", passes=0)
    with pytest.raises(MaxcaInputError, match="passes must be an integer >= 1"):
        register_dataset(model, info, files["dataset"], tmp_path / "y", passes=0)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    reports = register_dataset(model, info, files["dataset"], tmp_path / "z", passes=2)
    record = json.loads((reports[0].out_dir / "registration.json").read_text())
    assert record["passes"] == 2 and reports[0].passes == 2


def test_batch_register_then_evaluate(files, tmp_path, capsys):
    out = tmp_path / "val"
    argv = ["register", "--model", files["ckpt"], "--dataset", files["dataset"], "--out", out]
    assert _run([*argv, "--device", "cpu"]) == 0
    stdout = capsys.readouterr().out
    assert "[1/2] 0002_0001" in stdout and "[2/2] 0003_0001" in stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        ".maxca-manifest.json", "0002_0001", "0003_0001", "disp_0002_0001.nii.gz",
        "disp_0003_0001.nii.gz", "summary.json", "summary.md",
    ]  # fmt: skip
    disp = nib.load(str(out / "disp_0002_0001.nii.gz"))
    assert disp.shape == (*SHAPE, 3)  # Learn2Reg: voxel displacement, channels last
    np.testing.assert_allclose(disp.affine, AFF)
    flow = np.asarray(nib.load(str(out / "0002_0001" / "flow_voxel.nii.gz")).dataobj)
    np.testing.assert_allclose(disp.get_fdata(), flow[:, :, :, 0, :], atol=1e-6)
    per_pair = [
        json.loads((out / n / "metrics.json").read_text())["dice_after"]
        for n in ("0002_0001", "0003_0001")
    ]

    ev = tmp_path / "eval"
    argv = ["evaluate", "--results", out, "--dataset", files["dataset"], "--out", ev]
    assert _run(argv) == 0
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["n_pairs"] == 2
    assert summary["metrics"]["dice_mean"]["mean"] == pytest.approx(np.mean(per_pair), abs=1e-9)
    assert sorted(p.name for p in (ev / "pairs").iterdir()) == ["0002_0001.csv", "0003_0001.csv"]
    assert (ev / "summary.md").read_text().startswith("# Evaluation summary")
    assert _run([*argv, "--l2r-compat", "--overwrite"]) == 0
    assert json.loads((ev / "summary.json").read_text())["l2r_compat"] is True


def test_batch_register_checks_every_file_before_the_first_pair(files, tmp_path, capsys):
    """A corrupt label map of the last pair is refused before any pair is registered."""
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(files["dataset"].parent, ds)
    (ds / "labelsTr" / "T_0003_0000.nii.gz").write_bytes(b"\x1f\x8b not gzip")
    out = tmp_path / "val"
    argv = ["register", "--model", files["ckpt"], "--dataset", ds / "dataset.json", "--out", out]
    assert _run([*argv, "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert "T_0003_0000.nii.gz: cannot read NIfTI file" in captured.err
    assert "[1/2]" not in captured.out and not out.exists()


def test_evaluate_one_pair_hand_computed(tmp_path, capsys):
    fixed = np.zeros((10, 10, 10), np.uint8)
    fixed[2:6, 2:6, 2:6] = 1
    fixed[6:9, 6:9, 6:9] = 2
    moving = np.zeros_like(fixed)
    moving[3:7, 2:6, 2:6] = 1  # one voxel further along axis 0: Dice 2*48/128 = 0.75
    moving[6:9, 6:9, 6:9] = 2
    _save(tmp_path / "f.nii.gz", fixed, np.eye(4))
    _save(tmp_path / "m.nii.gz", moving, np.eye(4))
    _save(tmp_path / "disp_0001_0002.nii.gz", np.zeros((10, 10, 10, 3), np.float32), np.eye(4))
    argv = [
        "evaluate", "--fixed-labels", tmp_path / "f.nii.gz",
        "--moving-labels", tmp_path / "m.nii.gz",
        "--flow", tmp_path / "disp_0001_0002.nii.gz", "--out", tmp_path / "ev",
    ]  # fmt: skip
    assert _run([*argv, "--labels", "1"]) == 0
    assert "0.7500" in capsys.readouterr().out
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["metrics"]["dice_mean"]["mean"] == pytest.approx(0.75)
    assert _run([*argv, "--labels", "1,2", "--overwrite"]) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["metrics"]["dice_mean"]["mean"] == pytest.approx(0.875)
    csv = (tmp_path / "ev" / "pairs" / "0001_0002.csv").read_text()
    assert "0001_0002,dice,1,0.75" in csv
    # a missing flow file is bad input
    assert _run([*argv[:-2], "--flow", tmp_path / "nope.nii.gz"]) == 2
    assert capsys.readouterr().err.startswith("maxca: error: file not found")


def test_unexpected_error_exits_1(files, tmp_path, monkeypatch, capsys):
    import maxca.app as app

    def broken(*args, **kwargs):
        raise RuntimeError("something odd")

    monkeypatch.setattr(app, "register_files", broken)
    assert _run(_register_args(files, tmp_path / "o")) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: something odd" in err and err.count("\n") == 1


def test_train_and_demo_are_wired(monkeypatch, capsys, tmp_path):
    import maxca.training  # noqa: F401  (the package first: its __init__ imports the real trainer)

    calls = {}
    trainer = types.ModuleType("maxca.training.trainer")

    def main_train(config, overrides, overwrite=False):
        calls["train"] = (config, overrides)
        return Path("runs/my run")

    trainer.main_train = main_train
    demo = types.ModuleType("maxca.app.demo")
    demo.run_demo = lambda **kw: calls.setdefault("demo", kw)
    monkeypatch.setitem(sys.modules, "maxca.training.trainer", trainer)
    monkeypatch.setitem(sys.modules, "maxca.app.demo", demo)
    assert _run(["train", "cfg.yaml", "train.steps=3", "model.name=unet"]) == 0
    assert calls["train"] == ("cfg.yaml", ["train.steps=3", "model.name=unet"])
    # one closing line, the next command for the trained model (the trainer has already
    # printed where the run is), with the path quoted for the shell
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == (
        "next: maxca register --model 'runs/my run' --fixed F --moving M --out DIR"
    )
    assert _run(["demo", "--out", tmp_path, "--steps", "5", "--seed", "1"]) == 0
    assert calls["demo"] == {"out": str(tmp_path), "steps": 5, "seed": 1}
    assert _run(["demo", "--steps", "0"]) == 2


def test_console_script_in_a_subprocess(tmp_path):
    """The real process: exit code 2 and a single stderr line for a missing input."""
    argv = [
        sys.executable, "-m", "maxca.cli", "register", "--model", tmp_path / "none",
        "--fixed", tmp_path / "f.nii.gz", "--moving", tmp_path / "m.nii.gz",
        "--out", tmp_path / "o",
    ]  # fmt: skip
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("maxca: error: file not found") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_register_precision_bf16_close_to_fp32(files, tmp_path, capsys):
    """--precision bf16 runs the network under bfloat16 autocast: float32 outputs on the same
    grid, a flow within bf16 rounding of the fp32 one; an unknown precision is refused."""
    assert _run(_register_args(files, tmp_path / "fp32")) == 0
    assert _run([*_register_args(files, tmp_path / "bf16"), "--precision", "bf16"]) == 0
    f32 = nib.load(str(tmp_path / "fp32" / "flow_voxel.nii.gz")).get_fdata()
    b16 = nib.load(str(tmp_path / "bf16" / "flow_voxel.nii.gz"))
    assert b16.get_data_dtype() == np.float32 and b16.shape == f32.shape
    diff = np.abs(b16.get_fdata() - f32)
    assert np.abs(f32).max() > 0  # a real field, not the zero flow
    assert diff.max() <= 0.05 * np.abs(f32).max() + 1e-3
    capsys.readouterr()
    assert _run([*_register_args(files, tmp_path / "x"), "--precision", "fp16"]) == 2
    assert "precision" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_register_pair_refuses_an_unknown_precision(files):
    from maxca.app import load_model
    from maxca.data.io import read_volume
    from maxca.errors import MaxcaInputError
    from maxca.inference.register import register_pair

    model, info = load_model(files["run"])
    f, m = read_volume(files["fixed"], "image"), read_volume(files["moving"], "image")
    with pytest.raises(MaxcaInputError, match="precision must be one of"):
        register_pair(model, info, f, m, precision="fp16")


def test_register_compile_wraps_the_loaded_model(files, tmp_path, monkeypatch):
    """--compile hands the loaded network to maxca.accel.compile_model and registers with what
    it returns (here a stand-in that records the call: compiling for real takes minutes)."""
    import maxca.accel

    seen: list[torch.nn.Module] = []

    def fake_compile(model: torch.nn.Module, mode: str | None = None) -> torch.nn.Module:
        seen.append(model)
        return model

    monkeypatch.setattr(maxca.accel, "compile_model", fake_compile)
    assert _run(_register_args(files, tmp_path / "plain")) == 0
    assert seen == []
    assert _run([*_register_args(files, tmp_path / "comp"), "--compile"]) == 0
    assert len(seen) == 1 and isinstance(seen[0], torch.nn.Module)
    a = nib.load(str(tmp_path / "plain" / "flow_voxel.nii.gz")).get_fdata()
    b = nib.load(str(tmp_path / "comp" / "flow_voxel.nii.gz")).get_fdata()
    np.testing.assert_array_equal(a, b)
