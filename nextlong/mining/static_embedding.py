"""A static embedder distilled from the shipped MiniLM: a vector per word piece, a text is their mean.

`model2vec` distils it offline: it runs every word piece of MiniLM's vocabulary through MiniLM once,
reduces the outputs with PCA (256 dimensions) and weights them by a Zipf estimate of token frequency
(SIF). Embedding a text is then a tokenizer call and a table lookup, no transformer, so it runs
orders of magnitude faster than MiniLM on a CPU, at some cost in quality (benchmarks/bench_embedding.py
measures both against MiniLM's own neighbours).

Tokenization is nearly all of the remaining cost, so BERT WordPiece runs natively (csrc/wordpiece.h,
threads, GIL released) for ASCII texts, fused with the table lookup and mean: no id list reaches
Python. It gives HF `tokenizers`' ids exactly. In a text with non-ASCII characters only the words
holding them go to HF `tokenizers` (the rest stays native), and a text holding an added token such as
"[PAD]" goes to HF whole, so the vectors never depend on which path ran.

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
import re
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import EmbedderError, checked_texts, missing_embedder_package

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


DISTILL_MODULES = ("model2vec", "skeletoken", "torch", "transformers")  # what model2vec.distill imports


def check_model2vec_installed() -> None:
    """The cheap check before any work: the packages distilling needs are installed (found, not imported:
    importing model2vec.distill costs ~4 s, paid when a distillation really runs, by _require_model2vec)."""
    import importlib.util

    for module in DISTILL_MODULES:
        if importlib.util.find_spec(module) is None:
            raise missing_embedder_package(f"the {STATIC_EMBEDDER} embedder", module)


def _require_model2vec():
    try:
        import model2vec  # noqa: F401
        from model2vec.distill import distill_from_model  # noqa: F401  (needs skeletoken, torch, transformers)
    except ImportError as exc:
        raise missing_embedder_package(f"the {STATIC_EMBEDDER} embedder", exc.name) from exc


def distill_static(source: Path, out: Path, pca_dims: int = DEFAULT_PCA_DIMS, device: str = "cpu") -> Path:
    """Distil the sentence-transformers / transformers folder `source` into a model2vec folder `out`,
    offline (the model and tokenizer are loaded from `source` only); written to a temporary folder
    beside `out`, then renamed."""
    _require_model2vec()
    from model2vec.distill import distill_from_model
    from transformers import AutoModel, AutoTokenizer

    from .embedder import _sentence_transformers_layout
    from ..model_folder import ModelFolderError, load_pretrained

    model_dir, _, _ = _sentence_transformers_layout(Path(source))
    try:  # an untrusted folder: its code and pickles stay unrun (nextlong.model_folder)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, use_fast=True,
                                                  trust_remote_code=False)
        model, _, _ = load_pretrained(AutoModel, model_dir)
    except (OSError, ValueError, ModelFolderError) as exc:
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
    from .embedder import DEFAULT_EMBEDDER, default_model_path

    default = default_model_path().resolve() if source is None else None
    source = Path(source or default).resolve()
    label = DEFAULT_EMBEDDER if source == default else source.name
    folder = Path(cache_dir or cache_root()) / "static" / f"{label}-pca{pca_dims}-{_source_fingerprint(source, pca_dims)}"
    if not (folder / "model.safetensors").is_file():
        distill_static(source, folder, pca_dims)
    return folder


def is_default_distillation(folder: Path) -> bool:
    """Whether `folder` is a cached distillation of the shipped MiniLM at the default settings, which
    load_embedder("static") rebuilds anywhere (an index records "static" for it, not a cache path)."""
    from .embedder import DEFAULT_EMBEDDER

    folder = Path(folder)
    return folder.parent.name == "static" and folder.name.startswith(f"{DEFAULT_EMBEDDER}-pca{DEFAULT_PCA_DIMS}-")


MAX_NATIVE_ADDED_TOKENS = 64  # the native check looks for each added token in each text (BERT has 5): more go to HF


def native_wordpiece(tokenizer):
    """A native ASCII WordPiece (nextlong._native.WordPiece) equivalent to this HF `tokenizers.Tokenizer`,
    or None when the tokenizer is not a plain BERT one (BertNormalizer with clean_text, BertPreTokenizer,
    WordPiece, no truncation, no normalized added tokens, at most MAX_NATIVE_ADDED_TOKENS added tokens); then
    everything goes through HF."""
    from .. import _native

    cfg = json.loads(tokenizer.to_str())
    model, norm, pre = cfg.get("model") or {}, cfg.get("normalizer") or {}, cfg.get("pre_tokenizer") or {}
    added = cfg.get("added_tokens") or []
    if (model.get("type") != "WordPiece" or norm.get("type") != "BertNormalizer" or not norm.get("clean_text")
            or pre.get("type") != "BertPreTokenizer" or cfg.get("truncation") is not None
            or any(a.get("normalized") for a in added) or len(added) > MAX_NATIVE_ADDED_TOKENS):
        return None
    vocab = model["vocab"]
    unk = vocab.get(model.get("unk_token", "[UNK]"))
    if unk is None:
        return None  # HF fails on an unknown word without an [UNK] entry: leave that to HF
    return _native.WordPiece(list(vocab.items()), unk, int(model.get("max_input_chars_per_word", 100)),
                             model.get("continuing_subword_prefix") or "##", bool(norm.get("lowercase")),
                             [a["content"] for a in added])


_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_ASCII_SPACE = re.compile(r"[ \t\n\r]")


def split_at_non_ascii_words(text: str) -> list[tuple[bool, str]]:
    """`text` cut into (is_ascii, piece) runs whose non-ASCII pieces are the whitespace-delimited words
    holding a non-ASCII character. Why this is exact: HF's BERT normaliser maps each character on its
    own (NFD reorders marks only between starters, and an ASCII space is one), so no word spans an
    ASCII space, tab or newline, and the ids of the text are the ids of its runs in order."""
    pieces, at = [], 0
    for m in _NON_ASCII.finditer(text):
        if m.start() < at:
            continue  # inside the word already cut out
        s = m.start()
        start = max(at, text.rfind(" ", at, s) + 1, text.rfind("\n", at, s) + 1, text.rfind("\t", at, s) + 1,
                    text.rfind("\r", at, s) + 1)
        end = _ASCII_SPACE.search(text, m.end())
        end = end.start() if end else len(text)
        if start > at:
            pieces.append((True, text[at:start]))
        pieces.append((False, text[start:end]))
        at = end
    if at < len(text) or not pieces:
        pieces.append((True, text[at:]))
    return pieces


def hybrid_ids(wordpiece, tokenizer, texts: Sequence[str], added: Sequence[str], threads: int) -> list[list[int]]:
    """HF's ids of each text (`tokenizer.encode_batch(texts, add_special_tokens=False)`), from the native
    WordPiece for the ASCII runs and from HF for the words holding non-ASCII characters; a text holding
    an added token goes to HF whole."""
    return [np.concatenate(parts).tolist() for parts in hybrid_id_arrays(wordpiece, tokenizer, texts, added, threads)]


def hybrid_id_arrays(wordpiece, tokenizer, texts: Sequence[str], added: Sequence[str],
                     threads: int) -> list[list[np.ndarray]]:
    """hybrid_ids as each text's id arrays in order (no Python int per id: the pooling takes them as is)."""
    plans, ascii_runs, other = [], [], []
    for text in texts:
        if any(a in text for a in added):
            plans.append([(False, len(other))])
            other.append(text)
            continue
        plan = []
        for is_ascii, piece in split_at_non_ascii_words(text):
            bucket = ascii_runs if is_ascii else other
            plan.append((is_ascii, len(bucket)))
            bucket.append(piece)
        plans.append(plan)
    native = wordpiece.encode_batch(ascii_runs, threads) if ascii_runs else []
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    hf = [np.asarray(e.ids, np.int64) for e in encode(other, add_special_tokens=False)] if other else []
    return [[native[i].astype(np.int64) if is_ascii else hf[i] for is_ascii, i in plan] for plan in plans]


class StaticEmbedder:
    """Mean of the static vectors of a text's word pieces (the whole text: no truncation; [UNK] pieces
    left out, as model2vec does), L2-normalised. Sums in float64 (model2vec stores float16 vectors); an
    empty text gives the zero vector. ASCII texts are tokenized and pooled natively on `threads` threads
    (default: the cores this process may use); `fallback_texts` counts the others, whose non-ASCII words
    (or whole text, with an added token) HF `tokenizers` reads; `native_texts` the rest."""

    def __init__(self, folder: str | os.PathLike, name: str | None = None, threads: int | None = None):
        import logging

        try:  # loading needs model2vec alone, not its distillation's imports (transformers: ~4 s)
            from model2vec import StaticModel
        except ImportError as exc:
            raise missing_embedder_package(f"the {STATIC_EMBEDDER} embedder", exc.name) from exc

        from .embedder import available_threads

        folder = Path(folder)
        log = logging.getLogger("model2vec")
        level = log.level
        log.setLevel(logging.ERROR)  # it warns that max_length=None overrides its config's 512: intended
        try:
            self.model = StaticModel.from_pretrained(str(folder), max_length=None, force_download=False)
        except Exception as exc:  # an untrusted folder breaks model2vec in many ways (KeyError, RecursionError, ...)
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise EmbedderError(f"{folder}: not a readable model2vec folder ({reason[:200]})") from exc
        finally:
            log.setLevel(level)
        if self.model.token_mapping is not None or self.model.weights is not None:
            raise EmbedderError(f"{folder}: vocabulary-quantized model2vec models are not supported")
        self.table = np.ascontiguousarray(self.model.embedding, np.float32)
        self.path = folder
        self.dim = int(self.table.shape[1])
        self.name = name or f"{STATIC_EMBEDDER}-{folder.name.split('-pca')[0]}-d{self.dim}"
        self.threads = int(threads or available_threads())
        unk = self.model.unk_token_id
        self.skip_id = -1 if unk is None else int(unk)
        self.wordpiece = native_wordpiece(self.model.tokenizer)
        self.added_tokens = [t.content for t in self.model.tokenizer.get_added_tokens_decoder().values()]
        self.native_texts = 0
        self.fallback_texts = 0

    def __repr__(self) -> str:
        return f"StaticEmbedder(name={self.name!r}, dim={self.dim}, native={self.wordpiece is not None})"

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """The ids each text is pooled from: model2vec's `tokenize` ([UNK] dropped), native where it can."""
        if self.wordpiece is None:
            return self.model.tokenize(list(texts))
        ids = hybrid_ids(self.wordpiece, self.model.tokenizer, list(texts), self.added_tokens, self.threads)
        return [[t for t in row if t != self.skip_id] for row in ids]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(checked_texts(texts, "embed"))
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self.wordpiece is None:
            self.fallback_texts += len(texts)
            return self._embed_with_hf(texts)
        out, left = self.wordpiece.embed_mean(texts, self.table, self.skip_id, self.threads)
        self.native_texts += len(texts) - len(left)
        self.fallback_texts += len(left)
        if left:
            out[left] = self._embed_with_hf([texts[i] for i in left])
        return out

    def _embed_with_hf(self, texts: list[str]) -> np.ndarray:
        """Texts the fused path left: their ASCII runs natively, their non-ASCII words (or the whole text
        when it holds an added token) through HF `tokenizers`; then the native pooling ([UNK] skipped)."""
        from .. import _native

        if self.wordpiece is None:
            ids = self.model.tokenize(texts)
            offsets = np.zeros(len(ids) + 1, np.int64)
            np.cumsum([len(x) for x in ids], out=offsets[1:])
            flat = np.fromiter((t for row in ids for t in row), np.int64, count=int(offsets[-1]))
        else:
            parts = hybrid_id_arrays(self.wordpiece, self.model.tokenizer, texts, self.added_tokens, self.threads)
            offsets = np.zeros(len(parts) + 1, np.int64)
            np.cumsum([sum(len(a) for a in p) for p in parts], out=offsets[1:])
            flat = np.concatenate([a for p in parts for a in p]) if offsets[-1] else np.zeros(0, np.int64)
        return _native.mean_pool_ids(self.table, flat, offsets, self.skip_id, self.threads)


def load_static_embedder(source: str | os.PathLike | None = None, *, pca_dims: int = DEFAULT_PCA_DIMS,
                         cache_dir: str | os.PathLike | None = None, threads: int | None = None) -> StaticEmbedder:
    """The static embedder distilled from `source` (default: the shipped MiniLM), cached."""
    folder = static_model_dir(Path(source) if source else None, pca_dims, Path(cache_dir) if cache_dir else None)
    return StaticEmbedder(folder, threads=threads)
