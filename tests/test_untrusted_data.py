"""Damaged data files (issue 24): a corrupt Parquet input of chunk, tokenize, synthesize or train, and
junk after a gzip stream, are one line naming the file; never a traceback, never silently ignored."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import assert_one_line_error, run_cli, save_small_llama


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """`train` reads its data after loading the model: a model folder to get that far."""
    return save_small_llama(tmp_path_factory.mktemp("base") / "model")


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random_bytes(path):
    import random

    path.write_bytes(random.Random(0).randbytes(path.stat().st_size))


def _damage_pages(path):
    """Bytes overwritten after the leading magic: the footer still reads, the pages do not."""
    data = bytearray(path.read_bytes())
    half = len(data) // 2
    data[4:4 + half] = b"\xff" * half
    path.write_bytes(bytes(data))


DAMAGE = {"truncated": (_truncate, "not a readable Parquet"),
          "random bytes": (_random_bytes, "not a readable Parquet"),
          "damaged pages": (_damage_pages, "corrupt Parquet data")}


def command_args(command: str, folder, tmp_path, model) -> list[str]:
    out = tmp_path / "out"
    return {
        "chunk": ["chunk", folder, "--out", out / "chunks.parquet", "--no-progress"],
        "tokenize": ["tokenize", folder, "--out", out / "tokens.parquet", "--tokenizer", "cl100k_base",
                     "--no-progress"],
        "synthesize": ["synthesize", "--corpus", folder, "--out", out, "--method", "standard", "--target-length", "512",
                       "--quiet"],
        "train": ["train", folder, "--model", model, "--out", out, "--seq-len", "8", "--steps", "1", "--quiet"],
    }[command]


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("command", ("chunk", "tokenize", "synthesize", "train"))
def test_a_damaged_parquet_input_is_one_line(command, damage, base_model, tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    part = folder / "part-0.parquet"
    if command == "train":
        table = pa.table({"input_ids": [[(i + j) % 300 for j in range(8)] for i in range(400)]})
    else:
        table = pa.table({"text": [f"document {i} " + "words and more words " * 40 for i in range(400)]})
    pq.write_table(table, part, row_group_size=100)
    mangle, expected = DAMAGE[damage]
    mangle(part)
    code, _, err = run_cli(command_args(command, folder, tmp_path, base_model), capsys)
    assert code == 1
    line = assert_one_line_error(err, command)
    assert str(part) in line and expected in line


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_chunk_table_is_one_line_for_index(damage, tmp_path, capsys):
    from tests.helpers import chunk_table, corpus_head

    path = tmp_path / "chunks.parquet"
    pq.write_table(chunk_table(corpus_head(limit=10), max_chars=600, max_chunks=200), path, row_group_size=50)
    mangle, expected = DAMAGE[damage]
    mangle(path)
    code, _, err = run_cli(["index", path, "--out", tmp_path / "idx", "--embedder", "hashed-tfidf:64",
                            "--no-progress"], capsys)
    assert code == 1
    line = assert_one_line_error(err, "index")
    assert str(path) in line and expected in line


def _records(n: int, start: int = 0) -> bytes:
    return "".join(json.dumps({"text": f"record {i}: " + "some words " * 20}) + "\n"
                   for i in range(start, start + n)).encode()


@pytest.mark.parametrize("junk", (b"appended text, not gzip\n", b"\n", b"\0" * 512),
                         ids=("text", "a newline", "zero padding"))
def test_bytes_after_the_gzip_stream_are_an_error(junk, tmp_path, capsys):
    """zlib's gzread stopped at the end of the gzip data and ignored whatever followed it."""
    stream = gzip.compress(_records(30))
    path = tmp_path / "corpus.jsonl.gz"
    path.write_bytes(stream + junk)
    code, _, err = run_cli(["chunk", path, "--out", tmp_path / "chunks.parquet", "--no-progress"], capsys)
    assert code == 1
    line = assert_one_line_error(err, "chunk")
    assert str(path) in line and f"after the end of the gzip data, from byte offset {len(stream)}" in line


def test_concatenated_gzip_members_are_read_whole(tmp_path, capsys):
    """`cat a.gz b.gz` is valid gzip: every member's records are read."""
    path = tmp_path / "corpus.jsonl.gz"
    path.write_bytes(gzip.compress(_records(30)) + gzip.compress(_records(20, start=30)))
    out = tmp_path / "chunks.parquet"
    code, _, err = run_cli(["chunk", path, "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    assert sorted(set(pq.read_table(out, columns=["doc_index"]).column(0).to_pylist())) == list(range(50))


@pytest.mark.parametrize("cut", (-5, -20), ids=("in the trailer", "in the data"))
def test_a_truncated_second_gzip_member_is_an_error(cut, tmp_path, capsys):
    first = gzip.compress(_records(30))
    path = tmp_path / "corpus.jsonl.gz"
    path.write_bytes(first + gzip.compress(_records(20))[:cut])
    code, _, err = run_cli(["chunk", path, "--out", tmp_path / "chunks.parquet", "--no-progress"], capsys)
    assert code == 1
    line = assert_one_line_error(err, "chunk")
    assert str(path) in line and f"it ends inside gzip member 2 (from byte offset {len(first)})" in line
