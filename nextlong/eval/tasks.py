"""RULER's offline tasks, generated on the fly in the model's own tokens, deterministic for a seed.

Tasks (names as RULER's): niah_single_1 (noise haystack), niah_single_2/3 (essay haystack; number /
UUID values), niah_multikey_1 (essay with 3 distractor needles), niah_multikey_2/3 (a haystack made
only of needles; word / UUID keys), niah_multivalue (4 values for one key), niah_multiquery (4 keys
asked at once), vt (variable tracking: one chain of 4 hops), cwe (10 common words, 30 repeats
against 3), fwe (coded words drawn from a Zipf(2) law, ranks 2-4 asked), and HELMET's json_kv
(`nextlong.eval.json_kv`). The needle, question and answer wording follows RULER's templates so
numbers stay comparable. Every sample's random choices come from its own generator, seeded by
(seed, task, length, depth, index), so a sample never depends on which others were asked for.

Where an answer lists several items whose order the question does not fix, the gold answer (the
completion teacher-forced scoring measures) lists them in the order they appear in the prompt:
niah_multivalue's 4 values in the order of their needles in the haystack, cwe's 10 words in the order
of their first appearance in the word list (its solved example too). niah_multiquery follows the asked
keys, vt its chain. Before 2026-12-06 the multivalue gold followed the values' draw order and cwe's the
shuffled vocabulary's, both unrelated to the text, so a perfect reader matched them by chance only.
Greedy scoring (string_match_all) does not depend on the order.
"""

from __future__ import annotations

import functools
import math
import random
import string
from dataclasses import dataclass
from typing import Sequence

from ..errors import UsageError
from .haystack import (Insert, LengthTooShortError, Units, build_context, essay_units, fit_to_length, noise_units,
                       search_largest)
from .samples import (ANSWER_MARGIN, Sample, adjectives, distinct_values, nouns,  # noqa: F401  (users import them from here)
                      random_value, sample_rng, verbs)

# The sample generators' and scorers' revision, part of `nextlong eval`'s resume fingerprint: a change in what a
# seed generates (the gold order of niah_multivalue and cwe, 2026-12-06) or how a record is scored (json_kv's
# normalised match, 2026-12-06b) must not reuse older records.
TASKS_REVISION = "2026-12-06b"
# What a seed generates for a tokenizer with prefix ids (Llama-3's BOS), part of the fingerprint of such runs only:
# 2026-12-07, cwe's and fwe's settings follow the asked length, not the length less the prefix (cwe at 4096 had
# RULER's below-4K repeats, 6 against 1).
PREFIXED_TASKS_REVISION = "2026-12-07"
PREFIXED_TASKS = ("cwe", "fwe")  # the tasks that revision changed: runs of other tasks keep their records


# ---------------------------------------------------------------- NIAH

NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
NIAH_HEAD = ("Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
             "I will quiz you about the {type_v} afterwards.\n")
NIAH_TAIL = ("\nWhat are all the special magic {type_v} for {query} mentioned in the provided text? "
             "The special magic {type_v} for {query} mentioned in the provided text are")


@dataclass(frozen=True)
class NiahSpec:
    haystack: str     # noise | essay | needles
    key_kind: str     # words | numbers | uuids
    value_kind: str
    num_keys: int = 1
    num_values: int = 1
    num_queries: int = 1


NIAH_TASKS = {
    "niah_single_1": NiahSpec("noise", "words", "numbers"),
    "niah_single_2": NiahSpec("essay", "words", "numbers"),
    "niah_single_3": NiahSpec("essay", "words", "uuids"),
    "niah_multikey_1": NiahSpec("essay", "words", "numbers", num_keys=4),
    "niah_multikey_2": NiahSpec("needles", "words", "numbers"),
    "niah_multikey_3": NiahSpec("needles", "uuids", "uuids"),
    "niah_multivalue": NiahSpec("essay", "words", "numbers", num_values=4),
    "niah_multiquery": NiahSpec("essay", "words", "numbers", num_keys=4, num_queries=4),
}
OTHER_TASKS = ("vt", "cwe", "fwe", "json_kv")
ALL_TASKS = tuple(NIAH_TASKS) + OTHER_TASKS
DEPTHLESS_TASKS = ("vt", "cwe", "fwe")
GROUPS = {
    "all": ALL_TASKS,
    "ruler": tuple(NIAH_TASKS) + ("vt", "cwe", "fwe"),
    "niah_single": ("niah_single_1", "niah_single_2", "niah_single_3"),
    "niah_multikey": ("niah_multikey_1", "niah_multikey_2", "niah_multikey_3"),
    # HELMET's Recall category (where NExtLong gains most).
    "recall": ("json_kv", "niah_multikey_2", "niah_multikey_3", "niah_multivalue"),
}
NEEDS_ESSAY = tuple(name for name, spec in NIAH_TASKS.items() if spec.haystack == "essay")


MEASURES = ("longppl", "repeat", "rag")  # what `nextlong eval --tasks` runs besides the generated tasks


def expand_tasks(names: Sequence[str]) -> list[str]:
    """Task names and group names -> task names in a fixed order, without repeats."""
    out: list[str] = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        members = GROUPS.get(name, (name,) if name in ALL_TASKS else None)
        if members is None:
            raise UsageError(f"unknown task {name!r}; tasks: {', '.join(ALL_TASKS + MEASURES)}; groups: "
                             f"{', '.join(GROUPS)}")
        out.extend(m for m in members if m not in out)
    if not out:
        raise UsageError("no task given")
    return out


def _niah_sample(tok, essay: Sequence[str] | None, task: str, spec: NiahSpec, length: int, depth: float,
                 index: int, seed: int) -> Sample:
    rng = sample_rng(seed, task, length, depth, index)
    num_keys = max(spec.num_keys, spec.num_queries)
    keys = distinct_values(rng, spec.key_kind, num_keys)
    values = [distinct_values(rng, spec.value_kind, spec.num_values) for _ in keys]
    queried = list(range(spec.num_queries))  # keys are random, so the first ones are as good as any
    # The first needle of the first asked key sits at the asked depth; the others at random depths.
    inserts = []
    for k, key in enumerate(keys):
        for j, value in enumerate(values[k]):
            fraction = depth / 100 if (k == 0 and j == 0) else rng.random()
            inserts.append(Insert(NEEDLE.format(type_v=spec.value_kind, key=key, value=value), fraction,
                                  queried=k in queried))
    singular = spec.num_queries * spec.num_values == 1
    type_v = spec.value_kind[:-1] if singular else spec.value_kind
    query_keys = [keys[k] for k in queried]
    query = query_keys[0] if len(query_keys) == 1 else ", ".join(query_keys[:-1]) + ", and " + query_keys[-1]
    head = NIAH_HEAD.format(type_v=type_v)
    tail = NIAH_TAIL.format(type_v=type_v, query=query)
    if singular:
        head = head.replace("Some", "A", 1).replace(" are ", " is ", 1)
        tail = tail.replace("are all", "is").replace(" are", " is")

    def answers_in_text_order(spans) -> list[str]:
        """The asked keys in the asked order; one key's values in the order their needles appear in the
        text (the spans come in the order of the queried inserts: key by key, value by value)."""
        out, i = [], 0
        for k in queried:
            span_of = dict(zip(values[k], spans[i:i + len(values[k])]))
            out += sorted(values[k], key=lambda v: span_of[v][0])
            i += len(values[k])
        return out

    def gold_of(answers) -> str:
        return " " + ", ".join(answers) + "."

    if spec.haystack == "noise":
        units = noise_units(tok)
    elif spec.haystack == "essay":
        if essay is None:
            raise UsageError(f"task {task} needs an essay corpus")
        units = essay_units(tok, essay)
    else:  # a haystack made of needles for other keys
        taken = set(keys)
        hay_rng = sample_rng(seed, task, length, depth, index, "haystack")

        def make(i):
            key = distinct_values(hay_rng, spec.key_kind, 1, taken)[0]
            taken.add(key)
            return NEEDLE.format(type_v=spec.value_kind, key=key, value=random_value(hay_rng, spec.value_kind))

        units = Units(tok, make, "\n")

    built, _ = fit_to_length(tok, units, lambda n: build_context(units, n, inserts).framed(head, tail),
                             lambda _, spans: tok.count_tokens(gold_of(answers_in_text_order(spans))),
                             length, task=task, what="essay" if spec.haystack == "essay" else "haystack")
    prompt, spans = built.context, built.spans
    answers = answers_in_text_order(spans)
    gold = gold_of(answers)
    answer_tokens = tok.count_tokens(gold)
    context_span = (len(head), len(prompt) - len(tail))
    return Sample(task, length, depth, index, prompt, answers, gold, "string_match_all", context_span, spans,
                  max_new_tokens=answer_tokens + ANSWER_MARGIN, depth_actual=built.depths[0])


# ---------------------------------------------------------------- variable tracking

VT_HEAD = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
VT_TAIL = ("\nQuestion: Find all variables that are assigned the value {query} in the text above. Answer: "
           "According to the chain(s) of variable assignment in the text above, {num_v} variables are assigned "
           "the value {query}, they are:")


def _vt_chain(rng: random.Random, hops: int, name_len: int) -> tuple[list[str], list[str], str]:
    names: list[str] = []
    while len(names) < hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=name_len))
        if name not in names:
            names.append(name)
    value = str(rng.randint(10000, 99999))
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[i + 1]} = VAR {names[i]}" for i in range(hops)]
    return names, chain, value


def _vt_prompt(units: Units, n: int, chain: list[str], fractions: list[float], value: str, hops: int):
    """The prompt (VT_HEAD, the context with the chain, the question) as a Built, and its question."""
    tail = VT_TAIL.format(query=value, num_v=hops + 1)
    built = build_context(units, n, [Insert(s, f, queried=True) for s, f in zip(chain, fractions)])
    return built.framed(VT_HEAD, tail), tail


def _vt_sample(tok, task: str, length: int, index: int, seed: int, hops: int = 4) -> Sample:
    rng = sample_rng(seed, task, length, None, index)
    # A short solved example first (3-letter names), as RULER gives one.
    ex_names, ex_chain, ex_value = _vt_chain(rng, hops, 3)
    ex_fracs = sorted(rng.random() for _ in ex_chain)
    example = _vt_prompt(noise_units(tok), 10, ex_chain, ex_fracs, ex_value, hops)[0].context + " " + " ".join(
        ex_names) + "\n\n"
    names, chain, value = _vt_chain(rng, hops, 5)
    while set(names) & set(ex_names):
        names, chain, value = _vt_chain(rng, hops, 5)
    fractions = sorted(rng.random() for _ in chain)
    units = noise_units(tok)
    tails: dict[int, str] = {}

    def build(n):
        built, tails[n] = _vt_prompt(units, n, chain, fractions, value, hops)
        return built.framed(example)

    gold = " " + " ".join(names)
    built, n = fit_to_length(tok, units, build, tok.count_tokens(gold), length, task=task)
    prompt, spans = built.context, built.spans
    context_span = (len(example) + len(VT_HEAD), len(prompt) - len(tails[n]))
    return Sample(task, length, None, index, prompt, names, gold, "string_match_all", context_span, spans,
                  max_new_tokens=tok.count_tokens(gold) + ANSWER_MARGIN)


# ---------------------------------------------------------------- common words

CWE_HEAD = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
            "ones that appear most often.\n")
CWE_TAIL = "\nQuestion: What are the 10 most common words in the above list? Answer: The top 10 words that appear " \
           "most often in the list are:"


@functools.lru_cache(maxsize=None)
def _cwe_vocabulary() -> tuple[str, ...]:
    return tuple(sorted(set(nouns()) | set(adjectives()) | set(verbs())))


def _numbered(words: Sequence[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def _cwe_list(rng_seed: str, words: Sequence[str], num_common: int, common_repeats: int, uncommon_repeats: int):
    """The shuffled list, and its common words in the order of their first appearance in it."""
    common, uncommon = list(words[:num_common]), list(words[num_common:])
    listed = common * common_repeats + uncommon * uncommon_repeats
    random.Random(rng_seed).shuffle(listed)
    wanted = set(common)
    return listed, list(dict.fromkeys(w for w in listed if w in wanted))


def _cwe_sample(tok, task: str, length: int, index: int, seed: int, num_common: int = 10,
                nominal: int | None = None) -> Sample:
    """`length`: the tokens prompt + gold may take; `nominal`: the length asked (default `length`), which picks
    RULER's setting as RULER's max_seq_length does, whatever a BOS takes of it."""
    rng = sample_rng(seed, task, length, None, index)
    vocab = _cwe_vocabulary()
    order = rng.sample(vocab, len(vocab))
    # RULER's repeats: 30 against 3 (example 10 against 3) from 4K on; 6 against 1 (example 3/1) below.
    if (nominal or length) >= 4096:
        repeats, ex_words, ex_repeats = (30, 3), 40, (10, 3)
    else:
        repeats, ex_words, ex_repeats = (6, 1), 20, (3, 1)
    ex_list, ex_common = _cwe_list(f"{seed}:{task}:{length}:{index}:example", order[-ex_words:], num_common,
                                   *ex_repeats)
    example = CWE_HEAD + _numbered(ex_list) + CWE_TAIL + " " + _numbered(ex_common) + "\n"
    pool = order[:-ex_words]

    def build(num_words):
        """(prompt, common words in the order of their first appearance, gold, gold tokens)"""
        listed, common = _cwe_list(f"{seed}:{task}:{length}:{index}:{num_words}", pool[:num_words], num_common,
                                   *repeats)
        context = _numbered(listed)
        gold = " " + _numbered(common)
        return example + CWE_HEAD + context + CWE_TAIL, common, gold, tok.count_tokens(gold)

    cache = {}

    def fits(num_words):
        if num_words not in cache:
            cache[num_words] = build(num_words)
        prompt, _, _, answer_tokens = cache[num_words]
        return tok.count_tokens(prompt) + answer_tokens <= length

    n = search_largest(fits, num_common + 1, lambda want: min(want, len(pool)))
    if n is None:
        raise LengthTooShortError(f"task {task}: length {length} is too short for a list of {num_common + 1} words")
    prompt, answers, gold, answer_tokens = cache[n] if n in cache else build(n)
    start = len(example) + len(CWE_HEAD)
    return Sample(task, length, None, index, prompt, answers, gold, "string_match_all",
                  (start, len(prompt) - len(CWE_TAIL)), [], max_new_tokens=answer_tokens + ANSWER_MARGIN)


# ---------------------------------------------------------------- frequent words

FWE_HEAD = ("Read the following coded text and track the frequency of each coded word. Find the three most "
            "frequently appeared coded words. ")
FWE_TAIL = ("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
            "frequently appeared words in the above coded text? Answer: According to the coded text above, the "
            "three most frequently appeared words are:")
ZETA_2 = math.pi ** 2 / 6


def _fwe_sample(tok, task: str, length: int, index: int, seed: int, alpha: float = 2.0, word_len: int = 6,
                nominal: int | None = None) -> Sample:
    """`length` and `nominal` as for `_cwe_sample`: the vocabulary size is RULER's max_seq_length // 50."""
    if alpha != 2.0:
        raise UsageError("fwe: only alpha = 2.0 (RULER's default) is supported")
    rng = sample_rng(seed, task, length, None, index)
    vocab_size = max((nominal or length) // 50, 8)
    vocab: list[str] = []
    seen = set()
    while len(vocab) < vocab_size:
        word = "".join(rng.choices(string.ascii_lowercase, k=word_len))
        if word not in seen:
            seen.add(word)
            vocab.append(word)
    vocab[0] = "..."  # the most frequent "word" is noise, as in RULER; ranks 2-4 are asked
    answers = vocab[1:4]

    def build(num_words):
        words = []
        for rank, word in enumerate(vocab, start=1):
            words.extend([word] * int(num_words * rank ** -alpha / ZETA_2))
        random.Random(f"{seed}:{task}:{length}:{index}:{num_words}").shuffle(words)
        return FWE_HEAD + " ".join(words) + FWE_TAIL

    gold = " " + " ".join(answers)
    answer_tokens = tok.count_tokens(gold)
    cache = {}

    def fits(num_words):
        if num_words not in cache:
            cache[num_words] = build(num_words)
        return tok.count_tokens(cache[num_words]) + answer_tokens <= length

    n = search_largest(fits, 16, lambda want: want)
    if n is None:
        raise LengthTooShortError(f"task {task}: length {length} is too short for the coded text")
    prompt = cache[n]
    return Sample(task, length, None, index, prompt, answers, gold, "string_match_all",
                  (len(FWE_HEAD), len(prompt) - len(FWE_TAIL)), [], max_new_tokens=answer_tokens + ANSWER_MARGIN)


# ---------------------------------------------------------------- entry point


def make_sample(tokenizer, task: str, length: int, depth: float | None, index: int, seed: int,
                essay: Sequence[str] | None = None) -> Sample:
    """One sample of `task` whose prompt + gold answer fill `length` tokens of `tokenizer`, the ids it puts
    before a sequence (Llama-3's BOS, `Tokenizer.prefix_ids`, which the prompt is fed after) included."""
    prefix = len(getattr(tokenizer, "prefix_ids", ()))
    if prefix:  # the prompt is built one prefix shorter; cwe's and fwe's settings still follow `length`
        import dataclasses

        return dataclasses.replace(_make_sample(tokenizer, task, length - prefix, depth, index, seed, essay,
                                                nominal=length), length=length)
    return _make_sample(tokenizer, task, length, depth, index, seed, essay)


def _make_sample(tokenizer, task: str, length: int, depth: float | None, index: int, seed: int,
                 essay: Sequence[str] | None = None, nominal: int | None = None) -> Sample:
    if task in NIAH_TASKS:
        return _niah_sample(tokenizer, essay, task, NIAH_TASKS[task], length, depth, index, seed)
    if task == "vt":
        return _vt_sample(tokenizer, task, length, index, seed)
    if task == "cwe":
        return _cwe_sample(tokenizer, task, length, index, seed, nominal=nominal)
    if task == "fwe":
        return _fwe_sample(tokenizer, task, length, index, seed, nominal=nominal)
    if task == "json_kv":
        from .json_kv import json_kv_sample

        return json_kv_sample(tokenizer, length, depth, index, seed)
    raise UsageError(f"unknown task {task!r}; tasks: {', '.join(ALL_TASKS)}")


def depths_for(task: str, depths: Sequence[float]) -> list[float | None]:
    """The depths a task is run at: the asked ones, or [None] for tasks without a needle depth."""
    return [None] if task in DEPTHLESS_TASKS else list(depths)


def linear_depths(n: int) -> list[float]:
    """n depths spread evenly over 0..100 percent (one depth: 50)."""
    if n == 1:
        return [50.0]
    return [round(100 * i / (n - 1), 2) for i in range(n)]
