"""Special-token strings in user text ("<|endoftext|>" in an essay corpus): every eval prompt is fed as it was
counted, the string read as ordinary text, so no end-of-text id lands inside a context."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from nextlong.eval.model import LoadedModel  # noqa: E402
from nextlong.eval.runner import EvalSettings, evaluate_sample, run_tasks  # noqa: E402
from nextlong.eval.tasks import make_sample  # noqa: E402
from tests.eval_fixtures import essay, one_thread, sliding_window_model, tok  # noqa: E402,F401

SPECIAL = "<|endoftext|>"


@pytest.fixture(scope="module")
def special_essay(essay):
    """The test essay with a corpus document boundary written out as text every 8 sentences."""
    return [f"{s} {SPECIAL}" if i % 8 == 0 else s for i, s in enumerate(essay)]


def _lm(tok, positions: int = 2048) -> LoadedModel:
    model = sliding_window_model("mistral", tok.vocab_size + 1)
    model.config._attn_implementation = "sdpa"
    return LoadedModel(model, tok, Path("."), "test", positions, "sdpa", (0,))


def test_a_special_token_string_in_the_essay_is_fed_as_it_was_counted(tok, special_essay):
    """The haystack was counted with the string as ordinary text but fed with it parsed into the end-of-text id:
    a shorter prompt than measured, with a document boundary in the middle of the context."""
    eot = tok.end_of_text_id
    assert eot is not None
    sample = make_sample(tok, "niah_single_2", 512, 50.0, 0, 0, special_essay)
    assert SPECIAL in sample.prompt
    lm = _lm(tok)
    fed = []
    hook = lm.model.register_forward_pre_hook(lambda m, a, kw: fed.append(kw["input_ids"][0].tolist()),
                                              with_kwargs=True)
    try:
        record = evaluate_sample(lm, sample, greedy=False)
    finally:
        hook.remove()
    assert eot not in fed[0]
    assert record["prompt_tokens"] == len(fed[0]) == tok.count_tokens(sample.prompt)
    assert record["prompt_tokens"] + record["answer_tokens"] <= 512


def test_heads_trials_read_a_special_token_string_as_text(tok, special_essay):
    from nextlong.eval.heads import make_trials

    trial = make_trials(tok, special_essay, [512], [50.0])[0]
    assert SPECIAL in trial.prompt
    assert trial.prompt_ids == [int(i) for i in tok.encode_ordinary(trial.prompt)]
    assert tok.end_of_text_id not in trial.prompt_ids


def test_longppl_documents_read_a_special_token_string_as_text(tok, essay):
    from nextlong.eval.longppl import long_documents

    text = f" {SPECIAL} ".join(essay[:200])
    docs = long_documents(tok, [text], 300, 1)
    assert docs[0] == [int(i) for i in tok.encode_ordinary(text)[:300]]
    assert tok.end_of_text_id not in docs[0]


def test_only_runs_whose_prompts_were_fed_otherwise_are_scored_again(tmp_path, tok, essay, special_essay):
    """A journal written under the old encoding is resumed where no prompt holds a special-token string (the ids
    fed were the same), and scored afresh where one does."""
    lm = _lm(tok)
    settings = EvalSettings(tasks=["niah_single_2"], lengths=[512], depths=[50.0], samples=1, max_new_tokens=2,
                            teacher_forced=False)
    old = settings.fingerprint(lm.identity)  # what the old code wrote: no encoding revision
    for name, text, reused_want in (("plain", essay, 1), ("special", special_essay, 0)):
        out = tmp_path / name
        out.mkdir()
        record = {"task": "niah_single_2", "length": 512, "depth": 50.0, "index": 0, "prompt_tokens": 400,
                  "answer_tokens": 4, "answers": ["x"], "prediction": "old", "greedy": 0.0,
                  "metric": "string_match_all"}
        (out / ".progress.jsonl").write_text(json.dumps({"fingerprint": old}) + "\n" + json.dumps(record) + "\n")
        records, _, reused, _ = run_tasks(lm, settings, out, text)
        assert reused == reused_want, name
        assert (records[0]["prediction"] == "old") is bool(reused_want), name


def test_heads_runs_whose_prompts_were_fed_otherwise_get_the_encoding_revision(tok, essay, special_essay):
    from types import SimpleNamespace

    from nextlong.eval import heads_run
    from nextlong.eval.heads import make_trials

    lm = SimpleNamespace(identity={}, prefill_attn="sdpa", tokenizer=tok,
                         model=SimpleNamespace(config=SimpleNamespace()))
    args = SimpleNamespace(max_new_tokens=50, corpus="c", text_field="text")
    plain = make_trials(tok, essay, [512], [50.0])
    special = make_trials(tok, special_essay, [512], [50.0])
    without = heads_run.journal_fingerprint(lm, args, [512], [50.0], 3)
    assert heads_run.journal_fingerprint(lm, args, [512], [50.0], 3, plain) == without
    assert heads_run.journal_fingerprint(lm, args, [512], [50.0], 3, special) != without
