"""LiteLong's topics file (`synthesize --method litelong --topics FILE`): one retrieval query per sample.

LiteLong's authors have several LLMs debate topics within the BISAC book classification and a judge LLM
filter them (method §2, "LiteLong"); offline we cannot run that, so the user brings the topics. The file is
untrusted (SECURITY.md): a regular file, not a symbolic link, at most TOPICS_LIMIT bytes, read once; a bad
line is one error naming the file and the line.

* text: one topic per line, UTF-8; blank lines and lines starting with `#` are skipped;
* `.jsonl`: one JSON object per line with a string field "topic" (other fields ignored; blank lines skipped).

Each topic makes one sample, in the file's order; a topic given twice would make the same sample twice and
is refused, naming both lines. "Twice" is as BM25 reads a topic (`search_terms`): "Bread baking", "baking,
bread", "the bread of baking" and "bread baking bread baking" are one query, so one topic.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path

from ..errors import NextlongError
from ..mining.bm25 import ENGLISH_STOPWORDS, word_terms
from ..untrusted import parse_json, printable, read_bytes, show

TOPICS_LIMIT = 16 << 20  # bytes; LiteLong's topic lists are thousands of short lines


def read_topics(path) -> tuple[str, ...]:
    """The topics of `path`, in order, each stripped of surrounding whitespace."""
    path = Path(path)
    data = read_bytes(path, NextlongError, limit=TOPICS_LIMIT, follow=False, what="topics file")
    jsonl = path.name.lower().endswith(".jsonl")
    topics: list[str] = []
    seen: dict[tuple | str, tuple[int, str]] = {}  # a topic's search terms -> its line and text
    for number, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NextlongError(f"{where}: not UTF-8 text (byte {exc.start + 1} of the line)") from None
        if number == 1:
            line = line.removeprefix("\ufeff")  # a byte-order mark some editors write
        text = line.strip()
        if not text or (not jsonl and text.startswith("#")):
            continue
        if jsonl:
            row = parse_json(text, where, NextlongError, expect=dict)
            topic = row.get("topic")
            if not isinstance(topic, str) or not topic.strip():
                raise NextlongError(f"{where}: expected a non-blank string field \"topic\", got "
                                    f"{show(topic) if 'topic' in row else 'no such field'}")
            text = topic.strip()
        key = search_terms(text) or text  # a topic of no search term (it matches nothing): its text
        if key in seen:
            first_number, first = seen[key]
            if first == text:
                raise NextlongError(f"{where}: topic {printable(show(text))} repeats line {first_number} (each topic "
                                    "makes one sample: a repeat would make the same sample again)")
            raise NextlongError(f"{where}: topic {printable(show(text))} searches the same words as line "
                                f"{first_number}, {printable(show(first))} (BM25 ignores case, punctuation, word order and English "
                                "stopwords): it would make the same sample again")
        seen[key] = (number, text)
        topics.append(text)
    if not topics:
        raise NextlongError(f"{path}: no topics (expected one per line" + (
            ", as JSON objects with a string field \"topic\")" if jsonl
            else "; blank lines and lines starting with # are skipped)"))
    return tuple(topics)


def search_terms(topic: str) -> tuple[tuple[str, int], ...]:
    """What LiteLong's BM25 search (baselines.litelong_contexts: word terms, English stopwords out) makes of
    a topic: its terms, sorted, with their counts over the counts' gcd. A score is a sum over the query's terms
    (repeats count), so two topics with the same key rank every document alike ("bread bread" is "bread")."""
    counts = Counter(word_terms(topic, ENGLISH_STOPWORDS))
    g = math.gcd(*counts.values()) if counts else 1
    return tuple(sorted((w, c // g) for w, c in counts.items()))


def topics_identity(topics) -> dict:
    """What a stage's fingerprint records of its topics: how many and a hash of them in order, so another
    topics file (or the same one edited) makes the stage again, while a comment or a blank line does not."""
    blob = json.dumps(list(topics), ensure_ascii=False).encode("utf-8")
    return {"count": len(topics), "sha256": hashlib.sha256(blob).hexdigest()}
