"""maxca._atomic.atomic_dir: a folder appears whole or not at all, replacing an old one."""

from __future__ import annotations

import pytest

from maxca._atomic import atomic_dir


def test_atomic_dir_creates_and_replaces(tmp_path) -> None:
    target = tmp_path / "sub" / "run"
    with atomic_dir(target, fsync=True) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".run.tmp-")
        assert not target.exists()  # nothing visible before success
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # replaced, not merged
    assert sorted(p.name for p in target.parent.iterdir()) == ["run"]  # no leftovers


def test_atomic_dir_failure_keeps_the_old_folder(tmp_path) -> None:
    target = tmp_path / "run"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("partial")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
