"""Answers compared the SQuAD way (the normalisation of the official SQuAD v1.1 evaluation script, also
used for Natural Questions and TriviaQA in ACER's paper): lower case, punctuation removed, the articles
a / an / the removed, whitespace collapsed.

`contains_answer` is the `--filter answer-match` test (a generated answer keeps its sample when it
contains one of the gold answers; with --chain-of-thought, only its `final_answer`, after
ANSWER_MARKER, is compared, never the reasoning); `exact_match` and `token_f1` are the paper's
metrics, for evaluation.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)

ANSWER_MARKER = "So the answer is:"  # read_cot.txt asks for the final answer after it
# "Passage 2", "passages 1 and 3", "passage #2", "passage no. 2": what read.txt's numbering invites
_PASSAGE_NUMBER = re.compile(r"\bpassages?\s*(?:#\s*|no\.?\s*|number\s+)?\d", re.IGNORECASE)


def final_answer(text: str, marker: str = ANSWER_MARKER) -> str | None:
    """The final answer of a chain-of-thought answer: the text after the first `marker` (matched without
    regard to case), stripped; None when there is no marker or nothing after it."""
    m = re.search(re.escape(marker), text, re.IGNORECASE)
    if m is None:
        return None
    return text[m.end():].strip() or None


def cites_passage_number(text: str) -> bool:
    """True when the text names a passage by its number ("Passage 2 says ..."): the reader's prompt numbers
    its passages, a training sample's chunks carry no numbers."""
    return _PASSAGE_NUMBER.search(text) is not None


def normalize_answer(text: str) -> str:
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def contains_answer(prediction: str, golds) -> bool:
    """True when the normalised prediction holds a normalised gold answer as whole words."""
    pred = f" {normalize_answer(prediction)} "
    return any(g and f" {g} " in pred for g in (normalize_answer(x) for x in golds))


def exact_match(prediction: str, golds) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds) -> float:
    """The best token F1 of the prediction against any gold answer."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        ref = normalize_answer(gold).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            p, r = common / len(pred), common / len(ref)
            best = max(best, 2 * p * r / (p + r))
        elif not pred and not ref:
            best = max(best, 1.0)
    return best
