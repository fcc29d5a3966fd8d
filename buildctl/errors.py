"""Errors that reach the user: one line saying what went wrong, one saying what to do."""

from __future__ import annotations

EXIT_OK = 0
EXIT_BUILD_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class BuildctlError(Exception):
    """Base class: `what` went wrong, `fix` tells the user what to do."""

    exit_code = EXIT_BUILD_FAILED

    def __init__(self, what: str, fix: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.fix = fix

    def render(self) -> str:
        return f"error: {self.what}" + (f"\n  fix: {self.fix}" if self.fix else "")


class BadInput(BuildctlError):
    """The user's arguments, config files or inputs are wrong (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class BuildFailed(BuildctlError):
    """The build ran and failed (exit 1)."""

    exit_code = EXIT_BUILD_FAILED
