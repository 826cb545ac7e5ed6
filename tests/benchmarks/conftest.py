"""Fixtures for the benchmark-harness tests: the tiny synthetic 3-D Learn2Reg dataset
(``tests/l2r_tiny.py``) and the scripts of ``benchmarks/`` importable as modules."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from l2r_tiny import LABELS, SHAPE, SPACING, lia_affine, make_tiny_dataset, template

__all__ = ["LABELS", "SHAPE", "SPACING", "lia_affine", "make_tiny_dataset", "template"]

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dataset.json of the tiny 3-D dataset (written once per session)."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny3d"))
