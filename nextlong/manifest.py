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


def write_running_manifest(path, *, command: str, settings: dict, seed: int | None = None) -> dict:
    """The manifest a run writes before its work: its settings, `statistics.status` "running". The run's
    last manifest replaces it; one still "running" is a run that was stopped (or is going on)."""
    return write_manifest(path, command=command, settings=settings, statistics={"status": RUNNING}, seed=seed)


@contextlib.contextmanager
def running_beside_output(path, *, command: str, settings: dict):
    """The "running" manifest of a run whose output is one file (`chunk`, `tokenize`: OUT.manifest.json). Its
    output is renamed into place only when complete, so a run that fails leaves the previous output as it
    was: its manifest is put back too (or none, if there was none). A killed run leaves "running"."""
    from pathlib import Path

    path = Path(path)
    before = None
    with contextlib.suppress(OSError):
        if path.is_file() and not path.is_symlink() and path.stat().st_size <= _RESTORED_BYTES:
            before = path.read_bytes()
    write_running_manifest(path, command=command, settings=settings)
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            if before is None:
                path.unlink()
            else:
                from .atomic import atomic_path

                with atomic_path(path) as tmp:
                    tmp.write_bytes(before)
        raise


_RESTORED_BYTES = 1 << 24  # a larger file beside the output is no manifest of ours: it is not kept


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
