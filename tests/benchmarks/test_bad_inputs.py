"""``benchmarks/bad_inputs.py``: every bad input exits 2 with one line, and the committed table
``docs/bad-inputs.md`` is what the script gives now (for the rows whose message does not depend
on the machine)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import bad_inputs  # benchmarks/ is put on sys.path by conftest.py


def _committed() -> dict[str, tuple[int, str]]:
    rows = {}
    for line in bad_inputs.DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| (.+?) \| (\d+) \| `(.*)` \|$", line)
        if m:
            rows[m.group(1)] = (int(m.group(2)), m.group(3).replace("\\|", "|"))
    return rows


def test_committed_table_lists_every_case_with_its_expected_code():
    committed = _committed()
    assert list(committed) == [c.name for c in bad_inputs.CASES]
    for case in bad_inputs.CASES:
        code, message = committed[case.name]
        assert code == case.expected, case.name
        assert message.startswith("maxca: warning:" if case.expected == 0 else "maxca: error:")


NAMES = [
    "NaN weights in model.safetensors",
    "fixed image with zero spacing (singular affine)",
    "--fixed-labels without --moving-labels",
    "--outputs with an unknown name",
    "--dataset path that does not exist",
]


@pytest.mark.parametrize("name", NAMES)
def test_rows_are_up_to_date(name: str, tmp_path: Path) -> None:
    case = next(c for c in bad_inputs.CASES if c.name == name)
    code, message = bad_inputs.run_case(case, tmp_path)
    assert (code, message) == _committed()[name]
    assert code == 2
