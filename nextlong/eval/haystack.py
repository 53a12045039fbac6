"""Haystacks and the search for their size: the shared machinery of every recall task.

A prompt is `head + context + tail`, where the context is a run of haystack *units* (noise
sentences, essay sentences, distractor needles, JSON pairs) with a few *inserts* (the needles)
placed at asked depths. Lengths are counted in the model's own tokens: `fit_units` finds, by
exponential then binary search, the largest number of units for which prompt + gold answer fit the
target length, as RULER searches its haystack size.

Depth is the fraction of the haystack's tokens (the context without the inserts) that comes before
an insert, so depth 0 is the very start of the context and depth 100 its very end. An insert can only
go between two units, so the depth reached (`Built.depths`, `Sample.depth_actual`; `depth_actual` in `nextlong eval`'s
records) can differ from the asked one by up to half a unit's share of the haystack: a fraction of a
point for the small units of noise and essay haystacks, several points for large units at short
lengths (`json_kv`'s UUID pairs at 1K tokens).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..errors import NextlongError, UsageError

NOISE_SENTENCES = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
                   "There and back again.")


class CorpusTooSmallError(NextlongError):
    """The haystack corpus holds fewer tokens than the asked length needs."""


class LengthTooShortError(UsageError):
    """A task's fixed parts (instructions, examples, question) alone exceed the asked length."""


@dataclass
class Insert:
    """A sentence placed into the haystack at `fraction` (0..1) of its tokens."""

    text: str
    fraction: float
    queried: bool = False  # the sentence the question is about (its span is reported)


class Units:
    """A lazily extended sequence of haystack units with their token counts (each unit counted
    with the joiner in front, so counts add up to close to the joined text's count)."""

    def __init__(self, tokenizer, make_unit: Callable[[int], str | None], joiner: str = " "):
        self.tokenizer = tokenizer
        self.make_unit = make_unit
        self.joiner = joiner
        self.items: list[str] = []
        self.cum: list[int] = [0]  # cum[i] = tokens before unit i
        self.exhausted = False

    def ensure(self, n: int) -> int:
        """Make at least n units if the source has them; returns how many exist."""
        while len(self.items) < n and not self.exhausted:
            unit = self.make_unit(len(self.items))
            if unit is None:
                self.exhausted = True
                break
            self.items.append(unit)
            self.cum.append(self.cum[-1] + self.tokenizer.count_tokens(self.joiner + unit))
        return len(self.items)


def noise_units(tokenizer) -> Units:
    """RULER's noise haystack: "The grass is green. The sky is blue. ..." repeated, one sentence a unit."""
    return Units(tokenizer, lambda i: NOISE_SENTENCES[i % len(NOISE_SENTENCES)], " ")


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def essay_sentences(texts: Sequence[str], max_chars: int = 32) -> list[str]:
    """Sentences of a corpus with whitespace collapsed (as RULER does for its essays). Sentences
    longer than `max_chars` are cut at word boundaries into pieces, so that one unit is a few tokens
    and both the length and a needle's depth can be hit closely."""
    out: list[str] = []
    for text in texts:
        flat = " ".join(text.split())
        for sentence in _SENTENCE_END.split(flat):
            piece: list[str] = []
            size = 0
            for word in sentence.split(" "):
                if piece and size + 1 + len(word) > max_chars:
                    out.append(" ".join(piece))
                    piece, size = [], 0
                piece.append(word)
                size += len(word) + (1 if size else 0)
            if piece and any(piece):
                out.append(" ".join(piece))
    return out


_ESSAY_UNITS: dict[tuple[int, int], tuple[object, Sequence[str], Units]] = {}


def essay_units(tokenizer, sentences: Sequence[str]) -> Units:
    """Units over a list of essay sentences. Shared by every sample of one run (the token counts of
    a long essay are computed once); the entry keeps its tokenizer and list alive, so ids stay unique."""
    key = (id(tokenizer), id(sentences))
    hit = _ESSAY_UNITS.get(key)
    if hit is None or hit[0] is not tokenizer or hit[1] is not sentences:
        if len(_ESSAY_UNITS) > 8:
            _ESSAY_UNITS.clear()
        hit = (tokenizer, sentences,
               Units(tokenizer, lambda i: sentences[i] if i < len(sentences) else None, " "))
        _ESSAY_UNITS[key] = hit
    return hit[2]


def place_inserts(units: Units, n: int, inserts: Sequence[Insert], snap: float = 0.01) -> list[int]:
    """Unit index before which each insert goes: the boundary whose token offset is nearest to
    `fraction` of the first n units' tokens, preferring a sentence end within `snap` of the total."""
    cum = units.cum
    total = cum[n]
    positions = []
    for ins in inserts:
        target = ins.fraction * total
        i = bisect.bisect_left(cum, target, 0, n + 1)
        if i > n or (i > 0 and abs(cum[i - 1] - target) <= abs(cum[i] - target)):
            i -= 1
        best = None
        lo, hi = i, i + 1
        while True:  # widen around i while within the snap distance; first sentence end found wins
            moved = False
            for j in (lo, hi):
                if 0 <= j <= n and abs(cum[j] - target) <= snap * total:
                    moved = True
                    if j == 0 or units.items[j - 1][-1:] in (".", "!", "?"):
                        if best is None or abs(cum[j] - target) < abs(cum[best] - target):
                            best = j
            if best is not None or not moved:
                break
            lo, hi = lo - 1, hi + 1
        positions.append(i if best is None else best)
    return positions


@dataclass
class Built:
    context: str
    spans: list[tuple[int, int]] = field(default_factory=list)  # char spans of queried inserts in context
    # the depth each insert reached, in percent of the haystack's tokens (in the order of `inserts`)
    depths: list[float | None] = field(default_factory=list)

    def framed(self, head: str, tail: str = "") -> "Built":
        """The same context with `head` before it and `tail` after it: a prompt, its spans moved along."""
        return Built(head + self.context + tail, [(a + len(head), b + len(head)) for a, b in self.spans],
                     list(self.depths))


def build_context(units: Units, n: int, inserts: Sequence[Insert], *, opening: str = "",
                  closing: str = "") -> Built:
    """Join the first n units with the inserts placed at their depths. The spans of the queried
    inserts come in the order of `inserts` (the first is the one placed at the asked depth), and so do
    the depths they reached."""
    units.ensure(n)
    positions = place_inserts(units, n, inserts)
    total = units.cum[n]
    depths = [round(100 * units.cum[p] / total, 4) if total else None for p in positions]  # None: no haystack
    by_pos: dict[int, list[int]] = {}
    for k in sorted(range(len(inserts)), key=lambda k: (positions[k], inserts[k].fraction, k)):
        by_pos.setdefault(positions[k], []).append(k)
    pieces: list[tuple[str, int | None]] = []
    for i in range(n + 1):
        for k in by_pos.get(i, ()):
            pieces.append((inserts[k].text, k))
        if i < n:
            pieces.append((units.items[i], None))
    text = [opening]
    offset = len(opening)
    found: dict[int, tuple[int, int]] = {}
    for j, (piece, k) in enumerate(pieces):
        if j:
            text.append(units.joiner)
            offset += len(units.joiner)
        if k is not None and inserts[k].queried:
            found[k] = (offset, offset + len(piece))
        text.append(piece)
        offset += len(piece)
    text.append(closing)
    return Built("".join(text), [found[k] for k in sorted(found)], depths)


def search_largest(fits: Callable[[int], bool], lo: int, available: Callable[[int], int]) -> int | None:
    """Largest n >= lo with fits(n), assuming fits is monotone (True, ..., True, False, ...).
    `available(n)` makes up to n candidates and returns how many exist. None if fits(lo) fails."""
    if not fits(lo):
        return None
    good, step, bad = lo, 16, None
    while bad is None:  # exponential search for a failing size
        want = good + step
        probe = min(want, available(want))
        if probe <= good:
            return good
        if not fits(probe):
            bad = probe
        elif probe < want:  # the source ran out and all of it fits
            return probe
        else:
            good, step = probe, step * 2
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def fit_to_length(tokenizer, units: Units, build: Callable[[int], Built],
                  answer_tokens: int | Callable[[str, list], int], length: int, *, task: str,
                  what: str = "haystack") -> tuple[Built, int]:
    """Largest prompt `build(n)` (a Built whose context is the whole prompt, e.g. `build_context(...).framed(
    head, tail)`) with tokens(prompt) + answer_tokens <= length. Returns (that Built, n): its spans and the
    depths its inserts reached come with it. `answer_tokens` may be a function of (prompt, spans), for a gold
    answer whose wording depends on where the needles landed. Raises a UsageError when even an empty haystack
    is too long, and CorpusTooSmallError when the corpus runs out before the length is reached."""
    cache: dict[int, tuple[Built, int]] = {}

    def measure(n: int):
        if n not in cache:
            built = build(n)
            answer = answer_tokens(built.context, built.spans) if callable(answer_tokens) else answer_tokens
            cache[n] = (built, tokenizer.count_tokens(built.context) + answer)
        return cache[n]

    def fits(n: int) -> bool:
        return measure(n)[1] <= length

    n = search_largest(fits, 0, units.ensure)
    if n is None:
        raise LengthTooShortError(f"task {task}: length {length} is too short: the prompt without any {what} already takes "
                         f"{measure(0)[1]} tokens")
    if units.exhausted and n == len(units.items) and measure(n)[1] < 0.98 * length:
        raise CorpusTooSmallError(
            f"task {task}: the {what} corpus is too small for length {length}: all of it ({n} sentences) gives "
            f"only {measure(n)[1]} tokens; give a larger --corpus or a shorter length")
    return measure(n)[0], n
