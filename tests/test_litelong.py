"""LiteLong (`synthesize --method litelong --topics FILE`): one sample per topic, of the documents BM25
retrieves for it in rank order until the target length; its topics file read as an untrusted file; the
units stage remade when the topics change. The retrieval is checked against a slow pure-Python BM25."""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter

import numpy as np
import pytest

from nextlong.errors import NextlongError, StageMismatchError, UsageError
from nextlong.synthesis.baselines import litelong_contexts
from nextlong.synthesis.topics import read_topics
from tests.helpers import assert_one_line_error, run_cli, write_jsonl

STOPWORDS = set("a an and are as at be but by for if in into is it no not of on or such that the their then there "
                "these they this to was will with".split())  # Lucene's English set, as the method documents it
FILLER = ("river mountain cable window garden paper silver number market engine summer letter planet shadow "
          "harbor pencil forest candle ticket bridge marble copper violin meadow rocket lantern").split()
TELESCOPE = "telescope astronomy"
BREAD = "sourdough baking"
RARE = "volcano"  # in one document: short of the target length
NOTHING = "xylophone"  # in none
ONLY_STOPWORDS = "the of and"  # no term once the stopwords are left out
L = 300


def synthetic_docs() -> list[tuple[str, str]]:
    """20 documents of 50-90 filler words with the topic words mixed in at seeded counts; the last two are
    the same text (their BM25 scores tie: the lower document comes first)."""
    rng = np.random.default_rng(7)
    docs = []
    for i in range(18):
        words = list(rng.choice(FILLER, int(rng.integers(50, 90))))
        if i < 10:
            words += ["telescope"] * int(rng.integers(1, 5)) + ["astronomy"] * int(rng.integers(0, 3))
        if 5 <= i < 15:
            words += ["sourdough"] * int(rng.integers(1, 4)) + ["baking"] * int(rng.integers(0, 3))
        if i == 15:
            words += ["volcano"] * 3
        words += ["the", "of", "and"]
        rng.shuffle(words)
        docs.append((f"doc{i:02d}", " ".join(words)))
    twin = " ".join(["telescope"] + list(rng.choice(FILLER, 60)))
    docs += [("doc18", twin), ("doc19", twin)]
    return docs


def reference_ranking(texts: list[str], topic: str) -> list[int]:
    """Documents of BM25 score > 0 for `topic`, best first, ties by the lower index: Lucene's BM25 (k1 1.2,
    b 0.75, idf ln(1 + (N - df + 0.5)/(df + 0.5))) over lowercased word runs without English stopwords,
    written out slowly."""
    terms = [[w for w in re.findall(r"\w+", t.lower()) if w not in STOPWORDS] for t in texts]
    tf = [Counter(t) for t in terms]
    n, avgdl = len(texts), sum(map(len, terms)) / len(texts)
    scores = []
    for d in range(n):
        s = 0.0
        for q in [w for w in re.findall(r"\w+", topic.lower()) if w not in STOPWORDS]:
            df = sum(q in c for c in tf)
            if tf[d][q]:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                s += idf * tf[d][q] / (tf[d][q] + 1.2 * (1 - 0.75 + 0.75 * len(terms[d]) / avgdl))
        scores.append(s)
    ranked = sorted((d for d in range(n) if scores[d] > 0), key=lambda d: (-scores[d], d))
    distinct = sorted({round(scores[d], 9) for d in ranked}, reverse=True)  # a test of ranks needs no near ties
    assert all(a - b > 1e-4 for a, b in zip(distinct, distinct[1:])), distinct
    return ranked


def reference_context(texts, topic, lengths, target) -> list[int] | None:
    ranked, total = reference_ranking(texts, topic), 0
    for i, d in enumerate(ranked):
        total += int(lengths[d])
        if total >= target:
            return ranked[: i + 1]
    return None


@pytest.mark.parametrize("first_width", [256, 1])
def test_contexts_are_the_bm25_ranking_until_the_target_length(monkeypatch, first_width):
    """Each topic's context is the reference ranking's shortest prefix reaching L, whatever the first search
    width (1: every topic is searched again, wider, until it fills or runs out); topics that cannot fill L are
    dropped and counted, the kept ones stay in the file's order."""
    from nextlong.synthesis import baselines

    monkeypatch.setattr(baselines, "LITELONG_FIRST_WIDTH", first_width)
    texts = [t for _, t in synthetic_docs()]
    lengths = np.asarray([len(t.split()) for t in texts], np.int64)
    topics = (BREAD, RARE, TELESCOPE, NOTHING, ONLY_STOPWORDS, "telescope")
    contexts, keys, stats = litelong_contexts(texts, topics, lengths, L)
    want = {t: reference_context(texts, t, lengths, L) for t in topics}
    assert keys == [BREAD, TELESCOPE, "telescope"]
    assert [c.tolist() for c in contexts] == [want[BREAD], want[TELESCOPE], want["telescope"]]
    assert want[RARE] is None and len(reference_ranking(texts, RARE)) == 1
    assert all(len(c) >= 3 for c in contexts)
    # the twins tie: the lower one first
    assert reference_ranking(texts, "telescope").index(18) + 1 == reference_ranking(texts, "telescope").index(19)
    assert stats["topics"] == 6 and stats["contexts"] == 3
    assert stats["topics_short_of_target"] == 3 and stats["topics_without_match"] == 2
    # a document serves several topics, never twice in one
    assert set(contexts[1]) & set(contexts[2]) and all(len(set(c)) == len(c) for c in contexts)


def test_excluded_documents_are_never_retrieved():
    texts = [t for _, t in synthetic_docs()]
    lengths = np.full(len(texts), 100, np.int64)
    first = reference_ranking(texts, TELESCOPE)[0]
    contexts, _, _ = litelong_contexts(texts, (TELESCOPE,), lengths, 300, exclude=np.array([first]))
    assert [c.tolist() for c in contexts] == [[d for d in reference_ranking(texts, TELESCOPE) if d != first][:3]]


def test_the_search_is_bounded_by_entries_not_topics(monkeypatch):
    """Topics are searched LITELONG_SEARCH_ENTRIES // width at a time (all at once, 100,000 topics at width
    4,096 asked for 4.9 GB of ids and scores), with the same contexts; the texts may be a one-pass iterator
    (the units stage streams them: the index keeps no text)."""
    from nextlong.mining.bm25 import BM25Index
    from nextlong.synthesis import baselines

    texts = [t for _, t in synthetic_docs()]
    lengths = np.asarray([len(t.split()) for t in texts], np.int64)
    topics = (BREAD, RARE, TELESCOPE, NOTHING, "telescope", "sourdough", "baking astronomy", "window")
    want = litelong_contexts(texts, topics, lengths, L)
    asked, search = [], BM25Index.search

    def recording(self, queries, k, *args, **kwargs):
        asked.append(len(queries) * k)
        return search(self, queries, k, *args, **kwargs)

    monkeypatch.setattr(BM25Index, "search", recording)
    monkeypatch.setattr(baselines, "LITELONG_FIRST_WIDTH", 2)
    monkeypatch.setattr(baselines, "LITELONG_SEARCH_ENTRIES", 6)
    contexts, keys, stats = litelong_contexts(iter(texts), topics, lengths, L)
    assert max(asked) <= 8 and len(asked) > 3  # 3 topics x 2 wide, then 1 x 8 (a lone topic may exceed)
    assert [c.tolist() for c in contexts] == [c.tolist() for c in want[0]] and (keys, stats) == want[1:]


def topics_file(path, topics) -> str:
    path.write_text("# LiteLong topics\n" + "\n".join(topics) + "\n", encoding="utf-8")
    return str(path)


SETTINGS = dict(method="litelong", target_length=L, chunk_size=512, id_field="id", progress=False)


def test_synthesize_litelong_end_to_end(tmp_path):
    """The samples are the topics' BM25 documents in rank order, whole, cut at exactly L; group_key names the
    topic and method is litelong; the manifest counts the dropped topics; --num-samples takes the first."""
    import pyarrow.parquet as pq

    from nextlong import synthesize
    from nextlong.synthesis.artifacts import load_store
    from nextlong.synthesis.baselines import doc_lengths

    docs = synthetic_docs()
    corpus = write_jsonl(tmp_path / "docs.jsonl", docs)
    topics = topics_file(tmp_path / "topics.txt", [TELESCOPE, NOTHING, BREAD, RARE])
    manifest = synthesize(corpus, tmp_path / "out", topics=topics, **SETTINGS)
    table = pq.read_table(tmp_path / "out" / "data")
    lengths = doc_lengths(load_store(tmp_path / "out" / "chunks"), 0)
    texts = [t for _, t in docs]
    assert table.column("group_key").to_pylist() == [TELESCOPE, BREAD]
    assert set(table.column("method").to_pylist()) == {"litelong"}
    for row, topic in zip(table.to_pylist(), (TELESCOPE, BREAD)):
        seq = [s["doc_id"] for s in row["segments"]]
        order = [d for i, d in enumerate(seq) if i == 0 or seq[i - 1] != d]
        assert order == [docs[d][0] for d in reference_context(texts, topic, lengths, L)]
        assert row["segments"][-1]["end"] == L
    t = manifest["statistics"]["litelong"]
    assert (t["topics"], t["contexts"], t["topics_short_of_target"], t["topics_without_match"]) == (4, 2, 2, 1)
    assert manifest["statistics"]["dropped_too_short"] == 2
    from nextlong.synthesis.topics import topics_identity

    assert t["topics_sha256"] == topics_identity((TELESCOPE, NOTHING, BREAD, RARE))["sha256"]
    from nextlong.commands.inspect import _first_document, render
    from nextlong.synthesis.pipeline import summary

    assert f"method litelong, topic {TELESCOPE!r}, first document {table.to_pylist()[0]['anchor_doc_id']!r}" in render(
        tmp_path / "out")

    long_topic = "telescope " * 2000  # a topic is a line of any length: the first line stays readable
    assert len(_first_document({"method": "litelong", "group_key": long_topic, "anchor_doc_id": "d"}, [], 300)) < 360

    assert "litelong: 2 of 4 topics retrieve documents that fill the target length (2 fall short, 1 of them " \
        "matching no document)" in summary(manifest)
    cut = synthesize(corpus, tmp_path / "cut", topics=topics, num_samples=1, **SETTINGS)
    assert "litelong: 2 of 4 topics retrieve" in summary(cut)  # it said "2 samples", of the 1 written
    assert pq.read_table(tmp_path / "cut" / "data").column("group_key").to_pylist() == [TELESCOPE]
    assert cut["statistics"]["dropped_too_short"] == 0  # the cut stopped before the dropped topics mattered
    # a cut at the last sample passed over NOTHING (before BREAD), not RARE (after it)
    cut = synthesize(corpus, tmp_path / "cut", topics=topics, num_samples=2, **SETTINGS)
    assert cut["statistics"]["dropped_too_short"] == 1


def test_no_topic_that_fills_the_target_length_is_one_line_naming_the_topics(tmp_path):
    from nextlong import synthesize

    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs())
    topics = topics_file(tmp_path / "topics.txt", [RARE, NOTHING])
    with pytest.raises(NextlongError, match=r"built 0 long documents with method litelong: none of the 2 topics of "
                                            r".*topics.txt retrieves documents .* fill 300 tokens \(1 match no "):
        synthesize(corpus, tmp_path / "out", topics=topics, **SETTINGS)


def test_another_topics_file_is_not_served_from_the_cached_stage(tmp_path):
    """The units stage records its topics' count and hash: other topics are refused as other settings (naming
    --topics), --rebuild makes them, and an edit that leaves the topics as they were (a comment) redoes nothing."""
    import pyarrow.parquet as pq

    from nextlong import synthesize

    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs())
    topics, out = tmp_path / "topics.txt", tmp_path / "out"
    synthesize(corpus, out, topics=topics_file(topics, [TELESCOPE, BREAD]), **SETTINGS)
    record = out / "units" / "_done.json"
    first = json.loads(record.read_text())["fingerprint"]
    topics_file(topics, [BREAD, TELESCOPE])
    with pytest.raises(StageMismatchError, match=r"units stage was built with other settings \(topics \(--topics\): "
                                                 r"cached \{'count': 2, 'sha256'"):
        synthesize(corpus, out, topics=str(topics), **SETTINGS)
    synthesize(corpus, out, topics=str(topics), rebuild=True, **SETTINGS)
    assert pq.read_table(out / "data").column("group_key").to_pylist() == [BREAD, TELESCOPE]
    remade, written = json.loads(record.read_text())["fingerprint"], record.stat().st_mtime_ns
    assert remade != first
    topics.write_text(topics.read_text() + "# a comment\n\n")
    synthesize(corpus, out, topics=str(topics), **SETTINGS)
    assert json.loads(record.read_text())["fingerprint"] == remade and record.stat().st_mtime_ns == written


def test_settings_litelong_does_not_use_remake_nothing(tmp_path):
    """LiteLong draws nothing at random and reads no keyword: --seed changed on a finished folder serves it as it is
    (it was refused as other settings of the units stage); --quest-keywords and --quest-max-repeats, which it never
    reads, are refused before any work (config.METHOD_SETTINGS)."""
    from nextlong import synthesize

    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs())
    topics, out = topics_file(tmp_path / "topics.txt", [TELESCOPE, BREAD]), tmp_path / "out"
    synthesize(corpus, out, topics=topics, **SETTINGS)
    record = out / "units" / "_done.json"
    written = record.stat().st_mtime_ns
    synthesize(corpus, out, topics=topics, seed=5, **SETTINGS)
    assert record.stat().st_mtime_ns == written
    for unread in ({"quest_keywords": 7}, {"quest_max_repeats": 2}):
        with pytest.raises(UsageError, match="is not read by --method litelong: it works with --method quest"):
            synthesize(corpus, out, topics=topics, **unread, **SETTINGS)


def test_the_other_methods_record_no_topics():
    """A units stage of another method fingerprints as before the setting existed (its folders are not redone)."""
    from nextlong.synthesis.stages import UnitsStage

    assert "topics" not in UnitsStage(method="quest").settings()
    assert UnitsStage(method="litelong", topics=("a",)).settings()["topics"]["count"] == 1


# --- the topics file ---------------------------------------------------------------------------


def test_topics_file_text_and_jsonl(tmp_path):
    text = tmp_path / "t.txt"
    text.write_bytes("\ufeff# BISAC: SCIENCE\n  Astronomy / Telescopes \r\n\n#skip\nCooking / Bread\n".encode())
    assert read_topics(text) == ("Astronomy / Telescopes", "Cooking / Bread")
    # topics of no search term match nothing (counted by the run); they repeat only as the same text
    text.write_text("!!!\n???\nthe of and\nbread\nbread baking\nbread bread baking\n")  # the last two rank apart
    assert read_topics(text) == ("!!!", "???", "the of and", "bread", "bread baking", "bread bread baking")
    rows = tmp_path / "t.jsonl"
    rows.write_text('{"topic": "Astronomy", "bisac": "SCI004000"}\n\n{"topic": " Bread "}\n')
    assert read_topics(rows) == ("Astronomy", "Bread")


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", "# only a comment\n\n", r"empty.txt: no topics \(expected one per line; blank lines and lines "),
    ("empty.jsonl", "", r"empty.jsonl: no topics \(expected one per line, as JSON objects with a string field"),
    ("bad.jsonl", '{"topic": "a"}\n{"topic": 3}\n', r'bad.jsonl:2: expected a non-blank string field "topic", got 3'),
    ("bad.jsonl", '{"topic": "a"}\n{"name": "b"}\n', r'bad.jsonl:2: expected .*"topic", got no such field'),
    ("bad.jsonl", '{"topic": "a"}\n\n{"topic": \n', r"bad.jsonl:3:1: not valid JSON"),
    ("bad.jsonl", '["a"]\n', r"bad.jsonl:1: expected an object, got an array"),
    ("twice.txt", "a\nb\na\n", r"twice.txt:3: topic 'a' repeats line 1"),
    # the same BM25 query: case, punctuation, word order and stopwords aside
    ("case.txt", "Bread baking\nx\nbaking, BREAD\n",
     r"case.txt:3: topic 'baking, BREAD' searches the same words as line 1, 'Bread baking' \(BM25 ignores case"),
    ("stop.txt", "the bread\r\nbread\r\n", r"stop.txt:2: topic 'bread' searches the same words as line 1, 'the bread'"),
    ("same.jsonl", '{"topic": "Bread"}\n{"topic": "bread."}\n', r"same.jsonl:2: topic 'bread.' searches the same"),
    ("scaled.txt", "bread baking\nbread baking bread baking\n", r"scaled.txt:2: .* searches the same words as line 1"),
    ("latin1.txt", b"ok\ncaf\xe9\n", r"latin1.txt:2: not UTF-8 text"),
])
def test_a_bad_topics_file_is_one_error_naming_the_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(NextlongError, match=message):
        read_topics(path)


def test_a_topics_file_that_is_a_link_or_not_a_file_is_refused(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("a\n")
    os.symlink(real, tmp_path / "link.txt")
    with pytest.raises(NextlongError, match=r"link.txt: a symbolic link, not a regular file"):
        read_topics(tmp_path / "link.txt")
    os.mkfifo(tmp_path / "fifo.txt")
    with pytest.raises(NextlongError, match=r"fifo.txt: is a FIFO, not a regular file"):
        read_topics(tmp_path / "fifo.txt")
    with pytest.raises(NextlongError, match=r"missing.txt: topics file not found"):
        read_topics(tmp_path / "missing.txt")


@pytest.mark.parametrize("topics", [["Astronomy"], 3, ""])
def test_topics_that_are_not_a_file_name_are_a_usage_error(tmp_path, topics):
    """A list of topics (not a file), a number or "" (read as the folder ".") was a TypeError or "is a directory"."""
    from nextlong import synthesize
    from nextlong.errors import UsageError

    expected = r"--topics must name a topics file \(a path\), got " if topics == "" else r"topics must be a string, got "
    with pytest.raises(UsageError, match=expected):
        synthesize(tmp_path / "docs.jsonl", tmp_path / "out", topics=topics, **SETTINGS)


def test_cli_usage_errors_come_before_any_work(tmp_path, capsys):
    """--method litelong without --topics, and --topics with another method: one line, status 2, no folder made;
    a bad topics file: one line naming it, status 1, before the corpus is read."""
    corpus = write_jsonl(tmp_path / "docs.jsonl", synthetic_docs())
    base = ["synthesize", "--corpus", corpus, "--target-length", L, "--chunk-size", 512, "--no-progress"]
    code, _, err = run_cli(base + ["--out", tmp_path / "a", "--method", "litelong"], capsys)
    assert code == 2 and "--method litelong retrieves one sample per topic: give --topics FILE" in \
        assert_one_line_error(err, "synthesize")
    topics = topics_file(tmp_path / "topics.txt", [TELESCOPE])
    code, _, err = run_cli(base + ["--out", tmp_path / "b", "--method", "quest", "--topics", topics], capsys)
    assert code == 2 and "--topics is LiteLong's topics file: it works with --method litelong, not quest" in \
        assert_one_line_error(err, "synthesize")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    code, _, err = run_cli(base + ["--out", tmp_path / "c", "--method", "litelong", "--topics", empty], capsys)
    assert code == 1 and f"{empty}: no topics" in assert_one_line_error(err, "synthesize")
    assert not any((tmp_path / name).exists() for name in "abc")
