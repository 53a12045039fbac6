"""The lexical embedder: hashed TF-IDF over words (and optionally word bigrams), projected to a dense
vector by a sparse random sign projection (numba), L2-normalised. No model: thousands of chunks per second
per core, for users who need speed over the semantic neighbours' quality (benchmarks/bench_embedding.py
reports what it costs); `fit(texts)` learns IDF weights, `save`/`load` keep them in a folder.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import EmbedderError, checked_texts
from ..untrusted import read_bytes, show
from .embedder import LEXICAL_EMBEDDER, _read_json

LEXICAL_STATE = "lexical_embedder.json"  # a saved lexical embedder's settings, beside lexical_idf.npy


_WORD = re.compile(r"[^\W_]+")


def require_numba() -> None:
    import importlib.util

    if importlib.util.find_spec("numba") is None:
        raise EmbedderError(f"the {LEXICAL_EMBEDDER} embedder needs the Python package 'numba', which is not "
                            "installed: pip install 'nextlong[ml]'")


def _numba_projection():
    require_numba()
    from numba import njit

    @njit(cache=True, nogil=True)
    def project(rows, feats, weights, n, dim, nnz, seed):
        out = np.zeros((n, dim), dtype=np.float32)
        scale = np.float32(1.0 / np.sqrt(nnz))
        for i in range(len(feats)):
            for j in range(nnz):
                # splitmix64 of (feature, slot, seed): position and sign without a stored table
                x = np.uint64(feats[i]) * np.uint64(nnz) + np.uint64(j) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
                x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
                x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
                x = x ^ (x >> np.uint64(31))
                pos = np.int64(x % np.uint64(dim))
                w = weights[i] * scale
                if x >> np.uint64(63):
                    out[rows[i], pos] += w
                else:
                    out[rows[i], pos] -= w
        for r in range(n):
            norm = np.float32(0.0)
            for c in range(dim):
                norm += out[r, c] * out[r, c]
            if norm > 0:
                inv = np.float32(1.0 / np.sqrt(norm))
                for c in range(dim):
                    out[r, c] *= inv
        return out

    return project


_PROJECT = None


def _numba_ascii_words():
    require_numba()
    from numba import njit

    @njit(cache=True, nogil=True)
    def ascii_words(buf, ends, fold, crc_table):
        """CRC-32 (zlib's) of every word of every text, in order, and each text's word count. `buf` holds
        the texts' bytes back to back, text i ending at ends[i]; `fold` maps a byte to its lower-case
        letter or digit, or 0 where it ends a word."""
        hashes = np.empty(len(buf) // 2 + len(ends), np.uint64)
        counts = np.zeros(len(ends), np.int64)
        n, start = 0, 0
        for t in range(len(ends)):
            crc, inword = np.uint32(0xFFFFFFFF), False
            for k in range(start, ends[t]):
                c = fold[buf[k]]
                if c:
                    crc = crc_table[(crc ^ c) & np.uint32(0xFF)] ^ (crc >> np.uint32(8))
                    inword = True
                elif inword:
                    hashes[n] = crc ^ np.uint32(0xFFFFFFFF)
                    n += 1
                    counts[t] += 1
                    crc, inword = np.uint32(0xFFFFFFFF), False
            if inword:
                hashes[n] = crc ^ np.uint32(0xFFFFFFFF)
                n += 1
                counts[t] += 1
            start = ends[t]
        return hashes[:n], counts

    return ascii_words


_ASCII_WORDS = None
# an ASCII byte as _WORD sees it after str.lower(): a letter (lower-cased) or digit, else 0 (a word ends)
_FOLD = np.array([ord(chr(b).lower()) if chr(b).isalnum() else 0 for b in range(128)] + [0] * 128, np.uint8)


def _crc_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1).astype(np.uint32)
    return table


_CRC_TABLE = _crc_table()


def _ascii_word_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(every word's zlib.crc32, each text's word count) of ASCII `texts`, words as _WORD finds them in
    the lower-cased text: one numba pass over the bytes instead of a regex and a dict look-up per word."""
    global _ASCII_WORDS
    if _ASCII_WORDS is None:
        _ASCII_WORDS = _numba_ascii_words()
    buf = np.frombuffer("".join(texts).encode("ascii"), np.uint8)
    ends = np.cumsum(np.fromiter(map(len, texts), np.int64, len(texts)))
    return _ASCII_WORDS(buf, ends, _FOLD, _CRC_TABLE)


def _sparse_sign_projection(rows, feats, weights, n, dim, nnz, seed) -> np.ndarray:
    """Each hashed feature adds +-weight/sqrt(nnz) to `nnz` pseudo-random coordinates; rows L2-normalised."""
    global _PROJECT
    if _PROJECT is None:
        _PROJECT = _numba_projection()
    return _PROJECT(rows.astype(np.int64), feats.astype(np.int64), weights.astype(np.float32),
                    int(n), int(dim), int(nnz), int(seed))


class _WordHashes(dict):
    """word -> process-independent 32-bit hash (Python's str hash is salted per process), memoised."""

    def __missing__(self, word: str) -> int:
        h = self[word] = zlib.crc32(word.encode("utf-8"))
        return h


class HashedLexicalEmbedder:
    """Hashed TF-IDF features (lower-cased words, optionally word bigrams; sublinear TF) projected to
    `dim` with a sparse random sign projection (each feature adds +-1 to `nnz` coordinates), L2-normalised.

    No model, thousands of 2 KB chunks per second per core. On Python-docs chunks its exact top-10
    holds 27% of MiniLM's top-10 at dim 512 (unprojected TF-IDF: 31%; random: 0.2%); bigrams lower that
    (15%), hence off by default. See benchmarks/bench_embedding.py. `fit(texts)` learns IDF weights from a corpus
    (df counts over hashed features); unfitted, every feature has weight 1. The projection is fixed by
    `seed`, so the same settings give the same vectors on every machine.
    """

    def __init__(self, dim: int = 512, *, buckets_log2: int = 20, nnz: int = 4, bigrams: bool = False,
                 seed: int = 0, idf: np.ndarray | None = None, num_docs: int = 0):
        if dim < 8:
            raise EmbedderError(f"lexical embedder dim must be >= 8, got {dim}")
        self.dim = int(dim)
        self.buckets_log2 = int(buckets_log2)
        self.nnz = int(nnz)
        self.bigrams = bool(bigrams)
        self.seed = int(seed)
        n = 1 << self.buckets_log2
        self.idf = np.ones(n, dtype=np.float32) if idf is None else np.asarray(idf, dtype=np.float32)
        if self.idf.shape != (n,):
            raise EmbedderError(f"idf has shape {self.idf.shape}, expected ({n},)")
        self.num_docs = int(num_docs)
        self._cache = _WordHashes()

    @property
    def name(self) -> str:
        """hashed-tfidf-d<dim>, plus -idf<crc of the IDF table> once fitted: two fits on different
        corpora give different vectors, so they must not pass for the same embedder."""
        base = f"{LEXICAL_EMBEDDER}-d{self.dim}" + ("-bigrams" if self.bigrams else "")
        if not self.num_docs:
            return base
        return f"{base}-idf{zlib.crc32(self.idf.tobytes()):08x}"

    def __repr__(self) -> str:
        return f"HashedLexicalEmbedder(dim={self.dim}, fitted_docs={self.num_docs})"

    def _hashed_words(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(row, word hash) for every word of every text, in order."""
        import importlib.util

        texts = list(texts)
        # numba is an optional dependency: without it, fit() and features() still work (by the regex)
        fast = importlib.util.find_spec("numba") is not None
        plain = [fast and text.isascii() for text in texts]
        counts, where = np.zeros(len(texts), np.int64), np.flatnonzero(plain)
        hashes = (_ascii_word_hashes([t for t, a in zip(texts, plain) if a]) if len(where)
                  else (np.empty(0, np.uint64), np.empty(0, np.int64)))
        if len(where) == len(texts):  # the usual case: every text ASCII, the words already in text order
            counts[:] = hashes[1]
            return np.repeat(np.arange(len(texts), dtype=np.int64), counts), hashes[0]
        cache = self._cache  # other texts: the regex (Unicode letters and digits), hashes memoised
        if len(cache) > 4_000_000:
            cache.clear()
        counts[where] = hashes[1]
        pieces = np.split(hashes[0], np.cumsum(hashes[1])[:-1])
        out, k = [], 0
        for i, (text, a) in enumerate(zip(texts, plain)):
            if a:
                out.append(pieces[k])
                k += 1
            else:
                out.append(np.fromiter(map(cache.__getitem__, _WORD.findall(text.lower())), np.uint64))
                counts[i] = len(out[-1])
        rows = np.repeat(np.arange(len(texts), dtype=np.int64), counts)
        return rows, (np.concatenate(out) if out else np.empty(0, np.uint64))

    def _batch_features(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Distinct (row, feature) pairs of a batch with their counts (term frequencies)."""
        rows, h = self._hashed_words(texts)
        if self.bigrams and len(h) > 1:
            same = rows[:-1] == rows[1:]  # bigrams never span two texts
            bi = h[:-1][same] * np.uint64(0x9E3779B1) + h[1:][same] * np.uint64(0x85EBCA77) + np.uint64(0x165667B1)
            bi ^= bi >> np.uint64(15)
            h = np.concatenate([h, bi])
            rows = np.concatenate([rows, rows[:-1][same]])
        feats = (h & np.uint64((1 << self.buckets_log2) - 1)).astype(np.int64)
        keys, counts = np.unique((rows << self.buckets_log2) | feats, return_counts=True)
        return keys >> self.buckets_log2, keys & ((1 << self.buckets_log2) - 1), counts

    def features(self, text: str) -> np.ndarray:
        """Distinct hashed feature ids of one text."""
        return self._batch_features([text])[1]

    def fit(self, texts, batch_size: int = 4096) -> "HashedLexicalEmbedder":
        """Learn IDF = ln((1+N)/(1+df)) + 1 over hashed features from an iterable of texts."""
        checked_texts(texts, "fit")
        df = np.zeros(1 << self.buckets_log2, dtype=np.int64)
        n = 0
        batch: list[str] = []

        def count(batch):
            np.add(df, np.bincount(self._batch_features(batch)[1], minlength=len(df)), out=df)

        for text in texts:  # streamed: the corpus never has to fit in memory
            batch.append(text)
            n += 1
            if len(batch) >= batch_size:
                count(batch)
                batch = []
        if batch:
            count(batch)
        self.idf = (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)
        self.num_docs = n
        return self

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        n = len(checked_texts(texts, "embed"))
        rows, feats, counts = self._batch_features(texts)
        weights = ((1.0 + np.log(counts)) * self.idf[feats]).astype(np.float32)
        return _sparse_sign_projection(rows, feats, weights, n, self.dim, self.nnz, self.seed)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the settings and IDF so `load_embedder(folder)` gives back the same embedder."""
        from ..atomic import atomic_path, write_json_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "lexical_idf.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, self.idf)
        write_json_atomic(folder / LEXICAL_STATE, {
            "kind": LEXICAL_EMBEDDER, "dim": self.dim, "buckets_log2": self.buckets_log2, "nnz": self.nnz,
            "bigrams": self.bigrams, "seed": self.seed, "num_docs": self.num_docs,
        })
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "HashedLexicalEmbedder":
        import io

        folder = Path(folder)
        where = folder / LEXICAL_STATE
        cfg = _read_json(where, dict)
        if not cfg or cfg.get("kind") != LEXICAL_EMBEDDER:
            raise EmbedderError(f"{where}: not a saved {LEXICAL_EMBEDDER} embedder")
        for key, lo, hi in (("dim", 8, 1 << 16), ("buckets_log2", 1, 30), ("nnz", 1, 1 << 10), ("seed", 0, 1 << 64),
                            ("num_docs", 0, 1 << 63)):
            if type(cfg.get(key)) is not int or not lo <= cfg[key] < hi:
                raise EmbedderError(f"{where}: {key}: expected an integer in {lo}..{hi - 1}, got {show(cfg.get(key))}")
        if type(cfg.get("bigrams")) is not bool:
            raise EmbedderError(f"{where}: bigrams: expected true or false, got {show(cfg.get('bigrams'))}")
        try:  # no pickle (allow_pickle is False), and no more bytes than the table takes
            data = read_bytes(folder / "lexical_idf.npy", EmbedderError, limit=(4 << cfg["buckets_log2"]) + 4096,
                              what="IDF table")
            idf = np.load(io.BytesIO(data), allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise EmbedderError(f"{folder / 'lexical_idf.npy'}: unreadable IDF array ({exc})") from exc
        if idf.dtype.kind != "f" or not np.isfinite(idf).all():
            raise EmbedderError(f"{folder / 'lexical_idf.npy'}: expected finite floats, got {idf.dtype}")
        return cls(cfg["dim"], buckets_log2=cfg["buckets_log2"], nnz=cfg["nnz"], bigrams=cfg["bigrams"],
                   seed=cfg["seed"], idf=idf, num_docs=cfg["num_docs"])
