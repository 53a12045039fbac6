"""Synthesis throughput, stage by stage and end to end, on real text, and assembly against a
plain-Python version of the same step.

Corpus: the shipped snapshot (tests/data, 1.9 MB of standard-library docstrings, one document per
module) plus the running interpreter's standard-library source files (~30 MB with Python 3.11, test
folders included), one document per file: >= 30 MB of real text available offline. Embedding uses the lexical embedder for the end-to-end run (MiniLM would take
hours on 2 cores for this corpus); MiniLM's own throughput is measured on a sample so the report
can say what the full run would cost with it.

    python3 -m pytest -q benchmarks/bench_synthesis.py -s      # pytest-benchmark + report
    python3 -m benchmarks.bench_synthesis                      # the same, without pytest
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

TARGET = 131072
SAMPLES = 64
MINILM_SAMPLE = 256
RESULTS: dict[str, tuple[float, str]] = {}


def build_corpus(path: Path) -> tuple[Path, int, int]:
    """JSONL of real text: the snapshot's documents then stdlib .py files (sorted, deterministic)."""
    from nextlong.synthesis.demo import stdlib_root
    from tests.helpers import corpus_documents

    root = stdlib_root()
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    n_bytes = n_docs = 0
    with open(path, "w", encoding="utf-8") as fh:
        for doc_id, text in corpus_documents():
            n_bytes += len(text.encode())
            n_docs += 1
            fh.write(json.dumps({"id": doc_id, "text": text}) + "\n")
        for p in files:
            try:
                text = p.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if not text.strip():
                continue
            n_bytes += len(text.encode())
            n_docs += 1
            fh.write(json.dumps({"id": str(p), "text": text}) + "\n")
    return path, n_bytes, n_docs


def record(name: str, value: float, unit: str) -> None:
    RESULTS[name] = (value, unit)


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run_all(tmp: Path) -> None:
    from nextlong.synthesis import SynthesisConfig
    from nextlong.synthesis.assemble import assemble, numba_available
    from nextlong.synthesis.pipeline import run
    from nextlong.synthesis.batches import plan_from_table
    from nextlong.synthesis.store import ChunkStore

    corpus, n_bytes, n_docs = build_corpus(tmp / "corpus.jsonl")
    record("corpus MB", n_bytes / 1e6, "MB")
    record("corpus documents", n_docs, "docs")
    out = tmp / "out"
    cfg = SynthesisConfig(out=str(out), corpus=str(corpus), embedder="hashed-tfidf", target_length=TARGET,
                          num_samples=SAMPLES, progress=False)
    manifest, total = _timed(lambda: run(cfg))
    s = manifest["statistics"]
    secs = s["seconds"]
    record("end to end (lexical embedder)", total, "s")
    record("end to end: documents/s (input corpus)", n_docs / total, "docs/s")
    record("end to end: output tokens/s", s["output_tokens"] / total, "tok/s")
    record("stage chunk+tokenize", n_bytes / 1e6 / secs["chunk"], "MB/s")
    record("stage embed (lexical)", s["corpus_chunks"] / secs["embed"], "chunks/s")
    record("stage synthesize (mine + assemble + write)", s["documents_built"] / secs["synthesize"], "long docs/s")
    record("stage synthesize: output tokens/s", s["output_tokens"] / secs["synthesize"], "tok/s")
    for k, v in secs.items():
        record(f"seconds: {k}", v, "s")
    record("negatives per meta-chunk", s["negatives_per_meta_chunk_mean"], "")
    record("anchor-negative similarity", s["anchor_negative_similarity_mean"], "cos")
    record("random-pair similarity", s["random_chunk_pair_similarity_mean"], "cos")

    # MiniLM on a sample of chunks: what the embedding stage would cost with the default embedder
    import pyarrow.parquet as pq

    from nextlong.mining.embedding import load_embedder

    texts = pq.read_table(out / "chunks" / "chunks.parquet", columns=["text"]).column("text").to_pylist()
    rng = np.random.default_rng(0)
    sample = [texts[i] for i in rng.choice(len(texts), MINILM_SAMPLE, replace=False)]
    minilm = load_embedder(None)
    minilm.embed(sample[:8])
    _, t = _timed(lambda: minilm.embed(sample))
    record("stage embed (MiniLM, sample)", MINILM_SAMPLE / t, "chunks/s")
    record("MiniLM embedding of this corpus (estimate)", s["corpus_chunks"] / (MINILM_SAMPLE / t), "s")

    # assembly: the same plan gathered by numba, numpy and plain Python
    store = ChunkStore.load(out / "chunks" / "store")
    plans = [pq.read_table(p) for p in sorted((out / "data").glob("part-*.parquet"))]
    # rebuild the plan from the output's segments (chunk ids via the store's (doc, chunk_index))
    doc_of = {d: i for i, d in enumerate(store.doc_ids)}
    import pyarrow as pa

    rows = []
    for t_ in plans:
        for row in t_.to_pylist():
            chunks = [int(store.doc_first_chunk[doc_of[s_["doc_id"]]]) + s_["chunk_index"] for s_ in row["segments"]]
            rows.append({"anchor_doc": doc_of[row["anchor_doc_id"]], "ok": True, "reason": "", "chunks": chunks,
                         "roles": [0 if s_["role"] == "anchor" else 1 for s_ in row["segments"]],
                         "negatives_per_meta_chunk": [], "negative_sims": []})
    from nextlong.synthesis.batches import PLAN_SCHEMA

    plan = plan_from_table(pa.Table.from_pylist(rows, schema=PLAN_SCHEMA))
    sep = [198]
    impls = ["python", "numpy"] + (["numba"] if numba_available() else [])
    if "numba" in impls:
        assemble(store.tokens, store.tok_offsets, plan, sep, TARGET, impl="numba")  # compile
    results = {}
    for impl in impls:
        best = float("inf")
        for _ in range(3):
            res, t = _timed(lambda: assemble(store.tokens, store.tok_offsets, plan, sep, TARGET, impl=impl))
            best = min(best, t)
        results[impl] = res
        record(f"assembly {impl}", plan.num_docs * TARGET / best / 1e6, "M tok/s")
    for impl in impls[1:]:
        for a, b in zip(results["python"], results[impl]):
            assert np.array_equal(a, b), f"assembly {impl} differs from the Python reference"


def print_report() -> None:
    print("\nsynthesis benchmark (2 cores):")
    for name, (value, unit) in RESULTS.items():
        print(f"  {name:48s} {value:12.2f} {unit}")
    # The peer a user would write is the numpy gather; plain Python is shown for scale only.
    if "assembly numba" in RESULTS and "assembly numpy" in RESULTS:
        print(f"  assembly numba / numpy: {RESULTS['assembly numba'][0] / RESULTS['assembly numpy'][0]:.1f}x")
    if "assembly python" in RESULTS:
        for impl in ("numpy", "numba"):
            if f"assembly {impl}" in RESULTS:
                ratio = RESULTS[f"assembly {impl}"][0] / RESULTS["assembly python"][0]
                print(f"  assembly {impl} / plain Python: {ratio:.1f}x")


@pytest.mark.slow
def test_synthesis_pipeline(benchmark, tmp_path):
    benchmark.pedantic(lambda: run_all(tmp_path), rounds=1, iterations=1)
    benchmark.extra_info.update({k: v for k, (v, _) in RESULTS.items()})
    print_report()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run_all(Path(tmp))
    print_report()


if __name__ == "__main__":
    sys.exit(main())
