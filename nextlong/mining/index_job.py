"""The `nextlong index` job: a chunk table -> its embeddings (resumable) -> a saved HNSW index folder
(ChunkIndex) with its manifest."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .. import checked_parquet
from ..errors import CorpusError, UsageError
from .index import DEFAULT_CONNECTIVITY, DEFAULT_EXPANSION_ADD, DEFAULT_EXPANSION_SEARCH, ChunkIndex
from .index_folder import DTYPES, EMBEDDINGS_FILE, MANIFEST_FILE


_META_COLUMNS = ("chunk_id", "doc_index", "doc_id", "chunk_index", "num_tokens", "text_hash")


def read_chunk_metadata(chunks_path):
    """The chunk table's columns other than text (a pyarrow Table), checked for what the index needs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(chunks_path)
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise CorpusError(path, f"not a readable Parquet chunk table ({exc})") from exc
    missing = [c for c in ("chunk_id", "doc_index", "text_hash", "text") if c not in schema.names]
    if missing:
        raise CorpusError(path, f"chunk table lacks column(s) {missing} (expected nextlong.schema.CHUNK_SCHEMA)")
    try:
        meta = checked_parquet.read_table(path, columns=[c for c in _META_COLUMNS if c in schema.names])
    except (OSError, pa.ArrowException) as exc:
        from ..corpus.reader import corrupt_parquet

        raise corrupt_parquet(path, exc, "in its metadata columns") from None
    ids = meta.column("chunk_id").to_numpy()
    bad = np.flatnonzero(ids != np.arange(len(ids)))
    if len(bad):
        raise CorpusError(path, f"chunk_id must equal the row number; row {bad[0]} has chunk_id {ids[bad[0]]}",
                          record=int(bad[0]))
    return meta


def build_index_from_chunks(
    chunks_path,
    out_dir,
    embedder=None,
    *,
    dtype: str = "f16",
    connectivity: int = DEFAULT_CONNECTIVITY,
    expansion_add: int = DEFAULT_EXPANSION_ADD,
    expansion_search: int = DEFAULT_EXPANSION_SEARCH,
    batch_size: int = 512,
    threads: int = 0,
    progress: bool = True,
    embeddings_path=None,
) -> ChunkIndex:
    """Embed a chunk table (resumable), build the HNSW index, save it with metadata and a manifest.

    `embedder`: an Embedder, a name/path for load_embedder, or None for the default MiniLM. A lexical
    embedder that has not been fitted learns its IDF from these chunks first (saved in `out_dir`).
    Documents are excluded by doc_index. Returns the built ChunkIndex (saved in `out_dir`).
    """
    from .embed_store import _Texts, embed_chunks
    from .embedding import HashedLexicalEmbedder, load_embedder
    from ..locking import output_lock
    from ..manifest import failure_recorded, write_manifest, write_running_manifest

    chunks_path = Path(chunks_path)
    out_dir = Path(out_dir)
    # everything that can be checked is checked before the embedding pass (hours on a real corpus)
    if DTYPES.get(str(dtype)) is None:
        raise UsageError(f"dtype must be one of f16, i8, f32, bf16; got {dtype!r}")
    for name, value in (("batch_size", batch_size), ("connectivity", connectivity),
                        ("expansion_add", expansion_add), ("expansion_search", expansion_search)):
        if value < 1:
            raise UsageError(f"{name} must be positive, got {value}")
    if threads < 0:
        raise UsageError(f"threads must be 0 (all cores) or positive, got {threads}")
    meta = read_chunk_metadata(chunks_path)
    embeddings_path = Path(embeddings_path or out_dir / EMBEDDINGS_FILE)
    if embeddings_path.is_dir():  # else its lock below would say "give --out a file name"
        raise UsageError(f"{embeddings_path}: is a folder, where --embeddings names the .npy file to write; give "
                         "--embeddings a file name")
    # the locks first: a second run into out_dir stops at once, not after loading a model (10 s for MiniLM);
    # a refused run still leaves no folder (the lock prunes what it created). The embeddings file has its own:
    # two runs into other folders given the same --embeddings memory-mapped it both, and the second one's
    # new file cut the first's map short (a Bus error) and left a file of its rows under the first's record
    with output_lock(out_dir, "index", file=False), output_lock(embeddings_path, "index", file=True), \
            failure_recorded(out_dir / MANIFEST_FILE):
        if embedder is None or isinstance(embedder, (str, os.PathLike)):
            embedder = load_embedder(embedder, **({"threads": threads} if threads else {}))
        lexical = isinstance(embedder, HashedLexicalEmbedder)
        settings = {"chunks": str(chunks_path.resolve()), "embedder": embedder.name, "dtype": str(dtype),
                    "connectivity": connectivity, "expansion_add": expansion_add,
                    "expansion_search": expansion_search, "batch_size": batch_size, "threads": threads}
        # nothing in out_dir changes before embed_chunks has accepted (or refused) the embeddings file
        # there: a refused re-run must leave the index it refuses to overwrite as it was
        timings = {}
        if lexical and not embedder.num_docs:
            t = time.perf_counter()
            embedder.fit(text for _, batch in _Texts(chunks_path).slices(0, batch_size) for text in batch)
            timings["fit_seconds"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        emb = embed_chunks(chunks_path, embedder, embeddings_path, batch_size=batch_size, progress=progress,
                           on_accepted=lambda: write_running_manifest(out_dir / MANIFEST_FILE, command="index",
                                                                      settings=settings))
        timings["embed_seconds"] = round(time.perf_counter() - t, 3)
        index = ChunkIndex.build(
            emb, meta.column("chunk_id").to_numpy(), meta.column("doc_index").to_numpy(),
            text_hashes=meta.column("text_hash").to_numpy(), metadata=meta, embedder=embedder, dtype=dtype,
            connectivity=connectivity, expansion_add=expansion_add, expansion_search=expansion_search,
            threads=threads, progress=progress,
        )
        timings["index_seconds"] = index.info["build_seconds"]
        index.info["chunks_path"] = str(chunks_path.resolve())
        index.info["embeddings_path"] = str(embeddings_path.resolve())
        if lexical:  # the query embedder's state, beside the index it belongs to
            embedder.save(out_dir)
        index.save(out_dir)
        write_manifest(out_dir / MANIFEST_FILE, command="index", settings={**settings, "dtype": index.info["dtype"]},
                       statistics={"chunks": len(index), "documents": index.info["counts"]["documents"], **timings})
    return index
