"""Exceptions raised at maxca's public boundary.

Every error a user can cause is a :class:`MaxcaInputError` (a ``ValueError``) whose message is
one line naming what was expected and what was given. The CLI turns it into a one-line message
on stderr and a non-zero exit code.
"""

from __future__ import annotations


class MaxcaError(Exception):
    """Base class of maxca's own errors."""


class MaxcaInputError(MaxcaError, ValueError):
    """A bad argument, file, shape or configuration supplied by the user."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`MaxcaInputError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise MaxcaInputError(message)


class MissingDependencyError(MaxcaInputError, ImportError):
    """A feature needs an optional dependency that is not installed.

    Its message names the feature and the extra that installs it, e.g.
    ``HD95 needs MONAI, which is not installed: pip install "maxca[hd95]"``. It is both a
    :class:`MaxcaInputError` (the CLI exits 2 with that one line) and an ``ImportError``.
    """
