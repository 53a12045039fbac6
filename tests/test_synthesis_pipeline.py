"""End to end: `nextlong.synthesize` / `nextlong synthesize` on real text for all five methods, with
the output invariants, determinism, resume after an interruption, stage mismatches and bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from nextlong.errors import NextlongError, StageMismatchError
from tests.helpers import corpus_head, get_tokenizer, read_by, repeated_id_corpus, write_jsonl


L = 2048
FAST = dict(embedder="hashed-tfidf:256", chunk_size=512, target_length=L, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", corpus_head(250_000))


def read_output(out):
    return pq.read_table(out / "data")


def chunk_lookup(out):
    t = pq.read_table(out / "chunks" / "chunks.parquet", columns=["doc_id", "chunk_index", "text", "input_ids"])
    return {(d, i): (text, np.asarray(ids, np.uint32)) for d, i, text, ids in
            zip(*(t.column(c).to_pylist() for c in ("doc_id", "chunk_index", "text", "input_ids")))}


def check_invariants(out, method, tok, sep="\n"):
    from nextlong.synthesis.assemble import OUTPUT_SCHEMA

    table = read_output(out)
    assert table.schema.equals(OUTPUT_SCHEMA), table.schema
    chunks = chunk_lookup(out)
    stream = []  # standard, iclm: (doc, chunk index) of every row's segments, rows in order
    with_negatives = 0
    rows = table.to_pylist()
    assert rows, "no output"
    for row in rows:
        ids = np.asarray(row["input_ids"], np.uint32)
        segs = row["segments"]
        assert ids.size == L and row["method"] == method
        assert segs[0]["start"] == 0 and segs[-1]["end"] == L
        assert all(a["end"] == b["start"] for a, b in zip(segs, segs[1:])), "segments tile input_ids"
        keys = [(s["doc_id"], s["chunk_index"]) for s in segs]
        if method != "quest":  # quest oversamples a small key group: its documents recur
            assert len(set(keys)) == len(keys), "no chunk used twice"
        for k, seg in enumerate(segs):
            text, cids = chunks[(seg["doc_id"], seg["chunk_index"])]
            got = ids[seg["start"]:seg["end"]]
            full = cids  # since 2026-12-06 a chunk's ids are its text and the separator tokenized together
            if k < len(segs) - 1:
                np.testing.assert_array_equal(got, full)
                if k < 3:
                    assert tok.decode(got) == text + sep
                    assert got.tolist() == tok.encode_ordinary(text + sep).tolist()
            else:  # up to the final truncation
                np.testing.assert_array_equal(got, full[: got.size])
        assert segs[0]["doc_id"] == row["anchor_doc_id"] and segs[0]["role"] == "anchor"
        if method == "nextlong":
            anchors = [s for s in segs if s["role"] == "anchor"]
            assert {s["doc_id"] for s in anchors} == {row["anchor_doc_id"]}
            assert [s["chunk_index"] for s in anchors] == list(range(len(anchors))), "meta-chunks in order"
            negs = [s for s in segs if s["role"] == "negative"]
            assert all(s["doc_id"] != row["anchor_doc_id"] for s in negs), "no negative from own doc"
            # no negatives only when the anchor document alone fills L (k = 0)
            assert negs or segs[-1]["role"] == "anchor"
            with_negatives += bool(negs)
        else:
            assert {s["role"] for s in segs} == {"anchor"}
            docs = [s["doc_id"] for s in segs]
            order = [d for i, d in enumerate(docs) if i == 0 or docs[i - 1] != d]
            if method != "quest":
                assert len(order) == len(set(order)), "a document's chunks are contiguous and used once"
            if method in ("standard", "iclm"):  # one stream: a document may go on in the next row (--overflow carry)
                stream.extend((s["doc_id"], s["chunk_index"]) for s in segs)
                continue
            runs = []  # each run of one document's segments is the whole document from its start
            for i, seg in enumerate(segs):
                if i == 0 or segs[i - 1]["doc_id"] != seg["doc_id"]:
                    runs.append([])
                runs[-1].append(seg["chunk_index"])
            assert all(idx == list(range(len(idx))) for idx in runs)
    if method == "nextlong":
        assert with_negatives > 0
    if method in ("standard", "iclm"):  # the rows in order hold each document once, from its start, in order
        runs = {}
        for i, (doc, idx) in enumerate(stream):
            assert doc not in runs or stream[i - 1][0] == doc, "each document used once, in one run"
            runs.setdefault(doc, []).append(idx)
        assert all(idx == list(range(len(idx))) for idx in runs.values())
    return table


@pytest.mark.parametrize("method", ["nextlong", "standard", "knn", "iclm", "quest"])
def test_all_methods_produce_valid_output(corpus, tmp_path, method):
    from nextlong import synthesize

    out = tmp_path / method
    manifest = synthesize(corpus, out, method=method, num_samples=4, **read_by(method, FAST))
    table = check_invariants(out, method, get_tokenizer())
    assert table.num_rows == 4
    stats = manifest["statistics"]
    assert stats["documents_built"] == 4
    assert stats["source_documents_used"] == len({s["doc_id"] for row in table.to_pylist() for s in row["segments"]})
    assert json.loads((out / "manifest.json").read_text())["settings"]["method"] == method
    assert "versions" in manifest and manifest["versions"]["nextlong"]
    if method == "nextlong":
        assert stats["negatives_per_meta_chunk_mean"] > 0
        # mined negatives are more similar to their meta-chunk than random chunk pairs
        assert stats["anchor_negative_similarity_mean"] > stats["random_chunk_pair_similarity_mean"] + 0.1
        assert stats["mean_dependency_distance_tokens"] > 0
    else:
        assert stats["mean_dependency_distance_tokens"] in (0, None)


@pytest.mark.parametrize("method", ["standard", "iclm"])
def test_stream_baselines_carry_the_rest_of_a_document_into_the_next_row(corpus, tmp_path, method):
    """--overflow carry (default): the rows hold the stream of documents whole, each chunk once, a document
    cut at L going on in the next row, so every chunk is used but those of the short tail (the documents
    the manifest counts as left over); drop starts every row at a document's start, as before, and uses
    fewer of the corpus's chunks."""
    from nextlong import synthesize
    from nextlong.commands.inspect import render

    rows = {}
    for overflow in ("carry", "drop"):
        out = tmp_path / overflow
        manifest = synthesize(corpus, out, method=method, overflow=overflow, **read_by(method, FAST))
        table = check_invariants(out, method, get_tokenizer())
        rows[overflow] = table.to_pylist()
        used = {(s["doc_id"], s["chunk_index"]) for row in rows[overflow] for s in row["segments"]}
        missing = set(chunk_lookup(out)) - used
        left = manifest["statistics"]["dropped_too_short"]
        whole = {d for d, _ in missing} - {d for d, _ in used}  # documents no row holds any of
        assert left == len(whole) and manifest["statistics"]["source_documents_used"] + left == len(
            {d for d, _ in chunk_lookup(out)}), (left, len(whole))  # used and left over: each document once
        if overflow == "carry":
            assert 0 < left <= 3, left
            assert any(row["segments"][0]["chunk_index"] > 0 for row in rows[overflow]), "no row continues one"
            # inspect names a continued row's first document as such, not as an anchor
            going_on = next(i for i, row in enumerate(rows[overflow]) if row["segments"][0]["chunk_index"] > 0)
            first = rows[overflow][going_on]["segments"][0]
            assert (f"method {method}, first document {first['doc_id']!r} (going on from the previous document, "
                    f"from its chunk {first['chunk_index']})") in render(out, sample=going_on)
            assert f"method {method}, first document " in render(out, sample=0)
            assert "going on from" not in render(out, sample=0) and "anchor document" not in render(out, sample=0)
        else:
            assert all(row["segments"][0]["chunk_index"] == 0 for row in rows[overflow])
        rows[overflow + " unused"] = len(missing)
    assert len(rows["carry"]) > len(rows["drop"]) and rows["carry unused"] < rows["drop unused"] / 3, (
        len(rows["carry"]), len(rows["drop"]), rows["carry unused"], rows["drop unused"])


def test_fixed_k_uses_the_paper_formula(corpus, tmp_path):
    from nextlong import synthesize
    from nextlong.synthesis.negatives import negatives_per_meta_chunk
    from nextlong.synthesis.store import ChunkStore

    out = tmp_path / "k"
    manifest = synthesize(corpus, out, negatives="fixed-k", num_samples=3, **FAST)
    store = ChunkStore.load(out / "chunks" / "store")
    E = manifest["settings"]["chars_per_token_used"]
    assert E == pytest.approx(store.chars_per_token())
    # E measured from the chunk table itself (the check above compared the store with itself: a 30% error in it
    # passed): characters of every chunk's text over its tokens
    chunks = pq.read_table(out / "chunks" / "chunks.parquet", columns=["text", "num_tokens"]).to_pydict()
    assert E == pytest.approx(sum(len(t) for t in chunks["text"]) / sum(chunks["num_tokens"]), rel=1e-9)
    doc_of = {d: i for i, d in enumerate(store.doc_ids)}
    for row in read_output(out).to_pylist():
        d = doc_of[row["anchor_doc_id"]]
        k = negatives_per_meta_chunk(L, E, int(store.doc_chars[d]), int(store.doc_num_chunks[d]), 512)
        # interleaving: before the final cut every meta-chunk is followed by exactly k negatives
        roles = [s["role"] for s in row["segments"]]
        runs, count = [], None
        for r in roles:
            if r == "anchor":
                if count is not None:
                    runs.append(count)
                count = 0
            else:
                count += 1
        assert all(n == k for n in runs), (runs, k)
        assert count <= k


def test_fill_reaches_target_with_fewer_tokens_than_fixed_k(corpus, tmp_path):
    from nextlong import synthesize

    m = synthesize(corpus, tmp_path / "fill", negatives="fill", num_samples=3, **FAST)
    check_invariants(tmp_path / "fill", "nextlong", get_tokenizer())
    k = synthesize(corpus, tmp_path / "fixed", negatives="fixed-k", num_samples=3, **FAST)
    assert m["statistics"]["negatives_per_meta_chunk_mean"] < k["statistics"]["negatives_per_meta_chunk_mean"]


@pytest.mark.parametrize("method", ["nextlong", "standard"])
def test_a_row_is_the_tokenization_of_its_own_text(corpus, tmp_path, method):
    """Decoding a row and encoding the text again gives the row's ids (up to the cut at L): piece boundaries
    leave no mark in the tokens. Before 2026-12-06 each chunk was tokenized alone and the separator's ids
    appended, so a chunk ending in "." before "\n" gave "." and "\n" where the text has ".\n": rows
    re-encoded to 8,105-8,180 tokens of 8,192 in a demo run, and the ids marked where every piece began."""
    from nextlong import synthesize

    tok = get_tokenizer()
    synthesize(corpus, tmp_path / method, method=method, num_samples=3, **read_by(method, dict(FAST, negatives="fill")))
    for ids in read_output(tmp_path / method).column("input_ids").to_pylist():
        again = tok.encode_ordinary(tok.decode(ids)).tolist()
        assert again[:L - 2] == ids[:L - 2]  # the last piece is cut mid-text: its last token may differ


def _files(out):
    return {p.name: p.read_bytes() for p in sorted((out / "data").glob("part-*.parquet"))}


def test_same_seed_same_bytes_and_resume_after_interrupt(corpus, tmp_path, monkeypatch):
    from nextlong import synthesize
    from nextlong.synthesis import writers

    opts = dict(FAST, num_samples=7, shard_size=2, seed=5)
    synthesize(corpus, tmp_path / "a", **opts)
    reference = _files(tmp_path / "a")
    assert len(reference) >= 4

    # a kill in the middle of the third output shard: the run stops, finished shards stay
    from nextlong.synthesis.stages import AssembleStage

    real_call, calls = AssembleStage.__call__, {"n": 0}

    def dying(self, block):
        calls["n"] += 1
        if calls["n"] == 3:
            out = real_call(self, block)
            # a torn write under the final name (no completion record): must never count as done
            (tmp_path / "b" / "assemble" / "part-00002.parquet").write_bytes(b"PAR1 half")
            raise KeyboardInterrupt
        return real_call(self, block)

    monkeypatch.setattr(AssembleStage, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        synthesize(corpus, tmp_path / "b", **opts)
    monkeypatch.setattr(AssembleStage, "__call__", real_call)
    finished = sorted((tmp_path / "b" / "assemble" / "_done").glob("part-*.json"))
    assert [p.name for p in finished] == ["part-00000.json", "part-00001.json"]
    assert not (tmp_path / "b" / "assemble" / "_done.json").exists() and not _files(tmp_path / "b")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "b" / "assemble").glob("part-0000[01].parquet")}
    for done_stage in ("chunks/chunks.parquet", "embeddings/embeddings.npy", "units/part-00000.parquet"):
        before[tmp_path / "b" / done_stage] = (tmp_path / "b" / done_stage).stat().st_mtime_ns
    synthesize(corpus, tmp_path / "b", **opts)
    assert _files(tmp_path / "b") == reference
    for p, t in before.items():
        assert p.stat().st_mtime_ns == t, "finished stages and shards are kept, not redone"

    # a run that asked for fewer documents, then more, ends with the same bytes too
    synthesize(corpus, tmp_path / "c", **dict(opts, num_samples=3))
    synthesize(corpus, tmp_path / "c", **opts)
    assert _files(tmp_path / "c") == reference
    # another seed gives other documents
    synthesize(corpus, tmp_path / "d", **dict(opts, seed=6))
    assert _files(tmp_path / "d") != reference
    # and a fresh process (other hash seeds, other thread timing) gives the same bytes
    import subprocess
    import sys

    code = ("import sys, json; from nextlong import synthesize; "
            "synthesize(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]))")
    subprocess.run([sys.executable, "-c", code, str(corpus), str(tmp_path / "e"), json.dumps(opts)], check=True,
                   env={**__import__("os").environ, "PYTHONHASHSEED": "123"})
    assert _files(tmp_path / "e") == reference


def test_cached_stage_with_other_settings_is_refused_unless_rebuild(corpus, tmp_path):
    from nextlong import synthesize

    out = tmp_path / "m"
    synthesize(corpus, out, num_samples=1, **FAST)
    finished = (out / "manifest.json").read_bytes()
    with pytest.raises(StageMismatchError, match="chunk_size"):
        synthesize(corpus, out, num_samples=1, **dict(FAST, chunk_size=256))
    # refused before anything is written: the finished run's manifest was replaced by a "running" one, and
    # `nextlong train` then refused the folder's (good) data as unfinished
    assert (out / "manifest.json").read_bytes() == finished
    with pytest.raises(StageMismatchError, match="embedder"):
        synthesize(corpus, out, num_samples=1, **dict(FAST, embedder="hashed-tfidf:128"))
    with pytest.raises(StageMismatchError, match="tokenizer"):
        synthesize(corpus, out, num_samples=1, tokenizer="o200k_base", **FAST)
    with pytest.raises(StageMismatchError, match="cached plan stage"):
        synthesize(corpus, out, num_samples=1, **dict(FAST), overshoot=2.0)
    with pytest.raises(StageMismatchError, match="overshoot: cached 1.5, asked 2.0"):
        synthesize(corpus, out, num_samples=1, **dict(FAST), overshoot=2.0)
    m = synthesize(corpus, out, num_samples=1, rebuild=True, **dict(FAST, chunk_size=256))
    assert m["settings"]["chunk_size"] == 256
    check_invariants(out, "nextlong", get_tokenizer())


def test_the_default_tokenizer_named_or_not_reuses_the_cached_stages(corpus, tmp_path):
    """Leaving --tokenizer out and passing cl100k_base (the default) are one setting, whichever made the
    folder: the cached stages are reused, not refused as "other settings"."""
    from nextlong import synthesize
    from nextlong.synthesis.framework import DONE_FILE

    opts = {k: v for k, v in FAST.items() if k != "tokenizer"}
    for first, then in ((None, "cl100k_base"), ("cl100k_base", None)):
        out = tmp_path / f"from-{first}"
        synthesize(corpus, out, num_samples=1, tokenizer=first, **opts)
        chunk_record = (out / "chunk" / DONE_FILE).read_bytes()
        m = synthesize(corpus, out, num_samples=1, tokenizer=then, **opts)
        assert (out / "chunk" / DONE_FILE).read_bytes() == chunk_record  # reused, not redone
        assert m["settings"]["tokenizer"] == first
    # another vocabulary is still another setting
    with pytest.raises(StageMismatchError, match="tokenizer"):
        synthesize(corpus, out, num_samples=1, tokenizer="o200k_base", **opts)


@pytest.mark.parametrize("num_samples", [None, 3])
def test_negative_reuse_counts_what_the_documents_hold(corpus, tmp_path, num_samples):
    """negative_chunks_distinct / negative_uses_per_chunk_mean / _max, against a slow count over the plan rows
    of the documents written (the first documents_built good rows in block order), as `negatives` counts them:
    as planned, before a document is cut at the target length; the written documents hold a subset."""
    from collections import Counter

    from nextlong import synthesize
    from nextlong.synthesis.pipeline import summary

    out = tmp_path / "r"
    m = synthesize(corpus, out, num_samples=num_samples, **FAST)
    s = m["statistics"]
    rows = [r for part in sorted((out / "plan").glob("part-*.parquet"))
            for r in pq.read_table(part, columns=["ok", "chunks", "roles"]).to_pylist() if r["ok"]]
    uses = Counter(c for r in rows[:s["documents_built"]] for c, role in zip(r["chunks"], r["roles"]) if role == 1)
    assert sum(uses.values()) == s["negatives"] > 0
    assert s["negative_chunks_distinct"] == len(uses)
    assert s["negative_uses_per_chunk_max"] == max(uses.values())
    assert s["negative_uses_per_chunk_mean"] == round(sum(uses.values()) / len(uses), 3)
    written = Counter()
    for part in sorted((out / "data").glob("part-*.parquet")):
        for row in pq.read_table(part, columns=["segments"]).column("segments").to_pylist():
            written.update((seg["doc_id"], seg["chunk_index"]) for seg in row if seg["role"] == "negative")
    assert 0 < len(written) <= len(uses) and max(written.values()) <= max(uses.values())
    assert f"negatives drawn from {len(uses)} distinct chunks" in summary(m)
    # the note on heavy reuse: said past REUSE_NOTE uses per chunk on average, not at it
    from nextlong.synthesis.pipeline import REUSE_NOTE

    for mean, noted in ((REUSE_NOTE + 0.1, True), (REUSE_NOTE, False)):
        said = summary(dict(m, statistics=dict(s, negative_uses_per_chunk_mean=mean)))
        assert ("few chunks for this much output" in said) == noted


def test_a_damaged_chunk_store_or_near_copy_graph_is_found_before_use(corpus, tmp_path):
    """The chunk store (every later stage reads its token ids as they are) and the near-copy graph carried no
    checksum: a damaged byte in a cached folder changed the data built from it silently. Their records list
    each file's size and CRC32, checked before a run uses them (verify=False, --no-verify, skips it); so do
    --dedup-corpus's renumbered store and graph (OUT/dedup/)."""
    from nextlong import synthesize
    from nextlong.errors import CorruptFileError

    opts = dict(FAST, dedup_corpus=True)  # the dedup stage's store and graph are checksummed too
    out = tmp_path / "v"
    (out / "chunks").mkdir(parents=True)
    (out / "chunks" / ".tokens.npy.k1ll3d00.tmp").write_bytes(b"a killed write's")  # not listed: removed at the end
    synthesize(corpus, out, num_samples=1, **opts)
    assert not (out / "chunks" / ".tokens.npy.k1ll3d00.tmp").exists()
    synthesize(corpus, out, num_samples=1, **opts)
    for path in (out / "chunks" / "store" / "tokens.npy", out / "neardup" / "indices.npy",
                 out / "dedup" / "store" / "tokens.npy"):
        whole = path.read_bytes()
        damaged = bytearray(whole)
        damaged[-1] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(CorruptFileError, match=rf"{path}: not the file the \w+ stage wrote .*: it is damaged; "
                                                   rf"remove {path.parent.parent if path.parent.name == 'store' else path.parent}"):
            synthesize(corpus, out, num_samples=1, **opts)
        synthesize(corpus, out, num_samples=1, verify=False, **opts)  # taken as it is, when asked
        path.write_bytes(whole)
    synthesize(corpus, out, num_samples=1, **opts)
    # the record is as untrusted as the folder: an entry naming a file outside it is refused before any read (an
    # absolute /dev/zero of size 0 was read for ever), and so is one that is no plain name
    import json

    record_path = out / "chunks" / "_done.json"
    record = json.loads(record_path.read_text())
    for bad in ("/dev/zero", "../v/manifest.json", "a\x00b", "\ud800"):
        hostile = dict(record, files={bad: {"bytes": 0, "crc32": 0}})
        record_path.write_text(json.dumps(hostile))
        with pytest.raises(CorruptFileError, match=r"_done.json: the file entry .* is not a name inside the stage's "
                                                   r"folder; remove .*chunks to make the stage again"):
            synthesize(corpus, out, num_samples=1, **opts)


def test_too_small_corpus_is_a_clear_error(tmp_path):
    from nextlong import synthesize

    corpus = write_jsonl(tmp_path / "tiny.jsonl", corpus_head(250_000)[:3])
    for method in ("nextlong", "standard"):
        with pytest.raises(NextlongError, match=r"built 0 long documents .* 3 documents"):
            synthesize(corpus, tmp_path / method, method=method, **read_by(method, dict(FAST, target_length=1_000_000)))


def test_missing_corpus_and_bad_settings(tmp_path):
    from nextlong import synthesize

    with pytest.raises(NextlongError, match="not found"):
        synthesize(tmp_path / "nope.jsonl", tmp_path / "o", **FAST)
    with pytest.raises(NextlongError, match="--method"):
        synthesize(tmp_path / "nope.jsonl", tmp_path / "o", method="magic", **FAST)


def test_cli_synthesize_then_inspect(corpus, tmp_path, capsys):
    from nextlong.cli import main

    out = tmp_path / "cli"
    rc = main(["synthesize", "--corpus", str(corpus), "--out", str(out), "--target-length", str(L),
               "--chunk-size", "512", "--embedder", "hashed-tfidf:256", "--num-samples", "2", "--quiet"])
    assert rc == 0 and read_output(out).num_rows == 2
    capsys.readouterr()
    assert main(["inspect", str(out), "--color", "always"]) == 0
    text = capsys.readouterr().out
    assert "[A]" in text and "[N]" in text and "\033[" in text and "documents_built: 2" in text
    assert main(["inspect", str(out), "--color", "never"]) == 0
    assert "\033[" not in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "empty")]) == 1


def test_cli_no_progress_keeps_the_summary(corpus, tmp_path, capsys):
    """--no-progress (as chunk, tokenize and index have it): no bars, but the summary --quiet also hides."""
    from nextlong.cli import main

    args = ["synthesize", "--corpus", str(corpus), "--target-length", str(L), "--chunk-size", "512",
            "--embedder", "hashed-tfidf:256", "--num-samples", "2"]
    assert main(args + ["--out", str(tmp_path / "a"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "documents" in err and "%|" not in err and "it/s" not in err
    assert main(args + ["--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("separator,unit,size", [("", "chars", 512), ("\n\n", "tokens", 128)])
def test_separator_and_token_chunking(corpus, tmp_path, separator, unit, size):
    from nextlong import synthesize

    out = tmp_path / "sep"
    m = synthesize(corpus, out, num_samples=2, separator=separator, **dict(FAST, chunk_unit=unit, chunk_size=size))
    check_invariants(out, "nextlong", get_tokenizer(), sep=separator)
    assert m["settings"]["separator_side"] == "trailing"
    stage = json.loads((out / "chunk" / "_done.json").read_text())["settings"]
    assert stage["chunk_unit"] == unit and stage["chunk_size"] == size


@pytest.mark.slow
def test_demo_corpus_is_deterministic_real_text(tmp_path):
    from nextlong.synthesis.demo import write_demo_corpus

    a = write_demo_corpus(tmp_path / "a.jsonl").read_bytes()
    b = write_demo_corpus(tmp_path / "b.jsonl").read_bytes()
    assert a == b and len(a) > 1_000_000
    rows = [json.loads(line) for line in a.decode().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids) and "json" in ids and "collections" in ids
    assert any("Serialize ``obj`` to a JSON formatted ``str``" in r["text"] for r in rows)


def test_demo_corpus_never_lists_the_folders_it_leaves_out(tmp_path, monkeypatch):
    """The demo corpus walked the whole stdlib tree (site-packages held 11,563 of its 13,353 .py files) and then
    dropped the left-out folders' files: a sixth of every `--demo` run's corpus time. Those folders are now never
    listed, and the modules taken, and their order, are those of sorted(rglob("*.py")) less the left-out ones."""
    import os

    from nextlong.synthesis.demo import _SKIP_PARTS, iter_stdlib_documents

    files = ["a.py", "a-b.py", "a/b.py", "a/c/d.py", "a/notes.txt", "site-packages/pkg/m.py", "test/t.py",
             "a/__pycache__/x.py", "tests.py", "b/tests/u.py"]
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f'"""Docs of {rel}."""\n', encoding="utf-8")
    (tmp_path / "linked").symlink_to(tmp_path / "a", target_is_directory=True)  # a link is not followed (rglob)
    expected = [p for p in sorted(tmp_path.rglob("*.py"))
                if not _SKIP_PARTS.intersection(p.relative_to(tmp_path).parts)]
    listed, scandir = [], os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": listed.append(os.fspath(path)) or scandir(path))
    names = [name for name, _ in iter_stdlib_documents(tmp_path)]
    assert names == [".".join(p.relative_to(tmp_path).with_suffix("").parts) for p in expected]
    assert names == ["a.b", "a.c.d", "a-b", "a", "tests"]  # Path order: a/... before a-b.py (not string order)
    assert listed and not [p for p in listed if _SKIP_PARTS.intersection(os.path.relpath(p, tmp_path).split(os.sep))]


@pytest.mark.slow
def test_demo_runs_with_a_fast_embedder(tmp_path):
    from nextlong import synthesize

    m = synthesize(out=tmp_path / "demo", demo=True, embedder="hashed-tfidf:256", num_samples=2, progress=False)
    assert m["settings"]["target_length"] == 8192 and m["statistics"]["documents_built"] == 2
    global L
    saved, L = L, 8192
    try:
        check_invariants(tmp_path / "demo", "nextlong", get_tokenizer())
    finally:
        L = saved


def test_stage_functions_compose_without_the_driver(corpus, tmp_path):
    """The batch->batch stages, called by hand (as a Ray Data map would), give the driver's output."""
    import pyarrow as pa

    from nextlong import synthesize
    from nextlong.corpus.reader import iter_corpus_batches
    from nextlong.synthesis.negatives import ExactSearcher
    from nextlong.synthesis.batches import assemble_batch, chunk_batch, plan_nextlong_batch
    from nextlong.synthesis.store import ChunkStore

    out = tmp_path / "s"
    m = synthesize(corpus, out, num_samples=3, shard_size=8, seed=2, **FAST)
    tok = get_tokenizer()
    parts, next_id = [], 0
    for batch in iter_corpus_batches(corpus, batch_size=17):
        t = chunk_batch(batch, tokenizer=tok, chunk_size=512, chunk_unit="chars", first_chunk_id=next_id,
                        separator="\n")
        next_id += t.num_rows
        parts.append(t)
    chunks = pa.concat_tables(parts)
    cached = pq.read_table(out / "chunks" / "chunks.parquet")
    assert chunks.equals(cached)
    store = ChunkStore.from_table(chunks)
    vectors = np.load(out / "embeddings" / "embeddings.npy")
    anchors = pa.table({"anchor_doc": np.random.default_rng(2).permutation(store.num_docs)[:8]})
    plan = plan_nextlong_batch(anchors, store=store, searcher=ExactSearcher(vectors), chunk_vectors=vectors,
                               target_length=L, sep_len=0, negatives="fixed-k", chunk_size=512,
                               chars_per_token=m["settings"]["chars_per_token_used"], overshoot=1.5,
                               k_rounding="ceil", exclude_duplicates=True, max_candidates=4096, max_rows=3)
    # the separator is inside each chunk's ids: nothing is appended between pieces
    got = assemble_batch(plan, store=store, sep_ids=[], target_length=L, method="nextlong")
    assert got.equals(read_output(out))


def test_usearch_index_paths(corpus, tmp_path, monkeypatch):
    """Past the exact-search size the driver builds a usearch index; --index reuses a prebuilt one."""
    from nextlong import synthesize
    from nextlong.mining.index_job import build_index_from_chunks
    from nextlong.synthesis import pipeline

    monkeypatch.setattr(pipeline, "EXACT_SEARCH_MAX_CHUNKS", 0)
    out = tmp_path / "ann"
    m = synthesize(corpus, out, num_samples=3, **FAST)
    assert m["settings"]["search"].endswith("index") and (out / "index" / "_done.json").exists()
    check_invariants(out, "nextlong", get_tokenizer())
    assert m["statistics"]["anchor_negative_similarity_mean"] > m["statistics"]["random_chunk_pair_similarity_mean"]

    prebuilt = tmp_path / "prebuilt"
    build_index_from_chunks(out / "chunks" / "chunks.parquet", prebuilt, embedder="hashed-tfidf:256", progress=False)
    m2 = synthesize(corpus, tmp_path / "reuse", num_samples=3, index=str(prebuilt), **FAST)
    assert not (tmp_path / "reuse" / "embeddings").exists(), "the index's embeddings are reused"
    check_invariants(tmp_path / "reuse", "nextlong", get_tokenizer())
    assert m2["statistics"]["documents_built"] == 3
    with pytest.raises(StageMismatchError, match="differ"):
        synthesize(corpus, tmp_path / "other", num_samples=1, index=str(prebuilt), **dict(FAST, chunk_size=300))
    with pytest.raises(StageMismatchError, match="embedder"):
        synthesize(corpus, tmp_path / "other2", num_samples=1, index=str(prebuilt),
                   **dict(FAST, embedder="hashed-tfidf:128"))


def test_reproducible_index_gives_the_same_bytes_on_every_run(corpus, tmp_path, monkeypatch):
    """A multi-threaded HNSW build differs from run to run (measured: the 1M-chunk local and Ray runs of
    bench_scale.py built different graphs and so different plans); --reproducible-index builds on one
    thread, and two runs on two threads then give the same index and the same shards."""
    from nextlong import synthesize
    from nextlong.synthesis import pipeline
    from nextlong.synthesis.stages import IndexStage

    monkeypatch.setattr(pipeline, "EXACT_SEARCH_MAX_CHUNKS", 0)
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        synthesize(corpus, out, num_samples=4, reproducible_index=True, num_threads=2, **FAST)
    index_bytes = [(out / "index" / "index.usearch").read_bytes() for out in runs]
    assert index_bytes[0] == index_bytes[1]
    assert _files(runs[0]) == _files(runs[1]) != {}
    assert json.loads((runs[0] / "index" / "_done.json").read_text())["counts"]["reproducible"] is True
    # the setting is fingerprinted only when set, so folders recorded before it existed still match
    assert "reproducible" not in IndexStage(name="index").settings()
    assert IndexStage(name="index", reproducible=True).settings()["reproducible"] is True
    with pytest.raises(StageMismatchError, match="reproducible"):
        synthesize(corpus, runs[0], num_samples=4, num_threads=2, **FAST)


def test_index_shards_give_the_same_bytes_on_every_run(corpus, tmp_path, monkeypatch):
    """--index-shards 3 on two threads: three shards, each built on one thread, two at a time; two runs
    give the same shard files and the same output, and a run with one graph is another setting."""
    from nextlong import synthesize
    from nextlong.synthesis import pipeline
    from nextlong.synthesis.stages import IndexStage

    monkeypatch.setattr(pipeline, "EXACT_SEARCH_MAX_CHUNKS", 0)
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        synthesize(corpus, out, num_samples=4, index_shards=3, num_threads=2, **FAST)
    shards = [sorted(p.name for p in (out / "index").glob("*.usearch")) for out in runs]
    assert shards[0] == shards[1] == ["index-000.usearch", "index-001.usearch", "index-002.usearch"]
    for name in shards[0]:
        assert (runs[0] / "index" / name).read_bytes() == (runs[1] / "index" / name).read_bytes()
    assert _files(runs[0]) == _files(runs[1]) != {}
    counts = json.loads((runs[0] / "index" / "_done.json").read_text())["counts"]
    assert counts["shards"] == 3 and counts["reproducible"] is True
    assert "shards" not in IndexStage(name="index").settings()
    with pytest.raises(StageMismatchError, match="shards"):
        synthesize(corpus, runs[0], num_samples=4, num_threads=2, **FAST)


def test_cli_separator_escapes():
    from nextlong.commands.argtypes import unescape

    assert unescape(r"\n") == "\n" and unescape(r"\n\n") == "\n\n" and unescape(r"a\tb") == "a\tb"
    assert unescape(r"\\n") == "\\n" and unescape("é|") == "é|" and unescape("\n") == "\n"


def test_folders_of_an_older_version_are_rebuilt_with_a_notice(corpus, tmp_path, capsys):
    """Stage folders with only the old records (stage.json, data/_shards) are not taken as done."""
    from nextlong import synthesize

    out = tmp_path / "old"
    opts = dict(FAST, num_samples=2)
    synthesize(corpus, out, **opts)
    reference = _files(out)
    for stage in ("chunks", "data"):  # what an older nextlong left: its own records, none of ours
        (out / stage / "_done.json").unlink()
    (out / "chunks" / "stage.json").write_text('{"settings": {}}')
    (out / "data" / "_shards").mkdir()
    (out / "data" / "part-00007.parquet").write_bytes(b"old shard")
    capsys.readouterr()
    synthesize(corpus, out, **dict(opts, progress=True))
    err = capsys.readouterr().err
    assert "chunks: written by an older nextlong" in err and "data: written by an older nextlong" in err
    assert _files(out) == reference and not (out / "chunks" / "stage.json").exists()


def test_removing_data_lets_one_folder_serve_other_methods_and_seeds(corpus, tmp_path):
    """The cached chunks and embeddings are reused; the output stages of other settings are remade
    once DIR/data is removed (and refused while it exists)."""
    import shutil

    from nextlong import synthesize

    out = tmp_path / "shared"
    synthesize(corpus, out, num_samples=2, **FAST)
    chunks_time = (out / "chunks" / "chunks.parquet").stat().st_mtime_ns
    with pytest.raises(StageMismatchError, match="cached units stage"):
        synthesize(corpus, out, num_samples=2, seed=9, **FAST)
    for method, seed in (("nextlong", 9), ("knn", 0), ("standard", 0)):
        shutil.rmtree(out / "data")
        synthesize(corpus, out, num_samples=2, seed=seed, method=method, **read_by(method, FAST))
        synthesize(corpus, tmp_path / f"fresh-{method}", num_samples=2, seed=seed, method=method, **read_by(method, FAST))
        assert _files(out) == _files(tmp_path / f"fresh-{method}")
    assert (out / "chunks" / "chunks.parquet").stat().st_mtime_ns == chunks_time


@pytest.mark.parametrize("method", ["nextlong", "standard", "quest", "iclm"])
def test_no_row_is_built_from_a_blank_document(tmp_path, method, monkeypatch):
    """A whitespace-only document was a NExtLong anchor whose vector tied with everything: its negatives were
    the corpus's first chunks and its sample held nothing of its own. Blank documents (empty or whitespace
    only) stay in the chunk table, as `nextlong chunk` keeps them (an index built from it still matches: the
    nextlong case reuses one), but no output row is built from them, and the manifest counts them."""
    from nextlong import synthesize
    from nextlong.mining.index_job import build_index_from_chunks

    docs = list(corpus_head(250_000))
    docs[5] = ("padded", "\n\n   \n" + docs[5][1])
    blank = {"blank-0": "", "blank-1": "   \n\t\n  ", "blank-2": "\n\n\n", "blank-3": "\u3000\u00a0\n "}
    for i, (doc_id, text) in enumerate(blank.items()):
        docs.insert(3 + 11 * i, (doc_id, text))
    corpus = write_jsonl(tmp_path / "docs.jsonl", docs)
    out = tmp_path / method
    manifest = synthesize(corpus, out, method=method, num_samples=3, id_field="id", **read_by(method, FAST))
    stats = manifest["statistics"]
    assert stats["blank_documents_skipped"] == len(blank) and stats["corpus_documents"] == len(docs)
    store_ids = set(pq.read_table(out / "chunks" / "chunks.parquet", columns=["doc_id"]).column("doc_id").to_pylist())
    assert set(blank) | {"padded"} <= store_ids
    used = {s["doc_id"] for row in read_output(out).to_pylist() for s in row["segments"]}
    assert not used & set(blank)
    check_invariants(out, method, get_tokenizer())
    if method == "nextlong":  # through a prebuilt index of the same chunk table (nextlong chunk, nextlong index)
        from nextlong.synthesis import pipeline

        monkeypatch.setattr(pipeline, "EXACT_SEARCH_MAX_CHUNKS", 0)
        prebuilt = tmp_path / "prebuilt"
        build_index_from_chunks(out / "chunks" / "chunks.parquet", prebuilt, embedder="hashed-tfidf:256",
                                progress=False)
        again = synthesize(corpus, tmp_path / "reuse", num_samples=3, id_field="id", index=str(prebuilt), **FAST)
        assert again["statistics"]["blank_documents_skipped"] == len(blank)
        assert not {s["doc_id"] for row in read_output(tmp_path / "reuse").to_pylist()
                    for s in row["segments"]} & set(blank)


def test_a_chunk_of_whitespace_is_never_a_negative(tmp_path, monkeypatch):
    """A whitespace-only chunk (a blank document, or a run of blank lines cut off on its own) says nothing through
    its embedding and adds nothing between meta-chunks: it is never a negative, even where it would rank first,
    and the manifest counts such chunks. The ranking here is forced: every blank chunk is given the vector of the
    anchor's first meta-chunk, so planning without the mask takes them first."""
    from nextlong import synthesize
    from nextlong.synthesis.artifacts import BLANK_CHUNKS_FILE, EMBEDDINGS_FILE, empty_chunks, load_store
    from nextlong.synthesis.negatives import ExactSearcher, plan_anchor

    docs = list(corpus_head(250_000))
    docs.insert(4, ("gap", docs[4][1][:400] + "\n" + " \n" * 3000 + docs[4][1][400:900]))
    for i, text in enumerate(["", "   \n\t\n  ", "\n\n\n", "\u3000\u00a0\n "]):
        docs.insert(3 + 11 * i, (f"blank-{i}", text))
    corpus = write_jsonl(tmp_path / "docs.jsonl", docs)
    out = tmp_path / "out"
    from nextlong.synthesis import batches

    masks, plan = [], batches.plan_anchor
    monkeypatch.setattr(batches, "plan_anchor", lambda *a, **kw: masks.append(kw["empty"]) or plan(*a, **kw))
    manifest = synthesize(corpus, out, num_samples=3, id_field="id", **FAST)
    texts = pq.read_table(out / "chunks" / "chunks.parquet", columns=["text"]).column("text").to_pylist()
    blank = [i for i, t in enumerate(texts) if not t.strip()]  # Python's whitespace: the reference
    chunk_doc = pq.read_table(out / "chunks" / "chunks.parquet", columns=["doc_id"]).column("doc_id").to_pylist()
    assert "gap" in {chunk_doc[i] for i in blank}  # a blank chunk inside a document with text
    store = load_store(out / "chunks")
    empty = empty_chunks(out / "chunks", store)
    assert np.flatnonzero(empty).tolist() == blank and manifest["statistics"]["chunks_blank"] == len(blank)
    assert masks and all(m is not None and np.flatnonzero(np.frombuffer(m, np.uint8)).tolist() == blank for m in masks)
    (out / "chunks" / BLANK_CHUNKS_FILE).unlink()  # a folder chunked before the file: read off the text
    np.testing.assert_array_equal(empty_chunks(out / "chunks", store), empty)
    assert not {s["doc_id"] for row in read_output(out).to_pylist() for s in row["segments"] if s["role"] != 0} \
        & {chunk_doc[i] for i in blank if chunk_doc[i] != "gap"}

    vectors = np.load(out / "embeddings" / EMBEDDINGS_FILE).astype(np.float32)
    anchor = next(d for d in range(store.num_docs) if store.doc_chunks(d).size and chunk_doc[store.doc_chunks(d)[0]]
                  not in {"gap"} and not empty[store.doc_chunks(d)].any())
    own = store.doc_chunks(anchor)
    vectors[blank] = vectors[own[0]]
    plans = {}
    for mask in (None, bytearray(empty.astype(np.uint8).tobytes())):
        res = plan_anchor(store, ExactSearcher(vectors), anchor, target_length=L, sep_len=0, rule="fill",
                          k_fixed=None, anchor_vectors=vectors[own], empty=mask)
        plans[mask is None] = set(res.chunks) - set(own.tolist())
    assert plans[True] & set(blank)  # without the mask the forced ranking takes them
    assert not plans[False] & set(blank) and plans[False]


LICENSE = ("Permission is hereby granted free of charge to any person obtaining a copy of this software and associated "
           "documentation files to deal in the Software without restriction including without limitation the rights to "
           "use copy modify merge publish distribute sublicense and or sell copies of the Software Copyright {year} by "
           "the authors")


def _word_jaccard(x: str, y: str) -> float:
    """Word 5-gram Jaccard written from the docs (whitespace words; fewer than five words: one shingle)."""
    def grams(t):
        w = t.split()
        return {tuple(w)} if len(w) < 5 else {tuple(w[i:i + 5]) for i in range(len(w) - 4)}
    a, b = grams(x), grams(y)
    return len(a & b) / len(a | b) if a | b else 0.0


def test_a_family_of_near_copies_larger_than_a_sketch_group_is_still_refused(tmp_path):
    """A license text that differs only in its year, in 300 documents: every sketched hash of it is shared by more
    than 256 chunks, which the candidate search does not pair (its pairs grow with the square). Such hashes linked
    nothing, so every copy became a negative of every other (an outside audit: 4,200 of 16,800 negatives at 600
    documents, and --dedup-corpus removed 15 of 600). The group is now clustered around leaders and banned as a
    family; checked here against the Jaccard written from the docs, on every negative."""
    import random

    from nextlong import synthesize

    rng = random.Random(4)
    words = " ".join(t for _, t in corpus_head(200_000)).split()
    docs = [(f"l{i}", "\n".join([LICENSE.format(year=1700 + i)] + [" ".join(rng.choices(words, k=40))
                                                                      for _ in range(3)]))
            for i in range(300)]
    out = tmp_path / "lic"
    manifest = synthesize(write_jsonl(tmp_path / "lic.jsonl", docs), out, id_field="id", seed=1,
                          **dict(FAST, target_length=1024, chunk_size=256))
    stats = manifest["statistics"]
    assert stats["near_copy_families"] >= 1 and stats["chunks_in_near_copy_families"] >= 290
    table = pq.read_table(out / "chunks" / "chunks.parquet", columns=["doc_id", "chunk_index", "text"]).to_pylist()
    texts = {(r["doc_id"], r["chunk_index"]): r["text"] for r in table}
    negatives = 0
    for row in read_output(out).to_pylist():
        pieces = []
        for seg in row["segments"]:
            text = texts[seg["doc_id"], seg["chunk_index"]]
            if seg["role"] == "negative":
                negatives += 1
                assert all(_word_jaccard(text, p) < 0.5 for p in pieces), (row["anchor_doc_id"], text[:80])
            pieces.append(text)
    assert negatives > 1000
    only = [(f"o{i}", LICENSE.format(year=1700 + i)) for i in range(300)] + list(corpus_head(60_000))
    manifest = synthesize(write_jsonl(tmp_path / "only.jsonl", only), tmp_path / "dedup", id_field="id",
                          method="standard", dedup_corpus=True, num_samples=1, **read_by("standard", dict(FAST, chunk_size=256)))
    assert manifest["statistics"]["documents_removed_as_near_duplicates"] == 299


def test_a_corpus_of_blank_documents_is_a_clear_error(tmp_path):
    from nextlong import synthesize

    corpus = write_jsonl(tmp_path / "docs.jsonl", [(f"b{i}", " \n" * i) for i in range(30)])
    with pytest.raises(NextlongError) as err:
        synthesize(corpus, tmp_path / "out", num_samples=2, id_field="id", **FAST)
    assert "\n" not in str(err.value) and "30 documents (30 of them blank)" in str(err.value)


def test_a_chunk_table_written_before_blank_docs_npy_gives_the_same_blank_documents(tmp_path):
    """Work folders chunked before blank_docs.npy existed keep their later stages (ACER's model-written ones
    among them): the blank documents are then read off the table's text."""
    from nextlong.synthesis.artifacts import BLANK_DOCS_FILE, blank_documents, load_store

    docs = list(corpus_head(60_000)) + [("blank", " \n\t")]
    docs.insert(2, ("empty", ""))
    corpus = write_jsonl(tmp_path / "docs.jsonl", docs)
    synthesize_out = tmp_path / "out"
    from nextlong import synthesize

    with pytest.raises(NextlongError):  # too small to build a row; the chunk table is written first
        synthesize(corpus, synthesize_out, num_samples=1, id_field="id", **dict(FAST, target_length=10**6))
    chunks = synthesize_out / "chunks"
    store = load_store(chunks)
    written = blank_documents(chunks, store)
    assert written.tolist() == [2, len(docs) - 1]
    (chunks / BLANK_DOCS_FILE).unlink()
    np.testing.assert_array_equal(blank_documents(chunks, store), written)
    assert not (chunks / BLANK_DOCS_FILE).exists()  # read, not written into the finished stage's folder


def test_the_reported_distance_and_similarity_are_what_the_rows_and_embeddings_give(corpus, tmp_path):
    """Recomputed from OUT/data and the stored embeddings, not from the stages' own counts (the tests checked only
    their sign: a corrupted mean passed). The distance is between consecutive meta-chunks of one document, over
    every row and over the rows that hold negatives (already-long rows add zeros: 561 against 957 tokens on a
    corpus with such rows); the similarity is each chosen negative's cosine with the meta-chunk it follows, over
    the negatives the plan chose for the anchors built (the cut to L may drop the last, least similar ones)."""
    from nextlong import synthesize

    docs = [(f"long-{i}", " ".join(text for _, text in corpus_head(40_000))) for i in range(3)]  # past L alone
    src = write_jsonl(tmp_path / "docs.jsonl", docs + list(corpus_head(250_000)))
    out = tmp_path / "o"
    manifest = synthesize(src, out, method="nextlong", long_docs="keep", seed=3, **FAST)
    stats = manifest["statistics"]
    assert stats["already_long"] > 0 and stats["documents_built"] > stats["already_long"]
    vectors = np.load(out / "embeddings" / "embeddings.npy", mmap_mode="r")
    dists, dists_neg, sims = [], [], []
    for segs in pq.read_table(out / "data", columns=["segments"]).column("segments").to_pylist():
        row, prev = [], None
        for seg in (s for s in segs if s["role"] == "anchor"):
            if prev is not None and prev["doc_id"] == seg["doc_id"] and seg["chunk_index"] == prev["chunk_index"] + 1:
                row.append(seg["start"] - prev["end"])
            prev = seg
        dists += row
        if any(s["role"] == "negative" for s in segs):
            dists_neg += row
    plan = pq.read_table(out / "plan", columns=["ok", "chunks", "roles"])  # no cut: every anchor built
    built = [r for r in plan.to_pylist() if r["ok"]]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for r in built:
        anchor = None
        for c, role in zip(r["chunks"], r["roles"]):
            if role == 0:
                anchor = c
            else:
                sims.append(float(unit[anchor] @ unit[c]))
    assert dists and dists_neg and sims
    assert stats["mean_dependency_distance_tokens"] == pytest.approx(np.mean(dists))
    assert stats["mean_dependency_distance_tokens_with_negatives"] == pytest.approx(np.mean(dists_neg))
    assert np.mean(dists_neg) > np.mean(dists)  # the already-long rows' zeros are out of it
    assert stats["anchor_negative_similarity_mean"] == pytest.approx(np.mean(sims), abs=1e-5)


def test_an_index_without_embeddings_embeds_the_corpus_with_its_own_embedder(tmp_path):
    """Audit s12 F2: `--index` over a folder with no embeddings.npy and no --embedder embedded the corpus with
    the default MiniLM and searched the index's other vectors with it (exit 0, negatives below random pairs).
    The index's recorded embedder embeds it now; one that cannot be loaded, or an --embedder of another
    dimension, is refused before any chunking or embedding."""
    from nextlong import synthesize
    from nextlong.errors import EmbedderMismatchError
    from nextlong.mining.index_job import build_index_from_chunks

    corpus = write_jsonl(tmp_path / "docs.jsonl", corpus_head(60_000))
    settings = dict(chunk_size=512, target_length=L, progress=False, num_samples=2)
    synthesize(corpus, tmp_path / "first", embedder="hashed-tfidf:256", **settings)
    prebuilt = tmp_path / "prebuilt"
    index = build_index_from_chunks(tmp_path / "first" / "chunks" / "chunks.parquet", prebuilt,
                                    embedder="hashed-tfidf:384", progress=False,
                                    embeddings_path=tmp_path / "elsewhere.npy")
    assert not (prebuilt / "embeddings.npy").exists()

    m = synthesize(corpus, tmp_path / "reuse", index=str(prebuilt), **settings)
    assert m["settings"]["embedder_name"] == index.embedder_name == m["statistics"]["embedding"]["embedder"]
    np.testing.assert_allclose(np.load(tmp_path / "reuse" / "embeddings" / "embeddings.npy"),
                               np.load(tmp_path / "elsewhere.npy"), atol=1e-6)

    # a prefix of the index's name, another dimension ('hashed-tfidf-d38' vs 'hashed-tfidf-d384-idf...')
    with pytest.raises(StageMismatchError, match=r"dim 384.*dim 38\)"):
        synthesize(corpus, tmp_path / "dim", index=str(prebuilt), embedder="hashed-tfidf:38", **settings)
    assert not (tmp_path / "dim" / "embed").exists(), "refused before embedding"

    (prebuilt / "lexical_embedder.json").unlink()  # the fitted IDF weights are gone: the embedder cannot be rebuilt
    with pytest.raises(EmbedderMismatchError, match=r"^\S*prebuilt: --index: no embeddings.npy .*'hashed-tfidf-d384-idf"
                                                     r"\w+' \(dim 384\).*pass --embedder") as err:
        synthesize(corpus, tmp_path / "lost", index=str(prebuilt), **settings)
    assert "\n" not in str(err.value) and not (tmp_path / "lost").exists(), "refused before any chunking"


def test_a_folder_made_before_a_setting_existed_is_told_so(corpus, tmp_path):
    """A standard work folder made before --overflow was refused with "overflow: cached None, asked 'carry'": the
    error now says the folder predates the setting."""
    from nextlong import synthesize
    from nextlong.synthesis.framework import DONE_FILE

    out = tmp_path / "standard"
    synthesize_kwargs = dict(method="standard", num_samples=2, **read_by("standard", FAST))
    synthesize(corpus, out, **synthesize_kwargs)
    record = json.loads((out / "units" / DONE_FILE).read_text())
    del record["settings"]["overflow"]  # as the units stage recorded it before 2026-12-07
    record["fingerprint"] = "0" * len(record["fingerprint"])
    (out / "units" / DONE_FILE).write_text(json.dumps(record))
    with pytest.raises(StageMismatchError, match="overflow: not recorded \\(the folder predates the setting\\), "
                                                 "asked 'carry'"):
        synthesize(corpus, out, **synthesize_kwargs)


@pytest.mark.parametrize("layout", ["file", "folder", "cut file"])
def test_repeated_document_ids_are_counted_and_warned_once(tmp_path, capsys, layout):
    """Duplicate --id-field values are kept (real corpora have them), but the manifest counts the documents whose
    id repeats an earlier one and the run warns once, naming the file and line of the first repeat (it named the
    corpus as given: a folder of many files for a folder corpus), under --quiet too (progress=False), as the
    corpus reader's warnings are (it was hidden there, and under --no-progress). A repeat in a range that starts
    inside a cut file is named by its file alone."""
    from nextlong.synthesis.config import SynthesisConfig
    from nextlong.synthesis.executors.local import LocalExecutor
    from nextlong.synthesis.pipeline import run

    corpus, first = repeated_id_corpus(tmp_path / "docs.jsonl")
    where = f"{corpus}:6"  # the 6th document repeats the 3rd's id
    if layout == "folder":  # two files: the repeat is the 1st line of the second one
        lines = corpus.read_text().splitlines(keepends=True)
        (tmp_path / "folder").mkdir()
        (tmp_path / "folder" / "a.jsonl").write_text("".join(lines[:5]))
        (tmp_path / "folder" / "b.jsonl").write_text("".join(lines[5:]))
        corpus, where = tmp_path / "folder", f"{tmp_path / 'folder' / 'b.jsonl'}:1"
    elif layout == "cut file":  # the file cut into ranges of 5 KB: the 6th document is not in the first
        where = str(corpus)
    cfg = SynthesisConfig(corpus=str(corpus), out=str(tmp_path / "out"), id_field="id", num_samples=2, **FAST)
    manifest = run(cfg, LocalExecutor(corpus_split_bytes=5000 if layout == "cut file" else 64 << 20))
    assert manifest["statistics"]["documents_with_repeated_id"] == 3
    warnings = [line for line in capsys.readouterr().err.splitlines() if "repeats an earlier document's" in line]
    assert warnings == [f"warning: {where}: document id {first!r} repeats an earlier document's (3 document(s) of "
                        "the corpus repeat one); the segments' doc_id names such documents alike"]


def test_repeated_ids_are_compared_exactly_where_their_hashes_meet():
    from types import SimpleNamespace

    from nextlong.synthesis.store import ChunkStore

    assert hash(-1) == hash(-2)  # CPython's: two ids, one hash
    assert ChunkStore.repeated_ids(SimpleNamespace(doc_ids=[-1, -2, "a", -1, "b", "a", "a"])) == (3, -1, 3)
    assert ChunkStore.repeated_ids(SimpleNamespace(doc_ids=[-1, -2, "a"])) == (0, None, None)



@pytest.mark.parametrize("stage, remade", [
    ("assemble", "data"),  # the data stage of a finished run reads every assembled block
    ("chunk", "chunks"),  # the chunk store is consolidated from every chunk block
    ("embed", "embeddings"),  # the embeddings are gathered from every embedding block
])
@pytest.mark.parametrize("with_record", [False, True])
def test_a_finished_blocks_part_deleted_is_named_not_skipped(tmp_path, stage, remade, with_record):
    """The data stage took the assembled blocks that have records, and the chunk store and the embeddings the parts
    that exist: a block whose part (and record) was deleted since its stage finished was skipped, its rows gone
    without a word (the samples; the embeddings, whose rows then no longer matched their chunks), or an
    IndexError later (the chunks). Each now takes every block the finished stage's record counts, and names what
    is missing."""
    import shutil

    from nextlong.errors import CorruptFileError
    from nextlong.synthesis.config import SynthesisConfig
    from nextlong.synthesis.executors.local import LocalExecutor
    from nextlong.synthesis.pipeline import run

    corpus = write_jsonl(tmp_path / "docs.jsonl", corpus_head(120_000))
    cfg = SynthesisConfig(corpus=str(corpus), out=str(tmp_path / "out"), shard_size=4, num_threads=1, **FAST)
    run(cfg, LocalExecutor(threads=1, corpus_block_docs=8))
    folder = tmp_path / "out" / stage
    assert json.loads((folder / "_done.json").read_text())["counts"]["blocks"] > 1
    part, record = folder / "part-00000.parquet", folder / "_done" / "part-00000.json"
    part.unlink()
    if with_record:
        record.unlink()
    shutil.rmtree(tmp_path / "out" / remade)
    said = (f"{re.escape(str(record))}: missing, though its stage finished" if with_record and stage == "assemble"
            else f"{re.escape(str(part))}: missing, and so is its block record" if with_record
            else f"{re.escape(str(part))}: missing, though")
    with pytest.raises(CorruptFileError, match=said):
        run(cfg, LocalExecutor(threads=1, corpus_block_docs=8))


def test_fewer_documents_than_asked_is_said_without_progress(corpus, tmp_path, capsys):
    """The warning that a run built fewer long documents than --num-samples asked for is about the data: shown with
    --quiet and --no-progress too (progress=False), as the corpus reader's warnings are; it went through the
    progress log, so a quiet run ended with fewer documents unsaid."""
    from nextlong import synthesize

    manifest = synthesize(corpus, tmp_path / "out", num_samples=100_000, **FAST)
    built = manifest["statistics"]["documents_built"]
    assert 0 < built < 100_000
    assert f"warning: asked for 100000 documents, built {built}:" in capsys.readouterr().err
