"""Embedding throughput against a plain sentence-transformers `encode` in the same run, and what the
lexical embedder costs in recall of MiniLM's semantic neighbours.

Data: the shipped snapshot (tests/data) chunked at 2048 characters (the paper's granularity; MiniLM
truncates at 256 tokens). Throughput is measured on a sample of SAMPLE chunks, each side at the same
dtype (fp32 against fp32, bf16 against bf16: the dtype, not the wrapper, sets the speed); the lexical
recall on all chunks against the cached MiniLM embeddings (see bench_index.py; first run embeds them).

    python3 -m pytest -q benchmarks/bench_embedding.py -s
"""

from __future__ import annotations

import numpy as np
import pytest

SAMPLE = 96
REPORT: list[str] = []
RATES: dict[str, float] = {}  # label -> chunks/s, for ratios within this run


@pytest.fixture(scope="module")
def corpus():
    from bench_index import corpus_embeddings

    table, emb = corpus_embeddings()
    texts = table.column("text").to_pylist()
    rng = np.random.default_rng(0)
    sample = [texts[i] for i in rng.choice(len(texts), SAMPLE, replace=False)]
    return texts, emb, sample


@pytest.fixture(scope="module")
def sample():
    """The SAMPLE chunks the throughput tests embed (the same draw as corpus[2]; no embedding needed)."""
    from bench_index import corpus_chunk_table

    texts = corpus_chunk_table().column("text").to_pylist()
    rng = np.random.default_rng(0)
    return [texts[i] for i in rng.choice(len(texts), SAMPLE, replace=False)]


def _throughput(benchmark, fn, n, label):
    benchmark.group = f"embed {SAMPLE} chunks of <=2048 chars"
    out = benchmark.pedantic(fn, rounds=2, warmup_rounds=1)
    rate = n / benchmark.stats.stats.median
    benchmark.extra_info["chunks_per_s"] = rate
    RATES[label] = rate
    REPORT.append(f"{label}: {rate:.1f} chunks/s")
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sentence_transformers_encode(benchmark, sample, dtype):
    import torch
    from sentence_transformers import SentenceTransformer

    from nextlong.mining.embedding import default_model_path

    model = SentenceTransformer(str(default_model_path()), device="cpu").to(getattr(torch, dtype))
    _throughput(benchmark, lambda: model.encode(sample, batch_size=32, normalize_embeddings=True), SAMPLE,
                f"sentence-transformers encode ({dtype}, batch 32)")


def test_nextlong_minilm_fp32(benchmark, sample):
    from nextlong.mining.embedding import load_embedder

    emb = load_embedder(dtype="float32")
    _throughput(benchmark, lambda: emb.embed(sample), SAMPLE, "nextlong MiniLM fp32 (length-sorted token batches)")


def test_nextlong_minilm_default(benchmark, sample):
    from nextlong.mining.embedding import load_embedder

    emb = load_embedder()
    ref = load_embedder(dtype="float32").embed(sample)
    out = _throughput(benchmark, lambda: emb.embed(sample), SAMPLE,
                      f"nextlong MiniLM default ({str(emb.torch_dtype).replace('torch.', '')})")
    REPORT.append(f"  default vs fp32: min cosine {(out * ref).sum(1).min():.5f}")


def test_lexical_embedder(benchmark, corpus):
    from nextlong.mining.embedding import HashedLexicalEmbedder

    texts = corpus[0]
    emb = HashedLexicalEmbedder(512).fit(texts)
    emb.embed(texts[:4])  # compile
    benchmark.group = "lexical embed, all chunks"
    benchmark.pedantic(lambda: emb.embed(texts), rounds=3)
    REPORT.append(f"lexical hashed-tfidf d512: {len(texts) / benchmark.stats.stats.median:,.0f} chunks/s")


def exact_topk(x: np.ndarray, k: int) -> np.ndarray:
    """Each row's k nearest other rows by inner product (unordered), found exactly."""
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    return np.argpartition(-s, k, axis=1)[:, :k]


def test_lexical_recall_of_semantic_neighbours(corpus):
    """recall@10 of MiniLM's exact top-10 (other chunks) by the lexical embedder's exact top-10."""
    from nextlong.mining.embedding import HashedLexicalEmbedder

    texts, sem, _ = corpus
    k = 10

    truth = exact_topk(sem, k)
    for dim in (256, 512, 1024):
        for bigrams in (False, True):
            lex = HashedLexicalEmbedder(dim, bigrams=bigrams).fit(texts).embed(texts)
            r = np.mean([len(set(a) & set(b)) / k for a, b in zip(exact_topk(lex, k), truth)])
            REPORT.append(f"lexical d{dim} bigrams={bigrams}: recall@10 of MiniLM neighbours {r:.3f}")
    rng = np.random.default_rng(0)
    chance = np.mean([len(set(rng.choice(len(texts), k, replace=False)) & set(t)) / k for t in truth])
    REPORT.append(f"  random neighbours: recall@10 {chance:.3f}")


# ------------------------------------------------ static embedder, windows, threading layers (issue 10)


@pytest.fixture(scope="module")
def static_embedder():
    from nextlong.mining.embedding import load_embedder

    return load_embedder("static", threads=2)  # distils MiniLM into the user cache on first use (minutes), then loads


@pytest.fixture(scope="module")
def snapshot_docs():
    from bench_index import corpus_embeddings

    table, _ = corpus_embeddings()
    return np.unique(table.column("doc_id").to_numpy(zero_copy_only=False), return_inverse=True)[1]


# MiniLM settings compared with the static embedder: the default (dtype chosen for this CPU, whole chunk
# in 256-piece windows), the same cut at 256 pieces (what sentence-transformers does), both on 2 threads.
MINILM_VARIANTS = {"default": {}, "cut at 256 pieces": {"long_texts": "truncate"}}
ISSUE_MINILM = 39.0  # chunks/s issue 10 measured for MiniLM elsewhere (35-39): the ratio is also taken against it
RATIO_CHUNKS = 48  # MiniLM runs at 1-10 chunks/s here: 48 chunks keep one timed pass under a minute
WARMUP = 8

FRESH_MINILM = """
import json, sys, time
from nextlong.mining.embedding import load_embedder
texts, warm, kwargs = json.load(open(sys.argv[1]))
emb = load_embedder(threads=2, **kwargs)
emb.embed(warm)
t = time.perf_counter()
emb.embed(texts)
print(len(texts) / (time.perf_counter() - t), emb.dtype)
"""


def _best_rate(fn, n, min_seconds=1.0, max_rounds=50):
    """Best chunks/s over timed passes (at least 2, then until min_seconds have been spent)."""
    import time

    best, spent, rounds = float("inf"), 0.0, 0
    while rounds < 2 or (spent < min_seconds and rounds < max_rounds):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent, rounds = min(best, dt), spent + dt, rounds + 1
    return n / best


def test_static_vs_minilm_same_chunks(corpus, static_embedder, tmp_path):
    """chunks/s on the same RATIO_CHUNKS snapshot chunks, each side warmed up on the same WARMUP chunks,
    2 threads: the static embedder (native WordPiece, and through HF `tokenizers` as before), hashed-tfidf,
    MiniLM default and cut in this process, and MiniLM again in a fresh process each. Ratios against every
    MiniLM figure and against the issue's 39 chunks/s."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from nextlong.mining.embedding import HashedLexicalEmbedder, load_embedder

    all_texts = corpus[0]
    rng = np.random.default_rng(1)
    picked = [all_texts[i] for i in rng.choice(len(all_texts), RATIO_CHUNKS + WARMUP, replace=False)]
    warm, texts = picked[:WARMUP], picked[WARMUP:]
    load = [os.getloadavg()[0]]
    rates = {}

    native = static_embedder.wordpiece
    for label, wordpiece in (("static (native WordPiece)", native), ("static (HF tokenizers, before)", None)):
        static_embedder.wordpiece = wordpiece
        static_embedder.embed(warm)
        rates[label] = _best_rate(lambda: static_embedder.embed(texts), len(texts))
    static_embedder.wordpiece = native
    lexical = HashedLexicalEmbedder(512).fit(all_texts)
    lexical.embed(warm)
    rates["hashed-tfidf d512"] = _best_rate(lambda: lexical.embed(texts), len(texts))

    dtype = None
    for variant, kwargs in MINILM_VARIANTS.items():
        emb = load_embedder(threads=2, **kwargs)
        dtype = emb.dtype
        emb.embed(warm)
        rates[f"MiniLM {variant} ({emb.dtype}), this process"] = _best_rate(lambda: emb.embed(texts), len(texts),
                                                                             min_seconds=0)
        del emb
    job = tmp_path / "texts.json"
    root = Path(__file__).resolve().parents[1]
    for variant, kwargs in MINILM_VARIANTS.items():
        job.write_text(json.dumps([texts, warm, kwargs]))
        out = subprocess.run([sys.executable, "-c", FRESH_MINILM, str(job)], cwd=root, check=True,
                             capture_output=True, text=True).stdout.split()
        rates[f"MiniLM {variant} ({out[1]}), fresh process"] = float(out[0])
    load.append(os.getloadavg()[0])

    static = rates["static (native WordPiece)"]
    REPORT.append(f"same {len(texts)} chunks, 2 threads, load {load[0]:.1f} -> {load[1]:.1f} (MiniLM default dtype "
                  f"here: {dtype}):")
    for label, rate in rates.items():
        REPORT.append(f"  {label}: {rate:,.1f} chunks/s")
    for label, rate in rates.items():
        if label.startswith("MiniLM"):
            REPORT.append(f"  static / {label}: {static / rate:,.0f}x (>= 100x: {'yes' if static >= 100 * rate else 'NO'})")
    REPORT.append(f"  static / the issue's MiniLM ({ISSUE_MINILM:.0f} chunks/s elsewhere): {static / ISSUE_MINILM:,.0f}x "
                  f"(>= 100x: {'yes' if static >= 100 * ISSUE_MINILM else 'NO'})")
    REPORT.append(f"  native WordPiece / HF tokenizers path: {static / rates['static (HF tokenizers, before)']:.1f}x")


def test_minilm_compute_ceiling():
    """Why MiniLM cannot reach 35-39 chunks/s on this CPU: fp32 matrix products with MiniLM's shapes
    (a batch of 8 windows of 256 pieces) run by torch on 2 threads, against the FLOPs one 256-piece
    window needs (6 layers: Q, K, V, O, the 1536-wide feed-forward, attention scores and mix). Reported
    per wall second and per CPU second of this process (the latter holds under load: two idle cores
    would give about twice it)."""
    import os
    import re
    import time
    from pathlib import Path

    import torch

    torch.set_num_threads(2)
    rows = 8 * 256
    shapes = [(384, 384)] * 4 + [(384, 1536), (1536, 384)]
    x = {k: torch.randn(rows, k) for k in (384, 1536)}
    w = [torch.randn(k, n) for k, n in shapes]
    flops = sum(2 * rows * k * n for k, n in shapes)
    run = lambda: [x[k] @ wi for (k, _), wi in zip(shapes, w)]  # noqa: E731
    for _ in range(3):
        run()
    wall, cpu = float("inf"), float("inf")
    for _ in range(10):
        t, c = time.perf_counter(), time.process_time()
        run()
        wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
    per_window = 6 * (sum(2 * 256 * k * n for k, n in shapes) + 2 * 2 * 256 * 256 * 384)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if re.search(rf"\b{f}\b", flags)]
    per_core = flops / cpu / 1e9
    REPORT.append(f"fp32 GEMM with MiniLM's shapes, 2 threads (CPU has {', '.join(isa) or 'none of avx2/avx512'}; "
                  f"load {os.getloadavg()[0]:.1f}): {flops / wall / 1e9:.0f} GFLOP/s wall, {per_core:.0f} GFLOP per "
                  f"CPU-second; one 256-piece window needs {per_window / 1e9:.2f} GFLOP -> two idle cores give at most "
                  f"~{2 * per_core * 1e9 / per_window:.0f} windows/s; 35-39 chunks/s of >= 256 pieces need "
                  f"{37 * per_window / 1e9:.0f} GFLOP/s")


def _mined(vecs, docs, k=10):
    """Each chunk's k most similar chunks of OTHER documents (what NExtLong would mine as negatives)."""
    sims = vecs @ vecs.T
    sims[docs[:, None] == docs[None, :]] = -np.inf
    return np.argpartition(-sims, k, axis=1)[:, :k]


def _hardness(judge, vecs, docs, rng):
    """(mean judge-similarity of each chunk to its mined negatives, of random other-document pairs)."""
    neg = _mined(vecs, docs)
    mined = float(np.mean(np.einsum("nd,nkd->nk", judge, judge[neg])))
    a = rng.integers(0, len(docs), 20000)
    b = rng.integers(0, len(docs), 20000)
    keep = docs[a] != docs[b]
    return mined, float(np.mean(np.sum(judge[a[keep]] * judge[b[keep]], axis=1)))


def test_static_and_lexical_quality_against_minilm(corpus, static_embedder, snapshot_docs):
    """recall@10 of MiniLM's exact neighbours, and hardness: the similarity (judged by MiniLM, which sees
    the whole chunk) of the negatives each embedder mines (top-10 of other documents) vs random pairs."""
    from nextlong.mining.embedding import HashedLexicalEmbedder

    texts, sem, _ = corpus
    k = 10

    truth = exact_topk(sem, k)
    rng = np.random.default_rng(0)
    for name, vecs in (("MiniLM (windows)", sem), (f"static d{static_embedder.dim}", static_embedder.embed(texts)),
                       ("hashed-tfidf d512", HashedLexicalEmbedder(512).fit(texts).embed(texts))):
        r = np.mean([len(set(a) & set(b)) / k for a, b in zip(exact_topk(vecs, k), truth)])
        mined, rand = _hardness(sem, vecs, snapshot_docs, rng)
        REPORT.append(f"{name}: recall@10 of MiniLM neighbours {r:.3f}; MiniLM similarity of mined negatives "
                      f"{mined:.3f} vs random pairs {rand:.3f}")


def test_windowed_embedding_effect_on_hardness(corpus, snapshot_docs):
    """MiniLM cut at 256 pieces (sentence-transformers' behaviour) against the default windows: how many
    chunks are longer than one window, how far the vectors move, and how hard the mined negatives are,
    judged by the windowed vectors (the whole chunk) and by the cut ones."""
    from bench_index import CACHE

    from nextlong.mining.embed_store import embed_chunks
    from nextlong.mining.embedding import load_embedder

    texts, whole, _ = corpus
    cut_emb = load_embedder(dtype="float32", long_texts="truncate")
    cut = np.asarray(embed_chunks(texts, cut_emb, CACHE / "snapshot-2048.all-MiniLM-L6-v2.truncate.npy",
                                  progress=True), np.float32)
    counter = load_embedder(dtype="float32")
    counter.windows(texts)  # tokenization only: counts the chunks that need more than one window
    windowed = counter.windowed_texts
    REPORT.append(f"MiniLM windows: {windowed} of {len(texts)} chunks longer than {cut_emb.max_length} pieces; "
                  f"cosine(windowed, cut) median {np.median((whole * cut).sum(1)):.3f}")
    rng = np.random.default_rng(0)
    for judge_name, judge in (("whole chunk", whole), ("first 256 pieces", cut)):
        for mined_name, vecs in (("cut", cut), ("windows", whole)):
            mined, rand = _hardness(judge, vecs, snapshot_docs, rng)
            REPORT.append(f"  negatives mined with {mined_name:7s} judged on the {judge_name}: anchor-negative "
                          f"{mined:.3f} vs random {rand:.3f}")


ASSEMBLE_THEN_EMBED = """
import sys, time
import numpy as np
if sys.argv[1] == "after-assembly":  # a numba parallel kernel runs before torch is imported
    from nextlong.synthesis.assemble import Plan, assemble
    plan = Plan.from_lists([([0, 1, 2], [0, 0, 0])] * 8, list(range(8)))
    assemble(np.arange(10000, dtype=np.uint32), np.arange(0, 10001, 100), plan, np.array([1], np.uint32), 256,
             impl="numba")
from nextlong.mining.embedding import load_embedder
sys.path.insert(0, "tests")
from helpers import chunk_table, corpus_head
texts = chunk_table(corpus_head(limit=60), 2048).column("text").to_pylist()[:48]
emb = load_embedder(dtype="float32", threads=2, long_texts="truncate")
emb.embed(texts[:4])
t = time.perf_counter()
emb.embed(texts)
print(len(texts) / (time.perf_counter() - t))
"""


def test_minilm_speed_after_assembly_matches_a_fresh_process():
    """The numba assembly kernel must not slow MiniLM down in the same process (two OpenMP runtimes made
    it ~9x slower): fresh processes, alternating, best of three each; within 20%."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    rates = {"fresh": [], "after-assembly": []}
    for _ in range(3):
        for mode in rates:
            out = subprocess.run([sys.executable, "-c", ASSEMBLE_THEN_EMBED, mode], cwd=root, check=True,
                                 capture_output=True, text=True).stdout
            rates[mode].append(float(out.strip().splitlines()[-1]))
    best = {m: max(r) for m, r in rates.items()}
    REPORT.append(f"MiniLM fp32 2 threads, fresh process {best['fresh']:.1f} chunks/s, after the numba assembly "
                  f"kernel {best['after-assembly']:.1f} chunks/s (load {os.getloadavg()[0]:.1f})")
    assert best["after-assembly"] >= 0.8 * best["fresh"], rates


def test_zz_report():
    print(f"\n== bench_embedding (sample of {SAMPLE} snapshot chunks, 2048 chars) ==")
    for line in REPORT:
        print(line)
