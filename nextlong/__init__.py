"""nextlong: long-context training data synthesis (NExtLong) and memory-lean training kernels.

The public names are imported lazily so that `import nextlong` stays cheap (no torch, no
transformers) for users who only tokenize or chunk.
"""

from __future__ import annotations

import importlib
import importlib.util

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "Tokenizer": "nextlong.corpus.tokenizer",
    "load_tokenizer": "nextlong.corpus.tokenizer",
    "read_corpus": "nextlong.corpus.reader",
    "Document": "nextlong.corpus.reader",
    "CorpusError": "nextlong.errors",
    "chunk_documents": "nextlong.corpus.chunking",
    "MetaChunk": "nextlong.corpus.chunking",
    "Embedder": "nextlong.mining.embedding",
    "load_embedder": "nextlong.mining.embedding",
    "ChunkIndex": "nextlong.mining.index",
    "build_index_from_chunks": "nextlong.mining.index_job",
    "embed_chunks": "nextlong.mining.embed_store",
    "synthesize": "nextlong.synthesis",
    "acer": "nextlong.synthesis.acer",
    "BM25Index": "nextlong.mining.bm25",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    return lazy_attribute(__name__, globals(), _LAZY, name)


def lazy_attribute(package: str, namespace: dict, lazy: dict, name: str):
    """A package's `__getattr__`: public `name` from the module `lazy` names for it, imported on first use and kept
    in `namespace` (the package's globals) so the next use is a plain lookup; else a sub-package or module of
    `package` (nextlong.corpus, nextlong.eval.tasks, ...), imported when first used. Keeps a package's own import
    cheap (nextlong.eval too)."""
    module = lazy.get(name)
    if module is None:
        if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    namespace[name] = value
    return value


def __dir__():
    return __all__
