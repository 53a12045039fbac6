"""One writer per output folder: two runs into the same --out would mix their files silently.

`output_lock(target)` takes an exclusive, non-blocking `flock` on a lock file (`DIR/.nextlong.lock`
for a folder, a hidden `.NAME.lock` beside a single output file) and writes the holder's pid and
command into it. The kernel drops the lock when the holder dies, so the lock file of a killed run
never blocks the next one; a live holder makes the second run fail at once with a message naming
the output and the holder's pid.

The holder deletes the lock file before it lets go. That is safe because a run that locked a file
checks it is still the one at the path (same inode) and otherwise starts over on the new file.

A run that fails leaves no empty folders behind: the folders the lock created, and empty
sub-folders of the output, are removed again (folders with finished work stay, for the resume).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

from .errors import NextlongError, OutputLockedError, UsageError

LOCK_NAME = ".nextlong.lock"


def lock_path_for(target: str | os.PathLike, file: bool | None = None) -> Path:
    """The lock of an output folder, or of a single output file (a hidden lock beside it).
    `file=None` guesses: an existing folder, or a name without a suffix, is a folder."""
    target = Path(target)
    if file is None:
        file = bool(target.suffix) and not target.is_dir()
    return target.with_name(f".{target.name}.lock") if file else target / LOCK_NAME


def _make_folders(folder: Path) -> list[Path]:
    """mkdir -p, returning the folders it created (deepest last); errors name the folder."""
    missing = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise NextlongError(f"{folder}: cannot create the output folder: {probe} is a file, not a folder")
    created = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue  # made by someone else meanwhile
        except OSError as exc:
            raise NextlongError(f"{path}: cannot create the output folder ({exc.strerror})") from exc
        created.append(path)
    return created


def _prune_empty(root: Path | None, created: list[Path]) -> None:
    """Remove empty folders under the output folder `root` (deepest first), then the empty folders
    this run created (a single output file's folder is the user's: only what the run created goes). In a
    folder this run created, a manifest that says only "running" and sits beside nothing else records no
    work: it goes too, so a run refused at its first record leaves no folder."""
    if root is not None and root in created and root.is_dir():
        files = [Path(d) / f for d, _, names in os.walk(root) for f in names]
        if files == [root / "manifest.json"]:
            from .manifest import FAILED, INTERRUPTED, RUNNING, read_manifest, run_status

            if run_status(read_manifest(files[0])) in (RUNNING, FAILED, INTERRUPTED):  # no finished work
                with contextlib.suppress(OSError):
                    files[0].unlink()
    if root is not None and root.is_dir():
        for dirpath, _dirnames, _files in sorted(os.walk(root), key=lambda w: -len(w[0])):
            if Path(dirpath) == root and root not in created:
                continue  # the user's folder, empty before the run: theirs to keep
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)  # fails (and is skipped) unless empty
    for path in reversed(created):
        with contextlib.suppress(OSError):
            path.rmdir()


def refuse_another_commands_folder(folder: Path, command: str) -> None:
    """A folder whose manifest.json records another command's run is that run's output: `nextlong index --out`
    given a synthesize folder replaced its manifest (a later `train` then read the index's chunk table as
    data). Refused before anything is written, naming what the folder holds."""
    from .manifest import another_commands_run

    other = another_commands_run(folder / "manifest.json", command) if folder.is_dir() else None
    if other is not None:
        raise NextlongError(f"{folder}: holds the output of {other} (its manifest.json); give `nextlong {command}` a "
                            f"new folder, or the folder of an earlier `nextlong {command}` run to resume it")


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, command: str = "nextlong", *, file: bool | None = None):
    """Hold an exclusive lock on an output folder (or file, `file=True`) for the duration of the block.

    Creates the folder (or the file's folder). Raises OutputLockedError at once when another live
    process holds the lock, and NextlongError when the folder holds another command's run."""
    raw, target = os.fspath(target), Path(target)
    path = lock_path_for(target, file)
    if path.name != LOCK_NAME and (target.is_dir() or raw.endswith(os.sep)):
        raise UsageError(f"{raw}: is a folder, where `nextlong {command}` writes one file; give --out a file name")
    if path.name == LOCK_NAME and os.path.lexists(target) and not target.is_dir():
        raise UsageError(f"{target}: exists and is not a folder, where `nextlong {command}` writes a folder; "
                         "choose another --out")
    if path.name == LOCK_NAME and command != "nextlong":
        refuse_another_commands_folder(target, command)
    created = _make_folders(path.parent)
    fd = None
    try:
        while True:
            try:
                # never through a link or into a FIFO: the lock file lives in a folder the user handed us
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise NextlongError(f"{path}: the lock file is a symbolic link; remove it (a lock is never "
                                        "written through a link)") from None
                raise NextlongError(f"{path.parent}: cannot create the output's lock file ({exc.strerror})") from exc
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                fd = None
                raise NextlongError(f"{path}: the lock file is not a regular file; remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                if holder.split()[0] == str(os.getpid()):  # flock is per open file: a thread of ours holds it
                    raise OutputLockedError(
                        f"{target}: another call in this process (another thread) is writing this output; wait "
                        "for it to return or choose another output") from None
                raise OutputLockedError(
                    f"{target}: another run is writing this output (pid {holder}); wait for it to finish or "
                    "choose another output") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed the file we locked: lock the new one
            fd = None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        try:
            yield path
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            _prune_empty(target if path.name == LOCK_NAME else None, created)
            raise
        with contextlib.suppress(OSError):
            os.unlink(path)
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock
