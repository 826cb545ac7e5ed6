"""Output folders that appear complete or not at all, and atomic single-file writes.

A command that writes several files into ``DIR`` first writes them into a hidden temporary
sibling ``.DIR.tmp-XXXXXXXX`` and moves them into place only when everything succeeded
(:class:`OutputDir`). A failure (bad input discovered late, a crash, Ctrl-C) removes the temporary
folder and any parent folder it had to create, so ``DIR`` is either untouched or complete.

Every committed folder holds ``.maxca-manifest.json``, the list of files maxca wrote there: with
``overwrite``, only files listed in the previous manifest are ever deleted (files of the user's
own that happen to match a result name are left alone). Each temporary folder holds a marker
``.maxca-tmp`` with the writer's process id: a temporary left behind by a process that no longer
runs (a ``kill -9``, a power cut) is removed by the next :class:`OutputDir` for the same target.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from maxca._atomic import atomic_path
from maxca.errors import MaxcaInputError

__all__ = ["MANIFEST", "OutputDir", "atomic_file", "check_output_dir", "clean_stale_temporaries"]

#: the list of files maxca wrote into an output folder (JSON: ``{"files": [relative paths]}``)
MANIFEST = ".maxca-manifest.json"
#: marker inside a temporary output folder (JSON: ``{"pid": ..., "host": ...}``)
TMP_MARKER = ".maxca-tmp"
#: a temporary folder of ours without a readable marker is removed once it is this old
STALE_AGE_S = 24 * 3600.0


def _check_writable(out: Path) -> None:
    """Refuse ``out`` when its nearest existing ancestor folder cannot be written to.

    Tries to create (and removes) a temporary folder there, so read-only file systems are
    caught too (``os.access`` answers yes for root)."""
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    reason = _probe_folder(parent)
    if reason is not None:
        raise MaxcaInputError(
            f"output folder is not writable: {out} (cannot create files in {parent}: {reason})"
        )
    if out.is_dir():
        reason = _probe_folder(out)
        if reason is not None:
            raise MaxcaInputError(f"output folder is not writable: {out} ({reason})")


def _probe_folder(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (``None`` when one can): makes and removes a
    temporary folder there."""
    try:
        probe = tempfile.mkdtemp(prefix=".maxca-probe-", dir=folder)
        os.rmdir(probe)
    except OSError as exc:
        return str(exc.strerror or exc)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary folders ``.<name>.tmp-XXXXXXXX`` of ``path`` that an earlier maxca
    process left behind (killed before it could clean up).

    A temporary is removed when its marker names a process of this host that no longer runs,
    or, without a readable marker, when it is older than :data:`STALE_AGE_S`. Others (a run in
    progress, a folder that only looks like ours) are left alone.

    Returns:
        the removed folders.
    """
    target = Path(os.path.abspath(path))
    if not target.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.tmp-[0-9a-f]{{8}}$")
    removed = []
    host = os.uname().nodename if hasattr(os, "uname") else ""
    for candidate in target.parent.iterdir():
        if not pattern.match(candidate.name) or not candidate.is_dir() or candidate.is_symlink():
            continue
        stale = False
        try:
            marker = json.loads((candidate / TMP_MARKER).read_text(encoding="utf-8"))
            if marker.get("host", host) == host:
                stale = not _pid_alive(int(marker["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            with contextlib.suppress(OSError):
                stale = time.time() - candidate.stat().st_mtime > STALE_AGE_S
        if stale:
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def _write_manifest(folder: Path, files: Iterable[Path]) -> None:
    listing = sorted(p.as_posix() for p in files)
    tmp = folder / f".{MANIFEST}.tmp-{secrets.token_hex(4)}"
    tmp.write_text(json.dumps({"files": listing}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)


def _read_manifest(folder: Path) -> set[Path]:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        return {Path(p) for p in data["files"] if isinstance(p, str)}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def check_output_dir(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse an output folder that already holds files, unless ``overwrite``.

    Args:
        path: the output folder (need not exist).
        overwrite: allow a non-empty folder (same-named files are replaced).

    Returns:
        ``path`` as an absolute :class:`~pathlib.Path`.

    Raises:
        MaxcaInputError: ``path`` is a file, a non-empty folder without ``overwrite``, or a
            place that cannot be written to (checked before any computation).
    """
    out = Path(os.path.abspath(path))
    if out.exists() and not out.is_dir():
        raise MaxcaInputError(f"output path exists and is not a directory: {out}")
    if out.is_dir() and not overwrite and any(out.iterdir()):
        raise MaxcaInputError(
            f"output directory already holds results: {out} (use --overwrite to replace them)"
        )
    _check_writable(out)
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
    in ``stale`` (relative to ``path``, e.g. ``"pairs/*.csv"``) that this run did not write
    and that the previous :data:`MANIFEST` lists as written by maxca are deleted, so the folder
    describes a single run; other files (the user's own) are left alone. The new manifest lists
    this run's files. Stale temporaries of earlier killed runs are removed on entry
    (:func:`clean_stale_temporaries`).
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
        clean_stale_temporaries(self.path)
        self.tmp = self.path.parent / f".{self.path.name}.tmp-{secrets.token_hex(4)}"
        self.tmp.mkdir()
        host = os.uname().nodename if hasattr(os, "uname") else ""
        (self.tmp / TMP_MARKER).write_text(
            json.dumps({"pid": os.getpid(), "host": host}), encoding="utf-8"
        )
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
        (self.tmp / TMP_MARKER).unlink()
        written = {p.relative_to(self.tmp) for p in self.tmp.rglob("*") if p.is_file()}
        _write_manifest(self.tmp, written)
        if not self.path.exists():
            os.rename(self.tmp, self.path)
            return
        ours = _read_manifest(self.path)
        written.add(Path(MANIFEST))
        for folder in sorted({w.parent for w in written}, key=lambda p: len(p.parts)):
            (self.path / folder).mkdir(parents=True, exist_ok=True)
        for rel in sorted(written):
            os.replace(self.tmp / rel, self.path / rel)
        emptied = set()
        for pattern in self.stale:
            for old in self.path.glob(pattern):
                rel = old.relative_to(self.path)
                if old.is_file() and rel not in written and rel in ours:
                    old.unlink()
                    emptied.add(old.parent)
        for folder in sorted(emptied, key=lambda p: -len(p.parts)):
            if folder != self.path:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when nothing else is left in it
        kept = {rel for rel in ours - written if (self.path / rel).is_file()}
        if kept:  # earlier results of ours this run did not replace stay listed
            _write_manifest(self.path, {*written, *kept} - {Path(MANIFEST)})
        shutil.rmtree(self.tmp, ignore_errors=True)
