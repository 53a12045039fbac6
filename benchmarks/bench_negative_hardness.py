"""How hard are the negatives each mining route and embedder finds, on the same corpus?

Hardness = the mean cosine similarity of an anchor meta-chunk and each negative placed after it, over
the documents a run built. Two comparisons, each on one real-text corpus (the text files of this
machine's Python installs, the same as bench_mining's vectors):

1. Routes (`--chunks`, above the 50k-chunk exact threshold so `hnsw` really builds an HNSW index; static
   embedder): `--mining hnsw` against `--mining partitioned`, hardness under that embedder, and how many
   anchors the partitioned route had to search again.
2. Embedders (`--minilm-chunks`, exact search for both): negatives mined with `--embedder static` and with
   MiniLM, both scored with MiniLM's cosine (the static embedder is MiniLM distilled: 983x faster on CPU,
   docs/scale.md), so a user can weigh its speed against what it finds.

    python3 -m benchmarks.bench_negative_hardness --work DIR [--chunks 60000] [--minilm-chunks 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROLE_ANCHOR, ROLE_NEGATIVE = 0, 1


def write_corpus(path: Path, chunks: int, chunk_chars: int = 2048) -> int:
    """Documents from the text files of the Python installs (deduplicated), until ~`chunks` chunks."""
    import sysconfig

    roots = sorted({sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]})
    seen, total = set(), 0
    with open(path, "w") as out:
        for root in roots:
            for dirpath, dirs, files in os.walk(root):
                dirs.sort()
                for name in sorted(files):
                    if not name.endswith((".py", ".md", ".rst", ".txt")):
                        continue
                    try:
                        text = Path(dirpath, name).read_text(errors="strict")
                    except (OSError, UnicodeDecodeError):
                        continue
                    if len(text) < 500 or hash(text) in seen:
                        continue
                    seen.add(hash(text))
                    out.write(json.dumps({"id": f"{dirpath}/{name}", "text": text}) + "\n")
                    total += max(1, len(text) // chunk_chars)
                    if total >= chunks:
                        return total
    return total


def pairs(out: Path) -> np.ndarray:
    """(anchor chunk, negative chunk) of every built document's plan."""
    table = pq.read_table(out / "plan", columns=["ok", "chunks", "roles"])
    found = []
    for ok, chunks, roles in zip(*(table.column(c).to_pylist() for c in ("ok", "chunks", "roles"))):
        if not ok:
            continue
        anchor = None
        for c, r in zip(chunks, roles):
            if r == ROLE_ANCHOR:
                anchor = c
            elif r == ROLE_NEGATIVE and anchor is not None:
                found.append((anchor, c))
    return np.asarray(found, np.int64).reshape(-1, 2)


def hardness(vectors: np.ndarray, pairs_: np.ndarray) -> float:
    a = np.asarray(vectors[pairs_[:, 0]], np.float32)
    b = np.asarray(vectors[pairs_[:, 1]], np.float32)
    return float(np.mean(np.sum(a * b, axis=1)))


def run(corpus, out, **settings) -> dict:
    from nextlong.synthesis import synthesize

    t0 = time.perf_counter()
    manifest = synthesize(corpus, out, id_field="id", progress=False, **settings)
    return {"manifest": manifest, "seconds": time.perf_counter() - t0}


def main(argv=None) -> dict:
    from nextlong.synthesis.artifacts import open_vectors

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--chunks", type=int, default=60_000)
    ap.add_argument("--minilm-chunks", type=int, default=4_000)
    ap.add_argument("--num-samples", type=int, default=400)
    ap.add_argument("--target-length", type=int, default=8192)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    common = dict(target_length=args.target_length, num_samples=args.num_samples, seed=0)
    print(f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')} UTC", flush=True)
    results: dict = {}

    corpus = work / "routes.jsonl"
    if not corpus.exists():
        write_corpus(corpus, args.chunks)
    for route in ("hnsw", "partitioned"):
        r = run(corpus, work / f"route-{route}", embedder="static", mining=route, **common)
        s = r["manifest"]["statistics"]
        vectors = open_vectors(work / f"route-{route}" / "embeddings")
        results[route] = {"chunks": s["corpus_chunks"], "search": r["manifest"]["settings"]["search"],
                          "documents": s["documents_built"], "hardness_static": hardness(vectors, pairs(work / f"route-{route}")),
                          "random_pairs_static": s["random_chunk_pair_similarity_mean"], "seconds": r["seconds"],
                          "mining": s.get("mining")}
        print(f"route {route:<12} {s['corpus_chunks']:,} chunks ({results[route]['search']}): {s['documents_built']} "
              f"documents, anchor-negative cosine {results[route]['hardness_static']:.4f} (random pairs "
              f"{results[route]['random_pairs_static']:.4f}), {r['seconds']:.0f} s"
              + (f"; searched again: {s['mining']['anchors_searched_again']}" if s.get("mining") else ""), flush=True)

    corpus = work / "embedders.jsonl"
    if not corpus.exists():
        write_corpus(corpus, args.minilm_chunks)
    runs = {name: run(corpus, work / f"embedder-{name}", embedder=spec, **common)
            for name, spec in (("static", "static"), ("minilm", None))}
    minilm = open_vectors(work / "embedder-minilm" / "embeddings")
    for name, r in runs.items():
        s = r["manifest"]["statistics"]
        results[f"embedder_{name}"] = {"chunks": s["corpus_chunks"], "documents": s["documents_built"],
                                       "hardness_minilm": hardness(minilm, pairs(work / f"embedder-{name}")),
                                       "hardness_own": s["anchor_negative_similarity_mean"], "seconds": r["seconds"],
                                       "embed_seconds": s["seconds"].get("embed")}
        print(f"embedder {name:<7} {s['corpus_chunks']:,} chunks: {s['documents_built']} documents, anchor-negative "
              f"MiniLM cosine {results[f'embedder_{name}']['hardness_minilm']:.4f} (own embedder "
              f"{s['anchor_negative_similarity_mean']:.4f}); embedding {s['seconds'].get('embed', 0):.0f} s", flush=True)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(minilm), 5000), rng.integers(0, len(minilm), 5000)
    results["random_pairs_minilm"] = hardness(minilm, np.stack([a, b], axis=1)[a != b])
    print(f"random chunk pairs, MiniLM cosine: {results['random_pairs_minilm']:.4f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
