"""The NExtLong meta-chunker (method §1.1) over batches and whole corpora; the C++ engine does the work.

A document is split on "\\n" into paragraphs; consecutive paragraphs are grouped greedily while the
running length stays within `max_len`; a paragraph that would overflow starts a new group, and a
paragraph longer than `max_len` is a group of its own (never split further). Groups are re-joined
with "\\n", so "\\n".join(chunks of a document) == the document, exactly ("\\r\\n" files keep their
"\\r" at paragraph ends). Conventions, as in the reference code unless said otherwise:
  * length unit "chars" = Unicode code points (Python's len); "tokens" = ids of the given tokenizer,
    counted paragraph by paragraph;
  * the "\\n" joining two paragraphs is NOT counted (count_newlines=True counts each as 1 unit);
  * an empty document yields one empty chunk (span 0..0), so every document has a chunk and the
    round trip holds;
  * char_start/char_end are code-point offsets into the document, end exclusive;
  * text_hash is XXH64 (seed 0) of the chunk's UTF-8 bytes, stable across runs and platforms;
  * num_tokens (and input_ids with with_ids=True) come from tokenizing each chunk on its own, so
    num_tokens == len(input_ids); they are null without a tokenizer. (With unit="tokens" the
    paragraphs are counted first, then each chunk is tokenized: tokens can straddle a "\n", so a
    chunk's count is not the sum of its paragraphs'.)

`chunk_documents` is a pure function from a batch to a table (no global state), so it can run on
Ray Data or any other batch executor. This module also holds the whole-document tokenize pipeline,
which shares the reader, progress and atomic-output plumbing.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .reader import CorpusReader, prefetch, string_layout
from .. import checked_parquet
from ..errors import UsageError, checked_int, checked_texts
from ..locking import output_lock
from ..schema import CHUNK_INPUT_IDS_FIELD, CHUNK_SCHEMA, TOKENS_SCHEMA

UNITS = ("chars", "tokens")
# Parquet column statistics only where readers filter on them (ids), not on text or token lists.
_STATISTICS_COLUMNS = ["chunk_id", "doc_index", "chunk_index"]
# Pipelines read in batches of at most this many bytes of text, so the stages overlap.
_PIPELINE_BATCH_BYTES = 4 << 20


class MetaChunk(NamedTuple):
    """One row of a chunk table (CHUNK_SCHEMA)."""

    chunk_id: int
    doc_index: int
    doc_id: str
    chunk_index: int
    char_start: int
    char_end: int
    num_tokens: int | None
    text_hash: int
    text: str


def chunk_table_schema(with_ids: bool) -> pa.Schema:
    return CHUNK_SCHEMA.append(CHUNK_INPUT_IDS_FIELD) if with_ids else CHUNK_SCHEMA


def resolve_tokenizer(tokenizer) -> tuple[Any, Any]:
    """(tokenizer object or None, native TextEncoder or None) from a Tokenizer, a native encoder,
    or a spec that nextlong.corpus.tokenizer.load_tokenizer understands ("cl100k_base", a tokenizer.json path)."""
    if tokenizer is None:
        return None, None
    from .. import _native

    if isinstance(tokenizer, _native.TextEncoder):
        return tokenizer, tokenizer
    if hasattr(tokenizer, "native"):
        return tokenizer, tokenizer.native
    if isinstance(tokenizer, (str, os.PathLike)):
        from .tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer)
        return tok, tok.native
    raise TypeError(f"tokenizer must be a nextlong Tokenizer, a native TextEncoder or a spec string, got {type(tokenizer)!r}")


def _threads(num_threads: int | None) -> int:
    """None or 0: the cores this process may use (a container's CPU set, not the host's count)."""
    checked_int(num_threads, "num_threads", none=True)
    if num_threads is not None and num_threads < 0:
        raise UsageError(f"--threads must be 0 (all cores) or a positive number of threads, got {num_threads}")
    if not num_threads:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    return int(num_threads)


def _check_unit(unit: str, encoder, max_len: int) -> None:
    if unit not in UNITS:
        raise UsageError(f"unit must be one of {UNITS}, got {unit!r}")
    if unit == "tokens" and encoder is None:
        raise UsageError('unit="tokens" (--unit tokens) needs a tokenizer')
    checked_int(max_len, "max_len")
    if max_len < 1:
        raise UsageError(f"max_len (--max-len) must be positive, got {max_len}")


def _as_batch(batch_or_texts) -> pa.RecordBatch | pa.Table:
    if isinstance(batch_or_texts, (pa.RecordBatch, pa.Table)):
        names = batch_or_texts.schema.names
        if "text" not in names:
            raise UsageError("chunk_documents: the batch has no 'text' column")
        n = batch_or_texts.num_rows
        cols = {
            "doc_index": batch_or_texts.column("doc_index") if "doc_index" in names else pa.array(np.arange(n, dtype=np.int64)),
            "doc_id": batch_or_texts.column("doc_id") if "doc_id" in names else pa.array([str(i) for i in range(n)], pa.string()),
            "text": batch_or_texts.column("text"),
        }
        return pa.table(cols)
    texts = list(checked_texts(batch_or_texts, "chunk_documents"))
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("chunk_documents takes a pyarrow batch/table with a 'text' column or a sequence of str")
    n = len(texts)
    return pa.table(
        {
            "doc_index": pa.array(np.arange(n, dtype=np.int64)),
            "doc_id": pa.array([str(i) for i in range(n)], pa.string()),
            "text": pa.array(texts, pa.string()),
        }
    )


def _string_array(offsets: np.ndarray, data: np.ndarray) -> pa.Array:
    return pa.Array.from_buffers(pa.string(), len(offsets) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def chunk_documents(
    batch_or_texts,
    *,
    max_len: int = 2048,
    unit: str = "chars",
    tokenizer=None,
    with_ids: bool = False,
    num_threads: int | None = None,
    first_chunk_id: int = 0,
    count_newlines: bool = False,
) -> pa.Table:
    """Meta-chunks a batch of documents into a chunk table (CHUNK_SCHEMA, plus `input_ids` when
    with_ids). Input: a pyarrow batch/table with `text` (and optionally doc_index, doc_id), or a
    sequence of str (doc_index = position, doc_id = str(position)). chunk_id counts from first_chunk_id."""
    from .. import _native

    _, encoder = resolve_tokenizer(tokenizer)
    _check_unit(unit, encoder, max_len)
    if with_ids and encoder is None:
        raise UsageError("with_ids=True needs a tokenizer")
    table = _as_batch(batch_or_texts)
    offsets, data = string_layout(table.column("text"))
    cols = _native.chunk_batch(
        offsets, data, int(max_len), encoder if unit == "tokens" else None, bool(count_newlines),
        encoder, bool(with_ids), _threads(num_threads),
    )
    rows = pa.array(cols["doc_row"])
    n = len(cols["doc_row"])
    num_tokens = cols["num_tokens"]
    arrays = [
        pa.array(np.arange(first_chunk_id, first_chunk_id + n, dtype=np.int64)),
        table.column("doc_index").combine_chunks().cast(pa.int64()).take(rows),
        table.column("doc_id").combine_chunks().cast(pa.string()).take(rows),
        pa.array(cols["chunk_index"]),
        pa.array(cols["char_start"]),
        pa.array(cols["char_end"]),
        pa.array(num_tokens) if num_tokens is not None else pa.nulls(n, pa.int32()),
        pa.array(cols["text_hash"]),
        _string_array(cols["text_offsets"], cols["text_data"]),
    ]
    if with_ids:
        arrays.append(pa.ListArray.from_arrays(pa.array(cols["ids_offsets"]), pa.array(cols["ids"])))
    return pa.Table.from_arrays(arrays, schema=chunk_table_schema(with_ids))


def split_meta_chunks(
    text: str, max_len: int = 2048, unit: str = "chars", tokenizer=None, count_newlines: bool = False
) -> list[tuple[int, int]]:
    """Code-point spans (start, end) of one document's meta-chunks."""
    table = chunk_documents([text], max_len=max_len, unit=unit, tokenizer=tokenizer, num_threads=1,
                            count_newlines=count_newlines)
    return list(zip(table.column("char_start").to_pylist(), table.column("char_end").to_pylist()))


def tokenize_documents(batch_or_texts, *, tokenizer, num_threads: int | None = None) -> pa.Table:
    """Token ids of each whole document (TOKENS_SCHEMA), tokenized on `num_threads` threads."""
    from .. import _native

    _, encoder = resolve_tokenizer(tokenizer)
    if encoder is None:
        raise UsageError("tokenize_documents needs a tokenizer")
    table = _as_batch(batch_or_texts)
    offsets, data = string_layout(table.column("text"))
    ids_offsets, ids = _native.tokenize_batch(offsets, data, encoder, _threads(num_threads))
    return pa.Table.from_arrays(
        [
            table.column("doc_index").combine_chunks().cast(pa.int64()),
            table.column("doc_id").combine_chunks().cast(pa.string()),
            pa.ListArray.from_arrays(pa.array(ids_offsets), pa.array(ids)),
        ],
        schema=TOKENS_SCHEMA,
    )


# -- whole-corpus pipelines ----------------------------------------------------------------------


def _run_pipeline(
    reader: CorpusReader,
    out_path,
    schema: pa.Schema,
    transform: Callable[[pa.RecordBatch], pa.Table],
    count: Callable[[pa.Table], dict],
    *,
    desc: str,
    progress: bool,
) -> dict:
    """Streams the reader's batches through `transform` into one Parquet file, written under a
    temporary name and renamed at the end (an error leaves nothing under `out_path`)."""
    from tqdm.auto import tqdm

    from ..atomic import atomic_path

    totals: dict[str, int] = {}
    start = time.perf_counter()
    # Three stages overlap (the C++ reader, chunker and the Parquet writer all release the GIL):
    # reading on one thread, chunking/tokenizing on another, writing here.
    staged = prefetch(((batch.num_rows, transform(batch)) for batch in prefetch(reader.batches())))
    with atomic_path(out_path) as tmp, tqdm(desc=desc, unit="doc", unit_scale=True, disable=not progress) as bar:
        with checked_parquet.writer(tmp, schema, use_dictionary=["doc_id"],
                                    write_statistics=_STATISTICS_COLUMNS) as writer:
            for num_docs, table in staged:
                writer.write_table(table)
                for key, value in count(table).items():
                    totals[key] = totals.get(key, 0) + value
                bar.update(num_docs)
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{reader.stats.bytes / elapsed / 1e6:.1f} MB/s", refresh=False)
    elapsed = time.perf_counter() - start
    stats = reader.stats.as_dict()
    stats.update(totals)
    stats["seconds"] = round(elapsed, 3)
    stats["mb_per_s"] = round(stats["bytes"] / max(elapsed, 1e-9) / 1e6, 3)
    return stats


def _tokenizer_info(tok) -> dict | None:
    if tok is None:
        return None
    return {"name": getattr(tok, "name", type(tok).__name__), "fingerprint": getattr(tok, "fingerprint", None)}


def chunk_corpus(
    input,
    out_path,
    *,
    max_len: int = 2048,
    unit: str = "chars",
    tokenizer=None,
    with_ids: bool = False,
    text_field: str = "text",
    id_field: str | None = None,
    format: str | None = None,
    on_error: str = "raise",
    num_threads: int | None = None,
    batch_size: int = 1024,
    count_newlines: bool = False,
    progress: bool = True,
) -> dict:
    """Chunks a whole corpus into a Parquet chunk table at `out_path` (plus `<out>.manifest.json`).
    Returns the statistics: files, documents, bytes, skipped, chunks, tokens, seconds, mb_per_s."""
    from ..manifest import running_beside_output

    tok, encoder = resolve_tokenizer(tokenizer)
    _check_unit(unit, encoder, max_len)
    if with_ids and encoder is None:
        raise UsageError("with_ids=True (--with-ids) needs a tokenizer")
    _threads(num_threads)
    reader = CorpusReader(input, text_field=text_field, id_field=id_field, format=format, on_error=on_error,
                          batch_size=batch_size, batch_bytes=_PIPELINE_BATCH_BYTES)
    next_id = 0

    def transform(batch):
        nonlocal next_id
        table = chunk_documents(batch, max_len=max_len, unit=unit, tokenizer=encoder, with_ids=with_ids,
                                num_threads=num_threads, first_chunk_id=next_id, count_newlines=count_newlines)
        next_id += table.num_rows
        return table

    def count(table):
        tokens = table.column("num_tokens")
        return {"chunks": table.num_rows, "tokens": int(pc.sum(tokens).as_py() or 0) if encoder else 0}

    settings = {
        "input": [str(p) for p in input] if isinstance(input, (list, tuple)) else str(input),
        "max_len": max_len, "unit": unit, "count_newlines": count_newlines, "with_ids": with_ids,
        "text_field": text_field, "id_field": id_field, "format": format, "on_error": on_error,
        "tokenizer": _tokenizer_info(tok), "text_hash": "xxh64-seed0-utf8",
    }
    with output_lock(out_path, "chunk", file=True):
        with running_beside_output(f"{out_path}.manifest.json", output=out_path, command="chunk",
                                   settings=settings) as finish:
            stats = _run_pipeline(reader, out_path, chunk_table_schema(with_ids), transform, count,
                                  desc="chunk", progress=progress)
            stats.setdefault("chunks", 0)
            stats.setdefault("tokens", 0)
            finish(stats)
    return stats


def tokenize_corpus(
    input,
    out_path,
    *,
    tokenizer,
    text_field: str = "text",
    id_field: str | None = None,
    format: str | None = None,
    on_error: str = "raise",
    num_threads: int | None = None,
    batch_size: int = 1024,
    progress: bool = True,
) -> dict:
    """Tokenizes every whole document of a corpus into a Parquet table (TOKENS_SCHEMA) at `out_path`
    plus `<out>.manifest.json`. Returns the statistics (files, documents, bytes, skipped, tokens, ...)."""
    from ..manifest import running_beside_output

    tok, encoder = resolve_tokenizer(tokenizer)
    if encoder is None:
        raise UsageError("tokenize_corpus needs a tokenizer")
    reader = CorpusReader(input, text_field=text_field, id_field=id_field, format=format, on_error=on_error,
                          batch_size=batch_size, batch_bytes=_PIPELINE_BATCH_BYTES)

    def transform(batch):
        return tokenize_documents(batch, tokenizer=encoder, num_threads=num_threads)

    def count(table):
        return {"tokens": int(pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0)}

    _threads(num_threads)
    settings = {
        "input": [str(p) for p in input] if isinstance(input, (list, tuple)) else str(input),
        "text_field": text_field, "id_field": id_field, "format": format, "on_error": on_error,
        "tokenizer": _tokenizer_info(tok),
    }
    with output_lock(out_path, "tokenize", file=True):
        with running_beside_output(f"{out_path}.manifest.json", output=out_path, command="tokenize",
                                   settings=settings) as finish:
            stats = _run_pipeline(reader, out_path, TOKENS_SCHEMA, transform, count, desc="tokenize",
                                  progress=progress)
            stats.setdefault("tokens", 0)
            finish(stats)
    return stats
