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


class OtherRankFailed(NextlongError):
    """Raised under torchrun on the ranks that did not fail, carrying the message of the lowest rank that did
    (nextlong.train.distributed.on_every_rank): rank 0 records it in the run's manifest. Not printed: the
    failed rank prints its own error, so a job's log has it once, not once per rank."""


def launched() -> bool:
    """This process is one rank of a multi-process launch (torchrun sets WORLD_SIZE; a garbled value is one
    process)."""
    import os

    try:
        return int(os.environ.get("WORLD_SIZE") or 1) > 1
    except ValueError:
        return False


def quiet_rank() -> bool:
    """A launched rank other than its node's first (LOCAL_RANK 0): an error every rank meets alike (a usage error,
    the run's record read before training) is said by each node's first rank only, so a job's log has it once
    per node."""
    import os

    return launched() and os.environ.get("LOCAL_RANK", "0") not in ("", "0")


class StageMismatchError(NextlongError):
    """A cached stage was built with other settings than the ones asked for now."""


class OutputLockedError(NextlongError):
    """Another live process is writing the same output folder."""


class EmbedderError(NextlongError, ValueError):
    """An embedder that cannot be loaded (unknown name, missing folder, unreadable model files, missing extra)."""


class UnknownEmbedderError(EmbedderError, UsageError):
    """An --embedder value that names no embedder (a usage error: exit status 2)."""


class IndexFileError(NextlongError, ValueError):
    """An index directory that is missing, partial or corrupt."""


class EmbedderMismatchError(StageMismatchError, ValueError):
    """The index was built with another embedder (or dimension) than the one asked for."""


class DiskFullError(NextlongError, OSError):
    """No space left for an output: names the path and how many bytes it needs."""


def disk_full(path, needed: int | str | None = None, free: int | None = None) -> DiskFullError:
    """The one-line error for a full disk (ENOSPC / EDQUOT) while writing `path`; `needed` is a byte
    count or a phrase such as "more than 1,024 bytes"."""
    parts = []
    if needed is not None:
        parts.append(f"needs {needed}" if isinstance(needed, str) else f"needs {_size(needed)}")
    if free is not None:
        parts.append(f"{_size(free)} free")
    detail = f" ({', '.join(parts)})" if parts else ""
    return DiskFullError(f"{path}: no space left on device{detail}; free some space (or choose another output) "
                         "and re-run: finished work is kept")


def _size(n: int) -> str:
    if n < 1 << 20:
        return f"{n:,} bytes"
    return f"{n:,} bytes ({n / (1 << 20):.1f} MiB)" if n < 1 << 30 else f"{n:,} bytes ({n / (1 << 30):.2f} GiB)"


def is_disk_full(exc: BaseException) -> bool:
    """True for the OSErrors of a full disk or an exceeded quota."""
    import errno

    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def is_file_too_large(exc: BaseException, size: int | None = None) -> bool:
    """True for a write stopped by the largest file allowed: EFBIG (a `ulimit -f` limit, or the file system's
    largest file), or a short write without an errno (numpy's tofile: "N requested and M written") that
    left the file at `size` bytes, exactly the process's file size limit."""
    import errno
    import resource

    if not isinstance(exc, OSError):
        return False
    if exc.errno == errno.EFBIG:
        return True
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return exc.errno is None and size is not None and limit != resource.RLIM_INFINITY and size >= limit


def file_too_large(path, written: int | None = None) -> NextlongError:
    """The one-line error for a write stopped by the largest file allowed, naming `path` and the limit."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    why = ("the file size limit of this process (`ulimit -f`: "
           f"{_size(limit)})" if limit != resource.RLIM_INFINITY else "the largest file this file system holds")
    at = f" at {_size(written)}" if written else ""
    return NextlongError(f"{path}: file too large: {why} stopped the write{at}; raise the limit (or choose another "
                         "output) and re-run: finished work is kept")


def check_free_space(path, needed: int) -> None:
    """Raise DiskFullError when the filesystem holding `path` has less than `needed` bytes free.

    Called before growing a memory-mapped file: a write into a mapped page the disk cannot back
    kills the process with SIGBUS ("Bus error"), too late for any message."""
    import os
    import shutil
    from pathlib import Path

    probe = Path(path)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise disk_full(os.fspath(path), needed, free)


def missing_extra(module: str, extra: str, feature: str) -> NextlongError:
    """The error for an optional dependency that is not installed."""
    return NextlongError(f"{feature} needs the Python package {module!r}, which is not installed: "
                         f"pip install 'nextlong[{extra}]'")


def missing_embedder_package(who: str, module: str) -> EmbedderError:
    """The error for an embedder whose package (of the `ml` extra) is not installed; torch is named with its
    pin, since an unpinned install would replace this machine's build."""
    return EmbedderError(f"{who} needs the Python package {module!r}, which is not installed: "
                         "pip install 'nextlong[ml]' (pin torch with -c constraints.txt)")


class CorruptFileError(NextlongError):
    """A stored file whose checksum no longer matches what was written (bytes changed on disk)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, the stop of a scheduler (Slurm, Kubernetes) or of `timeout`, taken as Ctrl-C is: the run's
    manifest says "interrupted" and its finished work is kept, where the default action ended the process
    with no word and left the manifest "running" for good. (`train` handles both signals itself, at a step
    boundary.)"""

    # set by the CLI's handler: Ray's ray.get raises a plain KeyboardInterrupt in place of the handler's exception
    # (measured, Ray 2.60), so a SIGTERM during a Ray stage was reported as Ctrl-C (exit 130, "interrupted")
    received = False


# --- arguments of the Python API: a wrong kind is a UsageError naming the argument, not a TypeError from deep
# inside (pathlib, a pybind signature, a comparison) nor a value silently taken (2.5 as a length, a str as texts)

def checked_int(value, name: str, minimum: int | None = None, *, none: bool = False) -> int | None:
    """`value` as an int: None (unless `none`), a bool, a float or a string ("64k") is a UsageError naming
    `name`, as is a value below `minimum`. numpy integers are taken."""
    import numbers

    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UsageError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise UsageError(f"{name} must be {minimum} or more, got {value}")
    return int(value)


def checked_number(value, name: str, *, none: bool = False) -> float | None:
    """`value` when it is a finite real number (an int too, not a bool; None with `none`); else a UsageError naming
    `name`."""
    import math
    import numbers

    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value!r}")
    return value


def checked_flag(value, name: str) -> bool:
    """`value` when it is True or False: a string ("no") would be taken as true."""
    if isinstance(value, bool):
        return value
    raise UsageError(f"{name} must be True or False, got {value!r}")


def checked_str(value, name: str, *, none: bool = False) -> str | None:
    """`value` when it is a str (or None with `none`); else a UsageError naming `name`."""
    if (value is None and none) or isinstance(value, str):
        return value
    raise UsageError(f"{name} must be a string, got {value!r}")


def checked_path(value, name: str) -> str:
    """`value` (a str or an os.PathLike) as a str; else a UsageError naming `name`."""
    import os

    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    raise UsageError(f"{name} must be a path (a str or pathlib.Path), got {value!r}")


def checked_texts(texts, name: str):
    """`texts`, unless it is a bare str: a sequence of its characters, taken as one text per character. That is
    a UsageError naming `name`."""
    if isinstance(texts, (str, bytes)):
        raise UsageError(f"{name} takes a sequence of texts, got one {type(texts).__name__}; wrap it in a list")
    return texts


def close_match(name: str, names) -> str:
    """" (did you mean X?)" for the one of `names` closest to a misspelt `name`, else "": the hint of an unknown
    keyword's error."""
    import difflib

    close = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {close[0]}?)" if close else ""
