"""The batch -> batch functions of synthesis, the stages' work without their settings or state.

Everything a function needs is passed in (tokenizer, embedder, chunk store, searcher, settings); no
function keeps state between calls. The Stage classes (stages.py) bind the settings and load the heavy
state from their inputs' folders; pipeline.py lists them and an executor (local or Ray) runs them.

    corpus batch (doc_index, doc_id, text)  --chunk_batch-->   chunk table (CHUNK_SCHEMA + input_ids)
    chunk batch                             --embed_batch-->   chunk_id + embedding
    anchor batch (anchor_doc)               --plan_*_batch-->  plan table (anchor_doc, chunks, roles, ...)
    plan table                              --assemble_batch-> output table (OUTPUT_SCHEMA)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .assemble import ROLE_ANCHOR, Plan, assemble, to_output_table
from .baselines import knn_anchor, plan_pieces
from .negatives import plan_anchor

PLAN_SCHEMA = pa.schema(
    [
        pa.field("anchor_doc", pa.int64()),  # dense document number of the anchor (first document)
        pa.field("ok", pa.bool_()),  # False: dropped, cannot reach L
        pa.field("reason", pa.string()),
        pa.field("chunks", pa.list_(pa.int64())),
        pa.field("roles", pa.list_(pa.int8())),
        pa.field("negatives_per_meta_chunk", pa.list_(pa.int32())),
        pa.field("negative_sims", pa.list_(pa.float32())),
        pa.field("near_dup_rejected", pa.int32()),  # nextlong: candidates skipped as near-copies of a piece
        pa.field("already_long", pa.bool_()),  # nextlong: the anchor document alone reaches L
        pa.field("group_key", pa.string()),  # quest: the key group the documents come from
        # --mining partitioned: the anchor needed more candidates than its neighbour lists hold (searched again)
        pa.field("searched_again", pa.bool_()),
    ]
)


def chunk_batch(batch, *, tokenizer, chunk_size: int, chunk_unit: str, first_chunk_id: int = 0,
                num_threads: int | None = None, separator: str = "") -> pa.Table:
    """Meta-chunk a corpus batch; `input_ids` (and `num_tokens`) of each chunk are those of its text with
    `separator` after it, tokenized together: every piece of an output row is a chunk followed by the
    separator, and the tokens where the two meet are then the ones the assembled text has (a chunk ending
    in "." before "\n" is the one token ".\n" in cl100k, as in real text, not "." then "\n")."""
    from ..corpus.chunking import chunk_documents, chunk_table_schema, resolve_tokenizer

    # with a separator the chunker needs the tokenizer only to measure chunks in tokens: counting them
    # there as well would tokenize every chunk twice (1.8x slower on one thread)
    table = chunk_documents(batch, max_len=chunk_size, unit=chunk_unit,
                            tokenizer=tokenizer if not separator or chunk_unit == "tokens" else None,
                            with_ids=not separator, num_threads=num_threads, first_chunk_id=first_chunk_id)
    if not separator:
        return table
    texts = [t + separator for t in table.column("text").to_pylist()]
    ids = resolve_tokenizer(tokenizer)[1].encode_batch(texts, None, num_threads, True)
    lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
    offsets = np.zeros(len(ids) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(ids).astype(np.uint32) if ids else np.zeros(0, np.uint32)
    column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
    schema = chunk_table_schema(True)
    table = table.set_column(table.schema.get_field_index("num_tokens"), "num_tokens",
                             pa.array(lengths.astype(np.int32)))
    return pa.Table.from_arrays([*table.columns, column.cast(schema.field("input_ids").type)], schema=schema)


def embed_batch(batch, *, embedder) -> pa.Table:
    """chunk_id + L2-normalised embedding (fixed-size list of float32) of each chunk's text."""
    texts = batch.column("text").to_pylist()
    vecs = np.asarray(embedder.embed(texts), np.float32) if texts else np.zeros((0, embedder.dim), np.float32)
    flat = pa.array(vecs.reshape(-1), pa.float32())
    return pa.table({
        "chunk_id": batch.column("chunk_id"),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, vecs.shape[1] if vecs.ndim == 2 else embedder.dim),
    })


def _plan_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=PLAN_SCHEMA)


def plan_nextlong_batch(anchors, *, store, searcher, chunk_vectors, target_length: int, sep_len: int,
                        negatives: str, chunk_size: int, chars_per_token: float, overshoot: float,
                        k_rounding: str, exclude_duplicates: bool, max_candidates: int,
                        max_rows: int | None = None, doc_label=None, chunk_unit: str = "chars",
                        near_dup=None, long_docs: str = "keep", search_threads: int | None = None,
                        batch_exact: bool = True, empty=None) -> pa.Table:
    """One row per anchor: its meta-chunks interleaved with their hard negatives, or why not.

    Stops after `max_rows` successful rows (the driver's sample limit). `near_dup` is a
    neardup.NearDupFilter (None: only exact duplicates are excluded); `empty`, one byte per chunk, marks the
    chunks that are never a negative (artifacts.empty_chunks). With an exact searcher, the
    anchors are searched PREFETCH_ANCHORS at a time, with `search_threads` BLAS threads
    (`batch_exact=False`: one search per anchor, the reference the batched plan must equal)."""
    from ..mining.partitioned import NeighbourLists
    from .negatives import ExactSearcher, PrefetchedRows, negatives_per_meta_chunk

    def k_of(d):
        return negatives_per_meta_chunk(target_length, chars_per_token, int(store.doc_chars[d]),
                                        store.doc_chunks(d).size, chunk_size, overshoot, k_rounding,
                                        granularity_unit=chunk_unit)

    doc_ids = anchors.column("anchor_doc").to_pylist()
    prefetch = batch_exact and isinstance(searcher, ExactSearcher) and doc_label is None
    views: dict = {}
    rows, done = [], 0
    for i, d in enumerate(doc_ids):
        if max_rows is not None and done >= max_rows:
            break
        if prefetch and d not in views:
            views = _prefetch_exact(searcher, doc_ids[i : i + PREFETCH_ANCHORS], k_of, store=store,
                                    chunk_vectors=chunk_vectors, target_length=target_length, sep_len=sep_len,
                                    rule=negatives, max_candidates=max_candidates, threads=search_threads)
        own = store.doc_chunks(d)
        lists = isinstance(searcher, NeighbourLists)
        view = PrefetchedRows(searcher, *searcher.rows(own)) if lists else views.get(d, searcher)
        res = plan_anchor(store, view, d, target_length=target_length, sep_len=sep_len,
                          rule=negatives, k_fixed=k_of(d), anchor_vectors=np.asarray(chunk_vectors[own], np.float32),
                          exclude_duplicates=exclude_duplicates, max_candidates=max_candidates,
                          exclude_doc_label=doc_label(d) if doc_label else None, near_dup=near_dup,
                          long_docs=long_docs, empty=empty)
        rows.append({"anchor_doc": d, "ok": res.ok, "reason": res.reason, "chunks": res.chunks,
                     "roles": res.roles, "negatives_per_meta_chunk": res.negatives_per_meta_chunk,
                     "negative_sims": res.negative_sims, "near_dup_rejected": res.near_dup_rejected,
                     "already_long": res.already_long,
                     "searched_again": view.searched_again if lists else None})
        done += res.ok
    return _plan_table(rows)


PREFETCH_ANCHORS = 64  # anchors searched together: few enough that a small --num-samples wastes little


def _prefetch_exact(searcher, doc_ids, k_of, *, store, chunk_vectors, target_length, sep_len, rule,
                    max_candidates, threads=None) -> dict:
    """One batched exact search for the meta-chunks of `doc_ids` (those that need negatives), as a
    per-anchor searcher each; the width is the widest first search among them."""
    from .negatives import PrefetchedRows, anchor_tokens, initial_width

    wanted, widths = [], []
    for d in dict.fromkeys(doc_ids):
        own, own_tokens = anchor_tokens(store, d, sep_len)
        if own_tokens < target_length and own.size:
            wanted.append((d, own))
            widths.append(initial_width(store, own_tokens, own.size, rule=rule, k_fixed=k_of(d),
                                        target_length=target_length, sep_len=sep_len,
                                        max_candidates=max_candidates))
    if not wanted:
        return {d: searcher for d in doc_ids}
    queries = np.asarray(chunk_vectors[np.concatenate([own for _, own in wanted])], np.float32)
    with blas_threads(threads):  # one (rows x corpus) product per 256 queries: worth the cores
        ids, sims = searcher.search(queries, max(widths))
    ends = np.cumsum([own.size for _, own in wanted])
    views = {d: searcher for d in doc_ids}
    views.update({d: PrefetchedRows(searcher, ids[end - own.size : end], sims[end - own.size : end])
                  for (d, own), end in zip(wanted, ends)})
    return views


def plan_knn_batch(anchors, *, store, doc_searcher, doc_vectors, doc_lengths, target_length: int,
                   first_width: int = 32, max_rows: int | None = None) -> pa.Table:
    """One row per anchor document: it, then its nearest documents until L."""
    rows, done = [], 0
    for d in anchors.column("anchor_doc").to_pylist():
        if max_rows is not None and done >= max_rows:
            break
        docs = knn_anchor(store, doc_searcher, doc_vectors, d, doc_lengths, target_length, first_width)
        if docs is None:
            rows.append({"anchor_doc": d, "ok": False, "chunks": [], "roles": [],
                         "reason": "its neighbours in the whole corpus do not reach the target length"})
            continue
        chunks, roles = plan_pieces(store, docs)
        rows.append({"anchor_doc": d, "ok": True, "reason": "", "chunks": chunks, "roles": roles})
        done += 1
    return _plan_table(rows)


def plan_groups_batch(groups, *, store) -> pa.Table:
    """Stream baselines: each row lists the documents of one long document (already ordered), with
    quest's `group_key` when the batch has that column, or its chunks (standard and iclm's carry packing)."""
    rows = []
    keys = (groups.column("group_key").to_pylist() if "group_key" in groups.column_names
            else [None] * groups.num_rows)
    if "chunks" in groups.column_names:
        for chunks, key in zip(groups.column("chunks").to_pylist(), keys):
            rows.append({"anchor_doc": int(store.chunk_doc[chunks[0]]), "ok": True, "reason": "", "chunks": chunks,
                         "roles": [ROLE_ANCHOR] * len(chunks), "group_key": key})
        return _plan_table(rows)
    for docs, key in zip(groups.column("docs").to_pylist(), keys):
        chunks, roles = plan_pieces(store, docs)
        rows.append({"anchor_doc": docs[0], "ok": True, "reason": "", "chunks": chunks, "roles": roles,
                     "group_key": key})
    return _plan_table(rows)


def plan_from_table(plan_table: pa.Table) -> Plan:
    """The successful rows of a plan table as a flat Plan."""
    ok = plan_table.filter(plan_table.column("ok"))
    chunks, offsets = _flatten(ok.column("chunks"), np.int64)
    roles, _ = _flatten(ok.column("roles"), np.int8)
    return Plan(chunks=chunks, roles=roles, offsets=offsets,
                anchor_docs=ok.column("anchor_doc").to_numpy().astype(np.int64))


def _flatten(column, dtype):
    """(values, offsets) of a list column, correct for sliced and chunked arrays."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    offsets = np.zeros(lengths.size + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(dtype)
    return values, offsets


def assemble_batch(plan_table: pa.Table, *, store, sep_ids, target_length: int, method: str,
                   impl: str = "auto") -> pa.Table:
    """Gather a plan's token ranges into rows of exactly L tokens with their segments."""
    plan = plan_from_table(plan_table)
    ids, start, end = assemble(store.tokens, store.tok_offsets, plan, sep_ids, target_length, impl=impl)
    keys = plan_table.filter(plan_table.column("ok")).column("group_key").to_pylist()
    return to_output_table(store, plan, ids, start, end, method, group_keys=keys)


def blas_threads(n: int | None):
    """BLAS limited to `n` threads inside the block (None: as it was)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        n = None
    if n is None:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(n, user_api="blas")
