"""Damaged data files (issue 24): a corrupt Parquet input of chunk, tokenize, synthesize or train, and
junk after a gzip stream, are one line naming the file; never a traceback, never silently ignored."""

from __future__ import annotations

import gzip
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import assert_one_line_error, corpus_head, run_cli, save_small_llama, write_jsonl


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


def _page_bytes(path) -> range:
    """Where a Parquet file's pages lie: after the leading magic, before the footer (its length is the 4 bytes
    before the closing magic)."""
    data = path.read_bytes()
    return range(4, len(data) - 8 - int.from_bytes(data[-8:-4], "little"))


def _flip(path, position: int, bit: int) -> bytes:
    data = bytearray(path.read_bytes())
    data[position] ^= 1 << bit
    return bytes(data)


def test_a_bit_flipped_in_a_part_we_wrote_is_refused_not_read_as_other_values(tmp_path):
    """Parquet holds no checksum by default, and a bit flipped in a page mostly decodes to other values (token ids
    of a work folder's part, unsaid). Every part nextlong writes carries a CRC32 per page and every read checks it:
    a flipped bit is refused naming the file, or (outside what any read decodes) leaves the values as they were."""
    import random

    from nextlong import checked_parquet
    from nextlong.errors import CorruptFileError
    from nextlong.synthesis.writers import write_parquet_atomic

    rng = random.Random(0)
    table = pa.table({"input_ids": [[rng.randrange(50_000) for _ in range(500)] for _ in range(40)],
                      "doc": list(range(40))})
    part, damaged = tmp_path / "part-00000.parquet", tmp_path / "damaged.parquet"
    write_parquet_atomic(table, part)
    refused = 0
    for _ in range(200):
        damaged.write_bytes(_flip(part, rng.choice(_page_bytes(part)), rng.randrange(8)))
        try:
            read = checked_parquet.read_table(damaged)
        except CorruptFileError as exc:
            assert str(damaged) in str(exc) and "checksum" in str(exc)
            refused += 1
            continue
        except (OSError, pa.ArrowException):  # damage pyarrow finds without the checksum
            refused += 1
            continue
        assert read.equals(table), "a flipped bit was read as other values"
    assert refused >= 190


def test_training_data_with_a_flipped_bit_is_one_line(base_model, tmp_path, capsys):
    """`train` on a synthesized data part damaged since it was written: one line naming the part, not a run on
    other token ids."""
    from nextlong.synthesis.writers import write_parquet_atomic

    folder = tmp_path / "data"
    folder.mkdir()
    part = folder / "part-00000.parquet"
    write_parquet_atomic(pa.table({"input_ids": [[(7 * i + j) % 300 for j in range(8)] for i in range(400)]}), part)
    pages = _page_bytes(part)
    part.write_bytes(_flip(part, pages[len(pages) // 2], 3))
    code, _, err = run_cli(command_args("train", folder, tmp_path, base_model), capsys)
    assert code == 1
    line = assert_one_line_error(err, "train")
    assert str(part) in line and "corrupt Parquet data" in line and "checksum" in line


def _finished_synthesis(tmp_path, capsys, quiet: str):
    """A small finished synthesize run (hashed-tfidf, 512 tokens) in tmp_path/s: its command line and folder."""
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_head(60_000))
    out = tmp_path / "s"
    argv = ["synthesize", "--corpus", corpus, "--out", out, "--embedder", "hashed-tfidf:64", "--target-length",
            "512", "--chunk-size", "512", quiet]
    assert run_cli(argv, capsys)[0] == 0
    return argv, out


def test_a_damaged_page_of_the_chunk_table_does_not_send_the_user_to_no_verify_unwarned(tmp_path, capsys):
    """The chunks stage's CRC32 finds a flipped bit in chunks.parquet and offers --no-verify to use the file as it is;
    but each page's own checksum is checked on every read, --no-verify or not, so the offer says a damaged page is
    refused all the same (before, it sent the user to a second refusal)."""
    argv, out = _finished_synthesis(tmp_path, capsys, "--quiet")
    table = out / "chunks" / "chunks.parquet"
    pages = _page_bytes(table)
    table.write_bytes(_flip(table, pages[len(pages) // 2], 4))
    for stage in out.iterdir():  # the stages after the chunk table (the embedding reads its texts)
        if stage.is_dir() and stage.name not in ("chunk", "chunks"):
            shutil.rmtree(stage)
    code, _, err = run_cli(argv, capsys)
    line = assert_one_line_error(err, "synthesize")
    assert code == 1 and str(table) in line and line.endswith(
        "or pass --no-verify to use it as it is (a page that no longer matches its own checksum is refused all the "
        "same)")
    code, _, err = run_cli(argv + ["--no-verify"], capsys)
    assert code == 1 and str(table) in assert_one_line_error(err, "synthesize")


def test_chunk_texts_read_by_id_check_each_page(tmp_path, capsys):
    """ACER's passages in another --tokenizer and eval --tasks rag's chunk texts are read by id (acer.stages.chunk_text,
    a pyarrow dataset take), which checked no page checksum: a flipped bit in a text page was a bare OSError naming no
    file (snappy) or other text. It is the one-line error naming the file."""
    from nextlong.errors import CorruptFileError
    from nextlong.synthesis.acer.stages import chunk_text

    table = tmp_path / "chunks.parquet"
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_head(30_000))
    assert run_cli(["chunk", corpus, "--out", table, "--no-progress"], capsys)[0] == 0
    texts = pq.read_table(table).column("text").to_pylist()
    assert chunk_text(table, [0, len(texts) - 1]) == [texts[0], texts[-1]]
    group = pq.ParquetFile(table).metadata.row_group(0)
    text = next(group.column(i) for i in range(group.num_columns) if group.column(i).path_in_schema == "text")
    table.write_bytes(_flip(table, text.data_page_offset + text.total_compressed_size * 3 // 4, 4))  # in its page
    with pytest.raises(CorruptFileError, match=f"{table}: damaged since it was written"):
        chunk_text(table, [0, len(texts) - 1])


@pytest.mark.parametrize("damage, fmt", [("page header", "parquet"), ("footer", "mds")])
def test_damage_no_checksum_covers_in_an_output_part_is_one_line(tmp_path, capsys, damage, fmt):
    """A page's checksum covers its data, not its header, nor the footer: a byte changed there made pyarrow raise an
    error naming no file, a traceback when a rerun summed the finished parts again (the manifest's statistics) or
    wrote --format mds. It is one line naming the part."""
    argv, out = _finished_synthesis(tmp_path, capsys, "--no-progress")
    part = out / "data" / "part-00000.parquet"
    if damage == "footer":
        part.write_bytes(part.read_bytes()[:-20])
    else:
        group = pq.ParquetFile(part).metadata.row_group(0)
        column = next(group.column(i) for i in range(group.num_columns)
                      if group.column(i).path_in_schema.startswith("segments"))
        part.write_bytes(_flip(part, (column.dictionary_page_offset or column.data_page_offset) + 1, 7))
    (out / "manifest.json").unlink()
    code, _, err = run_cli(argv + ["--format", fmt], capsys)
    line = assert_one_line_error(err, "synthesize")
    assert code == 1 and f"{part}: not a readable Parquet file" in line and line.endswith(
        f"delete {out / 'data'} to make that stage again")
