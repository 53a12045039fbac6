"""Untrusted inputs, fourth round: what an attacker found in inputs the earlier rounds did not cover.

1. Parquet corpora: invalid UTF-8 in the --id-field column passed into the chunk table (later commands
   crashed decoding it); a column name given twice was a KeyError traceback.
2. --seed: a negative or huge seed failed deep in a run (numpy, torch) or was accepted; the Python API
   took a negative seed too.
3. ACER / eval prompt templates: a field the template is never given ({n} in rank.txt) was a KeyError
   at render time.
4. `plot`: NaN, Infinity or values near float's limit in metrics.jsonl crashed matplotlib.
5. A small .tiktoken.gz that expands to hundreds of MiB of newlines took gigabytes of memory.

Each is refused with one line naming the file (and line, row or option), before work starts."""

from __future__ import annotations

import base64
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import numpy as np
import pytest

import nextlong
from nextlong.corpus import tokenizer as tokenizer_module
from nextlong.corpus.tokenizer import Tokenizer
from nextlong.errors import TokenizerError, UsageError
from nextlong.synthesis.acer.config import AcerConfig
from nextlong.synthesis.acer.templates import load_templates
from nextlong.synthesis.config import SynthesisConfig
from nextlong.train.config import TrainConfig
from tests.helpers import assert_one_line_error, run_cli, write_jsonl

# --- 1. Parquet corpora ---------------------------------------------------------------------------


def test_parquet_id_column_with_invalid_utf8_is_refused(tmp_path, capsys):
    ids = pa.array([b"ok", b"\xff\xfeab"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"text": ["hello world", "second"], "id": ids}), tmp_path / "c.parquet")
    out = tmp_path / "chunks.parquet"
    code, _, err = run_cli(["chunk", tmp_path / "c.parquet", "--id-field", "id", "--out", out, "--quiet"], capsys)
    line = assert_one_line_error(err, "chunk")
    assert code == 1 and "c.parquet" in line and "row 1: invalid UTF-8 in id column 'id'" in line
    assert not out.exists()
    # --on-error skip drops the record, keeps the good one
    code, _, err = run_cli(["chunk", tmp_path / "c.parquet", "--id-field", "id", "--out", out, "--quiet",
                            "--on-error", "skip"], capsys)
    assert code == 0, err
    assert pq.read_table(out).column("doc_id").to_pylist() == ["ok"]


def test_parquet_column_named_twice_is_refused(tmp_path, capsys):
    table = pa.Table.from_arrays([pa.array(["a", "b"]), pa.array(["c", "d"])], names=["text", "text"])
    pq.write_table(table, tmp_path / "dup.parquet")
    code, _, err = run_cli(["chunk", tmp_path / "dup.parquet", "--out", tmp_path / "o.parquet", "--quiet"], capsys)
    line = assert_one_line_error(err, "chunk")
    assert code == 1 and "dup.parquet: column 'text' appears 2 times" in line


# --- 2. --seed ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["-1", str(2 ** 63), "1180591620717411303424"])
@pytest.mark.parametrize("command", ["synthesize", "train", "acer", "eval", "heads"])
def test_seed_out_of_range_is_a_usage_error(tmp_path, capsys, command, seed):
    corpus = write_jsonl(tmp_path / "c.jsonl", [("d1", "some text")])
    out = tmp_path / "out"
    argv = {"synthesize": ["synthesize", "--corpus", corpus],
            "train": ["train", "demo"],
            "acer": ["acer", "--corpus", corpus, "--model", tmp_path, "--generate-questions", "1"],
            "eval": ["eval", tmp_path],
            "heads": ["heads", tmp_path]}[command]
    code, _, err = run_cli(argv + ["--out", out, f"--seed={seed}"], capsys)
    line = assert_one_line_error(err, command)
    assert code == 2 and "--seed" in line and "2**63" in line
    assert not out.exists()


def test_python_api_refuses_a_negative_seed_before_work(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [("d1", "some text")])
    with pytest.raises(UsageError, match=r"--seed must be between 0 and 2\*\*63-1"):
        nextlong.synthesize(corpus, tmp_path / "out", seed=-1)
    assert not (tmp_path / "out").exists()
    for config in (TrainConfig(data=["d"], out=str(tmp_path / "r"), seed=-1),
                   AcerConfig(out=str(tmp_path / "a"), corpus=str(corpus), model="m", generate_questions=1,
                              seed=2 ** 64)):
        with pytest.raises(UsageError, match="--seed"):
            config.validate()
    SynthesisConfig(out=str(tmp_path / "o"), corpus=str(corpus), seed=2 ** 63 - 1).validate()  # the largest
    SynthesisConfig(out=str(tmp_path / "o"), corpus=str(corpus), seed=np.int64(3)).validate()  # numpy integers too


# --- 3. prompt templates --------------------------------------------------------------------------


def test_acer_template_with_a_field_it_is_never_given_is_refused(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", [("d1", "some text")])
    (tmp_path / "q.jsonl").write_text('{"question": "q?", "answer": "a"}\n')
    (tmp_path / "pr").mkdir()
    (tmp_path / "pr" / "rank.txt").write_text("Passage: {passage}\nQ: {question} {n}\nAnswer:")
    out = tmp_path / "out"
    code, _, err = run_cli(["acer", "--corpus", corpus, "--model", tmp_path / "no-model", "--questions",
                            tmp_path / "q.jsonl", "--prompts", tmp_path / "pr", "--out", out], capsys)
    line = assert_one_line_error(err, "acer")
    assert code == 2 and "rank.txt" in line and "{n}" in line and "{passage}, {question}" in line
    assert not out.exists()


def test_rag_prompt_templates_are_checked_the_same_way(tmp_path):
    """eval --rag-prompts reads its templates with load_templates too."""
    (tmp_path / "sample.txt").write_text("Question: {question}\n{passages}\n")
    with pytest.raises(UsageError, match=r"sample\.txt: the sample prompt template uses \{passages\}"):
        load_templates(tmp_path)
    (tmp_path / "sample.txt").write_text("Use \\frac{a}{b} and {x} in code.\nQuestion: {question}\n")
    assert load_templates(tmp_path)["sample"].text.startswith("Use \\frac{a}{b}")  # other braces: literal text
    # passage.txt may number its passage; braces that are no field name stay literal text
    (tmp_path / "sample.txt").unlink()
    (tmp_path / "passage.txt").write_text('[{n}] {"kind": "passage"}\n{passage}\n')
    assert load_templates(tmp_path)["passage"].pieces()[0] == ("text", "[")


# --- 4. plot --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows, where, what", [
    ('{"step": 1, "loss": 1e308, "lr": -1e308}\n{"step": 2, "loss": -1e308, "lr": 1e308}\n', ":1:", "loss 1e+308"),
    ('{"step": 1, "loss": 2.0, "lr": 0.1}\n{"step": 2, "loss": NaN, "lr": 0.1}\n', ":2:", "loss nan"),
    ('{"step": 1, "loss": 2.0, "lr": Infinity}\n', ":1:", "lr inf"),
    ('{"step": 1, "loss": 2.0, "lr": 0.1}\n{"step": 1' + "0" * 400 + ', "loss": 1, "lr": 0.1}\n', ":2:", "step 10"),
])
def test_plot_refuses_values_it_cannot_draw(tmp_path, capsys, rows, where, what):
    pytest.importorskip("matplotlib")
    (tmp_path / "metrics.jsonl").write_text(rows)
    code, _, err = run_cli(["plot", tmp_path], capsys)
    line = assert_one_line_error(err, "plot")
    assert code == 1 and f"metrics.jsonl{where} {what}" in line
    assert not (tmp_path / "loss.png").exists()


def test_plot_refuses_a_nan_row_but_draws_what_the_trainer_writes(tmp_path, capsys):
    """The trainer logs a non-finite loss as null (a skipped step): that, and large finite values, still draw."""
    pytest.importorskip("matplotlib")
    rows = [{"step": 1, "loss": 1e30, "lr": 1e-4, "tokens": 10},
            {"step": 2, "loss": None, "lr": 1e-4, "tokens": 20, "skipped": True},
            {"step": 3, "loss": -1e300, "lr": 1e300, "tokens": 30}]
    lines = [json.dumps(r, allow_nan=False) + "\n" for r in rows]
    (tmp_path / "metrics.jsonl").write_text("".join(lines) + '{"step": 4, "loss": NaN, "lr": 1e-4}\n')
    code, _, err = run_cli(["plot", tmp_path], capsys)
    assert code == 1 and "metrics.jsonl:4: loss nan" in assert_one_line_error(err, "plot")
    (tmp_path / "metrics.jsonl").write_text("".join(lines))
    code, _, err = run_cli(["plot", tmp_path], capsys)
    assert code == 0, err
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- 5. .tiktoken.gz ------------------------------------------------------------------------------


def test_tiktoken_gz_newline_bomb_is_refused(tmp_path, capsys):
    bomb = tmp_path / "bomb.tiktoken.gz"
    bomb.write_bytes(gzip.compress(b"\n" * (5 << 20), 9))  # about 5 KiB, 5 Mi lines
    corpus = write_jsonl(tmp_path / "c.jsonl", [("d1", "hello")])
    code, _, err = run_cli(["tokenize", corpus, "--tokenizer", bomb, "--out", tmp_path / "t.parquet"], capsys)
    line = assert_one_line_error(err, "tokenize")
    assert code == 1 and "bomb.tiktoken.gz: more than 4,194,304 lines" in line


def test_tiktoken_gz_is_decompressed_within_the_file_limit(tmp_path, monkeypatch):
    ranks = "".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)).encode()
    (tmp_path / "r.tiktoken.gz").write_bytes(gzip.compress(ranks[:1000]) + b"\0\0" + gzip.compress(ranks[1000:]))
    (tmp_path / "r.tiktoken").write_bytes(ranks)
    # several members, zero padding between them: read as gzip.decompress reads them
    assert (Tokenizer.from_tiktoken(tmp_path / "r.tiktoken.gz").fingerprint
            == Tokenizer.from_tiktoken(tmp_path / "r.tiktoken").fingerprint)
    (tmp_path / "cut.tiktoken.gz").write_bytes(gzip.compress(ranks)[:-20])
    with pytest.raises(TokenizerError, match=r"cut\.tiktoken\.gz: gzip data ends before its end-of-stream marker"):
        Tokenizer.from_tiktoken(tmp_path / "cut.tiktoken.gz")
    monkeypatch.setattr(tokenizer_module, "_FILE_LIMIT", len(ranks) - 1)
    with pytest.raises(TokenizerError, match=r"r\.tiktoken\.gz: decompresses to more than"):
        Tokenizer.from_tiktoken(tmp_path / "r.tiktoken.gz")
