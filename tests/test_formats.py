"""Output formats of `nextlong synthesize`: Parquet (schema), JSONL (decoded text), MDS (ProLong's
columns: one attention span per sample by default; read back with nextlong.mds everywhere and with
streaming.StreamingDataset when mosaicml-streaming is installed)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nextlong.synthesis.writers import mds_available
from tests.helpers import corpus_head, get_tokenizer, read_by, write_jsonl


L = 1024
FAST = dict(embedder="hashed-tfidf:256", chunk_size=512, target_length=L, progress=False, num_samples=3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("fmt") / "docs.jsonl", corpus_head(150_000))


def test_parquet_schema(corpus, tmp_path):
    from nextlong import synthesize

    synthesize(corpus, tmp_path / "p", **FAST)
    files = sorted((tmp_path / "p" / "data").glob("part-*.parquet"))
    schema = pq.read_schema(files[0])
    assert pa.types.is_list(schema.field("input_ids").type) and schema.field("input_ids").type.value_type == pa.uint32()
    seg = schema.field("segments").type.value_type
    assert [(f.name, str(f.type)) for f in seg] == [("start", "int64"), ("end", "int64"), ("doc_id", "string"),
                                                    ("chunk_index", "int32"), ("role", "string")]
    assert {"anchor_doc_id", "method"} <= set(schema.names)
    # the folder reads as one dataset (bookkeeping files are ignored by readers)
    assert pq.read_table(tmp_path / "p" / "data").num_rows == 3


def test_jsonl_is_the_decoded_text(corpus, tmp_path):
    from nextlong import synthesize

    synthesize(corpus, tmp_path / "j", format="jsonl", method="nextlong", **FAST)
    tok = get_tokenizer()
    rows = [json.loads(line) for p in sorted((tmp_path / "j" / "jsonl").glob("*.jsonl")) for line in open(p)]
    table = pq.read_table(tmp_path / "j" / "data").to_pylist()
    assert len(rows) == len(table) == 3
    for obj, row in zip(rows, table):
        assert obj["text"] == tok.decode(row["input_ids"]) and obj["num_tokens"] == L
        assert obj["anchor_doc_id"] == row["anchor_doc_id"]
        assert "".join(s["text"] for s in obj["segments"][:-1]) == tok.decode(row["input_ids"][: obj["segments"][-1]["start"]])
        assert {s["role"] for s in obj["segments"]} <= {"anchor", "negative"}


def test_a_rerun_with_fewer_documents_leaves_no_stale_jsonl(corpus, tmp_path):
    """The JSONL folder kept the parts of an earlier run with more shards (356 rows beside the 20 asked)."""
    from nextlong import synthesize

    opts = dict(FAST, format="jsonl", shard_size=1)
    synthesize(corpus, tmp_path / "j", **dict(opts, num_samples=3))
    assert len(list((tmp_path / "j" / "jsonl").glob("part-*.jsonl"))) == 3
    synthesize(corpus, tmp_path / "j", **dict(opts, num_samples=1))
    parts = list((tmp_path / "j" / "jsonl").glob("part-*.jsonl"))
    assert len(parts) == len(list((tmp_path / "j" / "data").glob("part-*.parquet"))) == 1


def _block_streaming(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_streaming(name, *args, **kwargs):
        if name == "streaming" or name.startswith("streaming."):
            raise ImportError("no streaming")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_streaming)


def _segment_runs(segments):
    """Expected `document` spans, the slow way: group consecutive segments by source document."""
    runs = []
    for seg in segments:
        if runs and runs[-1][2] == seg["doc_id"]:
            runs[-1][1] = seg["end"]
        else:
            runs.append([seg["start"], seg["end"], seg["doc_id"]])
    return np.asarray([r[:2] for r in runs], np.uint32)


def test_mds_is_one_attention_span_per_sample_without_streaming(corpus, tmp_path, monkeypatch):
    """The trainer makes each `indices` pair its own attention block: a synthesized document is ONE span."""
    from nextlong import synthesize
    from nextlong.mds import num_samples, read_mds

    _block_streaming(monkeypatch)  # MDS is written by nextlong.mds: no optional dependency
    synthesize(corpus, tmp_path / "m", format="mds", method="nextlong", **FAST)
    table = pq.read_table(tmp_path / "m" / "data").to_pylist()
    samples = list(read_mds(tmp_path / "m" / "mds"))
    assert num_samples(tmp_path / "m" / "mds") == len(samples) == len(table) == 3
    for sample, row in zip(samples, table):
        assert sample["input_ids"].dtype == np.uint32 and sample["indices"].dtype == np.uint32
        np.testing.assert_array_equal(sample["input_ids"], np.asarray(row["input_ids"], np.uint32))
        np.testing.assert_array_equal(sample["indices"], np.asarray([[0, L]], np.uint32))
        assert len(row["segments"]) > 2  # many segments, still one span


def test_mds_document_spans_merge_runs_of_one_source_document(corpus, tmp_path):
    from nextlong import synthesize
    from nextlong.mds import read_mds

    synthesize(corpus, tmp_path / "d", format="mds", method="standard", attention_spans="document", **read_by("standard", FAST))
    table = pq.read_table(tmp_path / "d" / "data").to_pylist()
    merged_somewhere = False
    for sample, row in zip(read_mds(tmp_path / "d" / "mds"), table):
        spans = sample["indices"]
        np.testing.assert_array_equal(spans, _segment_runs(row["segments"]))
        assert spans[0, 0] == 0 and spans[-1, 1] == L and np.all(spans[1:, 0] == spans[:-1, 1])  # tiles [0, L)
        assert len(spans) == len({s["doc_id"] for s in row["segments"]})  # standard: each document once
        merged_somewhere |= len(spans) < len(row["segments"])
    assert merged_somewhere  # multi-chunk documents became one span, not one per chunk


def test_nextlong_with_document_spans_warns_that_it_blocks_the_method(corpus, tmp_path, capsys):
    """One span per source document cuts every dependency NExtLong builds between its meta-chunks: allowed
    (an ablation), but said, in synthesize and in train; the standard method is not warned about."""
    from nextlong import synthesize
    from nextlong.train import train

    synthesize(corpus, tmp_path / "std", format="mds", method="standard", attention_spans="document", **read_by("standard", FAST))
    assert "blocked" not in capsys.readouterr().err
    out = tmp_path / "nl"
    synthesize(corpus, out, format="mds", method="nextlong", attention_spans="document", **FAST)
    assert "warning: --attention-spans document with NExtLong data" in capsys.readouterr().err
    train(out, tmp_path / "run", model="tiny", steps=1, attention_spans="document", progress=False, num_threads=1)
    assert "nextlong train: warning: --attention-spans document with NExtLong data" in capsys.readouterr().err


def test_attention_spans_of_interleaved_documents():
    from nextlong.synthesis.writers import attention_spans

    starts, ends = [0, 10, 20, 30, 45], [10, 20, 30, 45, 50]
    docs = ["a", "b", "b", "a", "a"]  # anchor a, negatives from b, then a's next meta-chunk
    np.testing.assert_array_equal(attention_spans(starts, ends, docs, 50, "sample"), [[0, 50]])
    np.testing.assert_array_equal(attention_spans(starts, ends, docs, 50, "document"), [[0, 10], [10, 30], [30, 50]])


def test_ndarray_encoding_bytes():
    """The documented layout: [ndim<<2 | shape width][shape][values], little-endian."""
    from nextlong.mds import decode, encode

    arr = np.asarray([[0, 300]], np.uint32)  # shape (1, 2): uint8 dims
    assert encode("ndarray:uint32", arr) == bytes([2 << 2 | 0, 1, 2]) + arr.tobytes()
    long = np.arange(70_000, dtype=np.uint32)  # one dim above 65535: uint32 dims
    assert encode("ndarray:uint32", long)[:5] == bytes([1 << 2 | 2]) + np.uint32(70_000).tobytes()
    np.testing.assert_array_equal(decode("ndarray:uint32", encode("ndarray:uint32", long)), long)
    with pytest.raises(Exception, match="empty"):
        encode("ndarray:uint32", np.zeros(0, np.uint32))


def test_mds_reader_names_a_broken_shard(tmp_path):
    from nextlong.errors import NextlongError
    from nextlong.mds import TRAINING_COLUMNS, MDSWriter, read_mds

    with MDSWriter(tmp_path, TRAINING_COLUMNS) as w:
        w.write({"input_ids": np.arange(8, dtype=np.uint32), "indices": np.asarray([[0, 8]], np.uint32)})
    shard = tmp_path / "shard.00000.mds"
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(NextlongError, match="shard.00000.mds"):
        list(read_mds(tmp_path))


def pinned_samples():
    """The samples of tests/data/mds_streaming (its make_fixture.py draws the same)."""
    rng = np.random.default_rng(0)
    return [{"input_ids": rng.integers(0, 2**32 - 1, int(rng.integers(1, 200)), dtype=np.uint32),
             "indices": np.asarray([[0, 100]] * (i % 5 + 1), np.uint32)} for i in range(24)]


@pytest.mark.parametrize("name, limit", [("many", 2000), ("one", 1 << 26)])
def test_mds_writer_bytes_equal_pinned_streaming_shards(tmp_path, name, limit):
    """Byte for byte the shards and index mosaicml-streaming's MDSWriter wrote for the same samples (kept in
    tests/data: the package itself cannot be installed beside this machine's transformers, so the live
    comparison below is skipped here and in CI)."""
    from nextlong.mds import TRAINING_COLUMNS, MDSWriter

    from tests.helpers import DATA_DIR

    theirs = DATA_DIR / "mds_streaming" / name
    with MDSWriter(tmp_path, TRAINING_COLUMNS, size_limit=limit) as w:
        for s in pinned_samples():
            w.write(s)
    names = sorted(p.name for p in theirs.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir()) and (len(names) > 2) == (name == "many")
    for n in names:
        assert (tmp_path / n).read_bytes() == (theirs / n).read_bytes(), n


needs_streaming = pytest.mark.skipif(
    not mds_available(), reason="mosaicml-streaming not installed (optional extra nextlong[mds]); its pip "
                                "dependencies would replace this machine's transformers")


@needs_streaming
def test_mds_writer_bytes_equal_streaming_writer(tmp_path):
    from streaming import MDSWriter as StreamingWriter

    from nextlong.mds import TRAINING_COLUMNS, MDSWriter

    rng = np.random.default_rng(0)
    samples = [{"input_ids": rng.integers(0, 2**32 - 1, int(rng.integers(1, 700)), dtype=np.uint32),
                "indices": np.asarray([[0, 300]] * (i % 5 + 1), np.uint32)} for i in range(60)]
    for limit in (5000, 1 << 26):  # many shards, one shard
        ours, theirs = tmp_path / f"ours{limit}", tmp_path / f"theirs{limit}"
        with StreamingWriter(out=str(theirs), columns=TRAINING_COLUMNS, compression=None, size_limit=limit) as w:
            for s in samples:
                w.write(s)
        with MDSWriter(ours, TRAINING_COLUMNS, size_limit=limit) as w:
            for s in samples:
                w.write(s)
        names = sorted(p.name for p in theirs.iterdir())
        assert names == sorted(p.name for p in ours.iterdir()) and len(names) > 1
        for name in names:
            assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name


@needs_streaming
def test_mds_reads_back_in_streaming_dataset(corpus, tmp_path):
    from streaming import StreamingDataset

    from nextlong import synthesize

    synthesize(corpus, tmp_path / "m", format="mds", method="standard", attention_spans="document", **read_by("standard", FAST))
    table = pq.read_table(tmp_path / "m" / "data").to_pylist()
    ds = StreamingDataset(local=str(tmp_path / "m" / "mds"), shuffle=False, batch_size=1)
    assert len(ds) == len(table)
    for i, row in enumerate(table):
        sample = ds[i]
        np.testing.assert_array_equal(sample["input_ids"], np.asarray(row["input_ids"], np.uint32))
        assert sample["input_ids"].dtype == np.uint32
        np.testing.assert_array_equal(np.asarray(sample["indices"]).reshape(-1, 2), _segment_runs(row["segments"]))


def test_a_part_written_from_a_table_read_back_has_the_same_bytes(tmp_path):
    """A list column read from Parquet names its items "element", one built in memory "item", and the name is
    stored in the file: an ACER stage resumed from disk wrote other bytes than one fed from memory."""
    from nextlong.synthesis.writers import write_parquet_atomic

    table = pa.table({"ids": pa.array([[1, 2], [3]], pa.list_(pa.int64())),
                      "seg": pa.array([[{"a": [1]}], []], pa.list_(pa.struct([("a", pa.list_(pa.int32()))])))})
    write_parquet_atomic(table, tmp_path / "a.parquet")
    back = pq.read_table(tmp_path / "a.parquet")
    assert back.schema.field("ids").type.value_field.name == "element"  # what pyarrow reads back
    write_parquet_atomic(back, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_mds_output_keeps_the_previous_one_until_the_new_one_is_complete(tmp_path):
    """The previous MDS folder was deleted before the new one was renamed into place; it is now renamed aside
    and deleted after the swap. A failed writer leaves the previous output untouched."""
    from pathlib import Path

    from nextlong.synthesis.writers import mds_output

    out = tmp_path / "mds"
    columns = {"input_ids": "ndarray:uint32"}
    with mds_output(out, columns) as writer:
        writer.write({"input_ids": np.arange(5, dtype=np.uint32)})
    first = (out / "index.json").read_bytes()
    with pytest.raises(RuntimeError, match="stopped"):
        with mds_output(out, columns) as writer:
            writer.write({"input_ids": np.arange(9, dtype=np.uint32)})
            raise RuntimeError("stopped")
    assert (out / "index.json").read_bytes() == first
    real = Path.rename

    def failing(self, target):  # the swap itself fails (a full or read-only disk, an injected fault)
        if self.name == "mds.tmp":
            raise OSError(28, "No space left on device")
        return real(self, target)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "rename", failing)
        with pytest.raises(OSError):
            with mds_output(out, columns) as writer:
                writer.write({"input_ids": np.arange(9, dtype=np.uint32)})
    assert (out / "index.json").read_bytes() == first
    with mds_output(out, columns) as writer:
        writer.write({"input_ids": np.arange(9, dtype=np.uint32)})
    assert (out / "index.json").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mds"]


def test_mds_output_replaces_a_file_or_link_at_its_name(tmp_path):
    """What stood at OUT/mds (a file, a link) was renamed aside and rmtree left it there: every later run then
    failed with 'Not a directory'."""
    from nextlong.atomic import remove_stale_temporaries
    from nextlong.synthesis.writers import mds_output

    columns = {"input_ids": "ndarray:uint32"}
    for kind in ("file", "link"):
        root = tmp_path / kind
        root.mkdir()
        out = root / "mds"
        if kind == "file":
            out.write_text("not an MDS folder")
        else:
            (root / "elsewhere").mkdir()
            out.symlink_to(root / "elsewhere")
        for _ in range(2):
            with mds_output(out, columns) as writer:
                writer.write({"input_ids": np.arange(5, dtype=np.uint32)})
            assert (out / "index.json").is_file() and not out.is_symlink()
        assert not any(p.name.endswith(".tmp") for p in root.iterdir())
    (tmp_path / "x.old.tmp").write_text("left by a kill between the two renames")
    (tmp_path / "y.tmp").mkdir()
    assert remove_stale_temporaries(tmp_path) == 2 and not (tmp_path / "x.old.tmp").exists()


def test_a_later_run_that_changes_the_data_leaves_no_stale_format(corpus, tmp_path):
    """OUT/mds and OUT/jsonl are derived from OUT/data: a later run into the folder that remakes the data
    (another --num-samples) used to leave the format it did not ask for as it was, holding other samples."""
    from nextlong import synthesize
    from nextlong.mds import num_samples

    out = tmp_path / "s"
    synthesize(corpus, out, **dict(FAST, format="mds"))
    assert num_samples(out / "mds") == 3
    synthesize(corpus, out, **dict(FAST, num_samples=1))  # parquet only: the data changes
    assert pq.read_table(out / "data").num_rows == 1 and not (out / "mds").exists()
    synthesize(corpus, out, **dict(FAST, num_samples=1, format="jsonl"))
    synthesize(corpus, out, **dict(FAST, num_samples=2, format="mds"))  # the jsonl of 1 sample goes
    assert num_samples(out / "mds") == 2 and not (out / "jsonl").exists()
    assert not list(out.glob("*.tmp"))


def test_a_failed_jsonl_rewrite_leaves_the_previous_folder_whole(tmp_path):
    """JSONL is written beside OUT/jsonl and swapped in whole: a failure part-way (a kill, a full disk)
    leaves the previous folder as it was, never a mix of new and old parts."""
    from nextlong.synthesis.writers import write_jsonl_shards
    from nextlong.corpus.tokenizer import load_tokenizer

    tok = load_tokenizer("cl100k_base")
    data = tmp_path / "data"
    data.mkdir()
    for j in range(3):
        pq.write_table(pa.table({"input_ids": [[1, 2, 3]], "segments": [[{"start": 0, "end": 3}]],
                                 "n": [j]}), data / f"part-{j:05d}.parquet")
    write_jsonl_shards(data, tmp_path / "jsonl", tok, lambda row, ids, segs: {"n": row["n"], "v": "old"})
    before = {p.name: p.read_bytes() for p in (tmp_path / "jsonl").iterdir()}
    assert len(before) == 3

    def fails_at_the_second(row, ids, segs):
        if row["n"] == 1:
            raise OSError("disk full")
        return {"n": row["n"], "v": "new"}

    with pytest.raises(OSError, match="disk full"):
        write_jsonl_shards(data, tmp_path / "jsonl", tok, fails_at_the_second)
    assert {p.name: p.read_bytes() for p in (tmp_path / "jsonl").iterdir()} == before
    assert (tmp_path / "jsonl.tmp").is_dir()  # the failed one's, for the clean-up of temporaries
    written = write_jsonl_shards(data, tmp_path / "jsonl", tok, lambda row, ids, segs: {"n": row["n"], "v": "new"})
    assert [json.loads(p.read_text())["v"] for p in written] == ["new"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "jsonl"]
