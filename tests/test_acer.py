"""`nextlong acer` on a tiny random Llama and a small BPE trained on the shipped corpus: the sample layout,
chunk order, determinism, resume, the ranker's multiple-choice score against the model's logits, the
retrievers against brute force, the formats and filter, and every error caught before work.

The random model's answers are junk; the layout does not care. Its output layer is zeroed on the ids that
are not whole UTF-8 characters on their own (`whole_characters_only`), so its junk re-encodes to no more
tokens than it generated (a random model's stray byte would become U+FFFD, three bytes, and its answer
would be dropped as longer than the bound the checks before work give it). Its answers never stop before
the 8-token budget, so FAST keeps cut answers (--keep-cut-answers); the default, dropping them, has its
own tests."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import nextlong  # noqa: E402
from nextlong.synthesis.acer import AcerConfig  # noqa: E402
from nextlong.synthesis.acer.answers import contains_answer, exact_match, normalize_answer, token_f1  # noqa: E402
from nextlong.synthesis.acer.pipeline import run  # noqa: E402
from nextlong.cli import main  # noqa: E402
from nextlong.errors import NextlongError, StageMismatchError, UsageError  # noqa: E402
from tests.eval_fixtures import one_thread, save_tiny_llama, train_tokenizer  # noqa: E402,F401
from tests.helpers import corpus_head, repeated_id_corpus, write_jsonl  # noqa: E402

QUESTIONS = [
    {"question": "What does the json module encode and decode?", "answer": "JSON"},
    {"question": "How do I parse command line arguments?", "answers": ["argparse", "getopt"], "id": "args"},
    {"question": "What is a future statement?"},
    {"question": "Which module defines abstract base classes?", "answer": "abc", "id": 7},
    {"question": "How is data compressed with zlib?", "answer": "compress"},
]
TARGET = 1024
FAST = dict(target_length=TARGET, chunk_tokens=64, retrieve=24, read=3, max_new_tokens=8, embedder="hashed-tfidf",
            block_questions=2, progress=False, num_threads=1, keep_cut_answers=True)


def whole_characters_only(model_dir, tokenizer_json) -> None:
    """Zero the output-layer rows of the ids that are not a whole UTF-8 text alone (a byte of a multi-byte
    character, the id past the tokenizer's vocabulary): their logit is 0 while ~1000 random ones compete,
    so greedy decoding never picks them."""
    from safetensors.torch import load_file, save_file

    from nextlong.corpus.tokenizer import load_tokenizer

    tok = load_tokenizer(str(tokenizer_json))
    path = model_dir / "model.safetensors"
    weights = load_file(path)
    for i in range(weights["lm_head.weight"].shape[0]):
        try:
            tok.decode_bytes([i]).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            weights["lm_head.weight"][i] = 0
    save_file(weights, path, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("acer")
    tok = train_tokenizer(root / "tok" / "tokenizer.json")
    model = save_tiny_llama(root / "model", tok, max_positions=2048)
    whole_characters_only(model, tok)
    corpus = write_jsonl(root / "corpus.jsonl", corpus_head(limit=20))
    questions = root / "q.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return {"root": root, "model": model, "corpus": corpus, "questions": questions, "tokenizer": tok}


def acer(files, out, **settings):
    options = dict(FAST, **settings)
    if "generate_questions" not in options:
        options["questions"] = files["questions"]
    return nextlong.acer(files["corpus"], out, model=files["model"], **options)


@pytest.fixture(scope="module")
def base(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    manifest = acer(files, out)
    return out, manifest


def rows(out):
    return pq.read_table(out / "data").to_pylist()


def store(out):
    from nextlong.synthesis.artifacts import load_store

    return load_store(out / "chunks")


# --- the sample ------------------------------------------------------------------------------------


def test_layout_segments_tile_the_ids_the_read_chunks_are_in_and_the_mask_is_the_answer(files, base):
    from nextlong.corpus.tokenizer import load_tokenizer

    out, manifest = base
    tok = load_tokenizer(files["tokenizer"])
    chunks = store(out)
    texts = pq.read_table(out / "chunks" / "chunks.parquet", columns=["text"]).column("text").to_pylist()
    samples = rows(out)
    retrieved = {r["question_id"]: r["retrieved"] for r in pq.read_table(out / "retrieve").to_pylist()}
    assert len(samples) == len(QUESTIONS) and manifest["statistics"]["samples"] == len(QUESTIONS)
    assert [s["question_id"] for s in samples] == ["1", "args", "3", "7", "5"]
    assert samples[1]["gold"] == ["argparse", "getopt"] and samples[2]["gold"] is None
    for s in samples:
        ids, mask, segs = np.asarray(s["input_ids"]), np.asarray(s["loss_mask"]), s["segments"]
        assert s["method"] == "acer" and s["num_tokens"] == ids.size <= TARGET
        assert segs[0]["start"] == 0 and segs[-1]["end"] == ids.size
        assert all(a["end"] == b["start"] for a, b in zip(segs, segs[1:]))
        assert [g["role"] for g in segs[-2:]] == ["question", "answer"]
        context = segs[:-2]
        assert {g["role"] for g in context} == {"context"}
        for g in context:  # each chunk's text (at most --chunk-tokens ids) and the separator, tokenized together
            want = tok.encode_ordinary(texts[g["chunk_id"]] + "\n\n")
            np.testing.assert_array_equal(ids[g["start"]:g["end"]], want)
            # the chunk's text and the separator, nothing between them (a "\n" was, when chunks had synthesize's)
            assert tok.decode(ids[g["start"]:g["end"]]) == texts[g["chunk_id"]] + "\n\n"
            assert chunks.chunk_tokens(g["chunk_id"]).size <= 64
            assert g["doc_id"] == chunks.doc_ids[int(chunks.chunk_doc[g["chunk_id"]])]
            assert g["read"] == (g["rank"] < 3)
        assert sorted(g["rank"] for g in context if g["read"]) == [0, 1, 2]  # the read chunks are all in
        assert len({g["chunk_id"] for g in context}) == len(context)
        answer = segs[-1]
        assert mask.sum() == answer["end"] - answer["start"] and mask[answer["start"]:].all()
        assert not mask[:answer["start"]].any()
        # the random model rarely stops within 8 tokens: a cut answer is kept (FAST) without the end-of-text id
        finished = not s["answer_cut"]
        assert tok.decode(ids[answer["start"]:answer["end"] - finished]) == " " + s["answer"]
        assert (ids[-1] == 0) == finished  # eos
        assert tok.decode(ids[segs[-2]["start"]:segs[-2]["end"]]) == f"Question: {s['question']}\nAnswer:"
        # every retrieved chunk left out would not have fitted
        left_out = set(retrieved[s["question_id"]]) - {g["chunk_id"] for g in context}
        assert all(tok.encode_ordinary(texts[c] + "\n\n").size > TARGET - ids.size for c in left_out)


def test_order_retrieval_vs_shuffled_same_chunks(files, base, tmp_path):
    out, _ = base
    acer(files, tmp_path, order="retrieval")
    for shuffled, ordered in zip(rows(out), rows(tmp_path)):
        ranks = [g["retrieval_rank"] for g in ordered["segments"][:-2]]
        assert ranks == sorted(ranks)
        assert sorted(g["chunk_id"] for g in shuffled["segments"][:-2]) == sorted(
            g["chunk_id"] for g in ordered["segments"][:-2])
        assert shuffled["answer"] == ordered["answer"]
    ranks = [[g["retrieval_rank"] for g in s["segments"][:-2]] for s in rows(out)]
    assert any(r != sorted(r) for r in ranks)


def assert_same_parts(a, b):
    """Two folders of Parquet parts hold the same part names (a lost last part is a difference) and bytes."""
    names = sorted(p.name for p in a.glob("*.parquet"))
    assert names and names == sorted(p.name for p in b.glob("*.parquet"))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_same_seed_same_bytes_other_seed_other_order(files, base, tmp_path):
    out, _ = base
    acer(files, tmp_path / "again")
    assert_same_parts(out / "data", tmp_path / "again" / "data")
    acer(files, tmp_path / "seed1", seed=1)
    other = rows(tmp_path / "seed1")
    assert [s["input_ids"] for s in other] != [s["input_ids"] for s in rows(out)]
    assert [s["answer"] for s in other] == [s["answer"] for s in rows(out)]  # only the order differs


def test_resume_after_a_kill_redoes_only_the_unfinished_blocks(files, base, tmp_path, monkeypatch):
    from nextlong.synthesis.acer import stages as A

    out, _ = base
    real_map, real_scores = A.ReadStage.map, A.RankStage.scores
    seen = []

    def dying(self, block):
        if block.column("question_id")[0].as_py() == "3":  # the second block of 2 questions
            raise RuntimeError("killed")
        return real_map(self, block)

    monkeypatch.setattr(A.ReadStage, "map", dying)
    with pytest.raises(RuntimeError, match="killed"):
        acer(files, tmp_path)
    assert (tmp_path / "read" / "_done" / "part-00000.json").exists()
    assert not (tmp_path / "read" / "_done.json").exists() and not (tmp_path / "data").exists()
    monkeypatch.setattr(A.ReadStage, "map", real_map)

    def counting(self, question, chunk_ids, on_done=None):
        seen.append(question)
        return real_scores(self, question, chunk_ids, on_done)

    monkeypatch.setattr(A.RankStage, "scores", counting)
    acer(files, tmp_path)
    assert seen == [q["question"] for q in QUESTIONS[4:]]  # blocks 0 and 1 were ranked before the kill
    assert_same_parts(out / "data", tmp_path / "data")
    # other settings in the same folder: refused, unless rebuilt (then only the stages they change are redone)
    with pytest.raises(StageMismatchError, match="read: cached 3, asked 2.*--rebuild"):
        acer(files, tmp_path, read=2)
    seen.clear()
    acer(files, tmp_path, read=2, rebuild=True)
    assert seen == [] and all(sum(g["read"] for g in s["segments"]) == 2 for s in rows(tmp_path))


def test_the_lm_dtype_is_a_setting_of_the_lm_stages(files, base, tmp_path):
    """bfloat16 and float32 flip greedy tokens (the demo model's third answer differs), so a folder whose LM stages
    ran in float32 (the CPU default) is refused with another dtype: resumed, its blocks would mix two runs' answers,
    and a cached one reported --dtype bfloat16 for float32 answers. float32 named or not is the same setting, as it
    was in folders made before it was one (their fingerprints are unchanged)."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(base[0], out)
    with pytest.raises(StageMismatchError, match=r"rank: .*dtype \(--dtype, or the machine's default\): cached "
                                                 r"'float32' \(the default, left out of the record; [^)]*\), "
                                                 r"asked 'bfloat16'") as refused:
        acer(files, out, dtype="bfloat16")
    # a folder made before the dtype was recorded has none, whatever it ran in: one made on CUDA ran in bfloat16,
    # and the refusal must not tell its user it was float32 (--dtype float32 would then resume it in another dtype)
    assert "made before 2026-12-07 records none: bfloat16 where it ran on CUDA" in str(refused.value)
    manifest = acer(files, out, dtype="float32")
    assert manifest["settings"]["lm_dtype"] == "float32" == base[1]["settings"]["lm_dtype"]
    assert_same_parts(base[0] / "data", out / "data")
    assert manifest["settings"]["stage_fingerprints"] == base[1]["settings"]["stage_fingerprints"]
    assert "dtype" not in json.loads((out / "read" / "_done.json").read_text())["settings"]
    # --ranker embedding runs no LM in its rank stage: its dtype is no setting there
    from nextlong.synthesis.acer.pipeline import build_pipeline, check_before_work

    cfg = AcerConfig(out=str(out), corpus=str(files["corpus"]), model=str(files["model"]),
                     questions=str(files["questions"]), ranker="embedding", dtype="bfloat16", **FAST)
    stages = {s.name: s.settings() for s in build_pipeline(cfg, check_before_work(cfg)).stages}
    assert "dtype" not in stages["rank"] and stages["read"]["dtype"] == "bfloat16"


@pytest.mark.parametrize("settings, stage, said", [
    (dict(retrieve=20), "retrieve", "(k (--retrieve): cached 24, asked 20)"),
    (dict(keep_cut_answers=False), "assemble", "(keep_cut (--keep-cut-answers): cached True, asked False)"),
    (dict(chain_of_thought=True), "read", "(stop_after (--chain-of-thought): cached '', asked 'So the answer is:';"),
])
def test_a_refused_cached_stage_names_the_option_not_only_its_field(files, base, settings, stage, said):
    """The refusal named the stage's field alone ("k: cached 24, asked 20"), which no option of `nextlong acer`
    is called: now the option too."""
    with pytest.raises(StageMismatchError, match=f"the cached {stage} stage was built with other settings "
                                                 + re.escape(said)):
        acer(files, base[0], **settings)


def test_samples_in_another_tokenizer_than_the_models(files, tmp_path):
    from nextlong.corpus.tokenizer import load_tokenizer

    manifest = acer(files, tmp_path, tokenizer="cl100k_base", ranker="embedding")
    tok = load_tokenizer("cl100k_base")
    assert manifest["settings"]["eos_id"] == tok.token_to_id("<|endoftext|>")
    assert manifest["settings"]["tokenizer_fingerprint"] == tok.fingerprint
    for s in rows(tmp_path):
        ids, segs = np.asarray(s["input_ids"]), s["segments"]
        finished = not s["answer_cut"]
        assert tok.decode(ids[segs[-1]["start"]:segs[-1]["end"] - finished]) == " " + s["answer"]
        assert (ids[-1] == tok.token_to_id("<|endoftext|>")) == finished and s["num_tokens"] <= TARGET
        assert segs[-1]["end"] - segs[-1]["start"] <= 8 + 1  # the bound of the checks before work
    # the LM sees each chunk's text in its own tokens, cut to --chunk-tokens: counted, per LM stage
    texts = pq.read_table(tmp_path / "chunks" / "chunks.parquet", columns=["text"]).column("text").to_pylist()
    lm_tok = load_tokenizer(files["tokenizer"])
    read = pq.read_table(tmp_path / "read").to_pylist()
    shown = [c for r in read for c in r["ranked"][:3]]
    cut = sum(len(lm_tok.encode_ordinary(texts[c])) > 64 for c in shown)
    assert manifest["statistics"]["passages_cut_for_model"] == {"read": cut} and cut > 0


def test_the_sample_bound_holds_the_longest_question_in_the_samples_tokenizer(files, tmp_path):
    """With another --tokenizer, the question longest in the model's tokens need not be longest in the samples':
    the check of --target-length measured the model's longest in the samples' tokens (10 cl100k tokens here)
    while another question takes 15: a --target-length 5 tokens short passed, and a sample near it could be
    dropped as exceeding --target-length, the drop docs/acer.md says the checks make unreachable."""
    from nextlong.corpus.tokenizer import load_tokenizer
    from nextlong.synthesis.acer.pipeline import check_before_work
    from nextlong.synthesis.acer.templates import load_templates

    asked = ["What is photosynthesis chlorophyll mitochondria?", "0123456789 0123456789 0123456789"]
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps({"question": x}) + "\n" for x in asked))
    lm, cl = load_tokenizer(files["tokenizer"]), load_tokenizer("cl100k_base")
    length = lambda tok, text: len(tok.encode_ordinary(" " + text))  # noqa: E731
    assert length(lm, asked[0]) > length(lm, asked[1]) and length(cl, asked[0]) < length(cl, asked[1])
    cfg = AcerConfig(out=str(tmp_path / "out"), corpus=str(files["corpus"]), model=str(files["model"]),
                     questions=str(q), tokenizer="cl100k_base", ranker="embedding", **FAST)
    needs = check_before_work(cfg).needs["sample"]
    sample = load_templates()["sample"]
    chunks, answer = FAST["read"] * (FAST["chunk_tokens"] + len(cl.encode_ordinary("\n\n"))), FAST["max_new_tokens"] + 2
    assert needs == chunks + max(len(sample.render(cl, question=x)) for x in asked) + answer


@pytest.mark.parametrize("asked, tokenizer", [
    (["base", "command"], None),  # the model's BPE: " base" 2 ids, "base" 1; " command" 1, "command" 3
    (["What", "zlib"], "cl100k_base"),  # the samples' cl100k: " What" and "What" 1 id; " zlib" 1, "zlib" 2
])
def test_the_context_checks_measure_a_question_as_a_template_without_its_space_renders_it(files, tmp_path, asked,
                                                                                        tokenizer):
    """A custom template may write "Question:{question}" (no space): the question is then encoded without the
    leading space, but the checks before work picked the longest question by " " + question, which can be another
    one, shorter without the space: the read, rank and sample bounds came out one or two tokens short, so a
    --target-length that the checks passed could drop a sample as exceeding it."""
    from nextlong.corpus.tokenizer import load_tokenizer
    from nextlong.synthesis.acer.pipeline import check_before_work
    from nextlong.synthesis.acer.templates import load_templates, passages_ids

    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "read.txt").write_text("Answer the question.\n\n{passages}\n\nQuestion:{question}\nAnswer:\n")
    (prompts / "rank.txt").write_text("Passage:\n{passage}\n\nQuestion:{question}\nHelpful? A or B.\nAnswer:\n")
    (prompts / "sample.txt").write_text("Question:{question}\nAnswer:\n")
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps({"question": x}) + "\n" for x in asked))
    cfg = AcerConfig(out=str(tmp_path / "out"), corpus=str(files["corpus"]), model=str(files["model"]),
                     questions=str(q), prompts=str(prompts), tokenizer=tokenizer, **FAST)
    needs = check_before_work(cfg).needs
    t = load_templates(prompts)
    lm, samples = load_tokenizer(files["tokenizer"]), load_tokenizer(tokenizer or files["tokenizer"])
    tokens = lambda tok, text: len(tok.encode_ordinary(text))  # noqa: E731
    tok = lm if tokenizer is None else samples  # where the question longest with its space is not longest without
    assert tokens(tok, " " + asked[0]) >= tokens(tok, " " + asked[1]) and tokens(tok, asked[0]) < tokens(tok, asked[1])
    chunk = np.zeros(FAST["chunk_tokens"], np.uint32)
    passages = passages_ids(t, lm, [chunk] * FAST["read"])
    assert needs["read"] == max(len(t["read"].render(lm, passages=passages, question=x)) for x in asked) + 8
    assert needs["rank"] == max(len(t["rank"].render(lm, passage=chunk, question=x)) for x in asked) + 1
    chunks = FAST["read"] * (FAST["chunk_tokens"] + len(samples.encode_ordinary("\n\n")))
    assert needs["sample"] == chunks + max(len(t["sample"].render(samples, question=x)) for x in asked) + 8 + 2


def test_manifest(base, files):
    _, manifest = base
    st, s = manifest["settings"], manifest["statistics"]
    assert manifest["command"] == "acer" and st["question_source"]["source"] == "file"
    assert st["tokenizer_fingerprint"] and st["eos_id"] == 0 and st["retriever"] == "embedding"
    assert s["passages_cut_for_model"] is None  # the model's own tokenizer: passages are the chunks' own ids
    assert set(st["prompts"]) >= {"rank", "read", "sample"} and "{passage}" in st["prompts"]["rank"]["text"]
    assert s["lm"]["rank"]["calls"] == len(QUESTIONS) * 24 and s["lm"]["read"]["calls"] == len(QUESTIONS)
    assert s["chunks_over_chunk_tokens"] == 0 and s["chunk_pieces"] > 0
    assert s["documents_with_repeated_id"] == 0  # FILE:LINE ids never repeat
    assert {"chunk", "embed", "retrieve", "rank", "read", "assemble", "total"} <= set(s["seconds"])
    assert (base[0] / st["tokenizer_copy"]).read_bytes() == files["tokenizer"].read_bytes()


def test_a_cached_rerun_keeps_what_the_samples_cost(files, base, tmp_path):
    """A rerun into a finished folder wrote its own 0.0 s for every whole stage (chunk, embed, index) and its own
    total into statistics.seconds: the manifest no longer said what the samples cost."""
    import shutil

    shutil.copytree(base[0], tmp_path / "out", symlinks=True)
    first = base[1]["statistics"]
    s = acer(files, tmp_path / "out")["statistics"]
    assert {k: v for k, v in s["seconds"].items() if k not in ("write_format", "total")} == \
        {k: v for k, v in first["seconds"].items() if k not in ("write_format", "total")}
    assert s["seconds_this_run"]["total"] < first["seconds"]["total"] / 2 and s["seconds"]["total"] is not None
    assert s["seconds_per_sample"] >= first["seconds_per_sample"] / 2


def test_repeated_document_ids_are_counted_and_warned_once(files, tmp_path, capsys):
    """As `nextlong synthesize` (the same count over the chunk store): kept, counted, one warning line naming the
    file and line of the first repeat, shown under --quiet (progress=False) too."""
    corpus, first = repeated_id_corpus(tmp_path / "docs.jsonl")
    manifest = nextlong.acer(corpus, tmp_path / "out", model=files["model"], questions=files["questions"],
                             id_field="id", **dict(FAST, ranker="embedding"))
    assert manifest["statistics"]["documents_with_repeated_id"] == 3
    warnings = [line for line in capsys.readouterr().err.splitlines() if "repeats an earlier document's" in line]
    assert warnings == [f"warning: {corpus}:6: document id {first!r} repeats an earlier document's (3 document(s) "
                        "of the corpus repeat one); the segments' doc_id names such documents alike"]


def test_inspect_shows_the_chunks_question_and_answer(base):
    from nextlong.commands.inspect import render

    out, _ = base
    row = rows(out)[1]
    text = render(out, sample=1, max_segments=100, max_chars=10_000)
    assert text.startswith(f"sample 1: {len(row['input_ids'])} tokens, method acer, question {row['question']!r}")
    heads = [line for line in text.splitlines() if line.startswith("[")]
    marks = [h.split()[0] for h in heads[1:]]  # heads[0] is the legend
    assert len(marks) == len(row["segments"]) and marks[-2:] == ["[Q]", "[R]"]
    assert marks.count("[C*]") == sum(1 for s in row["segments"] if s["role"] == "context" and s["read"])
    first = next(s for s in row["segments"] if s["role"] == "context")
    assert f"{first['doc_id']}#{first['chunk_index']} rank {first['rank']} (retrieval {first['retrieval_rank']})" \
        in heads[1]


# --- the LM ----------------------------------------------------------------------------------------


def test_multiple_choice_score_is_the_models_option_probability(files, base):
    from nextlong.synthesis.acer.lm import load_lm
    from nextlong.synthesis.acer.stages import RankStage
    from nextlong.synthesis.acer.templates import load_templates, option_ids

    out, _ = base
    lm = load_lm(files["model"], device="cpu")
    template = load_templates()["rank"]
    a, b = option_ids(lm.tokenizer)
    chunks = store(out)
    prompts = [template.render(lm.tokenizer, passage=chunks.chunk_tokens(c), question=QUESTIONS[0]["question"])
               for c in (3, 10, 40, 41, 90)]
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    got = lm.option_probs(prompts, [a, b], batch_size=4)
    for p, row in zip(prompts, got):
        with torch.no_grad():
            logits = lm.model(torch.as_tensor(np.asarray(p, np.int64))[None]).logits[0, -1].double()
        probs = logits.softmax(-1)
        assert row[0] == pytest.approx(float(probs[a] / (probs[a] + probs[b])), abs=1e-5)
        assert row.sum() == pytest.approx(1.0)
    # the rank stage orders by that score, best first
    ranked = pq.read_table(out / "rank").to_pylist()[0]
    stage = RankStage(name="rank", model=str(files["model"]), tokenizer=str(files["tokenizer"]), chunk_tokens=64,
                      template=template.text)
    stage._lm, stage._calls, stage._tokens, stage._t, stage._options = lm, 0, 0, template, (a, b)
    from nextlong.synthesis.acer.stages import Passages

    stage._passages = Passages(out / "chunks", str(files["tokenizer"]), lm.tokenizer, 64)
    scores = stage.scores(ranked["question"], ranked["retrieved"])
    order = np.lexsort((np.arange(len(scores)), -scores))
    assert ranked["ranked"] == [ranked["retrieved"][i] for i in order]
    np.testing.assert_allclose(ranked["rank_scores"], scores[order], atol=1e-6)


def test_the_lm_sees_the_prompts_the_method_describes(files, tmp_path, monkeypatch):
    """The prompts that reach the LM, against prompts built here from the stored chunks: the question writer
    sees the chunk drawn for it (`source_chunk`); the ranker sees each retrieved chunk with that question, in
    retrieval order; the reader sees the top --read chunks of the *ranked* order, best first, numbered, then
    the question. (The stored outputs alone could not tell: a ranker that ignored the question, or a reader of
    the retrieval order, still wrote consistent files.)"""
    from nextlong.synthesis.acer.lm import LM
    from nextlong.synthesis.acer.templates import load_templates, passages_ids

    seen = {"ask": [], "rank": [], "read": []}
    real_probs, real_generate = LM.option_probs, LM.generate

    def option_probs(self, prompts, options, **kw):
        seen["rank"].extend(np.asarray(p).tolist() for p in prompts)
        return real_probs(self, prompts, options, **kw)

    def generate(self, prompts, max_new_tokens, **kw):
        seen["ask" if max_new_tokens == 12 else "read"].extend(np.asarray(p).tolist() for p in prompts)
        return real_generate(self, prompts, max_new_tokens, **kw)

    monkeypatch.setattr(LM, "option_probs", option_probs)
    monkeypatch.setattr(LM, "generate", generate)
    out = tmp_path / "out"
    acer(files, out, generate_questions=4, question_max_new_tokens=12, retrieve=6, read=3)
    from nextlong.corpus.tokenizer import load_tokenizer

    tok, t, chunks = load_tokenizer(files["tokenizer"]), load_templates(), store(out)

    def ids(c):
        return np.asarray(chunks.chunk_tokens(c)[:64], np.uint32)

    asked = pq.read_table(out / "questions").to_pylist()
    assert len({r["source_chunk"] for r in asked}) == 4
    assert seen["ask"] == [t["question"].render(tok, passage=ids(r["source_chunk"])).tolist() for r in asked]
    ranked = pq.read_table(out / "rank").to_pylist()
    assert len({r["question"] for r in ranked}) > 1
    assert seen["rank"] == [t["rank"].render(tok, passage=ids(c), question=r["question"]).tolist()
                            for r in ranked for c in r["retrieved"]]
    assert any(r["ranked"][:3] != r["retrieved"][:3] for r in ranked)  # the ranking reorders what is read
    assert seen["read"] == [t["read"].render(tok, passages=passages_ids(t, tok, [ids(c) for c in r["ranked"][:3]]),
                                             question=r["question"]).tolist() for r in ranked]
    first = tok.decode(seen["read"][0])  # by hand: "Passage 1:" is the best-ranked chunk's text
    texts = pq.read_table(out / "chunks" / "chunks.parquet", columns=["text"]).column("text").to_pylist()
    assert texts[ranked[0]["ranked"][0]] in first.split("Passage 2:")[0] and "Passage 1:" in first
    assert texts[ranked[0]["ranked"][2]] in first.split("Passage 3:")[1]


def test_the_shuffle_depends_on_the_question_id(base):
    """Each sample's context order is the permutation seeded by --seed and its question's id (docs/acer.md), so
    two questions with as many chunks get different orders."""
    from nextlong.synthesis.acer.stages import question_seed

    out, _ = base
    perms = {tuple(np.random.default_rng(question_seed(0, q)).permutation(12)) for q in ("1", "args", "3", "7", "5")}
    assert len(perms) == 5
    for s in rows(out):
        context = s["segments"][:-2]
        by_rank = sorted(context, key=lambda g: g["rank"])
        perm = np.random.default_rng(question_seed(0, s["question_id"])).permutation(len(context))
        assert [g["chunk_id"] for g in context] == [by_rank[i]["chunk_id"] for i in perm]


def test_batched_greedy_generation_matches_one_prompt_at_a_time(files):
    from nextlong.synthesis.acer.lm import load_lm

    lm = load_lm(files["model"], device="cpu")
    prompts = [lm.tokenizer.encode(t) for t in ("Question: what is json?\nAnswer:", "The zlib module",
                                                "A much longer prompt about the argparse module and its parsers")]
    batched = lm.generate(prompts, 12, stop="\n", batch_size=3)
    assert batched == [lm.generate([p], 12, stop="\n", batch_size=1)[0] for p in prompts]
    assert all(g.tokens <= 12 for g in batched)



def test_generation_starts_with_visible_text_when_the_model_prefers_blanks(files, monkeypatch):
    """A barely trained model (the README's 10-step demo) puts whitespace and the end-of-text id first: the
    continuation skips them until it has written something, so a question or answer is never empty."""
    import torch

    from nextlong.synthesis.acer.lm import load_lm

    lm = load_lm(files["model"], device="cpu")
    newline, space = lm.tokenizer.encode("\n\n")[0], lm.tokenizer.encode(" ")[0]
    forward = lm._forward

    def prefers_blanks(*args, **kwargs):
        logits, cache = forward(*args, **kwargs)
        logits = logits.clone()
        logits[:, newline] += 1e4
        logits[:, space] += 5e3
        for e in lm.eos_ids:
            logits[:, e] += 2e3
        return logits, cache

    monkeypatch.setitem(lm.__dict__, "_forward", prefers_blanks)  # undone by deleting it (not a bound copy)
    prompts = [lm.tokenizer.encode(t) for t in ("Question: what is json?\nAnswer:", "The zlib module")]
    generated = lm.generate(prompts, 8, stop="\n", batch_size=2)
    assert len(generated) == 2
    for g in generated:
        assert g.text.strip() and g.tokens == 2 and g.end == "stop"  # one visible token, then the stop
        assert g.start_masked  # greedy alone would have begun with the newline


# --- retrieval ---------------------------------------------------------------------------------------


def test_embedding_retrieval_and_ranker_match_brute_force(files, tmp_path):
    from nextlong.synthesis.artifacts import open_vectors, ready_embedder

    out = tmp_path
    acer(files, out, ranker="embedding")
    vectors = np.asarray(open_vectors(out / "embeddings"), np.float64)
    embedder = ready_embedder("hashed-tfidf", out / "embedder", 1)
    q = np.asarray(embedder.embed([x["question"] for x in QUESTIONS]), np.float64)
    sims = q @ vectors.T
    for row, s in zip(pq.read_table(out / "retrieve").to_pylist(), sims):
        want = np.lexsort((np.arange(s.size), -s))[:24]
        assert row["retrieved"] == want.tolist()
        np.testing.assert_allclose(row["retrieval_scores"], s[want], atol=1e-5)
    for sample in rows(out):  # the embedding ranker keeps the retrieval order
        assert all(g["rank"] == g["retrieval_rank"] for g in sample["segments"][:-2])
    manifest = json.loads((out / "manifest.json").read_text())
    assert "rank" not in manifest["statistics"]["lm"]


def test_bm25_retrieval_matches_brute_force(files, tmp_path):
    from nextlong.mining.bm25 import BM25Index

    out = tmp_path
    acer(files, out, ranker="bm25", read=2)
    index = BM25Index.load(out / "bm25")
    assert len(index) == store(out).num_chunks
    for row in pq.read_table(out / "retrieve").to_pylist():
        s = index.scores(row["question"])
        want = [int(i) for i in np.lexsort((np.arange(s.size), -s)) if s[i] > 0][:24]
        assert row["retrieved"] == want
    assert json.loads((out / "manifest.json").read_text())["settings"]["retriever"] == "bm25"


def test_whitespace_chunks_are_never_retrieved_and_a_blank_corpus_is_one_line(files, tmp_path):
    """Chunks of whitespace only (blank documents; the lone "\n" a long chunk's cut can leave) were retrieval
    units: with --retrieve above the visible chunks they filled contexts and reader passages with blanks,
    and a corpus of blank documents gave "samples" that were all whitespace."""
    docs = list(corpus_head(limit=2)) + [("blank1", "   \n\n  "), ("blank2", "\t\u3000\n"), ("blank3", "\n")]
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    manifest = nextlong.acer(corpus, tmp_path / "out", model=files["model"], questions=files["questions"],
                             **dict(FAST, ranker="embedding", retrieve=200, read=2))
    texts = pq.read_table(tmp_path / "out" / "chunks" / "chunks.parquet", columns=["text"]).column("text").to_pylist()
    blank = {c for c, t in enumerate(texts) if not t.strip()}
    for r in pq.read_table(tmp_path / "out" / "retrieve").to_pylist():
        assert r["retrieved"] and not blank & set(r["retrieved"])
        assert len(r["retrieved"]) == len(texts) - len(blank)  # every visible chunk, none of the blank ones
    assert len(blank) >= 3 and manifest["statistics"]["chunks_blank"] == len(blank)
    corpus = write_jsonl(tmp_path / "blank.jsonl", docs[2:])
    with pytest.raises(NextlongError, match=r"the corpus has no text to retrieve \(its documents are empty or "
                                            r"whitespace only\)"):
        nextlong.acer(corpus, tmp_path / "blank", model=files["model"], questions=files["questions"], **FAST)


# --- questions, formats, filter --------------------------------------------------------------------


def rewrite_generations(monkeypatch, change):
    """LM.generate as it is, then each row replaced by change(prompt text, Generation, generate's keywords):
    what a model that writes a given answer would have returned (the random one writes junk)."""
    from nextlong.synthesis.acer.lm import LM

    real = LM.generate

    def generate(self, prompts, max_new_tokens, **kw):
        out = real(self, prompts, max_new_tokens, **kw)
        return [change(self.tokenizer.decode(p), g, kw) for p, g in zip(prompts, out)]

    monkeypatch.setattr(LM, "generate", generate)


def test_generated_questions_chain_of_thought_and_jsonl(files, tmp_path, monkeypatch):
    def reasoned(prompt, g, kw):  # the reader (the only caller with a marker) quotes, then answers after it
        if not kw.get("stop_after"):
            return g
        words = g.text.split()
        return g._replace(text=f' "{" ".join(words[:3])}" helps.\nSo the answer is: {words[-1]}', end="stop")

    rewrite_generations(monkeypatch, reasoned)
    manifest = acer(files, tmp_path, generate_questions=3, question_max_new_tokens=12, chain_of_thought=True,
                    ranker="embedding", format="jsonl", max_new_tokens=24)
    source = manifest["settings"]["question_source"]
    assert source["source"] == "generated" and source["chunks_drawn"] == 3
    assert "Helpful information:" in manifest["settings"]["prompts"]["read_cot"]["text"]
    lines = [json.loads(x) for f in sorted((tmp_path / "jsonl").glob("*.jsonl")) for x in f.read_text().splitlines()]
    assert len(lines) == manifest["statistics"]["samples"] > 0
    for line, sample in zip(lines, rows(tmp_path)):
        assert line["question"] and line["gold"] is None and line["question_id"].startswith("generated-")
        assert line["answer"] == sample["answer"] and line["num_tokens"] == sample["num_tokens"]
        assert "\nSo the answer is: " in line["answer"] and line["answer_cut"] is False
        assert "".join(g["text"] for g in line["segments"]).startswith(line["context"])
    s = manifest["statistics"]
    assert s["lm"]["ask"]["calls"] == 3
    assert s["questions_cut_at_budget"] + s["questions_empty_generated"] <= 3 and s["questions_start_masked"] == 0


def test_a_generated_question_beyond_its_bound_is_dropped_and_the_run_finishes(files, tmp_path, monkeypatch):
    """The checks before work give a generated question --question-max-new-tokens + 2 tokens, but the question
    is kept as text and re-encoded: stray bytes decode to U+FFFD, several ids each. With a model that has
    exactly the positions the checks computed, such a question made the reader's prompt too long after the
    LM stages had run (a crash); now it is dropped and counted, and the run finishes."""
    import shutil

    from nextlong.synthesis.acer.pipeline import check_before_work

    words = " ".join(text for _, text in corpus_head(limit=20)).split()
    corpus = write_jsonl(tmp_path / "one.jsonl", [("d", " ".join(words[:3000]))])  # every chunk 64 tokens
    model = tmp_path / "model"
    shutil.copytree(files["model"], model)
    settings = dict(FAST, generate_questions=4, question_max_new_tokens=12, ranker="embedding", read=2, retrieve=8)
    needs = check_before_work(AcerConfig(out=str(tmp_path / "x"), corpus=str(corpus), model=str(model),
                                         **settings)).needs
    config = json.loads((model / "config.json").read_text())
    config["max_position_embeddings"] = needs["read"]  # the checks before work pass, just
    (model / "config.json").write_text(json.dumps(config))
    asked = []

    def writer(prompt, g, kw):  # every other question is stray bytes (U+FFFD), 12 generated ids
        if "Write one question" not in prompt:
            return g
        asked.append(prompt)
        return g._replace(text=" What is " + ("\ufffd" * 12 if len(asked) % 2 else "json") + "?", tokens=12,
                          end="stop")

    rewrite_generations(monkeypatch, writer)
    manifest = nextlong.acer(corpus, tmp_path / "out", model=model, **settings)
    s = manifest["statistics"]
    assert len(asked) == 4 and s["questions_dropped_too_long"] == 2 and s["questions"] == 2 and s["samples"] == 2
    assert [r["question"] for r in pq.read_table(tmp_path / "out" / "ask").to_pylist()] == ["What is json?"] * 2
    assert json.loads((tmp_path / "out" / "ask" / "_done.json").read_text())["counts"]["too_long_questions"] == 2
    from nextlong.synthesis.acer.stages import question_bound

    assert question_bound(12) == 14


def test_mds_holds_the_mask(files, base, tmp_path):
    from nextlong.mds import read_mds

    out, _ = base
    acer(files, tmp_path, format="mds")
    samples = list(read_mds(tmp_path / "mds"))
    assert len(samples) == len(QUESTIONS)
    for got, want in zip(samples, rows(out)):
        np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
        np.testing.assert_array_equal(got["loss_mask"], want["loss_mask"])
        np.testing.assert_array_equal(got["indices"], [[0, len(want["input_ids"])]])


def test_a_later_run_that_changes_the_data_leaves_no_stale_format(files, tmp_path):
    """A later run into the same folder with --filter answer-match remakes OUT/data (as documented, without
    --rebuild); OUT/mds and OUT/jsonl, derived from it, kept the earlier samples (5 rows beside 1)."""
    from nextlong.mds import num_samples

    out = tmp_path / "out"
    acer(files, out, ranker="embedding", format="mds")
    built = len(rows(out))
    assert num_samples(out / "mds") == built > 1
    manifest = acer(files, out, ranker="embedding", filter="answer-match")  # parquet only
    assert manifest["statistics"]["samples"] == len(rows(out)) == 1 and not (out / "mds").exists()
    acer(files, out, ranker="embedding", filter="answer-match", format="jsonl")
    acer(files, out, ranker="embedding", format="mds")  # the data changes back: the jsonl of 1 sample goes
    assert num_samples(out / "mds") == len(rows(out)) == built and not (out / "jsonl").exists()
    assert not list(out.glob("*.tmp"))


def test_answer_match_filter_keeps_matching_and_gold_less_samples(files, base, tmp_path):
    out, _ = base
    answers = {s["question_id"]: s["answer"] for s in rows(out)}
    questions = [dict(q) for q in QUESTIONS]
    questions[0]["answer"] = answers["1"].split()[-1]  # what the model says, so it matches
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    manifest = nextlong.acer(files["corpus"], tmp_path / "out", model=files["model"], questions=tmp_path / "q.jsonl",
                             filter="answer-match", **FAST)
    kept = {s["question_id"] for s in rows(tmp_path / "out")}
    assert "1" in kept and "3" in kept  # a match, and a question without a gold answer
    assert all(contains_answer(answers[k], QUESTIONS[i].get("answers") or [QUESTIONS[i]["answer"]])
               for i, k in enumerate(["1", "args", "3", "7", "5"]) if k in kept and k not in ("1", "3"))
    s = manifest["statistics"]
    assert s["kept_fraction"] == pytest.approx(len(kept) / 5) and s["samples_without_gold"] == 1


def test_squad_normalisation():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert contains_answer("It was built in Paris, France.", ["paris"]) and not contains_answer("Parisian", ["Paris"])
    assert exact_match("the Paris", ["Paris"]) == 1.0
    assert token_f1("Paris France", ["Paris"]) == pytest.approx(2 / 3)


def test_long_chunks_are_cut_into_exact_pieces():
    from nextlong.synthesis.acer.stages import split_long_chunks
    from nextlong.corpus.chunking import chunk_documents
    from nextlong.corpus.tokenizer import load_tokenizer

    tok = load_tokenizer(None)
    docs = ["short line\n" + "é" * 300 + " and then a very long paragraph " * 20 + "\nend", "x"]
    table = chunk_documents(docs, max_len=32, unit="tokens", tokenizer=tok, with_ids=True)
    assert max(table.column("num_tokens").to_pylist()) > 32
    cut = split_long_chunks(table, 32, tok)
    assert int(cut.schema.metadata[b"pieces"]) > 0
    got = cut.to_pylist()
    assert all(r["num_tokens"] == len(r["input_ids"]) <= 32 for r in got)
    assert [r["chunk_id"] for r in got] == list(range(len(got)))
    for d, text in enumerate(docs):
        pieces = [r for r in got if r["doc_index"] == d]
        assert [r["chunk_index"] for r in pieces] == list(range(len(pieces)))
        assert all(text[r["char_start"]:r["char_end"]] == r["text"] for r in pieces)
        assert all(tok.decode(r["input_ids"]) == r["text"] for r in pieces)


def test_nextlong_acer_is_the_function_whatever_was_imported_first():
    import nextlong.synthesis.acer.stages  # noqa: F401  (importing a module of the package first changes nothing)
    from nextlong.synthesis.acer import acer

    assert nextlong.acer is acer and nextlong.BM25Index.__module__ == "nextlong.mining.bm25"


# --- how answers end: the budget, the chain-of-thought marker, the blank-start mask ------------------


def scripted(lm, monkeypatch, ids):
    """lm's forward replaced: step k of a one-prompt generation puts all its mass on ids[k] (then on the
    end-of-text id), so generate() writes exactly `ids`."""
    vocab = lm.model.config.vocab_size
    step = [0]

    def forward(input_ids, mask, positions, cache=None):
        k = step[0]
        step[0] += 1
        logits = torch.zeros((input_ids.shape[0], vocab))
        logits[:, ids[k] if k < len(ids) else lm.eos_ids[0]] = 100.0
        return logits, None

    monkeypatch.setitem(lm.__dict__, "_forward", forward)  # undone by deleting it: the class's method again


def test_generation_says_how_each_row_ended(files, monkeypatch):
    from nextlong.synthesis.acer.lm import load_lm

    lm = load_lm(files["model"], device="cpu")
    tok = lm.tokenizer
    prompt = tok.encode("Question: where?\nAnswer:")

    def generate(ids, budget, **kw):
        ids = tok.encode_ordinary(ids) if isinstance(ids, str) else ids
        scripted(lm, monkeypatch, ids)
        return lm.generate([prompt], budget, **kw)[0]

    g = generate(" Paris", 8)
    assert (g.text, g.end, g.cut, g.tokens) == (" Paris", "eos", False, len(tok.encode_ordinary(" Paris")))
    g = generate(" Paris\nmore", 8, stop="\n")
    assert (g.text, g.end, g.cut) == (" Paris", "stop", False)
    words = tok.encode_ordinary(" Paris is the capital of France, on the Seine")
    g = generate(words, 4)
    assert (g.end, g.cut, g.tokens) == ("budget", True, 4) and g.text == tok.decode(words[:4])
    # a budget that cuts a multi-byte character: its first byte is left out, not written as U+FFFD
    first_byte = next(i for i in range(tok.vocab_size) if tok.decode_bytes([i]) == "é".encode()[:1])
    ids = list(tok.encode_ordinary(" caf")) + [first_byte]
    g = generate(ids, len(ids))
    assert g.end == "budget" and g.text == " caf" and g.tokens == len(ids)


def with_turn_end(files, folder, generation_eos):
    """A copy of the model whose tokenizer has a special `<|eot_id|>` (the model's spare id) and whose
    generation_config.json's eos_token_id is `generation_eos(eot)`: a chat model that lists its turn-end id
    only there, as gemma-2-it and the first Llama-3-8B-Instruct release did."""
    import shutil

    shutil.copytree(files["model"], folder)
    tok = json.loads((folder / "tokenizer.json").read_text())
    eot = len(tok["model"]["vocab"])
    tok["added_tokens"].append({"id": eot, "content": "<|eot_id|>", "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": False, "special": True})
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    config = json.loads((folder / "generation_config.json").read_text())
    config["eos_token_id"] = generation_eos(eot)
    (folder / "generation_config.json").write_text(json.dumps(config))
    return folder, eot


def test_generation_config_end_of_text_ids_end_an_answer(files, tmp_path, monkeypatch):
    """transformers' generate() stops at generation_config.json's eos_token_id: a turn-end id listed only
    there must end the answer (it went into the answer's text, the training target, when only config.json's
    id was read)."""
    from nextlong.synthesis.acer.lm import inspect_model, load_lm

    folder, eot = with_turn_end(files, tmp_path / "chat", lambda eot: [0, eot])
    lm = load_lm(folder, device="cpu")
    tok = lm.tokenizer
    scripted(lm, monkeypatch, list(tok.encode_ordinary(" Paris")) + [eot] + list(tok.encode_ordinary(" more\nx")))
    g = lm.generate([tok.encode("Question: where?\nAnswer:")], 16, stop="\n")[0]
    assert (g.text, g.end) == (" Paris", "eos")
    assert bool(lm._blank_ids(lm.model.config.vocab_size, "cpu")[eot])  # and it is masked at the start, as 0 is
    info = inspect_model(folder)
    assert info.config_eos_ids == (0,) and info.generation_eos_ids == (0, eot) and info.eos_ids == (0, eot)
    # the run records where the ids come from; the samples' appended id stays config.json's
    monkeypatch.delitem(lm.__dict__, "_forward")
    manifest = nextlong.acer(files["corpus"], tmp_path / "out", model=folder, questions=files["questions"],
                             **dict(FAST, ranker="embedding"))
    st = manifest["settings"]
    assert st["model_eos_ids"] == {"config.json": [0], "generation_config.json": [0, eot], "stops_at": [0, eot]}
    assert st["eos_id"] == 0


@pytest.mark.parametrize("value, message", [
    ("x", r"generation_config\.json: eos_token_id must be a token id or a list of token ids, got 'x'"),
    ([0, 1.5], r"generation_config\.json: eos_token_id must be a token id or a list of token ids, got \[0, 1\.5\]"),
    ([0, True], r"generation_config\.json: eos_token_id must be a token id"),
    (10 ** 9, r"generation_config\.json: eos_token_id 1000000000 is not a token id of the model \(0\.\.\d+\)"),
    ([-1], r"generation_config\.json: eos_token_id -1 is not a token id"),
])
def test_a_bad_generation_config_is_one_line_before_work(files, tmp_path, value, message):
    folder, _ = with_turn_end(files, tmp_path / "chat", lambda eot: value)
    with pytest.raises(NextlongError, match=message):
        nextlong.acer(files["corpus"], tmp_path / "out", model=folder, questions=files["questions"], **FAST)
    assert not started(tmp_path / "out")
    (folder / "generation_config.json").write_text("{not json")
    with pytest.raises(NextlongError, match=r"generation_config\.json"):
        nextlong.acer(files["corpus"], tmp_path / "out", model=folder, questions=files["questions"], **FAST)


def test_chain_of_thought_stop_waits_for_the_marker(files, monkeypatch):
    """The reasoning may hold blank lines and newlines: only a newline after "So the answer is:" and some
    text after it ends the text (the old blank-line stop cut the reasoning before the marker)."""
    from nextlong.synthesis.acer.answers import ANSWER_MARKER
    from nextlong.synthesis.acer.lm import load_lm

    lm = load_lm(files["model"], device="cpu")
    prompt = lm.tokenizer.encode("Helpful information:")

    def generate(text):
        scripted(lm, monkeypatch, lm.tokenizer.encode_ordinary(text))
        return lm.generate([prompt], 64, stop="\n", stop_after=ANSWER_MARKER)[0]

    g = generate(' "json encodes" helps.\n\nIt also decodes.\nSo the answer is: JSON\nAnd then more')
    assert g.end == "stop" and g.text == ' "json encodes" helps.\n\nIt also decodes.\nSo the answer is: JSON'
    g = generate(' "x" helps.\nso the answer is:\n JSON.\nmore')  # any case; the answer on the next line
    assert g.end == "stop" and g.text == ' "x" helps.\nso the answer is:\n JSON.'
    g = generate(" a\n\nb\nc")  # no marker: only the end-of-text id (or the budget) ends it
    assert g.end == "eos" and g.text == " a\n\nb\nc"


def test_answers_cut_by_the_budget_are_dropped_by_default_and_counted(files, tmp_path, monkeypatch):
    from nextlong.corpus.tokenizer import load_tokenizer
    from nextlong.synthesis.acer.stages import DROP_CUT

    # every answer reaches the budget unfinished: by default none is a sample
    rewrite_generations(monkeypatch, lambda prompt, g, kw: g._replace(text=" It is the", tokens=8, end="budget"))
    with pytest.raises(NextlongError, match=r"built 0 samples \(5x answer cut at --max-new-tokens; raise "
                                            r"--max-new-tokens, or keep the cut answers \(--keep-cut-answers\)\)"):
        acer(files, tmp_path / "cut", ranker="embedding", keep_cut_answers=False)
    read = pq.read_table(tmp_path / "cut" / "read").to_pylist()
    assert [(r["answer"], r["answer_end"]) for r in read] == [("It is the", "budget")] * 5
    # two answers end (as a model's that stops would): only they stay, with the end-of-text id
    finished = ("parse command line", "abstract base")
    rewrite_generations(monkeypatch, lambda prompt, g, kw: g._replace(
        text=" It is argparse" if any(f in prompt for f in finished) else " It is the",
        end="eos" if any(f in prompt for f in finished) else "budget"))
    tok = load_tokenizer(files["tokenizer"])
    manifest = acer(files, tmp_path / "drop", ranker="embedding", keep_cut_answers=False)
    s = manifest["statistics"]
    assert s["answers_cut_at_budget"] == 3 and s["samples_dropped"] == {DROP_CUT: 3}
    assert s["samples"] == 2 and s["samples_with_cut_answer"] == 0 and not manifest["settings"]["keep_cut_answers"]
    for sample in rows(tmp_path / "drop"):
        ids, answer = np.asarray(sample["input_ids"]), sample["segments"][-1]
        assert sample["question_id"] in ("args", "7") and not sample["answer_cut"]
        assert ids[-1] == 0 and tok.decode(ids[answer["start"]:answer["end"] - 1]) == " " + sample["answer"]
        assert sum(sample["loss_mask"]) == answer["end"] - answer["start"]
    # --keep-cut-answers: the cut ones stay too, without the end-of-text id (the model is not taught to stop there)
    manifest = acer(files, tmp_path / "keep", ranker="embedding", keep_cut_answers=True)
    s = manifest["statistics"]
    assert s["samples"] == 5 and s["answers_cut_at_budget"] == 3 and s["samples_with_cut_answer"] == 3
    assert s["samples_dropped"] == {} and manifest["settings"]["keep_cut_answers"]
    for sample in rows(tmp_path / "keep"):
        ids, answer = np.asarray(sample["input_ids"]), sample["segments"][-1]
        cut = sample["question_id"] not in ("args", "7")
        assert sample["answer_cut"] == cut and (ids[-1] == 0) == (not cut)
        assert tok.decode(ids[answer["start"]:answer["end"] - (not cut)]) == " " + sample["answer"]
        assert sum(sample["loss_mask"]) == answer["end"] - answer["start"] and sample["loss_mask"][-1] == 1


def test_an_answer_longer_than_the_checked_bound_is_dropped(files, base, tmp_path, monkeypatch):
    """The checks before work give the answer --max-new-tokens + 1 tokens (" " + answer, re-encoded): eight
    generated ids that decode to U+FFFD (stray bytes) re-encode to three times as many, and are dropped."""
    from nextlong.synthesis.acer.stages import DROP_LONG

    need = base[1]["settings"]["context_needs"]["sample"]
    rewrite_generations(monkeypatch, lambda prompt, g, kw: g._replace(
        text=" " + "\ufffd" * 8 if "json module" in prompt else " It is zlib", end="eos"))
    manifest = acer(files, tmp_path, ranker="embedding", target_length=need)
    s = manifest["statistics"]
    assert s["samples_dropped"] == {DROP_LONG: 1} and s["samples"] == 4
    for sample in rows(tmp_path):
        answer = sample["segments"][-1]
        assert answer["end"] - answer["start"] <= 8 + 1 + 1 and sample["num_tokens"] <= need


def test_chain_of_thought_quotes_answers_after_the_marker_and_the_filter_reads_that(files, tmp_path, monkeypatch):
    from nextlong.corpus.tokenizer import load_tokenizer
    from nextlong.synthesis.acer.stages import DROP_CITES_NUMBER, DROP_NO_MARKER

    said = {  # question -> what the reader writes
        "json module": ' "The json module encodes and decodes JSON." is what helps.\nSo the answer is: JSON',
        # the reasoning quotes a gold answer, the final answer is another: answer-match must not keep it
        "command line": ' "argparse parses command line arguments" helps.\nSo the answer is: optparse',
        "future statement": " It is a statement about the future.",  # no final answer
        "abstract base": " Passage 2 says abc defines them.\nSo the answer is: abc",  # cites a number
        "zlib": ' "zlib.compress(data)" compresses data.\nSo the answer is: compress',
    }

    def reader(prompt, g, kw):
        return g._replace(text=next(t for k, t in said.items() if k in prompt), end="stop")

    rewrite_generations(monkeypatch, reader)
    manifest = acer(files, tmp_path, ranker="embedding", chain_of_thought=True, filter="answer-match",
                    max_new_tokens=48)
    s = manifest["statistics"]
    assert s["samples_dropped"] == {DROP_NO_MARKER: 1, DROP_CITES_NUMBER: 1}
    assert s["samples_assembled"] == 3 and s["samples"] == 2 and s["kept_fraction"] == pytest.approx(2 / 3)
    kept = rows(tmp_path)
    assert [r["question_id"] for r in kept] == ["1", "5"]
    assert [r["answer"] for r in kept] == [said["json module"].strip(), said["zlib"].strip()]
    tok = load_tokenizer(files["tokenizer"])
    assert not any(re.search(r"Passage \d", tok.decode(r["input_ids"])) for r in kept)  # the chunks carry no number
    prompt = manifest["settings"]["prompts"]["read_cot"]["text"]
    assert "never by its number" in prompt and "quotation marks" in prompt and "So the answer is:" in prompt
    record = json.loads((tmp_path / "read" / "_done.json").read_text())
    assert record["settings"]["stop"] == "\n" and record["settings"]["stop_after"] == "So the answer is:"


def test_final_answer_and_passage_numbers():
    from nextlong.synthesis.acer.answers import cites_passage_number, final_answer

    assert final_answer("quote.\nSo the answer is: Paris") == "Paris"
    assert final_answer("quote.\nso the answer is:\n Paris, France ") == "Paris, France"
    assert final_answer("no marker here") is None and final_answer("So the answer is:  ") is None
    assert all(cites_passage_number(t) for t in ("Passage 2 says", "passages 1 and 3", "passage #4", "Passage no. 5"))
    assert not any(cites_passage_number(t) for t in ("the passage says 2 things", "a passage of 1990s text"))


def test_answers_whose_first_token_the_blank_mask_changed_are_counted(files, base, tmp_path, monkeypatch):
    """Greedy decoding masks whitespace-only ids and the end-of-text id until some text is written: a model
    that would start with a newline writes its best visible token instead, and the manifest counts it."""
    from nextlong.synthesis.acer.lm import LM, load_lm

    assert base[1]["statistics"]["answers_start_masked"] == 0
    lm = load_lm(files["model"], device="cpu")  # the copy the run uses (one per process)

    def prefers_blanks(*args, **kwargs):
        logits, cache = LM._forward(lm, *args, **kwargs)
        logits = logits.clone()
        logits[:, lm.tokenizer.encode("\n\n")[0]] += 1e4
        logits[:, lm.eos_ids[0]] += 2e3
        return logits, cache

    monkeypatch.setitem(lm.__dict__, "_forward", prefers_blanks)
    manifest = acer(files, tmp_path, ranker="embedding")
    assert manifest["statistics"]["answers_start_masked"] == 5
    assert all(r["start_masked"] and r["answer_end"] == "stop" for r in pq.read_table(tmp_path / "read").to_pylist())
    for sample in rows(tmp_path):  # one visible token, then the newline ends it: a finished answer
        assert not sample["answer_cut"] and sample["input_ids"][-1] == 0 and sample["answer"]


# --- the query prefix -------------------------------------------------------------------------------


def test_query_prefix_reaches_the_question_embedding_only(files, base, tmp_path):
    from nextlong.synthesis.acer.stages import RetrieveStage
    from nextlong.synthesis.artifacts import open_vectors, ready_embedder

    prefix = "Represent this sentence for searching relevant passages: "
    out = tmp_path / "prefixed"
    manifest = acer(files, out, ranker="embedding", query_prefix=prefix)
    assert manifest["settings"]["query_prefix"] == prefix
    vectors = np.asarray(open_vectors(out / "embeddings"), np.float64)
    embedder = ready_embedder("hashed-tfidf", out / "embedder", 1)
    q = np.asarray(embedder.embed([prefix + x["question"] for x in QUESTIONS]), np.float64)
    plain = np.asarray(embedder.embed([x["question"] for x in QUESTIONS]), np.float64)
    assert not np.allclose(q, plain)  # the prefix changes the query vectors
    for row, sims in zip(pq.read_table(out / "retrieve").to_pylist(), q @ vectors.T):
        want = np.lexsort((np.arange(sims.size), -sims))[:24]
        assert row["retrieved"] == want.tolist()
        np.testing.assert_allclose(row["retrieval_scores"], sims[want], atol=1e-5)
    # the chunks are embedded as without it: the same stages, the same bytes
    fps, base_fps = manifest["settings"]["stage_fingerprints"], base[1]["settings"]["stage_fingerprints"]
    assert all(fps[n] == base_fps[n] for n in ("chunks", "embedder", "embed", "embeddings", "index"))
    assert fps["retrieve"] != base_fps["retrieve"]
    stored = sorted((base[0] / "embeddings").rglob("*.npy"))
    assert stored
    for a in stored:
        assert a.read_bytes() == (out / "embeddings" / a.relative_to(base[0] / "embeddings")).read_bytes()
    # another prefix in the same folder is other settings; the default leaves folders made before it matching
    with pytest.raises(StageMismatchError, match=r"query_prefix: cached 'Represent .*', asked 'query: '"):
        acer(files, out, ranker="embedding", query_prefix="query: ")
    assert "query_prefix" not in RetrieveStage(name="retrieve").settings()
    assert RetrieveStage(name="retrieve", query_prefix="query: ").settings()["query_prefix"] == "query: "
    with pytest.raises(UsageError, match="--query-prefix .* no effect with --retriever bm25"):
        acer(files, tmp_path / "bm25", ranker="bm25", query_prefix="query: ")


# --- errors before any work ------------------------------------------------------------------------


def started(out) -> bool:
    return out.exists() and any(p.name in ("chunk", "chunks", "questions") for p in out.iterdir())


@pytest.mark.parametrize("line, message", [
    ('{"text": "no question"}', r"q\.jsonl:2: no \"question\""),
    ('{"question": ""}', r"q\.jsonl:2: \"question\" must be a non-empty string"),
    ("not json", r"q\.jsonl:2: not valid JSON"),
    ('{"question": "x", "answer": 3}', r"q\.jsonl:2: \"answer\" must be a string or a list of strings"),
    ('{"question": "x", "id": 1}', r"q\.jsonl:2: id '1' was already given on line 1"),
    ('{"question": ' + "[" * 100_000, r"q\.jsonl:2: not valid JSON \(nested too deeply\)"),
    ('{"question": "x \\ud800 y"}', r"q\.jsonl:2: .* is not valid Unicode text \(a lone surrogate\)"),
    ('{"question": "x", "answer": "js\\udc00on"}', r"q\.jsonl:2: .* lone surrogate"),
])
def test_bad_questions_file(files, tmp_path, line, message):
    q = tmp_path / "q.jsonl"
    q.write_text('{"question": "fine"}\n' + line + "\n")
    with pytest.raises(NextlongError, match=message):
        nextlong.acer(files["corpus"], tmp_path / "out", model=files["model"], questions=q, **FAST)
    assert not started(tmp_path / "out")


def test_damaged_questions_files_are_one_line(files, tmp_path):
    import gzip

    good = b'{"question": "fine"}\n' * 50
    damaged = bytearray(gzip.compress(good))
    damaged[len(damaged) // 2] ^= 0xFF
    (tmp_path / "q.jsonl.gz").write_bytes(bytes(damaged))
    (tmp_path / "bad.jsonl").write_bytes(b'{"question": "fine"}\n{"question": "caf\xe9"}\n')
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + good[:21])
    for name, message in (("q.jsonl.gz", r"q\.jsonl\.gz: cannot read the questions file"),
                          ("bad.jsonl", r"bad\.jsonl:2: not UTF-8 text")):
        with pytest.raises(NextlongError, match=message):
            nextlong.acer(files["corpus"], tmp_path / "out", model=files["model"], questions=tmp_path / name, **FAST)
    assert not started(tmp_path / "out")
    from nextlong.synthesis.acer.questions import read_questions

    assert read_questions(tmp_path / "bom.jsonl")[0]["question"] == "fine"  # a byte-order mark is skipped


def test_a_questions_path_that_is_not_a_regular_file_says_so_without_hanging(files, tmp_path):
    """A FIFO (opened without blocking: no writer, no hang) or a folder was reported "not found"."""
    import os

    os.mkfifo(tmp_path / "q.fifo")
    (tmp_path / "q.dir").mkdir()
    for name, kind in (("q.fifo", "a FIFO"), ("q.dir", "a directory")):
        with pytest.raises(NextlongError, match=rf"q\.{name[2:]}: is {kind}, not a regular file$"):
            nextlong.acer(files["corpus"], tmp_path / "out", model=files["model"], questions=tmp_path / name, **FAST)
    assert not started(tmp_path / "out")


def test_a_damaged_chunk_store_is_refused_without_an_option_acer_lacks(files, base, tmp_path):
    """A damaged byte in a cached chunk store is refused before use; acer has no --no-verify, so the error
    does not advise it (it did, for every command)."""
    import dataclasses
    import shutil

    from nextlong.errors import CorruptFileError

    assert not any("verify" in f.name for f in dataclasses.fields(AcerConfig))  # acer has no --no-verify
    out = tmp_path / "out"
    shutil.copytree(base[0], out)
    path = out / "chunks" / "store" / "tokens.npy"
    whole = path.read_bytes()
    path.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]))
    with pytest.raises(CorruptFileError, match=f"{path}: not the file the chunks stage wrote") as info:
        acer(files, out)
    assert str(info.value).endswith(f"remove {out / 'chunks'} to make it again")


def damage_a_page(part) -> None:
    """Flip bytes inside the largest column chunk of a Parquet part, its footer intact (so it opens, then fails)."""
    meta = pq.ParquetFile(part).metadata.row_group(0)
    column = max((meta.column(i) for i in range(meta.num_columns)), key=lambda c: c.total_compressed_size)
    data = bytearray(part.read_bytes())
    middle = column.data_page_offset + column.total_compressed_size // 2
    for i in range(middle - 8, middle + 8):
        data[i] ^= 0xFF
    part.write_bytes(bytes(data))


@pytest.mark.parametrize("stage, damage, redo, settings", [
    ("read", "delete", (), dict(order="retrieval", rebuild=True)),  # assemble remade from the read parts
    ("questions", "delete", ("retrieve", "rank", "read", "assemble", "data"), {}),
    ("assemble", "delete", (), dict(filter="answer-match")),  # data remade from the assembled parts
    ("read", "page", (), dict(order="retrieval", rebuild=True)),
    ("read", "delete with its record", (), dict(order="retrieval", rebuild=True)),
    ("assemble", "delete with its record", (), dict(filter="answer-match")),
])
def test_a_finished_stages_part_deleted_or_damaged_is_named_not_taken_as_no_rows(files, base, tmp_path, stage,
                                                                                damage, redo, settings):
    """A part of a finished stage deleted since (or damaged inside a page) is one line naming it when a later
    stage reads it. A missing part was read as a block of no rows: the run finished, its questions' samples
    silently gone (150 questions gave 82 samples where 141 were due), and a damaged page was pyarrow's traceback.
    A part deleted with its block record still was: every block of a finished map stage has a record, so a
    block of the stage's recorded count without one was deleted too, not a block of no rows."""
    import shutil

    from nextlong.errors import CorruptFileError

    out = tmp_path / "out"
    shutil.copytree(base[0], out)
    part = out / stage / "part-00001.parquet"
    if damage.startswith("delete"):
        part.unlink()
    else:
        damage_a_page(part)
    if damage == "delete with its record":
        (out / stage / "_done" / "part-00001.json").unlink()
    for name in redo:
        shutil.rmtree(out / name)
    message = {"delete": "missing, though", "page": "not a readable Parquet file",
               "delete with its record": "missing, and so is its block record"}[damage]
    expected = f"{re.escape(str(part))}: {message}.*delete {re.escape(str(part.parent))}"
    with pytest.raises(CorruptFileError, match=expected):
        acer(files, out, **settings)


def test_not_a_causal_lm(files, tmp_path):
    from transformers import BertConfig

    BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
               architectures=["BertForMaskedLM"]).save_pretrained(tmp_path / "bert")
    (tmp_path / "bert" / "tokenizer.json").write_bytes(files["tokenizer"].read_bytes())
    with pytest.raises(NextlongError, match="not a causal LM: config.json's architectures are BertForMaskedLM"):
        nextlong.acer(files["corpus"], tmp_path / "out", model=tmp_path / "bert", questions=files["questions"], **FAST)
    from transformers import T5Config

    T5Config(vocab_size=100, d_model=16, num_layers=1, num_heads=2).save_pretrained(tmp_path / "t5")
    (tmp_path / "t5" / "tokenizer.json").write_bytes(files["tokenizer"].read_bytes())
    with pytest.raises(NextlongError, match="not a causal LM \\(model type 't5'\\)"):
        nextlong.acer(files["corpus"], tmp_path / "out", model=tmp_path / "t5", questions=files["questions"], **FAST)
    with pytest.raises(NextlongError, match="no config.json"):
        nextlong.acer(files["corpus"], tmp_path / "out", model=tmp_path, questions=files["questions"], **FAST)
    assert not started(tmp_path / "out")


def test_a_tokenizer_beyond_the_models_vocabulary_is_refused_before_any_work(files, tmp_path):
    """A model folder whose tokenizer has more ids than its vocabulary (another model's tokenizer) was refused only
    when the LM loaded, after chunking, embedding and the index (hours on a real corpus)."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "small-vocab"
    shutil.copytree(files["model"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = 500  # the tokenizer has 1024 ids; the weights are cut to fit the config
    (folder / "config.json").write_text(json.dumps(config))
    weights = load_file(folder / "model.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        weights[name] = weights[name][:500].clone()
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(NextlongError, match="has 1024 ids but the model's vocabulary only 500; wrong tokenizer"):
        nextlong.acer(files["corpus"], tmp_path / "out", model=folder, questions=files["questions"], **FAST)
    assert not started(tmp_path / "out")


def test_weights_of_another_shape_than_the_config_are_refused_before_any_work(files, tmp_path):
    """Weights that do not fit config.json (another model's config beside them) were refused only when the LM
    loaded, after chunking, embedding and the index."""
    import shutil

    folder = tmp_path / "other-config"
    shutil.copytree(files["model"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 2 * config["intermediate_size"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(NextlongError, match=re.escape(str(folder / "model.safetensors")) +
                       r": \d+ weight\(s\) do not fit config.json, e.g. model.layers.0.mlp.down_proj.weight is"):
        nextlong.acer(files["corpus"], tmp_path / "out", model=folder, questions=files["questions"], **FAST)
    assert not started(tmp_path / "out")


def test_a_folders_code_is_not_run(files, tmp_path):
    marker = tmp_path / "marker"
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilForCausalLM"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"}}))
    (folder / "evil.py").write_text(f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n")
    (folder / "tokenizer.json").write_bytes(files["tokenizer"].read_bytes())
    with pytest.raises(NextlongError, match="evil.py.*--trust-remote-code"):
        nextlong.acer(files["corpus"], tmp_path / "out", model=folder, questions=files["questions"], **FAST)
    assert not marker.exists() and not started(tmp_path / "out")


def test_read_set_beyond_the_models_context(files, tmp_path):
    small = save_tiny_llama(tmp_path / "small", files["tokenizer"], max_positions=256)
    with pytest.raises(UsageError, match=r"--read 3 chunks of up to 64 tokens do not fit the model's context.*256 "
                                         r"positions"):
        nextlong.acer(files["corpus"], tmp_path / "out", model=small, questions=files["questions"], **FAST)
    assert not started(tmp_path / "out")


def test_target_length_below_what_the_read_chunks_need(files, tmp_path):
    with pytest.raises(UsageError, match=r"--target-length 200 is below what the read chunks need: \d+ tokens"):
        acer(files, tmp_path / "out", target_length=200)
    assert not started(tmp_path / "out")


def test_bad_options(files, tmp_path):
    for settings, message in ((dict(read=30), "--read 30 is more than --retrieve 24"),
                              (dict(ranker="bm25", retriever="embedding"), "--ranker bm25 ranks by the bm25"),
                              (dict(generate_questions=2, questions=files["questions"]), "exactly one of --questions")):
        with pytest.raises(UsageError, match=message):
            acer(files, tmp_path / "out", **settings)
    (tmp_path / "cot").mkdir()
    (tmp_path / "cot" / "read_cot.txt").write_text("{passages}\nQuestion: {question}\nThink, then answer:\n")
    with pytest.raises(UsageError, match=r"read_cot\.txt: with --chain-of-thought the read_cot prompt must ask for "
                                         r"the final answer after 'So the answer is:'"):
        acer(files, tmp_path / "out", prompts=tmp_path / "cot", chain_of_thought=True)
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "rank.txt").write_text("Is it helpful? {passage}\n")
    with pytest.raises(UsageError, match=r"rank\.txt: the rank prompt template must contain \{question\}"):
        acer(files, tmp_path / "out", prompts=tmp_path / "prompts")
    # a template that is a link out of the folder, or a FIFO (whose read would block), is refused unread
    secret = tmp_path / "secret.txt"
    secret.write_text("Is it helpful? {passage} {question}\n")
    (tmp_path / "prompts" / "rank.txt").unlink()
    (tmp_path / "prompts" / "rank.txt").symlink_to(secret)
    with pytest.raises(UsageError, match=r"rank\.txt.*link"):
        acer(files, tmp_path / "out", prompts=tmp_path / "prompts")
    (tmp_path / "prompts" / "rank.txt").unlink()
    os.mkfifo(tmp_path / "prompts" / "rank.txt")
    with pytest.raises(UsageError, match=r"rank\.txt"):
        acer(files, tmp_path / "out", prompts=tmp_path / "prompts")
    assert not started(tmp_path / "out")


def test_device_is_checked_before_any_work(files, tmp_path, capsys):
    """--device was checked only when the first LM stage loaded the model, after chunking, embedding and the
    index: a misspelled one ended in torch's 41-line traceback, an absent CUDA in an error after that work."""
    with pytest.raises(UsageError, match=r"--device 'tpu' is not a torch device \(.*\); use cpu, cuda or cuda:N"):
        acer(files, tmp_path / "out", device="tpu")
    assert not started(tmp_path / "out")
    code = main(["acer", "--corpus", str(files["corpus"]), "--questions", str(files["questions"]), "--model",
                 str(files["model"]), "--out", str(tmp_path / "out"), "--device", "tpu", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("nextlong acer: error: --device 'tpu'")
    assert not started(tmp_path / "out")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match=r"--device cuda:1: CUDA is not available on this machine"):
            acer(files, tmp_path / "out", device="cuda:1")
        assert not started(tmp_path / "out")


def test_ray_gpu_shortage_names_acers_own_flag(files, tmp_path, capsys, monkeypatch):
    """The Ray executor's check of the cluster's GPUs named synthesize's --embed-gpus, a flag acer lacks."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'nextlong[ray]')")
    from nextlong.synthesis.executors import ray as executor_ray

    class NoGPUCluster:  # what ray.cluster_resources() / ray.nodes() say of a CPU-only cluster
        @staticmethod
        def cluster_resources():
            return {"CPU": 2.0}

        @staticmethod
        def nodes():
            return [{"Alive": True}]

    monkeypatch.setattr(executor_ray, "connect", lambda *a, **k: NoGPUCluster)
    code = main(["acer", "--corpus", str(files["corpus"]), "--questions", str(files["questions"]), "--model",
                 str(files["model"]), "--out", str(tmp_path / "out"), "--executor", "ray", "--gpus", "1", "--quiet",
                 "--target-length", "1024", "--chunk-tokens", "64", "--retrieve", "24", "--read", "3",
                 "--max-new-tokens", "8", "--embedder", "hashed-tfidf"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and "--embed-gpus" not in err
    assert "error: --gpus 1: the Ray cluster has 0 GPUs" in err and "run on CPUs with --gpus 0" in err
    assert not started(tmp_path / "out")


def test_cli_errors_are_one_line(files, tmp_path, capsys):
    q = tmp_path / "q.jsonl"
    q.write_text('{"query": "no question"}\n')
    code = main(["acer", "--corpus", str(files["corpus"]), "--questions", str(q), "--model", str(files["model"]),
                 "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and err.startswith("nextlong acer: error: ") and "q.jsonl:1" in err
    code = main(["acer", "--corpus", str(files["corpus"]), "--questions", str(files["questions"]), "--model",
                 str(files["model"]), "--out", str(tmp_path / "out"), "--target-length", "100", "--read", "2",
                 "--chunk-tokens", "64", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "--target-length 100 is below" in err


@pytest.mark.slow
def test_ray_executor_gives_the_same_files(files, base, tmp_path):
    """The same stages on Ray (the LM stages on the GPU-stage actors, CPU ones here): the same bytes."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'nextlong[ray]')")
    from nextlong.synthesis.executors import ray as executor_ray

    out, _ = base
    ray = executor_ray.connect(None, num_cpus=2, object_store_memory=300 * 2 ** 20)
    try:
        run(AcerConfig(out=str(tmp_path), corpus=str(files["corpus"]), model=str(files["model"]),
                       questions=str(files["questions"]), **FAST), executor_ray.RayExecutor(threads=1))
    finally:
        ray.shutdown()
    for stage in ("chunks", "retrieve", "rank", "read", "assemble", "data"):
        local = sorted(p.relative_to(out) for p in (out / stage).rglob("*.parquet"))
        assert local and local == sorted(p.relative_to(tmp_path) for p in (tmp_path / stage).rglob("*.parquet"))
        assert all((out / p).read_bytes() == (tmp_path / p).read_bytes() for p in local), stage


def test_cli_run(files, tmp_path, capsys):
    code = main(["acer", "--corpus", str(files["corpus"]), "--questions", str(files["questions"]), "--model",
                 str(files["model"]), "--out", str(tmp_path), "--target-length", "1024", "--chunk-tokens", "64",
                 "--retrieve", "24", "--read", "3", "--max-new-tokens", "8", "--ranker", "embedding", "--embedder",
                 "hashed-tfidf", "--order", "retrieval", "--threads", "1", "--keep-cut-answers", "--query-prefix",
                 "query: "])
    assert code == 0
    assert f"nextlong acer: {len(QUESTIONS)} samples of up to 1024 tokens" in capsys.readouterr().err
    settings = json.loads((tmp_path / "manifest.json").read_text())["settings"]
    assert settings["order"] == "retrieval" and settings["separator"] == "\n\n" and settings["read"] == 3
    assert settings["keep_cut_answers"] is True and settings["query_prefix"] == "query: "


def test_context_pieces_tokenize_a_chunk_with_its_separator():
    """A sample's context chunk and the separator after it are tokenized together: cl100k writes ".\n\n" as one
    token, which tokenizing them apart split into "." + "\n\n" at every boundary, a mark running text never
    has. Ids that end inside a character keep their own ids, then the separator's."""
    from nextlong.corpus.tokenizer import load_tokenizer
    from nextlong.synthesis.acer.templates import context_pieces

    tok = load_tokenizer("cl100k_base")
    texts = ["The end.", "def f():\n    return 1", "Plain words"]
    chunks = [tok.encode_ordinary(t) for t in texts] + [tok.encode_ordinary("\U0001d518x")[:1]]  # half a character
    pieces = context_pieces(tok, chunks, "\n\n")
    for t, got in zip(texts, pieces):
        np.testing.assert_array_equal(got, tok.encode_ordinary(t + "\n\n"))
    assert pieces[0].size == chunks[0].size  # "." + "\n\n" is one token, ".\n\n"
    assert not np.array_equal(pieces[0], np.r_[chunks[0], tok.encode_ordinary("\n\n")])
    np.testing.assert_array_equal(np.concatenate(pieces[:3]), tok.encode_ordinary("".join(t + "\n\n" for t in texts)))
    np.testing.assert_array_equal(pieces[3], np.r_[chunks[3], tok.encode_ordinary("\n\n")])
    # never longer than side by side (the pre-work checks' bound): "\r\n" + "\n\n" together takes more ids
    crlf = tok.encode_ordinary("print(x)\r\n")
    assert tok.encode_ordinary("print(x)\r\n\n\n").size > crlf.size + 1
    np.testing.assert_array_equal(context_pieces(tok, [crlf], "\n\n")[0], np.r_[crlf, tok.encode_ordinary("\n\n")])


def test_the_summary_tells_recorded_work_from_this_runs_time():
    """On a fully cached rerun the LM lines and the stages' seconds are the earlier run's work (the records) and
    `seconds_this_run` is this run's: the summary printed them side by side as if all ran now ("rank: 1024 LM
    calls, 2.0 s" next to "total 0.0"); it says which is which."""
    from nextlong.synthesis.acer.pipeline import summary

    stats = {"samples": 4, "corpus_documents": 2, "corpus_chunks": 9, "questions": 4, "retrieved_chunks_mean": 3,
             "lm": {"rank": {"calls": 1024, "prompt_tokens": 208828, "generated_tokens": 0, "seconds": 2.0}},
             "seconds": {"chunk": 0.01, "rank": 2.0, "read": 1.5, "total": 3.55}, "seconds_this_run": {"total": 0.04}}
    settings = {"target_length": 4096, "out": "o", "chunk_tokens": 256, "question_source": {"source": "file"},
                "retriever": "bm25", "ranker": "lm", "read": 3}
    text = summary({"statistics": stats, "settings": settings})
    assert "LM work behind these samples (as recorded when each block was computed, in this run or an earlier " \
        "one):\n    rank: 1024 LM calls" in text
    assert ("seconds to make the data: chunk 0.0, rank 2.0, read 1.5, total 3.5\n  this run: 0.04 s in all (stages "
            "made in earlier runs were reused)") in text
