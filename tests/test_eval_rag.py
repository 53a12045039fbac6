"""`nextlong eval --tasks rag` (nextlong.eval.rag) on a tiny random Llama and a small BPE: the gold chunk at
the asked depth (token offsets), distractors that never hold the gold, the retrieve-then-read prompt
holding exactly the top R chunks, EM / token F1 against hand-computed values for fixed predictions,
determinism and resume, and every error before any scoring. The random model's answers are junk."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from nextlong.synthesis.acer.answers import normalize_answer  # noqa: E402
from nextlong.cli import main  # noqa: E402
from nextlong.errors import CorpusError, UsageError  # noqa: E402
from nextlong.eval import rag  # noqa: E402
from tests.eval_fixtures import one_thread, save_tiny_llama, train_tokenizer  # noqa: E402,F401
from tests.helpers import corpus_head, write_jsonl  # noqa: E402

LIGHTHOUSE = "The lighthouse on Farrow Island was painted crimson in 1903 by its keeper, Ada Voss."
LEDGER = "\n\n".join([
    "The harbour ledger of Brindlemouth records every ship that docked between 1850 and 1900, with its cargo.",
    "Most entries list timber, salt fish and wool, weighed on the customs scale beside the old stone quay.",
    "In the spring of 1871 the schooner Marigold unloaded forty barrels of cloudberry wine from Tromsø.",
    "The ledger was rebound twice and now rests in the county archive, where anyone may read it on request.",
])
QUESTIONS = [
    {"question": "What colour was the lighthouse on Farrow Island painted?", "answer": "crimson",
     "context": LIGHTHOUSE},
    {"question": "Who kept the lighthouse on Farrow Island?", "answers": ["Ada Voss", "Voss"], "id": "keeper",
     "context": LIGHTHOUSE},
    {"question": "What did the schooner Marigold unload at Brindlemouth?", "answer": "cloudberry wine",
     "doc_id": "ledger"},
]
CHUNK = 64
LENGTHS = [384, 768]
DEPTHS = [0.0, 50.0, 100.0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("rag")
    tok = train_tokenizer(root / "tok" / "tokenizer.json")
    model = save_tiny_llama(root / "model", tok, max_positions=2048)
    docs = list(corpus_head(limit=12)) + [
        ("ledger", LEDGER),
        ("copy", "Island notes.\n\n" + LIGHTHOUSE + "\n\nThe island has no trees."),  # holds the gold text
        ("paint", "Farrow Island's lighthouse keeper ordered crimson paint from the mainland."),  # an answer, not gold
    ]
    corpus = write_jsonl(root / "corpus.jsonl", docs)
    questions = root / "q.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return {"root": root, "model": model, "corpus": corpus, "questions": questions}


@pytest.fixture(scope="module")
def lm(files):
    from nextlong.eval.model import load_model

    return load_model(str(files["model"]), attn="sdpa", device="cpu")


def settings(files, **kw):
    options = dict(questions=str(files["questions"]), corpus=str(files["corpus"]), lengths=LENGTHS, depths=DEPTHS,
                   retriever="bm25", chunk_tokens=CHUNK, read=3, id_field="id", progress=False)
    options.update(kw)
    return rag.RagSettings(**options)


def prepare(lm, files, out, **kw):
    s = settings(files, **kw)
    return rag.prepare_rag(lm, s, rag.read_rag_questions(s.questions), out)


@pytest.fixture(scope="module")
def plan(lm, files, tmp_path_factory):
    return prepare(lm, files, tmp_path_factory.mktemp("plan"))


def chunk_text(plan, c):
    return plan.pool.texts([c])[c]


def doc_of(plan, c):
    return plan.pool.label(c)["doc_id"]


# --- the long context ----------------------------------------------------------------------------


def test_gold_chunks_are_the_answer_bearing_evidence(plan):
    colour, keeper, ledger = plan.entries
    assert colour.gold == keeper.gold and len(colour.gold) == 1  # one shared context, one chunk
    assert doc_of(plan, colour.gold[0]) == "rag-context:1" and chunk_text(plan, colour.gold[0]) == LIGHTHOUSE
    assert len(plan.pool.extra_ids) == 1
    # the ledger is cut into several chunks; only the one holding "cloudberry wine" is gold
    store = plan.pool.store
    d = store.doc_ids.index("ledger")
    assert store.doc_num_chunks[d] > 1
    assert len(ledger.gold) == 1 and "cloudberry wine" in chunk_text(plan, ledger.gold[0])
    assert doc_of(plan, ledger.gold[0]) == "ledger"


def piece(plan, c):
    """A chunk as the long context holds it: its text and the separator after it, tokenized together."""
    tok = plan.tokenizer
    return tok.encode_ordinary(tok.decode(plan.pool.ids(c)[:plan.settings.chunk_tokens]) + plan.settings.separator)


@pytest.mark.parametrize("separator", ["\n---\n", " "])
def test_the_separator_is_the_datas(lm, files, tmp_path, separator):
    """--rag-separator: the long context is laid out with the separator the ACER data was built with, each
    chunk tokenized together with it (the context decodes to the chunks' texts, each followed by the
    separator). With " ", this tokenizer merges a chunk's end with the separator at about one boundary in
    five: tokenized apart, the ids differed there. With a separator that ends in a newline no token spans a
    gap, and the context's ids are the whole text's."""
    custom = prepare(lm, files, tmp_path / "sep", separator=separator)
    tok = lm.tokenizer
    sep_ids = tok.encode_ordinary(separator)
    apart = 0
    for e in custom.entries:
        lay = custom.layout(e, LENGTHS[-1], DEPTHS[0])
        context = lay.ids[:lay.ids.size - e.question_ids.size]
        text = "".join(tok.decode(custom.pool.ids(c)) + separator for c in lay.chunks)
        assert tok.decode(context) == text
        at = 0
        for c in lay.chunks:
            want = piece(custom, c)
            np.testing.assert_array_equal(context[at:at + want.size], want)
            at += want.size
            apart += not np.array_equal(want, np.r_[custom.pool.ids(c), sep_ids])
        assert at == context.size
        if separator.endswith("\n"):
            np.testing.assert_array_equal(context, tok.encode_ordinary(text))
    assert (apart > 0) == (separator == " ")


@pytest.mark.parametrize("length", LENGTHS)
def test_gold_at_the_requested_depth_by_token_offsets(plan, length):
    for e in plan.entries:
        layouts = [plan.layout(e, length, d) for d in DEPTHS]
        for depth, lay in zip(DEPTHS, layouts):
            ids = lay.ids
            assert ids.size + e.answer_tokens <= length
            np.testing.assert_array_equal(ids[ids.size - e.question_ids.size:], e.question_ids)  # sample.txt last
            # the chunks tile the context, each its text and the separator tokenized together
            at, starts = 0, {}
            for c in lay.chunks:
                want = piece(plan, c)
                np.testing.assert_array_equal(ids[at:at + want.size], want)
                starts[c] = at
                at += want.size
            assert at == ids.size - e.question_ids.size
            # the gold block: exactly the gold chunks, in order, at gold_span
            start, end = lay.gold_span
            np.testing.assert_array_equal(ids[start:end], np.concatenate([piece(plan, c) for c in e.gold]))
            assert start == starts[e.gold[0]]
            # at the chunk boundary nearest the asked share of the distractor tokens
            others = [c for c in lay.chunks if c not in e.gold]
            sizes = [piece(plan, c).size for c in others]
            total = sum(sizes)
            assert total > 0 and total + (end - start) == at
            bounds = np.r_[0, np.cumsum(sizes)]
            before = lay.chunks.index(e.gold[0])
            assert bounds[before] == start
            assert abs(bounds[before] - depth / 100 * total) == min(abs(bounds - depth / 100 * total))
            assert lay.depth == pytest.approx(100 * start / total, abs=1e-3)
        assert layouts[0].gold_span[0] == 0 and layouts[-1].gold_span[1] == layouts[-1].ids.size - e.question_ids.size
        # only the gold moves with the depth: the same distractors in the same order
        orders = [[c for c in lay.chunks if c not in e.gold] for lay in layouts]
        assert all(o == orders[0] for o in orders)


def test_distractors_never_hold_the_gold_chunk(plan):
    gold_texts = {c: normalize_answer(chunk_text(plan, c)) for e in plan.entries for c in e.gold}
    for e in plan.entries[:2]:  # the corpus copy of the lighthouse passage is retrieved, and left out
        ranked, _ = rag._search(plan.settings, plan.pool, plan.root, [e.q.question], plan.retrieve)
        assert any(doc_of(plan, int(c)) == "copy" for c in ranked[0] if c >= 0)
        assert not any(doc_of(plan, c) == "copy" for c in e.candidates)
    for e in plan.entries:
        for n in LENGTHS:
            for d in DEPTHS:
                lay = plan.layout(e, n, d)
                assert sorted(set(lay.chunks)) == sorted(lay.chunks)  # no chunk twice
                for c in lay.chunks:
                    if c in e.gold:
                        continue
                    text = normalize_answer(chunk_text(plan, c))  # (a chunk of punctuation alone has none)
                    assert not text or all(g not in text and text not in g for g in (gold_texts[x] for x in e.gold))


def test_no_answer_distractors_hold_no_answer(lm, files, plan, tmp_path):
    from nextlong.synthesis.acer.answers import contains_answer

    strict = prepare(lm, files, tmp_path, distractors="no-answer")
    paint = [c for c in plan.entries[0].candidates if doc_of(plan, c) == "paint"]
    assert paint  # with retrieved distractors, the chunk naming "crimson" competes
    for e in strict.entries:
        assert all(c in e.gold or not contains_answer(chunk_text(strict, c), e.q.answers) for c in e.candidates)
    assert not any(doc_of(strict, c) == "paint" for c in strict.entries[0].candidates)


def test_retrieval_order_keeps_rank_order(lm, files, tmp_path):
    p = prepare(lm, files, tmp_path, order="retrieval")
    e = p.entries[0]
    lay = p.layout(e, LENGTHS[-1], 50.0)
    others = [c for c in lay.chunks if c not in e.gold]
    assert others == [c for c in e.distractors if c in set(others)]


# --- retrieve-then-read ----------------------------------------------------------------------------


def test_read_prompt_holds_exactly_the_top_r_chunks(plan):
    tok = plan.tokenizer
    for e in plan.entries:
        ranked, _ = rag._search(plan.settings, plan.pool, plan.root, [e.q.question], plan.retrieve)
        order = [int(c) for c in ranked[0] if c >= 0]
        assert e.candidates == [c for c in order if c in set(e.candidates)]  # retrieval order kept
        top = e.candidates[:3]
        assert e.read_chunks == top
        text = tok.decode(plan.read_prompt(e).tolist())
        want = "Answer the question using the passages below.\n\n" + "\n\n".join(
            f"Passage {n}:\n{tok.decode(plan.pool.ids(c).tolist())}" for n, c in enumerate(top, 1)) + \
            f"\n\nQuestion: {e.q.question}\nAnswer:"
        assert text == want
        assert text.count("Passage ") == 3
    assert plan.entries[0].gold[0] in plan.entries[0].read_chunks  # an easy question: BM25 finds its gold


# --- scoring ---------------------------------------------------------------------------------------

# the long context: right, partly right, partly right; the reader: wrong, right, nothing
LONG = {QUESTIONS[0]["question"]: "Crimson.", QUESTIONS[1]["question"]: "the keeper Ada Voss",
        QUESTIONS[2]["question"]: "abstract classes of cloudberry wine"}
READ = {QUESTIONS[0]["question"]: "blue", QUESTIONS[1]["question"]: "Voss", QUESTIONS[2]["question"]: ""}


def fake_generate(calls):
    def generate(lm, ids, max_new_tokens):
        text = lm.tokenizer.decode(np.asarray(ids).tolist())
        question = text.rsplit("Question: ", 1)[1].split("\n", 1)[0]
        calls.append(question)
        return (READ if text.startswith("Answer the question using") else LONG)[question]
    return generate


def eval_args(files, out, *extra):
    return ["eval", str(files["model"]), "--out", str(out), "--tasks", "rag", "--rag-questions",
            str(files["questions"]), "--corpus", str(files["corpus"]), "--id-field", "id", "--lengths",
            ",".join(map(str, LENGTHS)), "--depths", str(len(DEPTHS)), "--rag-retriever", "bm25", "--rag-read", "3",
            "--rag-chunk-tokens", str(CHUNK), "--device", "cpu", *extra]


def test_em_and_f1_against_hand_computed_values(files, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(rag, "generate", fake_generate(calls))
    assert main(eval_args(files, tmp_path)) == 0
    assert len(calls) == 3 + 3 * len(LENGTHS) * len(DEPTHS)
    result = json.loads((tmp_path / "results.json").read_text())["rag"]
    # "Crimson." = crimson: EM 1, F1 1; "the keeper Ada Voss" -> keeper ada voss against "ada voss": P 2/3, R 1,
    # F1 0.8 (against "voss": 0.5); "abstract classes of cloudberry wine" (5 tokens) against "cloudberry wine":
    # P 2/5, R 1, F1 4/7
    f1 = 100 * (1 + 0.8 + 4 / 7) / 3
    for cell in result["cells"]:
        assert cell["n"] == 3 and cell["em"] == pytest.approx(100 / 3, abs=1e-3)
        assert cell["f1"] == pytest.approx(f1, abs=1e-3)
    assert [(c["length"], c["depth"]) for c in result["cells"]] == [(n, d) for n in LENGTHS for d in DEPTHS]
    assert result["overall"]["n"] == 3 * len(LENGTHS) * len(DEPTHS)
    # the reader: "blue" 0/0, "Voss" EM 1 F1 1, "" 0/0
    base = result["retrieve_then_read"]
    assert base["n"] == 3 and base["em"] == pytest.approx(100 / 3, abs=1e-3)
    assert base["f1"] == pytest.approx(100 / 3, abs=1e-3)
    for row, n in zip(result["comparison"], LENGTHS):
        assert row["length"] == n and row["f1_gain"] == pytest.approx(f1 - 100 / 3, abs=1e-3)
    summary = (tmp_path / "summary.md").read_text()
    assert f"| {LENGTHS[0]} | 33.3 | {f1:.1f} | 33.3 | 33.3 | +{f1 - 100 / 3:.1f} |" in summary
    assert (tmp_path / "heatmap_rag.png").stat().st_size > 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["statistics"]["rag_answers"] == 3 + 3 * len(LENGTHS) * len(DEPTHS)
    # resume: every answer is reused, the model is not called again
    calls.clear()
    assert main(eval_args(files, tmp_path)) == 0
    assert calls == [] and json.loads((tmp_path / "results.json").read_text())["rag"] == result


def test_score_is_squad_em_and_max_f1():
    assert rag.score("The Crimson!", ["crimson"]) == {"em": 1.0, "f1": 1.0}
    got = rag.score("the keeper Ada Voss", ["Ada Voss", "Voss"])
    assert got["em"] == 0.0 and got["f1"] == pytest.approx(0.8)
    assert rag.answer_text("  Ada Voss\nQuestion: next") == "Ada Voss"


def test_generate_is_greedy_and_stops_at_a_newline(lm, plan):
    e = plan.entries[0]
    ids = plan.read_prompt(e)
    got = rag.generate(lm, ids, 6)
    seq = [int(i) for i in ids]
    out = []
    with torch.no_grad():
        for _ in range(6):
            nxt = int(lm.model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            if nxt in lm.eos_ids:
                break
            out.append(nxt)
            seq.append(nxt)
            if "\n" in lm.tokenizer.decode(out).lstrip():
                break
    assert got == rag.answer_text(lm.tokenizer.decode(out))


def test_same_seed_same_prompts_other_seed_other_order(lm, files, tmp_path, monkeypatch):
    a = prepare(lm, files, tmp_path / "a")
    b = prepare(lm, files, tmp_path / "b")
    other = rag.RagSettings(**{**settings(files).__dict__, "seed": 1})
    c = rag.prepare_rag(lm, other, rag.read_rag_questions(other.questions), tmp_path / "c")
    differs = False
    for ea, eb, ec in zip(a.entries, b.entries, c.entries):
        assert ea.candidates == eb.candidates == ec.candidates
        for n in LENGTHS:
            la, lb, lc = a.layout(ea, n, 50.0), b.layout(eb, n, 50.0), c.layout(ec, n, 50.0)
            np.testing.assert_array_equal(la.ids, lb.ids)
            assert sorted(la.chunks) == sorted(lc.chunks)
            differs |= la.chunks != lc.chunks
    assert differs and a.fingerprint == b.fingerprint != c.fingerprint
    # end to end with the real model: two runs write the same rag results and samples
    for out in ("x", "y"):
        assert main(eval_args(files, tmp_path / out, "--dump")) == 0
    rx, ry = (json.loads((tmp_path / o / "results.json").read_text())["rag"] for o in ("x", "y"))
    assert rx == ry
    assert (tmp_path / "x" / "samples.jsonl").read_text() == (tmp_path / "y" / "samples.jsonl").read_text()


def test_embedding_retriever(lm, files, tmp_path):
    p = prepare(lm, files, tmp_path, retriever="embedding", embedder="hashed-tfidf")
    for e in p.entries:
        assert e.gold[0] in e.candidates and len(e.candidates) >= 3
        lay = p.layout(e, LENGTHS[0], 50.0)
        assert lay.ids.size + e.answer_tokens <= LENGTHS[0]
    assert p.entries[0].gold[0] in p.entries[0].read_chunks


def test_a_damaged_or_crafted_chunk_store_is_refused_before_use(lm, files, tmp_path):
    """The chunk store under DIR/rag/ is reused when its fingerprint matches, so a damaged byte in it gave other
    prompts silently: it is checked first, in an error without --no-verify (eval has no such option). A file
    entry that is a FIFO is refused, not read (the read blocked for ever)."""
    import os
    import threading

    from nextlong.errors import CorruptFileError

    prepare(lm, files, tmp_path)
    path = tmp_path / "rag" / "chunks" / "store" / "tokens.npy"
    whole = path.read_bytes()
    path.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]))
    with pytest.raises(CorruptFileError, match=f"{path}: not the file the chunks stage wrote") as info:
        prepare(lm, files, tmp_path)
    assert "--no-verify" not in str(info.value)
    path.write_bytes(whole)
    record = tmp_path / "rag" / "chunks" / "_done.json"
    record.write_text(json.dumps(dict(json.loads(record.read_text()), files={"f": {"bytes": 0, "crc32": 0}})))
    os.mkfifo(tmp_path / "rag" / "chunks" / "f")
    raised = []
    run = threading.Thread(target=lambda: raised.append(pytest.raises(CorruptFileError, prepare, lm, files,
                                                                      tmp_path)), daemon=True)
    run.start()
    run.join(10)
    if run.is_alive():  # a blocked reader: an end of file lets the thread end
        os.close(os.open(tmp_path / "rag" / "chunks" / "f", os.O_WRONLY | os.O_NONBLOCK))
        run.join(10)
        pytest.fail("a FIFO listed in the chunk store's record blocked the check")
    assert raised and "chunks/f: not the file the chunks stage wrote" in str(raised[0].value)


# --- errors before any work ------------------------------------------------------------------------


def error_line(capsys) -> str:
    """The one error line on stderr (progress bars of the chunking may come before it)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("nextlong eval: error: ") and err.rstrip().endswith(lines[0])
    return lines[0]


def write_questions(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row, message", [
    ({"question": "Who?", "context": LIGHTHOUSE}, "no gold answer"),
    ({"question": "Who?", "answer": ""}, "no gold answer"),
    ({"question": "Who?", "answer": "Ada"}, "no gold evidence"),
    ({"question": "Who?", "answer": "Ada", "context": LIGHTHOUSE, "doc_id": "ledger"}, "not both"),
    ({"question": "Who?", "answer": "Ada", "doc_id": "ledger", "chunk_index": -1}, "chunk_index"),
    ({"question": "Who?", "answer": "Ada", "context": ""}, "context"),
    ({"question": "Who?", "answer": "Ada", "doc_id": "ledger", "chunk_id": 3}, '"chunk_id" is not read'),
])
def test_bad_questions_files_fail_in_one_line_before_the_model_loads(files, tmp_path, capsys, row, message):
    q = write_questions(tmp_path / "q.jsonl", [QUESTIONS[0], row])
    with pytest.raises(CorpusError, match=message):
        rag.read_rag_questions(q)
    args = eval_args(files, tmp_path / "out")
    args[args.index("--rag-questions") + 1] = str(q)
    args[1] = str(tmp_path / "no-such-model")  # the questions file is checked first
    assert main(args) != 0
    err = error_line(capsys)
    assert "q.jsonl" in err and ":2" in err and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("row, message", [
    ({"question": "Who?", "answer": "Ada", "doc_id": "nowhere"}, "doc_id 'nowhere' is not a document"),
    ({"question": "Who?", "answer": "Ada", "doc_id": "ledger", "chunk_index": 40}, "has no chunk 40"),
])
def test_gold_evidence_missing_from_the_corpus(files, tmp_path, capsys, row, message):
    """Bad data in the questions file (exit 1, not a bad option's 2), said before the corpus is embedded."""
    q = write_questions(tmp_path / "q.jsonl", [QUESTIONS[0], row])
    args = eval_args(files, tmp_path / "out")
    args[args.index("--rag-questions") + 1] = str(q)
    args[args.index("--rag-retriever") + 1] = "embedding"
    assert main(args + ["--rag-embedder", "hashed-tfidf"]) == 1
    err = error_line(capsys)
    assert message in err and "gold evidence missing from the corpus" in err
    assert (tmp_path / "out" / "rag" / "chunks").is_dir() and not (tmp_path / "out" / "rag" / "embed").exists()
    assert not (tmp_path / "out" / "rag" / ".progress.jsonl").exists() and not (tmp_path / "out" / "results.json").exists()


def test_length_too_short_for_the_gold_and_question(files, tmp_path, capsys):
    args = eval_args(files, tmp_path / "out")
    args[args.index("--lengths") + 1] = "16,768"
    assert main(args) == 2
    err = error_line(capsys)
    assert "--lengths 16 is too short" in err and "gold chunk" in err
    assert not (tmp_path / "out" / "rag" / ".progress.jsonl").exists()


def test_missing_options_and_a_reader_beyond_the_model(lm, files, tmp_path, capsys):
    args = eval_args(files, tmp_path / "out")
    i = args.index("--rag-questions")
    assert main(args[:i] + args[i + 2:]) == 2
    assert "--rag-questions" in capsys.readouterr().err
    i = args.index("--corpus")
    assert main(args[:i] + args[i + 2:]) == 2
    assert "needs --corpus" in capsys.readouterr().err
    with pytest.raises(UsageError, match="beyond the model's 2048 positions"):
        prepare(lm, files, tmp_path / "big", read=100)
    with pytest.raises(UsageError, match="--rag-retrieve 2 is below --rag-read 3"):
        prepare(lm, files, tmp_path / "k", retrieve=2)


def test_pieces_kept_within_their_bound_give_the_same_layouts(plan, monkeypatch):
    """The tokenized context chunks are kept up to a bound (a whole evaluation's candidates could take
    gigabytes); chunks let go are made again, the same."""
    import dataclasses

    import nextlong.synthesis.acer.templates as templates

    cells = [(e, n, d) for e in plan.entries for n in LENGTHS for d in DEPTHS]
    whole = [plan.layout(*cell) for cell in cells]  # before counting: the plan's own pieces are not counted
    made, original = [], templates.context_pieces

    def counted(tokenizer, chunks, separator):
        made.append(len(chunks))
        return original(tokenizer, chunks, separator)

    monkeypatch.setattr(templates, "context_pieces", counted)
    small = rag.Pieces(plan.pool, plan.tokenizer, plan.settings, keep_ids=64)
    bounded = dataclasses.replace(plan, pieces=small)
    for a, cell in zip(whole, cells):
        b = bounded.layout(*cell)
        np.testing.assert_array_equal(a.ids, b.ids)
        assert a.chunks == b.chunks and a.gold_span == b.gold_span
        assert small._kept_ids <= 64 and small._kept_ids == sum(p.size for p in small._kept.values())
    distinct = len({c for e in plan.entries for c in e.gold + e.candidates})
    assert sum(made) > distinct  # chunks were let go and made again


def test_answers_of_the_older_decoding_are_kept_where_it_stayed_within_the_positions(lm, files, tmp_path,
                                                                                    monkeypatch):
    """A rag journal of the decoding before DECODING_REVISION keeps the answers whose prompt + budget - 1 ids lie
    within the model's positions (2048 here) and answers again those that could run past them."""
    calls = []
    monkeypatch.setattr(rag, "generate", fake_generate(calls))
    plan = prepare(lm, files, tmp_path)
    e = plan.entries[0]
    assert e.max_new_tokens > 1
    cells = ((rag.BASELINE, 0, None, 300), (rag.TASK, LENGTHS[0], DEPTHS[0], 2049 - e.max_new_tokens),
             (rag.TASK, LENGTHS[0], DEPTHS[1], 2050 - e.max_new_tokens))  # 2048 ids fed at most, then 2049
    old = [{"task": task, "length": n, "depth": d, "index": e.q.id, "prompt_tokens": p, "prediction": "old",
            "em": 0.0, "f1": 0.0} for task, n, d, p in cells]
    plan.root.mkdir(parents=True, exist_ok=True)
    (plan.root / ".progress.jsonl").write_text(
        "\n".join(json.dumps(r) for r in [{"fingerprint": plan.older_fingerprint}, *old]) + "\n")
    records = rag.run_rag(lm, plan)
    kept = {(r["task"], r["length"], r["depth"]) for r in records if r["prediction"] == "old"}
    assert kept == {(rag.BASELINE, 0, None), (rag.TASK, LENGTHS[0], DEPTHS[0])}
    assert len(calls) == len(rag.jobs(plan)) - 2


def test_answers_of_a_model_whose_text_config_names_its_positions_are_kept_only_where_decoded_alike(lm, files,
                                                                                                  tmp_path,
                                                                                                  monkeypatch):
    """Until 2026-12-07 the positions of a multimodal config (Gemma 3's, named in its text_config only) were not
    read, so answers were decoded past them in journals that already carried DECODING_REVISION: such a journal
    keeps the answers whose prompt + budget - 1 ids lie within the positions and answers the others again."""
    import dataclasses
    from types import SimpleNamespace

    from transformers import Gemma3Config

    calls = []
    monkeypatch.setattr(rag, "generate", fake_generate(calls))
    then = prepare(lm, files, tmp_path).fingerprint  # the same identity, the header such a run wrote
    nested = dataclasses.replace(lm, model=SimpleNamespace(config=Gemma3Config(
        text_config={"max_position_embeddings": lm.max_positions})))
    plan = prepare(nested, files, tmp_path)
    e = plan.entries[0]
    cells = ((rag.BASELINE, 0, None, 300), (rag.TASK, LENGTHS[0], DEPTHS[0], 2049 - e.max_new_tokens),
             (rag.TASK, LENGTHS[0], DEPTHS[1], 2050 - e.max_new_tokens))  # 2048 ids fed at most, then 2049
    old = [{"task": task, "length": n, "depth": d, "index": e.q.id, "prompt_tokens": p, "prediction": "old",
            "em": 0.0, "f1": 0.0} for task, n, d, p in cells]
    plan.root.mkdir(parents=True, exist_ok=True)
    (plan.root / ".progress.jsonl").write_text("\n".join(json.dumps(r) for r in [{"fingerprint": then}, *old]) + "\n")
    records = rag.run_rag(nested, plan)
    kept = {(r["task"], r["length"], r["depth"]) for r in records if r["prediction"] == "old"}
    assert kept == {(rag.BASELINE, 0, None), (rag.TASK, LENGTHS[0], DEPTHS[0])}
    assert len(calls) == len(rag.jobs(plan)) - 2
