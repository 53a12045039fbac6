"""Every run writes a manifest: its settings, seed, versions and statistics, so results can be traced."""

from __future__ import annotations

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


def recorded_tokenizer(folder, settings: dict) -> str | None:
    """The tokenizer a `nextlong synthesize` manifest in `folder` names: the copy synthesize keeps in its
    output (`tokenizer_copy`, relative to the folder, so the folder can move to another machine), else
    the `tokenizer` it was made with: a name (cl100k_base) or an absolute path (a path relative to the
    working directory in manifests written before the copy)."""
    from pathlib import Path

    copy = settings.get("tokenizer_copy")
    if copy and folder is not None and (Path(folder) / copy).is_file():
        return str(Path(folder) / copy)
    return settings.get("tokenizer")


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
