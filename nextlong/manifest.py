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
