"""The C++ meta-chunker against a pure-Python reference of spec §1.1, round trips on real text,
the chunk table's columns, and the text hash (XXH64) against published values and a Python port."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

import nextlong
from nextlong import _native
from nextlong.corpus.chunking import MetaChunk, chunk_documents, split_meta_chunks
from nextlong.schema import CHUNK_SCHEMA
from nextlong.corpus.tokenizer import load_tokenizer
from tests.helpers import corpus_texts, tiktoken_cl100k


def reference_meta_chunks(text: str, max_len: int, length=len, count_newlines: bool = False) -> list[str]:
    """Spec §1.1 as the reference code writes it: split on "\\n", add paragraphs to the current group
    while the running length stays <= max_len, else start a new group; rejoin with "\\n"."""
    groups: list[list[str]] = []
    current: list[str] = []
    running = 0
    for paragraph in text.split("\n"):
        size = length(paragraph)
        extra = 1 if (count_newlines and current) else 0
        if current and running + extra + size > max_len:
            groups.append(current)
            current, running = [], 0
            extra = 0
        current.append(paragraph)
        running += extra + size
    groups.append(current)
    return ["\n".join(g) for g in groups]


def real_docs(limit: int | None = None) -> list[str]:
    """`limit` documents spread over the shipped snapshot (all without a limit)."""
    texts = corpus_texts()
    if limit:
        texts = texts[:: max(1, len(texts) // limit)][:limit]
    return texts


def synthetic_docs(seed: int = 0, n: int = 300) -> list[str]:
    rng = random.Random(seed)
    pieces = ["", "a", "word", "héllo wörld", "中文段落", "😀🎉", "\r", " ", "x" * 50, "y" * 300]
    docs = ["", "\n", "\n\n\n", "no newline at all", "\ntrailing and leading\n", "a\r\nb\r\n", "😀" * 5000]
    for _ in range(n):
        docs.append("\n".join(rng.choice(pieces) for _ in range(rng.randint(1, 60))))
    return docs


def chunk_texts(table: pa.Table) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for doc, text in zip(table.column("doc_index").to_pylist(), table.column("text").to_pylist()):
        out.setdefault(doc, []).append(text)
    return out


@pytest.mark.parametrize("max_len", [1, 7, 64, 2048])
@pytest.mark.parametrize("count_newlines", [False, True])
def test_matches_reference_on_synthetic_text(max_len, count_newlines):
    docs = synthetic_docs(seed=max_len)
    table = chunk_documents(docs, max_len=max_len, count_newlines=count_newlines, num_threads=2)
    got = chunk_texts(table)
    for i, doc in enumerate(docs):
        assert got[i] == reference_meta_chunks(doc, max_len, count_newlines=count_newlines), (i, doc[:80])


def test_counting_newlines_changes_grouping():
    doc = "aa\nbb\ncc"
    assert split_meta_chunks(doc, 6) == [(0, 8)]  # 2+2+2 <= 6 without the separators
    assert split_meta_chunks(doc, 6, count_newlines=True) == [(0, 5), (6, 8)]  # 2+1+2=5, +1+2 > 6


def test_edge_cases_and_spans():
    assert split_meta_chunks("", 10) == [(0, 0)]  # an empty document: one empty chunk
    assert split_meta_chunks("\n", 10) == [(0, 1)]
    assert split_meta_chunks("abc", 1) == [(0, 3)]  # over-long paragraph: its own chunk, never split
    assert split_meta_chunks("ab\n" + "x" * 20 + "\ncd", 5) == [(0, 2), (3, 23), (24, 26)]
    assert split_meta_chunks("é😀\nz", 2) == [(0, 2), (3, 4)]  # code points, not bytes or UTF-16 units
    with pytest.raises(ValueError, match="must be positive, got 0"):
        split_meta_chunks("x", 0)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        split_meta_chunks("x", 10, unit="tokens")


def check_round_trip(docs, table):
    starts = table.column("char_start").to_pylist()
    ends = table.column("char_end").to_pylist()
    texts = table.column("text").to_pylist()
    rows = table.column("doc_index").to_pylist()
    for row, start, end, text in zip(rows, starts, ends, texts):
        assert docs[row][start:end] == text
    by_doc = chunk_texts(table)
    assert sorted(by_doc) == list(range(len(docs)))
    for i, doc in enumerate(docs):
        assert "\n".join(by_doc[i]) == doc


def test_round_trip_synthetic_and_crlf():
    docs = synthetic_docs(seed=9)
    docs += [d.replace("\n", "\r\n") for d in docs[:50]]
    check_round_trip(docs, chunk_documents(docs, max_len=40))


@pytest.mark.parametrize("max_len", [256, 2048])
def test_round_trip_and_reference_on_real_docs(max_len):
    docs = real_docs(limit=150)
    docs += [d.replace("\n", "\r\n") for d in docs[:20]] + ["\n" + d + "\n\n" for d in docs[:20]]
    table = chunk_documents(docs, max_len=max_len, num_threads=2)
    check_round_trip(docs, table)
    got = chunk_texts(table)
    for i, doc in enumerate(docs):
        assert got[i] == reference_meta_chunks(doc, max_len)
    # The greedy rule: a chunk only exceeds max_len (separators not counted) when it is one paragraph.
    for text in table.column("text").to_pylist():
        assert len(text) - text.count("\n") <= max_len or "\n" not in text


def test_table_columns_ids_and_thread_determinism():
    docs = synthetic_docs(seed=4, n=400)
    batch = pa.table({"doc_index": pa.array(range(100, 100 + len(docs)), pa.int64()),
                      "doc_id": [f"d{i}" for i in range(len(docs))], "text": docs})
    t1 = chunk_documents(batch, max_len=30, num_threads=1, first_chunk_id=1000)
    t2 = chunk_documents(batch, max_len=30, num_threads=2, first_chunk_id=1000)
    assert t1.equals(t2)
    assert t1.schema == CHUNK_SCHEMA
    assert t1.column("chunk_id").to_pylist() == list(range(1000, 1000 + t1.num_rows))
    assert t1.column("num_tokens").null_count == t1.num_rows
    rows = t1.to_pylist()
    first = [r for r in rows if r["doc_index"] == 105]
    assert [r["chunk_index"] for r in first] == list(range(len(first)))
    assert {r["doc_id"] for r in first} == {"d5"}


def test_sliced_batch_input():
    docs = synthetic_docs(seed=5, n=50)
    table = pa.table({"text": docs}).slice(10, 20)
    out = chunk_documents(table, max_len=25)
    assert chunk_texts(out) == {i: reference_meta_chunks(docs[10 + i], 25) for i in range(20)}


def test_meta_chunk_names_follow_the_schema():
    assert nextlong.MetaChunk is MetaChunk
    assert nextlong.chunk_documents is chunk_documents
    assert list(MetaChunk._fields) == CHUNK_SCHEMA.names


# -- text hash: XXH64, seed 0 ----------------------------------------------------------------------

_M = (1 << 64) - 1
_P1, _P2, _P3, _P4, _P5 = (11400714785074694791, 14029467366897019727, 1609587929392839161,
                           9650029242287828579, 2870177450012600261)


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc, lane):
    return (_rotl((acc + lane * _P2) & _M, 31) * _P1) & _M


def xxh64_reference(data: bytes) -> int:
    """Straight Python transcription of the XXH64 specification, seed 0."""
    n, i = len(data), 0
    lane = lambda k, w=8: int.from_bytes(data[k:k + w], "little")  # noqa: E731
    if n >= 32:
        v = [(_P1 + _P2) & _M, _P2, 0, (-_P1) & _M]
        while i + 32 <= n:
            v = [_round(v[k], lane(i + 8 * k)) for k in range(4)]
            i += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M
        for x in v:
            h = ((h ^ _round(0, x)) * _P1 + _P4) & _M
    else:
        h = _P5
    h = (h + n) & _M
    while i + 8 <= n:
        h = (_rotl(h ^ _round(0, lane(i)), 27) * _P1 + _P4) & _M
        i += 8
    if i + 4 <= n:
        h = (_rotl(h ^ (lane(i, 4) * _P1 & _M), 23) * _P2 + _P3) & _M
        i += 4
    while i < n:
        h = (_rotl(h ^ (data[i] * _P5 & _M), 11) * _P1) & _M
        i += 1
    h ^= h >> 33
    h = (h * _P2) & _M
    h ^= h >> 29
    h = (h * _P3) & _M
    return h ^ (h >> 32)


def test_hash_matches_published_xxh64_values():
    # Values published with xxHash / python-xxhash.
    assert _native.hash64(b"") == 0xEF46DB3751D8E999
    assert _native.hash64(b"a") == 0xD24EC4F1A98C6E5B
    assert _native.hash64(b"abc") == 0x44BC2CF5AD770999
    assert xxh64_reference(b"abc") == 0x44BC2CF5AD770999


def test_text_hash_column_is_xxh64_of_utf8():
    docs = synthetic_docs(seed=6, n=80)
    table = chunk_documents(docs, max_len=33)
    for text, h in zip(table.column("text").to_pylist(), table.column("text_hash").to_pylist()):
        assert h == xxh64_reference(text.encode("utf-8"))


# -- token unit (needs the BPE tokenizer) ----------------------------------------------------------


def load_cl100k():
    return load_tokenizer("cl100k_base")


@pytest.mark.parametrize("max_len", [16, 512])
def test_token_unit_matches_reference_counts(max_len):
    tok = load_cl100k()
    docs = synthetic_docs(seed=7, n=120) + real_docs(limit=20)
    count = lambda s: len(tok.encode_ordinary(s))  # noqa: E731
    table = chunk_documents(docs, max_len=max_len, unit="tokens", tokenizer=tok, with_ids=True, num_threads=2)
    got = chunk_texts(table)
    for i, doc in enumerate(docs):
        assert got[i] == reference_meta_chunks(doc, max_len, length=count), i
    check_round_trip(docs, table)
    for text, n, ids in zip(table.column("text").to_pylist(), table.column("num_tokens").to_pylist(),
                            table.column("input_ids").to_pylist()):
        expected = list(tok.encode_ordinary(text))
        assert ids == expected and n == len(expected)


def test_char_unit_with_tokenizer_fills_num_tokens_like_tiktoken():
    tok = load_cl100k()
    enc = tiktoken_cl100k()
    docs = synthetic_docs(seed=8, n=60) + real_docs(limit=10)
    table = chunk_documents(docs, max_len=100, tokenizer=tok, num_threads=2)
    assert "input_ids" not in table.schema.names
    for text, n in zip(table.column("text").to_pylist(), table.column("num_tokens").to_pylist()):
        assert n == len(enc.encode_ordinary(text))
