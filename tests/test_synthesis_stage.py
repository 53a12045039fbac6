"""The stage abstraction, the one completion record and the local executor, on toy stages."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from nextlong.errors import StageMismatchError
from nextlong.synthesis.executors.local import LocalExecutor
from nextlong.synthesis.executors import executor_for
from nextlong.synthesis.framework import (DONE_FILE, MapStage, Pipeline, ReadCorpus, StageContext, WholeStage, is_done,
                                          map_stage, not_a_setting, prepare, read_done, write_done)


@dataclass
class Words(MapStage):
    """Documents -> one row per word, numbered from 0 in each block (the executor's prefix sum fixes it)."""

    lower: bool = False
    fail_at_doc: int | None = not_a_setting(default=None)
    calls: int = not_a_setting(default=0)

    def __call__(self, block):
        self.calls += 1
        rows = []
        for d, text in zip(block.column("doc_index").to_pylist(), block.column("text").to_pylist()):
            if d == self.fail_at_doc:
                raise RuntimeError("injected failure")
            for w in text.split():
                rows.append({"doc_index": d, "word": w.lower() if self.lower else w})
        return pa.Table.from_pylist(rows, schema=pa.schema([("doc_index", pa.int64()), ("word", pa.string())]))


@dataclass
class Numbered(WholeStage):
    """Word ids from per-block counts + a prefix sum, into one table."""

    def build(self, ctx):
        src = ctx.input(self.inputs[0])
        tables = [pq.read_table(p) for p in sorted(src.glob("part-*.parquet"))]
        t = pa.concat_tables(tables)
        t = t.append_column("word_id", pa.array(range(t.num_rows), pa.int64()))
        pq.write_table(t, ctx.out_dir / "words.parquet")
        return {"rows": t.num_rows}


@dataclass
class Head(WholeStage):
    rows: int = 0

    @property
    def cut_rows(self):
        return self.rows

    def build(self, ctx):
        src = ctx.input(self.inputs[0])
        t = pa.concat_tables([pq.read_table(p) for p in sorted(src.glob("part-*.parquet"))]).slice(0, self.rows)
        pq.write_table(t, ctx.out_dir / "head.parquet")
        return {"rows": t.num_rows}


def _corpus(path, n=40):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"doc {i} " + "w " * (i % 5)}) + "\n")
    return path


def _pipeline(root, corpus, **words):
    return Pipeline(root, [ReadCorpus(name="corpus", path=str(corpus)),
                           Words(name="words", inputs=("corpus",), **words),
                           Numbered(name="numbered", inputs=("words",))])


def test_fingerprint_is_derived_from_fields_and_inputs(tmp_path):
    a = _pipeline(tmp_path, "c.jsonl").fingerprints()
    b = _pipeline(tmp_path, "c.jsonl", lower=True).fingerprints()
    c = _pipeline(tmp_path, "c.jsonl", fail_at_doc=3).fingerprints()  # not a setting
    d = _pipeline(tmp_path, "other.jsonl").fingerprints()
    assert a["corpus"] == b["corpus"] and a["words"] != b["words"] and a["numbered"] != b["numbered"]
    assert a == c
    assert a["words"] != d["words"], "a stage's fingerprint covers the stages it reads"
    f = map_stage("m", pc.utf8_lower, inputs=("corpus",))
    assert "pyarrow" in json.dumps(f.settings())


def test_done_record_is_the_only_truth(tmp_path):
    path = tmp_path / "s" / DONE_FILE
    assert not is_done(path, "abc")
    write_done(path, stage="s", fingerprint="abc", settings={"x": 1}, counts={"rows": 3})
    assert is_done(path, "abc") and not is_done(path, "abd")
    assert read_done(path)["counts"] == {"rows": 3} and read_done(path)["finished"]
    path.write_text("{trunc")
    assert not is_done(path, "abc")


def test_prepare_mismatch_rebuild_and_legacy(tmp_path, capsys):
    p = _pipeline(tmp_path, "c.jsonl")
    stage = p.stage("numbered")
    ctx = StageContext(p, stage, "fp1")
    assert prepare(ctx) is False
    write_done(ctx.record_path, stage="numbered", fingerprint="fp1", settings=stage.settings())
    assert prepare(ctx) is True
    other = StageContext(p, stage, "fp2")
    with pytest.raises(StageMismatchError, match="--rebuild"):
        prepare(other)
    assert prepare(StageContext(p, stage, "fp2", rebuild=True)) is False
    assert not ctx.record_path.exists()
    (ctx.out_dir / "stage.json").write_text("{}")  # an older nextlong's record: rebuilt, one line logged
    (ctx.out_dir / "old.bin").write_text("x")
    assert prepare(ctx) is False and not (ctx.out_dir / "old.bin").exists()
    assert "older nextlong" in capsys.readouterr().err


@pytest.mark.parametrize("block_docs", [7, 1000])
def test_ids_do_not_depend_on_the_block_partition(tmp_path, block_docs):
    corpus = _corpus(tmp_path / "c.jsonl")
    LocalExecutor(corpus_block_docs=block_docs).run(_pipeline(tmp_path / "out", corpus), progress=False)
    ref_root = tmp_path / "ref"
    LocalExecutor(corpus_block_docs=3).run(_pipeline(ref_root, corpus), progress=False)
    assert (pq.read_table(tmp_path / "out" / "numbered" / "words.parquet")
            .equals(pq.read_table(ref_root / "numbered" / "words.parquet")))
    assert read_done(tmp_path / "out" / "words" / DONE_FILE)["counts"]["docs"] == 40


def test_killed_run_resumes_from_finished_blocks(tmp_path):
    corpus = _corpus(tmp_path / "c.jsonl")
    p = _pipeline(tmp_path / "out", corpus, fail_at_doc=25)
    with pytest.raises(RuntimeError, match="injected"):
        LocalExecutor(corpus_block_docs=10).run(p, progress=False)
    words = tmp_path / "out" / "words"
    staged = words / "_splits"  # the corpus split's blocks wait here until every split is read
    assert sorted(x.name for x in staged.glob("*.parquet")) == ["split-00000-00000.parquet", "split-00000-00001.parquet"]
    assert not list(words.glob("part-*")) and not (words / DONE_FILE).exists() and not list(words.rglob(".*.tmp"))
    (staged / "split-00000-00002.parquet").write_bytes(b"half-written")  # without its record: never done
    p2 = _pipeline(tmp_path / "out", corpus)
    LocalExecutor(corpus_block_docs=10).run(p2, progress=False)
    assert p2.stage("words").calls == 2, "blocks 0 and 1 were kept, 2 and 3 computed"
    ref = tmp_path / "ref"
    LocalExecutor(corpus_block_docs=10).run(_pipeline(ref, corpus), progress=False)
    assert (words / "part-00002.parquet").read_bytes() == (ref / "words" / "part-00002.parquet").read_bytes()
    # a finished run is not recomputed
    p3 = _pipeline(tmp_path / "out", corpus)
    LocalExecutor(corpus_block_docs=10).run(p3, progress=False)
    assert p3.stage("words").calls == 0


def test_cut_stops_the_map_chain_early_and_gives_the_same_rows(tmp_path):
    corpus = _corpus(tmp_path / "c.jsonl")

    def pipe(root, rows):
        return Pipeline(root, [ReadCorpus(name="corpus", path=str(corpus)),
                               Words(name="words", inputs=("corpus",)),
                               map_stage("upper", _upper, inputs=("words",)),
                               Head(name="data", inputs=("upper",), rows=rows)])

    lazy = pipe(tmp_path / "lazy", 5)
    results = LocalExecutor(corpus_block_docs=4).run(lazy, progress=False)
    assert results["upper"] == {"blocks_computed": 1}
    assert not (tmp_path / "lazy" / "upper" / DONE_FILE).exists()
    full = pipe(tmp_path / "full", 10_000)
    LocalExecutor(corpus_block_docs=4).run(full, progress=False)
    head = pq.read_table(tmp_path / "lazy" / "data" / "head.parquet")
    assert head.num_rows == 5
    assert head.equals(pq.read_table(tmp_path / "full" / "upper" / "part-00000.parquet").slice(0, 5))


def _upper(table):
    return table.set_column(1, "word", pc.utf8_upper(table.column("word")))


def test_executor_for_names(monkeypatch):
    import sys

    assert isinstance(executor_for("local"), LocalExecutor)
    from nextlong.errors import NextlongError, UsageError

    with pytest.raises(UsageError, match="must be local or ray, got 'spark'"):
        executor_for("spark")
    pytest.importorskip("ray")
    assert type(executor_for("ray")).__name__ == "RayExecutor"
    # without Ray (the test extra installs it, so its absence is made here): the install hint, no traceback
    monkeypatch.setitem(sys.modules, "nextlong.synthesis.executors.ray", None)
    with pytest.raises(NextlongError, match=r"pip install 'nextlong\[ray\]'"):
        executor_for("ray")


def test_synthesis_output_does_not_depend_on_the_corpus_blocks(tmp_path):
    """The real pipeline, corpus read in blocks of 7 and of 1000 documents: same chunk ids, same
    embeddings, byte-identical output shards (ids come from per-block counts and a prefix sum)."""
    import numpy as np

    from nextlong.synthesis import SynthesisConfig
    from nextlong.synthesis.pipeline import run
    from tests.helpers import corpus_head, write_jsonl

    corpus = write_jsonl(tmp_path / "docs.jsonl", corpus_head(250_000))
    outs = {}
    for block_docs in (7, 1000):
        out = tmp_path / f"b{block_docs}"
        cfg = SynthesisConfig(out=str(out), corpus=str(corpus), embedder="hashed-tfidf:256", chunk_size=512,
                              target_length=2048, num_samples=5, shard_size=2, seed=3, progress=False)
        run(cfg, executor=LocalExecutor(corpus_block_docs=block_docs))
        outs[block_docs] = out
    small, large = outs[7], outs[1000]
    assert read_done(small / "chunk" / DONE_FILE)["counts"]["blocks"] > 5
    assert read_done(large / "chunk" / DONE_FILE)["counts"]["blocks"] == 1
    a = pq.read_table(small / "chunks" / "chunks.parquet")
    b = pq.read_table(large / "chunks" / "chunks.parquet")
    assert a.equals(b) and a.column("chunk_id").to_pylist() == list(range(a.num_rows))
    assert np.array_equal(np.load(small / "embeddings" / "embeddings.npy"), np.load(large / "embeddings" / "embeddings.npy"))
    files = sorted(p.name for p in (small / "data").glob("part-*.parquet"))
    assert files == sorted(p.name for p in (large / "data").glob("part-*.parquet")) and len(files) == 3
    for name in files:
        assert (small / "data" / name).read_bytes() == (large / "data" / name).read_bytes()


def test_threads_reach_every_cpu_stage(tmp_path):
    """`--threads N` bounds every stage that starts threads of its own (the near-copy graph included),
    and is not part of any fingerprint (a run resumed with other threads redoes nothing)."""
    from nextlong.synthesis.config import SynthesisConfig
    from nextlong.synthesis.pipeline import build_pipeline

    corpus = _corpus(tmp_path / "c.jsonl")

    def pipeline(threads):
        cfg = SynthesisConfig(out=str(tmp_path / "o"), corpus=str(corpus), embedder="hashed-tfidf:256",
                              target_length=2048, num_threads=threads, progress=False)
        return build_pipeline(cfg)

    one, three = pipeline(1), pipeline(3)
    with_threads = [s.name for s in one.stages if hasattr(s, "threads")]
    assert "neardup" in with_threads and "embed" in with_threads and "plan" in with_threads
    assert all(one.stage(n).threads == 1 and three.stage(n).threads == 3 for n in with_threads)
    assert one.fingerprints() == three.fingerprints()


def test_a_refusal_names_the_default_asked_for_an_added_setting_left_out():
    """A setting at its added_setting default is left out of the asked settings: a cached stage made at another
    value (acer's LM stages made with bfloat16 on CUDA, resumed on a CPU, whose default is float32) was refused
    with "asked None", a value nobody asked."""
    import dataclasses

    from pathlib import Path

    from nextlong.synthesis.framework import _mismatch, added_setting

    @dataclasses.dataclass
    class Shaped(WholeStage):
        dtype: str = added_setting("float32")
        shards: int = added_setting(1)

    stage = Shaped(name="s")
    error = _mismatch(Path("/w/s"), stage, {"settings": {**stage.settings(), "dtype": "bfloat16", "shards": 4}})
    assert "dtype: cached 'bfloat16', asked 'float32' (the default)" in str(error)
    assert "shards: cached 4, asked 1 (the default)" in str(error) and "None" not in str(error)


def test_a_file_where_a_stage_folder_goes_is_one_line_naming_it(tmp_path, capsys):
    """A file standing where a stage keeps its folder (here the assemble stage's, the output discarded) stopped the
    run with "OUT/assemble: File exists", mkdir's word. It now says what the path is and what goes there."""
    from tests.helpers import RECORD_FAST, assert_one_line_error, finished_work_folder, run_cli

    done, corpus = finished_work_folder(tmp_path)
    for name in ("data", "assemble"):
        shutil.rmtree(done / name)
    (done / "assemble").write_text("not a folder")
    code, _, err = run_cli(["synthesize", "--corpus", corpus, "--out", done, "--num-samples", "1", "--embedder",
                            RECORD_FAST["embedder"], "--chunk-size", RECORD_FAST["chunk_size"], "--target-length",
                            RECORD_FAST["target_length"], "--no-progress"], capsys)
    assert code == 1
    assert assert_one_line_error(err, "synthesize").endswith(
        f"{done / 'assemble'}: is not a folder, where the assemble stage keeps its files; move it away and re-run")
