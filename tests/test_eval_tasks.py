"""RULER / JSON-KV task generation and scoring, without a model: lengths, depths, leaks, determinism."""

from __future__ import annotations

import pytest

from nextlong.errors import UsageError
from nextlong.eval import scoring
from nextlong.eval.haystack import CorpusTooSmallError
from nextlong.eval.tasks import ALL_TASKS, DEPTHLESS_TASKS, GROUPS, NIAH_TASKS, expand_tasks, make_sample
from tests.eval_fixtures import essay, tok  # noqa: F401 (fixtures)

COARSE_UNITS = ("niah_multikey_2", "niah_multikey_3", "json_kv")  # whole needles or UUID pairs


def _total(tok, sample):
    return tok.count_tokens(sample.prompt) + tok.count_tokens(sample.gold)


@pytest.mark.parametrize("task,length", [(t, n) for t in ALL_TASKS
                                          for n in ((4096, 8192) if t in COARSE_UNITS + ("cwe",) else (2048, 4096))])
def test_prompt_plus_answer_reach_the_target_length_within_2_percent(tok, essay, task, length):
    # Haystacks of whole needles or UUID pairs move in steps of ~70 tokens of this small vocabulary;
    # cwe's 4K setting (30 repeats against 3) just fits 4K with real tokenizers, not with this one.
    for index in range(2):
        sample = make_sample(tok, task, length, 40.0, index, seed=3, essay=essay)
        total = _total(tok, sample)
        assert total <= length, (task, total)
        assert total >= 0.98 * length, (task, total, length)


@pytest.mark.parametrize("task", [t for t in ALL_TASKS if t not in COARSE_UNITS + ("cwe",)])
def test_short_lengths_within_2_percent_where_units_are_small(tok, essay, task):
    # Haystacks of whole needles have units of ~40 tokens, too coarse for 2% at 1K; the others are fine
    # (cwe needs more than 1K tokens with this small test vocabulary: its refusal at 1K is tested elsewhere).
    sample = make_sample(tok, task, 1024, 50.0, 0, seed=0, essay=essay)
    assert 0.98 * 1024 <= _total(tok, sample) <= 1024


@pytest.mark.parametrize("task", [t for t in ALL_TASKS if t not in DEPTHLESS_TASKS])
@pytest.mark.parametrize("depth", [0.0, 25.0, 50.0, 75.0, 100.0])
def test_needle_sits_at_the_asked_depth_within_2_percent(tok, essay, task, depth):
    """Depth = haystack tokens before the asked needle / all haystack tokens (inserted needles,
    distractors and demonstration pairs are not haystack)."""
    sample = make_sample(tok, task, 4096, depth, 1, seed=5, essay=essay)
    start, _ = sample.needle_spans[0]  # the first asked needle is the one placed at the depth
    c0, c1 = sample.context_span
    inserts = [sample.prompt[a:b] for a, b in sample.needle_spans] + _other_inserts(sample)
    before = tok.count_tokens(sample.prompt[c0:start]) - sum(
        tok.count_tokens(t) for t in inserts if sample.prompt.index(t) < start)
    haystack = tok.count_tokens(sample.prompt[c0:c1]) - sum(tok.count_tokens(t) for t in inserts)
    measured = 100 * before / haystack
    assert abs(measured - depth) <= 2.0, (task, depth, measured)


def _other_inserts(sample):
    """Inserted sentences other than the asked needles: distractor needles, further values, the
    JSON pairs of the two demonstrations. In niah_multikey_2/3 needles are the haystack itself."""
    import re

    if sample.task == "json_kv":
        keys = re.findall(r'Key: "([0-9a-f-]+)"', sample.question)[:-1]
        return [re.search(rf'"{k}": "[0-9a-f-]+"', sample.prompt).group(0) for k in keys]
    if sample.task not in ("niah_multikey_1", "niah_multivalue", "niah_multiquery"):
        return []
    asked = {sample.prompt[a:b] for a, b in sample.needle_spans}
    return [m.group(0) for m in re.finditer(r"One of the special magic \w+ for [\w-]+ is: [\w-]+\.", sample.prompt)
            if m.group(0) not in asked]


@pytest.mark.parametrize("task", ALL_TASKS)
def test_the_answer_never_appears_in_the_question_part(tok, essay, task):
    for index in range(3):
        sample = make_sample(tok, task, 2048, 50.0, index, seed=11, essay=essay)
        question = sample.question.lower()
        for answer in sample.answers:
            assert answer.lower() not in question, (task, answer)
            assert answer in sample.prompt[sample.context_span[0]:sample.context_span[1]], (task, answer)
        if task in NIAH_TASKS or task == "json_kv":
            for answer in sample.answers:  # the value is written once, in its needle
                assert sample.prompt.count(answer) == 1, (task, answer)
            for a, b in sample.needle_spans:
                assert any(ans in sample.prompt[a:b] for ans in sample.answers)


def test_samples_are_deterministic_for_a_seed_and_differ_across_seeds(tok, essay):
    for task in ALL_TASKS:
        a = make_sample(tok, task, 2048, 25.0, 0, seed=1, essay=essay)
        b = make_sample(tok, task, 2048, 25.0, 0, seed=1, essay=essay)
        c = make_sample(tok, task, 2048, 25.0, 0, seed=2, essay=essay)
        assert a == b
        assert a.answers != c.answers, task


def test_task_definitions_follow_ruler(tok, essay):
    s = make_sample(tok, "niah_single_1", 2048, 50.0, 0, seed=0, essay=essay)
    assert s.prompt.startswith("A special magic number is hidden within the following text.")
    assert "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again." in s.prompt
    assert s.prompt.endswith("mentioned in the provided text is")
    assert len(s.answers) == 1 and len(s.answers[0]) == 7 and s.answers[0].isdigit()
    mq = make_sample(tok, "niah_multiquery", 2048, 50.0, 0, seed=0, essay=essay)
    assert len(mq.answers) == 4 and mq.prompt.endswith("are")
    mv = make_sample(tok, "niah_multivalue", 2048, 50.0, 0, seed=0, essay=essay)
    assert len(mv.answers) == 4
    mk3 = make_sample(tok, "niah_multikey_3", 2048, 50.0, 0, seed=0, essay=essay)
    assert mk3.prompt.count("One of the special magic uuids for") >= 15  # a haystack of needles
    vt = make_sample(tok, "vt", 2048, None, 0, seed=0, essay=essay)
    assert len(vt.answers) == 5 and all(len(v) == 5 and v.isupper() for v in vt.answers)
    assert f"VAR {vt.answers[1]} = VAR {vt.answers[0]}" in vt.prompt
    cwe = make_sample(tok, "cwe", 8192, None, 0, seed=0, essay=essay)  # 30 vs 3 repeats from 4K on
    listing = cwe.prompt[cwe.context_span[0]:cwe.context_span[1]]
    counts = {w: listing.count(f". {w} ") + listing.endswith(f". {w}") for w in cwe.answers}
    assert len(cwe.answers) == 10 and all(n == 30 for n in counts.values()), counts
    fwe = make_sample(tok, "fwe", 4096, None, 0, seed=0, essay=essay)
    words = fwe.prompt[fwe.context_span[0]:fwe.context_span[1]].split()
    freq = sorted(((words.count(w), w) for w in set(words)), reverse=True)
    assert freq[0][1] == "..." and [w for _, w in freq[1:4]] == fwe.answers
    kv = make_sample(tok, "json_kv", 2048, 50.0, 0, seed=0, essay=essay)
    import json

    obj = json.loads(kv.prompt[kv.context_span[0]:kv.context_span[1]])
    key = kv.question.rsplit('Key: "', 1)[1].split('"')[0]
    assert obj[key] == kv.answers[0] and kv.question.count("Corresponding value:") == 3


def test_scoring_matches_rulers_definitions():
    # string_match_all: fraction of references found, case-insensitive
    assert scoring.string_match_all("The numbers are 1234567 and 7654321.", ["1234567", "7654321"]) == 1.0
    assert scoring.string_match_all("only 1234567 here", ["1234567", "7654321", "1111111"]) == pytest.approx(1 / 3)
    assert scoring.string_match_all("WOBBLY-TABLE", ["wobbly-table"]) == 1.0
    assert scoring.string_match_all("", ["x"]) == 0.0
    # string_match_part: any reference found
    assert scoring.string_match_part("Paris, France", ["paris", "Lyon"]) == 1.0
    assert scoring.string_match_part("Berlin", ["paris", "Lyon"]) == 0.0
    # HELMET's substring exact match, on SQuAD-normalised text (case, punctuation and articles do not count)
    assert scoring.substring_exact_match(" 3f2a-11 is it", ["3f2a-11"]) == 1.0
    assert scoring.substring_exact_match("The value: 3F2A-11.", ["3f2a-11"]) == 1.0
    assert scoring.substring_exact_match("3f2a-12", ["3f2a-11"]) == 0.0
    assert scoring.substring_exact_match("3f2a", ["3f2a-11"]) == 0.0
    # ROUGE-1 recall with clipped counts
    assert scoring.rouge1_recall("the cat the cat", "the cat sat") == pytest.approx(2 / 3)
    assert scoring.rouge1_recall("nothing", "the cat sat") == 0.0
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        scoring.score("bleu", "a", ["a"])


def test_unknown_task_and_groups():
    with pytest.raises(UsageError, match="unknown task 'niah_singlex'") as err:
        expand_tasks(["niah_singlex"])
    assert all(f" {m}," in str(err.value) or f" {m};" in str(err.value) for m in ("longppl", "repeat", "rag"))
    assert expand_tasks(["recall"]) == list(GROUPS["recall"])
    assert expand_tasks(["niah_single", "niah_single_2", "vt"]) == ["niah_single_1", "niah_single_2",
                                                                     "niah_single_3", "vt"]


def test_corpus_too_small_and_length_too_short(tok):
    with pytest.raises(CorpusTooSmallError, match="too small"):
        make_sample(tok, "niah_single_2", 4096, 50.0, 0, seed=0, essay=["A short essay.", "Two sentences."])
    with pytest.raises(UsageError, match="too short"):
        make_sample(tok, "niah_single_1", 40, 50.0, 0, seed=0)


def test_a_task_too_long_for_a_length_is_skipped_not_fatal(tok, essay):
    from nextlong.eval.haystack import LengthTooShortError
    from nextlong.eval.runner import preflight

    jobs = [("niah_single_1", 1024, 50.0, 0), ("cwe", 1024, None, 0), ("cwe", 8192, None, 0)]
    skipped, _ = preflight(tok, jobs, 0, essay)
    assert list(skipped) == [("cwe", 1024)] and "too short" in skipped[("cwe", 1024)]
    with pytest.raises(LengthTooShortError):
        make_sample(tok, "cwe", 1024, None, 0, seed=0)


def test_preflight_skips_a_cell_where_only_a_later_sample_is_too_long(tok, essay):
    """At vt/560 the first sample fits and the second does not: checking only the first sample of each
    cell let `nextlong eval` fail deep into scoring (seen at sample 110 of 123)."""
    from nextlong.eval.haystack import LengthTooShortError
    from nextlong.eval.runner import preflight

    make_sample(tok, "vt", 560, None, 0, seed=0, essay=essay)
    with pytest.raises(LengthTooShortError):
        make_sample(tok, "vt", 560, None, 1, seed=0, essay=essay)
    jobs = [("vt", 560, None, 0), ("vt", 560, None, 1), ("vt", 2048, None, 0), ("vt", 2048, None, 1)]
    skipped, _ = preflight(tok, jobs, 0, essay)
    assert list(skipped) == [("vt", 560)] and "too short" in skipped[("vt", 560)]


def test_key_words_are_the_shipped_lists_whatever_is_installed():
    """Keys come from nextlong/eval/words (wonderwords 2.2.0's lists); an installed wonderwords 3 changed its
    lists, so reading the installed package would let the environment change what a seed generates."""
    import hashlib
    from importlib.resources import files

    from nextlong.eval import tasks

    expected = {"nouns.txt": "7a9883e93f7012b7ccabceda1cbfc70abc6762b5d3125891666c473ff3d42e26"}
    folder = files("nextlong.eval").joinpath("words")
    digest = hashlib.sha256(folder.joinpath("nouns.txt").read_bytes()).hexdigest()
    assert digest == expected["nouns.txt"]
    assert (len(tasks.nouns()), len(tasks.adjectives()), len(tasks.verbs())) == (6678, 901, 1040)
    assert all(w.isalpha() and w.islower() for w in tasks.nouns() + tasks.adjectives() + tasks.verbs())
