"""Errors a user can act on. The CLI turns each into one line on stderr and an exit code."""

from __future__ import annotations


class MonetEditError(Exception):
    """Base class: an expected failure with a one-line message for the user."""

    exit_code = 1


class UsageError(MonetEditError):
    """Bad input: a path, file, flag or value the user gave (exit code 2)."""

    exit_code = 2


class GateFailed(MonetEditError):
    """A `--gate` condition did not hold (exit code 3)."""

    exit_code = 3


class WriteError(MonetEditError):
    """Storage refused a write (disk full, read-only, over a size limit): exit code 1."""
