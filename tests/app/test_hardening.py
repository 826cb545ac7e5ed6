"""Issue 15 (registration side): nothing lost, nothing silently wrong.

Overwrite replaces only what maxca wrote (manifest), SIGTERM/SIGHUP clean the temporaries,
stale temporaries of ours are removed on the next run, bad input exits 2, the memory estimate
refuses a registration that cannot fit before any data is read, ``--out`` is checked before
computing, constant images warn, falling Dice gets a note, ``--refine`` has a progress bar.
Tiny volumes (16x20x24) and a tiny model only.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from maxca import cli
from maxca.models import create_model
from maxca.models.checkpoint import save_checkpoint

SHAPE = (16, 20, 24)
AFF = np.diag([2.0, 2.0, 2.0, 1.0])
SRC = str(Path(__file__).resolve().parents[2] / "src")


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
    image = nib.Nifti1Image(array, None)
    image.set_sform(affine, code=1)  # sform only: a singular affine has no qform
    nib.save(image, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("harden")
    torch.manual_seed(0)
    model = create_model(
        "pyramid_small", spatial_dims=3, enc_channels=2, dec_channels=4, heads=1, region=2
    )
    data = {"shape": list(SHAPE), "spacing": [2.0, 2.0, 2.0], "normalise": "minmax"}
    save_checkpoint(root / "run" / "checkpoints" / "best", model, data=data)
    out = {"run": root / "run", "root": root}
    ds = root / "ds"
    training = []
    for case, centre in (("0001", (7.5, 9.5, 11.5)), ("0002", (8.0, 10.0, 11.0))):
        img = _blob(centre)
        _save(ds / f"imagesTr/T_{case}_0000.nii.gz", img)
        _save(ds / f"labelsTr/T_{case}_0000.nii.gz", _labels(img))
        training.append(
            {
                "image": f"./imagesTr/T_{case}_0000.nii.gz",
                "label": f"./labelsTr/T_{case}_0000.nii.gz",
            }
        )
    pairs = [{"fixed": training[1]["image"], "moving": training[0]["image"]}]
    meta = {"name": "T", "training": training, "registration_val": pairs}
    (ds / "dataset.json").write_text(json.dumps(meta))
    out["dataset"] = ds / "dataset.json"
    out["fixed"] = ds / "imagesTr/T_0002_0000.nii.gz"
    out["moving"] = ds / "imagesTr/T_0001_0000.nii.gz"
    out["fixed_labels"] = ds / "labelsTr/T_0002_0000.nii.gz"
    out["moving_labels"] = ds / "labelsTr/T_0001_0000.nii.gz"
    return out


def _run(argv: list) -> int:
    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)


def _pair_args(files: dict[str, Path], out: Path, **replace: Path) -> list:
    f = {**files, **replace}
    return [
        "register", "--model", f["run"], "--fixed", f["fixed"], "--moving", f["moving"],
        "--moving-labels", f["moving_labels"], "--fixed-labels", f["fixed_labels"],
        "--out", out, "--device", "cpu",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# item 3: --overwrite replaces only what maxca wrote


def test_overwrite_dataset_keeps_the_users_own_files(files, tmp_path, capsys):
    out = tmp_path / "val"
    argv = ["register", "--model", files["run"], "--dataset", files["dataset"], "--out", out,
            "--device", "cpu"]  # fmt: skip
    assert _run(argv) == 0
    manifest = json.loads((out / ".maxca-manifest.json").read_text())
    assert "disp_0002_0001.nii.gz" in manifest["files"]
    assert "0002_0001/warped.nii.gz" in manifest["files"]
    # the user's own files that match maxca's name patterns, and a stale result of ours
    mine = {
        "disp_9999_9998.nii.gz": b"my own field",
        "notes/warped.nii.gz": b"my own warped image",
        "notes/metrics.json": b"{}",
    }
    for rel, data in mine.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    manifest["files"].append("0003_0001/warped.nii.gz")  # an old result no longer produced
    (out / "0003_0001").mkdir()
    (out / "0003_0001" / "warped.nii.gz").write_bytes(b"old result")
    (out / ".maxca-manifest.json").write_text(json.dumps(manifest))
    assert _run([*argv, "--overwrite"]) == 0
    for rel, data in mine.items():
        assert (out / rel).read_bytes() == data, rel
    assert not (out / "0003_0001").exists()  # ours and stale: removed
    assert (out / "disp_0002_0001.nii.gz").is_file()


def test_overwrite_pair_keeps_unlisted_files(files, tmp_path):
    out = tmp_path / "pair"
    out.mkdir()
    (out / "figure.png").write_bytes(b"my own figure")  # a result name, but not written by us
    assert _run([*_pair_args(files, out), "--overwrite"]) == 0
    assert (out / "figure.png").read_bytes() == b"my own figure"
    listed = json.loads((out / ".maxca-manifest.json").read_text())["files"]
    assert "figure.png" not in listed and "warped.nii.gz" in listed


# ---------------------------------------------------------------------------------------------
# item 5: SIGTERM / SIGHUP clean the temporaries; stale temporaries of ours are removed


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signal_during_register_cleans_temporaries(files, tmp_path, signum, code):
    out = tmp_path / "val"
    argv = [sys.executable, "-m", "maxca.cli", "register", "--model", files["run"],
            "--dataset", files["dataset"], "--out", out, "--device", "cpu",
            "--refine", "1000000", "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [str(a) for a in argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".val.tmp-*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.count("\n") == 1 and "interrupted" in err, err
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_ours_are_removed_on_the_next_run(files, tmp_path):
    out = tmp_path / "pair"
    stale = tmp_path / ".pair.tmp-0badc0de"
    stale.mkdir()
    (stale / "warped.nii.gz").write_bytes(b"x" * 100)
    (stale / ".maxca-tmp").write_text(json.dumps({"pid": _dead_pid()}))
    other = tmp_path / ".pair.tmp-12345678"  # no marker, fresh: not known to be ours
    other.mkdir()
    assert _run(_pair_args(files, out)) == 0
    assert not stale.exists()
    assert other.is_dir()


# ---------------------------------------------------------------------------------------------
# item 8: bad input exits 2 with one line


def test_nan_weights_exit_2(files, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    import shutil

    shutil.copytree(files["run"], run)
    ckpt = run / "checkpoints" / "best" / "model.safetensors"
    state = load_file(str(ckpt))
    name = next(iter(k for k, v in state.items() if v.is_floating_point()))
    state[name] = torch.full_like(state[name], float("nan"))
    meta = None
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as fh:
        meta = fh.metadata()
    save_file(state, str(ckpt), metadata=meta)
    capsys.readouterr()
    assert _run(_pair_args(files, tmp_path / "o", run=run)) == 2
    err = capsys.readouterr().err
    assert err.startswith("maxca: error:") and err.count("\n") == 1
    assert "not finite" in err or "checksum" in err  # checksum: checkpoints that carry one
    assert not (tmp_path / "o").exists()


def test_singular_fixed_affine_exits_2(files, tmp_path, capsys):
    aff = AFF.copy()
    aff[:, 1] = 0.0  # zero spacing along the second axis
    fixed = _save(tmp_path / "flat.nii.gz", _blob((8, 10, 12)), aff)
    flab = _save(tmp_path / "flat_lab.nii.gz", _labels(_blob((8, 10, 12))), aff)
    capsys.readouterr()
    assert _run(_pair_args(files, tmp_path / "o", fixed=fixed, fixed_labels=flab)) == 2
    err = capsys.readouterr().err
    assert err.startswith("maxca: error:") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# item 9: the memory estimate refuses before reading the data


def _fake_big_nifti(path: Path, n: int = 512) -> Path:
    """A NIfTI whose header says n^3 float32 but which holds only a few bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_shape((n, n, n))
    header.set_data_dtype(np.float32)
    header.set_zooms((1.0, 1.0, 1.0))
    header.set_sform(np.eye(4), code=1)
    with open(path, "wb") as fh:
        fh.write(header.binaryblock)
        fh.write(b"\0" * (int(header["vox_offset"]) - len(header.binaryblock)) + b"\0" * 64)
    return path


def test_memory_estimate_refuses_512_cubed_before_reading(files, tmp_path, capsys, monkeypatch):
    import maxca.app.memory as memory

    big = _fake_big_nifti(tmp_path / "big.nii")
    monkeypatch.setattr(memory, "available_memory", lambda: 8 * 2**30)
    capsys.readouterr()
    argv = ["register", "--model", files["run"], "--fixed", big, "--moving", big,
            "--out", tmp_path / "o", "--device", "cpu"]  # fmt: skip
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "GB" in err and "--max-memory" in err, err
    assert "8.0 GB available" in err
    assert not (tmp_path / "o").exists()
    # --max-memory is the budget: a larger one lets it through to reading (which then fails)
    assert _run([*argv, "--max-memory", "10000"]) == 2
    err = capsys.readouterr().err
    assert "--max-memory" not in err


def test_memory_estimate_is_conservative_and_scales():
    from maxca.app.memory import estimate_memory

    model = create_model("pyramid_small", spatial_dims=3)
    small = estimate_memory(model, (160, 192, 224), (160, 192, 224), (160, 192, 224))
    big = estimate_memory(model, (512,) * 3, (512,) * 3, (160, 192, 224))
    assert big > small > 0
    # at least the bytes of the two images, the flow and the warped image in float32
    assert big >= 4 * 512**3 * (1 + 1 + 3 + 1)
    # the 1 mm pair: above its measured peak (2.5 GB with pyramid_small on 80x96x112)
    mid = estimate_memory(model, (160, 192, 224), (160, 192, 224), (80, 96, 112))
    assert 2.5 * 2**30 < mid < 4 * 2**30


# ---------------------------------------------------------------------------------------------
# item 10: --out checked before computing; constant images warn


def test_unwritable_out_is_refused_before_loading_the_model(files, monkeypatch, capsys):
    import maxca.app as app

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(app, "load_model", never)
    out = Path("/proc/maxca-not-writable/out")
    assert _run(_pair_args(files, out)) == 2
    err = capsys.readouterr().err
    assert "not writable" in err and err.count("\n") == 1


def test_constant_image_warns_and_proceeds(files, tmp_path, capsys):
    flat = _save(tmp_path / "flat.nii.gz", np.zeros(SHAPE, np.float32))
    capsys.readouterr()
    assert _run(_pair_args(files, tmp_path / "o", moving=flat)) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(lines) == 1 and "constant" in lines[0] and "moving" in lines[0], err
    assert (tmp_path / "o" / "warped.nii.gz").is_file()


# ---------------------------------------------------------------------------------------------
# item 15: a note when Dice falls; --refine progress bar


def test_note_when_dice_falls(files, tmp_path, capsys, monkeypatch):
    import maxca.app as app
    from maxca.app.registration import PairReport

    def fake(*args, **kwargs):
        metrics = {"labels": [4, 17], "dice_before": 0.464, "dice_after": 0.459,
                   "njd_percent": 0.0, "sdlogj": 0.1}  # fmt: skip
        return PairReport("p", tmp_path / "o", ["warped.nii.gz"], metrics, timings={"network": 0.1})

    monkeypatch.setattr(app, "register_files", fake)
    assert _run(_pair_args(files, tmp_path / "o")) == 0
    out = capsys.readouterr().out
    assert "0.464 -> 0.459" in out
    notes = [ln for ln in out.splitlines() if ln.strip().startswith("note:")]
    assert len(notes) == 1 and "Dice fell" in notes[0]


def test_no_note_when_dice_rises(files, tmp_path, capsys, monkeypatch):
    import maxca.app as app
    from maxca.app.registration import PairReport

    def fake(*args, **kwargs):
        metrics = {"labels": [4], "dice_before": 0.4, "dice_after": 0.5,
                   "njd_percent": 0.0, "sdlogj": 0.1}  # fmt: skip
        return PairReport("p", tmp_path / "o", [], metrics, timings={"network": 0.1})

    monkeypatch.setattr(app, "register_files", fake)
    assert _run(_pair_args(files, tmp_path / "o")) == 0
    assert "note:" not in capsys.readouterr().out


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_refine_progress_bar(monkeypatch):
    from maxca.inference.refine import refine_flow

    fixed, moving = torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8)
    flow = torch.zeros(1, 3, 8, 8, 8)
    tty = _TTY()
    monkeypatch.setattr(sys, "stderr", tty)
    refine_flow(fixed, moving, flow, 3, progress=True)
    assert "refine" in tty.getvalue() and "3/3" in tty.getvalue()
    tty = _TTY()
    monkeypatch.setattr(sys, "stderr", tty)
    refine_flow(fixed, moving, flow, 3, progress=False)
    assert tty.getvalue() == ""
    not_tty = io.StringIO()
    monkeypatch.setattr(sys, "stderr", not_tty)
    refine_flow(fixed, moving, flow, 3, progress=True)
    assert not_tty.getvalue() == ""


# ---------------------------------------------------------------------------------------------
# label maps that are not what they claim; an output that cannot be written


def test_an_image_given_as_labels_warns(files, tmp_path, capsys):
    # an integer intensity image (CT-like, > 1000 distinct values) given as the moving labels
    rng = np.random.default_rng(0)
    ct = _save(tmp_path / "ct.nii.gz", rng.integers(-1000, 2000, SHAPE).astype(np.int16))
    capsys.readouterr()
    assert _run(_pair_args(files, tmp_path / "o", moving_labels=ct)) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert any("moving label map" in ln and "intensity image" in ln for ln in lines), lines
    assert not any("fixed label map" in ln for ln in lines)


def test_label_maps_without_a_shared_id_warn(files, tmp_path, capsys):
    moved = nib.load(str(files["moving_labels"]))
    ids = np.asarray(moved.dataobj).astype(np.int32)
    other = _save(tmp_path / "other.nii.gz", np.where(ids > 0, ids + 100, 0).astype(np.int32))
    capsys.readouterr()
    assert _run(_pair_args(files, tmp_path / "o", moving_labels=other)) == 0
    err = capsys.readouterr().err
    assert "share no label id" in err and err.count("share no label id") == 1
    capsys.readouterr()
    assert _run(_pair_args(files, tmp_path / "ok")) == 0  # the real maps: no warning
    assert "share no label id" not in capsys.readouterr().err


def test_outputs_labels_without_moving_labels_is_refused(files, tmp_path, capsys):
    args = ["register", "--model", files["run"], "--fixed", files["fixed"], "--moving",
            files["moving"], "--out", tmp_path / "o", "--device", "cpu", "--outputs",
            "warped,labels"]  # fmt: skip
    assert _run(args) == 2
    err = capsys.readouterr().err
    assert "--outputs labels needs --moving-labels" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_a_single_slice_fixed_image_is_refused_before_registering(files, tmp_path, capsys):
    one = _save(tmp_path / "slice.nii.gz", np.ascontiguousarray(_blob((7.5, 9.5, 11.5))[:, :, 5:6]))
    args = ["register", "--model", files["run"], "--fixed", one, "--moving", files["moving"],
            "--out", tmp_path / "o", "--device", "cpu"]  # fmt: skip
    assert _run(args) == 2
    err = capsys.readouterr().err
    assert "is 16x20x1 voxels: a 3-D registration needs at least 2" in err, err
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()
