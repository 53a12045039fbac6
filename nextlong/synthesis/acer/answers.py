"""Answers compared the SQuAD way (the normalisation of the official SQuAD v1.1 evaluation script, also
used for Natural Questions and TriviaQA in ACER's paper): lower case, punctuation removed, the articles
a / an / the removed, whitespace collapsed.

`contains_answer` is the `--filter answer-match` test (a generated answer, possibly with its reasoning,
keeps its sample when it contains one of the gold answers); `exact_match` and `token_f1` are the
paper's metrics, for evaluation.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


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
