"""The one atomic-write helper: write beside the target, then ``os.replace`` onto it.

A failed or interrupted write leaves neither a partial target nor a temporary file (the
temporary file is removed when the body raises; a hard kill can leave only a hidden
``.<name>.tmp-XXXXXXXX<ext>`` file, never a half-written target).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from maxca.errors import MaxcaInputError

__all__ = ["atomic_path", "atomic_write_text", "full_suffix"]


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
