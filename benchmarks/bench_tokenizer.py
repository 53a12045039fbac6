"""Tokenizer throughput (MB/s of UTF-8 text) with cl100k, side by side with the public peers.

All engines tokenize the same real text (tests.helpers.benchmark_documents: the shipped snapshot plus
the running interpreter's standard-library sources, ~14 MB with Python 3.11, one document per item)
into the same ids. Two regimes, reported apart:

- warm (test_*_thread*): best of ROUNDS passes after a warm-up pass over the same text, in this
  process: nextlong's per-thread piece caches already hold the corpus's pieces.
- cold (test_cold_*): one pass in a fresh process per round (tokenizer loaded before the clock
  starts, nothing encoded yet), best of ROUNDS processes: what a first `nextlong chunk` over unseen
  text sees.

Run:

    python3 -m pytest benchmarks/bench_tokenizer.py --benchmark-columns=mean,rounds \
        --benchmark-sort=name

MB/s per engine is in each benchmark's extra_info (and printed at the end of each test with -s).
HuggingFace tokenizers' batch API uses its rayon pool (RAYON_NUM_THREADS, set to 2 here if unset);
its 1-thread figure is a loop over `encode`.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import pytest  # noqa: E402

from nextlong.tokenizer import CL100K_PATTERN, CL100K_SPECIAL_TOKENS, LLAMA3_PATTERN, load_tokenizer  # noqa: E402

from tests.helpers import benchmark_documents  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 3


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return [text for _, text in benchmark_documents()]


@pytest.fixture(scope="module")
def corpus_bytes(corpus) -> int:
    return sum(len(t.encode("utf-8")) for t in corpus)


@pytest.fixture(scope="module")
def ours():
    return load_tokenizer("cl100k_base")


@pytest.fixture(scope="module")
def reference_ids(ours, corpus):
    return sum(len(a) for a in ours.encode_ordinary_batch(corpus, num_threads=2))


@pytest.fixture(scope="module")
def rank_file(tmp_path_factory, ours):
    import importlib.util

    spec = importlib.util.find_spec("bpe_openai")
    src = Path(list(spec.submodule_search_locations)[0]) / "data" / "cl100k_base.tiktoken.gz"
    out = tmp_path_factory.mktemp("ranks") / "cl100k_base.tiktoken"
    out.write_bytes(gzip.decompress(src.read_bytes()))
    return out


@pytest.fixture(scope="module")
def tiktoken_enc(rank_file):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    return tiktoken.Encoding("cl100k_offline", pat_str=CL100K_PATTERN,
                             mergeable_ranks=load_tiktoken_bpe(str(rank_file)), special_tokens=CL100K_SPECIAL_TOKENS)


@pytest.fixture(scope="module")
def hf_tok(rank_file, tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers.convert_slow_tokenizer import TikTokenConverter

    # The classic cl100k pattern (as in the widely used converted gpt-4 tokenizer.json; Llama-3 uses it
    # too), the form in which most cl100k-style tokenizer.json files circulate.
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    TikTokenConverter(vocab_file=str(rank_file), pattern=LLAMA3_PATTERN).converted().save(str(path))
    return tokenizers.Tokenizer.from_file(str(path))


@pytest.fixture(scope="module")
def bpe_openai_enc():
    bpe_openai = pytest.importorskip("bpe_openai")
    return bpe_openai.get_encoding("cl100k_base")


def run(benchmark, fn, corpus_bytes, expected_tokens=None):
    result = benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    mbps = corpus_bytes / benchmark.stats.stats.min / 1e6
    benchmark.extra_info["bytes"] = corpus_bytes
    benchmark.extra_info["MB/s (best round)"] = round(mbps, 2)
    benchmark.extra_info["MB/s (mean)"] = round(corpus_bytes / benchmark.stats.stats.mean / 1e6, 2)
    print(f"\n{benchmark.name}: {mbps:.1f} MB/s (best of {ROUNDS}, warm), {corpus_bytes / 1e6:.1f} MB; "
          f"load average {os.getloadavg()[0]:.2f}")
    if expected_tokens is not None:
        assert result == expected_tokens


@pytest.mark.benchmark(group="cl100k 1 thread")
def test_nextlong_1_thread(benchmark, ours, corpus, corpus_bytes, reference_ids):
    run(benchmark, lambda: sum(len(a) for a in ours.encode_ordinary_batch(corpus, num_threads=1)), corpus_bytes,
        reference_ids)


@pytest.mark.benchmark(group="cl100k 1 thread")
def test_tiktoken_1_thread(benchmark, tiktoken_enc, corpus, corpus_bytes, reference_ids):
    run(benchmark, lambda: sum(len(tiktoken_enc.encode_ordinary(t)) for t in corpus), corpus_bytes, reference_ids)


@pytest.mark.benchmark(group="cl100k 1 thread")
def test_bpe_openai_1_thread(benchmark, bpe_openai_enc, corpus, corpus_bytes, reference_ids):
    run(benchmark, lambda: sum(len(bpe_openai_enc.encode_ordinary(t)) for t in corpus), corpus_bytes, reference_ids)


@pytest.mark.benchmark(group="cl100k 1 thread")
def test_hf_tokenizers_1_thread(benchmark, hf_tok, corpus, corpus_bytes):
    # HF runs the classic cl100k pattern (see hf_tok), so its ids differ slightly at ends of text.
    run(benchmark, lambda: sum(len(hf_tok.encode(t, add_special_tokens=False).ids) for t in corpus), corpus_bytes)


@pytest.mark.benchmark(group="cl100k 2 threads")
def test_nextlong_2_threads(benchmark, ours, corpus, corpus_bytes, reference_ids):
    run(benchmark, lambda: sum(len(a) for a in ours.encode_ordinary_batch(corpus, num_threads=2)), corpus_bytes,
        reference_ids)


@pytest.mark.benchmark(group="cl100k 2 threads")
def test_tiktoken_2_threads(benchmark, tiktoken_enc, corpus, corpus_bytes, reference_ids):
    run(benchmark, lambda: sum(len(a) for a in tiktoken_enc.encode_ordinary_batch(corpus, num_threads=2)),
        corpus_bytes, reference_ids)


@pytest.mark.benchmark(group="cl100k 2 threads")
def test_hf_tokenizers_2_threads(benchmark, hf_tok, corpus, corpus_bytes):
    run(benchmark, lambda: sum(len(e.ids) for e in hf_tok.encode_batch(corpus, add_special_tokens=False)),
        corpus_bytes)


# -- cold: a fresh process per round ----------------------------------------------------------------

COLD_SCRIPT = """
import json, sys, time
texts = json.load(open(sys.argv[2], encoding="utf-8"))
if sys.argv[1] == "nextlong":
    from nextlong.tokenizer import load_tokenizer
    tok = load_tokenizer("cl100k_base")
    encode = lambda: sum(len(a) for a in tok.encode_ordinary_batch(texts, num_threads=1))
else:
    import tiktoken
    from nextlong.tokenizer import CL100K_PATTERN
    from tests.helpers import bpe_openai_ranks
    enc = tiktoken.Encoding("cl100k_offline", pat_str=CL100K_PATTERN, mergeable_ranks=bpe_openai_ranks("cl100k_base"),
                            special_tokens={})
    encode = lambda: sum(len(enc.encode_ordinary(t)) for t in texts)
start = time.perf_counter()
n = encode()
print(json.dumps({"seconds": time.perf_counter() - start, "tokens": n}))
"""


@pytest.fixture(scope="module")
def corpus_file(corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("cold") / "texts.json"
    path.write_text(json.dumps(corpus), encoding="utf-8")
    return path


@pytest.mark.parametrize("engine", ["nextlong", "tiktoken"])
def test_cold_1_thread(engine, corpus_file, corpus_bytes, reference_ids):
    """First pass over the text in a fresh process (loading not timed), 1 thread; best of ROUNDS."""
    best = float("inf")
    for _ in range(ROUNDS):
        proc = subprocess.run([sys.executable, "-c", COLD_SCRIPT, engine, str(corpus_file)], cwd=ROOT,
                              capture_output=True, text=True, check=True)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["tokens"] == reference_ids
        best = min(best, result["seconds"])
    print(f"\ncold {engine} 1 thread: {corpus_bytes / best / 1e6:.1f} MB/s (fresh process, best of {ROUNDS}), "
          f"{corpus_bytes / 1e6:.1f} MB; load average {os.getloadavg()[0]:.2f}")
