"""How similar are the documents placed next to each other? Quest against standard, by embedder.

Quest builds each long context from documents sharing one keyword; standard concatenates documents
in random order. Both are synthesized here from the shipped stdlib-docstring snapshot (501 documents)
at L=8192 with their default settings. For each output, every pair of adjacent documents (runs of
the same document's chunks collapsed) is scored with the cosine of the two document vectors; random
pairs of distinct corpus documents (seeded, 2,000 by default) give the chance level.

A document vector is the normalised mean of its chunks' vectors (as `document_vectors` builds them
for the baselines); each embedder embeds every chunk of the corpus once, whole (MiniLM in 256-piece
windows), so all embedders score exactly the same pairs. Also reported: the share of quest's
adjacent pairs whose two documents both contain the sample's key as a word.

    python3 -m benchmarks.bench_quest_adjacency [--embedder all-MiniLM-L6-v2,static,hashed-tfidf:256]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np


def adjacent_pairs(out: Path) -> tuple[list[tuple[str, str]], int]:
    """(doc_id, doc_id) of each pair of adjacent documents in the samples of `out`, and how many of
    quest's pairs have both documents containing the sample's key (0 for other methods)."""
    import pyarrow.parquet as pq

    table = pq.read_table(out / "data")
    pairs, keys = [], []
    for row in table.to_pylist():
        seq = [s["doc_id"] for s in row["segments"]]
        order = [d for i, d in enumerate(seq) if i == 0 or seq[i - 1] != d]
        pairs += list(zip(order, order[1:]))
        keys += [row.get("group_key")] * (len(order) - 1)
    return pairs, keys


def chunk_table(out: Path) -> tuple[list[str], list[str]]:
    import pyarrow.parquet as pq

    t = pq.read_table(out / "chunks" / "chunks.parquet", columns=["doc_id", "chunk_index", "text"]).to_pylist()
    t.sort(key=lambda r: (r["doc_id"], r["chunk_index"]))
    return [r["doc_id"] for r in t], [r["text"] for r in t]


def document_vectors_of(embedder, doc_ids: list[str], texts: list[str], batch: int = 32) -> dict[str, np.ndarray]:
    """Normalised mean chunk vector of each document (chunks embedded in batches, with progress)."""
    from tqdm import tqdm

    vecs = []
    for lo in tqdm(range(0, len(texts), batch), desc=f"embedding ({embedder.name})", unit="batch"):
        vecs.append(np.asarray(embedder.embed(texts[lo:lo + batch]), np.float32))
    vecs = np.concatenate(vecs)
    sums: dict[str, np.ndarray] = {}
    for d, v in zip(doc_ids, vecs):
        sums[d] = sums.get(d, 0) + v
    return {d: v / max(float(np.linalg.norm(v)), 1e-12) for d, v in sums.items()}


def mean_cosine(vectors: dict[str, np.ndarray], pairs) -> float:
    return float(np.mean([vectors[a] @ vectors[b] for a, b in pairs]))


def main(argv=None) -> dict:
    from nextlong import synthesize
    from nextlong.mining.embedding import load_embedder
    from tests.helpers import corpus_documents, write_jsonl

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embedder", default="all-MiniLM-L6-v2,static,hashed-tfidf:256",
                    help="comma-separated embedders to score the pairs with (default: all three)")
    ap.add_argument("--target-length", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2, help="threads of the transformer embedder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--random-pairs", type=int, default=2000)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    docs = corpus_documents()
    words_of = {d: {w.lower() for w in re.findall(r"[A-Za-z][A-Za-z0-9_]{2,}", t)} for d, t in docs}
    results: dict = {"corpus_documents": len(docs), "target_length": args.target_length, "embedders": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = write_jsonl(tmp / "docs.jsonl", docs)
        pairs = {}
        for method in ("quest", "standard"):
            # neither method embeds the corpus (an --embedder given to them is refused)
            synthesize(corpus, tmp / method, method=method, target_length=args.target_length, id_field="id",
                       seed=args.seed, progress=False)
            pairs[method], keys = adjacent_pairs(tmp / method)
            if method == "quest":
                shared = sum(k is not None and k in words_of[a] and k in words_of[b]
                             for (a, b), k in zip(pairs[method], keys))
                results["quest_pairs_sharing_key"] = shared / len(pairs[method])
        doc_ids, texts = chunk_table(tmp / "quest")
        rng = np.random.default_rng(args.seed)
        ids = sorted(set(doc_ids))
        a = rng.integers(0, len(ids), args.random_pairs)
        b = (a + rng.integers(1, len(ids), a.size)) % len(ids)  # never the same document
        pairs["random"] = [(ids[i], ids[j]) for i, j in zip(a, b)]
        results["pairs"] = {k: len(v) for k, v in pairs.items()}
        results["chunks_embedded"] = len(texts)
        for spec in args.embedder.split(","):
            options = {"threads": args.threads} if spec not in ("static",) and not spec.startswith("hashed") else {}
            embedder = load_embedder(None if spec == "all-MiniLM-L6-v2" else spec, **options)
            embedder.embed(texts[:2])  # warm-up: model load, first-call compilation
            t0 = time.perf_counter()
            vectors = document_vectors_of(embedder, doc_ids, texts)
            seconds = time.perf_counter() - t0
            row = {k: round(mean_cosine(vectors, p), 4) for k, p in pairs.items()}
            row.update(seconds=round(seconds, 1), chunks_per_s=round(len(texts) / seconds, 2),
                       load=[round(x, 2) for x in os.getloadavg()])
            results["embedders"][spec] = row
            print(f"{spec:20s} adjacent similarity: quest {row['quest']:.3f}, standard {row['standard']:.3f}, "
                  f"random pairs {row['random']:.3f} ({len(texts)} chunks in {seconds:.0f} s, "
                  f"{row['chunks_per_s']} chunks/s, load {row['load']})", flush=True)
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
