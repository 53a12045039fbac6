"""Hard-negative index: HNSW recall against exact search, build time and queries/s against FAISS,
and a "hardness" figure (how similar mined negatives are, compared with random chunks).

Data: the shipped snapshot (tests/data: docstrings of Python 3.11's standard library) chunked at 2048
characters with the paper's rule, embedded with the default all-MiniLM-L6-v2. The embeddings are cached
(resumable) in $NEXTLONG_BENCH_CACHE (default ~/.cache/nextlong-bench). Queries: every chunk (in-sample:
the query is in the index and its own row is dropped), k=10, threads = the cores available, same for
usearch and FAISS.

Equal-recall study (test_equal_recall_*): recall@10-vs-queries/s curves of raw usearch, nextlong's
ChunkIndex.search and FAISS IndexHNSWFlat, read at recall 0.95 / 0.99 / 0.995, on the MiniLM set and on
tens of thousands of hashed-lexical vectors (dim 256; 38,302 here) of the snapshot + the running interpreter's standard-library
sources (built in seconds); each both in-sample and with held-out queries (HELD_OUT of the rows left
out of the index and used as queries: what mining looks like for text the index has not seen).

    python3 -m pytest -q benchmarks/bench_index.py -s        # pytest-benchmark tables + report
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from nextlong.mining.embedding import available_threads
from nextlong.mining.index import DEFAULT_CONNECTIVITY, DEFAULT_EXPANSION_ADD, DEFAULT_EXPANSION_SEARCH, ChunkIndex
from tests.helpers import benchmark_documents, chunk_table, corpus_documents, write_chunk_table

HELD_OUT = 0.1
CACHE = Path(os.environ.get("NEXTLONG_BENCH_CACHE", Path.home() / ".cache" / "nextlong-bench"))
K = 10
THREADS = available_threads()
REPORT: list[str] = []


def corpus_chunk_table(path: bool = False):
    """The snapshot's chunk table at 2048 chars (cached Parquet; its path when `path`)."""
    import pyarrow.parquet as pq

    CACHE.mkdir(parents=True, exist_ok=True)
    chunks = CACHE / "snapshot-2048.parquet"
    if not chunks.is_file():
        write_chunk_table(chunk_table(corpus_documents(), 2048), chunks)
    return chunks if path else pq.read_table(chunks)


def corpus_embeddings(embedder_name: str | None = None):
    """(chunk table, embeddings) of the shipped snapshot at 2048 chars; embedded once, resumable, cached."""
    import pyarrow.parquet as pq

    from nextlong.mining.embed_store import embed_chunks
    from nextlong.mining.embedding import load_embedder

    chunks = corpus_chunk_table(path=True)
    embedder = load_embedder(embedder_name)
    emb = embed_chunks(chunks, embedder, CACHE / f"snapshot-2048.{embedder.name}.npy", progress=True)
    return pq.read_table(chunks), np.asarray(emb, dtype=np.float32)


@pytest.fixture(scope="module")
def data():
    table, emb = corpus_embeddings()
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
    benchmark.group = f"index build ({len(emb):,} x {emb.shape[1]})"
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

    benchmark.group = f"index build ({len(emb):,} x {emb.shape[1]})"
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


# ------------------------------------------------------------------------ equal-recall comparison
#
# Parameters do not mean the same in two libraries (usearch's graph at connectivity M is not FAISS's at
# M, and f16 storage shifts recall), so the comparison is made at equal recall: for each build setting,
# each contender's search-time knob (usearch expansion_search / FAISS efSearch) is swept over EF_GRID,
# giving a recall@10-vs-queries/s curve, and the curves are read at RECALL_TARGETS. Timings are the best
# of SWEEP_ROUNDS warm passes over all queries, contenders interleaved so that load from other processes
# falls on all of them alike; every library runs on THREADS threads. Recall here counts ties: a result
# is correct when its exact cosine reaches the exact 10th-best one (the corpora hold duplicate chunks, and
# the lexical vectors many equal scores, so which of several equally near ids comes back is arbitrary).

EF_GRID = (11, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
RECALL_TARGETS = (0.95, 0.99, 0.995)
STOP_RECALL = 0.9995  # a contender's sweep ends past this (all targets are then behind it)
SWEEP_ROUNDS = 5
CURVES: dict[str, dict[str, list[tuple[int, float, float]]]] = {}  # data set -> contender -> (ef, recall, q/s)


def without_self(ids, own):
    """Top-K of K+1 results without each query's own row `own[i]` (or without the last when absent)."""
    hit = ids == own[:, None]
    keep = ~hit
    keep[~hit.any(axis=1), -1] = False
    return ids[keep].reshape(len(ids), -1)[:, :K]


def usearch_contenders(index: ChunkIndex, queries, own, label: str):
    """Raw usearch (the library alone, given queries already in the index's storage type) and the
    nextlong wrapper (`ChunkIndex.search`, float32 queries in, int64 ids / float32 similarities out)."""
    prepared = index._prepare_queries(np.asarray(queries, dtype=np.float32))

    def set_ef(ef):
        index.usearch.expansion_search = ef

    def raw():
        return index.usearch.search(prepared, K + 1, threads=THREADS).keys

    def wrapped():
        return index.search(queries, K + 1, threads=THREADS)[0]

    return {f"usearch {label} (raw)": (set_ef, raw), f"nextlong ChunkIndex {label}": (set_ef, wrapped)}


def faiss_contender(faiss_index, queries, own, label: str):
    def set_ef(ef):
        faiss_index.hnsw.efSearch = ef

    def run():
        return faiss_index.search(queries, K + 1)[1]

    return {f"faiss HNSWFlat {label}": (set_ef, run)}


def kth_similarity(queries, emb, own):
    """Exact K-th best cosine of each query among the other rows (its own row `own[i]` excluded; -1:
    a held-out query, not in the index)."""
    out = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), 1024):
        sims = queries[start : start + 1024] @ emb.T
        mine = own[start : start + 1024]
        sims[np.flatnonzero(mine >= 0), mine[mine >= 0]] = -np.inf
        out[start : start + 1024] = -np.partition(-sims, K - 1, axis=1)[:, K - 1]
    return out


def tie_recall(ids, queries, emb, kth, tol=1e-5):
    """Share of the K results whose exact cosine is at least the exact K-th best (ties count)."""
    hits = 0
    for start in range(0, len(ids), 1024):
        block = ids[start : start + 1024]
        sims = np.einsum("nd,nkd->nk", queries[start : start + 1024], emb[np.maximum(block, 0)])
        hits += int(((sims >= kth[start : start + 1024, None] - tol) & (block >= 0)).sum())
    return hits / ids.size


def sweep(contenders: dict, own, score) -> dict[str, list[tuple[int, float, float]]]:
    """Each contender's run() returns (n, K+1) ids (timed); its own row is dropped after the clock."""
    curves = {name: [] for name in contenders}
    active = list(contenders)
    for ef in EF_GRID:
        best = dict.fromkeys(active, np.inf)
        found = {}
        for _ in range(SWEEP_ROUNDS):
            for name in active:
                set_ef, run = contenders[name]
                set_ef(ef)
                t = time.perf_counter()
                found[name] = run()
                best[name] = min(best[name], time.perf_counter() - t)
        for name in list(active):
            r = score(without_self(np.asarray(found[name]).astype(np.int64), own))
            curves[name].append((ef, r, len(own) / best[name]))
            if r >= STOP_RECALL:
                active.remove(name)
        if not active:
            break
    return curves


def at_recall(curve, target):
    """(q/s, ef) where `curve` reaches `target`: log-q/s interpolated between the two grid points that
    bracket it; the first point when the smallest ef already reaches it; (nan, None) when never reached."""
    prev = None
    for ef, r, qps in curve:
        if r >= target:
            if prev is None or prev[1] >= target:
                return qps, ef
            f = (target - prev[1]) / (r - prev[1])
            return float(np.exp(np.log(prev[2]) + f * (np.log(qps) - np.log(prev[2])))), ef
        prev = (ef, r, qps)
    return float("nan"), None


def report_curves(title: str, curves: dict) -> list[str]:
    lines = [f"{title}: q/s at recall@10 target (interpolated; ef = cheapest grid value reaching it)",
             f"  {'contender':<42}" + "".join(f"{'@' + str(t):>18}" for t in RECALL_TARGETS) + "   max recall"]
    for name, curve in curves.items():
        cells = []
        for t in RECALL_TARGETS:
            qps, ef = at_recall(curve, t)
            cells.append(f"{'-':>18}" if ef is None else f"{qps:>10,.0f} (ef {ef:>3})")
        lines.append(f"  {name:<42}" + "".join(cells) + f"   {max(r for _, r, _ in curve):.4f}")
    lines.append("  curves (ef: recall / q/s):")
    for name, curve in curves.items():
        lines.append(f"    {name}: " + "  ".join(f"{ef}:{r:.4f}/{q:,.0f}" for ef, r, q in curve))
    return lines


def faiss_hnsw(emb, m, ef_construction=DEFAULT_EXPANSION_ADD):
    import faiss

    index = faiss.IndexHNSWFlat(emb.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(np.ascontiguousarray(emb, dtype=np.float32))
    return index


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def equal_recall_study(name, emb, queries, own, settings, dtypes=("f16",)):
    """Build each setting with usearch (each dtype) and FAISS, sweep, and record the curves."""
    faiss = pytest.importorskip("faiss")
    faiss.omp_set_num_threads(THREADS)
    kth = kth_similarity(queries, emb, own)
    lines = []
    for m in settings:
        contenders = {}
        builds = []
        for dtype in dtypes:
            index, secs = timed(lambda: ChunkIndex.build(emb, np.arange(len(emb)), np.arange(len(emb)),
                                                         dtype=dtype, connectivity=m, threads=THREADS))
            builds.append(f"usearch {dtype} {secs:.2f} s")
            contenders.update(usearch_contenders(index, queries, own, f"{dtype} M={m}"))
        fi, secs = timed(lambda: faiss_hnsw(emb, m))
        builds.append(f"faiss f32 {secs:.2f} s")
        contenders.update(faiss_contender(fi, queries, own, f"f32 M={m}"))
        curves = sweep(contenders, own, lambda ids: tie_recall(ids, queries, emb, kth))
        CURVES.setdefault(name, {}).update(curves)
        lines.append(f"  build M={m} efC={DEFAULT_EXPANSION_ADD}: " + ", ".join(builds))
    flat = faiss.IndexFlatIP(emb.shape[1])
    flat.add(np.ascontiguousarray(emb, dtype=np.float32))
    best = min(timed(lambda: flat.search(queries, K + 1))[1] for _ in range(3))
    lines.append(f"  faiss IndexFlatIP (exact, recall 1): {len(queries) / best:,.0f} q/s")
    REPORT.extend(report_curves(name, CURVES[name]) + lines)


MINILM = "MiniLM (all chunks as queries)"
LEXICAL = "lexical"


def held_out_split(n: int, seed: int = 0):
    """(index rows, query rows): HELD_OUT of the rows, drawn at random, are kept out of the index."""
    held = np.zeros(n, bool)
    held[np.random.default_rng(seed).choice(n, int(n * HELD_OUT), replace=False)] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def test_equal_recall_minilm(data):
    _, emb, _ = data
    equal_recall_study(f"MiniLM {len(emb):,} x {emb.shape[1]} (all chunks as queries, in-sample)", emb, emb,
                       np.arange(len(emb)), (8, 16, 32), dtypes=("f16", "bf16"))
    CURVES[MINILM] = CURVES[next(n for n in CURVES if n.startswith("MiniLM") and "in-sample" in n)]


def test_equal_recall_minilm_held_out(data):
    _, emb, _ = data
    rows, queries = held_out_split(len(emb))
    equal_recall_study(f"MiniLM {len(rows):,} x {emb.shape[1]} indexed, {len(queries):,} held-out queries",
                       emb[rows], emb[queries], np.full(len(queries), -1), (8, 16, 32), dtypes=("f16", "bf16"))


def lexical_scale_set():
    """Hashed TF-IDF (dim 256) vectors of the snapshot and the running interpreter's standard-library
    sources (UTF-8 .py files outside test and site-packages folders), chunked at 384 characters (chunks
    under 40 characters and all-zero vectors dropped); cached."""
    from nextlong.mining.embedding import HashedLexicalEmbedder

    path = CACHE / "snapshot-stdlib-384.lexical256.npy"
    if path.is_file():
        return np.load(path)
    texts = chunk_table(benchmark_documents(), 384, min_chars=40).column("text").to_pylist()
    emb = HashedLexicalEmbedder(256).fit(texts).embed(texts)
    emb = np.ascontiguousarray(emb[np.linalg.norm(emb, axis=1) > 0], dtype=np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, emb)
    return emb


def test_equal_recall_lexical_scale():
    emb = lexical_scale_set()
    rng = np.random.default_rng(0)
    own = np.sort(rng.choice(len(emb), 2000, replace=False))
    name = f"{LEXICAL} {len(emb):,} x 256 (2,000 in-index queries)"
    equal_recall_study(name, emb, emb[own], own, (16, 32))


def test_equal_recall_lexical_held_out():
    emb = lexical_scale_set()
    rows, queries = held_out_split(len(emb))
    queries = queries[np.random.default_rng(1).choice(len(queries), 2000, replace=False)]
    name = f"{LEXICAL} {len(rows):,} x 256 indexed, 2,000 held-out queries"
    equal_recall_study(name, emb[rows], emb[queries], np.full(len(queries), -1), (16, 32))


PREFIXES = {"usearch": "usearch f16 ", "nextlong": "nextlong ChunkIndex f16 ", "faiss": "faiss HNSWFlat "}


@pytest.mark.parametrize("who", list(PREFIXES))
def test_search_at_equal_recall_099(benchmark, data, who):
    """pytest-benchmark entries at equal recall: each contender at its best build setting (of the MiniLM
    sweep) and the cheapest ef reaching recall@10 0.99 (ties count) there, timed over all chunks."""
    curves = {n: c for n, c in CURVES.get(MINILM, {}).items() if n.startswith(PREFIXES[who])}
    if not curves:
        pytest.skip("needs test_equal_recall_minilm's sweep (run the whole file)")
    name = max(curves, key=lambda n: np.nan_to_num(at_recall(curves[n], 0.99)[0]))
    _, ef = at_recall(curves[name], 0.99)
    m = int(name.split("M=")[1].split()[0])
    _, emb, truth = data
    own = np.arange(len(emb))
    if who == "faiss":
        import faiss

        faiss.omp_set_num_threads(THREADS)
        contender = faiss_contender(faiss_hnsw(emb, m), emb, own, f"f32 M={m}")
    else:
        index = ChunkIndex.build(emb, own, own, connectivity=m, threads=THREADS)
        contender = usearch_contenders(index, emb, own, f"f16 M={m}")
    set_ef, run = contender[name]
    set_ef(ef)
    benchmark.group = "search all MiniLM chunks at recall@10 >= 0.99 (best build of each), k=10"
    ids = without_self(np.asarray(benchmark.pedantic(run, rounds=7, warmup_rounds=1)).astype(np.int64), own)
    benchmark.extra_info.update({"contender": name, "ef": ef, "recall@10 (ids)": recall(ids, truth),
                                 "recall@10 (ties count)": tie_recall(ids, emb, emb, kth_similarity(emb, emb, own)),
                                 **{f"sweep q/s@{t}": at_recall(curves[name], t)[0] for t in RECALL_TARGETS}})
    REPORT.append(f"at recall 0.99, timed by pytest-benchmark: {name} ef={ef}: "
                  f"{len(emb) / benchmark.stats.stats.min:,.0f} q/s (best of 7)")


# ------------------------------------------------------------------------ hardness


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


def test_zz_report(data):
    table, emb, _ = data
    print(f"\n== bench_index: {len(emb)} snapshot chunks (2048 chars), all-MiniLM-L6-v2 dim {emb.shape[1]}, "
          f"{table.column('doc_index').to_numpy().max() + 1} documents, {THREADS} threads; load average "
          f"(1/5/15 min) at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ==")
    for line in REPORT:
        print(line)
