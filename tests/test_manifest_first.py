"""Every run writes its manifest first (settings, statistics.status "running"), so a stopped run leaves a
record of what it was; its last manifest replaces that one. Training refuses data whose synthesize run has
not finished."""

from __future__ import annotations

import json

import pytest

from nextlong.errors import NextlongError
from nextlong.manifest import RUNNING
from tests.helpers import corpus_head, run_cli, write_jsonl


def test_synthesize_and_index_write_their_manifest_before_the_work(tmp_path, monkeypatch, capsys):
    from nextlong.mining import embed_store
    from nextlong.synthesis.executors.local import LocalExecutor

    corpus = write_jsonl(tmp_path / "docs.jsonl", corpus_head(40_000))
    out = tmp_path / "out"
    out.mkdir()  # the user's folder: what a stopped run leaves there stays (a folder the run made and did
    seen = {}    # no work in goes, with its "running" manifest)

    def stop(self, pipeline, **kwargs):  # the executor starts the stages: the manifest is there already
        seen.update(json.loads((out / "manifest.json").read_text()))
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalExecutor, "run", stop)
    code, _, err = run_cli(["synthesize", "--corpus", str(corpus), "--out", str(out), "--embedder", "hashed-tfidf:32",
                            "--target-length", "2048", "--quiet"], capsys)
    assert code == 130 and seen["command"] == "synthesize" and seen["statistics"] == {"status": RUNNING}
    assert seen["settings"]["target_length"] == 2048 and seen["settings"]["output_fingerprint"]
    # training on the stopped run's folder is refused by name, not read half-made
    with pytest.raises(NextlongError, match="has not finished"):
        from nextlong.train.sources import open_sources

        open_sources([str(out)])
    monkeypatch.undo()
    assert run_cli(["synthesize", "--corpus", str(corpus), "--out", str(out), "--embedder", "hashed-tfidf:32",
                    "--target-length", "2048", "--quiet"], capsys)[0] == 0
    final = json.loads((out / "manifest.json").read_text())
    assert final["statistics"].get("status") != RUNNING and final["statistics"]["documents_built"] >= 1

    chunks = tmp_path / "chunks.parquet"
    assert run_cli(["chunk", str(corpus), "--out", str(chunks), "--no-progress"], capsys)[0] == 0
    real = embed_store.embed_chunks

    def embed_then_look(*args, **kwargs):
        result = real(*args, **kwargs)
        seen["index"] = json.loads((tmp_path / "idx" / "manifest.json").read_text())
        return result

    monkeypatch.setattr(embed_store, "embed_chunks", embed_then_look)
    assert run_cli(["index", str(chunks), "--out", str(tmp_path / "idx"), "--embedder", "hashed-tfidf:32",
                    "--no-progress"], capsys)[0] == 0
    assert seen["index"]["statistics"] == {"status": RUNNING}
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["statistics"]["chunks"] >= 1


def test_resuming_a_finished_training_run_keeps_its_manifest(tmp_path):
    """--resume on a finished run does nothing, and rewrote the manifest with that empty session's numbers
    (tokens_per_s null, epochs read one step ahead)."""
    from nextlong.train import train
    from tests.train_support import synthesized

    opts = dict(model="tiny", progress=False, num_threads=1, steps=2)
    train(synthesized(), tmp_path / "run", **opts)
    before = (tmp_path / "run" / "manifest.json").read_bytes()
    assert json.loads(before)["statistics"]["status"] == "finished"
    train(synthesized(), tmp_path / "run", resume=True, **opts)
    assert (tmp_path / "run" / "manifest.json").read_bytes() == before


def test_read_manifest_takes_it_as_untrusted(tmp_path):
    """One reader for every manifest a command looks at before its work (resume, a data folder, the lock's
    clean-up): a FIFO, a link, a folder, bad JSON or a non-object read as {} at once, never hang or follow."""
    import json
    import os
    import threading

    from nextlong.manifest import RUNNING, read_manifest, run_status

    good = tmp_path / "good.json"
    good.write_text(json.dumps({"command": "train", "statistics": {"status": "finished"}}))
    assert run_status(read_manifest(good)) == "finished"
    (tmp_path / "running.json").write_text(json.dumps({"statistics": {"status": RUNNING}}))
    assert run_status(read_manifest(tmp_path / "running.json")) == RUNNING
    (tmp_path / "plain.json").write_text(json.dumps({"statistics": {"chunks": 3}}))
    assert run_status(read_manifest(tmp_path / "plain.json")) is None
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "link.json").symlink_to(good)
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    got = {}
    reader = threading.Thread(target=lambda: got.update(
        {name: read_manifest(tmp_path / name) for name in
         ("fifo.json", "link.json", "folder.json", "bad.json", "list.json", "missing.json")}), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "read_manifest waited on a FIFO"
    assert all(v == {} for v in got.values()) and len(got) == 6


def test_a_second_run_stops_at_the_lock_before_its_executor_starts(tmp_path, monkeypatch, capsys):
    """With --executor ray, a second run into a busy folder started (or joined) a Ray cluster, 8 s, before it
    met the lock: the executor is now built inside it."""
    from nextlong.locking import output_lock
    from nextlong.synthesis import pipeline

    corpus = write_jsonl(tmp_path / "docs.jsonl", corpus_head(20_000))
    out = tmp_path / "out"
    built = []
    monkeypatch.setattr(pipeline, "executor_for", lambda *a, **k: built.append(a) or None)
    with output_lock(out, "synthesize"):
        code, _, err = run_cli(["synthesize", "--corpus", corpus, "--out", out, "--executor", "ray",
                                "--embedder", "hashed-tfidf:32", "--quiet"], capsys)
    assert code == 1 and "another call in this process (another thread) is writing this output" in err and built == []


def test_a_run_that_fails_says_so_in_its_manifest(tmp_path, monkeypatch, capsys):
    """A synthesize that failed after its manifest was written left it "running", not to be told from a run
    going on or killed. It now says "failed" with the error; training and inspect refuse the folder naming
    that, and the same command run again completes it."""
    from nextlong.synthesis.stages import PlanStage

    corpus = write_jsonl(tmp_path / "docs.jsonl", corpus_head(40_000))
    out = tmp_path / "out"
    args = ["synthesize", "--corpus", corpus, "--out", out, "--embedder", "hashed-tfidf:32", "--target-length", "1024",
            "--tokenizer", "cl100k_base", "--quiet"]
    real = PlanStage.__call__

    def boom(self, block):
        raise NextlongError("the plan stage broke")

    monkeypatch.setattr(PlanStage, "__call__", boom)
    code, _, err = run_cli(args, capsys)
    assert code == 1 and "the plan stage broke" in err
    stats = json.loads((out / "manifest.json").read_text())["statistics"]
    assert stats["status"] == "failed" and "the plan stage broke" in stats["error"]
    code, _, err = run_cli(["train", out, "--model", "tiny", "--steps", "1", "--out", tmp_path / "run"], capsys)
    assert code == 1 and "run writing this folder has not finished (failed: 'the plan stage broke')" in err
    code, _, err = run_cli(["inspect", out], capsys)
    assert code == 1 and "has not finished: failed" in err
    monkeypatch.setattr(PlanStage, "__call__", real)
    assert run_cli(args, capsys)[0] == 0
    assert "status" not in json.loads((out / "manifest.json").read_text())["statistics"]
