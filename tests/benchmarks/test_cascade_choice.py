"""benchmarks/cascade_choice.py: its setting names, and bad settings or pairs refused with exit
code 2 before anything is loaded."""

from __future__ import annotations

import pytest

import cascade_choice  # benchmarks/ is put on sys.path by conftest.py


@pytest.mark.parametrize(
    "text, expected", [("1", (1, 0)), ("2r25", (2, 25)), (" 3r0 ", (3, 0)), ("12r100", (12, 100))]
)
def test_settings_parse(text: str, expected: tuple[int, int]) -> None:
    assert cascade_choice.parse_setting(text) == expected


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--settings", "2x"], "a setting is PASSES or PASSESrSTEPS"),
        (["--settings", "0"], "a setting is PASSES or PASSESrSTEPS"),
        (["--settings", "r25"], "a setting is PASSES or PASSESrSTEPS"),
        (["--pairs", "3-14"], "--pairs must be FIXED:MOVING"),
    ],
)
def test_bad_arguments_exit_2(argv, message, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cascade_choice.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
