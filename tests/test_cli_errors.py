"""The CLI's error contract, case by case: a bad option value exits 2, bad data or a bad environment
exits 1, and either way the user sees exactly one line `nextlong CMD: error: ...` and no traceback
(a traceback only with --debug). Every case here printed a traceback, or exited 0, before."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from nextlong.cli import main
from nextlong.errors import NextlongError
from tests.helpers import assert_one_line_error, run_cli

DOCS = [f"Document {d} about topic {d % 5}.\n" + "\n".join(f"paragraph {p} of document {d}: " + "words " * 40
                                                             for p in range(6)) for d in range(24)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(DOCS)))
    return path


@pytest.fixture(scope="module")
def chunks(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("chunks") / "chunks.parquet"
    assert main(["chunk", str(corpus), "--out", str(out), "--max-len", "400", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, chunks):
    out = tmp_path_factory.mktemp("index") / "idx"
    assert main(["index", str(chunks), "--out", str(out), "--embedder", "hashed-tfidf:64", "--no-progress"]) == 0
    return out


# (name, command, argv built from the fixtures, expected exit status, expected part of the message)
USAGE_CASES = [
    ("chunk --max-len 0", "chunk", lambda f: ["chunk", f["corpus"], "--out", f["tmp"] / "c.parquet", "--max-len", "0"],
     "argument --max-len/--chunk-size: must be a positive integer, got 0"),
    ("chunk --threads -2", "chunk", lambda f: ["chunk", f["corpus"], "--out", f["tmp"] / "c.parquet", "--threads", "-2"],
     "argument --threads: must be 0 (all cores) or a positive number of threads, got -2"),
    ("chunk --batch-size x", "chunk", lambda f: ["chunk", f["corpus"], "--out", f["tmp"] / "c.parquet",
                                                 "--batch-size", "x"], "argument --batch-size: expected an integer"),
    ("tokenize --threads -1", "tokenize", lambda f: ["tokenize", f["corpus"], "--out", f["tmp"] / "t.parquet",
                                                     "--tokenizer", "cl100k_base", "--threads", "-1"],
     "argument --threads: must be 0 (all cores)"),
    ("search -k -3", "search", lambda f: ["search", f["index"], "query", "-k", "-3"],
     "argument -k: must be a positive integer, got -3"),
    ("search -k 0", "search", lambda f: ["search", f["index"], "query", "-k", "0"],
     "argument -k: must be a positive integer, got 0"),
    ("inspect --sample -1", "inspect", lambda f: ["inspect", f["tmp"], "--sample", "-1"],
     "argument --sample: must be 0 or more, got -1"),
    ("index --batch-size 0", "index", lambda f: ["index", f["chunks"], "--out", f["tmp"] / "i", "--batch-size", "0"],
     "argument --batch-size: must be a positive integer, got 0"),
    ("index --threads -1", "index", lambda f: ["index", f["chunks"], "--out", f["tmp"] / "i", "--threads", "-1"],
     "argument --threads: must be 0 (all cores)"),
    ("synthesize --threads -1", "synthesize", lambda f: ["synthesize", "--corpus", f["corpus"], "--out", f["tmp"] / "s",
                                                         "--threads", "-1"], "argument --threads: must be 0"),
    ("synthesize --target-length 0", "synthesize", lambda f: ["synthesize", "--corpus", f["corpus"], "--out",
                                                              f["tmp"] / "s", "--target-length", "0"],
     "argument --target-length: must be a positive integer, got 0"),
    ("synthesize --target-length 10", "synthesize", lambda f: ["synthesize", "--corpus", f["corpus"], "--out",
                                                               f["tmp"] / "s", "--target-length", "10", "--quiet"],
     "--target-length 10 is shorter than one meta-chunk (--chunk-size 2048 chars, about 512 tokens)"),
    ("synthesize --target-length below --chunk-unit tokens", "synthesize",
     lambda f: ["synthesize", "--corpus", f["corpus"], "--out", f["tmp"] / "s", "--method", "standard",
                "--target-length", "255", "--chunk-size", "256", "--chunk-unit", "tokens", "--quiet"],
     "use --target-length 256 or more"),
    ("synthesize --on-error bad", "synthesize", lambda f: ["synthesize", "--corpus", f["corpus"], "--out",
                                                           f["tmp"] / "s", "--on-error", "bad"],
     "argument --on-error: invalid choice"),
    ("synthesize --embedder unknown", "synthesize", lambda f: ["synthesize", "--corpus", f["corpus"], "--out",
                                                               f["tmp"] / "s", "--embedder", "no-such-model", "--quiet"],
     "unknown embedder 'no-such-model'"),
    # an option the method does not read: ran in silence (--index of no folder included), and the ones the plan stage
    # records refused a later rerun with another value as "other settings" (attack, 2026-12-08)
    ("synthesize --method quest --index missing", "synthesize",
     lambda f: ["synthesize", "--corpus", f["corpus"], "--out", f["tmp"] / "s", "--method", "quest", "--index",
                f["tmp"] / "no-such-index", "--quiet"],
     "--index is not read by --method quest: it works with --method nextlong, knn or iclm"),
    ("synthesize --method standard --embedder", "synthesize",
     lambda f: ["synthesize", "--corpus", f["corpus"], "--out", f["tmp"] / "s", "--method", "standard", "--embedder",
                "static", "--quiet"],
     "--embedder is not read by --method standard: it works with --method nextlong, knn or iclm"),
    ("synthesize --method quest --negatives fill", "synthesize",
     lambda f: ["synthesize", "--corpus", f["corpus"], "--out", f["tmp"] / "s", "--method", "quest", "--negatives",
                "fill", "--quiet"],
     "--negatives is not read by --method quest: it works with --method nextlong"),
    ("synthesize --method iclm --long-docs drop", "synthesize",
     lambda f: ["synthesize", "--corpus", f["corpus"], "--out", f["tmp"] / "s", "--method", "iclm", "--long-docs",
                "drop", "--quiet"],
     "--long-docs is not read by --method iclm: it works with --method nextlong"),
    ("synthesize --method standard --chars-per-token", "synthesize",
     lambda f: ["synthesize", "--corpus", f["corpus"], "--out", f["tmp"] / "s", "--method", "standard",
                "--chars-per-token", "3.5", "--quiet"],
     "--chars-per-token is not read by --method standard: it works with --method nextlong"),
    ("synthesize --method quest --knn-neighbors", "synthesize",
     lambda f: ["synthesize", "--corpus", f["corpus"], "--out", f["tmp"] / "s", "--method", "quest", "--knn-neighbors",
                "8", "--quiet"],
     "--knn-neighbors is not read by --method quest: it works with --method knn or iclm"),
    ("synthesize --method nextlong --overflow drop", "synthesize",
     lambda f: ["synthesize", "--corpus", f["corpus"], "--out", f["tmp"] / "s", "--overflow", "drop", "--quiet"],
     "--overflow is not read by --method nextlong: it works with --method standard or iclm"),
    ("synthesize --method standard --near-dup-threshold", "synthesize",
     lambda f: ["synthesize", "--corpus", f["corpus"], "--out", f["tmp"] / "s", "--method", "standard",
                "--near-dup-threshold", "0.7", "--quiet"],
     "--near-dup-threshold is not read by --method standard without --dedup-corpus"),
    ("synthesize --index with --index-shards", "synthesize",
     lambda f: ["synthesize", "--corpus", f["corpus"], "--out", f["tmp"] / "s", "--index", f["index"],
                "--index-shards", "2", "--quiet"],
     "--reproducible-index and --index-shards build the HNSW index: leave them out with --index"),
    ("synthesize --nprobe without --mining partitioned", "synthesize",
     lambda f: ["synthesize", "--corpus", f["corpus"], "--out", f["tmp"] / "s", "--nprobe", "8", "--quiet"],
     "--partitions, --nprobe, --neighbours and mining_block_rows are settings of --mining partitioned"),
    ("synthesize --embed-gpus without ray", "synthesize", lambda f: ["synthesize", "--corpus", f["corpus"], "--out",
                                                                    f["tmp"] / "s", "--embed-gpus", "1", "--quiet"],
     "--ray-address, --embed-gpus and --embed-actors work with --executor ray"),
    ("synthesize --executor spark", "synthesize", lambda f: ["synthesize", "--corpus", f["corpus"], "--out",
                                                             f["tmp"] / "s", "--executor", "spark"],
     "argument --executor: invalid choice"),
    ("synthesize --embed-gpus -1", "synthesize", lambda f: ["synthesize", "--corpus", f["corpus"], "--out",
                                                            f["tmp"] / "s", "--executor", "ray", "--embed-gpus", "-1"],
     "argument --embed-gpus: must be 0 or more, got -1"),
    ("synthesize CORPUS without --corpus", "synthesize", lambda f: ["synthesize", f["corpus"], "--out", f["tmp"] / "s"],
     "; name the corpus with --corpus PATH"),
    ("synthesize --unknown-option VALUE", "synthesize", lambda f: ["synthesize", "--corpus", f["corpus"], "--out",
                                                                   f["tmp"] / "s", "--lr", "1e-3"],
     "unrecognized arguments: --lr 1e-3 (see"),
    ("synthesize --demo --corpus", "synthesize", lambda f: ["synthesize", "--demo", "--corpus", f["corpus"], "--out",
                                                          f["tmp"] / "s"],
     "--demo runs on the embedded demo corpus: drop --corpus"),
    ("search an empty query", "search", lambda f: ["search", f["index"], "  "], "the query is empty"),
    ("synthesize --out a file", "synthesize", lambda f: ["synthesize", "--corpus", f["corpus"], "--out", f["corpus"]],
     "exists and is not a folder, where `nextlong synthesize` writes a folder; choose another --out"),
    ("chunk --out a folder", "chunk", lambda f: ["chunk", f["corpus"], "--out", f["tmp"]],
     "is a folder, where `nextlong chunk` writes one file; give --out a file name"),
    ("chunk --mistyped option", "chunk", lambda f: ["chunk", f["corpus"], "--out", f["tmp"] / "c.parquet", "--zz"],
     "unrecognized arguments: --zz"),
    ("chunk --unit tokens without --tokenizer", "chunk", lambda f: ["chunk", f["corpus"], "--out", f["tmp"] / "c.parquet",
                                                                    "--unit", "tokens"],
     "--unit tokens needs --tokenizer"),
]


@pytest.mark.parametrize("name,command,argv,expected", USAGE_CASES, ids=[c[0] for c in USAGE_CASES])
def test_usage_errors_exit_2_with_one_line(name, command, argv, expected, corpus, chunks, index_dir, tmp_path, capsys):
    code, out, err = run_cli(argv({"corpus": corpus, "chunks": chunks, "index": index_dir, "tmp": tmp_path}), capsys)
    line = assert_one_line_error(err, command)
    assert code == 2, line
    assert expected in line
    assert out == ""
    assert not (tmp_path / "c.parquet").exists() and not (tmp_path / "s").exists() and not (tmp_path / "i").exists()


# the wrong kind of folder, or none: one line that says what it is (exit 1: not a mistyped option)
WRONG_FOLDER_CASES = [
    ("inspect an index", "inspect", lambda f: ["inspect", f["index"]],
     "holds a `nextlong index` run (its manifest.json); inspect shows what `nextlong synthesize` or `nextlong acer` made"),
    ("inspect a missing folder", "inspect", lambda f: ["inspect", f["tmp"] / "nothere"],
     "nothere: no such folder; give the --out of `nextlong synthesize` or `nextlong acer`"),
    ("search a missing index", "search", lambda f: ["search", f["tmp"] / "nothere", "words"],
     "nothere: no such folder; expected the --out of `nextlong index`"),
    ("search a synthesize folder", "search", lambda f: ["search", f["synth"], "words"],
     "no index.json; it holds a `nextlong synthesize` run (its manifest.json), not an index"),
    ("train on an index", "train", lambda f: ["train", f["index"], "--out", f["tmp"] / "t", "--model", "tiny"],
     "holds a `nextlong index` run (its manifest.json), not training data: train on the output of `nextlong "
     "synthesize` or `nextlong acer`"),
]


@pytest.mark.parametrize("name,command,argv,expected", WRONG_FOLDER_CASES, ids=[c[0] for c in WRONG_FOLDER_CASES])
def test_the_wrong_kind_of_folder_is_named(name, command, argv, expected, corpus, chunks, index_dir, tmp_path, capsys):
    """They were: "idx/data: no long document number 0 (the output has 0)"; "nothere/manifest.json: not found";
    "nothere: no index.json; not an index directory" (for a missing folder and another command's alike);
    "idx/...: no `input_ids` column"."""
    synth = tmp_path / "synth"  # what a search of a synthesize folder finds: its manifest, no index.json
    synth.mkdir()
    (synth / "manifest.json").write_text(json.dumps({"command": "synthesize", "settings": {}, "statistics": {}}))
    code, out, err = run_cli(argv({"corpus": corpus, "chunks": chunks, "index": index_dir, "tmp": tmp_path,
                                   "synth": synth}), capsys)
    line = assert_one_line_error(err, command)
    assert code == 1, line
    assert expected in line and out == ""
    assert not (tmp_path / "t").exists()


def test_train_names_a_weight_that_is_no_number(corpus, tmp_path, capsys):
    """`DATA@x` with DATA a folder that exists was "data not found"."""
    code, _, err = run_cli(["train", f"{tmp_path}@x", "--out", tmp_path / "t", "--model", "tiny"], capsys)
    line = assert_one_line_error(err, "train")
    assert code == 2 and f"{tmp_path}@x: the mixing weight after '@' must be a positive number, got 'x'" in line


def _parent_is_a_file(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker


@pytest.mark.parametrize("command", ["chunk", "tokenize", "index", "synthesize"])
def test_out_whose_parent_is_a_file(command, corpus, chunks, tmp_path, capsys):
    blocker = _parent_is_a_file(tmp_path)
    argv = {
        "chunk": ["chunk", corpus, "--out", blocker / "c.parquet", "--no-progress"],
        "tokenize": ["tokenize", corpus, "--out", blocker / "t.parquet", "--tokenizer", "cl100k_base", "--no-progress"],
        "index": ["index", chunks, "--out", blocker / "idx", "--embedder", "hashed-tfidf:64", "--no-progress"],
        "synthesize": ["synthesize", "--corpus", corpus, "--out", blocker / "out", "--method", "standard",
                       "--target-length", "512", "--quiet"],
    }[command]
    code, _, err = run_cli(argv, capsys)
    line = assert_one_line_error(err, command)
    assert code == 1
    assert f"{blocker} is a file, not a folder" in line
    assert blocker.read_text() == "not a folder"


def test_disk_full_while_chunking(corpus, tmp_path, capsys, monkeypatch):
    """ENOSPC from the Parquet writer: one line naming the output, nothing left under its name or beside it."""
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    out = tmp_path / "new" / "c.parquet"
    code, _, err = run_cli(["chunk", corpus, "--out", out, "--no-progress"], capsys)
    line = assert_one_line_error(err, "chunk")
    assert code == 1
    assert f"{out}: no space left on device" in line
    assert not (tmp_path / "new").exists()  # no output, no temporary, no lock file, no empty folder


def test_threads_0_means_all_cores_everywhere(corpus, chunks, tmp_path, capsys):
    assert run_cli(["chunk", corpus, "--out", tmp_path / "c.parquet", "--threads", "0", "--no-progress"], capsys)[0] == 0
    assert run_cli(["index", chunks, "--out", tmp_path / "i", "--threads", "0", "--embedder", "hashed-tfidf:64",
                    "--no-progress"], capsys)[0] == 0
    code, _, err = run_cli(["synthesize", "--corpus", corpus, "--out", tmp_path / "s", "--method", "standard",
                            "--target-length", "512", "--threads", "0", "--quiet"], capsys)
    assert code == 0, err
    assert pq.read_table(tmp_path / "s" / "data").num_rows > 0


def test_index_hashed_tfidf_with_threads_1(chunks, tmp_path, capsys):
    code, out, err = run_cli(["index", chunks, "--out", tmp_path / "i", "--embedder", "hashed-tfidf:64",
                              "--threads", "1", "--no-progress"], capsys)
    assert code == 0, err
    assert "indexed" in out


def test_search_k_1_is_fine(index_dir, capsys):
    code, out, err = run_cli(["search", index_dir, "paragraph 3 of document 7", "-k", "1"], capsys)
    assert code == 0, err
    header, first = out.splitlines()[:2]
    assert header.split() == ["#", "cosine", "chunk", "document"]
    assert first.startswith("  1  ")


def test_unknown_embedder_is_reported_before_chunking(corpus, tmp_path, capsys):
    out = tmp_path / "s"
    code, _, err = run_cli(["synthesize", "--corpus", corpus, "--out", out, "--embedder", "hashed-tfdif", "--quiet"],
                           capsys)
    assert code == 2
    assert "unknown embedder 'hashed-tfdif'" in assert_one_line_error(err, "synthesize")
    assert not out.exists()  # not even the folder: nothing was chunked


def test_mistyped_index_is_reported_before_chunking(corpus, index_dir, tmp_path, capsys):
    out = tmp_path / "s"
    code, _, err = run_cli(["synthesize", "--corpus", corpus, "--out", out, "--index", str(index_dir) + "x",
                            "--quiet"], capsys)
    assert code == 1
    assert f"{index_dir}x: --index: no such folder" in assert_one_line_error(err, "synthesize")
    assert not out.exists()


def test_hashed_tfidf_without_numba_names_the_extra(chunks, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numba" else real(name, *a))
    code, _, err = run_cli(["index", chunks, "--out", tmp_path / "i", "--embedder", "hashed-tfidf", "--no-progress"],
                           capsys)
    assert code == 1
    assert "pip install 'nextlong[ml]'" in assert_one_line_error(err, "index")
    assert not (tmp_path / "i").exists()


def test_synthesize_on_error_skip_reaches_the_corpus_reader(tmp_path, capsys):
    corpus = tmp_path / "bad.jsonl"
    lines = [json.dumps({"text": t}) for t in DOCS]
    lines.insert(3, '{"text": "unterminated')
    corpus.write_text("\n".join(lines) + "\n")
    args = ["synthesize", "--corpus", corpus, "--method", "standard", "--target-length", "512", "--quiet"]
    code, _, err = run_cli(args + ["--out", tmp_path / "a"], capsys)
    assert code == 1
    assert f"{corpus}:4:" in assert_one_line_error(err, "synthesize")
    assert not (tmp_path / "a").exists()  # a failed run leaves no empty folder
    code, _, err = run_cli(args + ["--out", tmp_path / "b", "--on-error", "skip"], capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["statistics"]["corpus_documents"] == len(DOCS)


def test_failed_chunk_leaves_no_folder_and_no_lock(tmp_path, capsys):
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"text": "fine"}\n{"txt": "no text field"}\n')
    out = tmp_path / "new" / "deeper" / "c.parquet"
    code, _, err = run_cli(["chunk", corpus, "--out", out, "--no-progress"], capsys)
    assert code == 1
    assert f"{corpus}:2:" in assert_one_line_error(err, "chunk")
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_debug_shows_the_traceback_also_after_the_subcommand(tmp_path):
    with pytest.raises(NextlongError, match="manifest.json: not found"):
        main(["inspect", str(tmp_path), "--debug"])
    with pytest.raises(NextlongError, match="manifest.json: not found"):
        main(["--debug", "inspect", str(tmp_path)])


def test_the_installed_command_prints_one_line(tmp_path):
    """Through the real entry point: exit status, one stderr line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "nextlong", "inspect", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"nextlong inspect: error: {tmp_path / 'missing'}: no such folder; give the --out "
                                   "of `nextlong synthesize` or `nextlong acer`")
    proc = subprocess.run([sys.executable, "-m", "nextlong", "search", str(tmp_path), "q", "-k", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("nextlong search: error: argument -k: must be a positive integer, got 0 "
                                   "(see nextlong search --help)")


def test_control_characters_in_an_error_never_reach_the_terminal(tmp_path, capsys):
    """File names and file bytes quoted in errors are untrusted: an escape sequence is shown escaped."""
    evil = tmp_path / "a\x1b[2Jb\x07.jsonl"
    code, _, err = run_cli(["chunk", evil, "--out", tmp_path / "c.parquet"], capsys)  # the bar too: none
    line = assert_one_line_error(err, "chunk")
    assert code == 1 and "\x1b" not in err and "\x07" not in err and "a\\x1b[2Jb\\x07.jsonl" in line


def test_a_reader_that_goes_away_ends_the_command_quietly(index_dir):
    """`nextlong search ... | head -1`: the reader has closed the pipe (here before the command writes at all);
    the command stops with no traceback (it printed `BrokenPipeError` with a traceback before)."""
    proc = subprocess.Popen([sys.executable, "-m", "nextlong", "search", str(index_dir), "paragraph 2", "-k", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


@pytest.mark.parametrize("local_rank, printed", [("0", True), ("1", False), (None, True)])
def test_a_usage_error_under_torchrun_is_printed_once_per_node(local_rank, printed, capsys, monkeypatch):
    """Every rank parses the same arguments: only LOCAL_RANK 0 says the error; each rank still exits 2."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--no-such-flag"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert ("the following arguments are required" in err) == printed
    assert err.count("\n") == (1 if printed else 0)


def test_a_garbled_world_size_is_one_process(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SystemExit):
        main(["train", "--no-such-flag"])
    assert "the following arguments are required" in capsys.readouterr().err


@pytest.mark.parametrize("option, value", [
    ("--max-len", "99999999999999999999999"), ("--threads", "2147483648"), ("--batch-size", "9223372036854775808"),
])
def test_huge_numeric_options_are_one_line_usage_errors(tmp_path, capsys, option, value):
    """Values past what native code takes (size_t, int64, a C int for threads) were pybind11
    TypeError/OverflowError tracebacks (audit s11 H)."""
    from tests.helpers import assert_one_line_error, run_cli

    corpus = tmp_path / "hw.jsonl"
    corpus.write_text('{"text": "hello\\nworld"}\n')
    code, _, err = run_cli(["chunk", corpus, "--out", tmp_path / "o.parquet", option, value], capsys)
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and "must be" in line and option in line, err


def test_other_commands_run_from_a_training_rank_still_say_their_usage_errors(capsys, monkeypatch):
    """Only `train` is launched by torchrun; `nextlong eval` started from inside a rank inherits WORLD_SIZE and
    LOCAL_RANK and must still say what is wrong."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SystemExit):
        main(["eval", "--no-such-flag"])
    assert "nextlong eval: error:" in capsys.readouterr().err


def test_a_torchrun_rank_of_train_leaves_sigterm_to_torchrun(monkeypatch):
    """torchrun sends SIGTERM to the other ranks when one fails; taken as Ctrl-C, it raised inside a rank's
    handling of its own setup error, so a CI run once printed rank 1's traceback and not its message (flaky:
    test_train_distributed's setup-failure test). A launched train rank keeps the default action; train's loop
    has its own handler. A single process still takes SIGTERM as Ctrl-C (the test below)."""
    import signal

    from nextlong import cli
    from nextlong.commands import train as train_command

    seen = []
    monkeypatch.setattr(train_command, "run", lambda args: seen.append(signal.getsignal(signal.SIGTERM)) or 0)
    monkeypatch.setattr(cli, "_end_torchrun_rank", lambda code: seen.append(code))
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        for world in ("2", "1"):
            monkeypatch.setenv("WORLD_SIZE", world)
            monkeypatch.setenv("LOCAL_RANK", "0")
            assert main(["train", "data", "--out", "run"]) == 0
    finally:
        signal.signal(signal.SIGTERM, before)
    assert seen[:2] == [signal.SIG_DFL, 0] and callable(seen[2]) and len(seen) == 3


@pytest.mark.parametrize("command, said", [
    ("synthesize", "terminated (SIGTERM); finished blocks and embedding batches are kept (the rest of a block under way "
                   "is redone): re-run to resume"),
    ("chunk", "terminated (SIGTERM); nothing was written (the output is written whole at the end): run the command again"),
])
def test_sigterm_is_taken_as_ctrl_c(tmp_path, capsys, monkeypatch, command, said):
    """A scheduler's stop (SIGTERM) ended every command but train at once, with no word, leaving a synthesize
    manifest "running" for good (an outside UX audit). It is now Ctrl-C's path: one line, exit 143, the
    manifest's `failure_recorded` sees it; the default action is back after the command."""
    import importlib
    import signal
    import time

    module = importlib.import_module(f"nextlong.commands.{command}")

    def stopped(args):
        signal.raise_signal(signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(module, "run", stopped)
    argv = ["synthesize", "--demo", "--out", str(tmp_path / "s")] if command == "synthesize" else \
        ["chunk", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "c.parquet")]
    # the default action, as in a fresh `nextlong` process: an earlier test of the session (Ray's driver) may
    # have left its own handler, which main() keeps, and the signal below would then not reach main()
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        assert main(argv) == 143
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)
    assert capsys.readouterr().err.strip() == f"nextlong {command}: {said}"


def test_sigterm_is_told_from_ctrl_c_where_ray_raises_a_plain_keyboardinterrupt(tmp_path, capsys, monkeypatch):
    """Ray's ray.get raises a plain KeyboardInterrupt in place of the exception a signal handler raised (measured
    with Ray 2.60), so SIGTERM during a `synthesize --executor ray` stage was reported as Ctrl-C: exit 130 and
    "interrupted" where the README promises 143 and "terminated (SIGTERM)", and its manifest's error was
    "KeyboardInterrupt". The handler now records the signal."""
    import signal
    import time

    from nextlong.commands import synthesize
    from nextlong.manifest import failure_recorded, read_manifest, write_running_manifest

    manifest = tmp_path / "manifest.json"

    def stopped(args):
        write_running_manifest(manifest, command="synthesize", settings={})
        with failure_recorded(manifest):
            try:
                signal.raise_signal(signal.SIGTERM)
                time.sleep(5)
            except KeyboardInterrupt:
                raise KeyboardInterrupt() from None  # what Ray's ray.get makes of it
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(synthesize, "run", stopped)
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        assert main(["synthesize", "--demo", "--out", str(tmp_path / "s")]) == 143
    finally:
        signal.signal(signal.SIGTERM, before)
    assert capsys.readouterr().err.startswith("nextlong synthesize: terminated (SIGTERM); finished blocks")
    assert read_manifest(manifest)["statistics"] == {"status": "interrupted", "error": "terminated (SIGTERM)"}


def test_sigterm_is_ctrl_c_for_other_commands_run_from_a_training_rank(tmp_path, capsys, monkeypatch):
    """Only a launched `train` leaves SIGTERM to torchrun: `nextlong chunk` started from inside a rank inherits
    WORLD_SIZE, and is stopped by SIGTERM as by Ctrl-C (one line, exit 143), not ended with no word."""
    import signal

    from nextlong import cli
    from nextlong.commands import chunk as chunk_command

    def stopped(args):
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # the signal would end this test's process
            return 0
        signal.raise_signal(signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    ended = []
    monkeypatch.setattr(chunk_command, "run", stopped)
    monkeypatch.setattr(cli, "_end_torchrun_rank", ended.append)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        assert main(["chunk", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "c.parquet")]) == 143
    finally:
        signal.signal(signal.SIGTERM, before)
    assert ended == [] and capsys.readouterr().err.startswith("nextlong chunk: terminated (SIGTERM)")


@pytest.mark.parametrize("command", ["eval", "heads"])
def test_eval_and_heads_take_trains_attention_option_name(command):
    """`nextlong train --attention sdpa` but `nextlong eval --attn sdpa`: the same option under two names (an outside
    UX audit); eval and heads now take --attention as well."""
    from nextlong.cli import build_parser

    args = build_parser().parse_args([command, "model", "--out", "o", "--attention", "sdpa"])
    assert args.attn == "sdpa"
    assert build_parser().parse_args([command, "model", "--out", "o", "--attn", "eager"]).attn == "eager"
