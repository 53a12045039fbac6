"""Hard-negative index: HNSW recall against exact search, build time and queries/s against FAISS,
and a "hardness" figure (how similar mined negatives are, compared with random chunks).

Data: Python's documentation (Debian python3.11-doc), chunked at 2048 characters with the paper's rule
(all 5,595 chunks), embedded with the default all-MiniLM-L6-v2. The embeddings are cached (resumable)
in $NEXTLONG_BENCH_CACHE (default ~/.cache/nextlong-bench): the first run embeds for ~3-10 minutes on
2 cores. Queries: every chunk, k=10, threads = the cores available, same for usearch and FAISS.

    python3 -m pytest -q benchmarks/bench_index.py -s        # pytest-benchmark tables + report
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_index_corpus import PYDOCS, chunk_table, pydocs_files, write_chunk_table  # noqa: E402

from nextlong.embedding import available_threads  # noqa: E402
from nextlong.index import (DEFAULT_CONNECTIVITY, DEFAULT_EXPANSION_ADD, DEFAULT_EXPANSION_SEARCH,  # noqa: E402
                            ChunkIndex)

pytestmark = pytest.mark.skipif(not PYDOCS.is_dir(), reason="Python docs (Debian python3.11-doc) not installed")
CACHE = Path(os.environ.get("NEXTLONG_BENCH_CACHE", Path.home() / ".cache" / "nextlong-bench"))
K = 10
THREADS = available_threads()
REPORT: list[str] = []


def pydocs_embeddings(embedder_name: str | None = None):
    """(chunk table, embeddings) of the Python docs at 2048 chars; embedded once, resumable, cached."""
    import pyarrow.parquet as pq

    from nextlong.embed_store import embed_chunks
    from nextlong.embedding import load_embedder

    CACHE.mkdir(parents=True, exist_ok=True)
    chunks = CACHE / "pydocs-2048.parquet"
    if not chunks.is_file():
        write_chunk_table(chunk_table(pydocs_files(), 2048), chunks)
    embedder = load_embedder(embedder_name)
    emb = embed_chunks(chunks, embedder, CACHE / f"pydocs-2048.{embedder.name}.npy", progress=True)
    return pq.read_table(chunks), np.asarray(emb, dtype=np.float32)


@pytest.fixture(scope="module")
def data():
    table, emb = pydocs_embeddings()
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)  # neighbours are the other chunks (the corpus has duplicate chunks:
    truth = np.argsort(-sims, axis=1)[:, :K]  # dropping "the first result" would not drop the query)
    return table, emb, truth


def recall(found, truth):
    k = truth.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(found, truth)]))


def drop_self(ids):
    """Top-K of K+1 results without the query's own id (or without the last when it is absent)."""
    own = ids == np.arange(len(ids))[:, None]
    keep = ~own
    keep[~own.any(axis=1), -1] = False
    return ids[keep].reshape(len(ids), -1)[:, :K]


def usearch_neighbours(index, emb):
    ids, _ = index.search(emb, K + 1)
    return drop_self(ids)


@pytest.fixture(scope="module")
def built(data):
    _, emb, _ = data
    docs = data[0].column("doc_index").to_numpy()
    return ChunkIndex.build(emb, np.arange(len(emb)), docs, text_hashes=data[0].column("text_hash").to_numpy(),
                            threads=THREADS)


# ------------------------------------------------------------------------ build


def test_build_usearch_hnsw(benchmark, data):
    _, emb, _ = data
    docs = data[0].column("doc_index").to_numpy()
    benchmark.group = "index build (5,595 x 384)"
    benchmark.pedantic(lambda: ChunkIndex.build(emb, np.arange(len(emb)), docs, threads=THREADS), rounds=3)
    REPORT.append(f"build usearch HNSW f16 M={DEFAULT_CONNECTIVITY} efC={DEFAULT_EXPANSION_ADD}: "
                  f"{benchmark.stats.stats.median * 1e3:.0f} ms")


def test_build_faiss_hnsw(benchmark, data):
    faiss = pytest.importorskip("faiss")
    _, emb, _ = data
    faiss.omp_set_num_threads(THREADS)

    def build():
        index = faiss.IndexHNSWFlat(emb.shape[1], DEFAULT_CONNECTIVITY, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = DEFAULT_EXPANSION_ADD
        index.add(emb)
        return index

    benchmark.group = "index build (5,595 x 384)"
    benchmark.pedantic(build, rounds=3)
    REPORT.append(f"build faiss IndexHNSWFlat f32 M={DEFAULT_CONNECTIVITY} efC={DEFAULT_EXPANSION_ADD}: "
                  f"{benchmark.stats.stats.median * 1e3:.0f} ms")


# ------------------------------------------------------------------------ search


def test_search_usearch_hnsw(benchmark, data, built):
    _, emb, truth = data
    benchmark.group = "search all chunks, k=10"
    ids = benchmark.pedantic(lambda: usearch_neighbours(built, emb), rounds=3)
    r = recall(ids, truth)
    benchmark.extra_info["recall@10"] = r
    REPORT.append(f"search usearch HNSW ef={DEFAULT_EXPANSION_SEARCH}: {len(emb) / benchmark.stats.stats.median:,.0f} q/s, recall@10 {r:.4f}")
    assert r >= 0.95


def test_search_usearch_hnsw_f32(benchmark, data):
    """Same as FAISS's storage (f32), for a like-for-like comparison."""
    table, emb, truth = data
    index = ChunkIndex.build(emb, np.arange(len(emb)), table.column("doc_index").to_numpy(), dtype="f32",
                             threads=THREADS)
    benchmark.group = "search all chunks, k=10"
    ids = benchmark.pedantic(lambda: usearch_neighbours(index, emb), rounds=3)
    REPORT.append(f"search usearch HNSW f32 ef={DEFAULT_EXPANSION_SEARCH}: {len(emb) / benchmark.stats.stats.median:,.0f} q/s, "
                  f"recall@10 {recall(ids, truth):.4f}")


def test_search_usearch_excluding_own_document(benchmark, data, built):
    table, emb, _ = data
    docs = table.column("doc_index").to_numpy()
    hashes = table.column("text_hash").to_numpy()
    truth_ids = []
    sims = emb @ emb.T
    sims[docs[:, None] == docs[None, :]] = -np.inf
    sims[hashes[:, None] == hashes[None, :]] = -np.inf
    truth = np.argsort(-sims, axis=1)[:, :K]
    del sims, truth_ids
    benchmark.group = "search all chunks, k=10"
    ids = benchmark.pedantic(lambda: built.search(emb, K, exclude_doc_ids=docs, exclude_hashes=hashes)[0], rounds=3)
    r = recall(ids, truth)
    assert not (docs[ids] == docs[:, None]).any() and (ids >= 0).all()
    REPORT.append(f"search usearch HNSW, own document + duplicates excluded: "
                  f"{len(emb) / benchmark.stats.stats.median:,.0f} q/s, recall@10 {r:.4f} (vs exact with the same exclusions)")


def test_search_faiss_hnsw(benchmark, data):
    faiss = pytest.importorskip("faiss")
    _, emb, truth = data
    faiss.omp_set_num_threads(THREADS)
    index = faiss.IndexHNSWFlat(emb.shape[1], DEFAULT_CONNECTIVITY, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = DEFAULT_EXPANSION_ADD
    index.add(emb)
    index.hnsw.efSearch = DEFAULT_EXPANSION_SEARCH
    benchmark.group = "search all chunks, k=10"
    _, ids = benchmark.pedantic(lambda: index.search(emb, K + 1), rounds=3)
    r = recall(drop_self(ids), truth)
    REPORT.append(f"search faiss IndexHNSWFlat efSearch={DEFAULT_EXPANSION_SEARCH}: {len(emb) / benchmark.stats.stats.median:,.0f} q/s, recall@10 {r:.4f}")


def test_search_faiss_flat_exact(benchmark, data):
    faiss = pytest.importorskip("faiss")
    _, emb, truth = data
    faiss.omp_set_num_threads(THREADS)
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    benchmark.group = "search all chunks, k=10"
    _, ids = benchmark.pedantic(lambda: index.search(emb, K + 1), rounds=3)
    REPORT.append(f"search faiss IndexFlatIP (exact): {len(emb) / benchmark.stats.stats.median:,.0f} q/s, "
                  f"recall@10 {recall(drop_self(ids), truth):.4f}")


# ------------------------------------------------------------------------ sweeps and hardness


def test_recall_sweep(data):
    """Trade-off of HNSW settings, usearch and FAISS side by side (one timed pass each)."""
    faiss = pytest.importorskip("faiss")
    _, emb, truth = data
    docs = np.arange(len(emb))
    faiss.omp_set_num_threads(THREADS)
    lines = ["sweep (M, ef_search): usearch f16 recall / q/s | faiss HNSWFlat recall / q/s"]
    for m in (8, 16, 32):
        index = ChunkIndex.build(emb, np.arange(len(emb)), docs, connectivity=m, threads=THREADS)
        fi = faiss.IndexHNSWFlat(emb.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        fi.hnsw.efConstruction = DEFAULT_EXPANSION_ADD
        fi.add(emb)
        for ef in (16, 32, 64, 128, 256):
            index.usearch.expansion_search = ef
            t = time.perf_counter()
            ids = usearch_neighbours(index, emb)
            qps_u = len(emb) / (time.perf_counter() - t)
            fi.hnsw.efSearch = ef
            t = time.perf_counter()
            _, fids = fi.search(emb, K + 1)
            qps_f = len(emb) / (time.perf_counter() - t)
            lines.append(f"  M={m:<3} ef={ef:<4} {recall(ids, truth):.4f} / {qps_u:>8,.0f} | "
                         f"{recall(drop_self(fids), truth):.4f} / {qps_f:>8,.0f}")
    for dtype in ("i8", "f32"):
        index = ChunkIndex.build(emb, np.arange(len(emb)), docs, dtype=dtype, threads=THREADS)
        lines.append(f"  default settings, {dtype} storage: recall@10 {recall(usearch_neighbours(index, emb), truth):.4f}")
    REPORT.extend(lines)


def test_hardness_of_mined_negatives(data, built):
    """Mean cosine of a chunk to its mined negatives (top-10, other documents, no duplicates)
    against its mean cosine to random chunks of other documents."""
    table, emb, _ = data
    docs = table.column("doc_index").to_numpy()
    hashes = table.column("text_hash").to_numpy()
    ids, sims = built.search(emb, K, exclude_doc_ids=docs, exclude_hashes=hashes)
    rng = np.random.default_rng(0)
    rand = rng.integers(0, len(emb), size=(len(emb), K))
    rand_sims = (emb[:, None, :] * emb[rand]).sum(-1)
    other = docs[rand] != docs[:, None]
    mined, random_mean = float(np.nanmean(sims)), float(rand_sims[other].mean())
    top1 = float(np.nanmean(sims[:, 0]))
    REPORT.append(f"hardness: mean cosine to mined negatives {mined:.3f} (top-1 {top1:.3f}) vs to random "
                  f"other-document chunks {random_mean:.3f}")
    assert mined > random_mean + 0.2


def test_scale_lexical_vectors():
    """A larger, harder index: lexical (hashed TF-IDF, dim 256) vectors of the Python docs chunked at
    512 characters; build time, and recall / queries/s of usearch and FAISS HNSW at the same settings."""
    faiss = pytest.importorskip("faiss")
    from nextlong.embedding import HashedLexicalEmbedder

    texts = chunk_table(pydocs_files(), 512, min_chars=40).column("text").to_pylist()
    emb = HashedLexicalEmbedder(256).fit(texts).embed(texts)
    emb = emb[np.linalg.norm(emb, axis=1) > 0]
    rng = np.random.default_rng(0)
    qi = rng.choice(len(emb), 2000, replace=False)
    q = emb[qi]
    sims = q @ emb.T
    sims[np.arange(len(qi)), qi] = -np.inf
    truth = np.argsort(-sims, axis=1)[:, :K]
    del sims

    def without_self(ids):
        own = ids == qi[:, None]
        keep = ~own
        keep[~own.any(axis=1), -1] = False
        return ids[keep].reshape(len(ids), -1)[:, :K]

    faiss.omp_set_num_threads(THREADS)
    t = time.perf_counter()
    index = ChunkIndex.build(emb, np.arange(len(emb)), np.arange(len(emb)), threads=THREADS)
    build_u = time.perf_counter() - t
    t = time.perf_counter()
    fi = faiss.IndexHNSWFlat(emb.shape[1], DEFAULT_CONNECTIVITY, faiss.METRIC_INNER_PRODUCT)
    fi.hnsw.efConstruction = DEFAULT_EXPANSION_ADD
    fi.add(emb)
    build_f = time.perf_counter() - t
    flat = faiss.IndexFlatIP(emb.shape[1])
    flat.add(emb)
    t = time.perf_counter()
    flat.search(q, K + 1)
    qps_flat = len(q) / (time.perf_counter() - t)
    lines = [f"scale: {len(emb):,} lexical vectors dim 256, 2,000 queries; build usearch f16 {build_u:.1f} s, "
             f"faiss HNSWFlat {build_f:.1f} s; faiss IndexFlatIP exact {qps_flat:,.0f} q/s",
             "  ef_search: usearch recall / q/s | faiss recall / q/s (best of 3)"]
    for ef in (32, 64, 128, 256):
        index.usearch.expansion_search = ef
        fi.hnsw.efSearch = ef
        best_u = best_f = np.inf
        for _ in range(3):
            t = time.perf_counter()
            ids = index.search(q, K + 1)[0]
            best_u = min(best_u, time.perf_counter() - t)
            t = time.perf_counter()
            fids = fi.search(q, K + 1)[1]
            best_f = min(best_f, time.perf_counter() - t)
        lines.append(f"  ef={ef:<4} {recall(without_self(ids), truth):.4f} / {len(q) / best_u:>7,.0f} | "
                     f"{recall(without_self(fids), truth):.4f} / {len(q) / best_f:>7,.0f}")
    REPORT.extend(lines)


def test_zz_report(data):
    table, emb, _ = data
    print(f"\n== bench_index: {len(emb)} Python-docs chunks (2048 chars), all-MiniLM-L6-v2 dim {emb.shape[1]}, "
          f"{table.column('doc_index').to_numpy().max() + 1} documents, {THREADS} threads ==")
    for line in REPORT:
        print(line)
