"""embed_chunks: embeddings written as they are made; a stopped run resumes and gives the same file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nextlong.mining.embed_store import embed_chunks, embedding_progress, progress_path
from nextlong.mining.embedding import HashedLexicalEmbedder
from nextlong.errors import CorpusError, StageMismatchError
from tests.helpers import chunk_table, corpus_head, write_chunk_table


class Recording:
    """Wraps an embedder: counts the texts it embeds, can fail after some calls (a killed run)."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.fail_after, self.calls, self.texts = inner, fail_after, 0, 0
        self.name, self.dim = inner.name, inner.dim

    def embed(self, texts):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("stopped")
        self.calls += 1
        self.texts += len(texts)
        return self.inner.embed(texts)


@pytest.fixture(scope="module")
def table():
    table = chunk_table(corpus_head(limit=40), max_chars=300, max_chunks=700)
    assert table.num_rows == 700  # the resume tests stop after 250 rows and inside a row group
    return table


def test_resume_after_interruption_matches_one_shot(tmp_path, table):
    path = write_chunk_table(table, tmp_path / "chunks.parquet")  # several row groups
    lex = HashedLexicalEmbedder(64)
    full = embed_chunks(path, lex, tmp_path / "one.npy", batch_size=50, progress=False)
    assert full.shape == (table.num_rows, 64)

    stopped = Recording(lex, fail_after=5)
    with pytest.raises(KeyboardInterrupt):
        embed_chunks(path, stopped, tmp_path / "two.npy", batch_size=50, progress=False)
    record = embedding_progress(tmp_path / "two.npy")
    assert record["done"] == 250 and not record["complete"]

    resumed = Recording(lex)
    out = embed_chunks(path, resumed, tmp_path / "two.npy", batch_size=50, progress=False)
    assert resumed.texts == table.num_rows - 250  # only the rest was embedded
    np.testing.assert_array_equal(out, full)
    assert embedding_progress(tmp_path / "two.npy")["complete"]

    again = Recording(lex)
    embed_chunks(path, again, tmp_path / "two.npy", batch_size=50, progress=False)
    assert again.texts == 0  # finished: nothing to do


def test_resume_from_a_row_inside_a_row_group(tmp_path, table):
    path = write_chunk_table(table, tmp_path / "chunks.parquet")
    lex = HashedLexicalEmbedder(32)
    with pytest.raises(KeyboardInterrupt):
        embed_chunks(path, Recording(lex, fail_after=3), tmp_path / "e.npy", batch_size=37, progress=False)
    out = embed_chunks(path, lex, tmp_path / "e.npy", batch_size=37, progress=False)
    np.testing.assert_array_equal(out, lex.embed(table.column("text").to_pylist()))


def test_in_memory_table_and_list_inputs(tmp_path, table):
    lex = HashedLexicalEmbedder(32)
    texts = table.column("text").to_pylist()[:120]
    a = embed_chunks(table.slice(0, 120), lex, tmp_path / "a.npy", batch_size=40, progress=False)
    b = embed_chunks(texts, lex, tmp_path / "b.npy", batch_size=40, progress=False)
    np.testing.assert_array_equal(a, b)
    assert isinstance(a, np.memmap)


def test_other_embedder_or_rows_is_a_stage_mismatch(tmp_path, table):
    path = write_chunk_table(table, tmp_path / "chunks.parquet")
    embed_chunks(path, HashedLexicalEmbedder(32), tmp_path / "e.npy", progress=False)
    with pytest.raises(StageMismatchError, match=r"dim: on disk 32, asked 64"):
        embed_chunks(path, HashedLexicalEmbedder(64), tmp_path / "e.npy", progress=False)
    other = write_chunk_table(table.slice(0, 10), tmp_path / "fewer.parquet")
    with pytest.raises(StageMismatchError, match="rows"):
        embed_chunks(other, HashedLexicalEmbedder(32), tmp_path / "e.npy", progress=False)
    out = embed_chunks(other, HashedLexicalEmbedder(32), tmp_path / "e.npy", progress=False, overwrite=True)
    assert out.shape == (10, 32)
    assert json.loads(progress_path(tmp_path / "e.npy").read_text())["rows"] == 10


def test_bad_chunk_table_names_the_file(tmp_path):
    bad = tmp_path / "chunks.parquet"
    bad.write_text("not parquet")
    with pytest.raises(CorpusError, match="chunks.parquet.*not a readable Parquet"):
        embed_chunks(bad, HashedLexicalEmbedder(32), tmp_path / "e.npy", progress=False)
