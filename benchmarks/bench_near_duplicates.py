"""Near-copies among NExtLong's negatives, before (threshold off) and after (default 0.5), on two
corpora: the stdlib-docstring demo corpus, and the same docstrings with injected near-copies (40% of
the documents shipped twice more with ~3% of their words replaced, under other ids).

A negative counts as a near-copy when its word 5-gram Jaccard with a meta-chunk of its long document's
anchor, or with an earlier negative of the same long document, is >= 0.5, computed here on the chunk
texts with plain Python sets of word tuples (not the package's hashing). Also reported: candidates
the filter rejected, the near-copy graph's one-time build time and the planning time, from the
manifest, with the machine's load.

    python3 -m benchmarks.bench_near_duplicates [--embedder hashed-tfidf:256] [--samples 24]

Scale mode (`--scale 100000,1000000`): build the near-copy graph alone on generated chunks and report
its build time, its peak anonymous memory and its recall of injected near-copies (see `scale_run`).

    python3 -m benchmarks.bench_near_duplicates --scale 100000,1000000 [--copy-rate 0.01] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

from tests.helpers import near_copy_rate


def injected_corpus(path: Path, copies: int = 2, share: float = 0.4, rate: float = 0.03, seed: int = 0) -> Path:
    from nextlong.synthesis.demo import iter_stdlib_documents

    rng = random.Random(seed)
    rows = []
    for doc_id, text in iter_stdlib_documents():
        rows.append({"id": doc_id, "text": text})
        if rng.random() < share:
            for j in range(copies):
                words = text.split(" ")
                for _ in range(max(1, int(len(words) * rate))):
                    words[rng.randrange(len(words))] = rng.choice(["2024", "foo", "value", "the", "x"])
                rows.append({"id": f"{doc_id}~copy{j}", "text": " ".join(words)})
    rng.shuffle(rows)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


# --- scale mode: the near-copy graph alone, on generated chunks -----------------------------------


class RssSampler:
    """Peak anonymous resident memory (RssAnon: heap and anonymous maps, not the memory-mapped token
    file) of this process while the `with` block runs, sampled every 20 ms, minus the figure at entry."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak_kib, self.base_kib = interval, 0, 0

    @staticmethod
    def now_kib() -> int:
        from benchmarks._measure import rss_kib

        return rss_kib("RssAnon")

    def __enter__(self):
        import threading

        self.base_kib = self.peak_kib = self.now_kib()
        self._stop = threading.Event()

        def watch():
            while not self._stop.wait(self.interval):
                self.peak_kib = max(self.peak_kib, self.now_kib())

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, self.now_kib())

    @property
    def peak_mib(self) -> float:
        return (self.peak_kib - self.base_kib) / 1024


def word_token_ids(tok) -> "np.ndarray":
    """Ids (< 2**16) of the tokenizer's single-token lowercase words with a leading space (' the')."""
    import re

    import numpy as np

    ids = [i for i in range(1 << 16) if re.fullmatch(rb" [a-z]{3,12}", tok.decode_bytes(np.array([i], np.uint32)))]
    return np.asarray(ids, np.uint16)


def generated_chunk_store(folder: Path, n_chunks: int, copy_rate: float, seed: int = 0,
                          lengths: tuple[int, int] = (64, 512), edit_rates: tuple[float, float] = (0.01, 0.10)):
    """A chunk store of `n_chunks` chunks of random words (one token each, Zipf-like frequencies over
    ~16k words, 64-512 tokens), its token ids in a memory-mapped file as in a real store. A share
    `copy_rate` of the chunks are near-copies of an earlier original chunk, with 1-10% of their words
    replaced by random ones, so their word 5-gram Jaccard spreads around the 0.5 threshold.
    Returns (store, tokenizer, injected pairs as (copy, original) arrays)."""
    import numpy as np

    from nextlong.corpus.tokenizer import load_tokenizer

    tok = load_tokenizer(None)
    words = word_token_ids(tok)
    cdf = np.cumsum(1.0 / np.arange(1, words.size + 1))  # Zipf, exponent 1
    cdf /= cdf[-1]
    rng = np.random.default_rng(seed)
    size = rng.integers(lengths[0], lengths[1] + 1, n_chunks)
    is_copy = rng.random(n_chunks) < copy_rate
    is_copy[0] = False
    copies = np.flatnonzero(is_copy)
    originals = np.flatnonzero(~is_copy)
    # each copy's original: a random earlier chunk that is not itself a copy
    src = originals[(rng.random(copies.size) * np.searchsorted(originals, copies)).astype(np.int64)]
    size[copies] = size[src]
    offsets = np.zeros(n_chunks + 1, np.int64)
    np.cumsum(size, out=offsets[1:])
    tokens = np.lib.format.open_memmap(folder / "tokens.npy", mode="w+", dtype=np.uint16, shape=(int(offsets[-1]),))
    step = 1 << 24
    for lo in range(0, tokens.size, step):
        hi = min(lo + step, tokens.size)
        tokens[lo:hi] = words[np.searchsorted(cdf, rng.random(hi - lo))]
    for c, o in zip(copies.tolist(), src.tolist()):
        piece = np.array(tokens[offsets[o]:offsets[o + 1]])
        k = max(1, round(rng.uniform(*edit_rates) * piece.size))
        piece[rng.integers(0, piece.size, k)] = words[rng.integers(0, words.size, k)]
        tokens[offsets[c]:offsets[c + 1]] = piece
    tokens.flush()
    store = type("GeneratedStore", (), {"tokens": tokens, "tok_offsets": offsets, "num_chunks": n_chunks})()
    return store, tok, (copies, src)


def scale_run(n_chunks: int, copy_rate: float, threshold: float = 0.5, seed: int = 0,
              threads: int | None = None) -> dict:
    """Build `NearDupGraph` on `n_chunks` generated chunks; time it (and its three phases: sketches,
    candidate pairs, exact check), sample its peak anonymous memory, then check it against the exact
    5-gram Jaccard: recall of the injected pairs at or above the threshold, and that every edge found
    is at or above it (edges of chance pairs are checked too, all of them up to 200,000)."""
    import time

    import numpy as np

    from nextlong.synthesis import neardup

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        t0 = time.perf_counter()
        store, tok, (copies, src) = generated_chunk_store(Path(tmp), n_chunks, copy_rate, seed)
        gen_s = time.perf_counter() - t0
        neardup.fast_shingle_set(b"numba compiles or loads its cache before the clock starts")
        neardup._numba_kernels().sketch_batch(  # the batched sketch kernel too
            np.frombuffer(b"a b c d e f", np.uint8), np.array([0, 11], np.int64), 5, np.zeros((1, 2), np.uint64),
            np.zeros(1, np.int64), *neardup._CONSTANTS)
        phases = {}

        def timed(name, fn):
            def wrapper(*a, **k):
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    phases[name] = time.perf_counter() - t
            return wrapper

        real = neardup.chunk_sketches, neardup._candidate_pairs
        neardup.chunk_sketches = timed("sketches", real[0])
        neardup._candidate_pairs = timed("candidate_pairs", real[1])
        try:
            with RssSampler() as mem:
                t0 = time.perf_counter()
                graph = neardup.NearDupGraph.build(store, tok, threshold,
                                                   **({"threads": threads} if threads else {}))
                build_s = time.perf_counter() - t0
        finally:
            neardup.chunk_sketches, neardup._candidate_pairs = real
        phases["exact_check_and_csr"] = build_s - sum(phases.values())

        def exact(a, b):
            return neardup.jaccard(neardup.chunk_shingles(store, tok, int(a)), neardup.chunk_shingles(store, tok, int(b)))

        found = {(int(a), int(b)) for a in range(n_chunks) if graph.indptr[a + 1] > graph.indptr[a]
                 for b in graph.neighbours(a)}
        j = np.array([exact(c, o) for c, o in zip(copies, src)])
        hit = np.array([(int(c), int(o)) in found for c, o in zip(copies, src)], bool)
        above = j >= threshold
        injected = {(int(c), int(o)) for c, o in zip(copies, src)} | {(int(o), int(c)) for c, o in zip(copies, src)}
        others = sorted({(min(p), max(p)) for p in found if p not in injected})
        other_j = [exact(a, b) for a, b in others[:200_000]]
        return {
            "chunks": n_chunks, "tokens": int(store.tok_offsets[-1]), "generate_s": round(gen_s, 1),
            "build_s": round(build_s, 2), "per_chunk_us": round(1e6 * build_s / n_chunks, 1),
            "phases_s": {k: round(v, 2) for k, v in phases.items()},
            "peak_anon_mib": round(mem.peak_mib, 1), "peak_anon_bytes_per_chunk": round(mem.peak_mib * 2 ** 20 / n_chunks),
            "graph_pairs": graph.num_pairs, "injected": int(copies.size), "injected_at_or_above": int(above.sum()),
            "recall": float(hit[above].mean()) if above.any() else None,
            "injected_below_found": int(hit[~above].sum()),
            "chance_pairs": len(others), "chance_pairs_below_threshold": int(sum(x < threshold for x in other_j)),
            "threads": threads, "load": [round(x, 2) for x in os.getloadavg()],
        }


def main(argv=None) -> dict:
    from nextlong import synthesize
    from nextlong.synthesis.demo import write_demo_corpus

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embedder", default="hashed-tfidf:256")
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--target-length", type=int, default=8192)
    ap.add_argument("--scale", default=None, help="comma-separated chunk counts: build the near-copy graph alone "
                    "on generated chunks of each size (the scale mode)")
    ap.add_argument("--copy-rate", type=float, default=0.01, help="scale mode: share of chunks that are near-copies")
    ap.add_argument("--threads", type=int, default=None, help="scale mode: threads of the sketch phase "
                    "(default: the CPUs available)")
    args = ap.parse_args(argv)
    if args.scale:
        results = {}
        for n in [int(x) for x in args.scale.split(",")]:
            results[n] = r = scale_run(n, args.copy_rate, threads=args.threads)
            print(json.dumps(r), flush=True)
        return results
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpora = {"demo (stdlib docstrings)": write_demo_corpus(tmp / "demo.jsonl"),
                   "demo + injected near-copies": injected_corpus(tmp / "injected.jsonl")}
        for name, corpus in corpora.items():
            for label, threshold in (("off", 0.0), ("0.5", 0.5)):
                out = tmp / f"{len(results)}"
                manifest = synthesize(corpus, out, embedder=args.embedder, target_length=args.target_length,
                                      num_samples=args.samples, near_dup_threshold=threshold, id_field="id",
                                      progress=False)
                near, total = near_copy_rate(out)
                stats = manifest["statistics"]
                r = dict(near_copies=near, negatives=total, rate=near / total if total else None,
                         rejected=stats.get("near_duplicate_candidates_rejected"),
                         graph_seconds=stats["seconds"].get("near_dup_graph"),
                         synthesize_seconds=stats["seconds"].get("synthesize"),
                         pairs=stats.get("near_duplicate_pairs_in_corpus"), load=os.getloadavg()[0])
                results[f"{name}, threshold {label}"] = r
                print(f"{name:30s} threshold {label:4s}: {near:5d} near-copies among {total:6d} negatives "
                      f"({100 * r['rate']:.2f}%), rejected {r['rejected']}, corpus near-copy pairs {r['pairs']}, "
                      f"graph build {r['graph_seconds']} s, planning+assembly {r['synthesize_seconds']} s, "
                      f"load {r['load']:.2f}", flush=True)
    return results


if __name__ == "__main__":
    main()
