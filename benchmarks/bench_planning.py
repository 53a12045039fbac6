"""Planning cost per anchor at 100k, 1M and 10M chunks: it must stay flat (within 2x).

What is timed: `batches.plan_nextlong_batch` (k formula, candidate filtering, the greedy selection
with near-duplicate checks, fixed-k at L = 131072) on the same number of anchors at each size.
What is synthetic: chunk token counts (clipped normal around 460 tokens, ~2048 characters), documents
of 1..8 chunks, and the search. Exact search is O(corpus) per query by nature and an HNSW query grows
~log(corpus), so neither is what this measures: the searcher is a stub that returns precomputed
uniformly random neighbours (O(queries x width), independent of the corpus size). Chunk token ids
are slices of real tokenized text (the stdlib docstring demo corpus), so decoding and shingling
for the near-duplicate check cost what they cost on real text.

Beside it, the same anchors planned with `near_dup=None` give the near-duplicate check's share of
planning (the check reads a precomputed near-copy graph; here a synthetic one in which 1% of the chunks
have a near-copy), and `np.diff(tok_offsets)` + mean (what the old code recomputed for every anchor)
is timed at each size. The one-time cost of building the graph (sketching every chunk, joining,
confirming pairs) is measured per chunk on a 20k-chunk store.

    python3 -m benchmarks.bench_planning [--sizes 100000,1000000,10000000] [--anchors 30]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pytest

from nextlong.synthesis.store import ChunkStore

TARGET = 131072
SEP = 1


class TokenPool:
    """`tokens[a:b]` of a corpus too large to hold: real token ids from a pool, at a start that
    depends on `a` (deterministic), so each chunk has its own text."""

    def __init__(self, pool: np.ndarray):
        self.pool = pool

    def __getitem__(self, key):
        a, b = int(key.start), int(key.stop)
        n = b - a
        start = (a * 2654435761) % (self.pool.size - n)
        return self.pool[start:start + n]


class ScatteredTokens(TokenPool):
    """Like TokenPool, but each chunk gathers tokens from scattered positions of the pool: text with
    no near-copies in it, for timing the near-copy graph's build (sketching dominates)."""

    def __getitem__(self, key):
        a, b = int(key.start), int(key.stop)
        return self.pool[(a * 2654435761 + np.arange(b - a, dtype=np.int64) * 7919) % self.pool.size]


class RandomVectors:
    def __init__(self, dim: int = 384):
        self.dim = dim
        self.rng = np.random.default_rng(0)

    def __getitem__(self, rows):
        return self.rng.standard_normal((len(rows), self.dim)).astype(np.float32)


class StubSearcher:
    """Precomputed random neighbours: cost O(queries x width) whatever the corpus size."""

    def __init__(self, n: int, seed: int = 0):
        self.n = n
        self.pool = np.random.default_rng(seed).integers(0, n, 1 << 22)
        self.calls = 0

    def __len__(self):
        return self.n

    def search(self, queries, k):
        q = len(queries)
        start = (self.calls * 7919) % (self.pool.size - q * k)
        self.calls += 1
        ids = self.pool[start:start + q * k].reshape(q, k).astype(np.int64)
        sims = np.sort(np.random.default_rng(self.calls).random((q, k), np.float32), axis=1)[:, ::-1]
        return ids, np.ascontiguousarray(sims)


def synthetic_store(n_chunks: int, pool: np.ndarray, seed: int = 0) -> ChunkStore:
    rng = np.random.default_rng(seed)
    per_doc = rng.integers(1, 9, n_chunks // 2 + 8)
    per_doc = per_doc[: int(np.searchsorted(np.cumsum(per_doc), n_chunks)) + 1]
    per_doc[-1] -= int(per_doc.sum()) - n_chunks
    per_doc = per_doc[per_doc > 0].astype(np.int64)
    lengths = np.clip(rng.normal(460, 80, n_chunks), 50, 600).astype(np.int64)
    offsets = np.zeros(n_chunks + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    first = np.zeros(per_doc.size, np.int64)
    np.cumsum(per_doc[:-1], out=first[1:])
    chunk_doc = np.repeat(np.arange(per_doc.size, dtype=np.int64), per_doc)
    doc_tokens = np.add.reduceat(lengths, first)
    return ChunkStore(tokens=TokenPool(pool), tok_offsets=offsets, chunk_doc=chunk_doc,
                      chunk_index=(np.arange(n_chunks) - np.repeat(first, per_doc)).astype(np.int32),
                      text_hash=rng.integers(0, 2**63, n_chunks).astype(np.uint64), char_len=lengths * 4,
                      doc_first_chunk=first, doc_num_chunks=per_doc, doc_chars=(doc_tokens * 4.4).astype(np.int64),
                      doc_index=np.arange(per_doc.size, dtype=np.int64), doc_ids=None)


def token_pool(tokenizer) -> np.ndarray:
    from nextlong.synthesis.demo import iter_stdlib_documents

    texts = [t for _, t in iter_stdlib_documents(max_bytes=4_000_000)]
    return np.concatenate(tokenizer.encode_ordinary_batch(texts)).astype(np.uint32)


def plan_once(store, searcher, anchors, near_dup) -> float:
    import pyarrow as pa

    from nextlong.synthesis import batches

    t0 = time.perf_counter()
    table = batches.plan_nextlong_batch(
        pa.table({"anchor_doc": anchors}), store=store, searcher=searcher, chunk_vectors=RandomVectors(),
        target_length=TARGET, sep_len=SEP, negatives="fixed-k", chunk_size=2048, chars_per_token=4.4,
        overshoot=1.5, k_rounding="ceil", exclude_duplicates=True, max_candidates=4096, near_dup=near_dup)
    elapsed = time.perf_counter() - t0
    assert table.num_rows == len(anchors)
    return elapsed / len(anchors)


def synthetic_graph(n: int, share: float = 0.01, seed: int = 0):
    from nextlong.synthesis.neardup import NearDupGraph

    rng = np.random.default_rng(seed)
    a = rng.choice(n, int(n * share), replace=False)
    b = rng.integers(0, n, a.size)
    src, dst = np.concatenate([a, b]), np.concatenate([b, a])
    order = np.lexsort((dst, src))
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    return NearDupGraph(indptr, dst[order], 0.5)


def exact_batched_vs_per_anchor(n: int, pool: np.ndarray, anchors: int, dim: int = 256) -> dict:
    """Planning with exact search (corpora under the ANN threshold), per anchor vs a block's anchors
    searched together: same store, same unit vectors, same anchors, single-threaded BLAS as in the
    plan stage; the two plans must be identical."""
    import pyarrow as pa

    from nextlong.synthesis import batches
    from nextlong.synthesis.negatives import ExactSearcher

    store = synthetic_store(n, pool)
    vectors = np.random.default_rng(2).normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    picked = np.random.default_rng(1).choice(store.num_docs, anchors, replace=False).astype(np.int64)
    exact = ExactSearcher(vectors)
    out, tables = {}, {}
    runs = (("per_anchor", False, None), ("batched", True, None), ("batched_all_cores", True, os.cpu_count()))
    for name, batched, threads in runs:
        t0 = time.perf_counter()
        with batches.blas_threads(1):  # as in the plan stage; the batched search sets its own
            tables[name] = batches.plan_nextlong_batch(
                pa.table({"anchor_doc": picked}), store=store, searcher=exact, chunk_vectors=vectors,
                target_length=TARGET, sep_len=SEP, negatives="fixed-k", chunk_size=2048, chars_per_token=4.4,
                overshoot=1.5, k_rounding="ceil", exclude_duplicates=True, max_candidates=4096,
                search_threads=threads, batch_exact=batched)
        out[name + "_ms_per_anchor"] = 1e3 * (time.perf_counter() - t0) / anchors
    out["identical"] = tables["per_anchor"].equals(tables["batched"]) and tables["batched"].equals(
        tables["batched_all_cores"])
    out["speedup"] = out["per_anchor_ms_per_anchor"] / out["batched_ms_per_anchor"]
    return out


def main(argv=None) -> dict:
    from nextlong.synthesis.neardup import NearDupFilter, NearDupGraph
    from nextlong.corpus.tokenizer import load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000,10000000")
    ap.add_argument("--anchors", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--exact-sizes", default="", help="also: exact search per anchor vs batched at these sizes "
                    "(e.g. 20000,60000), then stop")
    args = ap.parse_args(argv)
    tok = load_tokenizer(None)
    pool = token_pool(tok)
    results: dict = {}
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average) on {os.cpu_count()} cores")
    if args.exact_sizes:
        for n in [int(x) for x in args.exact_sizes.split(",")]:
            r = results[f"exact_{n}"] = exact_batched_vs_per_anchor(n, pool, 128)
            print(f"{n:>10,} chunks, exact search: per anchor {r['per_anchor_ms_per_anchor']:.1f} ms/anchor, "
                  f"batched {r['batched_ms_per_anchor']:.1f} ms/anchor, x{r['speedup']:.1f} "
                  f"({r['batched_all_cores_ms_per_anchor']:.1f} with BLAS on all cores), identical plans: "
                  f"{r['identical']}; load {os.getloadavg()[0]:.2f}")
        return results
    small = synthetic_store(20_000, pool)
    small.tokens = ScatteredTokens(pool)  # TokenPool's overlapping windows would all be near-copies
    t0 = time.perf_counter()
    NearDupGraph.build(small, tok, 0.5)
    build_us = 1e6 * (time.perf_counter() - t0) / small.num_chunks
    results["graph_build_us_per_chunk"] = build_us
    print(f"near-copy graph, built once per corpus: {build_us:.0f} us/chunk (20k chunks; load {os.getloadavg()[0]:.2f})")
    for n in [int(x) for x in args.sizes.split(",")]:
        store = synthetic_store(n, pool)
        t0 = time.perf_counter()
        store.token_counts, store.mean_token_count  # once per store: what planning reads per anchor
        once = time.perf_counter() - t0
        anchors = np.random.default_rng(1).choice(store.num_docs, args.anchors, replace=False).astype(np.int64)
        graph = synthetic_graph(n)
        plan_once(store, StubSearcher(n), anchors[:2], NearDupFilter(graph))  # warm up
        with_nd, without = [], []
        for _ in range(args.repeats):  # alternate, so both see the same machine load
            without.append(plan_once(store, StubSearcher(n), anchors, None))
            with_nd.append(plan_once(store, StubSearcher(n), anchors, NearDupFilter(graph)))
        t0 = time.perf_counter()
        for _ in range(3):
            lengths = np.diff(store.tok_offsets)
            float(lengths.mean())
        old_extra = (time.perf_counter() - t0) / 3
        results[n] = dict(ms_per_anchor=1e3 * min(with_nd), ms_per_anchor_without_near_dup=1e3 * min(without),
                          old_per_anchor_recompute_ms=1e3 * old_extra, once_per_store_ms=1e3 * once)
        r = results[n]
        print(f"{n:>10,} chunks: plan {r['ms_per_anchor']:.1f} ms/anchor (near-dup off {r['ms_per_anchor_without_near_dup']:.1f}); "
              f"the old per-anchor np.diff+mean would add {r['old_per_anchor_recompute_ms']:.1f} ms/anchor; "
              f"computed once per store here: {r['once_per_store_ms']:.1f} ms; load {os.getloadavg()[0]:.2f}")
        r["near_dup_share"] = (r["ms_per_anchor"] - r["ms_per_anchor_without_near_dup"]) / r["ms_per_anchor"]
        print(f"    near-duplicate check: {100 * r['near_dup_share']:.1f}% of planning time")
        del store
    sizes = sorted(k for k in results if isinstance(k, int))
    ratio = max(results[s]["ms_per_anchor"] for s in sizes) / min(results[s]["ms_per_anchor"] for s in sizes)
    print(f"max/min per-anchor time across sizes: {ratio:.2f} (must be <= 2)")
    results["flatness_ratio"] = ratio
    return results


@pytest.mark.slow
def test_planning_cost_is_flat():
    """Quick version (100k and 1M chunks) for the benchmark suite."""
    results = main(["--sizes", "100000,1000000", "--anchors", "10", "--repeats", "2"])
    assert results["flatness_ratio"] <= 2.0


if __name__ == "__main__":
    main()
