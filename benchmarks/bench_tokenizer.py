"""Tokenizer throughput (MB/s of UTF-8 text) with cl100k, side by side with the public peers.

All engines tokenize the same real text (tests.helpers.benchmark_documents: the shipped snapshot plus
the running interpreter's standard-library sources, ~14 MB with Python 3.11, one document per item),
and every test asserts that the ids are the same, document by document, outside the timing: tiktoken's
and bpe-openai's (warm and cold) against nextlong's cl100k_base; HF tokenizers' against nextlong
loading the same tokenizer.json (HF's converted file carries the classic cl100k pattern, which splits
some trailing whitespace differently from tiktoken's cl100k_base). Two regimes, reported apart:

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
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from nextlong.corpus.tokenizer import CL100K_PATTERN, CL100K_SPECIAL_TOKENS, LLAMA3_PATTERN, load_tokenizer  # noqa: E402

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
def reference_ids(ours, corpus) -> list[np.ndarray]:
    """nextlong's cl100k_base ids of every document: what every cl100k engine must produce."""
    return ours.encode_ordinary_batch(corpus, num_threads=2)


def assert_same_ids(result, reference, engine: str) -> None:
    """`result` (one id sequence per document) equals `reference` exactly, or the first differing
    document is named."""
    assert len(result) == len(reference), f"{engine}: {len(result)} documents, expected {len(reference)}"
    for i, (got, want) in enumerate(zip(result, reference)):
        got = np.asarray(got, dtype=np.int64)
        if got.shape != want.shape or not np.array_equal(got, want):
            n = min(len(got), len(want))
            first = int(np.argmax(got[:n] != want[:n])) if n and (got[:n] != want[:n]).any() else n
            raise AssertionError(f"{engine}: ids differ from nextlong's in document {i} at token {first} "
                                 f"({len(got)} vs {len(want)} tokens)")


def ids_digest(ids) -> str:
    """sha256 of the documents' ids (int64, each document preceded by its length): the cold runs'
    fresh processes hand this back instead of the ids."""
    h = hashlib.sha256()
    for a in ids:
        a = np.asarray(a, dtype=np.int64)
        h.update(np.int64(len(a)).tobytes())
        h.update(a.tobytes())
    return h.hexdigest()


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
    return tokenizers.Tokenizer.from_file(str(path)), path


@pytest.fixture(scope="module")
def hf_reference_ids(hf_tok, corpus) -> list[np.ndarray]:
    """nextlong's ids with the same tokenizer.json HF runs (classic cl100k pattern)."""
    return load_tokenizer(str(hf_tok[1])).encode_ordinary_batch(corpus, num_threads=2)


@pytest.fixture(scope="module")
def bpe_openai_enc():
    bpe_openai = pytest.importorskip("bpe_openai")
    return bpe_openai.get_encoding("cl100k_base")


def run(benchmark, fn, corpus_bytes, expected_ids, engine):
    """Time `fn` (it returns one id sequence per document); then its ids must equal `expected_ids`."""
    result = benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    mbps = corpus_bytes / benchmark.stats.stats.min / 1e6
    benchmark.extra_info["bytes"] = corpus_bytes
    benchmark.extra_info["MB/s (best round)"] = round(mbps, 2)
    benchmark.extra_info["MB/s (mean)"] = round(corpus_bytes / benchmark.stats.stats.mean / 1e6, 2)
    print(f"\n{benchmark.name}: {mbps:.1f} MB/s (best of {ROUNDS}, warm), {corpus_bytes / 1e6:.1f} MB; "
          f"load average {os.getloadavg()[0]:.2f}")
    assert_same_ids(result, expected_ids, engine)


@pytest.mark.benchmark(group="cl100k 1 thread")
def test_nextlong_1_thread(benchmark, ours, corpus, corpus_bytes, reference_ids):
    run(benchmark, lambda: ours.encode_ordinary_batch(corpus, num_threads=1), corpus_bytes, reference_ids,
        "nextlong")


@pytest.mark.benchmark(group="cl100k 1 thread")
def test_tiktoken_1_thread(benchmark, tiktoken_enc, corpus, corpus_bytes, reference_ids):
    run(benchmark, lambda: [tiktoken_enc.encode_ordinary(t) for t in corpus], corpus_bytes, reference_ids, "tiktoken")


@pytest.mark.benchmark(group="cl100k 1 thread")
def test_bpe_openai_1_thread(benchmark, bpe_openai_enc, corpus, corpus_bytes, reference_ids):
    run(benchmark, lambda: [bpe_openai_enc.encode_ordinary(t) for t in corpus], corpus_bytes, reference_ids,
        "bpe-openai")


@pytest.mark.benchmark(group="cl100k 1 thread")
def test_hf_tokenizers_1_thread(benchmark, hf_tok, corpus, corpus_bytes, hf_reference_ids):
    # HF runs the classic cl100k pattern (see hf_tok): its ids are checked against nextlong's with that file.
    tok = hf_tok[0]
    run(benchmark, lambda: [tok.encode(t, add_special_tokens=False).ids for t in corpus], corpus_bytes,
        hf_reference_ids, "HF tokenizers")


@pytest.mark.benchmark(group="cl100k 2 threads")
def test_nextlong_2_threads(benchmark, ours, corpus, corpus_bytes, reference_ids):
    run(benchmark, lambda: ours.encode_ordinary_batch(corpus, num_threads=2), corpus_bytes, reference_ids,
        "nextlong")


@pytest.mark.benchmark(group="cl100k 2 threads")
def test_tiktoken_2_threads(benchmark, tiktoken_enc, corpus, corpus_bytes, reference_ids):
    run(benchmark, lambda: tiktoken_enc.encode_ordinary_batch(corpus, num_threads=2), corpus_bytes, reference_ids,
        "tiktoken")


@pytest.mark.benchmark(group="cl100k 2 threads")
def test_hf_tokenizers_2_threads(benchmark, hf_tok, corpus, corpus_bytes, hf_reference_ids):
    tok = hf_tok[0]
    run(benchmark, lambda: [e.ids for e in tok.encode_batch(corpus, add_special_tokens=False)], corpus_bytes,
        hf_reference_ids, "HF tokenizers")


# -- cold: a fresh process per round ----------------------------------------------------------------

COLD_SCRIPT = """
import json, sys, time
texts = json.load(open(sys.argv[2], encoding="utf-8"))
if sys.argv[1] == "nextlong":
    from nextlong.corpus.tokenizer import load_tokenizer
    tok = load_tokenizer("cl100k_base")
    encode = lambda: tok.encode_ordinary_batch(texts, num_threads=1)
else:
    import tiktoken
    from nextlong.corpus.tokenizer import CL100K_PATTERN
    from tests.helpers import bpe_openai_ranks
    enc = tiktoken.Encoding("cl100k_offline", pat_str=CL100K_PATTERN, mergeable_ranks=bpe_openai_ranks("cl100k_base"),
                            special_tokens={})
    encode = lambda: [enc.encode_ordinary(t) for t in texts]
from benchmarks.bench_tokenizer import ids_digest
start = time.perf_counter()
ids = encode()
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "digest": ids_digest(ids)}))
"""


@pytest.fixture(scope="module")
def corpus_file(corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("cold") / "texts.json"
    path.write_text(json.dumps(corpus), encoding="utf-8")
    return path


@pytest.mark.parametrize("engine", ["nextlong", "tiktoken"])
def test_cold_1_thread(engine, corpus_file, corpus_bytes, reference_ids):
    """First pass over the text in a fresh process (loading not timed), 1 thread; best of ROUNDS."""
    best, expected = float("inf"), ids_digest(reference_ids)
    for _ in range(ROUNDS):
        proc = subprocess.run([sys.executable, "-c", COLD_SCRIPT, engine, str(corpus_file)], cwd=ROOT,
                              capture_output=True, text=True, check=True)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["digest"] == expected, f"{engine} (cold): ids differ from nextlong's"
        best = min(best, result["seconds"])
    print(f"\ncold {engine} 1 thread: {corpus_bytes / best / 1e6:.1f} MB/s (fresh process, best of {ROUNDS}), "
          f"{corpus_bytes / 1e6:.1f} MB; load average {os.getloadavg()[0]:.2f}")
