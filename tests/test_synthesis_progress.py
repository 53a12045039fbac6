"""The progress bars of `nextlong synthesize` count the real work and end at their totals: the embed bar
counts chunks and moves within a block, and the plan -> assemble bar reaches its total when the
--num-samples cut stops the chain early (it used to end at 1/8 blocks)."""

from __future__ import annotations

import io

import pytest
import tqdm.auto

from nextlong.synthesis.executors.local import LocalExecutor
from tests.helpers import corpus_head, write_jsonl

FAST = dict(embedder="hashed-tfidf:256", chunk_size=512, target_length=2048, shard_size=4, progress=True)


class Recorder(tqdm.auto.tqdm):
    """A tqdm that keeps, per bar, its description, unit, total, final count and every count it showed."""

    bars: list[dict] = []

    def __init__(self, *args, **kwargs):
        kwargs["file"] = io.StringIO()
        super().__init__(*args, **kwargs)
        self.seen = {"desc": self.desc, "unit": self.unit, "counts": []}
        if not self.disable:
            Recorder.bars.append(self.seen)

    def update(self, n=1):
        super().update(n)
        self.seen["counts"].append(self.n)

    def close(self):
        if not self.disable:
            self.seen.update(n=self.n, total=self.total, initial=self.initial)
        super().close()


@pytest.fixture
def bars(monkeypatch):
    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    Recorder.bars = []
    return Recorder.bars


def run(corpus, out, executor=None, **settings):
    """A run in corpus blocks of 60 documents: two blocks to embed, the first of more than 512 chunks
    (EmbedStage.batch_size), so the bar has a block to move within."""
    from nextlong.synthesis.config import SynthesisConfig
    from nextlong.synthesis.pipeline import run as run_pipeline

    cfg = SynthesisConfig(corpus=str(corpus), out=str(out), **FAST, **settings)
    return run_pipeline(cfg, executor=executor or LocalExecutor(corpus_block_docs=60))


def by_name(bars, name):
    found = [b for b in bars if b["desc"] == name]
    assert len(found) == 1, [b["desc"] for b in bars]
    return found[0]


def test_every_bar_ends_at_its_total_and_counts_the_work(tmp_path, bars):
    corpus = write_jsonl(tmp_path / "docs.jsonl", corpus_head(400_000))
    manifest = run(corpus, tmp_path / "out", num_samples=3)
    stats = manifest["statistics"]
    for bar in bars:
        assert bar["total"] is None or bar["n"] == bar["total"], bar
    assert by_name(bars, "chunk")["n"] == stats["corpus_documents"]  # documents: no total before reading
    embed = by_name(bars, "embed")
    assert embed["unit"] == "chunk" and embed["total"] == stats["corpus_chunks"]
    blocks = len(list((tmp_path / "out" / "embed").glob("part-*.parquet")))
    assert len(set(embed["counts"])) > blocks, "the embed bar moves only when a whole block is done"
    chain = by_name(bars, "plan -> assemble")  # the cut stops it after the first blocks of many
    assert chain["unit"] == "doc" and chain["total"] == chain["n"] == 3
    assert len(list((tmp_path / "out" / "units").glob("part-*.parquet"))) > 2

    # the same folder without the cut: the chain resumes after its finished blocks and counts units
    bars.clear()
    run(corpus, tmp_path / "out")
    chain = by_name(bars, "plan -> assemble")
    assert chain["unit"] == "unit" and chain["n"] == chain["total"] == stats["corpus_documents"]
    assert "embed" not in [b["desc"] for b in bars]  # cached stages draw no bar


def test_a_cut_larger_than_the_output_ends_the_bar_at_what_was_built(tmp_path, bars):
    corpus = write_jsonl(tmp_path / "docs.jsonl", corpus_head(60_000))
    manifest = run(corpus, tmp_path / "out", num_samples=10_000)
    chain = by_name(bars, "plan -> assemble")
    assert chain["n"] == chain["total"] == manifest["statistics"]["documents_built"] < 10_000


def test_the_partitioned_centroids_step_has_a_bar_of_kmeans_iterations(tmp_path, bars):
    """k-means on the sample is minutes at millions of chunks and drew no bar: it counts iterations now, and
    ends where k-means settled (at most its 20 iterations)."""
    from nextlong.mining import kmeans

    iterations = []
    real = kmeans.spherical_kmeans

    def counted(*args, on_iteration=None, **kwargs):
        return real(*args, on_iteration=lambda it: (iterations.append(it), on_iteration and on_iteration(it)),
                    **kwargs)

    import unittest.mock

    corpus = write_jsonl(tmp_path / "docs.jsonl", corpus_head(60_000))
    with unittest.mock.patch.object(kmeans, "spherical_kmeans", counted):
        run(corpus, tmp_path / "out", num_samples=2, mining="partitioned", partitions=6)
    bar = by_name(bars, "centroids (k-means)")
    assert bar["unit"] == "iteration" and bar["n"] == bar["total"] == len(iterations) > 0
    assert bar["counts"] == list(range(1, len(iterations) + 1))


@pytest.mark.slow  # starts Ray (~10-20 s)
def test_ray_bars_count_the_same_work(tmp_path, bars):
    """Ray's driver draws the same bars from its actors' results (its own bars are off): the embed bar
    counts chunks (a block at a time) and the chain bar ends at the cut."""
    pytest.importorskip("ray")
    from nextlong.synthesis.executors import ray as executor_ray

    corpus = write_jsonl(tmp_path / "docs.jsonl", corpus_head(400_000))
    ray = executor_ray.connect(None, num_cpus=2, object_store_memory=300 * 2 ** 20)
    try:
        manifest = run(corpus, tmp_path / "out", executor_ray.RayExecutor(corpus_block_docs=60), num_samples=3)
    finally:
        ray.shutdown()
    for bar in bars:
        assert bar["total"] is None or bar["n"] == bar["total"], bar
    assert by_name(bars, "chunk")["n"] == manifest["statistics"]["corpus_documents"]
    assert by_name(bars, "embed")["total"] == manifest["statistics"]["corpus_chunks"]
    assert by_name(bars, "plan -> assemble")["n"] == 3


def test_blocks_an_earlier_run_finished_start_the_bar_and_stay_out_of_its_rate():
    """A resumed run's bar jumped from 0 to what the earlier run had done at this run's rate ("188 unit/s")."""
    from nextlong.synthesis.progress import ChainProgress

    with ChainProgress(["plan", "assemble"], "unit", [10, 10, 10], None, True) as bar:
        bar.block_done(0, 10, reused=True)
        bar.block_done(1, 10, reused=True)
        assert bar.bar.initial == 20 and bar.bar.n == 20
        bar.block_done(2, 10)
        assert bar.bar.n == 30 and bar.bar.initial == 20 and bar.done == 30
    with ChainProgress(["plan"], "unit", [5], None, False) as quiet:  # a disabled bar still counts
        quiet.block_done(0, 5, reused=True)
        assert quiet.done == 5


def test_a_resumed_read_starts_the_chunk_bar_at_the_documents_an_earlier_run_chunked(tmp_path, bars, monkeypatch):
    """The chunk bar of a resumed run counted the documents of the splits and blocks an earlier run had chunked as
    this run's, from 0 at their reading speed (the chains' bars already started at their finished blocks). They
    now start the bar: it counts from there, and only this run's documents go into its rate."""
    from nextlong.synthesis.stages import ChunkStage

    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_head(limit=120))
    split = corpus.stat().st_size // 3 + 1  # three splits of two or three blocks of 20 documents

    def executor():
        return LocalExecutor(corpus_block_docs=20, corpus_split_bytes=split)

    real, chunked = ChunkStage.__call__, []

    def stop_at_the_fourth(self, block):
        if len(chunked) == 3:
            raise KeyboardInterrupt
        chunked.append(block.num_rows)
        return real(self, block)

    monkeypatch.setattr(ChunkStage, "__call__", stop_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        run(corpus, tmp_path / "out", executor())
    monkeypatch.setattr(ChunkStage, "__call__", real)
    bars.clear()
    run(corpus, tmp_path / "out", executor())
    chunk = by_name(bars, "chunk")
    assert (chunk["initial"], chunk["n"]) == (sum(chunked), 120), chunked
