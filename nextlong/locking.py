"""One writer per output folder: two runs into the same --out would mix their files silently.

`output_lock(folder)` takes an exclusive, non-blocking `flock` on `folder/.nextlong.lock` and
writes the holder's pid into it. The kernel drops the lock when the holder dies, so a stale lock
file of a killed run never blocks the next one; a live holder makes the second run fail at once
with a message naming the folder and the holder's pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from .errors import NextlongError, OutputLockedError

LOCK_NAME = ".nextlong.lock"


def lock_path_for(target: str | os.PathLike) -> Path:
    """The lock of an output folder, or of a single output file (a hidden lock beside it)."""
    target = Path(target)
    if target.suffix and not target.is_dir():  # a file output such as chunks.parquet
        return target.with_name(f".{target.name}.lock")
    return target / LOCK_NAME


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, command: str = "nextlong"):
    """Hold an exclusive lock on an output folder (or file) for the duration of the block."""
    path = lock_path_for(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise NextlongError(f"{path.parent}: cannot create the output folder's lock file: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise OutputLockedError(
                f"{Path(target)}: another run is writing this output (pid {holder}); wait for it to finish or "
                "choose another output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock; the file stays (harmless, and removing it would race)
