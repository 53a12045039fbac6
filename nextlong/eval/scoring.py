"""How an answer is judged: RULER's string matches, HELMET's substring match, ROUGE-1 recall.

Greedy generation is scored by string matching (RULER's way). Small base models rarely follow the
answer format, so every sample is also scored teacher-forced: the log-probability of the gold answer
tokens given the prompt, and whether every gold token is the model's top choice (exact match).
"""

from __future__ import annotations

import re
from collections import Counter

METRICS = ("string_match_all", "string_match_part", "substring_exact_match")


def string_match_all(prediction: str, references: list[str]) -> float:
    """RULER: the fraction of references found in the prediction, case-insensitive (0..1)."""
    if not references:
        raise ValueError("string_match_all needs at least one reference")
    pred = prediction.lower()
    return sum(ref.lower() in pred for ref in references) / len(references)


def string_match_part(prediction: str, references: list[str]) -> float:
    """RULER (QA tasks): 1 when any reference is found in the prediction, case-insensitive."""
    if not references:
        raise ValueError("string_match_part needs at least one reference")
    pred = prediction.lower()
    return float(any(ref.lower() in pred for ref in references))


def substring_exact_match(prediction: str, references: list[str]) -> float:
    """HELMET's JSON-KV: 1 when a gold value occurs in the prediction, both normalised as HELMET (after SQuAD)
    does: lower case, punctuation and the articles a/an/the removed, white space collapsed."""
    from ..synthesis.acer.answers import normalize_answer

    if not references:
        raise ValueError("substring_exact_match needs at least one reference")
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(ref) in pred for ref in references))


def score(metric: str, prediction: str, references: list[str]) -> float:
    """Score one prediction with the named metric, 0..1."""
    if metric == "string_match_all":
        return string_match_all(prediction, references)
    if metric == "string_match_part":
        return string_match_part(prediction, references)
    if metric == "substring_exact_match":
        return substring_exact_match(prediction, references)
    raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


_WORD = re.compile(r"[a-z0-9]+")


def rouge1_recall(prediction: str, reference: str) -> float:
    """ROUGE-1 recall: clipped unigram overlap / reference unigrams, on lower-cased alphanumeric
    words (the usual ROUGE tokenization; no stemming)."""
    ref = Counter(_WORD.findall(reference.lower()))
    if not ref:
        return 0.0
    pred = Counter(_WORD.findall(prediction.lower()))
    overlap = sum(min(n, pred[w]) for w, n in ref.items())
    return overlap / sum(ref.values())
