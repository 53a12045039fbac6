"""`nextlong index CHUNKS --out INDEX_DIR`: embed a chunk table and build the hard-negative index."""

from __future__ import annotations

import argparse

from .argtypes import THREADS_HELP, positive_int, threads


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "index",
        help="embed a chunk table and build its usearch HNSW index (resumable)",
        description="Embed every chunk of CHUNKS (Parquet, nextlong.schema.CHUNK_SCHEMA) and build a usearch "
        "HNSW index keyed by chunk_id, for hard-negative mining. Embeddings are written as they are made; "
        "re-running after an interruption resumes the embedding.",
    )
    p.add_argument("chunks", help="chunk table (Parquet) from `nextlong chunk`")
    p.add_argument("--out", required=True, help="index directory to write")
    p.add_argument("--embedder", default=None,
                   help="all-MiniLM-L6-v2 (default, offline), static (MiniLM distilled to static vectors, "
                   "cached after first use), hashed-tfidf[:DIM] (lexical, fast), "
                   "or a local sentence-transformers/transformers model folder")
    p.add_argument("--dtype", default="f16", choices=["f16", "i8", "f32", "bf16"], help="vector storage in the index (default f16)")
    p.add_argument("--batch-size", type=positive_int, default=512, help="texts embedded and flushed to disk at a time (default 512)")
    p.add_argument("--threads", type=threads, default=0, help=THREADS_HELP)
    p.add_argument("--connectivity", type=positive_int, default=None, help="HNSW M (default 32)")
    p.add_argument("--expansion-add", type=positive_int, default=None, help="HNSW efConstruction (default 128)")
    p.add_argument("--expansion-search", type=positive_int, default=None, help="HNSW efSearch (default 32)")
    p.add_argument("--embeddings", default=None,
                   help="embeddings .npy to write/resume (default INDEX_DIR/embeddings.npy); an existing complete "
                   "file made by the same embedder from the same chunks is reused")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary (errors only)")
    p.set_defaults(func=run)


def requirements(args: argparse.Namespace) -> tuple[str, ...]:
    from ..extras import embedder_modules

    return ("usearch",) + embedder_modules(args.embedder)


def run(args: argparse.Namespace) -> int:
    from ..mining.index import DEFAULT_CONNECTIVITY, DEFAULT_EXPANSION_ADD, DEFAULT_EXPANSION_SEARCH
    from ..mining.index_job import build_index_from_chunks

    index = build_index_from_chunks(
        args.chunks,
        args.out,
        embedder=args.embedder,
        dtype=args.dtype,
        connectivity=args.connectivity or DEFAULT_CONNECTIVITY,
        expansion_add=args.expansion_add or DEFAULT_EXPANSION_ADD,
        expansion_search=args.expansion_search or DEFAULT_EXPANSION_SEARCH,
        batch_size=args.batch_size,
        threads=args.threads,
        progress=not (args.no_progress or args.quiet),
        embeddings_path=args.embeddings,
    )
    info = index.info
    if not args.quiet:
        print(f"indexed {info['counts']['chunks']} chunks of {info['counts']['documents']} documents with "
              f"{info['embedder']['name']} (dim {info['embedder']['dim']}, {info['dtype']}) -> {args.out}")
    return 0
