"""A static embedder distilled from the shipped MiniLM: a vector per word piece, a text is their mean.

`model2vec` distils it offline: it runs every word piece of MiniLM's vocabulary through MiniLM once,
reduces the outputs with PCA (256 dimensions) and weights them by a Zipf estimate of token frequency
(SIF). Embedding a text is then a tokenizer call and a table lookup, no transformer, so it runs
orders of magnitude faster than MiniLM on a CPU, at some cost in quality (benchmarks/bench_embedding.py
measures both against MiniLM's own neighbours).

Distilling takes minutes on a CPU, so the result is cached in a user cache folder and reused:
$XDG_CACHE_HOME/nextlong/static/ (default ~/.cache/nextlong/static/), one folder per source model
and settings, written under a temporary name and renamed when complete (two processes that distil
at once both succeed; one folder wins). `NEXTLONG_CACHE_DIR` overrides the cache root.

    load_embedder("static")       # distils on first use, then loads from the cache
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import EmbedderError

STATIC_EMBEDDER = "static"
DEFAULT_PCA_DIMS = 256


def cache_root() -> Path:
    """NEXTLONG_CACHE_DIR, else $XDG_CACHE_HOME/nextlong, else ~/.cache/nextlong."""
    if os.environ.get("NEXTLONG_CACHE_DIR"):
        return Path(os.environ["NEXTLONG_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "nextlong"


def _source_fingerprint(source: Path, pca_dims: int) -> str:
    """Identity of a distillation: the source model's files (name, size, mtime) and the settings."""
    import model2vec

    files = sorted((str(p.relative_to(source)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in source.rglob("*") if p.is_file())
    blob = json.dumps({"files": files, "pca_dims": pca_dims, "model2vec": model2vec.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _require_model2vec():
    try:
        import model2vec  # noqa: F401
        from model2vec.distill import distill_from_model  # noqa: F401  (needs skeletoken, torch, transformers)
    except ImportError as exc:
        raise EmbedderError(f"the {STATIC_EMBEDDER} embedder needs the Python package {exc.name!r}, which is not "
                            "installed: pip install 'nextlong[ml]' (pin torch with -c constraints.txt)") from exc


def distill_static(source: Path, out: Path, pca_dims: int = DEFAULT_PCA_DIMS, device: str = "cpu") -> Path:
    """Distil the sentence-transformers / transformers folder `source` into a model2vec folder `out`,
    offline (the model and tokenizer are loaded from `source` only); written to a temporary folder
    beside `out`, then renamed."""
    _require_model2vec()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from model2vec.distill import distill_from_model
    from transformers import AutoModel, AutoTokenizer

    from .embedding import _sentence_transformers_layout

    model_dir, _, _ = _sentence_transformers_layout(Path(source))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, use_fast=True)
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise EmbedderError(f"{model_dir}: cannot load a transformers encoder to distil ({exc})") from exc
    vocab = tokenizer.vocab_size
    static = distill_from_model(model=model, tokenizer=tokenizer, device=device,
                                pca_dims=min(pca_dims, model.config.hidden_size, vocab))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        static.save_pretrained(str(tmp))
        (tmp / "nextlong_source.json").write_text(json.dumps({"source": str(source), "pca_dims": pca_dims}))
        try:
            tmp.rename(out)
        except OSError:
            if not (out / "model.safetensors").is_file():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def static_model_dir(source: Path | None = None, pca_dims: int = DEFAULT_PCA_DIMS,
                     cache_dir: Path | None = None) -> Path:
    """The cached distillation of `source` (default: the shipped MiniLM), made now if missing."""
    from .embedding import DEFAULT_EMBEDDER, default_model_path

    default = default_model_path().resolve() if source is None else None
    source = Path(source or default).resolve()
    label = DEFAULT_EMBEDDER if source == default else source.name
    _require_model2vec()
    folder = Path(cache_dir or cache_root()) / "static" / f"{label}-pca{pca_dims}-{_source_fingerprint(source, pca_dims)}"
    if not (folder / "model.safetensors").is_file():
        distill_static(source, folder, pca_dims)
    return folder


class StaticEmbedder:
    """Mean of the static vectors of a text's word pieces (the whole text: no truncation), L2-normalised.
    Sums in float64 (model2vec stores float16 vectors); an empty text gives the zero vector."""

    def __init__(self, folder: str | os.PathLike, name: str | None = None):
        _require_model2vec()
        from model2vec import StaticModel

        import logging

        folder = Path(folder)
        log = logging.getLogger("model2vec")
        level = log.level
        log.setLevel(logging.ERROR)  # it warns that max_length=None overrides its config's 512: intended
        try:
            self.model = StaticModel.from_pretrained(str(folder), max_length=None, force_download=False)
        except (OSError, ValueError) as exc:
            raise EmbedderError(f"{folder}: not a readable model2vec folder ({exc})") from exc
        finally:
            log.setLevel(level)
        if self.model.token_mapping is not None or self.model.weights is not None:
            raise EmbedderError(f"{folder}: vocabulary-quantized model2vec models are not supported")
        self.table = np.asarray(self.model.embedding, np.float32)
        self.path = folder
        self.dim = int(self.table.shape[1])
        self.name = name or f"{STATIC_EMBEDDER}-{folder.name.split('-pca')[0]}-d{self.dim}"

    def __repr__(self) -> str:
        return f"StaticEmbedder(name={self.name!r}, dim={self.dim})"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        ids = self.model.tokenize(list(texts))  # fast tokenizer, batch over threads, no truncation
        lengths = np.fromiter((len(x) for x in ids), np.int64, count=len(ids))
        offsets = np.zeros(len(ids) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((t for row in ids for t in row), np.int64, count=int(offsets[-1]))
        return _mean_rows(self.table, flat, offsets)


_MEAN_ROWS = None


def _mean_rows(table: np.ndarray, flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Row i: the L2-normalised sum of table[flat[offsets[i]:offsets[i+1]]] (zero when empty).
    A numba loop: no (pieces x dim) temporary, one pass over the pieces."""
    global _MEAN_ROWS
    if _MEAN_ROWS is None:
        from numba import njit

        @njit(cache=True, nogil=True)
        def mean_rows(table, flat, offsets):
            n, dim = offsets.shape[0] - 1, table.shape[1]
            out = np.zeros((n, dim), np.float32)
            acc = np.zeros(dim, np.float64)  # float64: a long text sums thousands of rows
            for i in range(n):
                acc[:] = 0.0
                for p in range(offsets[i], offsets[i + 1]):
                    row = table[flat[p]]
                    for c in range(dim):
                        acc[c] += row[c]
                norm = 0.0
                for c in range(dim):
                    norm += acc[c] * acc[c]
                if norm > 0:
                    inv = 1.0 / np.sqrt(norm)
                    for c in range(dim):
                        out[i, c] = acc[c] * inv
            return out

        _MEAN_ROWS = mean_rows
    return _MEAN_ROWS(table, flat, offsets)


def load_static_embedder(source: str | os.PathLike | None = None, *, pca_dims: int = DEFAULT_PCA_DIMS,
                         cache_dir: str | os.PathLike | None = None) -> StaticEmbedder:
    """The static embedder distilled from `source` (default: the shipped MiniLM), cached."""
    folder = static_model_dir(Path(source) if source else None, pca_dims, Path(cache_dir) if cache_dir else None)
    return StaticEmbedder(folder)
