"""Prompts a model reads start with its tokenizer's prefix ids (Llama-3's <|begin_of_text|>, from the
tokenizer.json post-processor), as HF tokenizers' default encode gives them: ACER's short-context LM
(ranking, reading, asking) and `nextlong eval`'s recall tasks. Tokenizers without one are unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.eval_fixtures import one_thread, save_tiny_llama, train_tokenizer  # noqa: E402,F401

BOS_TEXT = "<|begin_of_text|>"


def bos_tokenizer(path):
    """The test tokenizer plus a Llama-3-style BOS the post-processor puts before each sequence; the BOS id
    is the model vocabulary's last (save_tiny_llama sizes the model one id past the BPE vocabulary)."""
    plain = train_tokenizer(path.parent / "plain" / "tokenizer.json")
    data = json.loads(plain.read_text())
    bos = len(data["model"]["vocab"])
    data["added_tokens"].append({"id": bos, "content": BOS_TEXT, "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True})
    data["post_processor"] = {"type": "TemplateProcessing",
                              "single": [{"SpecialToken": {"id": BOS_TEXT, "type_id": 0}},
                                         {"Sequence": {"id": "A", "type_id": 0}}],
                              "pair": [], "special_tokens": {BOS_TEXT: {"id": BOS_TEXT, "ids": [bos],
                                                                         "tokens": [BOS_TEXT]}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path, bos


@pytest.fixture(scope="module")
def bos_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("bos")
    tok, bos = bos_tokenizer(root / "tok" / "tokenizer.json")
    return save_tiny_llama(root / "model", tok, max_positions=512), bos


def _recording(model):
    fed = []
    model.register_forward_pre_hook(
        lambda m, args, kwargs: fed.append((kwargs["input_ids"] if "input_ids" in kwargs else args[0]).clone()),
        with_kwargs=True)
    return fed


def test_acer_lm_reads_every_prompt_after_the_bos(bos_model):
    from nextlong.synthesis.acer.lm import load_lm

    folder, bos = bos_model
    lm = load_lm(folder, device="cpu")
    assert lm.tokenizer.prefix_ids == (bos,)
    prompt = lm.tokenizer.encode("Question: what does json.dumps return?\nAnswer:")
    a, b = (int(lm.tokenizer.encode(" A")[0]), int(lm.tokenizer.encode(" B")[0]))
    fed = _recording(lm.model)
    (probs,) = lm.option_probs([prompt], [a, b])
    assert fed[0][0, 0].item() == bos and fed[0].shape[1] == len(prompt) + 1
    with torch.no_grad():
        logits = lm.model(torch.as_tensor(np.r_[bos, prompt].astype(np.int64))[None]).logits[0, -1].double()
    p = logits.softmax(-1)
    assert probs[0] == pytest.approx(float(p[a] / (p[a] + p[b])), abs=1e-6)
    fed.clear()
    lm.generate([prompt], 3, stop=None)
    assert fed[0][0, 0].item() == bos and fed[0].shape[1] == len(prompt) + 1
    with pytest.raises(Exception, match="beyond the model's 512 positions"):
        lm.generate([np.zeros(509, np.uint32)], 3)  # 1 + 509 + 3 > 512: the BOS counts


@pytest.fixture(scope="module")
def bos_lm(bos_model):
    from nextlong.eval.model import load_model

    folder, bos = bos_model
    return load_model(str(folder), device="cpu"), bos


@pytest.fixture(scope="module")
def essay():
    from nextlong.eval.haystack import essay_sentences
    from tests.helpers import corpus_texts

    return essay_sentences(corpus_texts(max_bytes=40_000))


@pytest.mark.parametrize("task", ["niah_single_1", "niah_multivalue", "niah_multikey_2"])
def test_recall_prompts_start_with_the_bos_and_still_fit_their_length(bos_lm, essay, task):
    from nextlong.eval.runner import evaluate_sample
    from nextlong.eval.tasks import make_sample

    lm, bos = bos_lm
    sample = make_sample(lm.tokenizer, task, 384, 50.0, 0, 0, essay)
    assert sample.length == 384
    fed = _recording(lm.model)
    record = evaluate_sample(lm, sample, greedy=False, teacher_forced=True)
    assert fed[0][0, 0].item() == bos and fed[0].shape[1] == record["prompt_tokens"]
    assert record["prompt_tokens"] == 1 + len(lm.tokenizer.encode(sample.prompt))
    assert record["prompt_tokens"] + record["answer_tokens"] <= 384


def test_retrieval_head_trials_start_with_the_bos_and_point_at_the_needle(bos_lm, essay):
    from nextlong.eval import heads as H

    lm, bos = bos_lm
    for trial in H.make_trials(lm.tokenizer, essay, [256, 384], [0.0, 50.0, 100.0], H.NEEDLES[:1]):
        assert trial.prompt_ids[0] == bos and len(trial.prompt_ids) <= trial.length
        start, end = trial.span  # the needle, whole, and no more: one token less on either side loses it
        decode = lm.tokenizer.decode
        text = decode(trial.prompt_ids[start:end])
        assert trial.reference in text and len(text) <= len(trial.reference) + 4
        assert trial.reference not in decode(trial.prompt_ids[start + 1:end])
        assert trial.reference not in decode(trial.prompt_ids[start:end - 1])


def test_rag_generation_reads_after_the_bos(bos_lm):
    from nextlong.eval.rag import generate

    lm, bos = bos_lm
    fed = _recording(lm.model)
    generate(lm, lm.tokenizer.encode("Question: what is zlib?\nAnswer:"), 2)
    assert fed[0][0, 0].item() == bos


def test_cwe_follows_rulers_setting_for_the_asked_length_whatever_the_bos_takes(tmp_path):
    """RULER picks cwe's repeats (30 against 3 from 4K on, 6 against 1 below) and fwe's vocabulary (length // 50)
    by the asked length. The prompt is built one BOS shorter, and that shorter length picked them: at 4096 a
    Llama-3-style tokenizer got the below-4K list, 6 repeats of each common word instead of 30."""
    from nextlong.corpus.tokenizer import Tokenizer
    from nextlong.eval.tasks import make_sample

    tok = Tokenizer.from_file(bos_tokenizer(tmp_path / "tok" / "tokenizer.json")[0])
    assert len(tok.prefix_ids) == 1
    s = make_sample(tok, "cwe", 4096, None, 0, seed=0)
    listing = s.prompt[s.context_span[0]:s.context_span[1]]
    counts = {w: listing.count(f". {w} ") + listing.endswith(f". {w}") for w in s.answers}
    assert len(counts) == 10 and set(counts.values()) == {30}, counts
    assert 1 + tok.count_tokens(s.prompt) + tok.count_tokens(s.gold) <= 4096 and s.length == 4096


def test_a_prefixed_tokenizers_records_have_their_own_revision(monkeypatch):
    """Records a BOS tokenizer's run wrote before cwe's setting followed the asked length are scored again;
    other runs keep theirs."""
    import nextlong.eval.runner as runner
    from nextlong.eval.runner import EvalSettings

    settings = EvalSettings(tasks=["cwe"], lengths=[4096], depths=[50.0])
    before = settings.fingerprint({}, prefixed=True), settings.fingerprint({})
    assert before[0] != before[1]
    monkeypatch.setattr(runner, "PREFIXED_TASKS_REVISION", "an older rule")
    assert settings.fingerprint({}, prefixed=True) != before[0] and settings.fingerprint({}) == before[1]


def test_a_prefixed_tokenizers_run_without_cwe_or_fwe_keeps_its_records():
    """Only cwe's and fwe's samples changed for a BOS tokenizer: a run of other tasks (a Llama-3 model's NIAH at
    long lengths, hours of prefill) kept its fingerprint of before, and was scored again for nothing."""
    from nextlong.eval.runner import EvalSettings

    for tasks in (["niah_single_1", "vt"], ["niah_single_1"]):
        settings = EvalSettings(tasks=tasks, lengths=[4096], depths=[50.0])
        assert settings.fingerprint({}, prefixed=True) == settings.fingerprint({})
    mixed = EvalSettings(tasks=["niah_single_1", "fwe"], lengths=[4096], depths=[50.0])
    assert mixed.fingerprint({}, prefixed=True) != mixed.fingerprint({})


def test_acer_counts_the_bos_in_its_prompt_tokens(bos_model, tmp_path, monkeypatch):
    """statistics.lm.<stage>.prompt_tokens is what the LM reads: each prompt after its BOS (one id per call), and so
    is the read stage's per-row read_prompt_tokens column (it left the BOS out). A folder made before, whose column
    left it out, is refused as other settings rather than resumed with two rules in one column; a tokenizer without
    a prefix keeps its read stage's settings, so its folders (whose column is unchanged) still match."""
    import pyarrow.parquet as pq

    import nextlong
    from nextlong.errors import StageMismatchError
    from nextlong.synthesis.acer.stages import ReadStage
    from nextlong.synthesis.acer.lm import LM
    from tests.helpers import corpus_head, write_jsonl

    folder, _ = bos_model
    seen = {"rank": [], "read": []}
    real_probs, real_generate = LM.option_probs, LM.generate

    def option_probs(self, prompts, options, **kw):
        seen["rank"].extend(len(p) for p in prompts)
        return real_probs(self, prompts, options, **kw)

    def generate(self, prompts, max_new_tokens, **kw):  # the random model's junk answer replaced by one that fits
        seen["read"].extend(len(p) for p in prompts)
        return [g._replace(text=" zlib") for g in real_generate(self, prompts, max_new_tokens, **kw)]

    monkeypatch.setattr(LM, "option_probs", option_probs)
    monkeypatch.setattr(LM, "generate", generate)
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "What does json encode?"}\n{"question": "What is zlib?"}\n')
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_head(limit=8))
    options = dict(model=folder, questions=questions, target_length=1024, chunk_tokens=64, retrieve=4, read=2,
                   max_new_tokens=4, embedder="hashed-tfidf", progress=False, num_threads=1, keep_cut_answers=True)
    manifest = nextlong.acer(corpus, tmp_path / "out", **options)
    lm = manifest["statistics"]["lm"]
    for stage in ("rank", "read"):
        assert lm[stage]["calls"] == len(seen[stage]) > 0
        assert lm[stage]["prompt_tokens"] == sum(seen[stage]) + len(seen[stage])
    column = pq.read_table(tmp_path / "out" / "read").column("read_prompt_tokens").to_pylist()
    assert column == [n + 1 for n in seen["read"]]
    # the read stage as a folder made before recorded it: no prefix_ids in its settings, another fingerprint
    record = tmp_path / "out" / "read" / "_done.json"
    old = json.loads(record.read_text())
    assert old["settings"]["prefix_ids"] == 1
    del old["settings"]["prefix_ids"]
    old["fingerprint"] = "0" * len(old["fingerprint"])
    record.write_text(json.dumps(old))
    with pytest.raises(StageMismatchError, match=r"cached read stage .*prefix_ids \(the ids --model's tokenizer puts "
                                                 r"before a prompt\): cached 0 \(the default, left out of the record; a "
                                                 r"folder made before the setting \(2026-12-07\) counts no prefix ids"):
        nextlong.acer(corpus, tmp_path / "out", **options)
    assert "prefix_ids" not in ReadStage(name="read").settings()  # no prefix: the settings folders made before hold
