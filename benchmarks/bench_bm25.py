"""BM25 retrieval: our index (nextlong/mining/bm25.py, native search) against bm25s, and against plain numpy /
scipy-sparse searches over the same matrix; plus the term choice (words vs BPE tokens) on a recall check.

    python3 -m benchmarks.bench_bm25 [--threads 2] [--queries 2000]        # the real text
    python3 -m benchmarks.bench_bm25 --scale 100000 [--threads 2]           # generated chunks

Text: the benchmarks' corpus (tests/helpers.benchmark_documents: the shipped docstrings, then this
Python's standard-library sources; ~14 MB with 3.11) cut by the production chunker into 1,024-character
chunks. Queries: for a random chunk, one of its sentences (6-30 words), either verbatim ("sentence") or
as 5 of its words in random order after "how does" ("keywords"); a hit is the source chunk (or a chunk of
identical text) ranked first / in the top 10.

bm25s (pip install bm25s; not a nextlong dependency) gets the same terms: our lowercased `\\w+` words,
handed over already split, method="lucene", the same k1 and b, so both compute the same scores and
top-10 agreement measures ties and float rounding only. Build time is reported twice: from raw text
(each library's own tokenizer: bm25s.tokenize splits with its default pattern, which drops one-letter
words) and from the shared pre-split lists. Peak memory is each build's peak RSS above the process's
RSS before it, measured in a fresh subprocess per contender.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import subprocess
import sys
import time

import numpy as np

from nextlong.mining.bm25 import BM25Index, word_terms

K1, B = 1.2, 0.75
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1))


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so a later VmHWM is the peak of what follows."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def corpus_chunks(scale: int = 0, seed: int = 0) -> list[str]:
    """Chunk texts: the benchmarks' corpus in 1,024-character chunks, or `scale` generated chunks of
    80-240 words (uniform) drawn from a Zipf(1.1) law over 200,000 made-up words."""
    if scale:
        rng = np.random.default_rng(seed)
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        words = ["".join(rng.choice(letters, int(n))) + str(i) for i, n in enumerate(rng.integers(2, 9, 200_000))]
        vocab = np.array(words, dtype=object)
        out = []
        for _ in range(0, scale, 10_000):
            ids = np.minimum(rng.zipf(1.1, size=(10_000, 240)), len(vocab)) - 1
            lengths = rng.integers(80, 241, 10_000)
            out.extend(" ".join(row[:n]) for row, n in zip(vocab[ids], lengths))
        return out[:scale]
    from tests.helpers import benchmark_documents, chunk_table

    table = chunk_table(benchmark_documents(), max_chars=1024, min_chars=40)
    return table.column("text").to_pylist()


def make_queries(texts: list[str], n: int, seed: int = 0) -> tuple[list[str], list[str], list[int]]:
    """(sentence queries, keyword queries, source chunk rows) for up to n random chunks."""
    rng = random.Random(seed)
    rows = list(range(len(texts)))
    rng.shuffle(rows)
    sentences, keywords, sources = [], [], []
    for row in rows:
        candidates = [s.strip() for s in _SENTENCE.split(texts[row]) if 6 <= len(s.split()) <= 30]
        if not candidates and len(texts[row].split()) > 30:  # generated text has no sentences: 12 words
            words = texts[row].split()
            start = rng.randrange(len(words) - 12)
            candidates = [" ".join(words[start:start + 12])]
        if not candidates:
            continue
        sentence = rng.choice(candidates)
        words = re.findall(r"\w+", sentence)
        if len(words) < 5:
            continue
        sentences.append(sentence)
        keywords.append("how does " + " ".join(rng.sample(words, 5)))
        sources.append(row)
        if len(sources) == n:
            break
    return sentences, keywords, sources


def hit_rates(ids: np.ndarray, sources: list[int], texts: list[str]) -> tuple[float, float]:
    """(hit@1, hit@10): the source chunk, or one of identical text, ranked first / in the top 10."""
    at1 = at10 = 0
    for row, src in zip(ids, sources):
        same = [r for r in row[:10] if r >= 0 and (r == src or texts[r] == texts[src])]
        at10 += bool(same)
        at1 += bool(len(row) and row[0] >= 0 and (row[0] == src or texts[row[0]] == texts[src]))
    return at1 / len(sources), at10 / len(sources)


# --- the same search without the native helper -----------------------------------------------------


def _top_k(cand: np.ndarray, s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (row, score) by (score desc, row asc); a partition first when there are more than k."""
    if len(cand) > k:
        kth = np.partition(s, len(s) - k)[len(s) - k]
        keep = s >= kth
        cand, s = cand[keep], s[keep]
    order = np.lexsort((cand, -s))[:k]
    return cand[order], s[order]


def numpy_search(index: BM25Index, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query: gather the postings of its terms, np.bincount them into a dense score row, then top-k
    by (float32 score desc, row asc) among the rows that matched."""
    n = len(index)
    out_ids = np.full((len(queries), k), -1, np.int64)
    out_sc = np.full((len(queries), k), np.nan, np.float32)
    for qi, q in enumerate(queries):
        terms, mult = np.unique(index.query_terms(q), return_counts=True)
        if not len(terms):
            continue
        parts = [(index.postings[index.indptr[t]:index.indptr[t + 1]], index.weights[index.indptr[t]:index.indptr[t + 1]] * c)
                 for t, c in zip(terms, mult)]
        rows = np.concatenate([p for p, _ in parts])
        w = np.concatenate([x for _, x in parts]).astype(np.float64)
        scores = np.bincount(rows, w, minlength=n).astype(np.float32)
        cand = np.unique(rows)
        s = scores[cand]
        top = _top_k(cand, s, k)
        out_ids[qi, :len(top[0])], out_sc[qi, :len(top[0])] = top
    return out_ids, out_sc


def scipy_search(index: BM25Index, queries, k: int, matrix=None) -> tuple[np.ndarray, np.ndarray]:
    """The whole batch as one sparse product: (Q x V query counts) @ (V x N weights), then per row top-k."""
    import scipy.sparse as sp

    if matrix is None:
        matrix = sp.csr_matrix((index.weights, index.postings, index.indptr), shape=(index.num_terms, len(index)))
    rows, cols, vals = [], [], []
    for qi, q in enumerate(queries):
        t, c = np.unique(index.query_terms(q), return_counts=True)
        rows.append(np.full(len(t), qi))
        cols.append(t)
        vals.append(c.astype(np.float32))
    qm = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                       shape=(len(queries), index.num_terms))
    prod = (qm @ matrix).tocsr()
    out_ids = np.full((len(queries), k), -1, np.int64)
    out_sc = np.full((len(queries), k), np.nan, np.float32)
    for qi in range(len(queries)):
        lo, hi = prod.indptr[qi], prod.indptr[qi + 1]
        cand, s = prod.indices[lo:hi].astype(np.int64), prod.data[lo:hi].astype(np.float32)
        top = _top_k(cand, s, k)
        out_ids[qi, :len(top[0])], out_sc[qi, :len(top[0])] = top
    return out_ids, out_sc


# --- one contender per subprocess (peak memory) ----------------------------------------------------


def _load_shared(scale: int, n_queries: int):
    texts = corpus_chunks(scale)
    sentences, keywords, sources = make_queries(texts, n_queries)
    return texts, sentences + keywords, sources


def timed(fn, repeats: int = 1):
    """(fn's result, best wall seconds, best CPU seconds of this process, all threads) over `repeats`."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        wall, cpu = min(wall, time.perf_counter() - w0), min(cpu, time.process_time() - c0)
    return result, wall, cpu


def run_contender(name: str, scale: int, n_queries: int, threads: int, k: int = 10) -> dict:
    """Build from texts and search the queries (strings in, ids out: query splitting is timed too)."""
    texts, queries, sources = _load_shared(scale, n_queries)
    out = {"name": name}
    split = [word_terms(t) for t in texts] if name in ("ours-pretokenized", "bm25s", "bm25s-numba") else None
    gc.collect()
    reset_peak()
    base = rss_kib("VmRSS")
    if name.startswith("ours"):
        terms = "tokens" if name == "ours-tokens" else "words"
        index, out["build_s"], out["build_cpu_s"] = timed(
            lambda: BM25Index.build(split if split is not None else texts, k1=K1, b=B, terms=terms, num_threads=threads))
        out["build_peak_mib"] = (rss_kib("VmHWM") - base) / 1024
        out["index_mib"] = sum(a.nbytes for a in (index.indptr, index.postings, index.weights, index.doc_lengths)) / 2**20
        index.search(queries[:50], k, num_threads=threads)  # warm the pool

        def search(kk):
            return index.search(queries, kk, num_threads=threads)
    else:
        import bm25s

        backend = "numba" if name == "bm25s-numba" else "numpy"

        def build():
            retriever = bm25s.BM25(k1=K1, b=B, method="lucene", backend=backend)
            retriever.index(split if split is not None else bm25s.tokenize(texts, stopwords=None, show_progress=False),
                            show_progress=False)
            return retriever

        retriever, out["build_s"], out["build_cpu_s"] = timed(build)
        out["build_peak_mib"] = (rss_kib("VmHWM") - base) / 1024
        sc = retriever.scores
        out["index_mib"] = sum(sc[key].nbytes for key in ("data", "indices", "indptr")) / 2**20

        def search(kk):
            if name == "bm25s-raw":
                q_split = bm25s.tokenize(queries, stopwords=None, show_progress=False, return_ids=False)
            else:
                q_split = [word_terms(q) for q in queries]
            ids, scores = retriever.retrieve(q_split, k=min(kk, len(texts)), show_progress=False, n_threads=threads)
            ids, scores = np.asarray(ids, np.int64), np.asarray(scores, np.float32)
            unmatched = ~(scores > 0)  # bm25s fills k with unmatched (score 0) documents; we pad
            ids[unmatched], scores[unmatched] = -1, np.nan
            return ids, scores

        retriever.retrieve([word_terms(q) for q in queries[:50]], k=k, show_progress=False, n_threads=threads)  # numba compiles
    (ids, scores), out["search_s"], out["search_cpu_s"] = timed(lambda: search(k), 3)
    _, out["search_k1000_s"], _ = timed(lambda: search(1000), 3)
    if name == "ours" and scale <= 200_000:  # the numpy loop takes ~10 ms a query at 1M chunks
        (nids, _), out["numpy_search_s"], _ = timed(lambda: numpy_search(index, queries, k))
        (sids, _), out["scipy_search_s"], _ = timed(lambda: scipy_search(index, queries, k))
        out["numpy_same_ids"] = float(np.mean(np.all(nids == ids, axis=1)))
        out["scipy_same_ids"] = float(np.mean(np.all(sids == ids, axis=1)))
        _, out["query_terms_s"], _ = timed(lambda: index._query_batch(queries, threads))
    out["queries"] = len(queries)
    out["ids"] = ids.tolist()
    out["scores"] = np.nan_to_num(scores, nan=-1.0).tolist()
    out["sources"] = sources
    if not scale:
        half = len(queries) // 2
        out["hit_sentence"] = hit_rates(ids[:half], sources, texts)
        out["hit_keywords"] = hit_rates(ids[half:], sources, texts)
    return out


def contender(name: str, scale: int, n_queries: int, threads: int) -> dict:
    """run_contender in a fresh interpreter (its own peak RSS)."""
    cmd = [sys.executable, "-m", "benchmarks.bench_bm25", "--one", name, "--scale", str(scale),
           "--queries", str(n_queries), "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=os.path.dirname(os.path.dirname(__file__)) or ".")
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agreement(a: dict, b: dict) -> tuple[float, float, float]:
    """(mean top-10 overlap |A & B| / |A | B|, share of queries with the same ordered top-10, share whose
    top-10 scores agree to 1e-5 relative: there the lists differ only in the order of tied scores)."""
    ov, same, scores = [], [], []
    for x, y, sx_, sy_ in zip(a["ids"], b["ids"], a["scores"], b["scores"]):
        sx, sy = {i for i in x if i >= 0}, {i for i in y if i >= 0}
        ov.append(len(sx & sy) / max(1, len(sx | sy)))
        same.append([i for i in x if i >= 0] == [i for i in y if i >= 0])
        scores.append(bool(np.allclose(sx_, sy_, rtol=1e-5, atol=1e-6)))
    return float(np.mean(ov)), float(np.mean(same)), float(np.mean(scores))


def term_choice(threads: int, n_queries: int) -> list[str]:
    """Recall check on the shipped corpus alone (what docs/design.md quotes): words, words without
    English stopwords, cl100k tokens, with k1/b defaults."""
    from tests.helpers import chunk_table, corpus_documents

    texts = chunk_table(corpus_documents(), max_chars=1024, min_chars=40).column("text").to_pylist()
    sentences, keywords, sources = make_queries(texts, n_queries)
    lines = [f"term choice: shipped docstrings, {len(texts):,} chunks of <= 1,024 chars, {len(sources)} sources",
             f"{'terms':<24}{'build s':>9}{'search s':>10}{'sent@1':>8}{'sent@10':>8}{'kw@1':>8}{'kw@10':>8}"]
    for label, opts in (("words", {}), ("words, en stopwords", {"stopwords": "en"}),
                        ("tokens (cl100k)", {"terms": "tokens"})):
        t0 = time.perf_counter()
        index = BM25Index.build(texts, num_threads=threads, **opts)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids, _ = index.search(sentences + keywords, 10, num_threads=threads)
        search = time.perf_counter() - t0
        s1, s10 = hit_rates(ids[:len(sources)], sources, texts)
        k1_, k10 = hit_rates(ids[len(sources):], sources, texts)
        lines.append(f"{label:<24}{build:>9.2f}{search:>10.3f}{s1:>8.3f}{s10:>8.3f}{k1_:>8.3f}{k10:>8.3f}")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queries", type=int, default=2000, help="source chunks (2 queries each)")
    ap.add_argument("--scale", type=int, default=0, help="generated chunks instead of the real text")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--contenders", default="ours,ours-pretokenized,ours-tokens,bm25s,bm25s-raw,bm25s-numba")
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_contender(args.one, args.scale, args.queries, args.threads)))
        return
    lines = []
    if not args.scale:
        lines += term_choice(args.threads, 500)
    names = args.contenders.split(",")
    if args.scale:
        names = [n for n in names if n != "ours-tokens"]
    results = {n: contender(n, args.scale, args.queries, args.threads) for n in names}
    first = results[names[0]]
    lines.append(f"\n{'contender':<20}{'build s':>9}{'cpu s':>7}{'peak MiB':>10}{'index MiB':>10}{'q/s k=10':>10}"
                 f"{'cpu us/q':>9}"
                 f"{'q/s k=1000':>11}{'top10 overlap':>14}{'same top10':>11}{'same scores':>12}"
                 + ("" if args.scale else f"{'sent@1':>8}{'kw@1':>7}"))
    for n, r in results.items():
        ov, same, same_scores = agreement(first, r)
        line = (f"{n:<20}{r['build_s']:>9.2f}{r['build_cpu_s']:>7.2f}{r['build_peak_mib']:>10.0f}{r['index_mib']:>10.1f}"
                f"{r['queries'] / r['search_s']:>10.0f}{1e6 * r['search_cpu_s'] / r['queries']:>9.0f}{r['queries'] / r['search_k1000_s']:>11.0f}{ov:>14.4f}{same:>11.4f}{same_scores:>12.4f}")
        if not args.scale:
            line += f"{r['hit_sentence'][0]:>8.3f}{r['hit_keywords'][0]:>7.3f}"
        lines.append(line)
    if "numpy_search_s" in results.get("ours", {}):
        r = results["ours"]
        lines.append(f"same matrix, other searches ({r['queries']} queries, k=10): native {r['search_s']:.3f} s, "
                     f"numpy bincount {r['numpy_search_s']:.3f} s (same ids {r['numpy_same_ids']:.4f}), "
                     f"scipy sparse product {r['scipy_search_s']:.3f} s (same ids {r['scipy_same_ids']:.4f}); "
                     f"of native's time, splitting and looking up the queries {r['query_terms_s']:.3f} s")
    with open("/proc/loadavg") as f:
        lines.append(f"threads {args.threads}, chunks {'generated ' + str(args.scale) if args.scale else 'real'}, "
                     f"load average {f.read().split()[0]}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
