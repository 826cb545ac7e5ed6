"""Output folders appear complete or not at all."""

from __future__ import annotations

import pytest

from maxca.errors import MaxcaInputError
from maxca.inference._output import OutputDir, atomic_file, check_output_dir


def test_failure_leaves_nothing_behind(tmp_path):
    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(RuntimeError), OutputDir(out) as tmp:
        (tmp / "a.txt").write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # no out, no temporary folder, no created parents


def test_success_and_refusal_and_overwrite(tmp_path):
    out = tmp_path / "out"
    with OutputDir(out) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "old.json").write_text("stale")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("2")
    assert (out / "a.txt").read_text() == "1" and (out / "sub" / "b.txt").read_text() == "2"
    (out / "user_notes.txt").write_text("mine")
    with pytest.raises(MaxcaInputError, match="already holds results"), OutputDir(out):
        pass
    with pytest.raises(MaxcaInputError, match="already holds results"):
        check_output_dir(out, overwrite=False)
    with OutputDir(out, overwrite=True, stale=("*.json", "sub/*.txt")) as tmp:
        (tmp / "a.txt").write_text("3")
    assert (out / "a.txt").read_text() == "3"
    assert not (out / "old.json").exists() and not (out / "sub").exists()
    assert (out / "user_notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(MaxcaInputError, match="not a directory"):
        check_output_dir(tmp_path / "file", overwrite=True)


def test_atomic_file(tmp_path):
    target = tmp_path / "x.nii.gz"
    with pytest.raises(ValueError), atomic_file(target) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_text("partial")
        raise ValueError
    assert list(tmp_path.iterdir()) == []
    with atomic_file(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done" and len(list(tmp_path.iterdir())) == 1
