"""Reading a corpus split by split (what Ray actors do, each on its own splits): whatever the split
size, the documents, their order, doc_index and default ids equal one reader's pass over the whole
corpus (nextlong.corpus.reader.CorpusReader, the reference), and errors name the file's true line."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nextlong.corpus.reader import CorpusReader
from nextlong.corpus.split import plan_splits
from nextlong.errors import CorpusError
from nextlong.synthesis.executors.local import LocalExecutor
from nextlong.synthesis.read import corpus_numbered
from nextlong.synthesis.framework import (DONE_FILE, MapStage, Pipeline, ReadCorpus, WholeStage, block_path,
                                      block_record_path, not_a_setting, read_done)


@dataclass
class Documents(MapStage):
    """The corpus block as it is."""

    def __call__(self, block):
        return block


@dataclass
class Gathered(WholeStage):
    """The blocks concatenated with their corpus-wide numbering (as the chunk consolidation does)."""

    def build(self, ctx):
        src = ctx.input(self.inputs[0])
        blocks = ctx.input_record(self.inputs[0])["counts"]["blocks"]
        tables = [corpus_numbered(pq.read_table(block_path(src, j)), read_done(block_record_path(src, j)))
                  for j in range(blocks) if block_path(src, j).exists()]
        from nextlong.corpus.reader import CORPUS_BATCH_SCHEMA

        pq.write_table(pa.concat_tables(tables) if tables else CORPUS_BATCH_SCHEMA.empty_table(),
                       ctx.out_dir / "docs.parquet")
        return {"rows": sum(t.num_rows for t in tables)}


def _run(root, corpus, split_bytes, block_docs=5, **read):
    pipeline = Pipeline(root, [ReadCorpus(name="corpus", path=str(corpus), **read),
                               Documents(name="docs", inputs=("corpus",)),
                               Gathered(name="all", inputs=("docs",))])
    LocalExecutor(corpus_block_docs=block_docs, corpus_split_bytes=split_bytes).run(pipeline, progress=False)
    return pq.read_table(root / "all" / "docs.parquet"), read_done(root / "docs" / DONE_FILE)["counts"]


def _reference(corpus, **read):
    reader = CorpusReader(str(corpus), **read)
    return pa.Table.from_batches(list(reader.batches())), reader.stats.as_dict()


def _mixed_corpus(folder):
    """Files of every kind; the big JSON-lines file has blank lines, CRLF ends, a BOM, non-ASCII
    text, a multi-byte name, and no newline at its end."""
    folder.mkdir()
    lines = ["\ufeff" + json.dumps({"text": "first, after a byte-order mark"})]
    for i in range(120):
        lines.append(json.dumps({"text": f"document {i} " + "ünïcode " * (i % 7)}, ensure_ascii=i % 2 == 0))
        if i % 9 == 0:
            lines.append("   ")
    body = "\n".join(lines).replace('"}\n', '"}\r\n', 10)
    (folder / "a-ß.jsonl").write_text(body, encoding="utf-8")  # no final newline
    with gzip.open(folder / "b.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps({"text": f"zipped {i}"}) for i in range(30)) + "\n")
    rows = [f"row {i} " * (1 + i % 4) for i in range(200)]
    pq.write_table(pa.table({"text": rows}), folder / "c.parquet", row_group_size=17)
    for i in range(4):
        (folder / f"d{i}.txt").write_text(f"text file {i}")
    (folder / "e.jsonl").write_text("\n".join(json.dumps({"text": f"small {i}"}) for i in range(3)) + "\n")
    return folder


@pytest.mark.parametrize("split_bytes", [97, 600, 5000, 1 << 30])
def test_any_split_size_reads_the_corpus_as_one_reader_does(tmp_path, split_bytes):
    corpus = _mixed_corpus(tmp_path / "corpus")
    got, counts = _run(tmp_path / "out", corpus, split_bytes)
    want, stats = _reference(corpus)
    assert got.column("doc_id").to_pylist() == want.column("doc_id").to_pylist()
    assert got.column("text").to_pylist() == want.column("text").to_pylist()
    assert got.column("doc_index").to_pylist() == list(range(want.num_rows))
    assert {k: counts["reader"][k] for k in ("files", "documents", "bytes", "skipped")} == \
        {k: stats[k] for k in ("files", "documents", "bytes", "skipped")}
    if split_bytes <= 600:  # the JSON-lines file is cut into byte ranges, the Parquet one by row groups
        assert counts["splits"] > 8
    assert not (tmp_path / "out" / "docs" / "_splits").exists()


def test_plan_cuts_only_what_can_be_cut(tmp_path):
    corpus = _mixed_corpus(tmp_path / "corpus")
    splits = plan_splits(corpus, split_bytes=600)
    kinds = {(p["name"], "bytes" in p, "row_groups" in p) for s in splits for p in s}
    assert ("a-ß.jsonl", True, False) in kinds and ("c.parquet", False, True) in kinds
    assert ("b.jsonl.gz", False, False) in kinds, "a gzip file is never cut"
    packed = [s for s in splits if len(s) > 1]
    assert packed and all(p["name"].endswith((".txt", ".jsonl", ".gz")) for s in packed for p in s)
    ranges = [p["bytes"] for s in splits for p in s if "bytes" in p]
    assert ranges[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert len(plan_splits(corpus, split_bytes=1 << 30)) == 1


@pytest.mark.parametrize("split_bytes", [64, 1 << 30])
def test_a_bad_record_names_the_files_true_line(tmp_path, split_bytes):
    corpus = tmp_path / "c.jsonl"
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(80)]
    lines[56] = '{"text": "unterminated'
    corpus.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=r"c\.jsonl:57: "):
        _run(tmp_path / "raise", corpus, split_bytes)
    got, counts = _run(tmp_path / "skip", corpus, split_bytes, on_error="skip")
    assert got.num_rows == 79 and counts["reader"]["skipped"] == 1
    assert counts["reader"]["skipped_examples"][0].startswith(f"{corpus}:57: ")
    assert got.column("doc_id").to_pylist()[56] == "c.jsonl:58"


def test_a_cut_file_of_blank_lines_is_still_an_error(tmp_path):
    corpus = tmp_path / "blank.jsonl"
    corpus.write_text("\n" * 500)
    with pytest.raises(CorpusError, match="only blank lines"):
        _run(tmp_path / "out", corpus, 64)
    _, counts = _run(tmp_path / "skip", tmp_path / "blank.jsonl", 64, on_error="skip")
    assert counts["reader"]["skipped"] == 1
    assert counts["reader"]["skipped_examples"][0].startswith(f"{corpus}: file holds only blank lines")  # its path


def test_id_field_ids_are_kept_as_they_are(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"x{i}:{i}", "text": f"t {i}"}) + "\n" for i in range(50)))
    got, _ = _run(tmp_path / "out", corpus, 100, id_field="id")
    assert got.column("doc_id").to_pylist() == [f"x{i}:{i}" for i in range(50)]


@dataclass
class FailsOnce(Documents):
    """Fails at one document the first time; counts the blocks it maps."""

    fail_at: int = not_a_setting(default=-1)
    calls: list = not_a_setting(default=None)

    def __call__(self, block):
        if self.fail_at in block.column("doc_index").to_pylist():
            raise RuntimeError("killed")
        self.calls.append(block.num_rows)
        return block


def test_a_killed_split_resumes_from_its_finished_blocks(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"t {i}"}) + "\n" for i in range(60)))

    def pipeline(stage):
        return Pipeline(tmp_path / "out", [ReadCorpus(name="corpus", path=str(corpus)), stage,
                                           Gathered(name="all", inputs=("docs",))])

    first = FailsOnce(name="docs", inputs=("corpus",), fail_at=30, calls=[])
    with pytest.raises(RuntimeError, match="killed"):
        LocalExecutor(corpus_block_docs=7).run(pipeline(first), progress=False)
    assert len(first.calls) == 4  # documents 0-27 mapped; the block holding 30 was not
    again = FailsOnce(name="docs", inputs=("corpus",), calls=[])
    LocalExecutor(corpus_block_docs=7).run(pipeline(again), progress=False)
    assert len(again.calls) == 9 - 4, "the split's four finished blocks were kept"
    want, _ = _reference(corpus)
    assert pq.read_table(tmp_path / "out" / "all" / "docs.parquet").column("doc_id").equals(want.column("doc_id"))
