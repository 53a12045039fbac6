"""`nextlong chunk` and `nextlong tokenize` end to end: outputs, manifest, summary, atomic writes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nextlong.corpus.chunking import chunk_documents
from nextlong.cli import main
from nextlong.schema import CHUNK_INPUT_IDS_FIELD, CHUNK_SCHEMA, TOKENS_SCHEMA
from nextlong.corpus.tokenizer import load_tokenizer
from tests.helpers import corpus_texts



def make_corpus(path: Path, texts, bad_line: int | None = None) -> Path:
    lines = [json.dumps({"text": t, "id": f"doc{i}"}) for i, t in enumerate(texts)]
    if bad_line is not None:
        lines.insert(bad_line - 1, '{"text": "unterminated')
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def sample_texts(n: int = 60) -> list[str]:
    """The first `n` documents of the shipped snapshot, plus a non-ASCII tail on each."""
    return [text + "\ntail é😀" for text in corpus_texts(limit=n)]


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "chunk" in out and "tokenize" in out


def test_chunk_writes_table_manifest_and_summary(tmp_path, capsys):
    texts = sample_texts()
    corpus = make_corpus(tmp_path / "c.jsonl.gz", texts)
    out = tmp_path / "out" / "chunks.parquet"
    rc = main(["chunk", str(corpus), "--out", str(out), "--max-len", "512", "--id-field", "id",
               "--threads", "2", "--batch-size", "7", "--no-progress"])
    assert rc == 0
    table = pq.read_table(out)
    assert table.schema == CHUNK_SCHEMA
    expected = chunk_documents(pa.table({"doc_index": pa.array(range(len(texts)), pa.int64()),
                                         "doc_id": [f"doc{i}" for i in range(len(texts))], "text": texts}),
                               max_len=512)
    assert table.equals(expected)  # batching and threads do not change the result, chunk ids run on
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["command"] == "chunk"
    assert manifest["settings"]["max_len"] == 512 and manifest["settings"]["unit"] == "chars"
    assert manifest["statistics"]["documents"] == len(texts)
    assert manifest["statistics"]["chunks"] == table.num_rows
    summary = capsys.readouterr().out
    assert f"{len(texts):,} documents" in summary and f"{table.num_rows:,} chunks" in summary
    assert "MB/s" in summary and "0 skipped" in summary


def test_error_mid_run_leaves_nothing_half_written(tmp_path, capsys):
    texts = [f"doc {i}\nline" for i in range(50)]
    corpus = make_corpus(tmp_path / "c.jsonl", texts, bad_line=40)
    out = tmp_path / "chunks.parquet"
    rc = main(["chunk", str(corpus), "--out", str(out), "--batch-size", "4", "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"{corpus}:40:" in err and "unterminated string" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]  # no output, no temp file, no manifest

    out.write_bytes(b"previous result")
    assert main(["chunk", str(corpus), "--out", str(out), "--batch-size", "4", "--no-progress"]) == 1
    assert out.read_bytes() == b"previous result"  # an old output is not clobbered by a failed run


@pytest.mark.parametrize("command", ["chunk", "tokenize"])
def test_the_manifest_says_running_while_the_output_is_written(tmp_path, capsys, monkeypatch, command):
    """The manifest was written only at the end: a killed chunk run left none saying what ran. It is now
    "running" first, and a run that fails puts the previous output's manifest back as it was."""
    import nextlong.corpus.chunking as chunking

    corpus = make_corpus(tmp_path / "c.jsonl", [f"doc {i}\nline" for i in range(20)])
    out = tmp_path / "out.parquet"
    manifest = Path(f"{out}.manifest.json")
    seen = []
    real = chunking._run_pipeline

    def watched(*args, **kwargs):
        seen.append(json.loads(manifest.read_text()))
        return real(*args, **kwargs)

    monkeypatch.setattr(chunking, "_run_pipeline", watched)
    args = [command, str(corpus), "--out", str(out), "--no-progress"] + (
        ["--tokenizer", "cl100k_base"] if command == "tokenize" else [])
    assert main(args) == 0
    assert [m["statistics"] for m in seen] == [{"status": "running"}] and seen[0]["command"] == command
    finished = manifest.read_bytes()
    assert json.loads(finished)["statistics"]["documents"] == 20
    bad = make_corpus(tmp_path / "bad.jsonl", [f"doc {i}" for i in range(20)], bad_line=10)
    stamp = manifest.stat().st_mtime_ns
    bad_args = [a if a != str(corpus) else str(bad) for a in args]
    assert main(bad_args) == 1
    assert manifest.read_bytes() == finished and len(seen) == 2  # the failed run's "running" record is gone
    assert manifest.stat().st_mtime_ns == stamp  # put back, not rewritten
    kept = tmp_path / "kept.json"  # a manifest that is a link (a DVC or git-annex checkout) stays one
    manifest.rename(kept)
    manifest.symlink_to(kept)
    assert main(bad_args) == 1
    assert manifest.is_symlink() and manifest.read_bytes() == finished
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no backup left behind
    capsys.readouterr()


def test_a_run_stopped_after_its_output_is_in_place_keeps_no_stale_manifest(tmp_path, capsys, monkeypatch):
    """Stopped between the output's rename and its last manifest, a run must not put back the previous
    run's manifest beside its own output: the record stays "running"."""
    import nextlong.corpus.chunking as chunking

    corpus = make_corpus(tmp_path / "c.jsonl", [f"doc {i}\nline" for i in range(20)])
    out = tmp_path / "out.parquet"
    args = ["chunk", str(corpus), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    real = chunking._run_pipeline

    def stopped_after(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(chunking, "_run_pipeline", stopped_after)
    assert main(args + ["--max-len", "64"]) == 130
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["statistics"] == {"status": "running"} and manifest["settings"]["max_len"] == 64
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    capsys.readouterr()


def test_skip_mode_reports_what_it_skipped(tmp_path, capsys):
    texts = [f"doc {i}" for i in range(20)]
    corpus = make_corpus(tmp_path / "c.jsonl", texts, bad_line=5)
    out = tmp_path / "chunks.parquet"
    rc = main(["chunk", str(corpus), "--out", str(out), "--on-error", "skip", "--no-progress"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "1 skipped" in captured.out
    assert "c.jsonl:5: unterminated string" in captured.err
    assert pq.read_table(out).num_rows == 20
    assert json.loads(Path(f"{out}.manifest.json").read_text())["statistics"]["skipped"] == 1


def test_bad_input_files_exit_with_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert main(["chunk", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "o.parquet"), "--no-progress"]) == 1
    assert "empty.jsonl: empty file" in capsys.readouterr().err
    assert main(["chunk", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o.parquet"), "--no-progress"]) == 1
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()


def test_token_options_need_a_tokenizer(tmp_path):
    corpus = make_corpus(tmp_path / "c.jsonl", ["x"])
    for extra in (["--unit", "tokens"], ["--with-ids"]):
        with pytest.raises(SystemExit) as info:
            main(["chunk", str(corpus), "--out", str(tmp_path / "o.parquet"), *extra])
        assert info.value.code == 2


def load_cl100k():
    return load_tokenizer("cl100k_base")


def test_chunk_with_tokenizer_and_ids(tmp_path, capsys):
    tok = load_cl100k()
    texts = sample_texts(20)
    corpus = make_corpus(tmp_path / "c.jsonl", texts)
    out = tmp_path / "chunks.parquet"
    rc = main(["chunk", str(corpus), "--out", str(out), "--tokenizer", "cl100k_base", "--unit", "tokens",
               "--max-len", "300", "--with-ids", "--no-progress"])
    assert rc == 0
    table = pq.read_table(out)
    assert table.schema == CHUNK_SCHEMA.append(CHUNK_INPUT_IDS_FIELD)
    for text, n, ids in zip(table.column("text").to_pylist(), table.column("num_tokens").to_pylist(),
                            table.column("input_ids").to_pylist()):
        assert ids == list(tok.encode_ordinary(text)) and n == len(ids)
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["statistics"]["tokens"] == sum(table.column("num_tokens").to_pylist())
    assert "tokens" in capsys.readouterr().out


def test_tokenize_command(tmp_path, capsys):
    tok = load_cl100k()
    texts = sample_texts(25)
    corpus = make_corpus(tmp_path / "c.jsonl", texts)
    out = tmp_path / "tokens.parquet"
    rc = main(["tokenize", str(corpus), "--tokenizer", "cl100k_base", "--out", str(out), "--threads", "2",
               "--batch-size", "4", "--no-progress"])
    assert rc == 0
    table = pq.read_table(out)
    assert table.schema == TOKENS_SCHEMA
    assert table.column("doc_index").to_pylist() == list(range(len(texts)))
    assert table.column("doc_id").to_pylist()[3] == "c.jsonl:4"
    for text, ids in zip(texts, table.column("input_ids").to_pylist()):
        assert ids == list(tok.encode_ordinary(text))
    summary = capsys.readouterr().out
    assert "nextlong tokenize:" in summary and "tokens" in summary
    assert json.loads(Path(f"{out}.manifest.json").read_text())["command"] == "tokenize"


def test_all_records_skipped_still_gives_a_valid_empty_table(tmp_path, capsys):
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"body": 1}\n{"text": 2}\n')
    out = tmp_path / "chunks.parquet"
    assert main(["chunk", str(corpus), "--out", str(out), "--on-error", "skip", "--no-progress"]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 0 and table.schema == CHUNK_SCHEMA
    said = capsys.readouterr()
    assert "2 skipped" in said.out
    # an empty table on purpose (one bad shard of many), but not a silent one (an outside UX audit)
    assert said.err.strip().splitlines()[-1] == ("nextlong chunk: warning: no document could be read (every record "
                                                 "was skipped): check the format (--format) and --text-field")


@pytest.mark.parametrize("command", [["chunk"], ["tokenize", "--tokenizer", "cl100k_base"]])
def test_quiet_writes_nothing(tmp_path, capsys, command):
    """--quiet, as in synthesize: no progress bar and no summary; the output is still written."""
    corpus = make_corpus(tmp_path / "c.jsonl", sample_texts(20))
    assert main([*command, str(corpus), "--out", str(tmp_path / "loud.parquet")]) == 0
    assert capsys.readouterr().err  # the bar that --quiet must silence
    assert main([*command, str(corpus), "--out", str(tmp_path / "quiet.parquet"), "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")
    assert pq.read_table(tmp_path / "quiet.parquet").equals(pq.read_table(tmp_path / "loud.parquet"))


def test_a_one_file_output_of_another_command_is_refused(tmp_path, capsys):
    """`nextlong chunk --out` naming tokenize's output replaced it and its manifest silently (an attack on this
    session's output checks); refused in one line now, both left as they were."""
    corpus = make_corpus(tmp_path / "c.jsonl", sample_texts(5))
    out = tmp_path / "t.parquet"
    assert main(["tokenize", str(corpus), "--out", str(out), "--tokenizer", "cl100k_base", "--quiet"]) == 0
    before = out.read_bytes(), (tmp_path / "t.parquet.manifest.json").read_bytes()
    assert main(["chunk", str(corpus), "--out", str(out), "--quiet"]) == 1
    assert capsys.readouterr().err.strip() == (f"nextlong chunk: error: {out}: is the output of a `nextlong tokenize` "
                                               "run (t.parquet.manifest.json); give `nextlong chunk` another --out")
    assert (out.read_bytes(), (tmp_path / "t.parquet.manifest.json").read_bytes()) == before
    assert main(["tokenize", str(corpus), "--out", str(out), "--tokenizer", "cl100k_base", "--quiet"]) == 0


def test_chunk_takes_the_names_synthesize_uses(tmp_path, capsys):
    """`--corpus PATH`, `--chunk-size` and `--chunk-unit`, as synthesize spells them, mean what the positional
    path, --max-len and --unit mean (they were "unrecognized arguments"); no corpus at all is one line."""
    corpus = make_corpus(tmp_path / "c.jsonl", sample_texts(8))
    assert main(["chunk", str(corpus), "--out", str(tmp_path / "a.parquet"), "--max-len", "300", "--unit", "chars",
                 "--quiet"]) == 0
    assert main(["chunk", "--corpus", str(corpus), "--out", str(tmp_path / "b.parquet"), "--chunk-size", "300",
                 "--chunk-unit", "chars", "--quiet"]) == 0
    a, b = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    assert a.num_rows > 8 and a.equals(b)
    capsys.readouterr()
    assert main(["chunk", "--out", str(tmp_path / "n.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].endswith("no corpus given: name its file(s) or folder, or pass --corpus PATH")
    assert not (tmp_path / "n.parquet").exists()
    # the same file named twice read it twice (every document doubled): refused, by name
    assert main(["chunk", str(corpus), "--corpus", str(corpus), "--out", str(tmp_path / "d.parquet")]) == 2
    assert f"{corpus}: the same file as {corpus}, named twice in the corpus" in capsys.readouterr().err
    assert main(["chunk", str(tmp_path), "--corpus", str(corpus), "--out", str(tmp_path / "d.parquet")]) == 2
    assert "named twice in the corpus" in capsys.readouterr().err  # a folder and a file in it
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "link.jsonl").hardlink_to(corpus)
    assert main(["chunk", str(corpus), str(tmp_path / "other"), "--out", str(tmp_path / "d.parquet")]) == 2
    assert "named twice in the corpus" in capsys.readouterr().err  # one file under two names
    assert not (tmp_path / "d.parquet").exists()


@pytest.mark.parametrize("argv, first, second", [
    (["chunk", "C", "--out", "O", "--chunk-size", "128", "--max-len", "256"], "--chunk-size", "--max-len"),
    (["chunk", "C", "--out", "O", "--unit", "tokens", "--chunk-unit", "chars"], "--unit", "--chunk-unit"),
    (["tokenize", "C", "--out", "O", "--input-format", "txt", "--format", "jsonl"], "--input-format", "--format"),
    (["synthesize", "--corpus", "C", "--out", "O", "--knn-neighbors", "4", "--knn-neighbours", "8"],
     "--knn-neighbors", "--knn-neighbours"),
    (["eval", "M", "--attention", "sdpa", "--attn", "eager"], "--attention", "--attn"),
    (["heads", "M", "--attn", "sdpa", "--attention", "eager"], "--attn", "--attention"),
])
def test_an_option_given_under_both_its_spellings_is_refused(tmp_path, capsys, argv, first, second):
    """`--chunk-size 128 --max-len 256` chunked at 256 without a word (argparse lets the last alias win):
    refused before any work; one spelling given twice keeps argparse's rule."""
    argv = [str(tmp_path / a) if a in ("C", "O", "M") else a for a in argv]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"nextlong {argv[0]}: error: {first} and {second} are one option: give it once "
        f"(see nextlong {argv[0]} --help)")
    assert not (tmp_path / "O").exists()


def test_one_spelling_given_twice_keeps_the_last(tmp_path):
    corpus = make_corpus(tmp_path / "c.jsonl", sample_texts(8))
    as_text = tmp_path / "c.data"  # read as the format asked, whatever its name; --format is --input-format
    as_text.write_bytes(corpus.read_bytes())
    for i, option in enumerate(("--format", "--input-format")):
        assert main(["chunk", str(as_text), "--out", str(tmp_path / f"f{i}.parquet"), option, "jsonl", "--quiet"]) == 0
    assert pq.read_table(tmp_path / "f0.parquet").equals(pq.read_table(tmp_path / "f1.parquet"))
    assert main(["chunk", str(corpus), "--out", str(tmp_path / "a.parquet"), "--max-len", "300", "--quiet"]) == 0
    assert main(["chunk", str(corpus), "--out", str(tmp_path / "b.parquet"), "--max-len", "80", "--max-len", "300",
                 "--quiet"]) == 0
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "b.parquet"))
