"""No silent corruption: concurrent writers, damaged index/embeddings files, truncated .zst input and
full disks each end in a clear error, and a re-run after the error gives the same output as a clean run."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from nextlong.atomic import write_json_atomic
from nextlong.corpus.chunking import chunk_corpus
from nextlong.cli import main
from nextlong.mining.embed_store import embed_chunks, open_embeddings, progress_path
from nextlong.mining.embedding import load_embedder
from nextlong.errors import (CorpusError, CorruptFileError, DiskFullError, IndexFileError, NextlongError,
                             OutputLockedError)
from nextlong.mining.index import ChunkIndex
from nextlong.mining.index_job import build_index_from_chunks
from nextlong.locking import output_lock

TEXTS = [f"chunk {i} says " + " ".join(f"w{(i * 7 + j) % 97}" for j in range(30)) for i in range(300)]
DOCS = [f"Document {d}.\n" + "\n".join(f"paragraph {p} of document {d}: " + "words " * 40 for p in range(6))
        for d in range(24)]


def _holder(target, file=False):
    """A child process that holds output_lock(target) until killed; returns it once the lock is taken."""
    code = textwrap.dedent(f"""
        import sys, time
        from nextlong.locking import output_lock
        with output_lock({str(target)!r}, "holder", file={file!r}):
            print("locked", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


# --- 1. one writer per output ------------------------------------------------------------------------


def test_a_second_writer_fails_at_once_naming_folder_and_pid(tmp_path):
    out = tmp_path / "out"
    proc = _holder(out)
    try:
        with pytest.raises(OutputLockedError, match=rf"{out}: another run is writing this output \(pid {proc.pid} holder\)"):
            with output_lock(out, "test"):
                pass
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_of_a_killed_run_does_not_block(tmp_path):
    out = tmp_path / "out"
    proc = _holder(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / ".nextlong.lock").read_text().startswith(f"{proc.pid} ")  # the stale lock file is still there
    with output_lock(out, "test") as lock:
        assert lock.read_text() == f"{os.getpid()} test\n"
    assert not (out / ".nextlong.lock").exists()  # a finished run removes its lock file
    assert out.is_dir()


def test_a_failed_run_removes_the_folders_it_made_not_the_users_empty_one(tmp_path):
    """A run that fails inside the lock prunes the empty folders it made; a failed `nextlong acer` also removed
    the empty --out folder the user had made for it."""
    mine = tmp_path / "mine"
    mine.mkdir()
    made = tmp_path / "new" / "out"
    for out in (mine, made):
        with pytest.raises(RuntimeError):
            with output_lock(out, "test"):
                (out / "stage" / "part").mkdir(parents=True)
                raise RuntimeError("failed")
    assert mine.is_dir() and list(mine.iterdir()) == []
    assert not (tmp_path / "new").exists()


def test_a_folder_the_run_made_holding_only_its_failed_or_interrupted_manifest_is_removed(tmp_path):
    """A run refused or stopped at its first record leaves no folder: by the time the lock prunes, the
    manifest says "failed" or "interrupted" (failure_recorded), not "running", and it records no work either."""
    from nextlong.manifest import failure_recorded, read_manifest, run_status, write_running_manifest

    for name, exc, status in (("f", RuntimeError("failed"), "failed"), ("i", KeyboardInterrupt(), "interrupted")):
        for out in (tmp_path / name / "out", tmp_path / f"mine-{name}"):
            (tmp_path / f"mine-{name}").mkdir(exist_ok=True)
            with pytest.raises(type(exc)):
                with output_lock(out, "test"), failure_recorded(out / "manifest.json"):
                    write_running_manifest(out / "manifest.json", command="test", settings={})
                    raise exc
        assert not (tmp_path / name).exists()
        assert run_status(read_manifest(tmp_path / f"mine-{name}" / "manifest.json")) == status  # the user's folder


def test_two_index_runs_into_other_folders_share_no_embeddings_file(tmp_path, capsys):
    """The lock covered --out only: two `nextlong index` runs into other folders with the same --embeddings both
    memory-mapped that file, and the second one's new file cut the first's map short (measured: a Bus error, and
    a 32-wide file under the first's record of 64). The embeddings file now has its own lock."""
    from tests.helpers import assert_one_line_error, chunk_table, corpus_head, run_cli, write_chunk_table

    chunks = write_chunk_table(chunk_table(corpus_head(limit=3), max_chars=600), tmp_path / "chunks.parquet")
    shared = tmp_path / "shared.npy"
    proc = _holder(shared, file=True)  # a live run writing it
    try:
        code, _, err = run_cli(["index", chunks, "--out", tmp_path / "other", "--embeddings", shared,
                                "--embedder", "hashed-tfidf:64", "--no-progress"], capsys)
    finally:
        proc.kill()
        proc.wait()
    assert code == 1
    assert f"{shared}: another run is writing this output (pid {proc.pid} holder)" in assert_one_line_error(err, "index")
    assert not shared.exists() and not (tmp_path / "other").exists()
    shared.mkdir()  # the lock's own word for a folder names --out: this one names the option given
    code, _, err = run_cli(["index", chunks, "--out", tmp_path / "other", "--embeddings", shared], capsys)
    assert code == 2 and assert_one_line_error(err, "index").endswith(
        f"{shared}: is a folder, where --embeddings names the .npy file to write; give --embeddings a file name")


def test_a_lock_file_planted_as_a_link_or_fifo_is_refused_not_written_through(tmp_path):
    """The output folder is the user's to hand us: a `.nextlong.lock` linking to another file once had
    that file truncated and overwritten with our pid; a FIFO must not block either."""
    from nextlong.errors import NextlongError

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".nextlong.lock").symlink_to(victim)
    with pytest.raises(NextlongError, match="lock file is a symbolic link"):
        with output_lock(out, "test"):
            pass
    assert victim.read_text() == "precious"
    (out / ".nextlong.lock").unlink()
    os.mkfifo(out / ".nextlong.lock")
    with pytest.raises(NextlongError, match="not a regular file"):
        with output_lock(out, "test"):
            pass


@pytest.mark.slow
def test_cli_commands_refuse_an_output_in_use(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    chunks = tmp_path / "chunks.parquet"
    assert main(["chunk", str(corpus), "--out", str(chunks), "--no-progress"]) == 0
    capsys.readouterr()
    cases = [
        (tmp_path / "c2.parquet", True, ["chunk", str(corpus), "--out", str(tmp_path / "c2.parquet"), "--no-progress"]),
        (tmp_path / "idx", False, ["index", str(chunks), "--out", str(tmp_path / "idx"), "--embedder",
                                   "hashed-tfidf:64", "--no-progress"]),
        (tmp_path / "syn", False, ["synthesize", "--corpus", str(corpus), "--out", str(tmp_path / "syn"), "--method",
                                   "standard", "--target-length", "512", "--quiet"]),
    ]
    for target, is_file, argv in cases:
        proc = _holder(target, file=is_file)
        try:
            assert main(argv) == 1
            err = capsys.readouterr().err.strip()
            assert err == (f"nextlong {argv[0]}: error: {target}: another run is writing this output "
                           f"(pid {proc.pid} holder); wait for it to finish or choose another output")
        finally:
            proc.kill()
            proc.wait()
        assert not (target.exists() and target.is_file())
    # the same commands run once the holder is gone
    assert main(cases[0][2]) == 0


@pytest.mark.parametrize("holder, argv", [
    ("synthesize", lambda t, c: ["index", str(c), "--out", str(t), "--embedder", "hashed-tfidf:64", "--no-progress"]),
    ("index", lambda t, c: ["synthesize", "--corpus", str(c).replace(".parquet", ".jsonl"), "--out", str(t),
                            "--method", "standard", "--target-length", "512", "--quiet"]),
])
def test_a_folder_holding_another_commands_run_is_refused_as_it_is(tmp_path, capsys, holder, argv):
    """`nextlong index --out` given a synthesize folder exited 0 and replaced its manifest (a later `train` read the
    index's chunk table as data; an outside UX audit): an output folder whose manifest.json records another
    command is refused before anything is written."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    chunks = tmp_path / "c.parquet"
    assert main(["chunk", str(corpus), "--out", str(chunks), "--no-progress"]) == 0
    capsys.readouterr()
    target = tmp_path / "theirs"
    target.mkdir()
    record = json.dumps({"command": holder, "settings": {}, "statistics": {}})
    (target / "manifest.json").write_text(record)
    code = main(argv(target, chunks))
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.endswith(f"{target}: holds the output of a `nextlong {holder}` run (its manifest.json); "
                                      f"give `nextlong {argv(target, chunks)[0]}` a new folder, or the folder of an "
                                      f"earlier `nextlong {argv(target, chunks)[0]}` run to resume it"), err
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json"]
    assert (target / "manifest.json").read_text() == record


# --- 2. checksums of the index and the embeddings ------------------------------------------------------


@pytest.fixture()
def lexical():
    return load_embedder("hashed-tfidf:32")


def _damage(path, offset_fraction=0.5, n=16):
    """Overwrite n bytes in place: same size, same header, different content."""
    with open(path, "r+b") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(int(size * offset_fraction))
        old = fh.read(n)
        fh.seek(int(size * offset_fraction))
        fh.write(bytes((b ^ 0x5A) for b in old))


def _damage_vectors(path, n=16):
    """Flip the lowest bit of n bytes at the start of an index file's vector block (after its 8-byte
    matrix header): the CRC no longer matches, but the structure and the keys are intact, so what
    --no-verify opens is always openable. (A fixed fraction of the file would sometimes hit the graph,
    whose layout varies with the random node levels.)"""
    with open(path, "r+b") as fh:
        fh.seek(8)
        old = fh.read(n)
        fh.seek(8)
        fh.write(bytes((b ^ 0x01) for b in old))


def _chunk_table(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    chunks = tmp_path / "chunks.parquet"
    chunk_corpus(corpus, chunks, max_len=300, progress=False)
    return corpus, chunks


@pytest.mark.slow
def test_a_damaged_index_is_refused_by_load_view_and_search(tmp_path, capsys):
    _, chunks = _chunk_table(tmp_path)
    folder = tmp_path / "idx"
    build_index_from_chunks(chunks, folder, "hashed-tfidf:32", progress=False)
    ChunkIndex.view(folder)
    _damage_vectors(folder / "index.usearch")
    for opener in (ChunkIndex.load, ChunkIndex.view):
        with pytest.raises(IndexFileError, match="CRC32 mismatch"):
            opener(folder)
    assert ChunkIndex.view(folder, verify=False) is not None  # --no-verify opens it as it is
    assert main(["search", str(folder), "paragraph 2", "-k", "3"]) == 1
    assert "CRC32 mismatch" in capsys.readouterr().err
    assert main(["search", str(folder), "paragraph 2", "-k", "3", "--no-verify"]) == 0


def test_a_damaged_embeddings_file_is_refused(tmp_path, lexical):
    out = tmp_path / "emb.npy"
    first = np.array(embed_chunks(TEXTS, lexical, out, batch_size=64, progress=False))
    assert json.loads(progress_path(out).read_text())["crc32"] > 0
    np.testing.assert_array_equal(open_embeddings(out), first)
    _damage(out, 0.7)
    with pytest.raises(CorruptFileError, match="CRC32 mismatch"):
        embed_chunks(TEXTS, lexical, out, batch_size=64, progress=False)  # reuse of a finished file
    with pytest.raises(CorruptFileError, match="CRC32 mismatch"):
        open_embeddings(out)
    assert open_embeddings(out, verify=False).shape == first.shape


@pytest.mark.slow
def test_synthesize_refuses_a_damaged_prebuilt_index(tmp_path, capsys):
    corpus, _ = _chunk_table(tmp_path)
    chunks = tmp_path / "chunks2048.parquet"
    assert main(["chunk", str(corpus), "--out", str(chunks), "--tokenizer", "cl100k_base", "--no-progress"]) == 0
    folder = tmp_path / "idx"
    assert main(["index", str(chunks), "--out", str(folder), "--embedder", "hashed-tfidf:32", "--no-progress"]) == 0
    _damage_vectors(folder / "index.usearch")
    capsys.readouterr()
    argv = ["synthesize", "--corpus", str(corpus), "--out", str(tmp_path / "s"), "--index", str(folder),
            "--target-length", "1024", "--quiet"]
    assert main(argv) == 1
    assert "CRC32 mismatch" in capsys.readouterr().err


@pytest.mark.parametrize("damaged", ["chunks/store/chunk_doc.npy", "chunks/blank_docs.npy"])
def test_a_damaged_npy_header_in_a_work_folder_is_one_line(tmp_path, capsys, damaged):
    """Audit s12 F3: one flipped byte in the header dict of a work folder's .npy (these carry no CRC) gave a
    40-line tokenize.TokenError traceback from numpy's header parser; it is one line naming the file."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    out = tmp_path / "s"
    argv = ["synthesize", "--corpus", str(corpus), "--out", str(out), "--method", "standard", "--target-length",
            "256", "--chunk-size", "512", "--quiet"]
    assert main(argv) == 0
    path = out / damaged
    raw = path.read_bytes()
    at = raw.index(b"(", 10)  # the shape tuple's '(' turned into 'h': tokenize runs out of input
    path.write_bytes(raw[:at] + bytes([raw[at] ^ 0x40]) + raw[at + 1:])
    for stage in ("units", "plan", "assemble", "data"):  # what reads the chunk store again
        shutil.rmtree(out / stage)
    capsys.readouterr()
    assert main(argv) == 1  # the stage's record lists each file's CRC32: found before anything reads it
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"nextlong synthesize: error: {path}: not the file the chunks stage "
                                              "wrote") and err.endswith(f"remove {out / 'chunks'} to make it again, "
                                                                        "or pass --no-verify to use it as it is")
    assert main(argv + ["--no-verify"]) == 1  # and read without the check, it is still one line
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"nextlong synthesize: error: {path}: not a readable numpy array")
    assert err.endswith(f"delete {out / 'chunks'} to build the chunk store again" if "store" in damaged
                        else f"delete {out / 'chunks'} to chunk the corpus again")


# --- 3. truncated compressed input -------------------------------------------------------------------


def _multi_frame_zst(tmp_path):
    import zstandard

    lines = [json.dumps({"text": t}).encode() + b"\n" for t in DOCS]
    cctx = zstandard.ZstdCompressor(write_checksum=True)
    data = b"".join(cctx.compress(b"".join(lines[i:i + 8])) for i in range(0, len(lines), 8))  # 3 frames
    return data


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_truncated_multi_frame_zst_is_always_an_error(tmp_path, on_error):
    data = _multi_frame_zst(tmp_path)
    whole = tmp_path / "whole.jsonl.zst"
    whole.write_bytes(data)
    assert chunk_corpus(whole, tmp_path / "ok.parquet", progress=False)["documents"] == len(DOCS)
    cut = tmp_path / "cut.jsonl.zst"
    cut.write_bytes(data[:-7])  # the last frame loses its end
    out = tmp_path / "out.parquet"
    with pytest.raises(CorpusError, match="truncated zstd file: frame 3 ends before its end mark"):
        chunk_corpus(cut, out, on_error=on_error, progress=False)
    assert not out.exists()
    damaged = tmp_path / "damaged.jsonl.zst"
    body = bytearray(data)
    body[len(body) // 2] ^= 0xFF
    damaged.write_bytes(bytes(body))
    with pytest.raises(CorpusError, match="corrupt zstd data"):
        chunk_corpus(damaged, out, on_error=on_error, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.jsonl.zst", "damaged.jsonl.zst", "ok.parquet",
                                                          "ok.parquet.manifest.json", "whole.jsonl.zst"]


# --- 4. full disks ----------------------------------------------------------------------------------


def test_embedding_checks_free_space_before_growing_the_memory_map(tmp_path, lexical, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 ** 9, 10 ** 9 - 1000, 1000))
    out = tmp_path / "emb.npy"
    need = 128 + len(TEXTS) * 32 * 4
    with pytest.raises(DiskFullError, match=rf"{out}: no space left on device \(needs {need:,} bytes, 1,000 bytes free\)"):
        embed_chunks(TEXTS, lexical, out, progress=False)
    assert not out.exists()


def test_embedding_reserves_the_file_and_reports_enospc(tmp_path, lexical, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    out = tmp_path / "emb.npy"
    with pytest.raises(DiskFullError, match=rf"{out}: no space left on device \(needs [\d,]+ bytes"):
        embed_chunks(TEXTS, lexical, out, progress=False)


def test_enospc_in_the_middle_of_embedding_then_resume_is_identical(tmp_path, lexical, monkeypatch):
    import nextlong.mining.embed_store as store

    whole = np.array(embed_chunks(TEXTS, lexical, tmp_path / "one.npy", batch_size=64, progress=False))
    calls = {"n": 0}
    real = store.write_json_atomic

    def full_after_two(path, obj):
        calls["n"] += 1
        if calls["n"] > 3:  # the first record, then two batches
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, obj)

    monkeypatch.setattr(store, "write_json_atomic", full_after_two)
    out = tmp_path / "two.npy"
    with pytest.raises(OSError) as caught:
        embed_chunks(TEXTS, lexical, out, batch_size=64, progress=False)
    assert caught.value.errno == errno.ENOSPC
    assert json.loads(progress_path(out).read_text())["done"] == 128
    monkeypatch.setattr(store, "write_json_atomic", real)
    again = np.array(embed_chunks(TEXTS, lexical, out, batch_size=64, progress=False))
    np.testing.assert_array_equal(again, whole)
    assert out.read_bytes() == (tmp_path / "one.npy").read_bytes()


def test_atomic_writes_turn_enospc_into_one_line_and_leave_no_temporary(tmp_path):
    from nextlong.atomic import atomic_path

    target = tmp_path / "x.bin"
    with pytest.raises(DiskFullError, match=rf"{target}: no space left on device \(needs more than 5 bytes\)"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"12345")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [OSError(errno.EFBIG, "File too large"),  # pyarrow's write past `ulimit -f`
                                   OSError("1048576 requested and 5 written")])  # numpy's tofile, at the limit
def test_a_write_stopped_by_the_file_size_limit_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch, error):
    """A write stopped by the largest file allowed (`ulimit -f`, or the file system's) reached the user as a
    traceback: pyarrow's EFBIG names no file, numpy's short write has no errno. Now one line naming the file and
    the limit; the temporary is removed, so nothing half-written is taken for the file."""
    import resource

    from nextlong.atomic import atomic_path

    monkeypatch.setattr(resource, "getrlimit", lambda which: (5, resource.RLIM_INFINITY))
    target = tmp_path / "x.bin"
    with pytest.raises(NextlongError, match=rf"^{target}: file too large: the file size limit of this process "
                                            r"\(`ulimit -f`: 5 bytes\) stopped the write at 5 bytes; raise the limit"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"12345")
            raise error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_index_under_ulimit_f_is_one_line_and_the_rerun_matches_a_clean_run(tmp_path):
    """`nextlong index` (and synthesize) under `ulimit -f` ended in a traceback from the write of the lexical
    embedder's 4 MiB IDF array (measured: numpy's "N requested and M written"). Now one line, exit 1, and the same
    command without the limit finishes with the bytes of a run never stopped."""
    import resource

    from tests.helpers import assert_one_line_error, chunk_table, corpus_head, write_chunk_table

    chunks = write_chunk_table(chunk_table(corpus_head(limit=20), max_chars=600), tmp_path / "chunks.parquet")

    def index(out, limit=None):
        def lower():
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

        return subprocess.run([sys.executable, "-m", "nextlong", "index", str(chunks), "--out", str(out),
                               "--embedder", "hashed-tfidf:64", "--threads", "1", "--no-progress"],  # 1: the same graph
                              capture_output=True, text=True,
                              preexec_fn=lower if limit else None)

    stopped = index(tmp_path / "out", limit=1 << 20)
    assert stopped.returncode == 1, stopped.stderr
    line = assert_one_line_error(stopped.stderr, "index")
    assert f"{tmp_path / 'out' / 'lexical_idf.npy'}: file too large: the file size limit" in line
    assert not [p for p in (tmp_path / "out").rglob("*.tmp")]
    assert index(tmp_path / "out").returncode == 0
    assert index(tmp_path / "clean").returncode == 0
    for name in ("embeddings.npy", "index.usearch", "lexical_idf.npy", "chunks.parquet"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


def test_an_atomic_write_is_flushed_before_and_after_its_rename(tmp_path, monkeypatch):
    """The file's bytes reach the disk before its final name points at them, then the folder entry: without it a
    power cut or a node crash can leave a finished part empty under its name while the record calling it done is
    whole. (The suite runs with NEXTLONG_FSYNC=0 for speed; a run without it flushes.)"""
    import os

    from nextlong import atomic

    monkeypatch.delenv("NEXTLONG_FSYNC", raising=False)
    flushed = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(a, b):
        flushed.append(("rename", str(b)))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "part.bin"
    with atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"rows")
    assert len(flushed) == 3 and flushed[0].startswith(str(tmp_path / ".part.bin."))
    assert flushed[1:] == [("rename", str(target)), str(tmp_path)]
    monkeypatch.setenv("NEXTLONG_FSYNC", "0")
    flushed.clear()
    atomic.write_json_atomic(target, {})
    assert flushed == [("rename", str(target))]


def test_index_save_checks_free_space(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    _, chunks = _chunk_table(tmp_path)
    folder = tmp_path / "idx"
    index = build_index_from_chunks(chunks, folder, "hashed-tfidf:32", progress=False)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 ** 9, 10 ** 9 - 10, 10))
    with pytest.raises(DiskFullError, match=rf"{tmp_path / 'other' / 'index.usearch'}: no space left on device \(needs [\d,]+ bytes, 10 bytes free\)"):
        index.save(tmp_path / "other")


@pytest.mark.slow
def test_enospc_while_writing_a_synthesis_shard_then_resume_is_identical(tmp_path, monkeypatch, capsys):
    import nextlong.synthesis.writers as writers

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    argv = ["synthesize", "--corpus", str(corpus), "--method", "standard", "--target-length", "256", "--chunk-size", "512",
            "--shard-size", "2", "--quiet"]
    assert main(argv + ["--out", str(tmp_path / "clean")]) == 0
    real = writers.pq.write_table
    calls = {"n": 0}

    def full_on_third(table, where, **kwargs):
        """The disk fills while the third shard is assembled (data/ links the assembled parts); other
        stages' blocks go through."""
        if Path(str(where)).parent.name == "assemble":
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(table, where, **kwargs)

    monkeypatch.setattr(writers.pq, "write_table", full_on_third)
    capsys.readouterr()
    assert main(argv + ["--out", str(tmp_path / "full")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"nextlong synthesize: error: {tmp_path / 'full' / 'assemble' / 'part-00002.parquet'}: "
                          "no space left on device")
    assert calls["n"] == 3 and not list((tmp_path / "full").rglob("*.tmp"))
    monkeypatch.setattr(writers.pq, "write_table", real)
    assert main(argv + ["--out", str(tmp_path / "full")]) == 0

    def shards(out):
        return {p.name: p.read_bytes() for p in sorted((out / "data").glob("part-*.parquet"))}

    assert shards(tmp_path / "full") == shards(tmp_path / "clean")
    assert len(shards(tmp_path / "clean")) > 3


# --- leftovers -------------------------------------------------------------------------------------------


def test_the_next_successful_write_removes_temporaries_of_a_killed_one(tmp_path):
    stale = tmp_path / ".out.json.ab12cd_9.tmp"  # what a kill -9 during write_json_atomic leaves
    stale.write_text("half")
    other = tmp_path / ".out.json.manifest.json.ab12cd_9.tmp"  # another file's temporary: not ours to remove
    other.write_text("x")
    write_json_atomic(tmp_path / "out.json", {"a": 1})
    assert not stale.exists()
    assert other.exists()


def test_a_shard_whose_anchors_are_all_dropped_writes_no_file(tmp_path):
    from dataclasses import dataclass, field

    import pyarrow as pa
    import pyarrow.parquet as pq

    from nextlong.synthesis.assemble import OUTPUT_SCHEMA
    from nextlong.synthesis.executors.local import LocalExecutor
    from nextlong.synthesis.framework import MapStage, Pipeline, WholeStage, not_a_setting
    from nextlong.synthesis.stages import CutStage

    @dataclass
    class Units(WholeStage):
        def build(self, ctx):
            for j in range(2):
                pq.write_table(pa.table({"anchor_doc": [2 * j, 2 * j + 1]}), ctx.out_dir / f"part-{j:05d}.parquet")
            return {"blocks": 2}

    @dataclass
    class AllDropped(MapStage):
        fail: bool = not_a_setting(default=False)

        def __call__(self, block):
            if self.fail:
                pytest.fail("re-planned")
            return OUTPUT_SCHEMA.empty_table()

    def pipeline(fail):
        return Pipeline(tmp_path, [Units(name="units"), AllDropped(name="assemble", inputs=("units",), fail=fail),
                                   CutStage(name="data", inputs=("assemble",))])

    results = LocalExecutor().run(pipeline(False), progress=False)
    assert results["assemble"]["rows"] == 0 and results["data"]["rows"] == 0
    assert list((tmp_path / "assemble").glob("part-*.parquet")) == []
    assert sorted(p.name for p in (tmp_path / "assemble" / "_done").iterdir()) == ["part-00000.json", "part-00001.json"]
    # a re-run takes the records as done
    assert LocalExecutor().run(pipeline(True), progress=False) == results


def test_search_expansion_search_is_for_that_call_only(tmp_path):
    _, chunks = _chunk_table(tmp_path)
    index = build_index_from_chunks(chunks, tmp_path / "idx", "hashed-tfidf:32", progress=False)
    before = index.usearch.expansion_search
    q = np.asarray(pq.read_table(chunks, columns=["text"]).num_rows and index.query_embedder().embed(["paragraph 1"]))
    index.search(q, 3, expansion_search=before + 77)
    assert index.usearch.expansion_search == before


def test_exact_searcher_rejects_exclusions_it_would_ignore():
    from nextlong.synthesis.negatives import ExactSearcher

    vectors = np.eye(4, dtype=np.float32)
    with pytest.raises(TypeError, match="exclude_doc_ids"):
        ExactSearcher(vectors).search(vectors[:1], 2, exclude_doc_ids=[0])
    ids, _ = ExactSearcher(vectors).search(vectors[:1], 2)
    assert ids[0, 0] == 0


def test_synthesize_threads_bound_the_embedder(tmp_path, monkeypatch):
    """--threads 1 reaches the embedder (torch would otherwise take every core)."""
    import nextlong.mining.embedding as embedding

    seen = []
    real = embedding.load_embedder

    def spy(spec=None, **options):
        seen.append((spec, options))
        return real("hashed-tfidf:32")  # stands in for MiniLM: what matters is what it was asked with

    monkeypatch.setattr(embedding, "load_embedder", spy)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    argv = ["synthesize", "--corpus", str(corpus), "--target-length", "1024", "--quiet", "--threads"]
    assert main(argv + ["1", "--out", str(tmp_path / "a")]) == 0
    assert seen == [(None, {"threads": 1})]
    seen.clear()
    assert main(argv + ["0", "--out", str(tmp_path / "b")]) == 0
    assert seen == [(None, {})]  # 0: the embedder's own default, all cores


def test_a_successful_synthesize_removes_what_killed_runs_left(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    out = tmp_path / "out"
    argv = ["synthesize", "--corpus", str(corpus), "--out", str(out), "--method", "standard", "--target-length", "512",
            "--format", "jsonl", "--quiet"]
    assert main(argv) == 0
    left = [out / "data" / ".part-00000.parquet.k2v9x_1a.tmp", out / "jsonl" / ".part-00000.jsonl.abcd1234.tmp",
            out / "mds.tmp" / "shard.00000.mds", out / ".manifest.json.zzzz9999.tmp"]
    for path in left:  # what kill -9 during a shard write, a JSONL or MDS conversion, the manifest leaves
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    assert main(argv) == 0
    assert not [p for p in left if p.exists()] and not (out / "mds.tmp").exists()
    assert not list(out.rglob("*.tmp"))


def test_heads_compare_reruns_into_its_own_folder_and_is_told_from_heads(tmp_path):
    """An attack on the folder check: `heads --compare` records "heads --compare" but locked as "heads", so its own
    rerun was refused, and it could take over a finished `heads` run's folder."""
    from nextlong.locking import output_lock

    folder = tmp_path / "cmp"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"command": "heads --compare", "statistics": {}}))
    with output_lock(folder, "heads --compare", file=False):
        pass
    with pytest.raises(NextlongError, match=r"holds the output of a `nextlong heads --compare` run \(its "):
        with output_lock(folder, "heads", file=False):
            pass
    (folder / "manifest.json").write_text(json.dumps({"command": ["x"], "statistics": {}}))
    with pytest.raises(NextlongError, match=r"holds the output of another command's run \("):
        with output_lock(folder, "heads", file=False):
            pass


def test_a_folder_that_cannot_be_opened_for_its_fsync_is_left_as_the_file_system_keeps_it(tmp_path, monkeypatch):
    """An attack on fsync_path: a write-only folder (mode 0300, not root) cannot be opened to fsync its entries;
    the file was already published and the run then failed. The folder's flush is skipped there; a file's stays."""
    import os

    from nextlong import atomic

    monkeypatch.delenv("NEXTLONG_FSYNC", raising=False)
    real_open = os.open

    def no_read(path, flags, *args):
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_read)
    atomic.write_json_atomic(tmp_path / "x.json", {"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
