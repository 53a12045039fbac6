"""`nextlong synthesize --executor ray`: the same files as the local executor (byte for byte) on real
text, resume after a lost driver, a worker that dies mid-stage, and clear errors for a Ray address
that does not answer or a cluster without the asked GPUs.

Ray runs here as a local instance of 2 CPUs and a 300 MB object store, started once for the module
(~10 s on 2 loaded cores)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 'nextlong[ray]')")

from nextlong.errors import NextlongError  # noqa: E402
from nextlong.synthesis import synthesize  # noqa: E402
from nextlong.synthesis.executors import ray as executor_ray  # noqa: E402
from nextlong.synthesis.executors.ray import RayClusterError, RayExecutor  # noqa: E402
from nextlong.synthesis.framework import (DONE_FILE, MapStage, Pipeline, ReadCorpus, WholeStage,  # noqa: E402
                                      block_path, block_record_path, input_blocks, read_done)
from tests.helpers import corpus_head, free_port, read_by, repeated_id_corpus, write_jsonl  # noqa: E402

L = 2048
FAST = dict(embedder="hashed-tfidf:256", chunk_size=512, target_length=L, shard_size=8, progress=False)


@pytest.fixture(scope="module")
def ray_session():
    ray = executor_ray.connect(None, num_cpus=2, object_store_memory=300 * 2 ** 20)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", corpus_head(250_000))


def file_hashes(folder: Path, pattern: str = "*") -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob(pattern)) if p.is_file() and p.suffix in (".parquet", ".npy", ".json")
            and DONE_FILE not in p.name and "_done" not in p.parts and p.name != "manifest.json"}


def counts(manifest: dict) -> dict:
    s = dict(manifest["statistics"])
    for volatile in ("seconds", "seconds_this_run", "output_tokens_per_s"):
        s.pop(volatile, None)
    return s


@pytest.mark.slow
def test_local_and_ray_outputs_are_byte_identical(ray_session, corpus, tmp_path, monkeypatch):
    """nextlong with hard negatives and a --num-samples cut over several shards and corpus blocks.

    Ray and the local executor both cut the corpus file into byte ranges of 60 kB, read by Ray's
    actors each on its own, in blocks of 40 documents: every file of every stage folder is the same.
    The local executor's defaults (one split, blocks of 1024 documents) give the same output shards
    and the same chunk table (its Parquet row groups follow the blocks)."""
    from nextlong.synthesis.executors.local import LocalExecutor

    monkeypatch.setattr(RayExecutor, "corpus_block_docs", 40)
    monkeypatch.setattr(RayExecutor, "corpus_split_bytes", 60_000)
    default_local = synthesize(corpus, tmp_path / "local-1024", num_samples=20, **FAST)
    local_init = LocalExecutor.__init__
    monkeypatch.setattr(LocalExecutor, "__init__", lambda self, threads=None, **kw: local_init(
        self, threads, corpus_block_docs=40, corpus_split_bytes=60_000))
    local = synthesize(corpus, tmp_path / "local", num_samples=20, **FAST)
    ray = synthesize(corpus, tmp_path / "ray", num_samples=20, executor="ray", **FAST)
    data_local, data_ray = file_hashes(tmp_path / "local" / "data"), file_hashes(tmp_path / "ray" / "data")
    assert data_local and data_local == data_ray == file_hashes(tmp_path / "local-1024" / "data")
    assert counts(local) == counts(ray) == counts(default_local)
    assert local["statistics"]["documents_built"] == 20
    assert pq.read_table(tmp_path / "ray" / "chunks" / "chunks.parquet").equals(
        pq.read_table(tmp_path / "local-1024" / "chunks" / "chunks.parquet"))
    # every stage file that both runs wrote is the same (Ray may compute blocks past the cut)
    everything_local, everything_ray = file_hashes(tmp_path / "local"), file_hashes(tmp_path / "ray")
    common = set(everything_local) & set(everything_ray)
    assert {"chunks/chunks.parquet", "embeddings/embeddings.npy", "chunk/part-00001.parquet",
            "plan/part-00001.parquet", "assemble/part-00001.parquet"} <= common
    assert {k: everything_local[k] for k in common} == {k: everything_ray[k] for k in common}
    assert read_done(tmp_path / "ray" / "chunk" / DONE_FILE)["counts"]["splits"] == 5
    # standard's carry packing (units of chunk groups) gives the same bytes too
    std = {name: synthesize(corpus, tmp_path / f"standard-{name}", method="standard", **read_by("standard", FAST), **kw)
           for name, kw in (("local", {}), ("ray", {"executor": "ray"}))}
    assert file_hashes(tmp_path / "standard-local" / "data") == file_hashes(tmp_path / "standard-ray" / "data")
    assert counts(std["local"]) == counts(std["ray"]) and std["ray"]["statistics"]["documents_built"] > 20

    # a driver that died after some blocks: records of later blocks and stages gone, a half-written
    # part left behind. The rerun computes only what is missing and gives the same bytes.
    out = tmp_path / "ray"
    kept = block_path(out / "plan", 0)
    kept_mtime = kept.stat().st_mtime_ns
    for stage in ("data", "assemble", "plan"):
        (out / stage / DONE_FILE).unlink(missing_ok=True)
    block_record_path(out / "plan", 1).unlink()
    block_record_path(out / "assemble", 1).unlink()
    block_path(out / "assemble", 1).write_bytes(b"PAR1 half a file")
    for part in (out / "data").glob("*.parquet"):
        part.unlink()
    again = synthesize(corpus, out, num_samples=20, executor="ray", **FAST)
    assert file_hashes(out / "data") == data_local
    assert counts(again) == counts(local)
    assert kept.stat().st_mtime_ns == kept_mtime, "a finished block was recomputed"


@pytest.mark.slow  # starts Ray (~10-20 s)
def test_litelong_gives_the_same_bytes_on_ray(ray_session, corpus, tmp_path):
    """LiteLong's units (BM25 retrieval per topic, built on a Ray worker) and the samples made from them are the
    same files as the local executor's, over several output shards."""
    topics = tmp_path / "topics.txt"
    topics.write_text("regular expression pattern\nthread lock\nfile path directory\nsocket network address\n"
                      "date time zone\nzzzz no such word\n")
    runs = {name: synthesize(corpus, tmp_path / name, method="litelong", topics=str(topics),
                             **read_by("litelong", dict(FAST, shard_size=2)), **kw)
            for name, kw in (("local", {}), ("ray", {"executor": "ray"}))}
    local, ray = file_hashes(tmp_path / "local"), file_hashes(tmp_path / "ray")
    assert {"units/part-00000.parquet", "units/part-00001.parquet", "data/part-00001.parquet"} <= set(local)
    assert local == ray
    assert counts(runs["local"]) == counts(runs["ray"]) and runs["ray"]["statistics"]["documents_built"] >= 4


@pytest.mark.slow
def test_partitioned_mining_gives_the_same_bytes_on_ray(ray_session, corpus, tmp_path):
    """--mining partitioned: every mining step (centroids, layout, route, search, merge, the lists) and the
    output are the same files whichever executor ran its tasks, over several blocks per step."""
    settings = dict(FAST, mining="partitioned", partitions=10, nprobe=4, mining_block_rows=100, num_samples=20)
    local = synthesize(corpus, tmp_path / "local", **settings)
    ray = synthesize(corpus, tmp_path / "ray", executor="ray", **settings)
    for stage in ("centroids", "layout", "route", "search", "merge", "neighbour_lists", "data"):
        hashes = file_hashes(tmp_path / "local" / stage)
        assert hashes and hashes == file_hashes(tmp_path / "ray" / stage), stage
    assert len(file_hashes(tmp_path / "ray" / "search")) > 1
    assert counts(local) == counts(ray) and local["statistics"]["mining"]["partitions"] == 10


# --- the executor on a pipeline of its own: faults ---------------------------------------------


@dataclasses.dataclass
class Upper(MapStage):
    """Uppercases the text; `die_on` names a block whose first attempt kills its worker process,
    `fail_on` one that raises a NextlongError."""

    marker: str = ""
    die_on: int = -1
    fail_on: int = -1

    def __call__(self, block):
        first = int(block.column("doc_index")[0].as_py())
        if first == self.die_on and not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)  # the actor dies mid-block: Ray restarts it and retries the block
        if first == self.fail_on:
            raise NextlongError(f"document {first}: no good")
        return block.set_column(block.schema.get_field_index("text"), "text",
                                pa.array([t.upper() for t in block.column("text").to_pylist()]))


@dataclasses.dataclass
class Lengths(MapStage):
    fail_on: int = -1

    def __call__(self, block):
        if int(block.column("doc_index")[0].as_py()) == self.fail_on:
            raise NextlongError("too long to count")
        return pa.table({"doc_index": block.column("doc_index"),
                         "chars": pa.array([len(t) for t in block.column("text").to_pylist()], pa.int64())})


@dataclasses.dataclass
class Total(WholeStage):
    def build(self, ctx):
        tables = [pq.read_table(p) for p in input_blocks(ctx.input(self.inputs[0]))]
        total = sum(int(pa.compute.sum(t.column("chars")).as_py()) for t in tables)
        (ctx.out_dir / "total.json").write_text(json.dumps(total))
        return {"chars": total}


def small_pipeline(root: Path, corpus: Path, lengths_fail_on: int = -1, **upper) -> Pipeline:
    return Pipeline(root=root, stages=[
        ReadCorpus(name="corpus", path=str(corpus), id_field="id"),
        Upper(name="upper", inputs=("corpus",), **upper),
        Lengths(name="lengths", inputs=("upper",), fail_on=lengths_fail_on),
        Total(name="total", inputs=("lengths",)),
    ])


@pytest.mark.slow
@pytest.mark.slow  # starts Ray (~10-20 s)
def test_repeated_document_ids_count_the_same_on_ray(ray_session, tmp_path, monkeypatch):
    """Ids that repeat across the corpus splits Ray's actors read each on its own are counted as the local
    executor counts them (over the chunk store both build alike)."""
    from nextlong.synthesis.executors.local import LocalExecutor

    corpus, _ = repeated_id_corpus(tmp_path / "docs.jsonl")
    monkeypatch.setattr(RayExecutor, "corpus_split_bytes", 20_000)
    local_init = LocalExecutor.__init__
    monkeypatch.setattr(LocalExecutor, "__init__", lambda self, threads=None, **kw: local_init(
        self, threads, corpus_split_bytes=20_000))
    local = synthesize(corpus, tmp_path / "local", id_field="id", num_samples=2, **FAST)
    ray = synthesize(corpus, tmp_path / "ray", id_field="id", num_samples=2, executor="ray", **FAST)
    assert read_done(tmp_path / "ray" / "chunk" / DONE_FILE)["counts"]["splits"] > 2
    assert counts(local) == counts(ray) and ray["statistics"]["documents_with_repeated_id"] == 3


def test_worker_killed_mid_stage_is_retried(ray_session, corpus, tmp_path, capfd):
    """And without Ray's stdout notice of the retry ("(raylet) Task ... will be retried"): the same notice came
    for each block in flight when the --num-samples cut ended a chain (Ray Data's ray.kill of its actors)."""
    from nextlong.synthesis.executors.local import LocalExecutor

    docs = 200
    small = write_jsonl(tmp_path / "small.jsonl", corpus_head(limit=docs))
    LocalExecutor().run(small_pipeline(tmp_path / "local", small), progress=False)
    marker = tmp_path / "died"
    ray_run = RayExecutor(corpus_block_docs=25)
    ray_run.run(small_pipeline(tmp_path / "ray", small, marker=str(marker), die_on=50), progress=False)
    assert marker.exists(), "the worker was never killed"
    assert read_done(tmp_path / "ray" / "total" / DONE_FILE)["counts"] == \
        read_done(tmp_path / "local" / "total" / DONE_FILE)["counts"]
    assert (tmp_path / "ray" / "total" / "total.json").read_text() == (tmp_path / "local" / "total" / "total.json").read_text()
    assert len(list((tmp_path / "ray" / "upper").glob("part-*.parquet"))) == docs // 25
    assert "will be retried" not in capfd.readouterr().out


@pytest.mark.slow  # starts Ray (~10-20 s)
def test_stage_error_names_stage_and_block_and_leaves_no_record(ray_session, corpus, tmp_path):
    small = write_jsonl(tmp_path / "small.jsonl", corpus_head(limit=100))
    from ray.exceptions import RayError

    with pytest.raises(NextlongError, match=r"^stage upper, corpus split 0 \(small.jsonl\): .*document 50: no good$"
                       ) as raised:
        RayExecutor(corpus_block_docs=25).run(small_pipeline(tmp_path / "ray", small, fail_on=50), progress=False)
    # the stage's own error, not Ray's wrapper of it (a NextlongError too, whose text is the worker's traceback)
    assert not isinstance(raised.value, RayError) and "\n" not in str(raised.value)
    assert read_done(block_record_path(tmp_path / "ray" / "upper", 2)) is None
    assert not (tmp_path / "ray" / "upper" / DONE_FILE).exists()
    # the same in a chain run by Ray Data's actor pool (the corpus stage finishes first)
    with pytest.raises(NextlongError, match=r"^stage lengths, block 3: .*too long to count$") as raised:
        RayExecutor(corpus_block_docs=25).run(small_pipeline(tmp_path / "chain", small, lengths_fail_on=75),
                                              progress=False)
    assert not isinstance(raised.value, RayError) and "\n" not in str(raised.value)
    assert (tmp_path / "chain" / "upper" / DONE_FILE).exists()
    assert read_done(block_record_path(tmp_path / "chain" / "lengths", 3)) is None
    assert not (tmp_path / "chain" / "lengths" / DONE_FILE).exists()


@dataclasses.dataclass
class LengthsSetupFails(Lengths):
    def setup(self, ctx):
        from nextlong.errors import CorruptFileError

        raise CorruptFileError("graph.npy: not what was written")


@dataclasses.dataclass
class LengthsTwoLines(Lengths):
    def __call__(self, block):
        raise NextlongError("header of shard 3 is bad\nFailed to read column 'text': 7 bytes short")


@pytest.mark.slow  # starts Ray (~10-20 s)
def test_a_stage_setup_error_and_a_two_line_error_reach_the_user_as_they_were_raised(ray_session, tmp_path):
    """A map stage's setup ran in the actor's constructor: its error came as ActorDiedError after Ray retried
    the actor (~200 lines), its class lost. Ray Data's retry advice is cut from a message, and only that."""
    from ray.exceptions import RayError

    from nextlong.errors import CorruptFileError

    small = write_jsonl(tmp_path / "small.jsonl", corpus_head(limit=100))

    def pipeline(root, lengths):
        return Pipeline(root=root, stages=[ReadCorpus(name="corpus", path=str(small), id_field="id"),
                                           Upper(name="upper", inputs=("corpus",)), lengths,
                                           Total(name="total", inputs=("lengths",))])

    with pytest.raises(CorruptFileError, match=r"^stage lengths: graph.npy: not what was written$") as raised:
        RayExecutor(corpus_block_docs=25).run(pipeline(tmp_path / "a", LengthsSetupFails(
            name="lengths", inputs=("upper",))), progress=False)
    assert not isinstance(raised.value, RayError)
    with pytest.raises(NextlongError) as raised:
        RayExecutor(corpus_block_docs=25).run(pipeline(tmp_path / "b", LengthsTwoLines(
            name="lengths", inputs=("upper",))), progress=False)
    assert str(raised.value).endswith("header of shard 3 is bad\nFailed to read column 'text': 7 bytes short")


# --- connection and cluster checks --------------------------------------------------------------


def test_address_where_nothing_listens_fails_fast():
    port = free_port()
    with pytest.raises(RayClusterError, match=rf"--ray-address 127.0.0.1:{port}.*no Ray head answers"):
        executor_ray.probe(f"127.0.0.1:{port}", timeout_s=3)


def test_address_of_another_server_is_not_a_ray_head():
    """ray.init waits ~2 minutes on a port where some other server listens; the probe says so at once."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def serve():
        try:
            conn, _ = srv.accept()
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        with pytest.raises(RayClusterError, match="not a Ray head"):
            executor_ray.probe(f"127.0.0.1:{port}", timeout_s=3)
    finally:
        srv.close()


def test_bad_address_format():
    with pytest.raises(RayClusterError, match="expected HOST:PORT"):
        executor_ray.probe("no-port-here", timeout_s=1)


@pytest.mark.slow  # starts Ray (~10-20 s)
def test_cluster_without_the_asked_gpus(ray_session, corpus, tmp_path, capsys):
    with pytest.raises(RayClusterError, match=r"--embed-gpus 1: the Ray cluster has 0 GPUs"):
        executor_ray.check_resources(ray_session, embed_gpus=1)
    from nextlong.cli import main

    code = main(["synthesize", "--corpus", str(corpus), "--out", str(tmp_path / "out"), "--executor", "ray",
                 "--embed-gpus", "1", "--target-length", str(L), "--embedder", "hashed-tfidf:64"])
    err = capsys.readouterr().err
    assert code == 1 and "error: --embed-gpus 1: the Ray cluster has 0 GPUs" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "chunk").exists(), "work started before the check"


def test_only_the_token_auth_on_notice_is_hidden_on_a_local_start(caplog):
    """Ray warns on each local start that finds a saved token that authentication is on (the secure default):
    noise in a local instance only this process uses, so it is filtered; the warning that authentication is
    *off*, and any other message of that logger, still reach the user."""
    import logging

    executor_ray._hide_token_auth_notice()
    executor_ray._hide_token_auth_notice()  # once per logger, whatever the number of starts
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    assert len(log.filters) == 1
    with caplog.at_level(logging.WARNING, logger=log.name):
        log.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
        log.warning("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
    assert [r.getMessage()[:40] for r in caplog.records] == ["Token authentication is disabled for thi"]


def test_the_process_sigterm_handler_outlives_ray_init(monkeypatch):
    """ray.init installs the driver's own SIGTERM handler (a stack dump, then exit 15), so a scheduler's stop of
    `synthesize --executor ray` was recorded as failed with the error "15", not as the CLI's interruption
    (measured by hand: `timeout -s TERM 25 nextlong synthesize ... --executor ray`, now "terminated (SIGTERM)",
    manifest "interrupted", and a rerun resumes). A fake ray stands in here, to check the rule without a start:
    a handler of the process's own is put back; with none (the default action), Ray's stays."""
    import signal
    import types

    def rays_handler(signum, frame):
        raise SystemExit(signum)

    fake = types.SimpleNamespace(is_initialized=lambda: False,
                                 init=lambda **kw: signal.signal(signal.SIGTERM, rays_handler))
    monkeypatch.setattr(executor_ray, "import_ray", lambda: fake)
    monkeypatch.setattr(executor_ray, "_hide_token_auth_notice", lambda: None)

    def ours(signum, frame):
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, ours)
    try:
        executor_ray.connect(None, num_cpus=1)
        assert signal.getsignal(signal.SIGTERM) is ours
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        executor_ray.connect(None, num_cpus=1)
        assert signal.getsignal(signal.SIGTERM) is rays_handler
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_local_ray_that_does_not_start_is_one_line(monkeypatch, tmp_path, capsys):
    """ray.init raises a bare Exception when the local node does not come up (measured under `ulimit -f 1710`:
    "The current node timed out during startup..."): `nextlong synthesize --executor ray` ended in a traceback."""
    import types

    from tests.helpers import assert_one_line_error, run_cli

    def init(**kwargs):
        raise Exception("The current node timed out during startup. This could happen because some of the raylet "
                        "failed to startup or the GCS has become overloaded.")

    monkeypatch.setattr(executor_ray, "import_ray", lambda: types.SimpleNamespace(is_initialized=lambda: False,
                                                                                  init=init))
    monkeypatch.setattr(executor_ray, "_hide_token_auth_notice", lambda: None)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "a"}\n')
    code, _, err = run_cli(["synthesize", "--corpus", corpus, "--out", tmp_path / "out", "--executor", "ray",
                            "--embedder", "hashed-tfidf:64"], capsys)
    assert code == 1
    assert "--executor ray: could not start a local Ray instance: The current node timed out during startup" in \
        assert_one_line_error(err, "synthesize")
    assert not (tmp_path / "out").exists()


def test_the_retry_notice_setting_is_set_only_while_ray_init_reads_it(monkeypatch):
    """RAY_enable_output_error_log_if_still_retry=0 reaches ray.init (test_worker_killed_mid_stage_is_retried: no
    "will be retried" line), but the program's environment is as it was after: it stayed set for good, so a
    program embedding nextlong lost Ray's retry notices (an OOM kill's among them) in its own later Ray work and
    passed the setting to every subprocess. A value the user set is kept, and given to ray.init."""
    import types

    name = executor_ray.QUIET_RETRIES[0]
    seen = []
    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **kw: seen.append(os.environ.get(name)))
    monkeypatch.setattr(executor_ray, "import_ray", lambda: fake)
    monkeypatch.setattr(executor_ray, "_hide_token_auth_notice", lambda: None)
    monkeypatch.delenv(name, raising=False)
    executor_ray.connect(None, num_cpus=1)
    assert seen == ["0"] and name not in os.environ
    monkeypatch.setenv(name, "1")
    executor_ray.connect(None, num_cpus=1)
    assert seen == ["0", "1"] and os.environ[name] == "1"


@pytest.mark.slow  # starts Ray (~10-20 s)
def test_ray_workers_resume_an_interrupted_embedding_block_from_its_spill(ray_session, tmp_path, monkeypatch):
    """An embedding run interrupted in block 1 after 3 of its batches, resumed on Ray: the worker starts from the
    spilled batches (a spill rewritten with other, valid, values shows up in the output: it was read, not
    recomputed), the untouched spill gives the uninterrupted run's bytes, and the bar starts past the spill."""
    import shutil

    import numpy as np
    import tqdm.auto

    from nextlong.mining.lexical_embedding import HashedLexicalEmbedder
    from nextlong.synthesis.executors.local import LocalExecutor
    from nextlong.synthesis.spill import SPILL_DIR, BlockSpill
    from tests.helpers import BarRecorder, embed_pipeline

    docs = write_jsonl(tmp_path / "docs.jsonl", corpus_head(60_000))
    LocalExecutor(corpus_block_docs=5).run(embed_pipeline(tmp_path / "ref", docs), progress=False)
    first = pq.ParquetFile(tmp_path / "ref" / "embed" / "part-00000.parquet").metadata.num_rows
    real, calls = HashedLexicalEmbedder.embed, []

    def stopping(self, texts):
        calls.append(len(texts))
        if len(calls) == -(-first // 8) + 4:  # block 1's fourth batch
            raise KeyboardInterrupt
        return real(self, texts)

    monkeypatch.setattr(HashedLexicalEmbedder, "embed", stopping)
    with pytest.raises(KeyboardInterrupt):
        LocalExecutor(corpus_block_docs=5).run(embed_pipeline(tmp_path / "plain", docs), progress=False)
    monkeypatch.setattr(HashedLexicalEmbedder, "embed", real)
    shutil.copytree(tmp_path / "plain", tmp_path / "tampered")
    (path,) = (tmp_path / "tampered" / "embed" / SPILL_DIR).glob("part-00001.*.spill")
    spill = BlockSpill(path, path.name.split(".")[1])
    records = spill.load(64)
    assert sum(a.shape[0] for _, a in records) == 24
    spill.clear()
    for state, rows in records:
        spill.append(rows + 1, state)

    monkeypatch.setattr(tqdm.auto, "tqdm", BarRecorder)
    BarRecorder.seen = []
    RayExecutor(corpus_block_docs=5).run(embed_pipeline(tmp_path / "plain", docs), progress=True)
    (bar,) = [b for b in BarRecorder.seen if b.desc == "embed"]
    assert (bar.initial, bar.n) == (first + 24, bar.total)
    assert ((tmp_path / "plain" / "embeddings" / "embeddings.npy").read_bytes()
            == (tmp_path / "ref" / "embeddings" / "embeddings.npy").read_bytes())
    assert not (tmp_path / "plain" / "embed" / SPILL_DIR).exists()
    RayExecutor(corpus_block_docs=5).run(embed_pipeline(tmp_path / "tampered", docs), progress=False)
    ref, got = (np.load(tmp_path / name / "embeddings" / "embeddings.npy") for name in ("ref", "tampered"))
    assert np.array_equal(got[first:first + 24], ref[first:first + 24] + 1)
    assert np.array_equal(np.delete(got, np.s_[first:first + 24], 0), np.delete(ref, np.s_[first:first + 24], 0))
