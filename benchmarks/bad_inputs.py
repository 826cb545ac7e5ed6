"""A table of bad inputs run through ``maxca register`` and what each gives (not a test).

Every row builds its input in a temporary folder (tiny 16x20x24 images and a tiny untrained
``pyramid_small`` checkpoint), runs the command line in this process (``maxca.cli.main``, the
exit code as the process would return it) and records the exit code and the last line of
stderr, with the temporary folder written as ``<tmp>``. Bad input must give exit code 2 and one
line; a constant image is not an error: it warns and registers (exit 0).

Writes ``docs/bad-inputs.md`` (``--out``) and prints the table.

Usage::

    python benchmarks/bad_inputs.py            # regenerate docs/bad-inputs.md
    python benchmarks/bad_inputs.py --check    # exit 1 when docs/bad-inputs.md is out of date
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "bad-inputs.md"
SHAPE = (16, 20, 24)
AFF = np.diag([2.0, 2.0, 2.0, 1.0])


@dataclass
class Case:
    """One bad input: ``build(root)`` writes it and returns the ``maxca`` arguments."""

    name: str
    build: Callable[[Path], list[str]]
    expected: int = 2


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFF) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, None)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


def _blob(shift: float = 0.0) -> np.ndarray:
    idx = np.indices(SHAPE, dtype=np.float64)
    centre = (7.5 + shift, 9.5, 11.5)
    r2 = sum((idx[k] - centre[k]) ** 2 for k in range(3))
    return np.exp(-r2 / 32.0).astype(np.float32)


def _labels(image: np.ndarray) -> np.ndarray:
    return ((image > 0.3).astype(np.uint8) + (image > 0.7)).astype(np.uint8)


def _base(root: Path) -> dict[str, Path]:
    """A good checkpoint and a good pair under ``root``."""
    from maxca.models import create_model
    from maxca.models.checkpoint import save_checkpoint

    if not (root / "run").exists():
        torch.manual_seed(0)
        model = create_model(
            "pyramid_small", spatial_dims=3, enc_channels=2, dec_channels=4, heads=1, region=2
        )
        data = {"shape": list(SHAPE), "spacing": [2.0, 2.0, 2.0], "normalise": "minmax"}
        save_checkpoint(root / "run" / "checkpoints" / "best", model, data=data)
        _save(root / "fixed.nii.gz", _blob())
        _save(root / "moving.nii.gz", _blob(1.0))
        _save(root / "fixed_seg.nii.gz", _labels(_blob()))
        _save(root / "moving_seg.nii.gz", _labels(_blob(1.0)))
    return {
        "run": root / "run",
        "fixed": root / "fixed.nii.gz",
        "moving": root / "moving.nii.gz",
        "fixed_labels": root / "fixed_seg.nii.gz",
        "moving_labels": root / "moving_seg.nii.gz",
    }


def _register(root: Path, out: str = "out", **replace: Path | str) -> list[str]:
    f = {**_base(root), **replace}
    argv = ["register", "--model", f["run"], "--fixed", f["fixed"], "--moving", f["moving"]]
    if f.get("moving_labels"):
        argv += ["--moving-labels", f["moving_labels"]]
    if f.get("fixed_labels"):
        argv += ["--fixed-labels", f["fixed_labels"]]
    return [str(a) for a in [*argv, "--out", root / out, "--device", "cpu"]]


def _copy_run(root: Path) -> Path:
    import shutil

    run = root / "run-copy"
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(_base(root)["run"], run)
    return run


def _nan_weights(root: Path) -> list[str]:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    run = _copy_run(root)
    path = run / "checkpoints" / "best" / "model.safetensors"
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    state = load_file(str(path))
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(path), metadata=meta)
    return _register(root, run=run)


def _huge_model_json(root: Path) -> list[str]:
    run = _copy_run(root)
    path = run / "checkpoints" / "best" / "model.json"
    meta = json.loads(path.read_text())
    meta["model"]["enc_channels"] = 1_000_000
    path.write_text(json.dumps(meta))
    return _register(root, run=run)


def _singular(root: Path, which: str) -> list[str]:
    aff = AFF.copy()
    aff[:, 1] = 0.0
    image = _save(root / f"{which}-flat.nii.gz", _blob(), aff)
    labels = _save(root / f"{which}-flat_seg.nii.gz", _labels(_blob()), aff)
    return _register(root, **{which: image, f"{which}_labels": labels})


def _big_header(root: Path) -> list[str]:
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 1024))
    header.set_data_dtype(np.float32)
    header.set_sform(np.eye(4), code=1)
    path = root / "big1024.nii"
    with open(path, "wb") as fh:
        fh.write(header.binaryblock + b"\0" * 68)
    return _register(root, fixed=path, moving=path, fixed_labels="", moving_labels="")


def _corrupt(root: Path) -> list[str]:
    path = root / "corrupt.nii.gz"
    path.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    return _register(root, moving=path)


def _nan_voxels(root: Path) -> list[str]:
    image = _blob()
    image[3, 4, 5] = np.nan
    return _register(root, moving=_save(root / "nan.nii.gz", image))


def _beyond_float32(root: Path) -> list[str]:
    image = _blob().astype(np.float64) * 1e40  # finite in the file, not in float32
    return _register(root, moving=_save(root / "huge.nii.gz", image))


def _bad_unit(root: Path) -> list[str]:
    path = _save(root / "unit.nii.gz", _blob(1.0))
    image = nib.load(str(path))
    header = image.header.copy()
    header["xyzt_units"] = 5  # spatial unit codes are 0-3
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), image.affine, header), str(path))
    return _register(root, moving=path)


def _forms_disagree(root: Path) -> list[str]:
    image = nib.Nifti1Image(_blob(1.0), None)
    image.set_qform(AFF, code=1)
    shifted = AFF.copy()
    shifted[0, 3] += 6.0
    image.set_sform(shifted, code=2)
    path = root / "forms.nii.gz"
    nib.save(image, str(path))
    return _register(root, moving=path, out="out-forms", moving_labels="", fixed_labels="")


def _no_forms(root: Path) -> list[str]:
    image = nib.Nifti1Image(_blob(1.0), None)  # neither sform nor qform set
    path = root / "noforms.nii.gz"
    nib.save(image, str(path))
    return _register(root, moving=path, out="out-noforms", moving_labels="", fixed_labels="")


def _four_d(root: Path) -> list[str]:
    return _register(root, moving=_save(root / "4d.nii.gz", np.zeros((*SHAPE, 2), np.float32)))


def _two_d(root: Path) -> list[str]:
    image = _save(root / "2d.nii.gz", np.ones((16, 20), np.float32))
    return _register(root, fixed=image, moving=image, fixed_labels="", moving_labels="")


def _label_grid(root: Path) -> list[str]:
    return _register(
        root, moving_labels=_save(root / "small_seg.nii.gz", np.zeros((8, 8, 8), np.uint8))
    )


def _out_exists(root: Path) -> list[str]:
    (root / "full").mkdir(exist_ok=True)
    (root / "full" / "mine.txt").write_text("my file")
    return _register(root, out="full")


def _out_readonly(root: Path) -> list[str]:
    argv = _register(root)
    argv[argv.index("--out") + 1] = "/proc/maxca-bad-inputs/out"
    return argv


def _dataset_json_missing(root: Path) -> list[str]:
    return ["register", "--model", str(_base(root)["run"]), "--dataset",
            str(root / "shared" / "dataset.json"), "--out", str(root / "out")]  # fmt: skip


def _dataset_not_json(root: Path) -> list[str]:
    path = root / "broken.json"
    path.write_text("{not json")
    return ["register", "--model", str(_base(root)["run"]), "--dataset", str(path),
            "--out", str(root / "out")]  # fmt: skip


def _bad_outputs(root: Path) -> list[str]:
    return [*_register(root), "--outputs", "warped,pictures"]


def _missing_checkpoint(root: Path) -> list[str]:
    return _register(root, run=root / "no-such-run")


def _constant(root: Path) -> list[str]:
    return _register(root, moving=_save(root / "zeros.nii.gz", np.zeros(SHAPE, np.float32)))


def _thin_slab_affine(root: Path) -> list[str]:
    slab = np.ascontiguousarray(_blob()[:, :, 10:13])
    moving = _save(root / "slab3.nii.gz", slab)
    return [*_register(root, moving=moving, fixed_labels="", moving_labels=""), "--affine"]


def _single_slice_fixed(root: Path) -> list[str]:
    one = _save(root / "slice.nii.gz", np.ascontiguousarray(_blob()[:, :, 10:11]))
    return _register(root, fixed=one, fixed_labels="", moving_labels="")


def _constant_affine(root: Path) -> list[str]:
    return [*_constant(root), "--affine"]


def _labels_without_moving_labels(root: Path) -> list[str]:
    return [*_register(root, fixed_labels="", moving_labels=""), "--outputs", "warped,labels"]


def _image_as_labels(root: Path) -> list[str]:
    values = np.random.default_rng(0).integers(-1000, 2000, SHAPE).astype(np.int16)
    return _register(root, out="out_ct", moving_labels=_save(root / "ct.nii.gz", values))


CASES = [
    Case("missing checkpoint folder", _missing_checkpoint),
    Case("NaN weights in model.safetensors", _nan_weights),
    Case("model.json asking for 10^6 channels", _huge_model_json),
    Case("missing moving image", lambda r: _register(r, moving=r / "no-such.nii.gz")),
    Case("corrupt .nii.gz (bad gzip stream)", _corrupt),
    Case("NaN voxel in the moving image", _nan_voxels),
    Case("float64 moving image with values beyond the float32 range", _beyond_float32),
    Case("moving image with an undefined NIfTI spatial unit code", _bad_unit),
    Case("4-D moving image", _four_d),
    Case("2-D images for a 3-D model", _two_d),
    Case("moving labels on another grid than the moving image", _label_grid),
    Case("fixed image with zero spacing (singular affine)", lambda r: _singular(r, "fixed")),
    Case("moving image with zero spacing (singular affine)", lambda r: _singular(r, "moving")),
    Case("--fixed-labels without --moving-labels", lambda r: _register(r, moving_labels="")),
    Case("1024^3 image (header only) beyond the available memory", _big_header),
    Case("--out holds files, no --overwrite", _out_exists),
    Case("--out on a read-only file system", _out_readonly),
    Case("--dataset path that does not exist", _dataset_json_missing),
    Case("--dataset file that is not JSON", _dataset_not_json),
    Case("--outputs with an unknown name", _bad_outputs),
    Case("--outputs labels without --moving-labels", _labels_without_moving_labels),
    Case("moving image of 3 slices, with --affine", _thin_slab_affine),
    Case("fixed image of a single slice for a 3-D model", _single_slice_fixed),
    Case("constant (all-zero) moving image, with --affine", _constant_affine),
    Case("constant (all-zero) moving image: a warning, not an error", _constant, expected=0),
    Case(
        "integer image (> 1000 values) as --moving-labels: a warning", _image_as_labels, expected=0
    ),  # fmt: skip
    Case("sform and qform 6 mm apart: a warning", _forms_disagree, expected=0),
    Case("moving image with neither sform nor qform: a warning", _no_forms, expected=0),
]


def run_case(case: Case, root: Path) -> tuple[int, str]:
    """Run one case; returns ``(exit code, last stderr line with <tmp> for root)``."""
    from maxca import cli

    argv = case.build(root)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    message = lines[-1] if lines else ""
    message = message.replace(str(root.resolve()), "<tmp>").replace(str(root), "<tmp>")
    message = re.sub(r"\d+\.\d GB available", "N GB available", message)
    return int(code or 0), message


def table(rows: list[tuple[Case, int, str]]) -> str:
    lines = [
        "# Bad inputs to `maxca register`",
        "",
        "Generated by `python benchmarks/bad_inputs.py` (do not edit by hand): each row builds",
        "its input in a temporary folder (`<tmp>`), runs the command line and records the exit",
        "code and the last line on stderr. Bad input gives exit code 2 and one line; nothing is",
        "written then. The available memory in the memory row is machine dependent (`N`).",
        "",
        "| input | exit code | message |",
        "|---|---|---|",
    ]
    for case, code, message in rows:
        text = message.replace("|", "\\|")
        lines.append(f"| {case.name} | {code} | `{text}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOC)
    parser.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="maxca-bad-") as tmp:
        root = Path(tmp)
        for case in CASES:
            code, message = run_case(case, root)
            rows.append((case, code, message))
            flag = "" if code == case.expected else f"  <-- expected {case.expected}"
            print(f"{code}  {case.name}: {message}{flag}")
    text = table(rows)
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{args.out} is out of date")
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0 if all(code == case.expected for case, code, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
