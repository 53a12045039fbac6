"""Run code as if only one `pip install -e ".[EXTRAS]"` had been made: the README's promise that every
command and snippet works after the install line it gives for it.

The test machine has every extra installed, so a missing dependency would never show here. Instead a
child process hides every installed distribution outside the requirement closure of those extras
(from our own package metadata, followed through each dependency's metadata): importing it fails as
if it were absent, and transformers-style availability checks (`importlib.util.find_spec`,
`importlib.metadata.version`) report it missing too.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(extras: set[str], package: str = "nextlong") -> set[str]:
    """Canonical names of every distribution `pip install package[extras]` brings (installed ones)."""
    from packaging.requirements import Requirement

    seen: dict[str, set[str]] = {}
    todo = [(package, set(extras))]
    while todo:
        name, wanted = todo.pop()
        key = canonical(name)
        if key in seen and wanted <= seen[key]:
            continue
        seen[key] = seen.get(key, set()) | wanted
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (seen[key] or {""})):
                continue
            todo.append((req.name, set(req.extras)))
    return set(seen)


def hidden_modules(extras: set[str]) -> list[str]:
    """Top-level import names provided only by installed distributions outside the closure."""
    return list(_hidden_modules(frozenset(extras)))


@functools.lru_cache(maxsize=None)
def _hidden_modules(extras: frozenset[str]) -> tuple[str, ...]:
    """hidden_modules, read from the installed metadata once per set of extras (about a second each time, and
    tests/test_readme.py runs some 25 steps under two sets): what is installed does not change during a run."""
    allowed = requirement_closure(set(extras))
    hidden = {top for top, dists in md.packages_distributions().items()
              if not any(canonical(d) in allowed for d in dists)}
    return tuple(sorted(hidden - set(sys.stdlib_module_names) - {"nextlong", "_distutils_hack"}))


# Runs first in the child: hides the modules named in NEXTLONG_HIDDEN_MODULES.
_PRELUDE = r'''
import importlib.abc, importlib.metadata as _md, importlib.util as _iu, json, os, sys
_hidden = set(json.loads(os.environ["NEXTLONG_HIDDEN_MODULES"]))
_tops = _md.packages_distributions()
_dists = {d.lower().replace("_", "-") for top in _hidden for d in _tops.get(top, [])}
class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _hidden:
            raise ModuleNotFoundError(f"No module named {name!r} (not in this install)", name=name)
sys.meta_path.insert(0, _Hide())
_find_spec, _distribution = _iu.find_spec, _md.distribution
def _find(name, package=None):
    return None if name.partition(".")[0] in _hidden else _find_spec(name, package)
def _dist(name):
    if name.lower().replace("_", "-") in _dists:
        raise _md.PackageNotFoundError(name)
    return _distribution(name)
_iu.find_spec, _md.distribution = _find, _dist
_md.version = lambda name: _dist(name).version
'''


def run_with_extras(extras: set[str], code: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that sees only what `pip install -e .[extras]` installs."""
    env = dict(os.environ, NEXTLONG_HIDDEN_MODULES=json.dumps(hidden_modules(extras)),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", _PRELUDE + "\n" + code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
