"""`nextlong search INDEX_DIR "query"`: show what the hard-negative index finds, for a person to judge."""

from __future__ import annotations

import argparse
import json

from .argtypes import nonnegative_int, positive_int


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "search",
        help="query a chunk index with text and print the nearest chunks",
        description="Embed QUERY with the index's embedder and print the k most similar chunks: rank, cosine "
        "similarity, chunk id, document id and a snippet of the text (read from the chunk table the index was "
        "built from, or --chunks).",
    )
    p.add_argument("index_dir", help="directory written by `nextlong index`")
    p.add_argument("query", help="query text")
    p.add_argument("-k", type=positive_int, default=10, help="number of results (default 10)")
    p.add_argument("--chunks", default=None, help="chunk table for the texts (default: the one recorded in the index)")
    p.add_argument("--exclude-doc", action="append", default=None, type=nonnegative_int,
                   help="doc_index to exclude (repeatable), as mining excludes the document being extended")
    p.add_argument("--snippet", type=nonnegative_int, default=160, help="characters of text shown per result")
    p.add_argument("--json", action="store_true", help="one JSON object per result instead of a table")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the CRC32 check of the index file (one read of the file)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..untrusted import printable
    from ..errors import CorpusError
    from ..mining.index import ChunkIndex

    index = ChunkIndex.view(args.index_dir, verify=not args.no_verify)
    embedder = index.query_embedder()
    query = embedder.embed([args.query])
    exclude = None
    if args.exclude_doc:
        exclude = {int(d) for d in args.exclude_doc}
    ids, sims = index.search(query, args.k, exclude_doc_ids=exclude)
    ids, sims = ids[0], sims[0]
    keep = ids >= 0
    ids, sims = ids[keep], sims[keep]

    chunks_path = args.chunks or index.info.get("chunks_path")
    texts, note = {}, "(texts not shown: chunk table not found; pass --chunks)"
    if chunks_path and Path(chunks_path).is_file():
        columns = ["chunk_id", "text"] + ([] if args.chunks else ["text_hash"])
        try:
            table = pq.read_table(chunks_path, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            if args.chunks:
                raise CorpusError(chunks_path, f"not a readable chunk table ({exc})") from None
            table = None
        if table is not None and table.num_rows != len(index):
            if args.chunks:
                raise CorpusError(chunks_path, f"{table.num_rows} chunks, but the index holds {len(index)}; wrong "
                                               "--chunks?")
            table = None
        if table is not None and not args.chunks and not _same_chunks(table, index):
            # index.json names its chunk table by a path on the machine that built it: it is read only when
            # its text hashes are the index's own, so an index from elsewhere cannot show another file
            table, note = None, (f"(texts not shown: {chunks_path}, the chunk table index.json names, is not the "
                                 "one the index was built from; pass --chunks)")
        if table is not None:
            col = table.column("text")
            texts = {int(i): col[int(i)].as_py() for i in ids}
    rows = index.rows_of(ids.astype("int64"))
    meta = index.meta
    doc_ids = meta.column("doc_id").to_pylist() if "doc_id" in meta.column_names else None
    doc_index = meta.column("doc_index").to_numpy() if "doc_index" in meta.column_names else None
    if not args.json and len(ids):
        print(f"{'#':>3}  {'cosine':6}  {'chunk':14}  document")
    for rank, (cid, sim, row) in enumerate(zip(ids, sims, rows), 1):
        doc = doc_ids[row] if doc_ids is not None else str(doc_index[row])
        text = texts.get(int(cid))
        if args.json:
            line = json.dumps({"rank": rank, "similarity": round(float(sim), 4), "chunk_id": int(cid),
                               "doc_id": doc, "doc_index": None if doc_index is None else int(doc_index[row]),
                               "text": text}, ensure_ascii=False)
            # JSON leaves DEL, C1 controls (CSI) and format characters raw: \u-escape them too
            print("".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in line))
            continue
        snippet = "" if text is None else " ".join(text.split())[: args.snippet]
        print(printable(f"{rank:>3}  {sim:.4f}  chunk {int(cid):>8}  {doc}"))
        if snippet:
            print(printable(f"     {snippet}"))
    if not texts and not args.json:
        print(printable(note))
    return 0


def _same_chunks(table, index) -> bool:
    """Whether `table` holds the chunks `index` was built from (its text hashes are the index's)."""
    import numpy as np

    if index.text_hashes is None or "text_hash" not in table.column_names:
        return False
    try:
        hashes = table.column("text_hash").to_numpy().astype(np.uint64)
    except (TypeError, ValueError, ArithmeticError):
        return False
    return bool(np.array_equal(hashes, index.text_hashes))
