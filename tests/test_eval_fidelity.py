"""What `nextlong eval` measures, checked against independent computations (audit of 2026-12-06):
the gold answer's order, teacher forcing on sliding-window models, the mean row, the depth reached."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from nextlong.eval.model import LoadedModel, decode  # noqa: E402
from nextlong.eval.runner import EvalSettings, aggregate, evaluate_sample  # noqa: E402
from nextlong.eval.tasks import CWE_TAIL, make_sample  # noqa: E402
from tests.eval_fixtures import essay, one_thread, sliding_window_model, tok  # noqa: E402,F401


# ---------------------------------------------------------------- gold order


def test_multivalue_gold_lists_the_values_in_the_order_their_needles_appear(tok, essay):
    """Before 2026-12-06 the gold followed the values' draw order, unrelated to the text (value 0 at the
    asked depth, the others at random depths): a reader listing the values in text order matched it in
    about 1 sample in 24, and teacher-forced scoring charged it at least log 24 nats."""
    for index in range(40):
        depth = (0.0, 25.0, 50.0, 75.0, 100.0)[index % 5]
        s = make_sample(tok, "niah_multivalue", 1024, depth, index, seed=index // 5, essay=essay)
        in_text = sorted(s.answers, key=s.prompt.index)
        assert s.gold == " " + ", ".join(in_text) + ".", (index, s.gold, in_text)
        assert s.answers == in_text
        # the needle at the asked depth is still the first span, whatever its place in the order
        first = s.prompt[s.needle_spans[0][0]:s.needle_spans[0][1]]
        assert sum(v in first for v in s.answers) == 1


def test_multiquery_gold_still_follows_the_asked_keys(tok, essay):
    for index in range(10):
        s = make_sample(tok, "niah_multiquery", 1024, 50.0, index, seed=0, essay=essay)
        keys = re.findall(r"for ([\w-]+) is: (\d+)\.", s.prompt)
        value_of = dict(keys)
        asked = s.question.split("special magic numbers for ", 1)[1].split(" mentioned", 1)[0]
        asked_keys = [k for k in re.split(r", and |, ", asked)]
        assert s.gold == " " + ", ".join(value_of[k] for k in asked_keys) + "."


def _numbered_words(text: str) -> list[str]:
    return re.findall(r"\d+\. ([a-z]+)", text)


def _first_appearance_of_the_most_common(words: list[str], k: int = 10) -> list[str]:
    counts = {w: words.count(w) for w in set(words)}
    top = sorted(counts.values(), reverse=True)[k - 1]
    assert sorted(counts.values(), reverse=True)[k] < top  # the top k are well defined
    return [w for w in dict.fromkeys(words) if counts[w] >= top]


@pytest.mark.parametrize("length,samples", [(2048, 12), (8192, 2)])
def test_cwe_gold_and_its_solved_example_list_the_words_in_order_of_first_appearance(tok, essay, length, samples):
    """Before 2026-12-06 cwe's gold (and the solved example's answer) listed the 10 words in the shuffled
    vocabulary's order: a reader listing them in text order matched it by chance only (1 in 10!)."""
    for index in range(samples):
        s = make_sample(tok, "cwe", length, None, index, seed=0, essay=essay)
        listing = _numbered_words(s.prompt[s.context_span[0]:s.context_span[1]])
        expected = _first_appearance_of_the_most_common(listing)
        assert _numbered_words(s.gold) == expected and s.answers == expected, index
        example, example_answer = s.prompt.split(CWE_TAIL)[:2]
        shown = _numbered_words(example_answer.split("\n", 1)[0])
        assert shown == _first_appearance_of_the_most_common(_numbered_words(example)), index


# ---------------------------------------------------------------- sliding-window models


def _reference(model, prompt: list[int], gold: list[int], steps: int, eos: tuple[int, ...], tokenizer):
    """Teacher-forced log-prob / EM and greedy decoding by full recomputation, no cache (eager attention
    applies the sliding window through its mask)."""
    model.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            logits = model(torch.tensor([prompt + gold])).logits[0, len(prompt) - 1:-1].float()
            logp = logits.log_softmax(-1)
            target = torch.tensor(gold)
            out: list[int] = []
            for _ in range(steps):
                nxt = int(model(torch.tensor([prompt + out])).logits[0, -1].argmax())
                if nxt in eos:
                    break
                out.append(nxt)
                if "\n" in decode(tokenizer, out).lstrip():
                    break
    finally:
        model.config._attn_implementation = "sdpa"
    return float(logp.gather(1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all()), decode(tokenizer, out)


@pytest.mark.parametrize("kind", ["mistral", "qwen2", "gemma2"])
def test_teacher_forcing_on_a_sliding_window_model_matches_a_full_recompute(tok, kind, monkeypatch):
    """transformers 5's sliding-window cache layers keep only the window and refused to be cut back after
    the gold tokens ("`crop` was called, but the current layer does not track past states"): teacher-forced
    mode crashed on Mistral, Gemma 2/3 and windowed Qwen2 as soon as the prompt outgrew the window."""
    model = sliding_window_model(kind, tok.vocab_size + 1)
    model.config._attn_implementation = "sdpa"
    lm = LoadedModel(model, tok, Path("."), "test", 2048, "sdpa", (0,))
    sample = make_sample(tok, "niah_single_1", 200, 50.0, 0, seed=0)
    prompt = [int(i) for i in tok.encode(sample.prompt)]
    gold = [int(i) for i in tok.encode(sample.gold)]
    assert len(prompt) >= 20 + 8 and len(gold) >= 3  # the prompt is far longer than the window of 8
    steps = 8
    logprob, em, greedy = _reference(model, prompt, gold, steps, lm.eos_ids, tok)
    record = evaluate_sample(lm, sample, max_new_tokens=steps)
    assert record["teacher_forced_logprob"] == pytest.approx(logprob, abs=1e-3)
    assert record["teacher_forced_em"] == float(em)
    assert record["prediction"] == greedy and len(greedy) > 0
    # teacher forcing alone (nothing to cut back) gives the same
    alone = evaluate_sample(lm, sample, greedy=False)
    assert alone["teacher_forced_logprob"] == pytest.approx(logprob, abs=1e-3)
    # a cache that cannot be cut back is rebuilt by a second prefill, with the same results
    import nextlong.eval.runner as runner

    monkeypatch.setattr(runner, "rewind_cache", lambda cache, length: False)
    again = evaluate_sample(lm, sample, max_new_tokens=steps)
    assert again["prediction"] == greedy
    assert again["teacher_forced_logprob"] == pytest.approx(logprob, abs=1e-3)


def test_the_sliding_window_model_has_a_window_the_prompt_outgrows(tok):
    """The test above exercises a cache layer that drops what falls out of the window (so the old
    crop failed), not a full-attention cache."""
    from nextlong.eval.model import forward

    model = sliding_window_model("mistral", tok.vocab_size + 1)
    with torch.no_grad():
        _, cache, _ = forward(model, torch.arange(1, 30)[None], last_only=True)
    layers = getattr(cache, "layers", None)
    if layers is None:
        pytest.skip("this transformers keeps sliding-window caches whole")
    assert all(getattr(layer, "is_sliding", False) for layer in layers)
    keys = layers[0].keys
    assert keys.shape[-2] < 29  # positions outside the window are dropped


# ---------------------------------------------------------------- mean over tasks


def _record(task, length, greedy, em):
    return {"task": task, "length": length, "depth": 50.0, "index": 0, "greedy": greedy, "teacher_forced_em": em,
            "teacher_forced_logprob": -1.0, "answer_tokens": 2}


def test_the_mean_row_shows_no_mean_over_fewer_tasks_than_another_length():
    """cwe skipped at 1K (too short) dropped out of 1K's mean only: 1K averaged 1 task and 2K 2 tasks,
    and the summary's mean row compared the two as if alike."""
    from nextlong.eval.report import summary_markdown

    settings = EvalSettings(tasks=["niah_single_1", "cwe"], lengths=[1024, 2048], depths=[50.0], samples=1)
    records = [_record("niah_single_1", 1024, 1.0, 1.0), _record("niah_single_1", 2048, 0.0, 0.0),
               _record("cwe", 2048, 1.0, 0.0)]
    out = aggregate(records, settings, {"niah_single_1": "string_match_all", "cwe": "string_match_all"})
    means = out["mean_over_tasks"]
    assert "greedy" not in means["1024"] and "teacher_forced_em" not in means["1024"]
    assert means["2048"] == {"greedy": 50.0, "teacher_forced_em": 0.0, "tasks": 2}
    assert means["1024"] == {"partial": {"greedy": 100.0, "teacher_forced_em": 100.0}, "tasks": 1, "of_tasks": 2}
    summary = summary_markdown({"model": "m", "tasks": out["tasks"], "mean_over_tasks": means}, [1024, 2048])
    assert "| **mean** | 100.0 (1 of 2 tasks) / 100.0 (1 of 2 tasks) | 50.0 / 0.0 |" in summary
    # the same tasks at every length: every length has its mean
    full = aggregate(records + [_record("cwe", 1024, 0.0, 0.0)], settings, {})["mean_over_tasks"]
    assert full["1024"] == {"greedy": 50.0, "teacher_forced_em": 50.0, "tasks": 2}


# ---------------------------------------------------------------- depth reached


def _measured_depth(tok, sample) -> float:
    """json_kv: haystack tokens before the asked pair / all haystack tokens (the demonstration pairs are
    not haystack), counted on the prompt itself."""
    keys = re.findall(r'Key: "([0-9a-f-]+)"', sample.question)[:-1]
    demos = [re.search(rf'"{k}": "[0-9a-f-]+"', sample.prompt).group(0) for k in keys]
    start, end = sample.needle_spans[0]
    c0, c1 = sample.context_span
    inserts = [sample.prompt[start:end]] + demos
    before = tok.count_tokens(sample.prompt[c0:start]) - sum(
        tok.count_tokens(t) for t in inserts if sample.prompt.index(t) < start)
    haystack = tok.count_tokens(sample.prompt[c0:c1]) - sum(tok.count_tokens(t) for t in inserts)
    return 100 * before / haystack


def test_the_depth_reached_is_recorded_and_is_where_the_needle_is(tok, essay):
    """With UUID pairs as units, json_kv at 1K can only put its needle every ~8 points of depth; the
    sample says where it went (measured here by counting the haystack's tokens before the needle)."""
    off = []
    for depth in (10.0, 25.0, 60.0, 75.0):
        sample = make_sample(tok, "json_kv", 1024, depth, 0, 0, essay)
        assert sample.depth_actual == pytest.approx(_measured_depth(tok, sample), abs=1.0)
        off.append(abs(sample.depth_actual - depth))
    assert max(off) > 3  # coarse units: the asked depth alone would misplace the needle
    niah = make_sample(tok, "niah_single_2", 4096, 30.0, 0, 0, essay)
    assert niah.depth_actual == pytest.approx(30.0, abs=1.0)
    assert niah.depth_actual == pytest.approx(_measured_depth(tok, niah), abs=1.0)
    assert make_sample(tok, "vt", 2048, None, 0, 0, essay).depth_actual is None


def test_run_tasks_writes_the_depth_reached_into_each_record(tmp_path, tok):
    from nextlong.eval.runner import run_tasks

    model = sliding_window_model("mistral", tok.vocab_size + 1)
    model.config._attn_implementation = "sdpa"
    lm = LoadedModel(model, tok, Path("."), "test", 2048, "sdpa", (0,))
    settings = EvalSettings(tasks=["json_kv", "vt"], lengths=[1024], depths=[25.0], samples=1, max_new_tokens=2)
    records, _, _, skipped = run_tasks(lm, settings, tmp_path, None)
    assert not skipped
    by_task = {r["task"]: r for r in records}
    reached = make_sample(tok, "json_kv", 1024, 25.0, 0, 0).depth_actual
    assert by_task["json_kv"]["depth_actual"] == reached and reached is not None
    assert "depth_actual" not in by_task["vt"]


def test_a_longppl_without_key_tokens_says_when_the_short_window_covers_the_documents():
    """The default 4,096-token short window over 2,048-token documents leaves no token a longer context than the
    short pass: LongPPL is n/a, and the summary now says why and what to pass (an outside UX audit)."""
    from nextlong.eval.report import summary_markdown

    lp = {"longppl": None, "ppl": 12.0, "documents": 2, "length": 2048, "key_tokens": 0, "key_fraction": 0.0,
          "short_window": 4096}
    summary = summary_markdown({"model": "m", "longppl": lp}, [])
    assert "n/a (no key tokens: the short window, 4096 tokens, covers the documents' 2048; pass --short-window " \
           "below the length, e.g. 512)" in summary
    summary = summary_markdown({"model": "m", "longppl": dict(lp, short_window=512)}, [])
    assert "LongPPL n/a (no key tokens), PPL" in summary


# ---------------------------------------------------------------- decoding at the model's positions


def _tiny_gpt2(vocab: int, positions: int):
    """A model with learned absolute positions: feeding position `positions` or later cannot work at all."""
    import transformers

    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=32, n_layer=1, n_head=2,
                                  eos_token_id=0, bos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.config._attn_implementation = "sdpa"
    return model


def test_greedy_decoding_never_feeds_a_position_past_the_models(tok):
    """At a length equal to the model's positions (the top of `nextlong eval`'s default lengths), greedy
    decoding used to feed up to `max_new_tokens` ids past the prompt + gold: past max_position_embeddings,
    an IndexError for GPT-2's learned positions (silent extrapolation for RoPE models). It now stops before
    that position; the answer keeps room for the gold answer and one more id."""
    from nextlong.eval import rag

    positions = 256
    model = _tiny_gpt2(tok.vocab_size + 1, positions)
    lm = LoadedModel(model, tok, Path("."), "test", positions, "sdpa", (0,))
    fed = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: fed.append(
        (kw["past_key_values"].get_seq_length() if kw.get("past_key_values") is not None else 0)
        + kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        sample = make_sample(tok, "niah_single_1", positions, 50.0, 0, seed=0)
        record = evaluate_sample(lm, sample)
        prompt, gold = record["prompt_tokens"], record["answer_tokens"]
        assert prompt + gold <= positions < prompt + sample.max_new_tokens  # the old budget ran past them
        assert max(fed) <= positions
        fed.clear()
        ids = [int(i) for i in tok.encode(sample.prompt)]
        rag.generate(lm, ids, 40)
        assert max(fed) <= positions
    finally:
        hook.remove()


def test_greedy_decoding_does_not_feed_its_last_id(tok):
    """The last id of a budget-long answer is never read, so it is not fed: one forward pass per sample less."""
    model = sliding_window_model("mistral", tok.vocab_size + 1)
    model.config._attn_implementation = "sdpa"
    lm = LoadedModel(model, tok, Path("."), "test", None, "sdpa", ())  # no end-of-text id: the budget ends it
    sample = make_sample(tok, "niah_single_1", 200, 50.0, 0, seed=0)
    calls = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        record = evaluate_sample(lm, sample, teacher_forced=False, max_new_tokens=1)
        assert calls == [record["prompt_tokens"]] and record["prediction"]  # the prefill alone
        calls.clear()
        evaluate_sample(lm, sample, teacher_forced=False, max_new_tokens=4)
        assert calls[0] == record["prompt_tokens"] and calls[1:] == [1] * (len(calls) - 1) and len(calls) <= 4
    finally:
        hook.remove()


def test_greedy_records_of_the_older_decoding_are_not_resumed(monkeypatch):
    """Greedy answers decoded before they stopped at the model's positions are scored again; a teacher-forced-only
    run (the experiment's) keeps its records."""
    import nextlong.eval.runner as runner

    both = EvalSettings(tasks=["vt"], lengths=[1024], depths=[50.0])
    forced = EvalSettings(tasks=["vt"], lengths=[1024], depths=[50.0], greedy=False)
    before = both.fingerprint({}), forced.fingerprint({})
    monkeypatch.setattr(runner, "DECODING_REVISION", "an older rule")
    assert both.fingerprint({}) != before[0] and forced.fingerprint({}) == before[1]


def _only_the_record_within_the_positions_is_kept(lm, settings, tmp_path, header: str):
    """A journal headed `header` holding two greedy records of a model with 520 positions, prompts of 500 and 510
    tokens (budget: the gold's 5 tokens + the margin of 8; 500 + 13 - 1 <= 520 < 510 + 13 - 1): the first is kept,
    the second scored again; a second run reuses both under the current header."""
    import json

    from nextlong.eval.runner import run_tasks

    records = [{"task": "niah_single_1", "length": 512, "depth": 50.0, "index": i, "prompt_tokens": p,
                "answer_tokens": 5, "answers": ["x"], "prediction": "old", "greedy": 0.0, "metric": "string_match_all"}
               for i, p in ((0, 500), (1, 510))]
    (tmp_path / ".progress.jsonl").write_text("\n".join(json.dumps(r) for r in [{"fingerprint": header}, *records]))
    got, _, reused, _ = run_tasks(lm, settings, tmp_path, None)
    assert reused == 1 and [r["prediction"] == "old" for r in got] == [True, False]
    got, _, reused, _ = run_tasks(lm, settings, tmp_path, None)  # the journal now has the current header
    assert reused == 2 and got[0]["prediction"] == "old"


def test_greedy_records_of_the_older_decoding_are_kept_where_it_stayed_within_the_positions(tmp_path, tok):
    """A journal of the decoding before DECODING_REVISION keeps a record whose prompt + budget - 1 ids (what the old
    loop could feed) lie within the model's positions; one that could run past them is scored again."""
    import hashlib
    import json

    from nextlong.eval.tasks import TASKS_REVISION

    model = sliding_window_model("mistral", tok.vocab_size + 1)
    model.config._attn_implementation = "sdpa"
    lm = LoadedModel(model, tok, Path("."), "test", 520, "sdpa", (0,))
    settings = EvalSettings(tasks=["niah_single_1"], lengths=[512], depths=[50.0], samples=2,
                            teacher_forced=False)
    data = {k: v for k, v in settings.__dict__.items() if k not in ("dump", "progress", "extra")}
    data.update(model=lm.identity, tasks_revision=TASKS_REVISION)  # the fingerprint the older code wrote
    old = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
    _only_the_record_within_the_positions_is_kept(lm, settings, tmp_path, old)


def test_greedy_records_of_a_model_whose_text_config_names_its_positions_are_kept_only_where_decoded_alike(tmp_path,
                                                                                                          tok):
    """Until 2026-12-07 the positions of a multimodal config (Gemma 3's, named in its text_config only) were not
    read, so greedy decoding ran past them in journals that already carried DECODING_REVISION. Such a journal keeps
    the records whose prompt + budget - 1 ids lie within the positions; one that could run past them is scored
    again (its header was the current fingerprint, so every record was kept)."""
    from nextlong.model_folder import max_positions_of
    from tests.eval_fixtures import multimodal_gemma3

    model = multimodal_gemma3(tok.vocab_size + 1, positions=520)
    model.config._attn_implementation = "sdpa"
    assert getattr(model.config, "max_position_embeddings", None) is None  # the top level names none
    lm = LoadedModel(model, tok, Path("."), "test", max_positions_of(model.config, "."), "sdpa", (0,))
    settings = EvalSettings(tasks=["niah_single_1"], lengths=[512], depths=[50.0], samples=2, teacher_forced=False)
    then = settings.fingerprint(lm.identity)  # the header such a run wrote: the positions were unknown
    _only_the_record_within_the_positions_is_kept(lm, settings, tmp_path, then)
