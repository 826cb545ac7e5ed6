"""Exceptions raised at maxca's public boundary, and the command line's exit-code contract.

Every error a user can cause is a :class:`MaxcaInputError` (a ``ValueError``) whose message is
one line naming what was expected and what was given. The CLI turns it into a one-line message
on stderr and a non-zero exit code.

Exit codes of the ``maxca`` command:

====  =========================================================================================
0     success
1     an unexpected failure (a bug: ``--debug`` prints the traceback)
2     a usage error or bad input (:class:`MaxcaInputError`, an unreadable/unwritable file)
3     training diverged (:class:`TrainingDivergedError`: the loss, a gradient or the weights
      became NaN/Inf; the checkpoints on disk are those of the last good step)
130   interrupted (SIGINT; during training also SIGTERM/SIGHUP, after saving ``last``)
====  =========================================================================================
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class MaxcaError(Exception):
    """Base class of maxca's own errors."""


class MaxcaInputError(MaxcaError, ValueError):
    """A bad argument, file, shape or configuration supplied by the user."""


class TrainingDivergedError(MaxcaError):
    """Training stopped because a value became non-finite (not bad input: exit code 3)."""


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
