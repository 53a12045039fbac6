"""Output formats of `nextlong synthesize`: Parquet (schema), JSONL (decoded text), MDS (ProLong's
columns, read back with streaming.StreamingDataset when mosaicml-streaming is installed)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nextlong.synthesis.writers import mds_available
from test_synthesis_support import get_tokenizer, needs_tokenizer, stdlib_texts, write_jsonl

pytestmark = needs_tokenizer

L = 1024
FAST = dict(embedder="hashed-tfidf:256", chunk_size=512, target_length=L, progress=False, num_samples=3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("fmt") / "docs.jsonl", stdlib_texts(150_000))


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


def test_mds_without_streaming_is_a_clear_error(corpus, tmp_path, monkeypatch):
    import builtins

    from nextlong import synthesize
    from nextlong.errors import NextlongError

    real_import = builtins.__import__

    def no_streaming(name, *args, **kwargs):
        if name == "streaming" or name.startswith("streaming."):
            raise ImportError("no streaming")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_streaming)
    with pytest.raises(NextlongError, match=r"nextlong\[mds\]"):
        synthesize(corpus, tmp_path / "m", format="mds", **FAST)


@pytest.mark.skipif(not mds_available(), reason="mosaicml-streaming not installed (optional extra nextlong[mds]); "
                                                "its pip dependencies would replace this machine's transformers")
def test_mds_reads_back_in_streaming_dataset(corpus, tmp_path):
    from streaming import StreamingDataset

    from nextlong import synthesize

    synthesize(corpus, tmp_path / "m", format="mds", method="standard", **FAST)
    table = pq.read_table(tmp_path / "m" / "data").to_pylist()
    ds = StreamingDataset(local=str(tmp_path / "m" / "mds"), shuffle=False, batch_size=1)
    assert len(ds) == len(table)
    for i, row in enumerate(table):
        sample = ds[i]
        np.testing.assert_array_equal(sample["input_ids"], np.asarray(row["input_ids"], np.uint32))
        assert sample["input_ids"].dtype == np.uint32
        expected = np.asarray([[s["start"], s["end"]] for s in row["segments"]], np.uint32)
        np.testing.assert_array_equal(np.asarray(sample["indices"]).reshape(-1, 2), expected)
