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
    p.add_argument("--snippet", type=nonnegative_int, default=160, help="characters of text shown per result (default 160)")
    p.add_argument("--json", action="store_true", help="one JSON object per result instead of a table")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the CRC32 check of the index file (one read of the file)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..untrusted import printable
    from ..mining.index import ChunkIndex

    if not args.query.strip():  # an empty query embeds to nothing: every cosine 0, arbitrary chunks
        from ..errors import UsageError

        raise UsageError("the query is empty: give the text to search for")
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

    texts, note = index.texts_of(ids, chunks=args.chunks)
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
    if note and not args.json:
        print(printable(note))
    return 0
