"""Shared by the tests and benchmarks (no tests here): the shipped real text, chunk tables, references.

Every test that needs real text reads the same committed snapshot (tests/data/README.md says where
it comes from), so a test id checks the same data on every machine and Python version.
"""

from __future__ import annotations

import base64
import gzip
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

DATA_DIR = Path(__file__).resolve().parent / "data"
CORPUS = DATA_DIR / "stdlib-docstrings.jsonl.gz"
EXPERIMENT_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "experiments" / "nextlong_vs_standard.py"


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def gpu_bench(monkeypatch, tmp_path):
    """benchmarks/ importable as the GPU lease runs it, and the rows the tables record going to a temporary runs
    file (returned), stamped with a test lease id."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    runs = tmp_path / "gpu-runs.jsonl"
    monkeypatch.setenv("NEXTLONG_GPU_RUNS", str(runs))
    monkeypatch.setenv("NEXTLONG_LEASE", "test-lease")
    return runs


def load_experiment_script():
    """The mini-scale experiment script as a module (it is a script, not part of the package)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("nextlong_vs_standard", EXPERIMENT_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script loads
    spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=1)
def corpus_documents() -> tuple[tuple[str, str], ...]:
    """(module name, text) of every document of the snapshot, in its order (sorted module paths)."""
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return tuple((row["id"], row["text"]) for row in rows)


def corpus_head(max_bytes: int | None = None, limit: int | None = None) -> tuple[tuple[str, str], ...]:
    """The first documents of the snapshot, stopping once `max_bytes` of UTF-8 or `limit` documents."""
    out, total = [], 0
    for doc in corpus_documents():
        if (limit is not None and len(out) >= limit) or (max_bytes is not None and total >= max_bytes):
            break
        out.append(doc)
        total += len(doc[1].encode("utf-8"))
    return tuple(out)


def corpus_texts(max_bytes: int | None = None, limit: int | None = None) -> list[str]:
    return [text for _, text in corpus_head(max_bytes, limit)]


def write_txt_folder(folder: Path, docs) -> Path:
    """One `<id>.txt` per (id, text) document: the folder input of `nextlong chunk`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for doc_id, text in docs:
        (folder / f"{doc_id}.txt").write_text(text, encoding="utf-8")
    return folder


def write_jsonl(path: Path, docs) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for doc_id, text in docs:
            f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    return path


def repeated_id_corpus(path):
    """The shipped corpus's head with three documents that reuse an earlier document's id: the 6th and the 10th
    the 3rd's, the 11th the 4th's."""
    docs = list(corpus_head(limit=20))
    for later, earlier in ((5, 2), (9, 2), (10, 3)):
        docs[later] = (docs[earlier][0], docs[later][1])
    return write_jsonl(path, docs), docs[2][0]


def read_by(method: str, settings: dict) -> dict:
    """`settings` less those `method` does not read (a shared FAST dict's embedder, for standard): given to it, they
    are a usage error (synthesis/config.py METHOD_SETTINGS)."""
    from nextlong.synthesis.config import METHOD_SETTINGS

    return {k: v for k, v in settings.items() if method in METHOD_SETTINGS.get(k, (method,))}


RECORD_FAST = dict(embedder="hashed-tfidf:64", chunk_size=512, target_length=2048, progress=False)


def finished_work_folder(root: Path) -> tuple[Path, Path]:
    """(a finished one-sample synthesize folder, its corpus) under `root`: the work folder whose records the
    untrusted-record tests craft (RECORD_FAST settings, the shipped corpus's first 120 KB)."""
    from nextlong import synthesize

    corpus = write_jsonl(root / "docs.jsonl", corpus_head(120_000))
    synthesize(corpus, root / "done", num_samples=1, **RECORD_FAST)
    return root / "done", corpus


def edit_json(path: Path, change) -> None:
    """Rewrite the JSON file `path` with `change(value)` applied in place."""
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def chunk_table(docs, max_chars: int = 2048, *, max_chunks: int | None = None, min_chars: int = 1,
                tokenizer=None) -> pa.Table:
    """Meta-chunks of (id, text) documents by the production chunker (newline groups of at most
    `max_chars` characters). Chunks with fewer than `min_chars` non-blank characters are dropped and
    chunk_id renumbered; with a tokenizer, `num_tokens` and `input_ids` (each chunk on its own)."""
    from nextlong.corpus.chunking import chunk_documents

    docs = list(docs)
    batch = pa.table({
        "doc_index": pa.array(np.arange(len(docs), dtype=np.int64)),
        "doc_id": pa.array([d for d, _ in docs], pa.string()),
        "text": pa.array([t for _, t in docs], pa.string()),
    })
    table = chunk_documents(batch, max_len=max_chars, unit="chars", tokenizer=tokenizer,
                            with_ids=tokenizer is not None)
    if min_chars > 1:
        keep = np.array([len(t.strip()) >= min_chars for t in table.column("text").to_pylist()], bool)
        table = table.filter(pa.array(keep))
    if max_chunks is not None:
        table = table.slice(0, max_chunks)
    ids = pa.array(np.arange(table.num_rows, dtype=np.int64))
    return table.set_column(table.schema.get_field_index("chunk_id"), table.schema.field("chunk_id"), ids)


def write_chunk_table(table: pa.Table, path) -> Path:
    """Parquet with about three row groups (resume and batching cross row-group boundaries)."""
    pq.write_table(table, path, row_group_size=max(1, table.num_rows // 3))
    return Path(path)


def lexical_vectors(texts, dim: int = 256) -> np.ndarray:
    """The project's hashed TF-IDF embedder (unit rows): fast, deterministic stand-in for MiniLM."""
    from nextlong.mining.embedding import load_embedder

    return np.asarray(load_embedder(f"hashed-tfidf:{dim}").embed(list(texts)), np.float32)


@lru_cache(maxsize=1)
def get_tokenizer():
    """The default tokenizer (cl100k_base, offline)."""
    from nextlong.corpus.tokenizer import load_tokenizer

    return load_tokenizer(None)


TIKTOKEN_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)


def bpe_openai_ranks(name: str) -> dict[bytes, int]:
    """The mergeable ranks of `name` (cl100k_base, o200k_base) from the rank file bpe-openai ships."""
    import bpe_openai

    path = Path(bpe_openai.__file__).parent / "data" / f"{name}.tiktoken.gz"
    ranks = {}
    for line in gzip.decompress(path.read_bytes()).splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@lru_cache(maxsize=1)
def tiktoken_cl100k():
    """tiktoken's cl100k_base built offline (the reference BPE for our tokenizer's counts)."""
    import tiktoken

    return tiktoken.Encoding("cl100k_base", pat_str=TIKTOKEN_CL100K_PATTERN,
                             mergeable_ranks=bpe_openai_ranks("cl100k_base"), special_tokens={})


def stdlib_source_documents() -> list[tuple[str, str]]:
    """(relative path, source) of the running interpreter's standard-library .py files (UTF-8 only;
    test, idle_test and site-packages folders left out). Depends on the Python version: benchmarks use
    it for scale and say so; tests never do."""
    import os

    stdlib = Path(os.__file__).parent
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    out = []
    for source in sorted(stdlib.rglob("*.py")):
        rel = source.relative_to(stdlib)
        if skip & set(rel.parts):
            continue
        try:
            out.append((str(rel), source.read_bytes().decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return out


def benchmark_documents() -> list[tuple[str, str]]:
    """The benchmarks' text (~14 MB with Python 3.11): the shipped snapshot, then the standard library's
    sources."""
    return list(corpus_documents()) + stdlib_source_documents()


# --- near-copies, the plain way (reference for the near-duplicate filter; also used by its benchmark) ---


def store_of(texts, tok):
    """A chunk store of `texts`, one chunk each (token ids and offsets, what the near-copy graph reads)."""
    ids = tok.encode_ordinary_batch(texts)
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int64)
    return type("S", (), {"tokens": np.concatenate(ids).astype(np.uint32), "tok_offsets": offsets,
                          "num_chunks": len(texts)})()


def version_tree(rng, *, versions: int, words: int, edits: int) -> list[str]:
    """Texts of `words` random words, each after the first `edits` words away from a random earlier one: a tree of
    drifting versions."""
    tree = [[f"s{rng.randrange(10 ** 6)}" for _ in range(words)]]
    for k in range(1, versions):
        text = list(tree[rng.randrange(k)])
        for _ in range(edits):
            text[rng.randrange(words)] = f"s{rng.randrange(10 ** 6)}"
        tree.append(text)
    return [" ".join(v) for v in tree]


def near_copy_pairs(store, tok, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of chunks (a < b) whose word 5-gram Jaccard reaches `threshold`, from the exact intersection
    of all pairs: a product of the chunks' incidence matrix over the shingles held by two or more (for a few
    thousand chunks: the n x n counts are held whole)."""
    from nextlong.synthesis.neardup import chunk_shingles

    n = store.num_chunks
    sets = [chunk_shingles(store, tok, c) for c in range(n)]
    sizes = np.array([s.size for s in sets], np.int64)
    _, col, counts = np.unique(np.concatenate(sets), return_inverse=True, return_counts=True)
    col = col.reshape(-1)
    rows = np.repeat(np.arange(n), sizes)
    held = counts[col] >= 2  # a shingle of one chunk adds to no intersection
    rows, col = rows[held], np.unique(col[held], return_inverse=True)[1].reshape(-1)
    inter = np.zeros((n, n), np.float32)  # counts below 2**24: exact in float32
    for c0 in range(0, int(col.max(initial=-1)) + 1, 2048):
        part = (col >= c0) & (col < c0 + 2048)
        m = np.zeros((n, 2048), np.float32)
        m[rows[part], col[part] - c0] = 1
        inter += m @ m.T
    keep = (inter > 0) & (inter >= threshold * (sizes[:, None] + sizes[None, :] - inter))
    a, b = np.nonzero(np.triu(keep, 1))
    return a.astype(np.int64), b.astype(np.int64)


def missed_near_copy_pairs(graph, a: np.ndarray, b: np.ndarray) -> int:
    """Near-copy pairs (a[i], b[i]) neither an edge of the near-copy `graph` nor inside one family: planning
    would let one be a negative of the other."""
    n = graph.indptr.size - 1
    src = np.repeat(np.arange(n, dtype=np.int64), np.diff(graph.indptr))
    edges = np.unique(np.minimum(src, graph.indices) * n + np.maximum(src, graph.indices))
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    is_edge = np.isin(lo * n + hi, edges)
    fam = graph.family if graph.family is not None else np.full(n, -1, np.int32)
    same = (fam[lo] >= 0) & (fam[lo] == fam[hi])
    return int((~is_edge & ~same).sum())


def reference_jaccard(a: str, b: str, n: int = 5) -> float:
    """Word n-gram Jaccard on the text itself (words = bytes.split()), as sets of tuples."""
    def grams(text):
        words = text.encode("utf-8").split()
        if 0 < len(words) < n:
            return {tuple(words)}
        return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}

    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y) if x and y else 0.0


def near_copy_rate(out_dir, threshold: float = 0.5) -> tuple[int, int]:
    """(negatives that are near-copies of a meta-chunk or an earlier negative of their long document,
    negatives), measured on the chunk texts of the output."""
    chunks = pq.read_table(out_dir / "chunks" / "chunks.parquet", columns=["doc_id", "chunk_index", "text"])
    text = {(d, i): t for d, i, t in zip(*(chunks.column(c).to_pylist() for c in ("doc_id", "chunk_index", "text")))}
    near, total = 0, 0
    for row in pq.read_table(out_dir / "data").to_pylist():
        pieces = [(text[(s["doc_id"], s["chunk_index"])], s["role"]) for s in row["segments"]]
        anchors = [t for t, role in pieces if role == "anchor"]
        earlier = []
        for t, role in pieces:
            if role != "negative":
                continue
            total += 1
            near += any(reference_jaccard(t, o) >= threshold for o in anchors + earlier)
            earlier.append(t)
    return near, total


def run_cli(args, capsys):
    """(exit status, stdout, stderr) of `nextlong ARGS`, run in this process."""
    from nextlong.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, command: str) -> str:
    """The CLI's error contract: exactly one line `nextlong COMMAND: error: ...`, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"nextlong {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def save_small_llama(folder: Path) -> Path:
    """A 1-layer Llama (config.json + model.safetensors) naming the shipped cl100k_base tokenizer: the
    smallest folder `eval`, `heads` and `train --model` load."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    (folder / "nextlong.json").write_text(json.dumps({"tokenizer": "cl100k_base"}))
    return folder


def bytelevel_json(tmp_path, pre_tokenizer, normalizer=None, model_type="BPE") -> Path:
    """A minimal byte-level BPE tokenizer.json in tmp_path: the 256 bytes plus "ab" (id 256)."""
    from nextlong.corpus.tokenizer import _byte_alphabet

    alphabet = _byte_alphabet()[0]
    vocab = {alphabet[b]: b for b in range(256)}
    vocab[alphabet[ord("a")] + alphabet[ord("b")]] = 256
    data = {
        "version": "1.0", "added_tokens": [], "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
        "post_processor": None, "decoder": None,
        "model": {"type": model_type, "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [["a", "b"]]},
    }
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    return path


def split_pre_tokenizer(pattern: str) -> dict:
    """The pre_tokenizer of Llama-3-style files: Split(pattern, Isolated), then ByteLevel without regex."""
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


def free_port() -> int:
    """A TCP port nothing listens on now (for a test's own process group or Ray head)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def embed_pipeline(out, corpus, batch_size: int = 8, embedder: str = "hashed-tfidf:64"):
    """The synthesis pipeline up to the gathered embeddings, its embed stage in batches of `batch_size` that are
    spilled as soon as they are done (spill_seconds 0): what the tests of an interrupted embedding run."""
    from nextlong.synthesis.config import SynthesisConfig
    from nextlong.synthesis.framework import Pipeline
    from nextlong.synthesis.pipeline import build_pipeline

    full = build_pipeline(SynthesisConfig(out=str(out), corpus=str(corpus), embedder=embedder, chunk_size=512,
                                          target_length=2048, progress=False))
    names = [s.name for s in full.stages]
    pipeline = Pipeline(full.root, full.stages[:names.index("embeddings") + 1], full.external,
                        full.source_fingerprint)
    pipeline.stage("embed").batch_size = batch_size
    pipeline.stage("embed").spill_seconds = 0.0
    return pipeline


class BarRecorder:
    """tqdm stand-in (monkeypatch tqdm.auto.tqdm) keeping each enabled bar in `seen`: where it started (`initial`,
    what an earlier run had done), its count `n` and its `total`."""

    seen: list = []

    def __init__(self, *args, total=None, desc="", disable=False, initial=0, **kwargs):
        # as tqdm: a bar made with `initial` counts from it
        self.total, self.desc, self.disable, self.n, self.initial, self.last_print_n = total, desc, disable, initial, \
            initial, 0
        self.iterable = args[0] if args else kwargs.get("iterable")
        if not disable:
            BarRecorder.seen.append(self)

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.n += 1

    def update(self, n=1):
        self.n += n

    def refresh(self):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def search_one_query_at_a_time(lists, queries, k):
    """The first NeighbourLists.search (before 2026-12-07), kept as the reference of the batched one (its test
    and benchmarks/bench_wide_search.py): per query, one exact search of the sorted members of its probed
    partitions."""
    from nextlong.mining.exact import exact_top_k
    from nextlong.mining.partitioned import route

    probes = route(queries, lists.centroids, lists.nprobe)
    ids = np.full((len(queries), k), -1, np.int64)
    sims = np.full((len(queries), k), -np.inf, np.float32)
    for i, q in enumerate(queries):
        pool = np.sort(np.concatenate([lists.members[lists.offsets[p]:lists.offsets[p + 1]] for p in probes[i]]))
        cols, s = exact_top_k(q[None], np.asarray(lists.vectors[pool], np.float32), k)
        found = cols[0] >= 0
        ids[i, :found.sum()] = pool[cols[0][found]]
        sims[i, :found.sum()] = s[0][found]
    return ids, sims
