"""Output folders that appear complete or not at all, and atomic single-file writes.

A command that writes several files into ``DIR`` first writes them into a hidden temporary
sibling ``.DIR.tmp-XXXXXXXX`` and moves them into place only when everything succeeded
(:class:`OutputDir`). A failure (bad input discovered late, a crash, Ctrl-C) removes the temporary
folder and any parent folder it had to create, so ``DIR`` is either untouched or complete.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from maxca._atomic import atomic_path
from maxca.errors import MaxcaInputError

__all__ = ["OutputDir", "atomic_file", "check_output_dir"]


def check_output_dir(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse an output folder that already holds files, unless ``overwrite``.

    Args:
        path: the output folder (need not exist).
        overwrite: allow a non-empty folder (same-named files are replaced).

    Returns:
        ``path`` as an absolute :class:`~pathlib.Path`.

    Raises:
        MaxcaInputError: ``path`` is a file, or a non-empty folder without ``overwrite``.
    """
    out = Path(os.path.abspath(path))
    if out.exists() and not out.is_dir():
        raise MaxcaInputError(f"output path exists and is not a directory: {out}")
    if out.is_dir() and not overwrite and any(out.iterdir()):
        raise MaxcaInputError(
            f"output directory already holds results: {out} (use --overwrite to replace them)"
        )
    return out


def atomic_file(path: str | os.PathLike[str], suffix: str | None = None):  # noqa: ANN201
    """:func:`maxca._atomic.atomic_path` (creates missing parent folders)."""
    return atomic_path(path, suffix)


class OutputDir:
    """A folder written in full or not at all.

    Usage::

        with OutputDir(out, overwrite=False) as tmp:
            write files under tmp ...
        # on success they are now under ``out``; on error ``out`` is unchanged

    On entry the target is checked with :func:`check_output_dir` and the temporary folder
    ``.<name>.tmp-XXXXXXXX`` is created beside it (missing parents are created and removed again
    on failure). On success: if ``out`` does not exist the temporary folder is renamed to it (one
    atomic step); otherwise (``overwrite`` or an empty folder) every file is moved in with
    ``os.replace``, replacing files of the same name, and the files matching the glob patterns
    in ``stale`` (relative to ``path``, e.g. ``"pairs/*.csv"``) that this run did not write are
    deleted, so the folder describes a single run; other files are left alone.
    """

    def __init__(
        self, path: str | os.PathLike[str], overwrite: bool = False, stale: Iterable[str] = ()
    ) -> None:
        self.path = Path(os.path.abspath(path))
        self.overwrite = overwrite
        self.stale = tuple(stale)
        self.tmp: Path | None = None
        self._created: list[Path] = []

    def __enter__(self) -> Path:
        check_output_dir(self.path, self.overwrite)
        missing = []
        parent = self.path.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for folder in reversed(missing):
            folder.mkdir()
            self._created.append(folder)
        self.tmp = self.path.parent / f".{self.path.name}.tmp-{secrets.token_hex(4)}"
        self.tmp.mkdir()
        return self.tmp

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self.tmp is not None
        if exc_type is None:
            try:
                self._commit()
            except BaseException:
                self._cleanup()
                raise
        else:
            self._cleanup()

    def _cleanup(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when still empty

    def _commit(self) -> None:
        assert self.tmp is not None
        check_output_dir(self.path, self.overwrite)  # it may have been filled meanwhile
        if not self.path.exists():
            os.rename(self.tmp, self.path)
            return
        written = {p.relative_to(self.tmp) for p in self.tmp.rglob("*") if p.is_file()}
        for folder in sorted({w.parent for w in written}, key=lambda p: len(p.parts)):
            (self.path / folder).mkdir(parents=True, exist_ok=True)
        for rel in sorted(written):
            os.replace(self.tmp / rel, self.path / rel)
        emptied = set()
        for pattern in self.stale:
            for old in self.path.glob(pattern):
                if old.is_file() and old.relative_to(self.path) not in written:
                    old.unlink()
                    emptied.add(old.parent)
        for folder in sorted(emptied, key=lambda p: -len(p.parts)):
            if folder != self.path:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when nothing else is left in it
        shutil.rmtree(self.tmp, ignore_errors=True)
