"""End-to-end corpus throughput (MB/s of document text): JSONL -> meta-chunks (+ token ids) -> Parquet.

nextlong's C++ engine against the same pipeline written in Python (json.loads, str.split, greedy
grouping) with HuggingFace `tokenizers` (encode_batch, Rust threads) for the tokens. Same corpus
(tests.helpers.benchmark_documents: the shipped snapshot plus the running interpreter's standard-library
sources, ~14 MB with Python 3.11, one JSONL record per document), same thread count, same output columns.

    python3 -m pytest benchmarks/bench_corpus.py -q -s        # pytest-benchmark, prints a ratio table
    python3 -m benchmarks.bench_corpus                         # the table only (from the repository root)
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

MAX_LEN = 2048
THREADS = 2
CL100K_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

RESULTS: dict[str, float] = {}  # pipeline name -> MB/s (best round)


def build_corpus(path: Path) -> tuple[Path, int]:
    from tests.helpers import benchmark_documents

    n_bytes = 0
    with open(path, "w", encoding="utf-8") as fh:
        for doc_id, text in benchmark_documents():
            n_bytes += len(text.encode("utf-8"))
            fh.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    return path, n_bytes


def hf_cl100k():
    """HuggingFace tokenizer for cl100k_base, converted offline from bpe-openai's rank file."""
    import bpe_openai
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(bpe_openai.__file__).parent / "data" / "cl100k_base.tiktoken.gz"
    tmp = Path(tempfile.mkdtemp()) / "cl100k_base.tiktoken"
    tmp.write_bytes(gzip.decompress(ranks.read_bytes()))
    return TikTokenConverter(vocab_file=str(tmp), pattern=CL100K_PATTERN, additional_special_tokens=[]).converted()


def nextlong_cl100k():
    from nextlong.corpus.tokenizer import load_tokenizer

    return load_tokenizer("cl100k_base")


# -- the peer: the same pipeline in Python + HF tokenizers ---------------------------------------


def python_meta_chunks(text: str, max_len: int) -> list[str]:
    chunks, current, running = [], [], 0
    for paragraph in text.split("\n"):
        if current and running + len(paragraph) > max_len:
            chunks.append("\n".join(current))
            current, running = [], 0
        current.append(paragraph)
        running += len(paragraph)
    chunks.append("\n".join(current))
    return chunks


def python_chunk_pipeline(corpus: Path, out: Path, hf_tokenizer=None, batch_size: int = 1024) -> None:
    writer = None
    chunk_id = doc_index = 0

    def flush(lines):
        nonlocal writer, chunk_id, doc_index
        cols = {k: [] for k in ("chunk_id", "doc_index", "doc_id", "chunk_index", "char_start", "char_end", "text_hash", "text")}
        for line in lines:
            record = json.loads(line)
            start = 0
            for i, chunk in enumerate(python_meta_chunks(record["text"], MAX_LEN)):
                cols["chunk_id"].append(chunk_id)
                cols["doc_index"].append(doc_index)
                cols["doc_id"].append(record["id"])
                cols["chunk_index"].append(i)
                cols["char_start"].append(start)
                cols["char_end"].append(start + len(chunk))
                cols["text_hash"].append(hash(chunk))
                cols["text"].append(chunk)
                start += len(chunk) + 1
                chunk_id += 1
            doc_index += 1
        if hf_tokenizer is not None:
            encodings = hf_tokenizer.encode_batch(cols["text"], add_special_tokens=False)
            ids = [e.ids for e in encodings]
            cols["num_tokens"] = [len(x) for x in ids]
            cols["input_ids"] = pa.array(ids, pa.list_(pa.uint32()))
        table = pa.table(cols)
        if writer is None:
            writer = pq.ParquetWriter(out, table.schema)
        writer.write_table(table)

    with open(corpus, encoding="utf-8") as fh:
        batch = []
        for line in fh:
            batch.append(line)
            if len(batch) == batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    writer.close()


def python_tokenize_pipeline(corpus: Path, out: Path, hf_tokenizer, batch_size: int = 1024) -> None:
    writer = None
    with open(corpus, encoding="utf-8") as fh:
        lines = fh.readlines(64 << 20)
        doc_index = 0
        while lines:
            for i in range(0, len(lines), batch_size):
                records = [json.loads(l) for l in lines[i:i + batch_size]]
                ids = [e.ids for e in hf_tokenizer.encode_batch([r["text"] for r in records], add_special_tokens=False)]
                table = pa.table({"doc_index": list(range(doc_index, doc_index + len(records))),
                                  "doc_id": [r["id"] for r in records], "input_ids": pa.array(ids, pa.list_(pa.uint32()))})
                doc_index += len(records)
                if writer is None:
                    writer = pq.ParquetWriter(out, table.schema)
                writer.write_table(table)
            lines = fh.readlines(64 << 20)
    writer.close()


# -- nextlong ----------------------------------------------------------------------------------


def nextlong_chunk_pipeline(corpus: Path, out: Path, tokenizer=None) -> None:
    from nextlong.corpus.chunking import chunk_corpus

    chunk_corpus(corpus, out, max_len=MAX_LEN, tokenizer=tokenizer, with_ids=tokenizer is not None,
                 id_field="id", num_threads=THREADS, progress=False)


def nextlong_tokenize_pipeline(corpus: Path, out: Path, tokenizer) -> None:
    from nextlong.corpus.chunking import tokenize_corpus

    tokenize_corpus(corpus, out, tokenizer=tokenizer, id_field="id", num_threads=THREADS, progress=False)


# -- pytest-benchmark --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


@pytest.fixture(scope="module")
def hf_tok():
    pytest.importorskip("tokenizers")
    return hf_cl100k()


@pytest.fixture(scope="module")
def nl_tok():
    return nextlong_cl100k()


def _bench(benchmark, name, n_bytes, fn):
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)
    RESULTS[name] = n_bytes / benchmark.stats.stats.min / 1e6
    benchmark.extra_info["MB/s"] = round(RESULTS[name], 2)


def test_chunk_chars_nextlong(benchmark, corpus, tmp_path):
    path, n_bytes = corpus
    _bench(benchmark, "chunk chars: nextlong", n_bytes, lambda: nextlong_chunk_pipeline(path, tmp_path / "o.parquet"))


def test_chunk_chars_python(benchmark, corpus, tmp_path):
    path, n_bytes = corpus
    _bench(benchmark, "chunk chars: python", n_bytes, lambda: python_chunk_pipeline(path, tmp_path / "o.parquet"))


def test_chunk_tokenize_nextlong(benchmark, corpus, nl_tok, tmp_path):
    path, n_bytes = corpus
    _bench(benchmark, "chunk+tokenize: nextlong", n_bytes,
           lambda: nextlong_chunk_pipeline(path, tmp_path / "o.parquet", nl_tok))


def test_chunk_tokenize_python_hf(benchmark, corpus, hf_tok, tmp_path):
    path, n_bytes = corpus
    _bench(benchmark, "chunk+tokenize: python+tokenizers", n_bytes,
           lambda: python_chunk_pipeline(path, tmp_path / "o.parquet", hf_tok))


def test_tokenize_docs_nextlong(benchmark, corpus, nl_tok, tmp_path):
    path, n_bytes = corpus
    _bench(benchmark, "tokenize docs: nextlong", n_bytes,
           lambda: nextlong_tokenize_pipeline(path, tmp_path / "o.parquet", nl_tok))


def test_tokenize_docs_python_hf(benchmark, corpus, hf_tok, tmp_path):
    path, n_bytes = corpus
    _bench(benchmark, "tokenize docs: python+tokenizers", n_bytes,
           lambda: python_tokenize_pipeline(path, tmp_path / "o.parquet", hf_tok))


def test_report():
    print_report()


def print_report() -> None:
    pairs = [("chunk chars: nextlong", "chunk chars: python"),
             ("chunk+tokenize: nextlong", "chunk+tokenize: python+tokenizers"),
             ("tokenize docs: nextlong", "tokenize docs: python+tokenizers")]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"\ncorpus throughput, {THREADS} threads, MB/s of document text (best of 3; load average {load}):")
    for ours, peer in pairs:
        if ours in RESULTS and peer in RESULTS:
            print(f"  {ours:34s} {RESULTS[ours]:8.1f}   {peer:36s} {RESULTS[peer]:8.1f}   ratio {RESULTS[ours] / RESULTS[peer]:.2f}x")


def main() -> None:
    """The same measurements without pytest (best of 3 rounds after a warm-up)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path, n_bytes = build_corpus(tmp / "corpus.jsonl")
        print(f"corpus: {path.stat().st_size / 1e6:.1f} MB JSONL, {n_bytes / 1e6:.1f} MB of text")
        hf = hf_cl100k()
        nl = nextlong_cl100k()
        runs = {
            "chunk chars: nextlong": lambda: nextlong_chunk_pipeline(path, tmp / "o.parquet"),
            "chunk chars: python": lambda: python_chunk_pipeline(path, tmp / "o.parquet"),
            "chunk+tokenize: python+tokenizers": lambda: python_chunk_pipeline(path, tmp / "o.parquet", hf),
            "tokenize docs: python+tokenizers": lambda: python_tokenize_pipeline(path, tmp / "o.parquet", hf),
        }
        if nl is not None:
            runs["chunk+tokenize: nextlong"] = lambda: nextlong_chunk_pipeline(path, tmp / "o.parquet", nl)
            runs["tokenize docs: nextlong"] = lambda: nextlong_tokenize_pipeline(path, tmp / "o.parquet", nl)
        for name, fn in runs.items():
            fn()
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
            RESULTS[name] = n_bytes / best / 1e6
        print_report()


if __name__ == "__main__":
    main()
