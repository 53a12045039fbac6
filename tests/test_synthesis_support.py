"""Shared helpers for the synthesis tests (no tests here): real text, a tokenizer, a chunk store."""

from __future__ import annotations

import base64
import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from nextlong.synthesis.demo import iter_stdlib_documents

PY_DOCS = Path("/usr/share/doc/python3.11/html/_sources")


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


HAS_TOKENIZER = has_module("nextlong.tokenizer")
needs_tokenizer = pytest.mark.skipif(not HAS_TOKENIZER, reason="nextlong.tokenizer (issue 3) not built yet")


class TiktokenCl100k:
    """cl100k_base from bpe-openai's rank file through tiktoken (the reference BPE), offline."""

    name = "cl100k_base(tiktoken)"

    def __init__(self):
        import bpe_openai
        import tiktoken

        path = Path(bpe_openai.__file__).parent / "data" / "cl100k_base.tiktoken.gz"
        ranks = {}
        for line in gzip.open(path, "rt").read().splitlines():
            if line:
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
        pat = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
        self.enc = tiktoken.Encoding("cl100k_test", pat_str=pat, mergeable_ranks=ranks, special_tokens={})
        self.fingerprint = "tiktoken-cl100k"

    def encode_ordinary(self, text):
        return np.asarray(self.enc.encode_ordinary(text), np.uint32)

    def encode_ordinary_batch(self, texts, num_threads=None):
        return [np.asarray(x, np.uint32) for x in self.enc.encode_ordinary_batch(list(texts))]

    def decode(self, ids):
        return self.enc.decode([int(i) for i in ids])


@lru_cache(maxsize=1)
def get_tokenizer():
    if HAS_TOKENIZER:
        from nextlong.tokenizer import load_tokenizer

        return load_tokenizer(None)
    return TiktokenCl100k()


@lru_cache(maxsize=4)
def stdlib_texts(max_bytes: int = 400_000) -> tuple:
    return tuple(iter_stdlib_documents(max_bytes=max_bytes))


def chunk_table(docs, chunk_size: int = 512, tokenizer=None) -> pa.Table:
    """Chunk (id, text) documents with the project's chunker and tokenize each chunk on its own."""
    from nextlong.chunking import chunk_documents

    tokenizer = tokenizer or get_tokenizer()
    batch = pa.table({
        "doc_index": pa.array(np.arange(len(docs), dtype=np.int64)),
        "doc_id": pa.array([d for d, _ in docs]),
        "text": pa.array([t for _, t in docs]),
    })
    table = chunk_documents(batch, max_len=chunk_size, unit="chars")
    ids = tokenizer.encode_ordinary_batch(table.column("text").to_pylist())
    lengths = np.array([len(x) for x in ids], np.int32)
    offsets = np.zeros(len(ids) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(ids).astype(np.uint32) if ids else np.zeros(0, np.uint32)
    col = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.uint32()))
    return table.set_column(table.schema.get_field_index("num_tokens"), "num_tokens", pa.array(lengths)).append_column("input_ids", col)


def lexical_vectors(texts, dim: int = 256) -> np.ndarray:
    """The project's lexical embedder when available, else hashed bag of words (both L2-normalised)."""
    if has_module("nextlong.embedding"):
        from nextlong.embedding import load_embedder

        return np.asarray(load_embedder(f"hashed-tfidf:{dim}").embed(list(texts)), np.float32)
    out = np.zeros((len(texts), dim), np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().split():
            out[i, hash(w) % dim] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def write_jsonl(path: Path, docs) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for doc_id, text in docs:
            f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    return path
