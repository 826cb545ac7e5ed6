"""``maxca demo``: a short end-to-end run on a bundled brain template, offline and on a CPU.

Three stages, each through the code a user runs on their own data:

1. **data**: a Learn2Reg-layout dataset of synthetic subjects made from the MNI152 2009 template
   that nilearn ships inside its wheel (:func:`maxca.data.template.make_template_dataset`:
   random smooth diffeomorphic deformations, intensity and bias variation, CSF/GM/WM labels
   per hemisphere), at 3 mm (a 51x63x53 grid). The last two subjects form the held-out pair
   (``registration_val``) and are never trained on;
2. **training**: a small 3-D MAXCA pyramid (``pyramid_small``, ``attention: maxca``),
   unsupervised (local NCC + diffusion), with :func:`maxca.training.trainer.train`, the trainer
   behind ``maxca train``, and its progress bar;
3. **registration**: the held-out pair with :func:`maxca.app.registration.register_files`,
   what ``maxca register --png`` runs (warped image and labels, voxel and ITK displacement
   fields, ``metrics.json``, ``figure.png``).

It then prints Dice before/after (mean over the six labels, from ``metrics.json``), the folding
percentage, the runtimes and where the files are. The output folder ``OUT`` holds::

    OUT/demo.json          settings, results and timings of the demo (marks OUT as a demo)
    OUT/data/              dataset.json, imagesTr/, labelsTr/
    OUT/run/               the training run (config.yaml, metrics.csv, checkpoints/last)
    OUT/registration/      the files of ``maxca register`` for the held-out pair

An ``OUT`` that already holds files is refused, unless it is the folder of an earlier demo
(``demo.json`` written by this module): that demo's ``data/``, ``run/``, ``registration/`` and
``demo.json`` are then replaced and other files are left alone.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from maxca._atomic import atomic_write_text
from maxca._optional import require
from maxca._version import __version__
from maxca.errors import MaxcaInputError

__all__ = [
    "DEFAULT_LR",
    "DEFAULT_STEPS",
    "DEFAULT_SUBJECTS",
    "MODEL_CONFIG",
    "demo_config",
    "run_demo",
    "write_example_data",
]

#: training subjects (two more are made for the held-out pair)
DEFAULT_SUBJECTS = 8
#: optimisation steps: about 3 minutes on two CPU cores at 3 mm
DEFAULT_STEPS = 120
#: peak learning rate (cosine schedule, short warm-up)
DEFAULT_LR = 1e-3
#: voxel size of the demo data in mm (the template cropped to the brain: 51x63x53 voxels)
DEFAULT_SPACING_MM = 3.0
#: amplitude of the random deformations, in voxels
DEFAULT_MAGNITUDE_VOX = 3.0
#: the network: ``pyramid_small`` with MAXCA blocks at levels 1..3
MODEL_NAME = "pyramid_small"
MODEL_CONFIG: dict[str, Any] = {"attention": "maxca"}
#: the smallest number of training subjects (random pairs need two)
MIN_SUBJECTS = 2

MARKER = "demo.json"
PARTS = ("data", "run", "registration")


def _check_options(
    subjects: Any, steps: Any, minutes: Any, seed: Any, spacing_mm: Any, magnitude_vox: Any
) -> None:
    """One-line errors for arguments a user can get wrong (before anything is written)."""

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def is_number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not is_int(subjects) or subjects < MIN_SUBJECTS:
        raise MaxcaInputError(
            f"--subjects must be an integer >= {MIN_SUBJECTS} (training subjects; the held-out "
            f"pair is made in addition), got {subjects!r}"
        )
    if steps is not None and (not is_int(steps) or steps < 1):
        raise MaxcaInputError(f"--steps must be an integer >= 1, got {steps!r}")
    if minutes is not None and (not is_number(minutes) or not minutes > 0):
        raise MaxcaInputError(f"--minutes must be a number > 0, got {minutes!r}")
    if not is_int(seed):
        raise MaxcaInputError(f"--seed must be an integer, got {seed!r}")
    if not is_number(spacing_mm) or not 1.0 <= spacing_mm <= 12.0:
        raise MaxcaInputError(f"spacing_mm must be a number in [1, 12] mm, got {spacing_mm!r}")
    if not is_number(magnitude_vox) or magnitude_vox < 0:
        raise MaxcaInputError(f"magnitude_vox must be a number >= 0, got {magnitude_vox!r}")


def _is_demo_folder(path: Path) -> bool:
    """Whether ``path`` holds the ``demo.json`` of an earlier (possibly interrupted) demo."""
    try:
        record = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "maxca_demo" in record


def _prepare_output(out: str | os.PathLike[str], overwrite: bool) -> Path:
    """Check ``out`` (refusing a non-empty folder that is not an earlier demo) and clear the
    parts of an earlier demo; returns the absolute path. Nothing is removed when refused."""
    path = Path(os.path.abspath(os.path.expanduser(os.fspath(out))))
    if path.exists() and not path.is_dir():
        raise MaxcaInputError(f"output path exists and is not a directory: {path}")
    if path.is_dir() and any(path.iterdir()):
        if not (overwrite or _is_demo_folder(path)):
            raise MaxcaInputError(
                f"output directory already holds files and no earlier maxca demo: {path} "
                "(choose another --out)"
            )
        for part in PARTS:
            target = path / part
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        with contextlib.suppress(FileNotFoundError):
            (path / MARKER).unlink()
    return path


def _write_record(path: Path, record: Mapping[str, Any]) -> None:
    """Write ``demo.json`` atomically."""
    atomic_write_text(path, json.dumps(record, indent=2, allow_nan=False) + "\n")


def demo_config(
    dataset_json: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    steps: int | None = DEFAULT_STEPS,
    minutes: float | None = None,
    device: str = "auto",
    seed: int = 0,
    lr: float = DEFAULT_LR,
    model_config: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Any:
    """The demo's training experiment (a :class:`~maxca.training.config.ExperimentConfig`).

    ``pyramid_small`` with MAXCA attention (``model_config`` entries override
    :data:`MODEL_CONFIG`), random inter-subject pairs on the files' own grid, local NCC
    (window 9) + diffusion (weight 1), Adam with a cosine schedule over the budget (``steps``
    and/or ``minutes``, whichever ends first), no validation (the held-out pair is only used
    after training), ``checkpoints/last`` at the end.
    """
    from maxca.training.config import config_from_dict

    if steps is None and minutes is None:
        steps = DEFAULT_STEPS
    raw: dict[str, Any] = {
        "model": {"name": MODEL_NAME, "config": {**MODEL_CONFIG, **dict(model_config or {})}},
        "data": {
            "path": str(Path(dataset_json).resolve()),
            "pairs": "random",
            "normalise": "minmax",
            "cache": True,
            "val_pairs": None,
        },
        "loss": {
            "similarity": "ncc",
            "window": 9,
            "weights": {"similarity": 1.0, "diffusion": 1.0},
        },
        "optim": {"lr": lr, "schedule": "cosine", "warmup_steps": 10, "grad_clip": 10.0},
        "budget": {"steps": steps, "minutes": minutes},
        "val_every": 0,
        "log_every": 10,
        "ckpt_every": max(steps or 0, 1000),
        "device": device,
        "seed": seed,
        "name": "demo",
        "run_dir": str(Path(run_dir).resolve()),
        "progress": progress,
        "tensorboard": False,
    }
    return config_from_dict(raw)


def _rel(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (for printing)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def demo_dataset(
    root: str | os.PathLike[str],
    subjects: int = DEFAULT_SUBJECTS,
    seed: int = 0,
    spacing_mm: float = DEFAULT_SPACING_MM,
    magnitude_vox: float = DEFAULT_MAGNITUDE_VOX,
) -> Path:
    """Write the demo's data into ``root`` and return its ``dataset.json``: ``subjects``
    training subjects deformed from the MNI152 template plus one held-out pair
    (``registration_val[0]``, the pair the demo registers)."""
    from maxca.data.template import make_template_dataset

    return make_template_dataset(
        root,
        subjects=subjects + 2,
        spacing_mm=float(spacing_mm),
        seed=seed,
        magnitude_vox=float(magnitude_vox),
        held_out_pairs=1,
    )


def run_demo(
    out: str | os.PathLike[str] = "maxca-demo",
    subjects: int = DEFAULT_SUBJECTS,
    steps: int | None = None,
    minutes: float | None = None,
    device: str = "auto",
    seed: int = 0,
    *,
    overwrite: bool = False,
    spacing_mm: float = DEFAULT_SPACING_MM,
    magnitude_vox: float = DEFAULT_MAGNITUDE_VOX,
    lr: float = DEFAULT_LR,
    model_config: Mapping[str, Any] | None = None,
    progress: bool = True,
    **_: Any,
) -> Path:
    """Run the demo (see the module docstring) and print its report.

    Args:
        out: output folder (new, empty, or the folder of an earlier demo, which is replaced).
        subjects: training subjects (>= 2); two more are made for the held-out pair.
        steps: training steps (default :data:`DEFAULT_STEPS`; with only ``minutes`` given, no
            step limit).
        minutes: training time budget in minutes (with ``steps``: whichever ends first).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        seed: seed of the synthetic data and of the training.
        overwrite: also accept a non-empty ``out`` that is not an earlier demo (Python API
            only; the demo's own subfolders are replaced, other files left alone).
        spacing_mm: voxel size of the data and model grid (3 mm: 51x63x53 voxels).
        magnitude_vox: amplitude of the random deformations of the subjects, in voxels.
        lr: peak learning rate.
        model_config: overrides of the network options (:data:`MODEL_CONFIG`).
        progress: show the training progress bar.
        **_: further keywords (e.g. the rest of a command-line namespace) are ignored.

    Returns:
        the output folder, as an absolute path (``maxca demo`` prints it; exit code 0).

    Raises:
        MaxcaInputError: a bad option, CUDA requested but unavailable, or an output folder that
            holds other files; nothing is written then.
    """
    from maxca.inference.register import resolve_device

    _check_options(subjects, steps, minutes, seed, spacing_mm, magnitude_vox)
    dev = resolve_device(device)  # "cuda" without CUDA: one-line error, nothing written
    require("nilearn.datasets", "demo", "maxca demo")  # the template: before anything is written
    if steps is None and minutes is None:
        steps = DEFAULT_STEPS
    out_dir = _prepare_output(out, overwrite)
    t_start = time.perf_counter()

    from maxca.app.registration import load_model, register_files
    from maxca.data.learn2reg import load_learn2reg
    from maxca.training.trainer import train

    settings = {
        "subjects": subjects,
        "held_out_pairs": 1,
        "steps": steps,
        "minutes": minutes,
        "device": dev.type,
        "seed": seed,
        "spacing_mm": float(spacing_mm),
        "magnitude_vox": float(magnitude_vox),
        "lr": lr,
        "model": {"name": MODEL_NAME, **MODEL_CONFIG, **dict(model_config or {})},
    }
    record: dict[str, Any] = {"maxca_demo": __version__, "status": "running", **settings}
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_record(out_dir / MARKER, record)

    # 1. data ----------------------------------------------------------------------------------
    budget = f"{steps} steps" if steps is not None else ""
    if minutes is not None:
        budget += (" or " if budget else "") + f"{minutes:g} min"
    print(
        f"maxca demo: {MODEL_NAME} with {settings['model']['attention']} attention, "
        f"{subjects} training subjects at "
        f"{spacing_mm:g} mm, {budget} on {dev.type}; output in {_rel(out_dir)}",
        flush=True,
    )
    t0 = time.perf_counter()
    dataset_json = demo_dataset(out_dir / "data", subjects, seed, spacing_mm, magnitude_vox)
    t_data = time.perf_counter() - t0
    dataset = load_learn2reg(dataset_json)
    fixed, moving = dataset.registration_val[0]
    fixed_labels, moving_labels = dataset.label_for(fixed), dataset.label_for(moving)
    shape = "x".join(str(s) for s in json.loads(dataset_json.read_text())["tensorImageShape"]["0"])
    print(
        f"[1/3] data: {subjects + 2} synthetic subjects ({shape} voxels) from the MNI152 "
        f"template in {_rel(out_dir / 'data')} ({t_data:.1f} s)",
        flush=True,
    )

    # 2. training ------------------------------------------------------------------------------
    print(f"[2/3] training on {subjects} subjects (held-out pair excluded)", flush=True)
    config = demo_config(
        dataset_json, out_dir / "run", steps, minutes, dev.type, seed, lr, model_config, progress
    )
    t0 = time.perf_counter()
    sys.stdout.flush()
    run_dir = train(config)
    t_train = time.perf_counter() - t0

    # 3. registration --------------------------------------------------------------------------
    print(f"[3/3] registering the held-out pair {moving.name} -> {fixed.name}", flush=True)
    t0 = time.perf_counter()
    model, info = load_model(run_dir, dev)
    n_steps = int(info.state.get("step", 0))
    report = register_files(
        model,
        info,
        fixed,
        moving,
        out_dir / "registration",
        moving_labels=moving_labels,
        fixed_labels=fixed_labels,
        device=dev,
        png=True,
        labels=dataset.evaluation_labels or None,
    )
    t_register = time.perf_counter() - t0
    t_total = time.perf_counter() - t_start

    metrics = json.loads((report.out_dir / "metrics.json").read_text(encoding="utf-8"))
    before, after = metrics["dice_before"], metrics["dice_after"]
    record.update(
        status="done",
        steps_trained=n_steps,
        pair={"fixed": str(fixed), "moving": str(moving)},
        dice_before=before,
        dice_after=after,
        njd_percent=metrics["njd_percent"],
        labels=metrics["labels"],
        runtime_s={
            "data": round(t_data, 3),
            "training": round(t_train, 3),
            "registration": round(t_register, 3),
            "total": round(t_total, 3),
        },
        run_dir=str(run_dir),
        registration_dir=str(report.out_dir),
    )
    _write_record(out_dir / MARKER, record)

    reg = report.out_dir
    gain = "" if before is None or after is None else f" ({after - before:+.3f})"
    print()
    print(f"Held-out pair, mean Dice over {len(metrics['labels'])} labels (CSF/GM/WM left/right):")
    print(f"  before {_fmt(before)}  after {_fmt(after)}{gain}")
    print(f"  folded voxels (det J <= 0): {_fmt(metrics['njd_percent'])} %")
    print(
        f"Runtime: data {t_data:.1f} s, training {t_train:.1f} s ({n_steps} steps), "
        f"registration {t_register:.1f} s, total {t_total:.1f} s"
    )
    print(f"Outputs in {_rel(reg)}:")
    print("  warped.nii.gz, warped_labels.nii.gz (moving image and labels on the fixed grid)")
    print("  flow_voxel.nii.gz (voxel displacement), disp_itk.nii.gz (ITK/ANTs, LPS mm)")
    print(f"  metrics.json; figure: {_rel(reg / 'figure.png')}")
    print(f"Model: {_rel(run_dir)} (use it with: maxca register --model {_rel(run_dir)} ...)")
    if before is not None and after is not None and after <= before:
        print("note: Dice did not improve; train longer (--steps) or on more --subjects")
    return out_dir


#: subjects of ``maxca example-data``: 6 for training, 4 for two held-out pairs
EXAMPLE_SUBJECTS = 10
#: held-out pairs (``registration_val``) of ``maxca example-data``
EXAMPLE_PAIRS = 2


def write_example_data(
    out: str | os.PathLike[str],
    subjects: int = EXAMPLE_SUBJECTS,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a small Learn2Reg dataset for trying the command line (``maxca example-data``).

    ``subjects`` synthetic subjects made from the MNI152 template that nilearn ships in its
    wheel (offline; :func:`maxca.data.template.make_template_dataset`) at 3 mm (51x63x53
    voxels), with CSF/GM/WM label maps per hemisphere: ``dataset.json``, ``imagesTr/``,
    ``labelsTr/`` and ``registration_val`` pairs (``DEMO_0007`` <- ``DEMO_0008`` and
    ``DEMO_0009`` <- ``DEMO_0010`` by default), held out of ``training``. ``out`` appears complete
    or not at all.

    Args:
        out: the dataset folder (new or empty, or any folder with ``overwrite``).
        subjects: number of subjects (>= 6: two for training, four for the held-out pairs).
        seed: seed of the random deformations and intensities.
        overwrite: replace an earlier example dataset in ``out``.

    Returns:
        the path of ``dataset.json``.
    """
    from maxca.inference._output import OutputDir, check_output_dir

    minimum = 2 + 2 * EXAMPLE_PAIRS
    if isinstance(subjects, bool) or not isinstance(subjects, int) or subjects < minimum:
        raise MaxcaInputError(f"--subjects must be an integer >= {minimum}, got {subjects!r}")
    require("nilearn.datasets", "demo", "maxca example-data")  # before anything is written
    out_path = check_output_dir(out, overwrite)
    from maxca.data.template import make_template_dataset

    with OutputDir(out_path, overwrite, stale=("imagesTr/*", "labelsTr/*")) as tmp:
        make_template_dataset(
            tmp,
            subjects=subjects,
            spacing_mm=DEFAULT_SPACING_MM,
            seed=seed,
            magnitude_vox=DEFAULT_MAGNITUDE_VOX,
            held_out_pairs=EXAMPLE_PAIRS,
        )
    return out_path / "dataset.json"
