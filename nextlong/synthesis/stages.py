"""The stages of synthesis as Stage objects (framework.py): what pipeline.py lists and an executor runs.

Each is a dataclass whose fields are the settings it depends on (hence its fingerprint); heavy state is
built in `setup` (map stages) or `build` (whole stages) from the folders of its inputs, so every one
pickles small. The work itself is batches.py's functions; what a stage leaves and how the next opens
it, artifacts.py.
"""

from __future__ import annotations

import dataclasses as _dc
from pathlib import Path as _Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as _pq

from .. import checked_parquet
from ..atomic import atomic_path as _atomic_path
from ..untrusted import whole
from .artifacts import (CHUNKS_FILE, DEFAULT_EMBEDDER_SPEC, EMBEDDINGS_FILE, NO_SEPARATOR, STORE_DIR, blank_chunks,
                        blank_documents, check_part_rows, chunk_texts, document_texts, empty_chunks,
                        iter_document_texts, load_stage_embedder, load_store, open_vectors, ready_embedder, recorded_rows,
                        save_blanks, tokenizer_identity)
from .batches import (assemble_batch, blas_threads, chunk_batch, plan_groups_batch, plan_knn_batch,
                      plan_nextlong_batch)
from .framework import MapStage, WholeStage, added_setting, identity, not_a_setting
from .parts import read_part
from .topics import topics_identity


@_dc.dataclass
class ChunkStage(MapStage):
    """Corpus block -> meta-chunks with token ids; chunk_id counts from 0 in each block (`Consolidate`
    adds the earlier blocks' counts)."""

    tokenizer: str | None = identity(tokenizer_identity, default=None)
    chunk_size: int = 2048
    chunk_unit: str = "chars"
    separator: str = "\n"  # tokenized with each chunk (chunk_batch)
    threads: int | None = not_a_setting(default=None)

    # chunk_corpus's options: text and token lists gain nothing from a dictionary; snappy is fast
    parquet_options = {"compression": "snappy", "use_dictionary": ["doc_id"],
                       "write_statistics": ["chunk_id", "doc_index", "chunk_index"], "row_group_size": 1 << 20}

    def setup(self, ctx):
        from ..corpus.chunking import resolve_tokenizer
        from ..corpus.tokenizer import load_tokenizer

        self._encoder = resolve_tokenizer(load_tokenizer(self.tokenizer))[1]
        self._threads = self.threads or ctx.threads

    def __call__(self, block):
        return chunk_batch(block, tokenizer=self._encoder, chunk_size=self.chunk_size, chunk_unit=self.chunk_unit,
                           first_chunk_id=0, num_threads=self._threads, separator=self.separator)

    def count(self, output):
        import pyarrow.compute as pc

        return {"rows": output.num_rows, "tokens": int(pc.sum(output.column("num_tokens")).as_py() or 0)}


def _renumbered_parts(parts_dir, blocks: int, stage=None):
    """(block, table) of a map stage's parts with chunk_id = rows in earlier blocks + local id, and the
    corpus-wide doc_index and doc ids its block records name (read.corpus_numbered). `stage`: the finished stage
    the parts are, whose parts deleted since are named (framework.finished_part), not skipped."""
    from .read import corpus_numbered
    from .framework import block_path, block_record_path, finished_part, read_done

    first = 0
    for j in range(blocks):
        path = finished_part(parts_dir, j, stage) if stage is not None else block_path(parts_dir, j)
        if path is None or not path.exists():
            continue
        t = corpus_numbered(read_part(path), read_done(block_record_path(parts_dir, j)))
        ids = pa.array(np.arange(first, first + t.num_rows, dtype=np.int64))
        first += t.num_rows
        yield j, t.set_column(t.schema.get_field_index("chunk_id"), "chunk_id", ids)


def _write_chunk_table(tables, out_dir) -> int:
    """Concatenate chunk tables into out_dir/chunks.parquet (atomic) and build the chunk store."""
    from ..corpus.chunking import _STATISTICS_COLUMNS, chunk_table_schema
    from .store import ChunkStore

    out_dir = _Path(out_dir)
    rows = 0
    schema = chunk_table_schema(True)
    store_columns = ["doc_index", "doc_id", "chunk_index", "char_start", "char_end", "text_hash", "input_ids"]
    kept, blank = [], []  # the store's columns (no text), so it is built without reading the file back
    with _atomic_path(out_dir / CHUNKS_FILE) as tmp:
        with checked_parquet.writer(tmp, schema, use_dictionary=["doc_id"],
                                    write_statistics=_STATISTICS_COLUMNS) as writer:
            for t in tables:
                t = t.cast(schema)
                writer.write_table(t)
                kept.append(t.select(store_columns))
                blank.append(blank_chunks(t.column("text")))
                rows += t.num_rows
    whole = pa.concat_tables(kept) if kept else schema.empty_table().select(store_columns)
    store = ChunkStore.from_table(whole)
    store.save(out_dir / STORE_DIR)
    save_blanks(out_dir, store, np.concatenate(blank) if blank else np.zeros(0, bool))
    return rows


@_dc.dataclass
class Consolidate(WholeStage):
    """Chunk blocks -> one chunk table with global chunk ids (prefix sum of block counts) + the store, and the
    blank chunks and documents (BLANK_CHUNKS_FILE, BLANK_DOCS_FILE)."""

    checksummed = True

    def build(self, ctx):
        src = ctx.input(self.inputs[0])
        blocks = int(ctx.input_record(self.inputs[0])["counts"]["blocks"])
        parts = _renumbered_parts(src, blocks, ctx.pipeline.stage(self.inputs[0]))
        rows = _write_chunk_table((t for _, t in parts), ctx.out_dir)
        store = load_store(ctx.out_dir)
        return {"chunks": rows, "documents": store.num_docs, "tokens": int(store.tok_offsets[-1]), "blocks": blocks,
                "blank_documents": int(blank_documents(ctx.out_dir, store).size)}


@_dc.dataclass
class NearDupStage(WholeStage):
    """Which chunks are near-copies of which (word 5-gram Jaccard >= threshold), from their text."""

    version = 4  # 2: large families of near-copies (a hash sketched by over 256 chunks) are found, not skipped;
    # 3: a family's leaders are linked through the members they share (a drifting chain is one family); 940a9ef and
    # 1acd88c changed the leader rule within the same unreleased session and kept 3; 4: a large group is taken most
    # widely shared chunk first, and a round checks its members in blocks, ending at a block of which none joins

    tokenizer: str | None = identity(tokenizer_identity, default=None)
    threshold: float = 0.5
    ngram: int = 5
    threads: int | None = not_a_setting(default=None)

    checksummed = True

    def build(self, ctx):
        from ..corpus.tokenizer import load_tokenizer
        from .neardup import NearDupGraph

        graph = NearDupGraph.build(load_store(ctx.input(self.inputs[0])), load_tokenizer(self.tokenizer),
                                   self.threshold, progress=ctx.progress,
                                   threads=self.threads or ctx.threads or None)
        graph.save(ctx.out_dir)
        family = graph.family if graph.family is not None else np.zeros(0, np.int32)
        return {"pairs": graph.num_pairs, "chunks_with_near_copies": int(np.count_nonzero(np.diff(graph.indptr))),
                "near_copy_families": int(np.unique(family[family >= 0]).size),
                "chunks_in_near_copy_families": int((family >= 0).sum()),
                "large_group_members_unexamined": graph.unexamined}


@_dc.dataclass
class DedupStage(WholeStage):
    """--dedup-corpus, before embedding: drop every document that is a near-copy of an earlier kept one.

    inputs: (chunk blocks, consolidated chunks, near-copy graph). Writes the kept chunks as blocks
    (same block numbers, the next map stage's input), as one renumbered table + store, and the
    near-copy graph restricted and renumbered to the kept chunks. Dropped documents are never
    embedded, never an anchor, never a negative."""

    # 2: a family's documents are compared with more kept ones than the earliest: since 940a9ef (same unreleased
    # session, same version) with it and the 4 sharing the most sketched hashes, not with every one sharing a hash
    version = 2
    checksummed = True

    tokenizer: str | None = identity(tokenizer_identity, default=None)
    threshold: float = 0.5

    def build(self, ctx):
        from ..corpus.tokenizer import load_tokenizer
        from .neardup import NearDupGraph, duplicate_documents
        from .framework import block_path

        blocks_dir, chunks_dir, graph_dir = (ctx.input(n) for n in self.inputs)
        store = load_store(chunks_dir)
        graph = NearDupGraph.load(graph_dir, self.threshold)
        removed = duplicate_documents(store, load_tokenizer(self.tokenizer), graph, self.threshold)
        with _atomic_path(ctx.out_dir / "removed_docs.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, removed)
        removed_doc_index = set(np.asarray(store.doc_index)[removed].tolist())
        blocks = int(ctx.input_record(self.inputs[0])["counts"]["blocks"])
        from .writers import write_parquet_atomic

        kept_parts = []
        # the kept rows of each block, ids local again
        for j, t in _renumbered_parts(blocks_dir, blocks, ctx.pipeline.stage(self.inputs[0])):
            keep = ~np.isin(t.column("doc_index").to_numpy(), list(removed_doc_index)) if removed_doc_index else None
            if keep is not None:
                t = t.filter(pa.array(keep))
            t = t.set_column(0, "chunk_id", pa.array(np.arange(t.num_rows, dtype=np.int64)))
            if t.num_rows:
                write_parquet_atomic(t, block_path(ctx.out_dir, j))
                kept_parts.append(j)
        rows = _write_chunk_table((t for _, t in _renumbered_parts(ctx.out_dir, blocks)), ctx.out_dir)
        # the graph on the kept chunks, renumbered
        kept_chunks = ~removed[np.asarray(store.chunk_doc)]
        new_id = np.cumsum(kept_chunks) - 1
        src = np.repeat(np.arange(store.num_chunks, dtype=np.int64), np.diff(graph.indptr))
        ok = kept_chunks[src] & kept_chunks[graph.indices]
        s, d = new_id[src[ok]], new_id[graph.indices[ok]]
        indptr = np.zeros(rows + 1, np.int64)
        np.cumsum(np.bincount(s, minlength=rows), out=indptr[1:])
        family = None
        if graph.family is not None:  # renumbered too: a family is its smallest kept chunk
            old_family, family = graph.family[kept_chunks], np.full(rows, -1, np.int32)
            member = np.flatnonzero(old_family >= 0)
            if member.size:
                _, which = np.unique(old_family[member], return_inverse=True)
                smallest = np.full(int(which.max()) + 1, rows, np.int64)
                np.minimum.at(smallest, which, member)
                family[member] = smallest[which]
        NearDupGraph(indptr, d[np.lexsort((d, s))], self.threshold, family=family).save(ctx.out_dir / "graph")
        return {"blocks": blocks, "documents_removed": int(removed.sum()),
                "chunks_removed": int(store.num_chunks - rows), "chunks": rows}


@_dc.dataclass
class FitEmbedder(WholeStage):
    """The embedder, ready to embed: a lexical one learns its IDF weights from every chunk text once,
    here, and is saved to this folder (every embedding worker loads it instead of fitting again).
    inputs: (chunks,)."""

    embedder: str = DEFAULT_EMBEDDER_SPEC
    threads: int | None = not_a_setting(default=None)

    def build(self, ctx):
        if not str(self.embedder).startswith("hashed-tfidf"):  # nothing to learn: workers load it by name
            return {"saved": False}
        embedder = load_stage_embedder(self.embedder, self.threads or ctx.threads, chunk_texts(ctx.input(self.inputs[0])))
        embedder.save(ctx.out_dir)
        return {"embedder": embedder.name, "saved": True}


@_dc.dataclass
class EmbedStage(MapStage):
    """Chunk block -> its chunks' embeddings (one fixed-size float32 list per row, in row order).

    inputs: (chunk blocks, the FitEmbedder stage)."""

    embedder: str = DEFAULT_EMBEDDER_SPEC
    long_texts: str = "window"  # chunks beyond the model's window are embedded whole (mean of windows)
    # the model folder's default sentence-transformers prompt, put before every chunk (E5's "passage: "); read
    # from the folder, so embeddings cached before it was applied are not taken for ones made with it
    prompt: str = added_setting("")
    batch_size: int = not_a_setting(default=512)
    threads: int | None = not_a_setting(default=None)
    # finished batches are spilled at most this often (a batch of MiniLM on CPU takes longer: every batch is kept;
    # a fast embedder's are kept together, so a flushed append per batch does not slow it down)
    spill_seconds: float = not_a_setting(default=1.0)

    uses_gpu = True
    progress_unit = "chunk"
    # float vectors: a dictionary or zstd only costs time; one row group per block
    parquet_options = {"compression": "none", "use_dictionary": False, "write_statistics": False,
                       "row_group_size": 1 << 20}

    def __post_init__(self):
        from ..mining.embedding import default_prompt_of

        self.prompt = default_prompt_of(self.embedder)

    def setup(self, ctx):
        self._embedder = ready_embedder(self.embedder, ctx.input(self.inputs[1]), self.threads or ctx.threads)

    def spill_key(self):
        return {"batch_size": self.batch_size}  # resumed, the block is cut into the same batches

    def __call__(self, block, spill=None):
        """The block's embeddings, batch by batch. With a `spill` (the executor's, spill.py), the batches an
        interrupted run kept are read back instead of embedded again, and the finished ones are appended
        to it as they are done (at most every `spill_seconds`), so an interruption loses about one batch."""
        import time

        texts = block.column("text").to_pylist()
        dim = int(self._embedder.dim)
        vecs = np.zeros((len(texts), dim), np.float32)
        done, windowed_before = 0, 0
        if spill is not None:
            for state, part in spill.load(dim):
                end, windowed = done + part.shape[0], state.get("windowed", 0)
                if (state.get("rows") != end or end % self.batch_size or end >= len(texts)
                        or not whole(windowed, 0)):  # a crafted "windowed": "x" or -1000000 is not a count
                    done, windowed_before = 0, 0  # not this block's batches (a matching key rules it out): redo it
                    spill.clear()
                    break
                vecs[done:end], done, windowed_before = part, end, windowed
        before = getattr(self._embedder, "windowed_texts", 0)
        saved, since = done, time.monotonic()
        for lo in range(done, len(texts), self.batch_size):
            part = np.asarray(self._embedder.embed(texts[lo:lo + self.batch_size]), np.float32)
            if part.shape != (len(texts[lo:lo + self.batch_size]), dim):
                from ..errors import EmbedderError

                raise EmbedderError(f"embedder {self._embedder.name!r} returned shape {part.shape}, expected "
                                    f"{(len(texts[lo:lo + self.batch_size]), dim)}")
            hi = lo + part.shape[0]
            vecs[lo:hi] = part
            if self.on_rows is not None:
                self.on_rows(part.shape[0])
            if spill is not None and hi < len(texts) and time.monotonic() - since >= self.spill_seconds:
                windowed = windowed_before + getattr(self._embedder, "windowed_texts", 0) - before
                spill.append(vecs[saved:hi], {"rows": hi, "windowed": windowed})
                saved, since = hi, time.monotonic()
        windowed = windowed_before + getattr(self._embedder, "windowed_texts", 0) - before
        table = pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), dim)})
        return table.replace_schema_metadata({b"windowed": str(windowed).encode(),
                                              b"embedder": str(self._embedder.name).encode(),
                                              b"max_length": str(getattr(self._embedder, "max_length", "")).encode(),
                                              b"dtype": str(getattr(self._embedder, "dtype", "") or "").encode()})

    def count(self, output):
        meta = output.schema.metadata or {}
        return {"rows": output.num_rows, "windowed": int(meta.get(b"windowed", b"0")),
                "embedder": meta.get(b"embedder", b"").decode(), "max_length": meta.get(b"max_length", b"").decode(),
                "dtype": meta.get(b"dtype", b"").decode() or None}


@_dc.dataclass
class GatherEmbeddings(WholeStage):
    """Embedding blocks -> embeddings.npy (row = chunk id), its CRC32 in the stage record."""

    def build(self, ctx):
        from ..atomic import file_crc32
        from .framework import block_counts, finished_part

        src = ctx.input(self.inputs[0])
        blocks = int(ctx.input_record(self.inputs[0])["counts"]["blocks"])
        counts = block_counts(src, range(blocks))
        rows = sum(c.get("rows", 0) for c in counts)
        # each block's part, None for a block of no rows (one deleted since embed finished is named, not skipped)
        parts = [finished_part(src, j, ctx.pipeline.stage(self.inputs[0])) for j in range(blocks)]
        dim = None
        for part in parts:
            if part is not None:
                dim = _pq.read_schema(part).field("embedding").type.list_size
                break
        dim = dim or 1
        from ..mining.embed_store import _reserve
        from ..errors import check_free_space

        check_free_space(ctx.out_dir / EMBEDDINGS_FILE, 128 + rows * dim * 4)
        with _atomic_path(ctx.out_dir / EMBEDDINGS_FILE) as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, dim))
            _reserve(tmp)  # a write into a mapped page the disk cannot back would be a SIGBUS
            at = 0
            for part in parts:
                if part is None:
                    continue
                col = read_part(part, columns=["embedding"]).column("embedding").combine_chunks()
                n = len(col)
                arr[at:at + n] = col.flatten().to_numpy().reshape(n, dim)
                at += n
            arr.flush()
            del arr
        named = next((c for c in counts if c.get("embedder")), {})
        return {"rows": rows, "dim": dim, "crc32": file_crc32(ctx.out_dir / EMBEDDINGS_FILE),
                "windowed": sum(c.get("windowed", 0) for c in counts), "embedder": named.get("embedder"),
                "max_length": named.get("max_length") or None, "dtype": named.get("dtype")}


# Exact search costs O(corpus) per anchor; the HNSW route costs a build (~4 ms per chunk on one core of
# the 2-core dev machine) plus ~1 ms per chunk of planning. Measured crossover: about 50k chunks
# (docs/scale.md, "Exact search batched").
EXACT_SEARCH_MAX_CHUNKS = 50_000


@_dc.dataclass
class IndexStage(WholeStage):
    """The usearch HNSW index over the embeddings, for corpora above `exact_max` chunks (below it,
    planning searches exactly and this stage writes nothing). inputs: (embeddings, chunks, embedder).

    A multi-threaded HNSW build is not reproducible: the graph depends on which thread inserted what
    first, so two builds of the same vectors answer some searches differently and the plans differ.
    Everything after the index is a function of it (a rerun with `--index DIR/index` gives the same
    bytes). `reproducible` builds on one thread instead, which gives the same graph every time, at the
    cost of the build's parallelism; `shards` > 1 builds that many shards, each on one thread, several
    at once: reproducible and parallel, at the cost of searching every shard (index_shards.py)."""

    embedder: str = DEFAULT_EMBEDDER_SPEC
    exact_max: int = EXACT_SEARCH_MAX_CHUNKS
    reproducible: bool = added_setting(False)
    shards: int = added_setting(1)
    threads: int | None = not_a_setting(default=None)

    def build(self, ctx):
        emb_dir, chunks_dir, embedder_dir = (ctx.input(n) for n in self.inputs)
        store = load_store(chunks_dir)
        if store.num_chunks <= self.exact_max:
            return {"search": "exact"}
        from ..mining.index import ChunkIndex
        from ..mining.index_job import read_chunk_metadata

        vectors = open_vectors(emb_dir, record=ctx.input_record(self.inputs[0]))
        embedder = ready_embedder(self.embedder, embedder_dir, self.threads or ctx.threads)
        meta = read_chunk_metadata(chunks_dir / CHUNKS_FILE)
        if hasattr(embedder, "save"):
            embedder.save(ctx.out_dir)
        index = ChunkIndex.build(vectors, meta.column("chunk_id").to_numpy(), meta.column("doc_index").to_numpy(),
                                 text_hashes=meta.column("text_hash").to_numpy(), metadata=meta, embedder=embedder,
                                 threads=1 if self.reproducible else (self.threads or ctx.threads or 0),
                                 shards=self.shards, progress=ctx.progress)
        index.info["chunks_path"] = str((chunks_dir / CHUNKS_FILE).resolve())
        index.info["embeddings_path"] = str((emb_dir / EMBEDDINGS_FILE).resolve())
        index.save(ctx.out_dir)
        return {"search": "usearch", "chunks": len(index), "reproducible": self.reproducible or self.shards > 1,
                "shards": self.shards}


@_dc.dataclass
class UnitsStage(WholeStage):
    """What each output row is built from, in blocks of `shard_size` rows: anchor documents (nextlong,
    knn: a seeded permutation), ordered document groups (quest, litelong; standard and iclm with overflow "drop") or
    ordered chunk groups (standard and iclm with overflow "carry"). The blocks are the output shards.
    inputs: (chunks, embeddings or nothing)."""

    method: str = "nextlong"
    seed: int = 0
    target_length: int = 131072
    tokenizer: str | None = identity(tokenizer_identity, default=None)
    shard_size: int = 64
    doc_embedding: str = "mean"
    knn_neighbors: int = 32
    quest_keywords: int = 3
    quest_max_repeats: int = 4
    # standard, iclm: the rest of a document cut at L goes on in the next unit ("carry") or is dropped
    # ("drop", the only packing before 2026-12-07, as None: left out of the fingerprint); the pipeline passes it
    # for standard and iclm only
    overflow: str | None = added_setting(None)
    # litelong: its topics, one sample each (topics.py); recorded as their count and hash, so another topics file
    # is not served from this stage; empty (the other methods) it is left out of the fingerprint
    topics: tuple = added_setting((), identity=topics_identity)
    threads: int | None = not_a_setting(default=None)

    version = 2  # no unit is built from a blank document
    flags = {"topics": "--topics"}

    def build(self, ctx):
        from .baselines import (doc_lengths, document_keywords, document_vectors, draw_keys, iclm_order, knn_graph,
                                litelong_contexts, pack_chunks, pack_stream, quest_contexts, standard_order)
        from .framework import block_path
        from .writers import write_parquet_atomic

        chunks_dir = ctx.input(self.inputs[0])
        store = load_store(chunks_dir)
        blank = blank_documents(chunks_dir, store)

        def with_text(order: np.ndarray) -> np.ndarray:  # the order without the blank documents
            return order[~np.isin(order, blank)] if blank.size else order

        counts: dict = {"leftover_dropped": 0, "blank_documents_skipped": int(blank.size)}
        if self.method in ("nextlong", "knn"):
            units = pa.table({"anchor_doc": with_text(np.random.default_rng(self.seed).permutation(store.num_docs)
                                                      .astype(np.int64))})
        elif self.method == "quest":
            texts = document_texts(chunks_dir, store)
            keys = draw_keys(document_keywords(texts, top_k=self.quest_keywords), self.seed)
            for d in blank.tolist():  # no group holds a blank document
                keys[d] = None
            groups, group_keys, quest = quest_contexts(keys, doc_lengths(store, NO_SEPARATOR.size), self.target_length,
                                                       self.seed, max_repeats=self.quest_max_repeats)
            quest["keywords_per_document"] = self.quest_keywords
            counts["quest"] = quest
            units = pa.table({"docs": pa.array(groups, pa.list_(pa.int64())),
                              "group_key": pa.array(group_keys, pa.string())})
        elif self.method == "litelong":
            groups, group_keys, counts["litelong"] = litelong_contexts(
                iter_document_texts(chunks_dir, store), self.topics, doc_lengths(store, NO_SEPARATOR.size),
                self.target_length, exclude=blank, threads=self.threads or ctx.threads or 0)
            units = pa.table({"docs": pa.array(groups, pa.list_(pa.int64())),
                              "group_key": pa.array(group_keys, pa.string())})
        else:
            if self.method == "standard":
                order = standard_order(store.num_docs, self.seed)
            else:  # iclm
                vectors = open_vectors(ctx.input(self.inputs[1]), record=ctx.input_record(self.inputs[1]))
                order = iclm_order(knn_graph(document_vectors(store, vectors, self.doc_embedding), self.knn_neighbors),
                                   self.seed)
            order = with_text(np.asarray(order, np.int64))
            if self.overflow != "carry":  # "drop", or None: a stage made before the setting existed packed so
                groups, leftover = pack_stream(order, doc_lengths(store, NO_SEPARATOR.size), self.target_length)
                units = pa.table({"docs": pa.array(groups, pa.list_(pa.int64()))})
            else:  # a unit lists its chunks: its first and last documents may be pieces
                groups, leftover = pack_chunks(order, store, NO_SEPARATOR.size, self.target_length)
                units = pa.table({"chunks": pa.array(groups, pa.list_(pa.int64()))})
            counts["leftover_dropped"] = len(leftover)
        blocks = 0
        for blocks, lo in enumerate(range(0, units.num_rows, self.shard_size), start=1):
            write_parquet_atomic(units.slice(lo, self.shard_size), block_path(ctx.out_dir, blocks - 1))
        counts.update(blocks=blocks, units=units.num_rows)
        return counts


@_dc.dataclass
class PlanStage(MapStage):
    """Units block -> plan table (PLAN_SCHEMA): which chunks make each long document, or why not.

    inputs: (units, chunks, embeddings, index, near-copy graph) - absent ones are None names."""

    version = 2  # 2: a chunk of whitespace only is never a negative (artifacts.empty_chunks)
    progress_unit = "unit"  # one synthesis unit (anchor document or document group) per input row
    method: str = "nextlong"
    target_length: int = 131072
    tokenizer: str | None = identity(tokenizer_identity, default=None)
    negatives: str = "fixed-k"
    chunk_size: int = 2048
    chunk_unit: str = "chars"
    chars_per_token: float | None = None  # None: measured on the chunks
    overshoot: float = 1.5
    k_rounding: str = "ceil"
    exclude_duplicates: bool = True
    max_candidates: int = 4096
    near_dup_threshold: float = 0.5
    long_docs: str = "keep"
    doc_embedding: str = "mean"
    knn_neighbors: int = 32
    verify: bool = not_a_setting(default=True)
    threads: int | None = not_a_setting(default=None)  # BLAS threads for the batched exact search

    def setup(self, ctx):
        from ..errors import CorruptFileError
        from .negatives import ExactSearcher, IndexSearcher

        self._threads = self.threads or ctx.threads or None

        units_name, chunks_name, emb_name, index_name, graph_name = self.inputs
        self._store = store = load_store(ctx.input(chunks_name))
        self._sep_len = NO_SEPARATOR.size
        self._cpt = self.chars_per_token or store.chars_per_token()
        if self.method == "nextlong":
            self._vectors = open_vectors(ctx.input(emb_name), self.verify, ctx.input_record(emb_name))
            if self._vectors.shape[0] != store.num_chunks:
                raise CorruptFileError(f"{ctx.input(emb_name) / EMBEDDINGS_FILE}: {self._vectors.shape[0]} rows for "
                                       f"{store.num_chunks} chunks; delete the folder to embed again")
            index_dir = ctx.input(index_name)
            from ..mining.partitioned import INFO_FILE as NEIGHBOURS_INFO

            if index_name == "neighbour_lists" or (index_dir / NEIGHBOURS_INFO).exists():  # --mining partitioned
                from ..mining.partitioned import NeighbourLists

                self._searcher = NeighbourLists(index_dir, self._vectors, verify=self.verify)
                self._doc_label = None
            elif (index_dir / "index.json").exists():
                from ..mining.index import ChunkIndex

                self._searcher = IndexSearcher(ChunkIndex.view(index_dir, verify=self.verify), store.num_chunks)
                self._doc_label = lambda d: int(store.doc_index[d])
            else:  # a small corpus (exact search): its vectors are checked whole, a NaN named here
                bad = np.flatnonzero(~np.isfinite(np.asarray(self._vectors)).all(axis=1))
                if bad.size:
                    raise CorruptFileError(f"{ctx.input(emb_name) / EMBEDDINGS_FILE}: the embedding of chunk "
                                           f"{int(bad[0])} is not finite: delete the folder to embed again")
                self._searcher = ExactSearcher(self._vectors)
                self._doc_label = None
            empty = empty_chunks(ctx.input(chunks_name), store)  # whitespace: never a negative
            self._empty = bytearray(empty.astype(np.uint8).tobytes()) if empty.any() else None
            self._near_dup = None
            if graph_name is not None and self.near_dup_threshold > 0:
                from .neardup import NearDupFilter, NearDupGraph

                gdir = ctx.input(graph_name)
                self._near_dup = NearDupFilter(NearDupGraph.load(gdir / "graph" if (gdir / "graph").is_dir() else gdir,
                                                                 self.near_dup_threshold))
        elif self.method == "knn":
            from .baselines import doc_lengths, document_vectors

            vectors = open_vectors(ctx.input(emb_name), self.verify, ctx.input_record(emb_name))
            self._dvec = document_vectors(store, vectors, self.doc_embedding)
            self._doc_searcher = ExactSearcher(self._dvec)
            self._lengths = doc_lengths(store, self._sep_len)

    def __call__(self, block):
        if self.method == "nextlong":
            with blas_threads(1):  # small per-anchor products: BLAS threads only contend
                return plan_nextlong_batch(
                    block, store=self._store, searcher=self._searcher, chunk_vectors=self._vectors,
                    target_length=self.target_length, sep_len=self._sep_len, negatives=self.negatives,
                    chunk_size=self.chunk_size, chunk_unit=self.chunk_unit, chars_per_token=self._cpt,
                    overshoot=self.overshoot, k_rounding=self.k_rounding, exclude_duplicates=self.exclude_duplicates,
                    max_candidates=self.max_candidates, near_dup=self._near_dup, long_docs=self.long_docs,
                    doc_label=self._doc_label, search_threads=self._threads, empty=self._empty)
        if self.method == "knn":
            with blas_threads(1):
                return plan_knn_batch(block, store=self._store, doc_searcher=self._doc_searcher,
                                      doc_vectors=self._dvec, doc_lengths=self._lengths,
                                      target_length=self.target_length, first_width=self.knn_neighbors)
        return plan_groups_batch(block, store=self._store)

    def count(self, output):
        return plan_counts(output)


def plan_counts(plan_table: pa.Table) -> dict:
    """Statistics of one plan block (summed over blocks into the manifest)."""
    import re
    from collections import Counter

    ok = plan_table.column("ok").to_pylist()
    reasons = Counter(re.sub(r"k = \d+ ", "k ", r) for r, good in zip(plan_table.column("reason").to_pylist(), ok)
                      if not good)
    negs = [n for row, good in zip(plan_table.column("negatives_per_meta_chunk").to_pylist(), ok) if good
            for n in (row or [])]
    sims = [s for row, good in zip(plan_table.column("negative_sims").to_pylist(), ok) if good for s in (row or [])]
    planned_anchors = sum(sum(1 for r in (row or []) if r == 0)
                          for row, good in zip(plan_table.column("roles").to_pylist(), ok) if good)
    return {"rows": plan_table.num_rows, "tried": len(ok), "built": int(sum(ok)), "dropped": len(ok) - int(sum(ok)),
            "drop_reasons": dict(reasons), "meta_chunks": len(negs), "negatives": int(sum(negs)),
            "negative_sim_sum": float(sum(sims)), "negative_sim_n": len(sims),
            "near_dup_rejected": int(sum(n or 0 for n in plan_table.column("near_dup_rejected").to_pylist())),
            "already_long": int(sum(bool(a) for a, good in zip(plan_table.column("already_long").to_pylist(), ok)
                                    if good)),
            "anchor_meta_chunks": int(planned_anchors),
            "searched_again": (int(sum(bool(a) for a in plan_table.column("searched_again").to_pylist()))
                               if "searched_again" in plan_table.column_names else 0)}


@_dc.dataclass
class AssembleStage(MapStage):
    """Plan block -> output rows of exactly L tokens (OUTPUT_SCHEMA). inputs: (plan, chunks)."""

    version = 2  # its counts split the dependency distance of rows with negatives from already-long rows'
    method: str = "nextlong"
    target_length: int = 131072
    tokenizer: str | None = identity(tokenizer_identity, default=None)

    def setup(self, ctx):
        self._store = load_store(ctx.input(self.inputs[1]))
        self._sep_ids = NO_SEPARATOR

    def __call__(self, block):
        return assemble_batch(block, store=self._store, sep_ids=self._sep_ids, target_length=self.target_length,
                              method=self.method)

    def count(self, output):
        return assemble_counts(output)


def assemble_counts(output: pa.Table) -> dict:
    """Statistics of output rows: dependency distance between consecutive meta-chunks, over all rows and over
    the rows that hold negatives (an already-long document kept whole has its meta-chunks adjacent, distance 0:
    counted with the others it pulls the mean towards the source text's, away from what the negatives add)."""
    dist_sum, dist_n, kept, ext_sum, ext_n = 0, 0, 0, 0, 0
    for segs in output.column("segments").to_pylist():
        prev, row_sum, row_n, negatives = None, 0, 0, False
        for seg in segs:
            if seg["role"] != "anchor":
                negatives = negatives or seg["role"] == "negative"
                continue
            kept += 1
            if (prev is not None and prev["doc_id"] == seg["doc_id"]
                    and seg["chunk_index"] == prev["chunk_index"] + 1):
                row_sum += seg["start"] - prev["end"]
                row_n += 1
            prev = seg
        dist_sum, dist_n = dist_sum + row_sum, dist_n + row_n
        if negatives:
            ext_sum, ext_n = ext_sum + row_sum, ext_n + row_n
    return {"rows": output.num_rows, "dependency_distance_sum": int(dist_sum), "dependency_distance_n": dist_n,
            "dependency_distance_sum_with_negatives": int(ext_sum), "dependency_distance_n_with_negatives": ext_n,
            "anchor_meta_chunks_kept": kept}


@_dc.dataclass
class CutStage(WholeStage):
    """The output: the first `rows` rows of the assembled blocks in block order (all when None), one
    Parquet shard per block (a whole block is hard-linked, the cut one rewritten). Its record lists the
    blocks used, so statistics cover exactly them."""

    rows: int | None = None

    remake_on_change = True  # another --num-samples only re-cuts

    @property
    def cut_rows(self):
        return self.rows

    def build(self, ctx):
        import os

        from .framework import block_numbers, block_path
        from .writers import write_parquet_atomic

        src = ctx.input(self.inputs[0])
        for stale in list(ctx.out_dir.glob("part-*.parquet")):
            stale.unlink()
        taken, used, partial = 0, [], None
        # a finished assemble stage: each of its blocks (a record deleted since is named by recorded_rows, never
        # skipped as a block of no rows); one the cut stopped: the blocks it ran, with no gap before the cut
        finished = ctx.input_record(self.inputs[0])
        for j in range(int(finished["counts"]["blocks"])) if finished else block_numbers(src):
            if self.rows is not None and taken >= self.rows:
                break
            n = recorded_rows(src, j)
            used.append(j)
            if n == 0:
                continue
            part, target = block_path(src, j), block_path(ctx.out_dir, j)
            check_part_rows(part, n)
            if self.rows is None or taken + n <= self.rows:
                try:
                    os.link(part, target)
                except OSError:
                    import shutil

                    shutil.copyfile(part, target)
                taken += n
            else:
                from .assemble import OUTPUT_SCHEMA

                # cast back to the canonical schema: Parquet renames list items, and the stored Arrow
                # schema must be the one a fresh write has (byte-identical shards)
                write_parquet_atomic(read_part(part).slice(0, self.rows - taken).cast(OUTPUT_SCHEMA), target)
                partial = {"block": j, "rows": self.rows - taken}
                taken = self.rows
        return {"rows": taken, "blocks_used": used, "partial_block": partial}
