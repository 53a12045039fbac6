"""`nextlong synthesize`: a corpus of short documents in, long-context training documents out."""

from __future__ import annotations

import argparse
import sys

from ..synthesis.config import ATTENTION_SPANS, EXECUTORS, FORMATS, LONG_DOCS, METHODS, NEGATIVE_RULES, OVERFLOW
from .argtypes import (THREADS_HELP, OneSpelling, near_dup_threshold, nonnegative_int, positive_float, positive_int,
                       seed, threads, unescape)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "synthesize",
        help="build long documents by hard-negative extension (NExtLong) or a baseline",
        description="Chunk, embed and index a corpus, then write long documents of exactly --target-length "
                    "tokens (NExtLong: each meta-chunk followed by its hard negatives). Stages are cached in "
                    "--out; re-running resumes. `nextlong synthesize --demo --out DIR` runs on the docstrings "
                    "of Python's standard library.",
    )
    p.add_argument("--corpus", help="JSONL (.gz/.zst), Parquet, or a folder of text files")
    p.add_argument("--out", required=True, help="output folder (stages are cached here)")
    p.add_argument("--demo", action="store_true",
                   help="use the embedded demo corpus (stdlib docstrings), target length 8192, 8 samples")
    p.add_argument("--tokenizer", help="tokenizer spec (default cl100k_base, offline)")
    p.add_argument("--target-length", type=positive_int, help="tokens per long document L (default 131072; demo 8192)")
    p.add_argument("--method", choices=METHODS, default="nextlong",
                   help="how documents are put together (default nextlong; standard, knn, iclm and quest are the paper's "
                        "baselines; litelong: one sample per --topics topic, of the documents BM25 retrieves for it)")
    p.add_argument("--topics", metavar="FILE",
                   help="--method litelong: the topics, one per line (UTF-8; blank lines and lines starting with # "
                        "skipped) or a .jsonl with a string field \"topic\" per row; each makes one sample, in order")
    p.add_argument("--negatives", choices=NEGATIVE_RULES,
                   help="fixed-k: the paper's k=(T·E·w−S)/(p·s) per meta-chunk (default); fill: add negatives "
                        "layer by layer until exactly L")
    p.add_argument("--near-dup-threshold", type=near_dup_threshold, default=0.5,
                   help="skip a candidate negative whose word 5-gram Jaccard with a meta-chunk of the anchor or an "
                        "already chosen negative reaches this (default 0.5; 0 or off: only exact duplicates)")
    p.add_argument("--dedup-corpus", action="store_true",
                   help="for a corpus that is not deduplicated: drop every document whose word 5-gram Jaccard with "
                        "an earlier kept document reaches --near-dup-threshold (never an anchor, never a negative; "
                        "counted in the manifest)")
    p.add_argument("--long-docs", choices=LONG_DOCS, default="keep",
                   help="an anchor document that alone reaches the target length: keep it without negatives "
                        "(default; counted as already_long) or drop it")
    p.add_argument("--overflow", choices=OVERFLOW, default="carry",
                   help="standard and iclm pack one stream of documents: the rest of the document cut at the target "
                        "length starts the next long document (carry, default: every chunk used once) or is dropped "
                        "(drop: each long document starts at a document's start, as before 2026-12-07)")
    p.add_argument("--index", help="reuse an index folder built by `nextlong index` from the same chunks")
    p.add_argument("--reproducible-index", action="store_true",
                   help="build the HNSW index (corpora over 50k chunks) on one thread, so a rerun gives the same "
                        "bytes; a multi-threaded build gives a slightly different graph each time, hence different "
                        "negatives for some anchors (default: all threads; rerunning with --index OUT/index also "
                        "reproduces a run)")
    p.add_argument("--index-shards", type=positive_int, default=1,
                   help="build the HNSW index as N shards, each on one thread, N at a time up to the threads: the "
                        "same bytes on every run, like --reproducible-index, but built in parallel; each search "
                        "then visits N smaller graphs (default 1: one graph, all threads)")
    p.add_argument("--mining", choices=("hnsw", "partitioned"), default="hnsw",
                   help="how negatives are mined: hnsw (default: exact search up to 50k chunks, one usearch HNSW "
                        "index above) or partitioned (always: k-means partitions, each chunk's neighbour list from a "
                        "batch search of its --nprobe nearest partitions, built as many tasks; deterministic for the "
                        "corpus, the same bytes on every executor; docs/scale.md)")
    p.add_argument("--partitions", type=nonnegative_int, default=0,
                   help="--mining partitioned: k-means partitions (default 0: sqrt(chunks))")
    p.add_argument("--nprobe", type=positive_int, default=32,
                   help="--mining partitioned: partitions searched for each chunk (default 32; more: higher recall, "
                        "proportionally slower). Recall depends on the data: recall@10 0.98 on 100k real-text "
                        "chunks, 0.88 on a 30k-chunk topic-clustered corpus (negatives' mean cosine within 0.001 "
                        "of exact search's); docs/scale.md")
    p.add_argument("--neighbours", type=nonnegative_int, default=0,
                   help="--mining partitioned: neighbours kept per chunk (default 0: what the planner's first search "
                        "asks for, for 90%% of the anchors; an anchor that needs more is searched again, counted in "
                        "the manifest)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the CRC32 checks of the index and embeddings files, and of the chunk store and near-copy "
                        "graph a cached stage left (each costs one read of the file); each Parquet page's own "
                        "checksum is checked on every read all the same")
    p.add_argument("--embedder", help="embedder (default all-MiniLM-L6-v2 offline; static: MiniLM distilled to "
                                      "static vectors, far faster, cached after its first use; hashed-tfidf: "
                                      "lexical, fastest; or a local model folder)")
    p.add_argument("--chunk-size", type=positive_int, default=2048, help="granularity s (default 2048)")
    p.add_argument("--chunk-unit", choices=("chars", "tokens"), default="chars", help="unit of --chunk-size (default chars)")
    p.add_argument("--seed", type=seed, default=0,
                   help="seeds the anchor order (nextlong, knn), the packing order (standard), iclm's path starts and "
                        "quest's keyword draw (default 0; litelong has nothing to seed)")
    p.add_argument("--num-samples", type=positive_int, help="number of long documents (default: one per usable anchor)")
    p.add_argument("--format", choices=FORMATS, default="parquet",
                   help="format of the samples written (default parquet; the corpus goes by its files' extensions)")
    p.add_argument("--attention-spans", choices=ATTENTION_SPANS, default="sample",
                   help="MDS `indices` (each pair is one attention block in training): sample = one span [0, L) "
                        "per long document (default); document = one span per run of the same source document")
    p.add_argument("--separator", default="\n",
                   help="text appended after every piece (default newline; use '' for none: then each piece is "
                        "tokenized alone and the ids where two pieces meet differ from the joined text's, a cue a "
                        "model can learn)")
    p.add_argument("--overshoot", type=positive_float, default=1.5, help="w of the k formula (default 1.5)")
    p.add_argument("--chars-per-token", type=positive_float,
                   help="E of the k formula (default: measured on the corpus's chunks)")
    p.add_argument("--k-rounding", choices=("ceil", "floor"), default="ceil",
                   help="rounding of the k formula (default ceil: keeps the overshoot)")
    p.add_argument("--doc-embedding", choices=("mean", "first"), default="mean",
                   help="knn/iclm document vector: mean of its chunk vectors (default) or its first chunk's")
    p.add_argument("--knn-neighbours", "--knn-neighbors", action=OneSpelling, dest="knn_neighbors", type=positive_int,
                   default=32, help="iclm graph degree / knn first search width (default 32)")
    p.add_argument("--quest-keywords", type=positive_int, default=3,
                   help="quest: a document's key is drawn among its top N TF-IDF keywords (default 3)")
    p.add_argument("--quest-max-repeats", type=positive_int, default=4,
                   help="quest: a key group shorter than L is repeated, reshuffled, at most N times (default 4)")
    p.add_argument("--shard-size", type=positive_int, default=64, help="anchors (or long documents) per output shard (default 64)")
    p.add_argument("--text-field", default="text",
                   help="JSON field / Parquet column holding the text (default: text)")
    p.add_argument("--id-field", help="field holding the document id, which segments' doc_id names "
                   "(default: <file>:<line or row>; repeated values are kept and counted)")
    p.add_argument("--on-error", default="raise", choices=("raise", "skip"),
                   help="bad corpus records: stop with an error (default) or skip and count them")
    p.add_argument("--threads", type=threads, default=0, help=THREADS_HELP + "; also bounds the embedder's threads")
    p.add_argument("--rebuild", action="store_true", help="rebuild cached stages built with other settings")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="where the stages run: local (this process, default) or ray (a Ray cluster; needs "
                        "pip install 'nextlong[ray]'); the output is the same byte for byte")
    p.add_argument("--ray-address", help="--executor ray: a cluster to join (auto or HOST:PORT; default: start one here)")
    p.add_argument("--embed-gpus", type=nonnegative_int, default=0,
                   help="--executor ray: GPUs for the embedding actors (default 0: CPU)")
    p.add_argument("--embed-actors", type=positive_int, help="--executor ray: embedding actors (default: one per GPU, or one)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    p.add_argument("--no-progress", action="store_true", help="no progress bars; the summary is still printed")
    p.set_defaults(func=run)


def requirements(args: argparse.Namespace) -> tuple[str, ...]:
    """Optional packages this run will import: the embedder's (unless --index brings the vectors) and Ray's."""
    from ..extras import embedder_modules
    from ..synthesis.config import EMBEDDING_METHODS

    needs = ()
    if args.method in EMBEDDING_METHODS and (args.index is None or args.embedder):
        needs += embedder_modules(args.embedder)
    return needs + (("ray",) if args.executor == "ray" else ())


def run(args: argparse.Namespace) -> int:
    from ..synthesis import demo_config
    from ..synthesis.config import SynthesisConfig
    from ..synthesis.pipeline import run as run_pipeline

    common = dict(
        tokenizer=args.tokenizer, method=args.method, index=args.index, embedder=args.embedder,
        chunk_size=args.chunk_size, chunk_unit=args.chunk_unit, seed=args.seed, format=args.format,
        separator=unescape(args.separator),
        rebuild=args.rebuild, overshoot=args.overshoot, text_field=args.text_field, id_field=args.id_field,
        num_threads=args.threads, progress=not (args.quiet or args.no_progress), chars_per_token=args.chars_per_token,
        k_rounding=args.k_rounding, doc_embedding=args.doc_embedding, knn_neighbors=args.knn_neighbors,
        quest_keywords=args.quest_keywords, quest_max_repeats=args.quest_max_repeats, topics=args.topics,
        shard_size=args.shard_size, attention_spans=args.attention_spans,
        near_dup_threshold=args.near_dup_threshold, long_docs=args.long_docs, overflow=args.overflow, dedup_corpus=args.dedup_corpus, on_error=args.on_error, verify=not args.no_verify,
        reproducible_index=args.reproducible_index, index_shards=args.index_shards, mining=args.mining,
        partitions=args.partitions, nprobe=args.nprobe, neighbours=args.neighbours, executor=args.executor, ray_address=args.ray_address, embed_gpus=args.embed_gpus,
        embed_actors=args.embed_actors,
    )
    optional = dict(target_length=args.target_length, negatives=args.negatives, num_samples=args.num_samples)
    if args.demo:
        if args.corpus is not None:  # --demo also names the demo corpus's id field: not a setting for another
            from ..errors import UsageError

            raise UsageError("--demo runs on the embedded demo corpus: drop --corpus, or --demo to run on your corpus")
        cfg = demo_config(args.out, **common, **optional)
    else:
        cfg = SynthesisConfig(out=args.out, corpus=args.corpus, **common,
                              **{k: v for k, v in optional.items() if v is not None})
    manifest = run_pipeline(cfg)
    if args.no_progress and not args.quiet:
        from ..synthesis.pipeline import summary

        print(summary(manifest), file=sys.stderr, flush=True)
    return 0
