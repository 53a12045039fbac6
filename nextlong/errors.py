"""Errors users see. Each names the file and the line or record at fault, and what was expected."""

from __future__ import annotations


class NextlongError(Exception):
    """Base class of every error nextlong raises on purpose."""


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
