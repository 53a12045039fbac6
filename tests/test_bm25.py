"""BM25 index (nextlong/mining/bm25.py): top-k against a brute-force reference computed from the formula,
ties, exclusions, padding, determinism, streaming build, save/load and damaged files."""

from __future__ import annotations

import collections
import json
import math
import os
import random

import numpy as np
import pytest

from nextlong.mining.bm25 import BM25Index, word_terms
from nextlong.errors import IndexFileError, NextlongError, UsageError
from tests.helpers import chunk_table, corpus_head, get_tokenizer, write_chunk_table


@pytest.fixture(scope="module")
def table():
    return chunk_table(corpus_head(limit=40), max_chars=512, min_chars=40, max_chunks=300)


@pytest.fixture(scope="module")
def texts(table):
    return table.column("text").to_pylist()


@pytest.fixture(scope="module")
def index(texts):
    return BM25Index.build(texts, batch_size=64)  # several batches: the streaming path


def make_queries(texts, n=40, seed=0):
    rng = random.Random(seed)
    out = []
    for text in rng.sample(texts, n):
        words = text.split()
        start = rng.randrange(max(1, len(words) - 8))
        out.append(" ".join(words[start:start + 8]))  # a span of a chunk, case and punctuation kept
        out.append("how does " + " ".join(rng.sample(words, min(4, len(words)))))
    out += ["the the the value", "RETURN None", "zzqqxx unknownword", ""]
    return out


def reference_scores(docs_terms: list[list], query_terms: list, k1=1.2, b=0.75) -> np.ndarray:
    """Lucene BM25 of every document from the formula, float64, one plain loop per document."""
    n = len(docs_terms)
    counts = [collections.Counter(d) for d in docs_terms]
    df = collections.Counter(t for c in counts for t in c)
    avgdl = sum(len(d) for d in docs_terms) / n
    out = np.zeros(n)
    for i, (doc, c) in enumerate(zip(docs_terms, counts)):
        for t in query_terms:  # repeated query terms count again
            if c[t]:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                out[i] += idf * c[t] / (c[t] + k1 * (1 - b + b * len(doc) / avgdl))
    return out


def check_against_reference(ids, scores, ref_rows, k):
    """ids/scores (one query) are the reference's top k: same scores (float32 rounding), each id's own
    reference score, ties by lower id, and the same ids wherever the reference has no near-tie."""
    matched = np.flatnonzero(ref_rows > 0)
    order = matched[np.lexsort((matched, -ref_rows[matched]))]
    want = order[:k]
    got = ids[ids >= 0]
    assert len(got) == len(want) and np.all(ids[len(got):] == -1) and np.all(np.isnan(scores[len(got):]))
    np.testing.assert_allclose(scores[:len(got)], ref_rows[want], rtol=2e-6)
    np.testing.assert_allclose(scores[:len(got)], ref_rows[got], rtol=2e-6)
    s = scores[:len(got)]
    assert np.all(s[:-1] >= s[1:])
    same = s[:-1] == s[1:]
    assert np.all(got[:-1][same] < got[1:][same]), "ties must come in ascending row order"
    top = ref_rows[order[:k + 1]]
    gaps = np.abs(np.diff(top))
    if not np.any((gaps > 0) & (gaps < 1e-5 * top[:-1])):  # no near-tie: the exact list
        assert np.array_equal(got, want)


def test_word_terms_are_lowercased_word_runs():
    assert word_terms("Hello, WORLD! snake_case x2 café") == ["hello", "world", "snake_case", "x2", "café"]
    assert word_terms("The cat is on the mat", frozenset({"the", "is", "on"})) == ["cat", "mat"]


@pytest.mark.parametrize("k", [1, 10, 1000])
def test_top_k_equals_brute_force_reference(index, texts, k):
    queries = make_queries(texts)
    ids, scores = index.search(queries, k)
    assert ids.shape == scores.shape == (len(queries), k) and ids.dtype == np.int64 and scores.dtype == np.float32
    docs = [word_terms(t) for t in texts]
    for q, row_ids, row_scores in zip(queries, ids, scores):
        check_against_reference(row_ids, row_scores, reference_scores(docs, word_terms(q)), k)


def test_other_k1_b_and_stopwords_match_the_reference(texts):
    stop = frozenset({"the", "a", "of", "to"})
    index = BM25Index.build(texts, k1=0.9, b=0.4, stopwords=stop)
    queries = make_queries(texts, n=10, seed=1)
    ids, scores = index.search(queries, 10)
    docs = [word_terms(t, stop) for t in texts]
    for q, row_ids, row_scores in zip(queries, ids, scores):
        check_against_reference(row_ids, row_scores, reference_scores(docs, word_terms(q, stop), 0.9, 0.4), 10)


def test_token_terms_match_the_reference(texts):
    tok = get_tokenizer()
    index = BM25Index.build(texts, terms="tokens", tokenizer=tok, num_threads=2)
    queries = make_queries(texts, n=10, seed=2)
    ids, scores = index.search(queries, 10)
    docs = [tok.encode_ordinary(t).tolist() for t in texts]
    for q, row_ids, row_scores in zip(queries, ids, scores):
        check_against_reference(row_ids, row_scores, reference_scores(docs, tok.encode_ordinary(q).tolist()), 10)


def test_ties_go_to_the_lower_row():
    base = ["alpha beta gamma", "beta gamma delta", "gamma delta epsilon", "zeta eta theta"]
    texts = base + base[:3] + ["alpha beta gamma"] * 3  # exact copies score exactly alike
    index = BM25Index.build(texts)
    ids, scores = index.search(["alpha beta", "gamma"], 10)
    assert ids[0].tolist() == [0, 4, 7, 8, 9, 1, 5, -1, -1, -1]  # both words, then "beta" alone
    assert len(set(scores[0][:5].tolist())) == 1 and scores[0][4] > scores[0][5] == scores[0][6]
    assert ids[1].tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9, -1]  # one "gamma" in 3 words each: all tie


def test_texts_without_terms_anywhere_in_a_batch_are_empty_documents():
    """A text with no word (empty, punctuation) at the end of a batch once broke the length count."""
    texts = ["hello world", "...", "", "world peace", ""]
    index = BM25Index.build(texts, batch_size=2)
    ids, scores = index.search(["world", "peace"], 5)
    docs = [word_terms(t) for t in texts]
    for row, query in enumerate(["world", "peace"]):
        check_against_reference(ids[row], scores[row], reference_scores(docs, [query]), 5)
    assert ids[0].tolist()[:2] == [0, 3] and ids[1].tolist()[0] == 3


def test_empty_unknown_and_short_queries_are_padded(index):
    ids, scores = index.search(["", "qqqzzz xxyyww", "   ", "!!!"], 5)
    assert np.all(ids == -1) and np.all(np.isnan(scores))
    ids, scores = index.search(["interpreter zzqq"], len(index) + 5)  # fewer matches than k
    n = int((ids[0] >= 0).sum())
    assert 0 < n < len(index) and np.all(ids[0, n:] == -1) and np.all(np.isnan(scores[0, n:]))
    assert index.search([], 3)[0].shape == (0, 3)
    assert index.search(["the"], 0)[0].shape == (1, 0)


def test_exclude_rows_and_documents(index, texts, table):
    queries = make_queries(texts, n=8, seed=3)
    full, _ = index.search(queries, 12)
    skip = [set(row[:2].tolist()) - {-1} for row in full]
    ids, _ = index.search(queries, 10, exclude=skip)
    for row, base, gone in zip(ids, full, skip):
        assert row.tolist() == [i for i in base.tolist() if i not in gone][:10]
    shared = {int(full[0, 0]), 5}
    ids, _ = index.search(queries, 5, exclude=frozenset(shared))
    assert not set(ids.ravel().tolist()) & shared
    ids, _ = index.search(queries, 5, exclude=[None] * len(queries))
    assert np.array_equal(ids, full[:, :5])

    with_docs = BM25Index.from_chunks(table)
    doc_index = table.column("doc_index").to_numpy()
    own = [[int(doc_index[r[0]])] if r[0] >= 0 else [] for r in full]
    ids, _ = with_docs.search(queries, 10, exclude_docs=own)
    for row, docs in zip(ids, own):
        assert not set(doc_index[row[row >= 0]].tolist()) & set(docs)
    with pytest.raises(UsageError, match="does not know the documents"):
        index.search(queries, 5, exclude_docs=own)
    with pytest.raises(UsageError, match="one entry per query"):
        index.search(queries, 5, exclude=[[1]])


def test_deterministic_across_threads_and_builds(texts, index):
    queries = make_queries(texts, n=30, seed=4)
    ids1, sc1 = index.search(queries, 20, num_threads=1)
    for threads in (2, 3, 8):
        ids, sc = index.search(queries, 20, num_threads=threads)
        assert np.array_equal(ids, ids1) and np.array_equal(sc, sc1, equal_nan=True)
    again = BM25Index.build(iter(texts), batch_size=1000)  # one batch instead of five, from a generator
    for name in ("indptr", "postings", "weights", "doc_lengths"):
        assert np.array_equal(getattr(again, name), getattr(index, name)), name
    assert again.vocab == index.vocab


def test_pretokenized_texts_and_queries(texts, index):
    split = [word_terms(t) for t in texts]
    pre = BM25Index.build(split)
    queries = make_queries(texts, n=5, seed=5)
    a = pre.search([word_terms(q) for q in queries], 10)
    b = index.search(queries, 10)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1], equal_nan=True)


def test_from_chunks_parquet_streams_and_checks_chunk_ids(tmp_path, table, index):
    path = write_chunk_table(table, tmp_path / "chunks.parquet")
    built = BM25Index.from_chunks(path)
    assert np.array_equal(built.postings, index.postings) and np.array_equal(built.weights, index.weights)
    assert np.array_equal(built.doc_index, table.column("doc_index").to_numpy())
    shuffled = table.take(np.r_[1, 0, 2:table.num_rows])
    with pytest.raises(NextlongError, match="row 0 has chunk_id 1"):
        BM25Index.from_chunks(shuffled)
    with pytest.raises(NextlongError, match="no 'body' column"):
        BM25Index.from_chunks(path, text_column="body")


def test_bad_settings_are_usage_errors(texts):
    for kwargs, message in (({"k1": -1}, "k1 >= 0"), ({"b": 1.5}, "0 <= b <= 1"), ({"terms": "chars"}, "terms must be"),
                            ({"stopwords": "fr"}, "stopwords must be"),
                            ({"terms": "tokens", "stopwords": "en"}, "stopwords apply to terms='words' only"),
                            ({"tokenizer": "cl100k_base"}, "a tokenizer is used with terms='tokens' only")):
        with pytest.raises(UsageError, match=message):
            BM25Index.build(texts[:3], **kwargs)
    with pytest.raises(UsageError, match="wrap a single query in a list"):
        BM25Index.build(texts[:3]).search("one query, not a list", 3)


def test_save_load_round_trip_is_identical(tmp_path, index, texts, table):
    queries = make_queries(texts, n=10, seed=6)
    want = index.search(queries, 10)
    for idx, folder in ((index, tmp_path / "words"), (BM25Index.from_chunks(table, terms="tokens"), tmp_path / "tok")):
        idx.save(folder)
        assert (folder / "bm25.json").is_file()
        for mmap in (False, True):
            loaded = BM25Index.load(folder, mmap=mmap)
            for name in ("indptr", "postings", "weights", "doc_lengths"):
                assert np.array_equal(getattr(loaded, name), getattr(idx, name))
            assert (loaded.k1, loaded.b, loaded.terms, len(loaded)) == (idx.k1, idx.b, idx.terms, len(idx))
            got, expect = loaded.search(queries, 10), idx.search(queries, 10)
            assert np.array_equal(got[0], expect[0]) and np.array_equal(got[1], expect[1], equal_nan=True)
    assert np.array_equal(BM25Index.load(tmp_path / "words").search(queries, 10)[0], want[0])
    assert np.array_equal(BM25Index.load(tmp_path / "tok").doc_index, table.column("doc_index").to_numpy())
    index.save(tmp_path / "words")  # saving over an index replaces it
    assert BM25Index.load(tmp_path / "words").vocab == index.vocab


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and isinstance(exc_info.value, NextlongError)
    return message


def test_damaged_files_are_one_line_errors(tmp_path, index):
    folder = index.save(tmp_path / "idx")
    pristine = {p.name: p.read_bytes() for p in folder.iterdir()}

    def restore():
        for name, data in pristine.items():
            (folder / name).write_bytes(data)

    def damaged(name, change):
        restore()
        path = folder / name
        path.write_bytes(change(path.read_bytes()))
        with pytest.raises(IndexFileError) as exc:
            BM25Index.load(folder)
        return one_line(exc)

    def flip(data):
        return data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:]

    assert "CRC32" in damaged("postings.npy", flip)
    assert "bytes" in damaged("weights.npy", lambda d: d[:-8])
    damaged("bm25.json", lambda d: b"{not json")
    damaged("bm25.json", lambda d: json.dumps({**json.loads(d), "num_docs": -3}).encode())
    damaged("bm25.json", lambda d: json.dumps({**json.loads(d), "version": 99}).encode())
    shape = damaged("bm25.json", lambda d: json.dumps({**json.loads(d), "num_docs": 7}).encode())
    assert "doc_lengths.npy" in shape and "shape" in shape
    # a pickled object array under the right name and size: refused, never unpickled
    restore()
    path = folder / "doc_lengths.npy"
    obj = np.empty(len(index), dtype=object)
    np.save(path, obj, allow_pickle=True)
    header = json.loads((folder / "bm25.json").read_text())
    header["files"]["doc_lengths"]["bytes"] = path.stat().st_size
    (folder / "bm25.json").write_text(json.dumps(header))
    with pytest.raises(IndexFileError) as exc:
        BM25Index.load(folder, verify=False)
    one_line(exc)
    restore()
    (folder / "bm25.json").unlink()
    with pytest.raises(IndexFileError, match="not a BM25 index folder") as exc:
        BM25Index.load(folder)
    one_line(exc)
    os.mkfifo(folder / "bm25.json")  # refused, not read (a read would block)
    with pytest.raises(IndexFileError, match="not a regular file") as exc:
        BM25Index.load(folder)
    one_line(exc)


def test_postings_out_of_range_fail_cleanly_without_verification(tmp_path, index, texts):
    folder = index.save(tmp_path / "idx")
    arr = np.load(folder / "postings.npy", mmap_mode="r+")
    pos = len(arr) // 2
    arr[pos] = len(index) + 1000  # same size, so only the CRC (skipped here) would notice
    term = int(np.searchsorted(index.indptr, pos, side="right")) - 1
    word = next(w for w, i in index.vocab.items() if i == term)
    arr.flush()
    del arr
    with pytest.raises(IndexFileError):
        BM25Index.load(folder)
    loaded = BM25Index.load(folder, verify=False)
    with pytest.raises(IndexFileError, match="corrupt") as exc:
        loaded.search(make_queries(texts, n=20, seed=7) + [word], 5)
    one_line(exc)
