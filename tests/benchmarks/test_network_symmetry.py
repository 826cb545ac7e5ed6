"""benchmarks/network_symmetry.py refuses malformed pair lists before loading anything."""

from __future__ import annotations

import pytest

import network_symmetry  # benchmarks/ is put on sys.path by conftest.py


@pytest.mark.parametrize("pairs", ["3-14", "3:14:5", "", "a:b"])
def test_bad_pairs_are_refused(pairs: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        network_symmetry.main(["--pairs", pairs])
    assert info.value.code == 2
    assert "--pairs must be FIXED:MOVING" in capsys.readouterr().err
