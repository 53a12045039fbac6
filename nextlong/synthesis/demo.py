"""The embedded demo corpus: docstrings of the running interpreter's standard library.

Available on every machine with Python, no download. One document per module: its module
docstring, then every class and function docstring in source order, each under its qualified name.
Modules are taken in sorted path order (tests, idlelib, tkinter demos and site-packages left out),
so the corpus is the same on every run of the same Python.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import sysconfig
import warnings
from pathlib import Path

from ..atomic import atomic_path

DEMO_TARGET_LENGTH = 8192
DEMO_NUM_SAMPLES = 8
_SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "turtledemo",
               "lib2to3", "ensurepip", "venv"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def module_document(source: str, name: str) -> str | None:
    """All docstrings of one module's source, in source order; None when it has none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = ast.parse(source)
    pieces: list[str] = []

    def visit(node, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = f"{prefix}.{child.name}"
                doc = ast.get_docstring(child)
                if doc:
                    pieces.append(f"{qual}:\n{inspect.cleandoc(doc)}")
                visit(child, qual)

    doc = ast.get_docstring(tree)
    if doc:
        pieces.append(f"{name}:\n{inspect.cleandoc(doc)}")
    visit(tree, name)
    return "\n\n".join(pieces) if pieces else None


def module_paths(root: Path) -> list[Path]:
    """The .py files under `root` outside the folders _SKIP_PARTS names, sorted as `sorted(root.rglob("*.py"))`
    sorts them. Those folders are never entered: a walk of the whole tree listed 13,353 files to keep 575
    (site-packages alone held 11,563), a sixth of the demo corpus's time, paid by every `--demo` run."""
    found = []
    for folder, dirs, files in os.walk(root):  # like rglob, a symlinked folder is not entered
        dirs[:] = [d for d in dirs if d not in _SKIP_PARTS]
        found.extend(Path(folder, name) for name in files if name.endswith(".py"))
    return sorted(found)


def iter_stdlib_documents(root: Path | None = None, max_bytes: int | None = None):
    """(module name, text) for every stdlib module with docstrings, sorted by path."""
    root = root or stdlib_root()
    total = 0
    for path in module_paths(root):
        try:
            text = module_document(path.read_text(encoding="utf-8"), _module_name(root, path))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        if not text:
            continue
        yield _module_name(root, path), text
        total += len(text.encode())
        if max_bytes is not None and total >= max_bytes:
            return


def write_demo_corpus(path, max_bytes: int | None = None) -> Path:
    """Write the demo corpus as JSONL (fields `id`, `text`); rewritten only if its content changed."""
    path = Path(path)
    lines = [json.dumps({"id": name, "text": text}, ensure_ascii=False)
             for name, text in iter_stdlib_documents(max_bytes=max_bytes)]
    content = "\n".join(lines) + "\n"
    if path.exists() and path.read_text(encoding="utf-8") == content:
        return path
    with atomic_path(path) as tmp:
        tmp.write_text(content, encoding="utf-8")
    return path
