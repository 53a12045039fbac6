"""Streaming corpus reader: formats, the C++ JSON-lines parser against Python's json, bad input."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import nextlong
from nextlong.corpus.reader import CorpusReader, Document, iter_corpus_batches, read_corpus
from nextlong.errors import CorpusError
from tests.helpers import CORPUS, corpus_head


def write_jsonl(path: Path, records, *, ensure_ascii=False) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in records), encoding="utf-8")
    return path


def tricky_strings(seed: int = 0, n: int = 200) -> list[str]:
    """Strings exercising every escape, astral characters (surrogate pairs), controls, CJK, quotes."""
    rng = random.Random(seed)
    alphabet = ["a", "Z", " ", "\n", "\r", "\t", '"', "\\", "/", "\b", "\f", "\x00", "\x1f", "\x7f", "é", "ß",
                "中", "文", "😀", "𝔘", "\u200b", "\u0301", "\ufeff", "\U0010ffff", "\u2028"]
    out = ["", "plain", "\n", "\n\n", "a\r\nb"]
    for _ in range(n):
        out.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))))
    return out


def test_public_names_are_wired():
    assert nextlong.read_corpus is read_corpus
    assert nextlong.Document is Document
    assert Document._fields == ("doc_index", "doc_id", "text")


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_jsonl_text_matches_python_json(tmp_path, ensure_ascii):
    texts = tricky_strings(seed=int(ensure_ascii))
    records = [{"meta": {"n": [1, 2.5e-3, None, True]}, "text": t, "x": -0.0} for t in texts]
    path = write_jsonl(tmp_path / "a.jsonl", records, ensure_ascii=ensure_ascii)
    docs = list(read_corpus(path))
    assert [d.text for d in docs] == [json.loads(line)["text"] for line in path.read_text("utf-8").split("\n")[:-1]]
    assert [d.doc_index for d in docs] == list(range(len(texts)))
    assert [d.doc_id for d in docs] == [f"a.jsonl:{i + 1}" for i in range(len(texts))]


def test_jsonl_json_syntax_variants_match_python(tmp_path):
    lines = [
        '{"text":"a"}',
        '  { "text" : "b" , "other" : { "deep" : [ [ ], { } , "s\\"}" ] } }  ',
        '{"other":1e10,"text":"c\\u00e9\\ud83d\\ude00","z":false}',
        '{"text":"first","text":"last wins"}',
        '{"text":"\\/\\b\\f\\n\\r\\t\\\\"}',
        '{"n":-12.5E+3,"text":""}',
    ]
    path = tmp_path / "v.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert [d.text for d in read_corpus(path)] == [json.loads(l)["text"] for l in lines]


def test_id_field_string_or_integer(tmp_path):
    path = write_jsonl(tmp_path / "ids.jsonl", [{"id": "doc-α", "text": "x"}, {"id": 42, "text": "y"}, {"id": -7, "text": "z"}])
    assert [d.doc_id for d in read_corpus(path, id_field="id")] == ["doc-α", "42", "-7"]
    bad = write_jsonl(tmp_path / "badid.jsonl", [{"id": 1.5, "text": "x"}])
    with pytest.raises(CorpusError, match=r"badid.jsonl:1: id field 'id' is a number"):
        list(read_corpus(bad, id_field="id"))
    missing = write_jsonl(tmp_path / "noid.jsonl", [{"text": "x"}])
    with pytest.raises(CorpusError, match=r"noid.jsonl:1: record has no id field 'id'"):
        list(read_corpus(missing, id_field="id"))


def test_custom_text_field_crlf_blank_lines_bom_and_no_final_newline(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"body": "one"}\r\n\r\n   \n{"body": "two\\r\\n"}')
    docs = list(read_corpus(path, text_field="body"))
    assert [(d.doc_id, d.text) for d in docs] == [("c.jsonl:1", "one"), ("c.jsonl:4", "two\r\n")]


BAD_LINES = [
    ('{"text": "a"', "expected ',' or '}'"),
    ('{"text": "a",}', "expected a string key"),
    ("[1, 2]", "expected a JSON object"),
    ('{"text": "a"} {"text": "b"}', "unexpected data after the JSON object"),
    ('{"text": "tab\there"}', "control character in string"),
    ('{"text": "\\x41"}', "invalid escape"),
    ('{"text": "\\u12"}', "4 hex digits"),
    ('{"text": "\\ud800"}', "high surrogate"),
    ('{"text": "\\udc00"}', "lone low surrogate"),
    ('{"text": "a", "n": 01}', "expected ',' or '}'"),
    ('{"text": "a", "n": NaN}', "invalid JSON value"),
    ('{"text": "a", "t": tru}', "invalid JSON value"),
    ('{"body": "a"}', "record has no field 'text'"),
    ('{"text": 12}', "field 'text' is a number, expected a string"),
    ('{"text": null}', "field 'text' is null, expected a string"),
    ('{"text": ["a"]}', "field 'text' is an array, expected a string"),
]


@pytest.mark.parametrize("line,expected", BAD_LINES)
def test_bad_record_names_file_line_and_expectation(tmp_path, line, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(CorpusError) as info:
        list(read_corpus(path))
    message = str(info.value)
    assert message.startswith(f"{path}:2: "), message
    assert expected in message
    assert info.value.line == 2


def test_bad_lines_are_bad_for_python_json_too():
    """Our rejections agree with Python's json, except where Python is lax on purpose:
    NaN (a Python extension) and lone surrogates (which cannot be encoded as UTF-8)."""
    for line, _ in BAD_LINES:
        if "NaN" in line or "surrogate" in _:
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        assert not isinstance(value, dict) or not isinstance(value.get("text"), str), line


def test_invalid_utf8_is_an_error_with_line_and_column(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"u.jsonl:2: invalid UTF-8 at byte column 14"):
        list(read_corpus(path))
    for bad in (b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80"):
        path.write_bytes(b'{"text": "' + bad + b'"}\n')
        with pytest.raises(CorpusError, match="invalid UTF-8"):
            list(read_corpus(path))


def test_skip_mode_counts_and_keeps_going(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": 1}\n{broken\n{"text": "\xff"}\n{"text": "b"}\n')
    reader = read_corpus(path, on_error="skip")
    docs = list(reader)
    assert [(d.doc_index, d.doc_id, d.text) for d in docs] == [(0, "mixed.jsonl:1", "a"), (1, "mixed.jsonl:5", "b")]
    assert reader.stats.skipped == 3
    assert reader.stats.documents == 2
    assert reader.stats.bytes == 2
    assert reader.stats.skipped_examples[0].startswith(f"{path}:2: field 'text' is a number")


def test_skip_messages_name_the_file_as_an_error_would(tmp_path):
    """With a folder given, skipped records named the file without its folder ("l.jsonl:2") where the
    same record in raise mode names "<folder>/l.jsonl:2"; both name the file a user can open now."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "l.jsonl").write_bytes(b'{"text": "a"}\n{"text": 1}\n')
    (tmp_path / "sub" / "e.txt").write_bytes(b"")
    (tmp_path / "sub" / "p.parquet").write_bytes(b"")
    with pytest.raises(CorpusError) as raised:
        list(read_corpus(tmp_path / "sub" / "l.jsonl"))
    where = str(raised.value).split(": ")[0]
    assert where == str(tmp_path / "sub" / "l.jsonl:2")
    reader = read_corpus(tmp_path, on_error="skip")
    list(reader)
    assert sorted(e.split(": ")[0] for e in reader.stats.skipped_examples) == sorted(
        [str(tmp_path / "sub" / "e.txt"), where, str(tmp_path / "sub" / "p.parquet")])


def test_empty_missing_and_unknown_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(CorpusError, match=r"empty.jsonl: empty file"):
        list(read_corpus(empty))
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n")
    with pytest.raises(CorpusError, match="only blank lines"):
        list(read_corpus(blank))
    with pytest.raises(CorpusError, match="no such file"):
        list(read_corpus(tmp_path / "missing.jsonl"))
    odd = tmp_path / "data.csv"
    odd.write_text("text\nx\n")
    with pytest.raises(CorpusError, match="unknown corpus file extension"):
        list(read_corpus(odd))
    reader = read_corpus(empty, on_error="skip")
    assert list(reader) == [] and reader.stats.skipped == 1


def test_a_named_pipe_is_refused_as_not_a_regular_file(tmp_path):
    """A FIFO has no size to split by byte ranges, and reading it could block: refused in one line, not
    reported as missing."""
    import os

    fifo = tmp_path / "corpus.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(CorpusError, match="corpus.jsonl: is a FIFO, not a regular file"):
        read_corpus(fifo)


def test_gzip_and_zstd_give_the_same_documents(tmp_path):
    import zstandard

    texts = tricky_strings(seed=3, n=300)
    plain = write_jsonl(tmp_path / "p.jsonl", [{"text": t} for t in texts])
    raw = plain.read_bytes()
    (tmp_path / "p.jsonl.gz").write_bytes(gzip.compress(raw))
    # Two zstd frames back to back, as concatenated dumps have.
    half = len(raw) // 2
    cut = raw.index(b"\n", half) + 1
    (tmp_path / "p.jsonl.zst").write_bytes(zstandard.compress(raw[:cut]) + zstandard.compress(raw[cut:]))
    for name in ("p.jsonl.gz", "p.jsonl.zst"):
        docs = list(read_corpus(tmp_path / name))
        assert [d.text for d in docs] == texts, name
        assert docs[5].doc_id == f"{name}:6"


def test_corrupt_gzip_and_zstd_raise(tmp_path):
    raw = "".join(json.dumps({"text": "x" * 100 + str(i)}) + "\n" for i in range(2000)).encode()
    gz = gzip.compress(raw)
    (tmp_path / "t.jsonl.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(CorpusError, match="t.jsonl.gz"):
        list(read_corpus(tmp_path / "t.jsonl.gz"))
    import zstandard

    zs = zstandard.compress(raw)
    (tmp_path / "t.jsonl.zst").write_bytes(zs[:-20])
    with pytest.raises(CorpusError, match="t.jsonl.zst"):
        list(read_corpus(tmp_path / "t.jsonl.zst"))


def test_parquet_batches_ids_and_bad_rows(tmp_path):
    texts = [f"row {i}\nsecond line" for i in range(2500)]
    pq.write_table(pa.table({"text": texts, "n": list(range(2500))}), tmp_path / "t.parquet", row_group_size=1000)
    reader = CorpusReader(tmp_path / "t.parquet", batch_size=700)
    batches = list(reader.batches())
    assert max(b.num_rows for b in batches) <= 700
    table = pa.Table.from_batches(batches)
    assert table.column("text").to_pylist() == texts
    assert table.column("doc_id")[1234].as_py() == "t.parquet:1234"
    assert list(read_corpus(tmp_path / "t.parquet", id_field="n"))[7].doc_id == "7"

    pq.write_table(pa.table({"text": ["a", None, "c"]}), tmp_path / "nulls.parquet")
    with pytest.raises(CorpusError, match=r"nulls.parquet \(record 1\): row 1: column 'text' is null"):
        list(read_corpus(tmp_path / "nulls.parquet"))
    reader = read_corpus(tmp_path / "nulls.parquet", on_error="skip")
    assert [d.text for d in reader] == ["a", "c"] and reader.stats.skipped == 1

    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(CorpusError, match="has type int64, expected a string"):
        list(read_corpus(tmp_path / "ints.parquet"))
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "nocol.parquet")
    with pytest.raises(CorpusError, match="no column 'text'"):
        list(read_corpus(tmp_path / "nocol.parquet"))
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "norows.parquet")
    with pytest.raises(CorpusError, match="no rows"):
        list(read_corpus(tmp_path / "norows.parquet"))


def test_parquet_invalid_utf8_is_found(tmp_path):
    arr = pa.Array.from_buffers(pa.string(), 2, [None, pa.py_buffer(bytes([0, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0])),
                                                 pa.py_buffer(b"ok\xff\xfe")])
    pq.write_table(pa.table({"text": arr}), tmp_path / "bad.parquet")
    with pytest.raises(CorpusError, match="row 1: invalid UTF-8"):
        list(read_corpus(tmp_path / "bad.parquet"))


def test_directory_of_txt_and_mixed_files_in_sorted_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee\n")
    (tmp_path / "sub" / "a.txt").write_text("ay")
    (tmp_path / "a.jsonl").write_text('{"text": "json"}\n')
    (tmp_path / ".hidden.txt").write_text("no")
    (tmp_path / "notes.md").write_text("ignored")
    (tmp_path / "out.parquet.manifest.json").write_text("{}")
    reader = read_corpus(tmp_path)
    docs = list(reader)
    assert [(d.doc_index, d.doc_id, d.text) for d in docs] == [
        (0, "a.jsonl:1", "json"), (1, "b.txt", "bee\n"), (2, "sub/a.txt", "ay")]
    assert reader.stats.files == 3
    (tmp_path / "c.txt").write_bytes(b"line one\nbad \xff byte")
    with pytest.raises(CorpusError, match=r"c.txt:2: invalid UTF-8"):
        list(read_corpus(tmp_path))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CorpusError, match="holds no corpus files"):
        list(read_corpus(tmp_path / "empty_dir"))


def test_list_of_paths_and_batch_schema(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": str(i)} for i in range(5)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "b" + str(i)} for i in range(3)])
    batches = list(iter_corpus_batches([a, b], batch_size=2))
    assert all(batch.schema.names == ["doc_index", "doc_id", "text"] for batch in batches)
    assert [batch.num_rows for batch in batches] == [2, 2, 1, 2, 1]
    table = pa.Table.from_batches(batches)
    assert table.column("doc_index").to_pylist() == list(range(8))
    assert table.column("doc_id").to_pylist()[5] == "b.jsonl:1"


def test_real_text_round_trip_through_jsonl(tmp_path):
    """The shipped snapshot rewritten with \\u escapes reads back identical (ids and texts)."""
    names, texts = zip(*corpus_head(limit=120))
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": n, "text": t} for n, t in zip(names, texts)], ensure_ascii=True)
    docs = list(read_corpus(path, id_field="id"))
    assert [d.text for d in docs] == list(texts)
    assert [d.doc_id for d in docs] == list(names)


def test_shipped_snapshot_reads_like_python_json():
    """The .jsonl.gz snapshot itself, through the native reader."""
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        expected = [json.loads(line) for line in f]
    docs = list(read_corpus(CORPUS, id_field="id"))
    assert [(d.doc_id, d.text) for d in docs] == [(r["id"], r["text"]) for r in expected]


def test_format_override_and_argument_checks(tmp_path):
    path = tmp_path / "dump.data"
    path.write_bytes(gzip.compress(b'{"text": "zipped"}\n'))
    assert [d.text for d in read_corpus(path, format="jsonl.gz")] == ["zipped"]
    with pytest.raises(ValueError, match="on_error"):
        read_corpus(path, on_error="ignore")
    with pytest.raises(ValueError, match="format"):
        read_corpus(path, format="csv")


def test_reader_iterates_lazily_in_bounded_batches(tmp_path):
    """A large file is read a batch at a time: the first document arrives before the rest is parsed."""
    path = tmp_path / "big.jsonl"
    with open(path, "w") as fh:
        for i in range(20000):
            fh.write(json.dumps({"text": f"document {i} " + "x" * 200}) + "\n")
        fh.write("{not json}\n")  # an error at the very end
    reader = CorpusReader(path, batch_size=1000)
    batches = reader.batches()
    first = next(batches)
    assert first.num_rows == 1000 and reader.stats.documents == 1000
    with pytest.raises(CorpusError, match=r"big.jsonl:20001"):
        for _ in batches:
            pass


def _has_surrogate(value) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


def test_parser_agrees_with_python_json_on_mutated_records(tmp_path):
    """Fuzz: random edits of valid records. A line must be accepted exactly when Python's json
    accepts it as an object with a string `text` (minus Python's two laxities: NaN/Infinity and
    lone surrogates), and then give the same text."""
    rng = random.Random(1234)
    seeds = [json.dumps({"text": t, "id": i, "meta": {"a": [1, -2.5e3, None, True, False, "s\\\"q"]}},
                        ensure_ascii=bool(i % 2))
             for i, t in enumerate(tricky_strings(seed=11, n=40))]
    inserts = list('{}[]",:\\/ \t0123456789-+.eEtrufalsn\u00e9\ud7ff😀ux') + ["\\u00", "\\ud83d", "\\ude00", '"text"']
    lines = ['{"text": "first line is valid"}']
    while len(lines) < 3000:
        line = rng.choice(seeds)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(line) + 1)
            op = rng.random()
            if op < 0.4:
                line = line[:pos] + line[pos + 1:]
            elif op < 0.8:
                line = line[:pos] + rng.choice(inserts) + line[pos:]
            else:
                line = line[:pos] + line[pos:][::-1][:3][::-1] + line[pos:]
        if line.strip(" \t\r"):
            lines.append(line)
    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    expected: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        try:
            value = json.loads(line, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict) and isinstance(value.get("text"), str) and not _has_surrogate(value):
            expected[f"fuzz.jsonl:{number}"] = value["text"]
    reader = read_corpus(path, on_error="skip")
    got = {d.doc_id: d.text for d in reader}
    assert got == expected
    assert reader.stats.skipped == len(lines) - len(expected)
    assert 300 < len(expected) < 2700  # the fuzz exercises both outcomes


# --- one huge line from a small compressed file (audit s11 E), long ids (F) -------------------------


def _one_long_line(path: Path, megabytes: int, fmt: str) -> Path:
    """An unterminated JSON string `megabytes` MiB long, no newline: a few hundred KB compressed."""
    block = b"a" * (1 << 20)
    if fmt == "gz":
        import zlib

        co = zlib.compressobj(1, zlib.DEFLATED, 31)
        path.write_bytes(b"".join([co.compress(b'{"text":"')] + [co.compress(block) for _ in range(megabytes)]
                                  + [co.flush()]))
    else:
        zstandard = pytest.importorskip("zstandard")
        path.write_bytes(zstandard.ZstdCompressor(level=1).compress(b'{"text":"' + block * megabytes))
    return path


@pytest.mark.parametrize("fmt", ["gz", "zst"])
def test_a_line_over_256_mib_is_refused_naming_the_line(tmp_path, fmt):
    """The reader rescanned the pending line after every 1 MiB read (a 1 GiB line: over 100 s) and
    buffered it whole; now each byte is scanned once and a line stops at 256 MiB."""
    path = _one_long_line(tmp_path / f"bomb.jsonl.{fmt}", 257, fmt)
    with pytest.raises(CorpusError) as exc:
        list(CorpusReader(path).batches())
    message = str(exc.value)
    assert "\n" not in message and f"{path}:1: line longer than 256 MiB" in message, message


def test_a_terminated_line_just_past_256_mib_is_refused_too(tmp_path):
    """The limit was checked only while no newline had been read: a line of 256 MiB and a few bytes whose
    newline came in the same read passed. Now a terminated line is held to it as well."""
    import zlib

    limit = 256 << 20
    co = zlib.compressobj(1, zlib.DEFLATED, 31)
    head = b'{"text":"'
    body = b"a" * (limit + 1 - len(head) - 2)  # the line, without its newline, is limit + 1 bytes
    path = tmp_path / "just-over.jsonl.gz"
    path.write_bytes(co.compress(head) + co.compress(body) + co.compress(b'"}\n') + co.flush())
    with pytest.raises(CorpusError, match="line longer than 256 MiB"):
        list(CorpusReader(path).batches())


def test_long_ids_end_a_batch_like_long_texts(tmp_path):
    """Batches were cut by text bytes only, so ids of 2 GiB in one batch overflowed Arrow's int32 offsets
    (ArrowInvalid: negative offsets); ids now count towards batch_bytes too."""
    path = write_jsonl(tmp_path / "ids.jsonl", [{"text": "", "id": f"{i:04d}" + "x" * 600} for i in range(20)])
    batches = list(CorpusReader(path, id_field="id", batch_bytes=1000).batches())
    assert max(b.num_rows for b in batches) <= 2
    assert [d[:4] for b in batches for d in b.column(1).to_pylist()] == [f"{i:04d}" for i in range(20)]


def test_a_parquet_file_under_another_name_is_refused_before_reading(tmp_path):
    """Named .jsonl it was read line by line: "invalid UTF-8 at byte 8", and with on_error="skip" an empty
    corpus and exit 0. Now one error before any document, whatever on_error, saying what it is."""
    from nextlong.corpus.split import plan_splits

    pq.write_table(pa.table({"text": ["hello world"] * 10}), tmp_path / "p.jsonl")
    for on_error in ("raise", "skip"):
        with pytest.raises(CorpusError, match=r"p\.jsonl: a Parquet file \(it starts with PAR1\), not jsonl as its "
                                              r"name says: rename it to end in \.parquet"):
            CorpusReader(tmp_path / "p.jsonl", on_error=on_error)
    with pytest.raises(CorpusError, match="not the format txt asked for: pass --format parquet"):
        CorpusReader(tmp_path, format="txt")
    with pytest.raises(CorpusError, match="a Parquet file"):
        plan_splits(tmp_path)  # what synthesize reads by
    assert [d.text for d in CorpusReader(tmp_path / "p.jsonl", format="parquet")] == ["hello world"] * 10


def test_a_text_file_of_json_lines_is_read_as_asked_with_a_warning(tmp_path, capsys):
    from nextlong.corpus.split import plan_splits

    write_jsonl(tmp_path / "j.txt", [{"text": f"doc {i} " + "word " * 2000} for i in range(3)])  # lines over 4 KB
    (tmp_path / "code.txt").write_text('{"a": 1,\n "b": 2}\n')  # JSON, but not one object per line: no warning
    (tmp_path / "one.txt").write_text('{"text": "a single line"}\n')  # one line: nothing to split, no warning
    docs = list(CorpusReader(tmp_path / "j.txt"))
    assert len(docs) == 1 and docs[0].text.startswith('{"text": "doc 0 word')
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "j.txt: read as plain text, one document per file, but its lines are " \
        "JSON objects; name it .jsonl (or pass --format jsonl)" in err
    list(CorpusReader(tmp_path / "code.txt")), list(CorpusReader(tmp_path / "one.txt"))
    assert capsys.readouterr().err == ""
    plan_splits(tmp_path)
    assert "j.txt: read as plain text" in capsys.readouterr().err
