"""Errors users see. Each names the file and the line or record at fault, and what was expected.

The contract: every error caused by the user's input or environment is a `NextlongError`. The CLI
prints it as one line, `nextlong CMD: error: ...`, and exits with the class's `exit_code`: 2 for a
usage error (a bad option value or combination, caught before any work), 1 for everything else
(bad data, a stale cache, a locked folder, a full disk). A traceback is shown only with `--debug`.
"""

from __future__ import annotations


class NextlongError(Exception):
    """Base class of every error nextlong raises on purpose."""

    exit_code = 1


class UsageError(NextlongError, ValueError):
    """A bad option value or combination, reported before any work starts (exit status 2)."""

    exit_code = 2


class CorpusError(NextlongError, ValueError):
    """Bad corpus input: names the file, the line (1-based) or record, and what was expected."""

    def __init__(self, path, message: str, line: int | None = None, record: int | None = None):
        self.path = str(path)
        self.line = line
        self.record = record
        where = self.path
        if line is not None:
            where += f":{line}"
        elif record is not None:
            where += f" (record {record})"
        super().__init__(f"{where}: {message}")


class TokenizerError(NextlongError, ValueError):
    """A tokenizer file nextlong cannot load faithfully (unsupported model, regex construct, ...)."""


class StageMismatchError(NextlongError):
    """A cached stage was built with other settings than the ones asked for now."""


class OutputLockedError(NextlongError):
    """Another live process is writing the same output folder."""
