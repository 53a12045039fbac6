"""Write files so a crash never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import disk_full, file_too_large, is_disk_full, is_file_too_large

# mkstemp (and safetensors) create files readable by the owner only; finished outputs get the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike):
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds.

    A full disk inside the block becomes a one-line DiskFullError naming `final` and the bytes
    written so far; a write stopped by the file size limit (`ulimit -f`, EFBIG) a one-line error too. After the rename, temporaries of `final` left by a killed run are deleted
    (callers hold the output folder's lock, so no live writer owns them)."""
    final = Path(final)
    if final.is_dir():  # the rename would fail after the work, naming the temporary
        from .errors import NextlongError

        raise NextlongError(f"{final}: is a folder, where a file of that name is to be written; choose another path")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        from .errors import NextlongError

        raise NextlongError(f"{final.parent}: exists and is not a folder (or is inside a file), where {final.name} "
                            "is to be written; choose another path") from None
    prefix = f".{final.name}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        fsync_path(tmp)  # the bytes reach the disk before the name points at them (a power cut, not only a kill)
        os.replace(tmp, final)
        fsync_path(final.parent)  # and the rename itself
    except BaseException as exc:
        written, full = None, is_disk_full(exc)
        with contextlib.suppress(OSError):
            written = os.stat(tmp).st_size
            # numpy's tofile reports a short write without an errno ("N requested and M written")
            full = full or (isinstance(exc, OSError) and exc.errno is None
                            and shutil.disk_usage(final.parent).free < (1 << 20))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if not full and is_file_too_large(exc, written):
            raise file_too_large(final, written) from exc
        if full:
            raise disk_full(final, needed=f"more than {written:,} bytes" if written else None) from exc
        raise
    own_temporary = re.compile(re.escape(prefix) + r"[a-z0-9_]{8}\.tmp")  # mkstemp's names, not another file's
    for stale in final.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        if own_temporary.fullmatch(stale.name):
            with contextlib.suppress(OSError):
                stale.unlink()


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or a folder's entries, to the disk. A file written and renamed without it survives a killed
    process but, after a power cut or a node crash, can stand under its final name empty or cut short while
    the record that calls it done is whole. A file system that cannot fsync a folder is left as it is.
    NEXTLONG_FSYNC=0 skips it (the test suite: it doubled the time of its many tiny writes)."""
    if os.environ.get("NEXTLONG_FSYNC") == "0":  # a test suite's thousands of small files; never for real work
        return
    path = Path(path)
    folder = path.is_dir()
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    except PermissionError:
        if folder:  # a folder we may write but not read: its entry is left as durable as the file system makes it
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def file_crc32(path: str | os.PathLike, block: int = 1 << 24) -> int:
    """CRC32 of a file, streamed (one read of the file, constant memory)."""
    import zlib

    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            crc = zlib.crc32(chunk, crc)
    return crc


_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # atomic_path's names: .NAME.XXXXXXXX.tmp


def is_temporary(name: str) -> bool:
    """Whether a file name is one of atomic_path's temporaries (what a killed write leaves; removed later)."""
    return _TEMPORARY.fullmatch(name) is not None


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete what killed runs left in an output folder the caller holds the lock of: atomic_path
    temporaries anywhere below it, and at its top whatever a conversion (MDS) left under a `.tmp` name:
    its unfinished `NAME.tmp` folder, or the previous output renamed aside (`NAME.old.tmp`, a folder,
    or a file or link that stood at NAME). Returns how many were removed."""
    folder = Path(folder)
    removed = 0
    for path in folder.rglob("*.tmp"):
        if path.is_file() and not path.is_symlink() and is_temporary(path.name):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    for path in folder.glob("*.tmp"):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
                removed += 1
            elif path.name.endswith(".old.tmp") and os.path.lexists(path):
                path.unlink()
                removed += 1
    return removed
