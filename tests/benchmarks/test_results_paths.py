"""Committed benchmark results record paths relative to the repository (issue #15 item 17)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from _common import REPO, SHARED_DATA, display_path

# an absolute path of a development machine: /work/..., /home/..., /root/..., /Users/...
ABSOLUTE = re.compile(r"(?<![\w.~/])/(?:work|home|root|Users|mnt|scratch)/[\w.-]+")


def _committed_results() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "benchmarks/results", "docs"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        files = [REPO / f for f in out]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file there
        files = [*(REPO / "benchmarks" / "results").rglob("*"), *(REPO / "docs").rglob("*")]
    return [f for f in files if f.is_file() and f.suffix in (".csv", ".md", ".json", ".txt")]


def test_no_committed_result_holds_an_absolute_path() -> None:
    files = _committed_results()
    assert any(f.name == "baselines.md" for f in files)  # the method notes are looked at
    offenders = []
    for f in files:
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if ABSOLUTE.search(line):
                offenders.append(f"{f.relative_to(REPO)}:{n}: {ABSOLUTE.search(line).group()}")
    assert offenders == []


def test_display_path_is_relative_to_the_repository() -> None:
    data = SHARED_DATA / "brain-synth-2mm" / "dataset.json"
    assert display_path(data) == "../shared/data/brain-synth-2mm/dataset.json"
    assert display_path(REPO / "benchmarks" / "results" / "x") == "benchmarks/results/x"
    assert display_path(REPO.parent / "runs" / "r1") == "../runs/r1"
    assert display_path("runs/r1") == "runs/r1"  # relative paths are kept as given
    assert ABSOLUTE.search(display_path(Path("/work/abl3d/runs/a"))) is None
