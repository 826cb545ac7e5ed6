"""benchmarks/ablation_parallel.py: cells as parallel processes, merged into one report that
equals the sequential ablation.py run (same seeds, one thread each: deterministic on CPU)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

import ablation  # benchmarks/ is put on sys.path by conftest.py
import ablation_parallel


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_parallel_cells_merge_into_the_sequential_result(
    tiny_dataset: Path, tmp_path: Path, capsys
):
    grid = ["--hosts", "unet", "--attentions", "xca,none", "--seeds", "0"]
    common = ["--setting", "3d", "--data", str(tiny_dataset), "--steps", "2", "--threads", "1",
              "--device", "cpu", *grid]  # fmt: skip
    par = tmp_path / "par"
    argv_par = [*common, "--jobs", "2", "--out", str(par), "--", "--small", "--val-every", "1"]
    assert ablation_parallel.main(argv_par) == 0
    seq = tmp_path / "seq"
    argv = [*common, "--out", str(seq), "--small", "--val-every", "1", "--no-plot"]
    assert ablation.main(argv) == 0

    par_rows = {(r["host"], r["attention"]): r for r in _rows(par / "ablation.csv")}
    seq_rows = {(r["host"], r["attention"]): r for r in _rows(seq / "ablation.csv")}
    assert set(par_rows) == set(seq_rows) == {("unet", "xca"), ("unet", "none")}
    for key, r in seq_rows.items():
        assert float(par_rows[key]["dice_mean"]) == pytest.approx(float(r["dice_mean"]), abs=1e-9)
        assert par_rows[key]["params"] == r["params"]
    pairs = _rows(par / "ablation_pairs.csv")
    identity = [r for r in pairs if r["attention"] == "identity"]
    assert len(identity) == len({r["pair"] for r in identity}) > 0  # the affine-only rows once
    md = (par / "ablation.md").read_text()
    assert "| unet | xca |" in md and "| unet | none |" in md
    assert (par / "ablation_curves.png").stat().st_size > 5_000
    for cell in ("unet-xca-s0", "unet-none-s0"):
        assert (par / "cells" / cell / "ablation.log").is_file()

    # a second call keeps the finished cells as they are (not re-evaluated) and merges again
    cell_csv = par / "cells" / "unet-xca-s0" / "ablation.csv"
    before = (cell_csv.stat().st_mtime_ns, cell_csv.read_bytes())
    capsys.readouterr()
    assert ablation_parallel.main(argv_par) == 0
    assert "kept unet-xca-s0 (finished earlier)" in capsys.readouterr().out
    assert (cell_csv.stat().st_mtime_ns, cell_csv.read_bytes()) == before
    again = {(r["host"], r["attention"]): r["dice_mean"] for r in _rows(par / "ablation.csv")}
    assert again == {key: r["dice_mean"] for key, r in par_rows.items()}

    # --merge-only on a larger grid: the missing cell is reported, not trained
    wider = [a if a != "xca,none" else "xca,none,window" for a in argv_par]
    assert ablation_parallel.main([*wider[: wider.index("--")], "--merge-only", "--",
                                   *wider[wider.index("--") + 1 :]]) == 0  # fmt: skip
    assert "not run unet-window-s0 (--merge-only)" in capsys.readouterr().out
    assert not (par / "cells" / "unet-window-s0").exists()
    merged = {(r["host"], r["attention"]) for r in _rows(par / "ablation.csv")}
    assert merged == {("unet", "xca"), ("unet", "none")}

    # a grid of one kind in the same folder (a second instance, e.g. one per core) still
    # reports every finished cell of the folder: its own and the other instance's
    narrow = [a if a != "xca,none" else "none" for a in argv_par]
    merge_only = [*narrow[: narrow.index("--")], "--merge-only", "--"]
    (par / "ablation.md").unlink()
    assert ablation_parallel.main(merge_only) == 0
    assert "also merged unet-xca-s0" in capsys.readouterr().out
    merged = {(r["host"], r["attention"]) for r in _rows(par / "ablation.csv")}
    assert merged == {("unet", "xca"), ("unet", "none")}
    md = (par / "ablation.md").read_text()
    assert "| unet | xca |" in md and "| unet | none |" in md
    # ... but not a cell trained to another budget
    other_budget = [a if a != "2" else "3" for a in merge_only]
    assert ablation_parallel.main(other_budget) == 0
    assert "also merged" not in capsys.readouterr().out


def test_options_of_the_launcher_are_refused_after_the_separator(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        ablation_parallel.main(["--steps", "2", "--out", str(tmp_path), "--", "--seeds", "1"])
    assert exc.value.code == 2
    assert "give --seeds to ablation_parallel.py itself" in capsys.readouterr().err
    assert not (tmp_path / "cells").exists()


def test_2d_slices_are_built_once_before_the_cells(tiny_dataset: Path, tmp_path: Path):
    out = tmp_path / "par2d"
    argv = ["--setting", "2d", "--data", str(tiny_dataset), "--steps", "1", "--threads", "1",
            "--device", "cpu", "--hosts", "unet", "--attentions", "maxca,none", "--seeds", "0",
            "--jobs", "2", "--out", str(out), "--", "--small", "--slices", "2"]  # fmt: skip
    assert ablation_parallel.main(argv) == 0
    assert (out / "data" / "slices.json").is_file()  # the shared cache, built by the launcher
    assert not any((out / "cells").glob("*/data"))  # no cell built its own copy
    rows = _rows(out / "ablation.csv")
    assert {(r["attention"], r["n_pairs"]) for r in rows} == {("maxca", "6"), ("none", "6")}


def test_holdout_dataset_splits_subjects_and_pairs_every_held_out_one(
    tiny_dataset: Path, tmp_path: Path, capsys
):
    from maxca.data.learn2reg import load_learn2reg

    src = load_learn2reg(tiny_dataset)
    subjects = [e.image for e in (*src.training, *src.validation)]
    path = ablation.holdout_dataset(tiny_dataset, tmp_path / "h", 3)
    ds = load_learn2reg(path)
    assert [e.image for e in ds.training] == subjects[:-3]
    held = subjects[-3:]
    assert [e.image for e in ds.validation] == held
    assert all(e.label is not None and e.label.is_file() for e in ds.validation)
    expected = {(f, m) for f in held for m in held if f != m}
    assert set(ds.registration_val) == expected and len(ds.registration_val) == 6
    assert ds.evaluation_labels == src.evaluation_labels
    assert not set(held) & {e.image for e in ds.training}  # no held-out subject is trained on
    # the same bytes again (cells of a parallel run may write it at the same time)
    before = path.read_bytes()
    assert ablation.holdout_dataset(tiny_dataset, tmp_path / "h", 3).read_bytes() == before
    # the dataset's folder works as well as its json file
    assert ablation.holdout_dataset(tiny_dataset.parent, tmp_path / "h", 3).read_bytes() == before
    for bad in (1, len(subjects)):
        with pytest.raises(ValueError, match="--holdout must be in"):
            ablation.holdout_dataset(tiny_dataset, tmp_path / "x", bad)
    with pytest.raises(SystemExit) as exc:
        ablation_parallel.main(["--setting", "2d", "--holdout", "3", "--steps", "1",
                                "--out", str(tmp_path / "p")])  # fmt: skip
    assert exc.value.code == 2 and "--holdout is for --setting 3d" in capsys.readouterr().err


def _fake_cell(root: Path, name: str, curve: dict[int, float]) -> Path:
    """A cell folder holding only the trainer's metrics.csv with ``curve`` as val_dice (and a
    training row without validation, as the trainer writes them)."""
    cell = root / name
    run = cell / "runs" / name
    run.mkdir(parents=True)
    with open(run / "metrics.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "loss", "val_dice"])
        w.writerow([1, 0.5, ""])
        for step, dice in sorted(curve.items()):
            w.writerow([step, 0.4, dice])
    return cell


def test_late_slope_recovers_a_known_slope_and_ignores_the_early_steps():
    steps = range(500, 4001, 500)
    # two seeds, different levels, the same slope 0.003 / 1,000 steps from step 2000 on; an
    # early jump (before 2000) that the late window must not see
    curves = [
        {s: (0.50 + 0.003 * s / 1000 if s >= 2000 else 0.1) for s in steps},
        {s: (0.53 + 0.003 * s / 1000 if s >= 2000 else 0.9) for s in steps},
    ]
    r = ablation_parallel.late_slope(curves, 2000)
    assert r["slope"] == pytest.approx(0.003, abs=1e-12)
    assert r["ci95"] == pytest.approx(0.0, abs=1e-9)
    assert r["p"] < 1e-12 and r["points"] == 10 and r["curves"] == 2
    flat = ablation_parallel.late_slope([{s: 0.56 for s in steps}], 0)
    assert flat["slope"] == 0.0 and flat["p"] == 1.0
    # too few points: one per curve gives no slope; two points of one curve, no error term
    assert math.isnan(ablation_parallel.late_slope(curves, 4000)["slope"])
    two = ablation_parallel.late_slope([{1000: 0.5, 2000: 0.6}], 0)
    assert two["slope"] == pytest.approx(0.1) and math.isnan(two["p"]) and math.isnan(two["ci95"])
    assert math.isnan(ablation_parallel.late_slope([], 0)["slope"])


def test_late_slope_equals_a_regression_with_one_intercept_per_seed():
    from scipy import stats

    rng = np.random.default_rng(3)
    steps = np.arange(2000, 4001, 500)
    curves = [
        {int(s): float(0.5 + 0.01 * k + 0.002 * s / 1000 + rng.normal(0, 0.003)) for s in steps}
        for k in range(3)
    ]
    curves[2].pop(3000)  # unequal curves are fine
    x = np.concatenate([np.array(sorted(c)) / 1000 for c in curves])
    y = np.concatenate([[c[s] for s in sorted(c)] for c in curves])
    dummies = np.concatenate([np.eye(3)[[k] * len(c)] for k, c in enumerate(curves)])
    design = np.column_stack([x, dummies])
    coef, res, *_ = np.linalg.lstsq(design, y, rcond=None)
    dof = len(y) - design.shape[1]
    cov = res[0] / dof * np.linalg.inv(design.T @ design)
    se = np.sqrt(cov[0, 0])
    r = ablation_parallel.late_slope(curves, 0)
    assert r["slope"] == pytest.approx(coef[0], rel=1e-9)
    assert r["ci95"] == pytest.approx(stats.t.ppf(0.975, dof) * se, rel=1e-9)
    assert r["p"] == pytest.approx(2 * stats.t.sf(abs(coef[0]) / se, dof), rel=1e-9)
    assert r["points"] == len(y) == 14


def test_curve_trends_gives_each_kind_and_each_paired_difference(tmp_path: Path):
    steps = range(500, 4001, 500)
    cells = []
    for seed in (0, 1):
        level = 0.01 * seed
        cells.append(
            (
                "h",
                "maxca",
                seed,
                _fake_cell(
                    tmp_path, f"h-maxca-s{seed}", {s: 0.5 + level + 0.004 * s / 1000 for s in steps}
                ),
            )
        )
        cells.append(
            (
                "h",
                "none",
                seed,
                _fake_cell(
                    tmp_path,
                    f"h-none-s{seed}",
                    {s: 0.4 + 2 * level + 0.001 * s / 1000 for s in steps},
                ),
            )
        )
    # a seed the reference lacks is left out of the difference; a cell without a curve is skipped
    cells.append(("h", "none", 2, _fake_cell(tmp_path, "h-none-s2", {s: 0.9 for s in steps})))
    empty = tmp_path / "h-window-s0"
    empty.mkdir()
    cells.append(("h", "window", 0, empty))
    cells.append(("g", "none", 0, _fake_cell(tmp_path, "g-none-s0", {s: 0.3 for s in steps})))
    rows = ablation_parallel.curve_trends(cells)  # fmt: skip
    by = {(r["host"], r["curve"]): r for r in rows}
    assert list(by) == [("h", "maxca"), ("h", "none"), ("g", "none"), ("h", "maxca - none")]
    assert all(r["from_step"] == 2000 and r["last_step"] == 4000 for r in rows)
    assert by[("h", "maxca")]["slope"] == pytest.approx(0.004)
    assert by[("h", "none")]["curves"] == 3  # the flat third seed pulls its slope down
    diff = by[("h", "maxca - none")]
    assert diff["slope"] == pytest.approx(0.003) and diff["curves"] == 2 and diff["points"] == 10
    assert by[("g", "none")]["slope"] == pytest.approx(0.0, abs=1e-12)
    later = ablation_parallel.curve_trends(cells, start=3500)
    assert {r["from_step"] for r in later} == {3500} and all(r["points"] > 0 for r in later)
    md = ablation_parallel.trends_markdown(rows)
    assert "| h | maxca - none | 2000-4000 | +0.0030 |" in md
    assert ablation_parallel.curve_trends([("h", "window", 0, empty)]) == []


def test_trend_start_must_not_be_negative(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        ablation_parallel.main(["--steps", "2", "--trend-from", "-1", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "--trend-from must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "cells").exists()
