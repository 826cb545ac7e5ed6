"""The three benchmark scripts end to end on a tiny synthetic dataset, with a budget of a few
training steps: every requested cell/method is in the CSV and Markdown with finite numbers,
the affine-only baseline equals Dice before, resumed runs skip finished cells."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest

import _common  # benchmarks/ is put on sys.path by conftest.py
import ablation
import baselines
import speed
from maxca.app.pairs import (
    evaluation_labels,
    identity_flow,
    load_pairs,
    pair_row,
    score_flow,
    validation_pairs,
)
from maxca.metrics import dice

from .conftest import LABELS

HOSTS = ("pyramid", "unet", "hybrid")
METRICS = ("dice_mean", "hd95_mean", "njd_percent_mean", "sdlogj_mean", "seconds_mean")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _finite(row: dict[str, str], keys: tuple[str, ...]) -> bool:
    return all(math.isfinite(float(row[k])) for k in keys)


def _direct_identity_dice(dataset: Path) -> list[float]:
    """Dice before per validation pair, straight from the label arrays (same grid)."""
    out = []
    for p in load_pairs(validation_pairs(dataset)):
        scores = dice(p.fixed_label.array, p.moving_label.array, list(LABELS))
        out.append(float(np.nanmean(list(scores.values()))))
    return out


@pytest.fixture(scope="module")
def ablation_2d(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("abl2d")
    argv = [
        "--setting", "2d", "--data", str(tiny_dataset), "--slices", "2", "--slice-step", "3",
        "--small", "--steps", "2", "--seeds", "0", "--attentions", "maxca,none",
        "--hosts", ",".join(HOSTS),
        "--threads", "1", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    assert ablation.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def ablation_3d(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("abl3d")
    argv = [
        "--setting", "3d", "--data", str(tiny_dataset), "--small", "--steps", "2",
        "--seeds", "0,1", "--hosts", "unet", "--attentions", "xca,none",
        "--threads", "1", "--device", "cpu", "--out", str(out), "--no-plot",
    ]  # fmt: skip
    assert ablation.main(argv) == 0
    return out


def test_ablation_2d_has_every_cell(ablation_2d: Path) -> None:
    rows = _rows(ablation_2d / "ablation.csv")
    cells = {(r["host"], r["attention"], r["seed"]) for r in rows}
    assert cells == {(h, k, "0") for h in HOSTS for k in ("maxca", "none")}
    for r in rows:
        assert r["setting"] == "2d" and r["steps"] == "2" and r["widths"] == "small"
        assert _finite(r, METRICS) and float(r["params"]) > 0
        assert 0.0 <= float(r["dice_mean"]) <= 1.0
        assert int(r["n_pairs"]) == 2 * 3  # 3 source pairs x 2 slices
        assert (Path(r["run_dir"]) / "checkpoints" / "last" / "model.json").is_file()
    md = (ablation_2d / "ablation.md").read_text()
    for h in HOSTS:
        for k in ("maxca", "none"):
            assert re.search(rf"^\| {h} \| {k} \| 1 \| \d\.\d{{3}} \|", md, re.M), (h, k)
        assert re.search(rf"^\| {h} \| maxca − none \| 1 \| [+-]\d\.\d{{3}} \| \d/6 \|", md, re.M)
    assert (ablation_2d / "ablation.png").stat().st_size > 10_000
    # the 2-D data are slices written into the cache folder
    assert (ablation_2d / "data" / "slices.json").is_file()


def test_ablation_identity_rows_are_dice_before(ablation_2d: Path) -> None:
    pairs = [r for r in _rows(ablation_2d / "ablation_pairs.csv") if r["attention"] == "identity"]
    expected = _direct_identity_dice(ablation_2d / "data" / "dataset.json")
    assert [float(r["dice"]) for r in pairs] == pytest.approx(expected)
    md = (ablation_2d / "ablation.md").read_text()
    assert f"Dice {np.mean(expected):.3f}" in md


def test_ablation_3d_seeds_and_resume(
    ablation_3d: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _rows(ablation_3d / "ablation.csv")
    assert {(r["host"], r["attention"], r["seed"]) for r in rows} == {
        ("unet", k, s) for k in ("xca", "none") for s in ("0", "1")
    }
    assert all(_finite(r, METRICS) for r in rows)
    md = (ablation_3d / "ablation.md").read_text()
    assert re.search(r"^\| unet \| xca \| 2 \| \d\.\d{3} ± \d\.\d{3} \| [+-]\d\.\d{3} \|", md, re.M)
    stamp = {
        p: p.stat().st_mtime_ns
        for p in (ablation_3d / "runs").glob("*/checkpoints/last/model.json")
    }
    assert len(stamp) == 4
    capsys.readouterr()
    argv = [
        "--setting", "3d", "--data", str(tiny_dataset), "--small", "--steps", "2",
        "--seeds", "0,1", "--hosts", "unet", "--attentions", "xca,none",
        "--threads", "1", "--device", "cpu", "--out", str(ablation_3d), "--no-plot",
    ]  # fmt: skip
    assert ablation.main(argv) == 0
    assert capsys.readouterr().out.count("done already, skipped") == 4
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # nothing retrained
    assert _rows(ablation_3d / "ablation.csv") == rows


def test_ablation_rejects_unknown_names(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        ablation.main(["--hosts", "vit", "--data", str(tiny_dataset), "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        ablation.main(["--attentions", "maxca,maxca", "--out", str(tmp_path)])


def test_baselines(ablation_3d: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    run = ablation_3d / "runs" / "unet-xca-s0"
    argv = [
        "--setting", "3d", "--data", str(tiny_dataset), "--model", f"unet-xca={run}",
        "--refine", "2", "--threads", "1", "--device", "cpu", "--out", str(tmp_path),
    ]  # fmt: skip
    ants_available = _common.import_ants() is not None
    if not ants_available:
        argv.append("--no-ants")
    else:
        argv += ["--ants", "SyN"]
    assert baselines.main(argv) == 0
    rows = {r["method"]: r for r in _rows(tmp_path / "baselines.csv")}
    expected = {"affine only", "unet-xca", "unet-xca + IO 2"} | (
        {"ANTs SyN"} if ants_available else set()
    )
    assert set(rows) == expected
    for r in rows.values():
        assert _finite(r, METRICS) and int(r["n_pairs"]) == 3
    # the identity baseline is Dice before, and the ablation scored the same pairs the same way
    before = _direct_identity_dice(tiny_dataset)
    assert float(rows["affine only"]["dice_mean"]) == pytest.approx(np.mean(before))
    abl_ident = [
        r for r in _rows(ablation_3d / "ablation_pairs.csv") if r["attention"] == "identity"
    ]
    base_ident = [
        r for r in _rows(tmp_path / "baselines_pairs.csv") if r["method"] == "affine only"
    ]
    assert [(r["pair"], r["dice"], r["hd95"]) for r in abl_ident] == [
        (r["pair"], r["dice"], r["hd95"]) for r in base_ident
    ]
    # the model row without refinement is the ablation's evaluation of that cell
    abl = {(r["attention"], r["seed"]): r for r in _rows(ablation_3d / "ablation.csv")}
    assert float(rows["unet-xca"]["dice_mean"]) == pytest.approx(
        float(abl[("xca", "0")]["dice_mean"])
    )
    assert float(rows["unet-xca + IO 2"]["sdlogj_mean"]) != float(rows["unet-xca"]["sdlogj_mean"])
    md = (tmp_path / "baselines.md").read_text()
    for method in expected:
        assert f"| {method} |" in md
    assert (tmp_path / "baselines.png").is_file()
    # a later call reports only its own methods, or with --all every method in the CSV
    again = ["--setting", "3d", "--data", str(tiny_dataset), "--no-ants", "--out", str(tmp_path)]
    assert baselines.main([*again, "--no-plot"]) == 0
    md = (tmp_path / "baselines.md").read_text()
    assert "| affine only |" in md and "| unet-xca |" not in md
    assert baselines.main([*again, "--no-plot", "--all"]) == 0
    md = (tmp_path / "baselines.md").read_text()
    assert all(f"| {method} |" in md for method in expected)
    assert {r["method"] for r in _rows(tmp_path / "baselines.csv")} == expected


def test_baselines_reports_a_failing_model(
    tiny_dataset: Path, ablation_2d: Path, tmp_path: Path
) -> None:
    run2d = ablation_2d / "runs" / "unet-none-s0"  # a 2-D model cannot register 3-D pairs
    argv = [
        "--setting", "3d", "--data", str(tiny_dataset), "--model", str(run2d), "--no-ants",
        "--threads", "1", "--device", "cpu", "--out", str(tmp_path), "--no-plot",
    ]  # fmt: skip
    assert baselines.main(argv) == 1
    assert {r["method"] for r in _rows(tmp_path / "baselines.csv")} == {"affine only"}


def test_speed(ablation_3d: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    run = ablation_3d / "runs" / "unet-none-s1"
    argv = [
        "--data", str(tiny_dataset), "--grid", "10x8x12", "--grid-spacing", "4", "--small",
        "--hosts", "pyramid,unet,hybrid", "--model", f"unet={run}", "--repeats", "1",
        "--devices", "cpu", "--no-ants", "--threads", "1", "--out", str(tmp_path),
    ]  # fmt: skip
    assert speed.main(argv) == 0
    rows = _rows(tmp_path / "speed.csv")
    assert [(r["method"], r["mode"], r["status"]) for r in rows] == [
        (f"ours {h}", "api", "ok") for h in HOSTS
    ]
    for r in rows:
        assert _finite(r, ("first_s", "median_s", "min_s", "network_s", "dice_after"))
        assert float(r["median_s"]) >= float(r["network_s"]) > 0
        assert r["repeats"] == "1"
    by_host = {r["host"]: r for r in rows}
    assert (
        by_host["unet"]["model"] == _common.display_path(run)
        and by_host["unet"]["grid"] == "20x16x24"
    )
    assert (
        by_host["pyramid"]["model"].startswith("fresh") and by_host["pyramid"]["grid"] == "10x8x12"
    )
    assert float(by_host["pyramid"]["dice_before"]) == pytest.approx(
        _direct_identity_dice(tiny_dataset)[0]
    )


def test_speed_cli_path(ablation_3d: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """``--cli`` times ``python -m maxca register`` in a fresh process: the command works."""
    pair = validation_pairs(tiny_dataset)[0]
    run = ablation_3d / "runs" / "unet-none-s0"
    res = speed.time_cli(run, "cpu", pair, tmp_path, repeats=0, threads=1)
    assert res["repeats"] == 1 and res["median_s"] > 0
    assert (tmp_path / "cli" / "warped_labels.nii.gz").is_file()


def _slab_dataset(root: Path) -> Path:
    """Two subjects on a 2 mm LIA grid: label 3 fills x < 10 (subject A) or x < 12 (subject B),
    label 5 the next 6 slices; identity Dice is known by hand."""
    import json

    import nibabel as nib

    affine = np.array([[-2.0, 0, 0, 79], [0, 0, 2, -128], [0, -2, 0, 97], [0, 0, 0, 1]])
    shape = (24, 8, 8)
    entries = []
    for name, edge in (("S_0001_0000.nii.gz", 10), ("S_0002_0000.nii.gz", 12)):
        lab = np.zeros(shape, np.int16)
        lab[:edge] = 3
        lab[edge : edge + 6] = 5
        img = (lab > 0).astype(np.float32) * 0.5 + (lab == 5) * 0.5
        for sub, arr in (("imagesTr", img), ("labelsTr", lab)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr, affine), str(root / sub / name))
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": "S",
        "training": entries,
        "evaluation_labels": [3, 5],
        "registration_val": [
            {"fixed": entries[0]["image"], "moving": entries[1]["image"]},
            {"fixed": entries[1]["image"], "moving": entries[0]["image"]},
        ],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root / "dataset.json"


def test_identity_scores_are_the_hand_computed_affine_only_dice(tmp_path: Path) -> None:
    """The scoring path gives the affine-only (identity) Dice computed by hand on a dataset
    built here (it once needed ../shared/data/brain-synth-2mm)."""
    dataset = _slab_dataset(tmp_path / "slabs")
    labels = evaluation_labels(dataset)
    assert labels == [3, 5]
    pairs = load_pairs(validation_pairs(dataset))
    rows = [pair_row(score_flow(p, identity_flow(p), labels)) for p in pairs]
    assert len(rows) == 2
    # label 3: 10 vs 12 slices overlap in 10 -> 20/22; label 5: [10, 16) vs [12, 18) -> 8/12
    expected = (20 / 22 + 8 / 12) / 2
    assert [r["dice"] for r in rows] == pytest.approx([expected, expected])
    assert all(math.isfinite(r["hd95"]) and r["njd_percent"] == 0.0 for r in rows)


def test_paired_comparisons_known_answer() -> None:
    """MAXCA vs none on made-up rows: per-seed deltas, per-pair wins and the Wilcoxon p-value
    (scipy on the seed-averaged per-pair differences); a kind without common seeds is left out."""
    from scipy.stats import wilcoxon

    rows, pair_rows = [], []
    pair_dice = {  # (attention, seed) -> Dice of pairs a, b, c
        ("maxca", 0): [0.60, 0.50, 0.70],
        ("maxca", 1): [0.62, 0.48, 0.71],
        ("none", 0): [0.55, 0.52, 0.60],
        ("none", 1): [0.58, 0.47, 0.69],
    }
    for (kind, seed), values in pair_dice.items():
        rows.append({"host": "unet", "attention": kind, "seed": seed, "dice_mean": np.mean(values)})
        for pair, v in zip("abc", values):
            pair_rows.append(
                {"host": "unet", "attention": kind, "seed": seed, "pair": pair, "dice": v}
            )
    rows.append({"host": "unet", "attention": "window", "seed": 7, "dice_mean": 0.9})
    out = ablation.paired_comparisons(rows, pair_rows)
    assert [(c["host"], c["other"]) for c in out] == [("unet", "none")]
    c = out[0]
    per_seed = [np.mean([0.05, -0.02, 0.10]), np.mean([0.04, 0.01, 0.02])]
    assert c["seeds"] == 2
    assert c["delta_mean"] == pytest.approx(np.mean(per_seed))
    assert c["delta_sd"] == pytest.approx(np.std(per_seed, ddof=1))
    d = np.array([0.045, -0.005, 0.06])  # per pair, averaged over the seeds
    assert c["pair_delta"] == pytest.approx(d.mean())
    assert (c["wins"], c["n_pairs"]) == (2, 3)
    assert c["p_wilcoxon"] == pytest.approx(wilcoxon(d).pvalue)
    table = ablation.comparison_rows(out)
    assert table[0][1] == "maxca − none" and table[0][4] == "2/3"


def test_ablation_report_trains_nothing(ablation_2d: Path, tiny_dataset: Path) -> None:
    before = (ablation_2d / "ablation.csv").read_text()
    argv = [
        "--setting", "2d", "--data", str(tiny_dataset), "--slices", "2", "--slice-step", "3",
        "--small", "--steps", "2", "--seeds", "0,1", "--attentions", "maxca,none",
        "--threads", "1", "--device", "cpu", "--out", str(ablation_2d), "--no-plot", "--report",
    ]  # fmt: skip
    assert ablation.main(argv) == 0
    assert (ablation_2d / "ablation.csv").read_text() == before
    assert not any((ablation_2d / "runs").glob("*-s1"))
    md = (ablation_2d / "ablation.md").read_text()
    assert "Cells not run (left out of the table): pyramid-maxca-s1" in md
    assert re.search(r"^\| unet \| maxca \| 1 \| \d\.\d{3} \|", md, re.M)
