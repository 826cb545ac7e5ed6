"""evaluate_pair, summarize and the CSV / JSON / Markdown writers."""

from __future__ import annotations

import csv
import json
import math
import sys

import numpy as np
import pytest

from maxca.errors import MaxcaInputError
from maxca.metrics import (
    PairResult,
    evaluate_pair,
    summarize,
    write_pair_csv,
    write_summary,
)


def _cube(shape, start, size, label=1):
    m = np.zeros(shape, dtype=np.int16)
    m[tuple(slice(s, s + size) for s in start)] = label
    return m


@pytest.fixture
def pair():
    shape = (12, 12, 12)
    fixed = _cube(shape, (2, 2, 2), 6) + _cube(shape, (9, 9, 9), 2, label=2)
    warped = _cube(shape, (2, 2, 4), 6) + _cube(shape, (9, 9, 9), 2, label=2)
    moving = warped.copy()
    flow = np.zeros((3, *shape))
    flow[2] = 0.5  # a translation: no folds, SDlogJ 0
    return fixed, warped, moving, flow


def test_evaluate_pair_maxca_definitions(pair, tmp_path):
    fixed, warped, _, flow = pair
    spacing = (1.0, 1.0, 2.0)
    lm = tmp_path / "f.csv"
    lm.write_text("1,1,1\n4,4,4\n")
    res = evaluate_pair(
        fixed, warped, flow, spacing, [1, 2, 3], landmarks=(lm, np.array([[1, 1, 1.5]] * 2))
    )
    assert res.dice[1] == pytest.approx(2 * 6 * 6 * 4 / (2 * 216))
    assert res.dice[2] == 1.0 and math.isnan(res.dice[3])
    assert res.hd95[1] == pytest.approx(2 * 2.0, rel=1e-6)  # 2 voxels along axis 2, 2 mm each
    assert res.hd95[2] == 0.0
    assert res.dice_mean == pytest.approx((res.dice[1] + 1.0) / 2)
    assert res.njd_percent == 0.0 and res.sdlogj == 0.0
    np.testing.assert_allclose(res.tre, [0.0, math.hypot(3, 3, 3 * 2.0)])
    assert res.hd95_unit == "mm"


@pytest.mark.parametrize("l2r_compat", [False, True])
def test_evaluate_pair_without_hd95_scores_the_rest_identically(pair, monkeypatch, l2r_compat):
    fixed, warped, moving, flow = pair
    args = (fixed, warped, flow, (1.0, 1.0, 2.0), [1, 2])
    full = evaluate_pair(*args, l2r_compat=l2r_compat, moving_label=moving)
    monkeypatch.setitem(sys.modules, "monai.metrics", None)  # HD95 is not even imported
    fast = evaluate_pair(*args, l2r_compat=l2r_compat, moving_label=moving, with_hd95=False)
    assert all(math.isnan(fast.hd95[k]) for k in (1, 2)) and full.hd95[2] == 0.0
    assert fast.dice == full.dice and fast.labels == full.labels
    assert (fast.njd_percent, fast.sdlogj) == (full.njd_percent, full.sdlogj)


def test_evaluate_pair_l2r_compat(pair):
    fixed, warped, moving, flow = pair
    res = evaluate_pair(
        fixed, warped, flow, (1.0, 1.0, 2.0), [1, 2], l2r_compat=True, moving_label=moving
    )
    assert res.l2r_compat and res.hd95_unit == "voxel"
    assert res.hd95[1] == 2.0  # voxels, not mm
    assert res.sdlogj == 0.0 and res.njd_percent == 0.0
    assert res.tre is None and math.isnan(res.tre_mean)


def test_evaluate_pair_bad_inputs(pair):
    fixed, warped, _, flow = pair
    with pytest.raises(MaxcaInputError, match=r"warped_label must have shape 12x12x12, got 12x12"):
        evaluate_pair(fixed, warped[0], flow, (1, 1, 1), [1])
    with pytest.raises(MaxcaInputError, match=r"flow must have the label maps' spatial shape"):
        evaluate_pair(fixed, warped, flow[:, :8], (1, 1, 1), [1])
    with pytest.raises(MaxcaInputError, match=r"flow must have shape \(d, \*S\)"):
        evaluate_pair(fixed, warped, flow[:2], (1, 1, 1), [1])
    with pytest.raises(MaxcaInputError, match=r"l2r_compat needs moving_label"):
        evaluate_pair(fixed, warped, flow, (1, 1, 1), [1], l2r_compat=True)
    with pytest.raises(MaxcaInputError, match=r"landmarks must be a pair"):
        evaluate_pair(fixed, warped, flow, (1, 1, 1), [1], landmarks=np.zeros((2, 3)))


def _result(d1, d2, h1, njd, tre=None):
    return PairResult(
        dice={1: d1, 2: d2},
        hd95={1: h1, 2: math.nan},
        njd_percent=njd,
        sdlogj=0.1,
        tre=None if tre is None else np.asarray(tre),
    )


@pytest.fixture
def results():
    return [
        _result(0.8, math.nan, 2.0, 0.0, tre=[1.0, 3.0]),
        _result(0.6, 0.5, 4.0, 1.0),
        _result(1.0, 0.7, 6.0, 2.0),
    ]


def test_summarize_by_hand(results):
    s = summarize(results)
    assert s["n_pairs"] == 3 and s["l2r_compat"] is False
    d1 = s["per_label"]["dice"][1]
    assert d1["mean"] == pytest.approx(0.8)
    assert d1["std"] == pytest.approx(math.sqrt((0.0 + 0.04 + 0.04) / 3))  # population std
    assert d1["n"] == 3
    d2 = s["per_label"]["dice"][2]  # the NaN of pair 0 is left out
    assert (d2["mean"], d2["std"], d2["n"]) == (pytest.approx(0.6), pytest.approx(0.1), 2)
    h2 = s["per_label"]["hd95"][2]
    assert math.isnan(h2["mean"]) and h2["n"] == 0
    dm = s["metrics"]["dice_mean"]  # per pair: 0.8, 0.55, 0.85
    assert dm["mean"] == pytest.approx(2.2 / 3)
    assert dm["std"] == pytest.approx(math.sqrt(((0.8 - 2.2 / 3) ** 2 + (0.55 - 2.2 / 3) ** 2
                                                 + (0.85 - 2.2 / 3) ** 2) / 3))  # fmt: skip
    assert s["metrics"]["njd_percent"]["mean"] == pytest.approx(1.0)
    assert s["metrics"]["njd_percent"]["std"] == pytest.approx(math.sqrt(2 / 3))
    tre = s["metrics"]["tre_mean"]
    assert (tre["mean"], tre["std"], tre["n"]) == (2.0, 0.0, 1)


def test_summarize_rejects_empty_and_mixed(results):
    with pytest.raises(MaxcaInputError, match=r"at least one PairResult, got none"):
        summarize([])
    mixed = results + [PairResult({1: 1.0}, {1: 0.0}, 0.0, 0.0, l2r_compat=True)]
    with pytest.raises(MaxcaInputError, match=r"mix of l2r_compat True and False"):
        summarize(mixed)


def test_write_pair_csv(tmp_path, results):
    res = results[0]
    res.name = "0001_0002"
    path = tmp_path / "pair.csv"
    write_pair_csv(res, path)
    rows = list(csv.DictReader(path.open()))
    assert [r["metric"] for r in rows] == [
        "dice", "dice", "hd95", "hd95", "dice_mean", "hd95_mean", "njd_percent", "sdlogj",
        "tre_mean",
    ]  # fmt: skip
    assert all(r["pair"] == "0001_0002" for r in rows)
    assert rows[0]["label"] == "1" and float(rows[0]["value"]) == 0.8
    assert math.isnan(float(rows[1]["value"]))
    assert float(rows[-1]["value"]) == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pair.csv"]  # no temporary left


def test_write_summary_json_and_markdown(tmp_path, results):
    s = summarize(results)
    write_summary(s, tmp_path / "summary.json", tmp_path / "summary.md")

    def no_nan(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    data = json.loads((tmp_path / "summary.json").read_text(), parse_constant=no_nan)
    assert data["per_label"]["hd95"]["2"] == {"mean": None, "std": None, "n": 0}
    assert data["per_label"]["dice"]["1"]["mean"] == pytest.approx(0.8)
    md = (tmp_path / "summary.md").read_text()
    assert "| metric | mean | std | n |" in md
    assert "| Dice (mean over labels) | 0.7333 | 0.1312 | 3 |" in md
    assert "| 2 | 0.6 | 0.1 | n/a | n/a | 2 |" in md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json", "summary.md"]


def test_write_summary_bad_inputs(tmp_path, results):
    with pytest.raises(MaxcaInputError, match=r"returned by summarize\(\), got one without"):
        write_summary({"metrics": {}}, tmp_path / "s.json")
    with pytest.raises(MaxcaInputError, match=r"output folder must exist"):
        write_summary(summarize(results), tmp_path / "missing" / "s.json")
