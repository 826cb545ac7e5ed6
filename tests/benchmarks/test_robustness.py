"""The robustness benchmark script (benchmarks/robustness.py) on the tiny 3-D dataset."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

import _common  # benchmarks/ is put on sys.path by conftest.py
import robustness

from .conftest import SHAPE, SPACING


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained small ``pyramid`` + MAXCA checkpoint on the tiny dataset's grid."""
    folder = tmp_path_factory.mktemp("model") / "model"
    return _common.fresh_checkpoint(folder, "pyramid", "maxca", SHAPE, (SPACING,) * 3, small=True)


def test_robustness_script(tiny_dataset: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = tiny_checkpoint
    out = tmp_path / "out"
    argv = [
        "--dataset", str(tiny_dataset), "--max-pairs", "2", "--model", f"tiny={ckpt}",
        "--refine", "1", "--corruptions", "gaussian_noise,missing_slab", "--severities", "0,2",
        "--threads", "1", "--out", str(out), "--no-plot", "--quiet", "--ants",
    ]  # fmt: skip
    assert robustness.main(argv) == 0
    rows = _rows(out / "robustness.csv")
    ants_available = _common.import_ants() is not None
    methods = {"affine only", "tiny", "tiny +refine 1"} | (
        {"ANTs SyN"} if ants_available else set()
    )
    assert {r["method"] for r in rows} == methods
    assert len(rows) == 2 * len(methods) * 2 * 2 * 2  # pairs x methods x corr. x sev. x sides
    # affine only = Dice before registration, for every corruption (its flow is always zero)
    before = {
        p.name: _common.score_flow(p, _common.identity_flow(p), list(range(1, 4))).dice_mean
        for p in _common.load_pairs(_common.validation_pairs(tiny_dataset)[:2])
    }
    for r in rows:
        if r["method"] == "affine only":
            assert float(r["dice"]) == pytest.approx(before[r["pair"]], abs=1e-12)
    md = (out / "robustness.md").read_text()
    if not ants_available:  # said plainly, not silently dropped
        assert "ANTsPy is not installed" in md
    assert "| gaussian_noise | moving |" in md and "extrapolated full run" in md
    assert re.search(r"[`= ]/", md) is None  # paths recorded relative, never absolute
    assert "../" in md

    # --report: the same tables from the CSV alone (here split in two files by pair)
    names = list(dict.fromkeys(r["pair"] for r in rows))  # in run order
    parts = []
    for i, name in enumerate(names):
        part = tmp_path / f"part{i}.csv"
        with open(part, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(r for r in rows if r["pair"] == name)
        parts.append(str(part))
    merged = tmp_path / "merged"
    assert robustness.main(["--report", *parts, "--out", str(merged), "--no-plot"]) == 0
    assert _rows(merged / "robustness.csv") == rows
    table = md[md.index("## Dice drop") :]
    merged_md = (merged / "robustness.md").read_text()
    assert merged_md[merged_md.index("## Dice drop") :] == table
    # a registration in several files is taken from the first file that has it
    again = tmp_path / "again"
    argv = ["--report", str(out / "robustness.csv"), parts[1], "--out", str(again), "--no-plot"]
    assert robustness.main(argv) == 0
    assert _rows(again / "robustness.csv") == rows
    assert f"{len(rows) // 2} rows of" in (again / "robustness.md").read_text()
    with pytest.raises(SystemExit, match="no such CSV"):
        robustness.main(["--report", str(tmp_path / "nope.csv"), "--out", str(merged)])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--severities", "0,5"], "severities must be in 0..4"),
        (["--corruptions", "blur"], "unknown corruptions"),
        (["--refine", "-1"], "--refine must be >= 0"),
        (["--refine-similarity", "mind"], "--refine-similarity needs --refine N"),
        (["--refine", "2", "--refine-similarity", "l2"], "invalid choice: 'l2'"),
        (["--skip-pairs", "-1"], "--skip-pairs must be >= 0"),
        (["--skip-pairs", "4"], "--skip-pairs 4 leaves no pair of registration_val"),
    ],
)
def test_robustness_script_bad_input(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra, message
) -> None:
    argv = ["--dataset", str(tiny_dataset), "--out", str(tmp_path / "o"), *extra]
    with pytest.raises(SystemExit) as exc:
        robustness.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_skip_pairs_runs_the_later_pairs(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [
        "--dataset", str(tiny_dataset), "--skip-pairs", "1", "--max-pairs", "1",
        "--corruptions", "gaussian_noise", "--severities", "0,1", "--sides", "moving",
        "--threads", "1", "--out", str(out), "--no-plot", "--quiet",
    ]  # fmt: skip
    assert robustness.main(argv) == 0
    second = _common.validation_pairs(tiny_dataset)[1]
    names = {r["pair"] for r in _rows(out / "robustness.csv")}
    assert names == {_common.load_pairs([second])[0].name}


def test_refine_similarity_names_the_refined_method(
    tiny_dataset: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    ckpt = tiny_checkpoint
    out = tmp_path / "out"
    argv = [
        "--dataset", str(tiny_dataset), "--max-pairs", "1", "--model", f"tiny={ckpt}",
        "--refine", "2", "--refine-similarity", "mind", "--corruptions", "contrast_gamma",
        "--severities", "0", "--sides", "moving", "--threads", "1", "--out", str(out),
        "--no-plot", "--quiet",
    ]  # fmt: skip
    assert robustness.main(argv) == 0
    methods = {r["method"] for r in _rows(out / "robustness.csv")}
    assert methods == {"affine only", "tiny", "tiny +refine 2 (mind)"}
