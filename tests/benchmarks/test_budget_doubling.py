"""benchmarks/budget_doubling.py: the gain of a longer budget and the comparisons at both budgets,
on two synthetic ablation folders with known answers."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

import budget_doubling  # benchmarks/ is put on sys.path by conftest.py

PAIRS = [f"{i:02d}_{i + 1:02d}" for i in range(6)]
BASE = {"maxca": 0.55, "none": 0.54}


def _grid(folder: Path, gain: dict[str, float], seeds: tuple[int, ...], steps: int) -> Path:
    """An ablation folder whose pair Dice is BASE + 0.001 seed + 0.01 pair + gain (+ 0.001 pair
    for a non-zero gain, so that the gains differ between pairs), and an affine-only row."""
    folder.mkdir(parents=True)
    cells, pairs = (
        [],
        [
            {
                "setting": "2d",
                "host": "-",
                "attention": "identity",
                "seed": "",
                "pair": p,
                "dice": 0.4,
            }
            for p in PAIRS
        ],
    )
    for kind, base in BASE.items():
        for seed in seeds:
            values = [
                base + 0.001 * seed + 0.01 * i + gain[kind] + (0.001 * i if gain[kind] else 0.0)
                for i in range(len(PAIRS))
            ]
            pairs += [
                {"setting": "2d", "host": "unet", "attention": kind, "seed": seed, "pair": p,
                 "dice": v}
                for p, v in zip(PAIRS, values, strict=True)
            ]  # fmt: skip
            cells.append(
                {"setting": "2d", "host": "unet", "attention": kind, "seed": seed,
                 "steps": steps, "budget_steps": steps, "dice_mean": sum(values) / len(values)}
            )  # fmt: skip
    cells.append({"setting": "2d", "host": "-", "attention": "identity", "seed": "",
                  "steps": 0, "budget_steps": "", "dice_mean": 0.4})  # fmt: skip
    for name, rows in (("ablation.csv", cells), ("ablation_pairs.csv", pairs)):
        with (folder / name).open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return folder


def test_gain_and_comparisons_known_answer(tmp_path: Path) -> None:
    short = _grid(tmp_path / "short", {"maxca": 0.0, "none": 0.0}, (0, 1, 2), 4000)
    # the long grid has a 4th seed that the short one lacks: left out of every figure
    long = _grid(tmp_path / "long", {"maxca": 0.01, "none": 0.02}, (0, 1, 2, 3), 8000)
    s, lg = budget_doubling.read_grid(short), budget_doubling.read_grid(long)
    assert budget_doubling.common_cells(s, lg) == {
        ("unet", k, str(seed)) for k in BASE for seed in (0, 1, 2)
    }
    gains = {g["attention"]: g for g in budget_doubling.gains(s, lg)}
    # per pair i: gain + 0.001 i, so the mean gain is gain + 0.0025; every pair gains
    assert gains["maxca"]["gain"] == pytest.approx(0.0125)
    assert gains["none"]["gain"] == pytest.approx(0.0225)
    assert gains["maxca"]["gain_sd"] == pytest.approx(0.0, abs=1e-12)
    assert gains["maxca"]["seeds"] == 3 and gains["maxca"]["pairs_gained"] == 6
    assert gains["maxca"]["p_wilcoxon"] == pytest.approx(2 / 64)  # exact: all 6 of one sign
    assert gains["none"]["dice_short"] == pytest.approx(0.54 + 0.001 + 0.025)
    comps = budget_doubling.comparisons(s, lg)
    assert len(comps) == 1 and comps[0]["comparison"] == "maxca - none"
    # short: maxca 0.01 above none on every pair; long: none gained 0.01 more -> level
    assert comps[0]["delta_short"] == pytest.approx(0.01)
    assert comps[0]["wins_short"] == 6 and comps[0]["p_short"] == pytest.approx(2 / 64)
    assert comps[0]["delta_long"] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(comps[0]["p_long"])  # every difference 0: no test


def test_main_writes_both_tables_and_refuses_bad_folders(tmp_path: Path, capsys) -> None:
    short = _grid(tmp_path / "short", {"maxca": 0.0, "none": 0.0}, (0,), 4000)
    long = _grid(tmp_path / "long", {"maxca": 0.01, "none": 0.0}, (0,), 8000)
    assert budget_doubling.main(["--short", str(short), "--long", str(long)]) == 0
    assert (long / "budget_doubling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (long / "budget_doubling.md").read_text()
    assert "Dice 4000 steps" in text and "Dice 8000 steps" in text
    with (long / "budget_doubling.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["table"] for r in rows] == ["gain", "gain", "comparison"]
    with pytest.raises(SystemExit, match=r"nope[/\\]ablation\.csv not found"):
        budget_doubling.main(["--short", str(tmp_path / "nope"), "--long", str(long)])
    other = _grid(tmp_path / "other", {"maxca": 0.0, "none": 0.0}, (5,), 8000)
    assert budget_doubling.main(["--short", str(short), "--long", str(other)]) == 2
    assert "no cell in common" in capsys.readouterr().err
