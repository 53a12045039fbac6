"""ANN index over chunk embeddings (usearch HNSW) for hard-negative mining.

NExtLong's distractors for a meta-chunk are the corpus chunks most similar to it, never from the
document being extended and never an exact duplicate (method §1.2-1.3). `ChunkIndex.search` therefore
filters by document, text hash and chunk id, and still returns k results: it over-fetches, and re-queries
the rows that came up short with a larger count, ending in an exact scan only when the index is nearly
exhausted.

The folder's files and their checked reading: index_folder.py; the `nextlong index` job: index_job.py.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import checked_parquet
from ..atomic import atomic_path, file_crc32, write_json_atomic
from ..errors import IndexFileError, NextlongError, UsageError, checked_int
from .index_folder import (DTYPES, FORMAT_VERSION, INDEX_FILE, INFO_FILE, META_FILE, SHARD_FILE, check_embedder,
                           check_meta, embedder_spec, open_usearch, read_info)

# Defaults from the equal-recall sweeps in benchmarks/bench_index.py (2 threads). On the 5,595 MiniLM
# chunks of the Python docs, M=32 / ef=32 gives recall@10 0.997 (M=16 needs ef=24 for 0.99, ef=16 is
# 0.987); ef=32 rather than the cheapest ef past 0.99 leaves a margin for larger corpora, where recall at
# a fixed ef falls. M=32 costs about what M=16 does at equal recall there, and is far better on harder
# vectors (64k hashed-lexical chunks: recall 0.967 vs 0.933 at ef=32). Searches with exclusions fetch
# more than k, which widens the beam (usearch uses max(ef, count)) on top of this. Recall depends on the
# data: on a 30k-chunk topic-clustered corpus of near-ties (random pairs at cosine 0.63) ef=32 gave
# recall@10 0.83 (ef 64: 0.91, ef 128: 0.95), with negatives' mean cosine within 0.001 of exact search's
# (audit s12; docs/scale.md).
DEFAULT_CONNECTIVITY = 32
DEFAULT_EXPANSION_ADD = 128
DEFAULT_EXPANSION_SEARCH = 32


@contextlib.contextmanager
def interruptible():
    """Around a usearch build or search: usearch checks for signals as it works and turns the KeyboardInterrupt that
    Ctrl-C (or the CLI's SIGTERM handler) raised into RuntimeError("Operation has been terminated"), so a run stopped
    there ended in a traceback and a manifest saying "failed". It is given back as the interruption it was."""
    try:
        yield
    except RuntimeError as exc:
        if str(exc) == "Operation has been terminated":
            raise KeyboardInterrupt() from None
        raise


def _is_collection(x) -> bool:
    return isinstance(x, (list, tuple, set, frozenset, np.ndarray)) and not isinstance(x, (str, bytes))


_SEARCH_BATCH = 1 << 14  # queries per usearch call: bounds the (queries x count) result matrices


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero); returns `x` itself when already unit."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    if np.all(np.abs(norms - 1.0) < 1e-4):
        return x
    return x / np.where(norms > 0, norms, 1.0)[:, None].astype(np.float32)


_CAST_POOL = None


def _forget_cast_pool() -> None:
    global _CAST_POOL
    _CAST_POOL = None  # a forked child has none of the parent's threads: it must start its own


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_cast_pool)


def _to_f16(x: np.ndarray, threads: int = 0) -> np.ndarray:
    """float32 -> float16. numpy's cast is scalar (~2 ns a value) but releases the GIL, so a large
    batch is cast in slices on a few threads; for small ones a thread hand-off costs more than it saves."""
    global _CAST_POOL
    parts = min(threads or os.cpu_count() or 1, 8)
    if parts < 2 or x.size < (1 << 20):
        return x.astype(np.float16)
    if _CAST_POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _CAST_POOL = ThreadPoolExecutor(8, thread_name_prefix="nextlong-f16")
    out = np.empty(x.shape, dtype=np.float16)
    bounds = np.linspace(0, len(x), parts + 1).astype(int)
    jobs = [_CAST_POOL.submit(np.copyto, out[a:b], x[a:b], casting="same_kind") for a, b in zip(bounds[:-1], bounds[1:])]
    for job in jobs:
        job.result()
    return out


class _Exclusion:
    """One kind of per-query exclusion: either one value per query (vectorised) or a set per query."""

    def __init__(self, scalars: np.ndarray | None = None, sets: list[np.ndarray | None] | None = None,
                 shared: np.ndarray | None = None):
        self.scalars, self.sets, self.shared = scalars, sets, shared

    def max_size(self) -> int:
        n = 1 if self.scalars is not None else 0
        if self.sets is not None:
            n = max((len(s) for s in self.sets if s is not None), default=0)
        if self.shared is not None:
            n += len(self.shared)
        return n

    def take(self, rows: np.ndarray) -> "_Exclusion":
        return _Exclusion(
            None if self.scalars is None else self.scalars[rows],
            None if self.sets is None else [self.sets[i] for i in rows],
            self.shared,
        )

    def mask(self, values: np.ndarray) -> np.ndarray:
        """values: (n, c) per-result attribute -> True where excluded."""
        out = np.zeros(values.shape, dtype=bool)
        if self.scalars is not None:
            out |= values == self.scalars[:, None]
        if self.sets is not None:
            for i, s in enumerate(self.sets):
                if s is not None and len(s):
                    out[i] |= np.isin(values[i], s)
        if self.shared is not None and len(self.shared):
            out |= np.isin(values, self.shared)
        return out


class ChunkIndex:
    """usearch HNSW index of chunk embeddings plus the chunk metadata mining needs.

    Build with `ChunkIndex.build(...)` or `build_index_from_chunks(...)`; open with `load` (in memory)
    or `view` (memory-mapped: many processes share one copy through the page cache).
    """

    def __init__(self, index, meta, info: dict, folder: Path | None = None):
        self._index = index
        self.meta = meta  # pyarrow Table, row i = index row i
        self.info = info
        self.folder = folder
        self.chunk_ids = meta.column("chunk_id").to_numpy().astype(np.int64)
        key = info["doc_key"]
        docs = meta.column(key)
        if key == "doc_index":
            self._doc_values = None
            self._doc_codes = docs.to_numpy().astype(np.int64)
        else:
            values, codes = np.unique(np.asarray(docs.to_pylist(), dtype=object), return_inverse=True)
            self._doc_values = values
            self._doc_codes = codes.astype(np.int64)
        self.text_hashes = (meta.column("text_hash").to_numpy().astype(np.uint64)
                            if "text_hash" in meta.column_names else None)
        n = len(self.chunk_ids)
        self._identity_keys = bool(n == 0 or (self.chunk_ids[0] == 0 and np.array_equal(self.chunk_ids, np.arange(n))))
        if not self._identity_keys:
            self._key_order = np.argsort(self.chunk_ids, kind="stable")
            self._keys_sorted = self.chunk_ids[self._key_order]
        self._doc_sizes_cache = None

    @property
    def _doc_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted doc codes, chunks per doc): how far to over-fetch when a document is excluded."""
        if self._doc_sizes_cache is None:
            self._doc_sizes_cache = np.unique(self._doc_codes, return_counts=True)
        return self._doc_sizes_cache

    # ------------------------------------------------------------------ build / save / load

    @classmethod
    def build(
        cls,
        embeddings,
        chunk_ids,
        doc_ids,
        *,
        text_hashes=None,
        metadata=None,
        embedder=None,
        metric: str = "cos",
        dtype: str = "f16",
        connectivity: int = DEFAULT_CONNECTIVITY,
        expansion_add: int = DEFAULT_EXPANSION_ADD,
        expansion_search: int = DEFAULT_EXPANSION_SEARCH,
        threads: int = 0,
        shards: int = 1,
        progress: bool = False,
        add_batch: int = 1 << 12,  # the bar's step; 1 << 16 left it at 0% for 90 s at 99k chunks, for no speed
    ) -> "ChunkIndex":
        """HNSW index over `embeddings` (n, dim), keyed by `chunk_ids` (unique int64).

        `doc_ids` (ints, e.g. doc_index, or strings) is what `search(exclude_doc_ids=...)` compares
        against; `text_hashes` (uint64) enables `exclude_hashes`. `metadata`: an optional pyarrow Table
        with the other chunk columns (doc_index, doc_id, chunk_index, num_tokens) kept beside the index.
        `embedder`: the Embedder (or its name) that made the vectors, recorded for load-time checks.
        `threads=0` uses all cores. `shards` > 1 cuts the rows into that many shards, each built on one
        thread, `threads` of them at a time, and searched together (nextlong/mining/index_shards.py): the same
        graphs on every run, unlike one build on several threads.
        """
        import pyarrow as pa
        from usearch.index import Index

        emb = np.asarray(embeddings)
        if emb.ndim != 2:
            raise UsageError(f"embeddings must be 2-D (n, dim), got shape {emb.shape}")
        n, dim = emb.shape
        chunk_ids = np.asarray(chunk_ids, dtype=np.int64)
        doc_ids = np.asarray(doc_ids)
        if chunk_ids.shape != (n,) or doc_ids.shape != (n,):
            raise UsageError(f"chunk_ids {chunk_ids.shape} and doc_ids {doc_ids.shape} must have shape ({n},)")
        if n and (chunk_ids.min() < 0 or len(np.unique(chunk_ids)) != n):
            raise UsageError("chunk_ids must be unique and non-negative")
        if text_hashes is not None:
            text_hashes = np.asarray(text_hashes, dtype=np.uint64)
            if text_hashes.shape != (n,):
                raise UsageError(f"text_hashes has shape {text_hashes.shape}, expected ({n},)")
        kind = DTYPES.get(str(dtype))
        if kind is None:
            raise UsageError(f"dtype must be one of f16, i8, f32, bf16; got {dtype!r}")
        if metric not in ("cos", "ip"):
            raise UsageError(f"metric must be 'cos' or 'ip' (vectors are unit-normalised), got {metric!r}")

        doc_key = "doc_index" if np.issubdtype(doc_ids.dtype, np.integer) else "doc_id"
        columns: dict[str, Any] = {"chunk_id": pa.array(chunk_ids, pa.int64())}
        if doc_key == "doc_index":
            columns["doc_index"] = pa.array(doc_ids.astype(np.int64), pa.int64())
        else:
            columns["doc_id"] = pa.array([str(d) for d in doc_ids.tolist()], pa.string())
        if text_hashes is not None:
            columns["text_hash"] = pa.array(text_hashes, pa.uint64())
        if metadata is not None:
            if metadata.num_rows != n:
                raise UsageError(f"metadata has {metadata.num_rows} rows, expected {n}")
            for name in ("doc_index", "doc_id", "chunk_index", "num_tokens", "text_hash"):
                if name in metadata.column_names and name not in columns:
                    columns[name] = metadata.column(name)
        meta = pa.table(columns)

        # Cosine over float storage runs as inner product over unit rows: the same similarities, but the
        # kernel skips the two norms per distance (~20% more queries/s); i8 keeps usearch's cos kernel,
        # whose quantisation relies on it.
        kernel = "ip" if metric == "cos" and kind != "i8" else metric
        def make_index():
            return Index(ndim=dim, metric=kernel, dtype=kind, connectivity=connectivity,
                         expansion_add=expansion_add, expansion_search=expansion_search)

        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, unit="vec", desc="indexing (HNSW)", dynamic_ncols=True)

        def add_rows(index, lo: int, hi: int, threads: int) -> None:
            for start in range(lo, hi, add_batch):
                stop = min(hi, start + add_batch)
                block = np.ascontiguousarray(emb[start:stop], dtype=np.float32)
                if metric == "cos":  # unit rows: what the ip kernel needs, and i8 quantises [-1, 1]
                    block = _unit_rows(block)
                index.add(chunk_ids[start:stop].astype(np.uint64), block, threads=threads)
                if bar is not None:
                    bar.update(len(block))

        started = time.perf_counter()
        try:
            with interruptible():
                if shards > 1 and n > 1:
                    from .index_shards import build_shards

                    index = build_shards(make_index, add_rows, n, shards, threads or os.cpu_count() or 1)
                else:
                    index = make_index()
                    add_rows(index, 0, n, threads)
        finally:
            if bar is not None:
                bar.close()
        name = getattr(embedder, "name", embedder)
        info = {
            "format": FORMAT_VERSION,
            "embedder": {"name": name, "dim": int(dim), "spec": embedder_spec(embedder)},
            "metric": metric,
            "usearch_metric": kernel,
            "dtype": kind,
            "settings": {"connectivity": int(connectivity), "expansion_add": int(expansion_add),
                         "expansion_search": int(expansion_search)},
            "counts": {"chunks": int(n), "documents": int(len(np.unique(doc_ids))) if n else 0},
            "doc_key": doc_key,
            "build_seconds": round(time.perf_counter() - started, 3),
        }
        return cls(index, meta, info)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the index directory; index.json goes last and records the index file's size and CRC."""

        from ..errors import check_free_space, disk_full

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        needed = int(self._index.serialized_length)
        check_free_space(folder / INDEX_FILE, needed)
        shards = getattr(self._index, "shards", None)
        files = []
        for i, index in enumerate(shards or [self._index]):
            name = INDEX_FILE if shards is None else SHARD_FILE.format(i)
            with atomic_path(folder / name) as tmp:
                try:
                    index.save(str(tmp))
                except RuntimeError as exc:  # usearch reports a failed write (a full disk too) this way
                    import shutil

                    free = shutil.disk_usage(folder).free
                    if free < needed + (1 << 20):
                        raise disk_full(folder / name, needed, free) from exc
                    raise IndexFileError(f"{folder / name}: cannot write the index ({exc})") from exc
                files.append({"name": name, "bytes": tmp.stat().st_size, "crc32": file_crc32(tmp),
                              "chunks": len(index)})
        with atomic_path(folder / META_FILE) as tmp:
            checked_parquet.write_table(self.meta, tmp)
        if shards is None:
            self.info["index_file"] = {k: files[0][k] for k in ("name", "bytes", "crc32")}
        else:
            self.info["index_files"] = files
        write_json_atomic(folder / INFO_FILE, {k: v for k, v in self.info.items() if not k.startswith("_")})
        self.folder = folder
        return folder

    @classmethod
    def load(cls, folder, embedder=None, *, expect_dim: int | None = None, verify: bool = True) -> "ChunkIndex":
        """Load the index into memory. `embedder` (an Embedder or a name) and `expect_dim` are checked
        against what the index was built with. `verify` checks the index file's CRC (reads it once)."""
        return cls._open(folder, view=False, embedder=embedder, expect_dim=expect_dim, verify=verify)

    @classmethod
    def view(cls, folder, embedder=None, *, expect_dim: int | None = None, verify: bool = True) -> "ChunkIndex":
        """Memory-map the index file instead of reading it: opening costs no copy, and processes that
        view the same file share its pages. Checks size and header, and the CRC with one streaming read
        of the file unless `verify=False` (a corrupt file would give wrong neighbours, or nan similarities)."""
        return cls._open(folder, view=True, embedder=embedder, expect_dim=expect_dim, verify=verify)

    @classmethod
    def _open(cls, folder, *, view: bool, embedder, expect_dim, verify: bool) -> "ChunkIndex":
        import pyarrow as pa

        from ..untrusted import member

        folder = Path(folder)
        info_path = folder / INFO_FILE
        if not folder.is_dir():
            raise IndexFileError(f"{folder}: " + ("no such folder" if not os.path.lexists(folder) else "not a folder")
                                 + "; expected the --out of `nextlong index`")
        if not info_path.exists():
            from ..manifest import another_commands_run

            other = another_commands_run(folder / "manifest.json", "index")
            what = ("an incomplete save (index.json is written last)" if any(folder.glob("index*.usearch"))
                    else f"it holds {other} (its manifest.json), not an index" if other
                    else "not an index directory")
            raise IndexFileError(f"{folder}: no {INFO_FILE}; {what}")
        info = read_info(folder)
        check_embedder(info, embedder, expect_dim, where=folder)
        meta_path, _ = member(folder, META_FILE, f"{folder}", IndexFileError, kind="index folder")

        if "index_files" in info:  # a sharded index (nextlong/mining/index_shards.py)
            from .index_shards import ShardedUsearch

            opened = [open_usearch(folder / f["name"], f, info, f["chunks"], view=view, verify=verify)
                      for f in info["index_files"]]
            index = ShardedUsearch([shard for shard, _ in opened])
            keys = np.concatenate([k for _, k in opened])
        else:
            index, keys = open_usearch(folder / info["index_file"]["name"], info["index_file"], info,
                                        info["counts"]["chunks"], view=view, verify=verify)
        settings = info.get("settings", {})
        if settings.get("expansion_search"):
            index.expansion_search = int(settings["expansion_search"])
        try:
            meta = checked_parquet.read_table(meta_path)
        except (OSError, pa.ArrowException) as exc:
            raise IndexFileError(f"{folder / META_FILE}: unreadable chunk metadata ({exc})") from exc
        check_meta(folder / META_FILE, meta, info, keys)
        info["_viewed"] = view
        return cls(index, meta, info, folder)

    # ------------------------------------------------------------------ properties

    def __len__(self) -> int:
        return len(self.chunk_ids)

    @property
    def dim(self) -> int:
        return int(self.info["embedder"]["dim"])

    @property
    def embedder_name(self) -> str | None:
        return self.info["embedder"]["name"]

    @property
    def is_view(self) -> bool:
        """True when the index file is memory-mapped (opened with `view`)."""
        return bool(self.info.get("_viewed", False))

    @property
    def usearch(self):
        """The underlying usearch.index.Index (for tuning expansion_search, stats, ...)."""
        return self._index

    def query_embedder(self, **options):
        """The embedder that made this index, to embed queries the same way."""
        from .embedding import HashedLexicalEmbedder, load_embedder

        from ..errors import EmbedderMismatchError
        from .index_folder import query_spec

        recorded = self.info["embedder"].get("spec")
        spec = query_spec(self.info, self.folder)
        if spec is None:
            raise NextlongError(f"index records no loadable embedder (name {self.embedder_name!r}, spec "
                                f"{recorded!r}); pass one explicitly")
        embedder = (HashedLexicalEmbedder.load(self.folder) if recorded == "<lexical>"
                    else load_embedder(spec, **options))
        renamed = spec != recorded and recorded != "<lexical>"  # an old folder's name, mapped to a spec
        if int(getattr(embedder, "dim", self.dim)) != self.dim or (renamed and embedder.name != self.embedder_name):
            raise EmbedderMismatchError(
                f"{self.folder}: the index was built with embedder {self.embedder_name!r} (dim {self.dim}), but "
                f"{spec!r} now loads {embedder.name!r} (dim {embedder.dim}): rebuild the index (nextlong index)")
        return embedder

    # ------------------------------------------------------------------ search

    def texts_of(self, ids, chunks=None) -> tuple[dict[int, str], str | None]:
        """({chunk id: text} of `ids`, None), or ({}, why they cannot be shown), from a chunk table: `chunks`
        when given (refused in one line when it is not the index's size), else the one index.json names,
        read only when its text hashes are the index's own: index.json names it by a path on the machine
        that built it, so an index from elsewhere cannot show another file."""
        import pyarrow as pa

        from ..errors import CorpusError

        not_found = {}, "(texts not shown: chunk table not found; pass --chunks)"
        path = chunks or self.info.get("chunks_path")
        if not path or not Path(path).is_file():
            return not_found
        columns = ["chunk_id", "text"] + ([] if chunks else ["text_hash"])
        try:
            table = checked_parquet.read_table(path, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            if chunks:
                raise CorpusError(path, f"not a readable chunk table ({exc})") from None
            return not_found
        if table.num_rows != len(self):
            if chunks:
                raise CorpusError(path, f"{table.num_rows} chunks, but the index holds {len(self)}; wrong --chunks?")
            return not_found
        if not chunks and not self._holds_chunks_of(table):
            return {}, (f"(texts not shown: {path}, the chunk table index.json names, is not the one the index was "
                        "built from; pass --chunks)")
        column = table.column("text")
        return {int(i): column[int(i)].as_py() for i in ids}, None

    def _holds_chunks_of(self, table) -> bool:
        """Whether `table` holds the chunks this index was built from (its text hashes are the index's)."""
        if self.text_hashes is None or "text_hash" not in table.column_names:
            return False
        try:
            hashes = table.column("text_hash").to_numpy().astype(np.uint64)
        except (TypeError, ValueError, ArithmeticError):
            return False
        return bool(np.array_equal(hashes, self.text_hashes))

    def rows_of(self, keys: np.ndarray) -> np.ndarray:
        """Row numbers in `meta` (and in the embeddings) of chunk ids returned by `search` (all must exist)."""
        if self._identity_keys:
            return keys
        pos = np.searchsorted(self._keys_sorted, keys)
        return self._key_order[np.minimum(pos, len(self._key_order) - 1)]

    def _doc_code_of(self, values) -> np.ndarray:
        arr = np.asarray(values, dtype=object if self._doc_values is not None else None)
        if self._doc_values is None:
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise TypeError(f"this index excludes documents by doc_index (integers); got {arr.dtype} values")
            return arr.astype(np.int64)
        if arr.size and not all(isinstance(v, str) for v in arr.ravel()):
            raise TypeError("this index excludes documents by doc_id (strings)")
        pos = np.searchsorted(self._doc_values, arr)
        pos = np.minimum(pos, len(self._doc_values) - 1)
        found = self._doc_values[pos] == arr if len(self._doc_values) else np.zeros(arr.shape, bool)
        return np.where(found, pos, -1).astype(np.int64)

    def _exclusion(self, spec, n: int, convert) -> _Exclusion | None:
        """Normalise one exclusion argument: None; a set/frozenset (same for every query); a scalar
        (same for every query); or a length-n sequence of scalars / collections / None."""
        if spec is None:
            return None
        if isinstance(spec, (set, frozenset)):
            return _Exclusion(shared=convert(np.asarray(sorted(spec))))
        if not _is_collection(spec):
            return _Exclusion(scalars=np.repeat(convert(np.asarray([spec])), n))
        items = list(spec)
        if len(items) != n:
            raise UsageError(f"an exclusion list must have one entry per query ({n}), got {len(items)}")
        if all(x is not None and not _is_collection(x) for x in items):
            return _Exclusion(scalars=convert(np.asarray(items)))
        sets = [None if x is None else convert(np.asarray(list(x) if _is_collection(x) else [x])) for x in items]
        return _Exclusion(sets=sets)

    def search(
        self,
        queries,
        k: int,
        exclude_doc_ids=None,
        exclude_hashes=None,
        exclude_ids=None,
        *,
        threads: int = 0,
        expansion_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar chunks to each query, after exclusions, best first.

        Returns (chunk ids int64 (n, k), cosine similarities float32 (n, k)); a row is padded with -1 / nan
        only when fewer than k chunks of the whole index are eligible for it.
        Exclusions: each is None, one value for all queries, a set (for all queries), or a length-n
        sequence with a value, a collection or None per query. `exclude_doc_ids` compares with the
        doc ids the index was built with, `exclude_hashes` with text_hash (exact duplicates),
        `exclude_ids` with chunk ids (e.g. chunks already used in this synthesized document).
        """
        k = checked_int(k, "k", 0)
        listed = [queries] if isinstance(queries, str) else queries if isinstance(queries, (list, tuple)) else []
        if any(isinstance(x, str) for x in listed):
            raise UsageError("queries are embedding vectors, not texts: embed them first, as the index was built "
                             "(index.query_embedder().embed(texts))")
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise UsageError(f"queries must have shape (n, {self.dim}), got {np.asarray(queries).shape}")
        n = len(q)
        docs = self._exclusion(exclude_doc_ids, n, self._doc_code_of)
        if exclude_hashes is not None and self.text_hashes is None:
            raise UsageError("this index was built without text_hashes; cannot exclude duplicates")
        hashes = self._exclusion(exclude_hashes, n, lambda a: a.astype(np.uint64))
        ids = self._exclusion(exclude_ids, n, lambda a: a.astype(np.int64))
        out_ids = np.full((n, k), -1, dtype=np.int64)
        out_sim = np.full((n, k), np.nan, dtype=np.float32)
        if n == 0 or k == 0 or len(self) == 0:
            return out_ids, out_sim
        q = self._prepare_queries(q, threads)
        plain = docs is None and hashes is None and ids is None
        saved = self._index.expansion_search
        if expansion_search is not None:  # for this call only: the index keeps its own setting
            self._index.expansion_search = int(expansion_search)
        try:
            with interruptible():
                for start in range(0, n, _SEARCH_BATCH):
                    stop = min(n, start + _SEARCH_BATCH)
                    if plain:
                        self._search_plain(q[start:stop], k, threads, out_ids[start:stop], out_sim[start:stop])
                    else:
                        self._search_block(q, np.arange(start, stop), k, docs, hashes, ids, threads, out_ids, out_sim)
        finally:
            self._index.expansion_search = saved
        return out_ids, out_sim

    def _prepare_queries(self, q: np.ndarray, threads: int = 0) -> np.ndarray:
        """Queries as the kernel wants them: unit rows for cosine (the ip kernel needs them, i8 quantises
        [-1, 1]), and already in f16 for f16 storage (numpy's cast is cheaper than usearch's per query)."""
        if self.info["metric"] == "cos":
            q = _unit_rows(q)
        if self.info["dtype"] == "f16":
            q = _to_f16(q, threads)
        return q

    def _search_plain(self, q, k, threads, out_ids, out_sim):
        """No exclusions: one usearch call for exactly k, results written straight into the outputs."""
        want = min(k, len(self))
        found = self._index.search(q, want, threads=threads, exact=False)
        keys = np.asarray(found.keys).reshape(len(q), -1)
        dist = np.asarray(found.distances).reshape(len(q), -1)
        counts = getattr(found, "counts", None)
        counts = np.asarray([len(found.keys)] if counts is None else counts).reshape(-1)
        width = keys.shape[1]
        out_ids[:, :width] = keys
        np.subtract(1.0, dist, out=out_sim[:, :width], dtype=np.float32)
        short = np.flatnonzero(counts < want)
        if len(short):  # HNSW came back with fewer than k: redo those rows with the refilling search
            out_ids[short], out_sim[short] = -1, np.nan
            self._search_block(q, short, k, None, None, None, threads, out_ids, out_sim)

    def _first_fetch(self, k: int, sel, docs, hashes, ids) -> np.ndarray:
        """Per query: k, plus the chunks of its excluded documents (any of them may lie next to it),
        plus a margin for excluded hashes / ids, plus slack; the refill covers what this misses."""
        extra = np.zeros(len(sel), dtype=np.int64)
        if docs is not None:
            sorted_codes, sizes = self._doc_sizes

            def chunks_of(codes):
                codes = np.asarray(codes, dtype=np.int64)
                pos = np.minimum(np.searchsorted(sorted_codes, codes), len(sorted_codes) - 1)
                return np.where(sorted_codes[pos] == codes, sizes[pos], 0)

            if docs.scalars is not None:
                extra += chunks_of(docs.scalars[sel])
            if docs.sets is not None:
                extra += np.array([0 if docs.sets[i] is None else int(chunks_of(docs.sets[i]).sum()) for i in sel],
                                  dtype=np.int64)
            if docs.shared is not None:
                extra += int(chunks_of(docs.shared).sum())
            np.minimum(extra, 4096, out=extra)
        for excl in (hashes, ids):  # rarely all near the query: a modest margin, refill covers the rest
            if excl is not None:
                extra += min(excl.max_size(), 2 * k + 32)
        return k + extra + np.where(extra > 0, 8 + k // 2, 0)

    def _search_block(self, q, sel, k, docs, hashes, ids, threads, out_ids, out_sim):
        """Queries are grouped by how many results their exclusions need (steps of sqrt(2)): a query
        whose own document is small is not fetched, nor its HNSW beam widened, for the batch's largest."""
        size = len(self)
        need = np.minimum(self._first_fetch(k, sel, docs, hashes, ids), size)
        step = np.minimum(np.ceil(2.0 ** (np.ceil(2 * np.log2(need)) / 2)).astype(np.int64), size)
        for count in np.unique(step):
            self._fetch_and_refill(q, sel[step == count], k, int(count), docs, hashes, ids, threads, out_ids, out_sim)

    def _fetch_and_refill(self, q, sel, k, count, docs, hashes, ids, threads, out_ids, out_sim):
        """Fetch, filter, and re-query the rows still short of k with 4x the count. HNSW gives way to an
        exact scan once the count passes `hnsw_limit` or the index size: an exact top-c is complete, so a
        row is given up (padded) only when an exact fetch of the whole index is still short."""
        size = len(self)
        hnsw_limit = max(4096, 64 * k)
        exact = False
        pending = sel
        while len(pending):
            exact = exact or count >= size or count > hnsw_limit
            whole = pending[-1] - pending[0] + 1 == len(pending)  # a contiguous run: a view, not a copy
            batch = q[pending[0] : pending[-1] + 1] if whole else q[pending]
            found = self._index.search(batch, count, threads=threads, exact=exact)
            keys = np.asarray(found.keys).reshape(len(pending), -1).astype(np.int64)
            dist = np.asarray(found.distances).reshape(len(pending), -1)
            counts = getattr(found, "counts", None)  # a one-query search returns Matches without it
            counts = np.asarray([len(found.keys)] if counts is None else counts).reshape(-1)
            valid = np.arange(keys.shape[1])[None, :] < counts[:, None]
            safe_keys = np.where(valid, keys, self.chunk_ids[0])
            rows = self.rows_of(safe_keys)
            ok = valid.copy()
            if docs is not None:
                ok &= ~docs.take(pending).mask(self._doc_codes[rows])
            if hashes is not None:
                ok &= ~hashes.take(pending).mask(self.text_hashes[rows])
            if ids is not None:
                ok &= ~ids.take(pending).mask(safe_keys)
            have = ok.sum(axis=1)
            done = np.flatnonzero((have >= k) | (exact and count >= size))
            ok_done = ok[done]
            rank = np.cumsum(ok_done, axis=1) - 1  # position of each eligible result in the output row
            r, c = np.nonzero(ok_done & (rank < k))
            out_ids[pending[done[r]], rank[r, c]] = keys[done[r], c]
            out_sim[pending[done[r]], rank[r, c]] = 1.0 - dist[done[r], c]
            pending = np.delete(pending, done)
            count = min(size, count * 4)

    def exact_search(self, queries, k: int, embeddings) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force reference: cosine top-k over `embeddings` (rows aligned with this index's rows)."""
        q = np.asarray(queries, dtype=np.float32)
        sims = q @ np.asarray(embeddings, dtype=np.float32).T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return self.chunk_ids[top], np.take_along_axis(sims, top, axis=1)


