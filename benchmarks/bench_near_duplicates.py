"""Near-copies among NExtLong's negatives, before (threshold off) and after (default 0.5), on two
corpora: the stdlib-docstring demo corpus, and the same docstrings with injected near-copies (40% of
the documents shipped twice more with ~3% of their words replaced, under other ids).

A negative counts as a near-copy when its word 5-gram Jaccard with a meta-chunk of its long document's
anchor, or with an earlier negative of the same long document, is >= 0.5, computed here on the chunk
texts with plain Python sets of word tuples (not the package's hashing). Also reported: candidates
the filter rejected, the near-copy graph's one-time build time and the planning time, from the
manifest, with the machine's load.

    python3 -m benchmarks.bench_near_duplicates [--embedder hashed-tfidf:256] [--samples 24]
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


def main(argv=None) -> dict:
    from nextlong import synthesize
    from nextlong.synthesis.demo import write_demo_corpus

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embedder", default="hashed-tfidf:256")
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--target-length", type=int, default=8192)
    args = ap.parse_args(argv)
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
