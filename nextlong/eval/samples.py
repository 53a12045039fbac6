"""What a task sample is, and the seeded draws every task shares (word lists, values, a generator per
sample). A leaf module: tasks.py and json_kv.py import it, so neither imports the other back."""

from __future__ import annotations

import functools
import random
import uuid
from dataclasses import asdict, dataclass, field

# Greedy decoding budget beyond the gold answer's tokens: room for a preamble, cheap on CPU.
ANSWER_MARGIN = 8


@dataclass
class Sample:
    """One prompt with its references. Char spans index into `prompt`."""

    task: str
    length: int                    # target: prompt + gold answer tokens
    depth: float | None            # percent of the haystack before the asked needle; None: no depth
    index: int
    prompt: str
    answers: list[str]             # references for the metric
    gold: str                      # the completion teacher-forced scoring measures
    metric: str
    context_span: tuple[int, int]  # the haystack with its needles
    needle_spans: list[tuple[int, int]] = field(default_factory=list)  # the asked needle(s)
    max_new_tokens: int = 32
    # where the asked needle landed, in percent of the haystack's tokens before it (an insert goes between two
    # haystack units, so it can differ from `depth`: nextlong.eval.haystack); None for a task without a depth
    depth_actual: float | None = None

    @property
    def question(self) -> str:
        """Everything after the context: the question and the answer prefix."""
        return self.prompt[self.context_span[1]:]

    def to_record(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- word lists


@functools.lru_cache(maxsize=None)
def _wordlist(name: str) -> tuple[str, ...]:
    """A word list shipped with nextlong (nextlong/eval/words/), so keys never change with the environment.

    The lists are wonderwords 2.2.0's noun/adjective/verb lists (MIT, see LICENSE.wonderwords there), the
    source RULER draws its keys from, filtered to plain lower-case words so a key is one clean run of
    letters. They are copied rather than imported because wonderwords 3 changed its lists: an installed
    version must not change the tasks a seed generates.
    """
    from importlib.resources import files

    text = files("nextlong.eval").joinpath("words", name).read_text(encoding="utf-8")
    return tuple(text.split())


def nouns() -> tuple[str, ...]:
    return _wordlist("nouns.txt")


def adjectives() -> tuple[str, ...]:
    return _wordlist("adjectives.txt")


def verbs() -> tuple[str, ...]:
    return _wordlist("verbs.txt")


def random_value(rng: random.Random, kind: str) -> str:
    """A key or value as RULER draws them: adjective-noun words, 7-digit numbers or UUID4s."""
    if kind == "words":
        return f"{rng.choice(adjectives())}-{rng.choice(nouns())}"
    if kind == "numbers":
        return str(rng.randint(10 ** 6, 10 ** 7 - 1))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown needle kind {kind!r}")


def distinct_values(rng: random.Random, kind: str, n: int, avoid: set[str] = frozenset()) -> list[str]:
    out: list[str] = []
    seen = set(avoid)
    while len(out) < n:
        value = random_value(rng, kind)
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out


def sample_rng(seed: int, task: str, length: int, depth, index: int, salt: str = "") -> random.Random:
    """A generator for one sample; str seeds are hashed with SHA-512, stable across runs."""
    return random.Random(f"nextlong-eval:{seed}:{task}:{length}:{depth}:{index}:{salt}")
