"""One HNSW graph built on every thread against N shards each built on one thread (`--index-shards`),
on the same vectors in the same run: build seconds, search time per query, recall@10 against exact
search, and whether a second build gives the same bytes.

Every variant gets the same vectors, the same queries (a fixed sample of the vectors themselves, their
own row excluded from the truth by asking for k + 1) and the same HNSW settings (ChunkIndex defaults);
builds and searches use `--threads` threads. Exact truth: float32 inner products of unit rows in numpy.

    python3 -m benchmarks.bench_index_shards --embeddings DIR/embeddings/embeddings.npy [--shards 1,2,4]
    python3 -m benchmarks.bench_index_shards --random 200000 --dim 64
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    out = np.empty((len(q), k), np.int64)
    for lo in range(0, len(q), 256):
        sims = q[lo:lo + 256] @ unit.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[lo:lo + 256] = np.take_along_axis(top, order, axis=1)
    return out


def index_digest(index, folder: Path) -> str:
    index.save(folder)
    h = hashlib.sha256()
    for p in sorted(folder.glob("*.usearch")):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def main(argv=None) -> dict:
    from nextlong.mining.index import ChunkIndex

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embeddings", help="an embeddings.npy (rows = chunks)")
    ap.add_argument("--random", type=int, help="or this many random unit vectors")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--shards", default="1,2,4", help="shard counts to compare (1 = one graph on every thread)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--repeat-build", action="store_true", help="build each variant twice and compare the bytes")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.embeddings:
        vectors = np.load(args.embeddings, mmap_mode="r")
        vectors = np.asarray(vectors, np.float32)
    else:
        vectors = np.random.default_rng(0).standard_normal((args.random, args.dim), dtype=np.float32)
    n = len(vectors)
    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(n, size=min(args.queries, n), replace=False))
    queries = vectors[rows]
    k = 10
    truth = exact_top(vectors, queries, k + 1)
    print(f"{n:,} vectors x {vectors.shape[1]}, {len(rows)} queries, {args.threads} threads, "
          f"load {os.getloadavg()[0]:.2f}")
    results = {"n": n, "dim": int(vectors.shape[1]), "threads": args.threads, "variants": {}}
    for shards in [int(s) for s in args.shards.split(",")]:
        digests, builds = [], []
        for _ in range(2 if args.repeat_build else 1):
            t0 = time.perf_counter()
            index = ChunkIndex.build(vectors, np.arange(n), np.arange(n), threads=args.threads, shards=shards)
            builds.append(time.perf_counter() - t0)
            with tempfile.TemporaryDirectory() as tmp:
                digests.append(index_digest(index, Path(tmp)))
        t0 = time.perf_counter()
        ids, _ = index.search(queries, k + 1, threads=args.threads)
        search_s = time.perf_counter() - t0
        recall = float(np.mean([len(set(ids[i]) & set(truth[i])) / (k + 1) for i in range(len(rows))]))
        v = {"build_s": builds, "search_ms_per_query": 1e3 * search_s / len(rows), "recall_at_11": recall,
             "same_bytes_twice": (digests[0] == digests[1]) if len(digests) == 2 else None}
        results["variants"][shards] = v
        print(f"  shards {shards}: build {' / '.join(f'{b:.1f}' for b in builds)} s, search "
              f"{v['search_ms_per_query']:.3f} ms/query, recall@{k + 1} {recall:.4f}"
              + (f", same bytes twice: {v['same_bytes_twice']}" if v["same_bytes_twice"] is not None else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
