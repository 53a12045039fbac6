"""BM25 retrieval over chunk texts: a term-major (CSR) matrix of precomputed Okapi BM25 weights.

Scoring is Lucene's BM25 (Lucene >= 8, also `bm25s`'s default "lucene" method), with exact document
lengths (Lucene rounds them to one byte):

    score(q, d) = sum over query terms t (repeats count) of  idf(t) * tf / (tf + k1 * (1 - b + b * dl / avgdl))
    idf(t)      = ln(1 + (N - df + 0.5) / (df + 0.5))

tf is the term's count in chunk d, dl the chunk's term count, avgdl their mean, N the number of chunks
and df the number holding t. This idf is never negative (Robertson's ln((N - df + 0.5)/(df + 0.5)) is,
for terms in over half the chunks, which then lower a chunk's score for matching); Lucene dropped the
classic (k1 + 1) factor, which scales every score alike and so changes no ranking. Defaults k1 = 1.2,
b = 0.75 are Lucene's. Since the weight of a (term, chunk) pair depends only on the finished corpus,
it is computed once at build time; a search only adds up weights.

Terms are either `"words"` (default): lowercased `\\w+` runs, optionally without English stopwords,
the usual BM25 setting; or `"tokens"`: the ids of a nextlong BPE tokenizer, subword pieces and
case-sensitive, which rank question-like queries worse and build slower (docs/design.md, "BM25", has
the numbers).

Building streams the texts in batches: memory is the finished matrix (8 bytes per distinct
(term, chunk) pair) plus 6 bytes per pair while building, and the vocabulary; never a Python object
per posting. Search runs in C++ (`nextlong._native.bm25_search`) on the native thread pool, each query
on one thread in a fixed order, so results do not depend on the thread count. Rows are numbered in build order: built from a
chunk table, a row number is the chunk_id.

An index folder holds `bm25.json` (settings, shapes, each array file's size and CRC32; written last,
so its presence marks a complete save) and one `.npy` per array; loading never unpickles.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import re
import stat
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .. import checked_parquet
from ..corpus.reader import parquet_batches
from ..atomic import atomic_path, file_crc32, write_json_atomic
from ..errors import IndexFileError, NextlongError, UsageError, checked_int, checked_texts
from ..untrusted import load_array, recorded_crc

__all__ = ["DEFAULT_B", "DEFAULT_K1", "ENGLISH_STOPWORDS", "BM25Index", "word_terms"]

DEFAULT_K1 = 1.2
DEFAULT_B = 0.75
# Lucene's EnglishAnalyzer stop set (33 words): small and well known.
ENGLISH_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there "
    "these they this to was will with".split())
_WORD = re.compile(r"\w+")
_BATCH = 4096  # texts per build batch
HEADER_FILE = "bm25.json"
FORMAT_VERSION = 1
_FORMAT_NAME = "nextlong-bm25"
# file -> (dtype, shape in terms of the header's counts)
_ARRAYS = {
    "indptr": ("<i8", lambda h: (h["num_terms"] + 1,)),
    "postings": ("<i4", lambda h: (h["num_postings"],)),
    "weights": ("<f4", lambda h: (h["num_postings"],)),
    "doc_lengths": ("<i4", lambda h: (h["num_docs"],)),
    "vocab_bytes": ("|u1", lambda h: (h["vocab_bytes"],)),
    "vocab_offsets": ("<i8", lambda h: (h["num_terms"] + 1,)),
    "doc_index": ("<i8", lambda h: (h["num_docs"],)),
}


def word_terms(text: str, stopwords: frozenset[str] | None = None) -> list[str]:
    """The "words" terms of a text: lowercased `\\w+` runs (Unicode), stopwords left out."""
    words = _WORD.findall(text.lower())
    if stopwords:
        words = [w for w in words if w not in stopwords]
    return words


def _stopword_set(stopwords) -> frozenset[str] | None:
    if stopwords is None or stopwords is False:
        return None
    if stopwords == "en":
        return ENGLISH_STOPWORDS
    if isinstance(stopwords, str):
        raise UsageError(f"stopwords must be None, 'en' or a collection of words, got {stopwords!r}")
    return frozenset(w.lower() for w in stopwords)


def _batches(items: Iterable, size: int):
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


class BM25Index:
    """Okapi BM25 (Lucene's variant, see the module docstring) over a list of texts.

    Build with `BM25Index.build(texts)` or `BM25Index.from_chunks(chunk_table)`; search a batch of
    queries with `search`; `save(folder)` / `BM25Index.load(folder)`.
    """

    def __init__(self, *, indptr, postings, weights, doc_lengths, k1: float, b: float, terms: str,
                 vocab: list[str] | None = None, stopwords: frozenset[str] | None = None,
                 tokenizer=None, tokenizer_name: str | None = None, tokenizer_fingerprint: str | None = None,
                 doc_index=None):
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self.postings = np.ascontiguousarray(postings, dtype=np.int32)
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)
        self.doc_lengths = np.ascontiguousarray(doc_lengths, dtype=np.int32)
        self.doc_index = None if doc_index is None else np.ascontiguousarray(doc_index, dtype=np.int64)
        self.k1, self.b, self.terms = float(k1), float(b), terms
        self.stopwords = stopwords
        self._vocab_list = vocab
        self._vocab: dict[str, int] | None = None
        self.tokenizer = tokenizer
        self.tokenizer_name = tokenizer_name
        self.tokenizer_fingerprint = tokenizer_fingerprint
        self._doc_order = None  # rows sorted by doc_index, for exclude_docs

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def build(cls, texts: Iterable[str] | Iterable[list[str]], *, k1: float = DEFAULT_K1, b: float = DEFAULT_B,
              terms: str = "words", stopwords=None, tokenizer=None, num_threads: int = 0,
              doc_index: Iterable[int] | None = None, progress: bool = False,
              batch_size: int = _BATCH) -> BM25Index:
        """Index `texts` (any iterable, read once in batches of `batch_size`).

        terms="words": each text is lowercased and split into `\\w+` runs; a text may also be given
        already split (a list of terms, used as they are; queries then too). `stopwords`: None (keep
        all), "en" (Lucene's English set) or a collection. terms="tokens": ids of `tokenizer` (a
        nextlong Tokenizer or a spec for `load_tokenizer`; None: cl100k_base), encoded on `num_threads`
        native threads (0: all cores). `doc_index` (one int per text) enables `exclude_docs`.
        """
        checked_texts(texts, "BM25Index.build")
        k1, b = float(k1), float(b)
        if not (k1 >= 0 and np.isfinite(k1)) or not (0 <= b <= 1):
            raise UsageError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        if terms not in ("words", "tokens"):
            raise UsageError(f"terms must be 'words' or 'tokens', got {terms!r}")
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        stop = _stopword_set(stopwords)
        tok = None
        if terms == "tokens":
            if stop:
                raise UsageError("stopwords apply to terms='words' only")
            from ..corpus.tokenizer import load_tokenizer

            tok = load_tokenizer(tokenizer)
        elif tokenizer is not None:
            raise UsageError("a tokenizer is used with terms='tokens' only")
        threads = _threads(num_threads)
        started = time.perf_counter()

        vocab: dict[str, int] = {}
        row_terms, row_tfs, row_nnz, lengths = [], [], [], []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(desc="bm25 index", unit=" texts", dynamic_ncols=True)
        try:  # an error or Ctrl-C closes the bar: an open one stays on screen and shifts every later bar down a line
            for batch in _batches(texts, batch_size):
                if tok is not None:
                    t_ids, tfs, nnz, dl = _count_token_batch(tok, batch, threads)
                else:
                    t_ids, tfs, nnz, dl = _count_word_batch(batch, vocab, stop)
                row_terms.append(t_ids)
                row_tfs.append(tfs)
                row_nnz.append(nnz)
                lengths.append(dl)
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        doc_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        num_docs = len(doc_lengths)
        if num_docs >= 2**31 - 1:
            raise UsageError(f"a BM25 index holds at most 2**31 - 2 texts, got {num_docs:,}")
        if doc_lengths.size and doc_lengths.max() >= 2**31:
            raise UsageError("a text has 2**31 or more terms")
        if tok is not None:
            num_terms = int(max((int(t.max()) + 1 for t in row_terms if t.size), default=0))
        else:
            num_terms = len(vocab)
        indptr, postings, weights = _term_major(row_terms, row_tfs, row_nnz, doc_lengths, num_terms, k1, b)
        if doc_index is not None:
            doc_index = np.fromiter(doc_index, np.int64) if not isinstance(doc_index, np.ndarray) else doc_index
            if len(doc_index) != num_docs:
                raise UsageError(f"doc_index has {len(doc_index):,} entries for {num_docs:,} texts")
        index = cls(indptr=indptr, postings=postings, weights=weights, doc_lengths=doc_lengths.astype(np.int32),
                    k1=k1, b=b, terms=terms, stopwords=stop,
                    tokenizer=tok, tokenizer_name=None if tok is None else tok.name,
                    tokenizer_fingerprint=None if tok is None else tok.fingerprint, doc_index=doc_index)
        if tok is None:
            index._vocab = vocab  # insertion order is id order: save writes list(vocab)
        index.build_seconds = time.perf_counter() - started
        return index

    @classmethod
    def from_chunks(cls, chunks, *, text_column: str = "text", **options) -> BM25Index:
        """Index a chunk table (`nextlong chunk` output: a Parquet path or a pyarrow Table), read in
        record batches. Row i must have chunk_id i (the chunk table's rule), so search results are
        chunk ids; `doc_index` is kept for `exclude_docs`."""
        import pyarrow as pa

        if isinstance(chunks, pa.Table):
            where = "chunk table"
            names = chunks.schema.names
            batches = chunks.select([c for c in ("chunk_id", "doc_index", text_column) if c in names]).to_batches(_BATCH)
        else:
            where = str(chunks)
            try:
                pf = checked_parquet.open_file(chunks)
            except (OSError, pa.ArrowException) as exc:
                raise NextlongError(f"{where}: not a readable Parquet chunk table ({exc})") from exc
            names = pf.schema_arrow.names
            batches = parquet_batches(chunks, pf, batch_size=_BATCH,
                                      columns=[c for c in ("chunk_id", "doc_index", text_column) if c in names])
        if text_column not in names:
            raise NextlongError(f"{where}: no {text_column!r} column (columns: {', '.join(names)})")
        docs: list[np.ndarray] = []

        def texts():
            row = 0
            for rb in batches:
                if "chunk_id" in rb.schema.names:
                    ids = rb.column("chunk_id").to_numpy(zero_copy_only=False)
                    if not np.array_equal(ids, np.arange(row, row + len(ids))):
                        bad = int(np.flatnonzero(ids != np.arange(row, row + len(ids)))[0])
                        raise NextlongError(f"{where}: row {row + bad} has chunk_id {ids[bad]}; "
                                            "a chunk table numbers its rows 0, 1, 2, ...")
                if "doc_index" in rb.schema.names:
                    docs.append(rb.column("doc_index").to_numpy(zero_copy_only=False).astype(np.int64))
                row += rb.num_rows
                yield from rb.column(text_column).to_pylist()

        index = cls.build(texts(), **options)
        if docs and sum(len(d) for d in docs) == len(index):
            index.doc_index = np.concatenate(docs)
        return index

    # -- properties -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.doc_lengths)

    def __repr__(self) -> str:
        return (f"BM25Index({len(self):,} texts, {self.num_terms:,} terms, {len(self.postings):,} postings, "
                f"terms={self.terms!r}, k1={self.k1}, b={self.b})")

    @property
    def num_terms(self) -> int:
        return len(self.indptr) - 1

    @property
    def avgdl(self) -> float:
        return float(self.doc_lengths.mean()) if len(self) else 0.0

    @property
    def vocab(self) -> dict[str, int]:
        """Word -> term id (terms="words")."""
        if self._vocab is None:
            self._vocab = {w: i for i, w in enumerate(self._vocab_list or ())}
        return self._vocab

    # -- searching ------------------------------------------------------------------------------
    def query_terms(self, query) -> np.ndarray:
        """Term ids of one query (a str, or for terms="words" a list of words), repeats kept, unknown
        terms dropped."""
        if self.terms == "tokens":
            if not isinstance(query, str):
                return np.asarray(query, dtype=np.int64).reshape(-1)
            ids = np.asarray(self._query_tokenizer().encode_ordinary(query), dtype=np.int64)
            return ids[ids < self.num_terms]
        words = query if not isinstance(query, str) else word_terms(query, self.stopwords)
        get = self.vocab.get
        return np.fromiter((i for i in map(get, words) if i is not None), np.int64)

    def _query_tokenizer(self):
        if self.tokenizer is None:
            from ..corpus.tokenizer import load_tokenizer

            tok = load_tokenizer(self.tokenizer_name)
            if tok.fingerprint != self.tokenizer_fingerprint:
                from ..corpus.tokenizer import read_otherwise_note

                note = read_otherwise_note(tok, self.tokenizer_fingerprint)
                raise NextlongError(f"this BM25 index was built with tokenizer {self.tokenizer_name!r} "
                                    f"(fingerprint {self.tokenizer_fingerprint}); loading that name gives "
                                    f"fingerprint {tok.fingerprint}{note}: "
                                    + ("build the index again" if note else "pass the tokenizer it was built with"))
            self.tokenizer = tok
        return self.tokenizer

    def _query_batch(self, queries, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(offsets (Q+1), distinct term ids ascending per query, multiplicities) of a batch, counted with
        one np.unique over the whole batch."""
        if self.terms == "tokens" and queries and all(isinstance(q, str) for q in queries):
            per_query = self._query_tokenizer().encode_ordinary_batch(queries, threads)
        elif self.terms == "words":
            get, stop = self.vocab.get, self.stopwords
            per_query = [[i for i in map(get, word_terms(q, stop) if isinstance(q, str) else q) if i is not None]
                         for q in queries]
        else:
            per_query = [self.query_terms(q) for q in queries]
        lengths = np.fromiter(map(len, per_query), np.int64, len(per_query))
        flat = np.fromiter(itertools.chain.from_iterable(per_query), np.int64, int(lengths.sum()))
        rows = np.repeat(np.arange(len(per_query), dtype=np.int64), lengths)
        keep = (flat >= 0) & (flat < self.num_terms)  # token ids the corpus never used
        width = max(1, self.num_terms)
        keys, mult = np.unique(rows[keep] * width + flat[keep], return_counts=True)
        offsets = np.zeros(len(per_query) + 1, np.int64)
        np.cumsum(np.bincount(keys // width, minlength=len(per_query)), out=offsets[1:])
        return offsets, keys % width, mult.astype(np.float32)

    def search(self, queries: Sequence[str] | Sequence[list[str]], k: int, exclude=None, exclude_docs=None,
               *, num_threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The k best-scoring texts for each query, best first, ties broken by the lower row.

        Returns (row ids int64 (Q, k), scores float32 (Q, k)). Only texts sharing a term with the query
        are ranked, so a row is padded with -1 / nan when fewer match (an empty query, or one of
        unknown terms, gives a row of padding). `exclude`: rows (chunk ids) never returned; either a
        set / frozenset for every query, or one collection (or None) per query. `exclude_docs`: the
        same with doc_index values, for an index that knows them (built from a chunk table or with
        `doc_index=`): every row of those documents is skipped.
        """
        if isinstance(queries, str):
            raise UsageError("search takes a sequence of queries; wrap a single query in a list")
        queries = list(queries)
        k = checked_int(k, "k", 0)
        n = len(queries)
        threads = _threads(num_threads)
        ex_offsets, ex_rows = self._exclusions(exclude, exclude_docs, n)
        offsets, terms, mult = self._query_batch(queries, threads)
        from .. import _native

        try:
            return _native.bm25_search(self.indptr, self.postings, self.weights, len(self), offsets, terms, mult,
                                       k, ex_offsets, ex_rows, threads)
        except IndexError as exc:  # only a damaged index loaded with verify=False gets here
            raise IndexFileError(f"BM25 index: {exc}") from None

    def _exclusions(self, exclude, exclude_docs, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(offsets (Q+1), rows) of what each query must skip, rows ascending and distinct per query."""
        if exclude is None and exclude_docs is None:
            return np.zeros(n + 1, np.int64), np.zeros(0, np.int64)
        per_query = [[] for _ in range(n)]
        for spec, convert in ((exclude, self._rows_of_ids), (exclude_docs, self._rows_of_docs)):
            if spec is None:
                continue
            if isinstance(spec, (set, frozenset)):
                rows = convert(spec)
                for parts in per_query:
                    parts.append(rows)
                continue
            if isinstance(spec, (str, bytes)) or not hasattr(spec, "__len__"):
                raise UsageError("an exclusion is a set (for every query) or a sequence with one collection "
                                 "(or None) per query")
            if len(spec) != n:
                raise UsageError(f"an exclusion list must have one entry per query ({n}), got {len(spec)}")
            for parts, item in zip(per_query, spec):
                if item is not None:
                    parts.append(convert(item))
        offsets = np.zeros(n + 1, np.int64)
        rows = []
        for i, parts in enumerate(per_query):
            r = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
            rows.append(r)
            offsets[i + 1] = offsets[i] + len(r)
        return offsets, (np.concatenate(rows) if rows else np.zeros(0, np.int64))

    def _rows_of_ids(self, ids) -> np.ndarray:
        if isinstance(ids, (int, np.integer)):
            ids = [ids]
        arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise UsageError(f"exclude takes chunk ids (integers), got {arr.dtype} values")
        arr = arr.astype(np.int64)
        return arr[(arr >= 0) & (arr < len(self))]

    def _rows_of_docs(self, docs) -> np.ndarray:
        if self.doc_index is None:
            raise UsageError("this BM25 index does not know the documents of its rows; build it from a chunk "
                             "table or with doc_index= to use exclude_docs")
        if isinstance(docs, (int, np.integer)):
            docs = [docs]
        arr = np.asarray(list(docs) if not isinstance(docs, np.ndarray) else docs).reshape(-1)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise UsageError(f"exclude_docs takes doc_index values (integers), got {arr.dtype} values")
        if self._doc_order is None:
            order = np.argsort(self.doc_index, kind="stable")
            self._doc_order = (order, self.doc_index[order])
        order, sorted_docs = self._doc_order
        lo = np.searchsorted(sorted_docs, arr.astype(np.int64), "left")
        hi = np.searchsorted(sorted_docs, arr.astype(np.int64), "right")
        if not len(arr):
            return np.zeros(0, np.int64)
        return np.concatenate([order[a:z] for a, z in zip(lo, hi)]).astype(np.int64)

    def scores(self, query) -> np.ndarray:
        """BM25 score of every row for one query, float64 (N,): for checks and small corpora."""
        out = np.zeros(len(self), np.float64)
        ids, counts = np.unique(self.query_terms(query), return_counts=True)
        for t, c in zip(ids, counts):
            lo, hi = self.indptr[t], self.indptr[t + 1]
            out[self.postings[lo:hi]] += self.weights[lo:hi].astype(np.float64) * c
        return out

    # -- files ----------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write the index to `folder` (created): one .npy per array, then bm25.json."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{folder}: exists and is not a folder, where a BM25 index is saved; choose another folder")
        folder.mkdir(parents=True, exist_ok=True)
        header_path = folder / HEADER_FILE
        header_path.unlink(missing_ok=True)  # a crash while the arrays are rewritten leaves no valid index
        arrays = {"indptr": self.indptr, "postings": self.postings, "weights": self.weights,
                  "doc_lengths": self.doc_lengths}
        if self.terms == "words":
            blob, offsets = _pack_vocab(self._vocab_list if self._vocab_list is not None else list(self.vocab))
            arrays["vocab_bytes"], arrays["vocab_offsets"] = blob, offsets
        if self.doc_index is not None:
            arrays["doc_index"] = self.doc_index
        files = {}
        for name, arr in arrays.items():
            path = folder / f"{name}.npy"
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(arr, dtype=np.dtype(_ARRAYS[name][0])), allow_pickle=False)
            files[name] = {"bytes": path.stat().st_size, "crc32": file_crc32(path)}
        header = {
            "format": _FORMAT_NAME, "version": FORMAT_VERSION, "k1": self.k1, "b": self.b, "terms": self.terms,
            "idf": "ln(1 + (N - df + 0.5) / (df + 0.5))",
            "stopwords": None if self.stopwords is None else sorted(self.stopwords),
            "tokenizer": self.tokenizer_name, "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "num_docs": len(self), "num_terms": self.num_terms, "num_postings": len(self.postings),
            "vocab_bytes": len(arrays["vocab_bytes"]) if "vocab_bytes" in arrays else 0,
            "avgdl": self.avgdl, "files": files,
        }
        write_json_atomic(header_path, header)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, *, tokenizer=None, mmap: bool = False,
             verify: bool = True) -> BM25Index:
        """Read an index saved by `save`. Any missing, truncated or altered file is one IndexFileError
        line. `verify` checks each file's CRC32 and the arrays' invariants (postings in range, offsets
        ascending), which search relies on; `mmap` maps the arrays instead of reading them."""
        folder = Path(folder)
        header_path = folder / HEADER_FILE
        try:
            if not stat.S_ISREG(header_path.stat().st_mode):  # a FIFO would block the read
                raise IndexFileError(f"{header_path}: not a regular file")
            header = json.loads(header_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IndexFileError(f"{folder}: no {HEADER_FILE}: not a BM25 index folder (or its save did not finish)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IndexFileError(f"{header_path}: unreadable BM25 header ({exc})") from None
        try:
            _check_header(header)
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFileError(f"{header_path}: bad BM25 header ({exc})") from None
        arrays = {}
        for name in header["files"]:
            want = header["files"][name]
            dtype, shape = _ARRAYS[name]
            arrays[name] = load_array(folder / f"{name}.npy", IndexFileError, mmap=mmap,
                                      remedy="the BM25 index is damaged: build it again", size=want["bytes"],
                                      crc32=recorded_crc(want) if verify else None, dtype=dtype,
                                      shape=tuple(shape(header)))
        vocab = None
        if header["terms"] == "words":
            vocab = _unpack_vocab(arrays["vocab_bytes"], arrays["vocab_offsets"], folder)
        _check_arrays(arrays, header, folder, full=verify)
        tok = None
        if header["terms"] == "tokens" and tokenizer is not None:
            from ..corpus.tokenizer import load_tokenizer

            tok = load_tokenizer(tokenizer)
            if tok.fingerprint != header["tokenizer_fingerprint"]:
                from ..corpus.tokenizer import read_otherwise_note

                raise NextlongError(f"{folder}: this BM25 index was built with tokenizer {header['tokenizer']!r} "
                                    f"(fingerprint {header['tokenizer_fingerprint']}), not {tok.name!r} "
                                    f"(fingerprint {tok.fingerprint})"
                                    + read_otherwise_note(tok, header["tokenizer_fingerprint"]))
        stop = header.get("stopwords")
        return cls(indptr=arrays["indptr"], postings=arrays["postings"], weights=arrays["weights"],
                   doc_lengths=arrays["doc_lengths"], k1=header["k1"], b=header["b"], terms=header["terms"],
                   vocab=vocab, stopwords=None if stop is None else frozenset(stop), tokenizer=tok,
                   tokenizer_name=header["tokenizer"], tokenizer_fingerprint=header["tokenizer_fingerprint"],
                   doc_index=arrays.get("doc_index"))


# --- building blocks ---------------------------------------------------------------------------------


def _threads(num_threads: int) -> int:
    if num_threads is None or num_threads == 0:
        from .embedder import available_threads

        return available_threads()
    if num_threads < 0:
        raise UsageError(f"num_threads must be >= 0, got {num_threads}")
    return int(num_threads)


def _count_word_batch(batch, vocab: dict[str, int], stop) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per text of the batch: distinct term ids (in first-occurrence order), their counts, how many, and
    the text's length in terms. New words get the next ids in order of first occurrence (deterministic:
    no set iteration)."""
    counters = []
    for text in batch:
        if isinstance(text, str):
            words = _WORD.findall(text.lower())
            if stop:
                words = [w for w in words if w not in stop]
        elif isinstance(text, (list, tuple)):
            words = text
        else:
            raise UsageError(f"BM25 texts are str (or lists of terms), got {type(text).__name__}")
        counters.append(collections.Counter(words))
    for word in dict.fromkeys(itertools.chain.from_iterable(counters)):
        if word not in vocab:
            vocab[word] = len(vocab)
    nnz = np.fromiter(map(len, counters), np.int64, len(counters))
    total = int(nnz.sum())
    ids = np.fromiter(map(vocab.__getitem__, itertools.chain.from_iterable(counters)), np.int32, total)
    tfs = np.fromiter(itertools.chain.from_iterable(c.values() for c in counters), np.int64, total)
    dl = np.fromiter((sum(c.values()) for c in counters), np.int64, len(counters))
    return ids, _small_tf(tfs), nnz, dl


def _count_token_batch(tok, batch, threads: int):
    for text in batch:
        if not isinstance(text, str):
            raise UsageError(f"terms='tokens' indexes str texts, got {type(text).__name__}")
    encoded = tok.encode_ordinary_batch(batch, threads)
    lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
    flat = np.concatenate(encoded).astype(np.int64) if encoded else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(len(batch), dtype=np.int64), lengths)
    keys, tfs = np.unique((rows << 32) | flat, return_counts=True)
    nnz = np.bincount(keys >> 32, minlength=len(batch)).astype(np.int64)
    return (keys & 0xFFFFFFFF).astype(np.int32), _small_tf(tfs), nnz, lengths


def _small_tf(tfs: np.ndarray) -> np.ndarray:
    return tfs.astype(np.uint16) if not tfs.size or tfs.max() < 2**16 else tfs.astype(np.int64)


def _term_major(row_terms, row_tfs, row_nnz, doc_lengths, num_terms: int, k1: float, b: float):
    """Counting-sort the per-text (term, tf) batches into term-major CSR with BM25 weights, batch by
    batch, so rows ascend within every term and no argsort over all postings is needed."""
    df = np.zeros(num_terms, np.int64)
    for t in row_terms:
        df += np.bincount(t, minlength=num_terms)
    indptr = np.zeros(num_terms + 1, np.int64)
    np.cumsum(df, out=indptr[1:])
    total = int(indptr[-1])
    postings = np.empty(total, np.int32)
    weights = np.empty(total, np.float32)
    n = len(doc_lengths)
    idf = np.log1p((n - df + 0.5) / (df + 0.5))
    avgdl = float(doc_lengths.mean()) if n else 0.0
    # per-text length norm K = k1 * (1 - b + b * dl / avgdl); an all-empty corpus has avgdl 0
    norm = k1 * (1 - b + b * doc_lengths / avgdl) if avgdl > 0 else np.full(n, k1 * (1 - b))
    cursor = indptr[:-1].copy()
    row0 = 0
    while row_terms:
        t, tf, nnz = row_terms.pop(0), row_tfs.pop(0), row_nnz.pop(0)  # free each batch once used
        rows = np.repeat(np.arange(row0, row0 + len(nnz), dtype=np.int64), nnz)
        order = np.argsort(t, kind="stable")
        ts = t[order]
        starts = np.r_[0, np.flatnonzero(ts[1:] != ts[:-1]) + 1] if len(ts) else np.zeros(0, np.int64)
        group_len = np.diff(np.r_[starts, len(ts)])
        rank = np.arange(len(ts)) - np.repeat(starts, group_len)
        dest = cursor[ts] + rank
        cursor[ts[starts]] += group_len
        r = rows[order]
        tff = tf[order].astype(np.float64)
        postings[dest] = r
        weights[dest] = idf[ts] * tff / (tff + norm[r])
        row0 += len(nnz)
    return indptr, postings, weights


def _pack_vocab(words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [w.encode("utf-8") for w in words]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=offsets[1:])
    return np.frombuffer(b"".join(encoded), np.uint8).copy(), offsets


def _unpack_vocab(blob: np.ndarray, offsets: np.ndarray, folder) -> list[str]:
    if len(offsets) and (offsets[0] != 0 or offsets[-1] != len(blob) or np.any(np.diff(offsets) < 0)):
        raise IndexFileError(f"{folder}: corrupt BM25 vocabulary (offsets out of order)")
    data = blob.tobytes()
    try:
        return [data[a:z].decode("utf-8") for a, z in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    except UnicodeDecodeError as exc:
        raise IndexFileError(f"{folder}: corrupt BM25 vocabulary ({exc})") from None


def _check_header(h: dict) -> None:
    if h.get("format") != _FORMAT_NAME:
        raise ValueError(f"format {h.get('format')!r}, expected {_FORMAT_NAME!r}")
    if h.get("version") != FORMAT_VERSION:
        raise ValueError(f"version {h.get('version')!r}; this nextlong reads version {FORMAT_VERSION}")
    if h["terms"] not in ("words", "tokens"):
        raise ValueError(f"terms {h['terms']!r}")
    for key in ("num_docs", "num_terms", "num_postings", "vocab_bytes"):
        if not isinstance(h[key], int) or h[key] < 0:
            raise ValueError(f"{key} {h[key]!r}")
    need = {"indptr", "postings", "weights", "doc_lengths"} | ({"vocab_bytes", "vocab_offsets"} if h["terms"] == "words" else set())
    files = h["files"]
    if not isinstance(files, dict) or not need <= set(files) or not set(files) <= set(_ARRAYS):
        raise ValueError(f"files {sorted(files) if isinstance(files, dict) else files!r}")
    for v in files.values():
        if not isinstance(v["bytes"], int) or not isinstance(v["crc32"], int):
            raise ValueError("file entries need integer bytes and crc32")
    float(h["k1"]), float(h["b"])


def _check_arrays(a: dict, h: dict, folder, *, full: bool) -> None:
    """What the native search trusts: offsets from 0 to P, ascending; postings rows in [0, N)."""
    indptr = a["indptr"]
    ok = indptr[0] == 0 and indptr[-1] == h["num_postings"]
    if ok and full:
        ok = bool(np.all(indptr[1:] >= indptr[:-1]))
        if ok and len(a["postings"]):
            ok = int(a["postings"].min()) >= 0 and int(a["postings"].max()) < h["num_docs"]
    if not ok:
        raise IndexFileError(f"{folder}: corrupt BM25 index (term offsets or postings out of range)")
