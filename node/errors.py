"""Errors of the node package and their one-line, user-facing form."""

from __future__ import annotations


class NodeError(Exception):
    """Root of ``pithnode.node`` exceptions."""


class CliError(NodeError):
    """A failure to report to the user as one line: cause, fix and exit code."""

    def __init__(self, message: str, *, hint: str | None = None, code: int = 2) -> None:
        super().__init__(message)
        self.hint = hint
        self.code = code


class ConfigError(NodeError):
    """A config file is missing, malformed, or names an unknown section or key."""


def leaf_exception(exc: BaseException) -> BaseException:
    """The single exception inside nested one-member exception groups (trio's nurseries
    wrap what a task raised), or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
