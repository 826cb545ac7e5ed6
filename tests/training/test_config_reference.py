"""The config reference (issue #15 item 13): every key of every config dataclass is listed
with its default and a meaning, by ``maxca config --show`` and in ``maxca train --help``."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from maxca import cli
from maxca.training.config import ExperimentConfig, config_reference


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _all_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_every_field_is_listed_with_default_and_meaning() -> None:
    rows = config_reference()
    assert [r[0] for r in rows] == _all_keys(ExperimentConfig)
    missing = [key for key, _, meaning in rows if len(meaning.split()) < 2]
    assert missing == []
    table = dict((k, d) for k, d, _ in rows)
    # defaults as YAML, read from the dataclasses
    assert table["optim.lr"] == "0.0001" and table["budget.minutes"] == "null"
    assert table["data.val_pairs"] == "registration_val" and table["tf32"] == "true"
    assert table["loss.weights.diffusion"] == "1.0" and table["model.config"] == "{}"


def _out(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    try:
        cli.main(argv)
    except SystemExit as exc:
        assert not exc.code
    return capsys.readouterr().out


def test_cli_lists_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["config", "--show"], ["train", "--help"]):
        text = _out(argv, capsys)
        lines = text.splitlines()
        for key in _all_keys(ExperimentConfig):
            assert any(line.startswith(f"{key} ") for line in lines), (argv, key)
