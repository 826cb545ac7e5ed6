"""The one atomic-write helper: write beside the target, then ``os.replace`` onto it.

A failed or interrupted write leaves neither a partial target nor a temporary file (the
temporary file is removed when the body raises; a hard kill can leave only a hidden
``.<name>.tmp-XXXXXXXX<ext>`` file, never a half-written target).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from maxca.errors import MaxcaInputError

__all__ = ["atomic_dir", "atomic_path", "atomic_write_text", "full_suffix"]


def full_suffix(name: str) -> str:
    """Everything from the first dot of a file name (``.nii.gz``), or ``""``."""
    return name[name.index(".") :] if "." in name else ""


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], suffix: str | None = None, make_parents: bool = True
) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` and move it onto ``path`` when the body succeeds.

    The temporary name keeps the real extension (``suffix``, default :func:`full_suffix`, e.g.
    ``.nii.gz``) so writers that pick the format by extension work. With ``make_parents=False``
    a missing output folder is an error instead of being created.
    """
    target = Path(path)
    if not target.parent.is_dir():
        if not make_parents:
            raise MaxcaInputError(f"output folder must exist, got {str(target.parent)!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
    ext = full_suffix(target.name) if suffix is None else suffix
    stem = target.name[: len(target.name) - len(ext)] if ext else target.name
    tmp = target.parent / f".{stem}.tmp-{secrets.token_hex(4)}{ext}"
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str, make_parents: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with (
        atomic_path(path, make_parents=make_parents) as tmp,
        open(tmp, "w", encoding="utf-8", newline="") as fh,
    ):
        fh.write(text)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], fsync: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``.

    The new folder appears by one rename. An existing ``path`` is first renamed aside
    (``.<name>.old-<pid>``) and removed only after the new one is in place, so a crash leaves
    either the old folder, the new one, or the old one beside a hidden temporary folder; never
    a half-written ``path``. With ``fsync`` the files' contents are flushed before the rename.
    On error the temporary folder is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        yield tmp
        if fsync:
            for f in tmp.rglob("*"):
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
