"""HELMET's JSON key-value recall: find one UUID value among many UUID -> UUID pairs.

The context is one JSON object of random uuid4 keys and values; the number of pairs is searched so
that the prompt fills the target length (HELMET uses about 50 pairs at 4K up to about 1800 at
128K). Two solved demonstrations about other keys of the same object come before the question.
Scored by substring exact match of the gold value in the prediction.
"""

from __future__ import annotations

import json

from .haystack import Insert, Units, build_context, fit_to_length
from .samples import ANSWER_MARGIN, Sample, distinct_values, sample_rng

JSON_KV_HEAD = "Extract the value corresponding to the specified key in the JSON object below.\n\nJSON data:\n"
QUESTION = 'Key: "{key}"\nCorresponding value:'


def _pair(key: str, value: str) -> str:
    return f"{json.dumps(key)}: {json.dumps(value)}"


def json_kv_sample(tok, length: int, depth: float, index: int, seed: int, task: str = "json_kv") -> Sample:
    rng = sample_rng(seed, task, length, depth, index)
    keys = distinct_values(rng, "uuids", 3)
    values = distinct_values(rng, "uuids", 3)
    # The asked pair sits at the asked depth; the two demonstration pairs at random depths.
    inserts = [Insert(_pair(keys[0], values[0]), depth / 100, queried=True),
               Insert(_pair(keys[1], values[1]), rng.random()),
               Insert(_pair(keys[2], values[2]), rng.random())]
    taken = set(keys) | set(values)
    hay_rng = sample_rng(seed, task, length, depth, index, "haystack")

    def make(i):
        key, value = distinct_values(hay_rng, "uuids", 2, taken)
        taken.update((key, value))
        return _pair(key, value)

    units = Units(tok, make, ", ")
    demos = "".join(QUESTION.format(key=k) + " " + v + "\n\n" for k, v in zip(keys[1:], values[1:]))
    tail = "}\n\n" + demos + QUESTION.format(key=keys[0])
    head = JSON_KV_HEAD + "{"

    gold = " " + values[0]
    answer_tokens = tok.count_tokens(gold)
    built, _ = fit_to_length(tok, units, lambda n: build_context(units, n, inserts).framed(head, tail),
                             answer_tokens, length, task=task, what="JSON object")
    prompt, spans = built.context, built.spans
    context_span = (len(JSON_KV_HEAD), len(prompt) - len(tail) + 1)  # the object with its braces
    return Sample(task, length, depth, index, prompt, [values[0]], gold, "substring_exact_match", context_span,
                  spans, max_new_tokens=answer_tokens + ANSWER_MARGIN, depth_actual=built.depths[0])
