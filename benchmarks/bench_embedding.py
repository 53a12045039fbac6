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


@pytest.fixture(scope="module")
def corpus():
    from bench_index import corpus_embeddings

    table, emb = corpus_embeddings()
    texts = table.column("text").to_pylist()
    rng = np.random.default_rng(0)
    sample = [texts[i] for i in rng.choice(len(texts), SAMPLE, replace=False)]
    return texts, emb, sample


def _throughput(benchmark, fn, n, label):
    benchmark.group = f"embed {SAMPLE} chunks of <=2048 chars"
    out = benchmark.pedantic(fn, rounds=2, warmup_rounds=1)
    rate = n / benchmark.stats.stats.median
    benchmark.extra_info["chunks_per_s"] = rate
    REPORT.append(f"{label}: {rate:.1f} chunks/s")
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sentence_transformers_encode(benchmark, corpus, dtype):
    import torch
    from sentence_transformers import SentenceTransformer

    from nextlong.embedding import default_model_path

    model = SentenceTransformer(str(default_model_path()), device="cpu").to(getattr(torch, dtype))
    _throughput(benchmark, lambda: model.encode(corpus[2], batch_size=32, normalize_embeddings=True), SAMPLE,
                f"sentence-transformers encode ({dtype}, batch 32)")


def test_nextlong_minilm_fp32(benchmark, corpus):
    from nextlong.embedding import load_embedder

    emb = load_embedder(dtype="float32")
    _throughput(benchmark, lambda: emb.embed(corpus[2]), SAMPLE, "nextlong MiniLM fp32 (length-sorted token batches)")


def test_nextlong_minilm_default(benchmark, corpus):
    from nextlong.embedding import load_embedder

    emb = load_embedder()
    ref = load_embedder(dtype="float32").embed(corpus[2])
    out = _throughput(benchmark, lambda: emb.embed(corpus[2]), SAMPLE,
                      f"nextlong MiniLM default ({str(emb.torch_dtype).replace('torch.', '')})")
    REPORT.append(f"  default vs fp32: min cosine {(out * ref).sum(1).min():.5f}")


def test_lexical_embedder(benchmark, corpus):
    from nextlong.embedding import HashedLexicalEmbedder

    texts = corpus[0]
    emb = HashedLexicalEmbedder(512).fit(texts)
    emb.embed(texts[:4])  # compile
    benchmark.group = "lexical embed, all chunks"
    benchmark.pedantic(lambda: emb.embed(texts), rounds=3)
    REPORT.append(f"lexical hashed-tfidf d512: {len(texts) / benchmark.stats.stats.median:,.0f} chunks/s")


def test_lexical_recall_of_semantic_neighbours(corpus):
    """recall@10 of MiniLM's exact top-10 (other chunks) by the lexical embedder's exact top-10."""
    from nextlong.embedding import HashedLexicalEmbedder

    texts, sem, _ = corpus
    k = 10

    def topk(x):
        s = x @ x.T
        np.fill_diagonal(s, -np.inf)
        return np.argpartition(-s, k, axis=1)[:, :k]

    truth = topk(sem)
    for dim in (256, 512, 1024):
        for bigrams in (False, True):
            lex = HashedLexicalEmbedder(dim, bigrams=bigrams).fit(texts).embed(texts)
            r = np.mean([len(set(a) & set(b)) / k for a, b in zip(topk(lex), truth)])
            REPORT.append(f"lexical d{dim} bigrams={bigrams}: recall@10 of MiniLM neighbours {r:.3f}")
    rng = np.random.default_rng(0)
    chance = np.mean([len(set(rng.choice(len(texts), k, replace=False)) & set(t)) / k for t in truth])
    REPORT.append(f"  random neighbours: recall@10 {chance:.3f}")


def test_zz_report():
    print(f"\n== bench_embedding (sample of {SAMPLE} snapshot chunks, 2048 chars) ==")
    for line in REPORT:
        print(line)
