"""Every run writes a manifest: its settings, seed, versions and statistics, so results can be traced."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from importlib import metadata

from .atomic import write_json_atomic

_TRACKED = ("nextlong", "numpy", "pyarrow", "torch", "triton", "transformers", "usearch", "tokenizers")


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _TRACKED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def recorded_tokenizer(folder, settings: dict, *, where=None) -> str | None:
    """The tokenizer a `nextlong synthesize` manifest in `folder` names: the copy synthesize keeps in its
    output (`tokenizer_copy`, relative to the folder, so the folder can move to another machine), else
    the `tokenizer` it was made with: a name (cl100k_base). The manifest is as untrusted as the folder
    (SECURITY.md), so nothing outside the folder is read on its word: `tokenizer_copy` must be a regular
    file inside the folder (no absolute path, '..' or link out), and a `tokenizer` that is a path
    outside the folder (synthesize records the absolute path it was given; older manifests a path
    relative to where it ran) is refused in one line that says to pass it with --tokenizer. A missing
    copy falls back to `tokenizer` (a folder copied without its tokenizer/ subfolder). `where` names
    the manifest in errors."""
    from pathlib import Path

    from .errors import NextlongError
    from .corpus.tokenizer import _NAMED
    from .untrusted import inside, member, plain_name, show

    where = where or (Path(folder) / "manifest.json" if folder is not None else "manifest")
    copy = settings.get("tokenizer_copy")
    if copy is not None and folder is not None:
        rel = plain_name(copy, f"{where}: settings.tokenizer_copy", NextlongError, kind="data folder")
        if os.path.lexists(Path(folder) / rel):
            member(folder, str(rel), f"{where}: settings.tokenizer_copy", NextlongError, kind="data folder")
            return str(Path(folder) / rel)
    name = settings.get("tokenizer")
    if name is not None and not isinstance(name, str):
        raise NextlongError(f"{where}: settings.tokenizer must be a string, got {show(name)}")
    if name is None or name in _NAMED:
        return name
    if folder is not None and isinstance(name, str) and inside(folder, Path(folder) / name):
        rel = os.path.relpath((Path(folder) / name).resolve(), Path(folder).resolve())
        path, _ = member(folder, rel, f"{where}: settings.tokenizer", NextlongError, kind="data folder")
        return str(path)
    raise NextlongError(f"{where}: the data names its tokenizer by a path outside its folder "
                        f"({show(name, 200)}), which is not read on a data folder's word; if you trust that file, "
                        "pass it with --tokenizer PATH (or put a copy in the folder, as `nextlong synthesize` "
                        "does in tokenizer/)")


RUNNING = "running"  # statistics.status of a run's first manifest, until its last one replaces it


FAILED, INTERRUPTED = "failed", "interrupted"  # statistics.status of a run that an error or a signal ended


def error_line(exc: BaseException) -> str:
    """An error as the one bounded line a manifest records (and the other ranks of a run are told)."""
    from .untrusted import one_line

    return one_line(str(exc) or type(exc).__name__)[:500]


def ended_by(exc: BaseException) -> dict:
    """The statistics of a run that `exc` ended: INTERRUPTED for Ctrl-C or SIGTERM, else FAILED, with the error.
    A SIGTERM the CLI's handler took is named as such though Ray's ray.get turned it into a plain
    KeyboardInterrupt (errors.Terminated.received)."""
    from .errors import Terminated

    if type(exc) is KeyboardInterrupt and not str(exc) and Terminated.received:
        return {"status": INTERRUPTED, "error": "terminated (SIGTERM)"}
    return {"status": INTERRUPTED if isinstance(exc, KeyboardInterrupt) else FAILED, "error": error_line(exc)}


@contextlib.contextmanager
def failure_recorded(path):
    """Around a run that writes its "running" manifest at `path` before its work: if the run raises, that
    manifest then says FAILED (or INTERRUPTED, for Ctrl-C) with the error, so a run that failed is not taken
    for one still going on or killed. A manifest that does not say "running" (a finished run's, left by a
    run refused before it wrote its own) is left as it is."""
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(Exception):  # the original error is what the user must see
            manifest = read_manifest(path)
            if run_status(manifest) == RUNNING:
                write_manifest(path, command=manifest.get("command"), settings=manifest.get("settings") or {},
                               seed=manifest.get("seed"), statistics=ended_by(exc))
        raise


def read_manifest(path) -> dict:
    """A manifest as it stands, read as untrusted input (a regular file, never through a link or from a
    FIFO, bounded in size): {} when it is missing, unreadable or not a JSON object."""
    from .errors import NextlongError
    from .untrusted import read_json

    try:
        manifest = read_json(path, NextlongError, follow=False)
    except NextlongError:
        return {}
    return manifest if isinstance(manifest, dict) else {}


def another_commands_run(path, command: str) -> str | None:
    """How the manifest at `path` names the run of another command than `command` whose output it records ("a
    `nextlong synthesize` run", or "another command's run (...)" for a value that names no command), or None:
    no manifest, or one of `command`'s. An output of another command is refused, not written over."""
    import re

    from .untrusted import show

    other = read_manifest(path).get("command") if os.path.lexists(path) else None
    if other is None or other == command:
        return None
    if isinstance(other, str) and re.fullmatch(r"[a-z][a-z -]{0,30}", other):
        return f"a `nextlong {other}` run"
    return f"another command's run ({show(other, 40)})"


def run_status(manifest: dict) -> str | None:
    """`statistics.status`: RUNNING from a run's first manifest until its last; `train` ends with its own
    ("finished", "failed", ...), the other commands' last manifests carry none (None)."""
    stats = manifest.get("statistics")
    status = stats.get("status") if isinstance(stats, dict) else None
    return status if isinstance(status, str) else None


def write_running_manifest(path, *, command: str, settings: dict, seed: int | None = None) -> dict:
    """The manifest a run writes before its work: its settings, `statistics.status` "running". The run's
    last manifest replaces it; one still "running" is a run that was stopped (or is going on)."""
    return write_manifest(path, command=command, settings=settings, statistics={"status": RUNNING}, seed=seed)


@contextlib.contextmanager
def running_beside_output(path, *, output, command: str, settings: dict):
    """The manifest of a run whose output is one file (`chunk`, `tokenize`: OUT.manifest.json): "running" while
    the run works; the body calls the `finish(statistics)` it is given to write the finished one. The output is
    renamed into place only when complete, so a run that fails before that leaves the previous output as it
    was, and its manifest is put back too (renamed aside and back: a link stays a link, a file keeps its mode
    and times), or none if there was none. A run that fails after its output is in place, or is killed,
    leaves "running" (a killed one also the previous manifest under a hidden name, which the next run
    replaces)."""
    from pathlib import Path

    path = Path(path)
    backup = path.with_name(f".{path.name}.previous")

    def output_identity():
        try:
            st = os.stat(output)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def finish(statistics: dict) -> None:
        write_manifest(path, command=command, settings=settings, statistics=statistics)

    if path.is_dir() and not path.is_symlink():
        from .errors import NextlongError

        raise NextlongError(f"{path}: is a folder, where the run's manifest goes; move it away")
    other = another_commands_run(path, command)
    if other is not None:  # the file is another command's output (chunk over tokenize's)
        from .errors import NextlongError

        raise NextlongError(f"{output}: is the output of {other} ({path.name}); give `nextlong {command}` another "
                            "--out")
    output_before = output_identity()
    had = os.path.lexists(path)
    if had:
        os.replace(path, backup)
    try:
        write_running_manifest(path, command=command, settings=settings)
        yield finish
    except BaseException:
        with contextlib.suppress(OSError):
            if output_identity() != output_before:  # the new output is in place: the old record is not its
                if had:
                    os.unlink(backup)
            elif had:
                os.replace(backup, path)
            else:
                path.unlink()
        raise
    if had:
        with contextlib.suppress(OSError):
            os.unlink(backup)


def write_manifest(path, *, command: str, settings: dict, statistics: dict, seed: int | None = None) -> dict:
    manifest = {
        "command": command,
        "created_unix": time.time(),
        "seed": seed,
        "settings": settings,
        "statistics": statistics,
        "versions": package_versions(),
    }
    write_json_atomic(path, manifest)
    return manifest
