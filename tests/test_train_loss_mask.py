"""nextlong train on ACER-style data: answer-only loss from a `loss_mask` column (issue 26).

The data is made by hand, as `nextlong acer` lays it out: OUT/data/*.parquet with `input_ids` and a
uint8 `loss_mask` that is 1 on one contiguous answer at the end of each sample, the same rows as
JSONL (OUT/jsonl) and MDS (OUT/mds), and a manifest naming the 1K-id test tokenizer.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from nextlong.errors import NextlongError, UsageError
from nextlong.train import train
from nextlong.train.data import PackedCollator, PackedDataset, SampleStream, SequencePacker, collate
from nextlong.train.sources import open_sources, resolve_loss_on
from tests.train_support import base_dir, corpus_and_tokenizer, metrics, synthesized

FAST = dict(model="tiny", progress=False, num_threads=1)
MAX_LEN = 200
SEQ = 2 * MAX_LEN


def make_rows(n=10, seed=0, answers=True):
    """(ids, mask) pairs: 120..200 tokens, the last 3..12 of them the answer (mask 1)."""
    gen = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        length = int(gen.integers(120, MAX_LEN + 1))
        ids = gen.integers(1, 1024, length).astype(np.uint32)
        mask = np.zeros(length, np.uint8)
        if answers:
            mask[length - int(gen.integers(3, 13)):] = 1
        rows.append((ids, mask))
    return rows


def write_acer(root, rows, formats=("parquet", "jsonl", "mds")):
    """An ACER-like output folder holding `rows` in each of `formats`."""
    from nextlong.mds import MDSWriter
    from nextlong.corpus.tokenizer import load_tokenizer

    _, tok = corpus_and_tokenizer()
    root.mkdir(parents=True)
    if "parquet" in formats:
        (root / "data").mkdir()
        table = pa.table({"input_ids": pa.array([r[0] for r in rows], pa.list_(pa.uint32())),
                          "loss_mask": pa.array([r[1] for r in rows], pa.list_(pa.uint8())),
                          "method": ["acer"] * len(rows)})
        pq.write_table(table, root / "data" / "part-00000.parquet", row_group_size=3)
    if "jsonl" in formats:
        (root / "jsonl").mkdir()
        with open(root / "jsonl" / "part-00000.jsonl", "w") as f:
            for ids, mask in rows:
                f.write(json.dumps({"input_ids": ids.tolist(), "loss_mask": mask.tolist(), "method": "acer"}) + "\n")
    if "mds" in formats:
        columns = {"input_ids": "ndarray:uint32", "indices": "ndarray:uint32", "loss_mask": "ndarray:uint8"}
        with MDSWriter(root / "mds", columns) as w:
            for ids, mask in rows:
                w.write({"input_ids": ids, "indices": np.asarray([[0, len(ids)]], np.uint32), "loss_mask": mask})
    (root / "tokenizer").mkdir()  # as `nextlong acer` does: the folder keeps its own copy of the tokenizer
    (root / "tokenizer" / tok.name).write_bytes(tok.read_bytes())
    settings = {"tokenizer": str(tok), "tokenizer_copy": f"tokenizer/{tok.name}",
                "tokenizer_fingerprint": load_tokenizer(str(tok)).fingerprint, "target_length": MAX_LEN}
    (root / "manifest.json").write_text(json.dumps({"command": "acer", "settings": settings}))
    return root


@pytest.fixture(scope="module")
def rows():
    return make_rows()


@pytest.fixture(scope="module")
def acer(rows):
    return write_acer(base_dir() / "acer", rows)


def placed(rows, seq_len, n_seq):
    """The rows each of the first `n_seq` sequences holds: whole samples in order, until one does not fit."""
    out, r = [], 0
    for _ in range(n_seq):
        here, used = [], 0
        while r < len(rows) and used + len(rows[r][0]) <= seq_len:
            here.append(r)
            used += len(rows[r][0])
            r += 1
        out.append(here)
    return out


def answer_positions(n_seq, rows, seq_len):
    """The loss positions (b, t) and their targets, worked out from the rows alone: sample r placed at
    offset o with its answer at [a, n) is predicted at positions o+a-1 .. o+n-2 (t predicts t + 1)."""
    out = []
    for b, here in enumerate(placed(rows, seq_len, n_seq)):
        offset = 0
        for r in here:
            ids, mask = rows[r]
            a = int(np.argmax(mask))
            out += [(b, offset + t - 1, int(ids[t])) for t in range(a, len(ids))]
            offset += len(ids)
    return out


def targets(labels):
    """{(b, t)}: the positions whose next token is a target (labels are aligned with input_ids)."""
    return {(int(b), int(t) - 1) for b, t in zip(*torch.nonzero(labels != -100, as_tuple=True))}


def _packer(path, seq_len=SEQ, loss_mask=True):
    return SequencePacker(SampleStream(open_sources([str(path)]), loss_mask=loss_mask), seq_len)


def _sequences(path, n, seq_len=SEQ):
    packer = _packer(path, seq_len)
    return [packer.next_sequence() for _ in range(n)]


# --- data --------------------------------------------------------------------------------------


def test_labels_keep_exactly_the_answer_tokens(acer, rows):
    batch = collate(_sequences(acer, 2))
    expected = answer_positions(2, rows, SEQ)
    assert targets(batch["labels"]) == {(b, t) for b, t, _ in expected}
    for b, t, target in expected:
        assert int(batch["labels"][b, t + 1]) == target == int(batch["input_ids"][b, t + 1])
    # one span per sample (the answer sees its whole context); samples never split, the rest padded
    n0, n1 = len(rows[0][0]), len(rows[1][0])
    assert batch["cu_seq_lens_q"].tolist()[:3] == [0, n0, n0 + n1]
    # the first answer token is a target, the question's last token and the token after the answer are not
    a = int(np.argmax(rows[0][1]))
    assert batch["labels"][0, a] != -100 and batch["labels"][0, a - 1] == -100
    assert batch["labels"][0, n0] == -100 and batch["labels"][0, n0 - 1] != -100


def test_mds_and_jsonl_read_the_same_sequences(acer):
    ref = _sequences(acer, 4)
    for sub in ("mds", "jsonl", "jsonl/part-00000.jsonl"):
        got = _sequences(acer / sub, 4)
        for a, b in zip(ref, got):
            assert np.array_equal(a.ids, b.ids) and np.array_equal(a.loss_mask, b.loss_mask), sub
            assert a.span_lengths == b.span_lengths
    assert {s.kind for s in open_sources([str(acer), str(acer / "mds"), str(acer / "jsonl")])} == {
        "parquet", "mds", "jsonl"}


def test_packed_collator_labels_are_minus_100_exactly_outside_the_answers(acer, rows):
    items = iter(PackedDataset(str(acer), SEQ))
    batch = PackedCollator()([next(items) for _ in range(2)])
    assert targets(batch["labels"]) == {(b, t) for b, t, _ in answer_positions(2, rows, SEQ)}
    # loss_on="all": every token but the first of each span
    items = iter(PackedDataset(str(acer), SEQ, loss_on="all"))
    batch = PackedCollator()([next(items)])
    assert "loss_mask" not in next(iter(PackedDataset(str(acer), SEQ, loss_on="all")))
    first = placed(rows, SEQ, 1)[0]
    assert int((batch["labels"] != -100).sum()) == sum(len(rows[r][0]) - 1 for r in first)
    # a stock transformers model trains on the answers only: its loss is the mean CE over them
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1)).eval()
    one = PackedCollator()([next(iter(PackedDataset(str(acer), MAX_LEN)))])  # one sample per row
    with torch.no_grad():
        out = lm(input_ids=one["input_ids"], labels=one["labels"])
        ids, mask = rows[0]
        logits = lm(input_ids=torch.from_numpy(ids.astype(np.int64))[None]).logits[0].float()
    a = int(np.argmax(mask))
    ref = F.cross_entropy(logits[a - 1:len(ids) - 1], torch.from_numpy(ids[a:].astype(np.int64)))
    assert abs(float(out.loss) - float(ref)) < 1e-5


def test_loss_on_is_checked_before_any_work(acer, tmp_path, capsys):
    from nextlong.cli import main

    plain = synthesized("standard")
    with pytest.raises(UsageError, match=f"{plain}: --loss-on answer needs a `loss_mask`"):
        train(plain, tmp_path / "a", loss_on="answer", **FAST)
    assert main(["train", str(plain), "--out", str(tmp_path / "b"), "--loss-on", "answer", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(plain) in err and "loss_mask" in err
    assert not (tmp_path / "b" / "metrics.jsonl").exists()
    # mixing data with and without a mask: only with --loss-on all
    with pytest.raises(UsageError, match="pass --loss-on all"):
        resolve_loss_on(open_sources([str(acer), str(plain)]), None)
    assert resolve_loss_on(open_sources([str(acer), str(plain)]), "all") == "all"
    assert resolve_loss_on(open_sources([str(plain)]), None) == "all"
    assert resolve_loss_on(open_sources([str(acer)]), None) == "answer"
    # a sample is one span and is never cut
    with pytest.raises(UsageError, match="--split-spans with --loss-on answer"):
        train(acer, tmp_path / "c", seq_len=SEQ, split_spans=True, **FAST)
    with pytest.raises(UsageError, match="--attention-spans document with --loss-on answer"):
        train(acer, tmp_path / "d", seq_len=SEQ, attention_spans="document", **FAST)
    with pytest.raises(UsageError, match="longer than --seq-len"):
        train(acer, tmp_path / "e", seq_len=100, **FAST)
    with pytest.raises(UsageError, match="--split-spans with --loss-on answer"):
        PackedDataset(str(acer), SEQ, split_spans=True)
    # settings --resume took from the run's manifest are named as the run's (attack s14), not as typed
    masked = open_sources([str(acer)])
    with pytest.raises(UsageError, match=r"^--split-spans \(from the run's manifest\) with --loss-on answer "
                                         r"\(from the run's manifest\) would cut"):
        resolve_loss_on(masked, "answer", split_spans=True, restored=frozenset({"split_spans", "loss_on"}))
    with pytest.raises(UsageError, match=r"^--attention-spans document \(from the run's manifest\) with --loss-on "
                                         r"answer \(the default"):
        resolve_loss_on(masked, None, attention_spans="document", restored=frozenset({"attention_spans"}))


def test_bad_masks_are_named_by_row(tmp_path, rows):
    bad = [(rows[0][0], rows[0][1][:-1]), (rows[1][0], rows[1][1] * 2)]
    for i, (what, row) in enumerate([("entries for", bad[0]), ("other than 0 and 1", bad[1])]):
        folder = write_acer(tmp_path / f"bad{i}", [row], formats=("parquet", "jsonl"))
        for sub in ("", "jsonl"):
            with pytest.raises(NextlongError, match=f"row 0.*loss_mask.*{what}|row 0.*{what}"):
                _packer(folder / sub).next_sequence()
    # JSONL for people to read (synthesize's: text, no token ids) is not training data
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "part-00000.jsonl").write_text(json.dumps({"text": "hello", "segments": []}) + "\n")
    with pytest.raises(NextlongError, match="JSONL rows without `input_ids`.*Parquet"):
        open_sources([str(tmp_path / "text")])


# --- the loss ------------------------------------------------------------------------------------


def _first_batch_reference(path, rows, seq_len, seed=0):
    """(the first step's batch, the mean CE over its answer tokens computed from the full fp32 logits
    of the tiny model the trainer starts from, at the positions `answer_positions` names)."""
    from nextlong.train.model import LossModel, build_model

    lm = build_model("tiny", vocab_size=1024, seq_len=seq_len, attention="eager", seed=seed)
    batch = collate([_packer(path, seq_len).next_sequence()])
    model = LossModel(lm, attention="eager", loss="eager")
    with torch.no_grad():
        logits = lm.lm_head(model.hidden_states(batch)).float()
    pos = answer_positions(1, rows, seq_len)
    b, t, y = (torch.tensor(x) for x in zip(*pos))
    return batch, F.cross_entropy(logits[b, t], y)


def test_the_first_step_loss_is_the_cross_entropy_of_the_answers(acer, rows, tmp_path):
    batch, ref = _first_batch_reference(acer, rows, SEQ)
    summary = train(acer, tmp_path / "run", seq_len=SEQ, steps=1, **FAST)
    assert summary["loss_on"] == "answer"
    assert abs(summary["first_loss"] - float(ref)) < 1e-5
    row = metrics(tmp_path / "run")[0]
    n_answer = int((batch["labels"] != -100).sum())
    first = placed(rows, SEQ, 1)[0]
    assert row["loss_tokens"] == n_answer == sum(int(rows[r][1].sum()) for r in first)
    # the same data as JSONL and MDS gives the same first loss
    for sub in ("jsonl", "mds"):
        other = train(acer / sub, tmp_path / sub, seq_len=SEQ, steps=1, **FAST)
        assert abs(other["first_loss"] - summary["first_loss"]) < 1e-6, sub
    # --loss-on all trains on every token: another loss, more tokens
    every = train(acer, tmp_path / "all", seq_len=SEQ, steps=1, loss_on="all", **FAST)
    assert metrics(tmp_path / "all")[0]["loss_tokens"] == sum(len(rows[r][0]) - 1 for r in first)
    assert abs(every["first_loss"] - summary["first_loss"]) > 1e-3


def test_token_weights_fall_on_answer_tokens_only(acer, rows, tmp_path):
    from tests.train_support import set_up_trainer

    t = set_up_trainer(data=[str(acer)], out=str(tmp_path / "w"), seq_len=SEQ, steps=1, token_weighting="dense",
                       short_window=32, short_stride=32, **FAST)
    batch = t.next_batches[0]
    w = t.token_weights(batch)
    answer = batch["labels"] != -100
    assert bool((w[~answer] == 0).all()) and bool((w[answer] > 0).any())
    assert abs(float(w[answer].mean()) - 1.0) < 1e-5  # dense weights average 1 over the answer tokens
    # the step's loss is sum w*CE / sum w over the answers
    with torch.no_grad():
        hidden = t.loss_model.hidden_states(batch)
        logits = t.lm.lm_head(hidden[:, :-1]).float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                         ignore_index=-100, reduction="none")
    ww = w[:, 1:].reshape(-1)
    ref = float((ww * ce).sum() / ww.sum())
    loss, _, applied, tokens = t.step(t.next_batches)
    assert applied and tokens == int(answer.sum()) and abs(loss - ref) < 1e-5


def test_steps_without_answers_apply_nothing_and_a_run_without_any_is_an_error(tmp_path, rows):
    from nextlong.train import checkpoint as ckpt
    from nextlong.train.model import build_model
    from nextlong.train.state_file import load_state

    empty = make_rows(3, seed=5, answers=False)
    folder = write_acer(tmp_path / "mixed", empty[:1] + rows[:3], formats=("parquet",))
    run = tmp_path / "run"
    train(folder, run, seq_len=MAX_LEN, steps=3, stop_after=1, **FAST)  # step 1: the sample without an answer
    (row,) = metrics(run)
    assert row["loss"] is None and row["loss_tokens"] == 0 and "skipped" not in row
    init = build_model("tiny", vocab_size=1024, seq_len=MAX_LEN, attention="nextlong", seed=0).state_dict()
    saved = load_state(ckpt.list_checkpoints(run)[-1] / "model.safetensors")
    assert all(torch.equal(saved["lm." + k], v) for k, v in init.items())  # no update at all
    summary = train(folder, run, seq_len=MAX_LEN, steps=3, resume=True, **FAST)
    rows_ = metrics(run)
    assert [r["loss_tokens"] > 0 for r in rows_] == [False, True, True]
    assert all(np.isfinite(r["loss"]) for r in rows_[1:]) and summary["steps_without_loss_tokens"] == 1
    assert summary["first_loss"] == rows_[1]["loss"]

    none = write_acer(tmp_path / "none", empty, formats=("parquet",))
    with pytest.raises(NextlongError, match="none of the run's 2 steps held an answer token"):
        train(none, tmp_path / "none-run", seq_len=MAX_LEN, steps=2, **FAST)
    assert [r["loss"] for r in metrics(tmp_path / "none-run")] == [None, None]


def test_resume_keeps_the_loss_mode_and_is_exact(acer, tmp_path, capsys):
    from nextlong.cli import main

    opts = dict(seq_len=SEQ, steps=4, save_every=2, **FAST)
    train(acer, tmp_path / "whole", **opts)
    train(acer, tmp_path / "cut", stop_after=2, **opts)  # leftover samples (with their masks) in the checkpoint
    with pytest.raises(NextlongError, match="cannot resume with other settings.*loss_on: saved 'answer', now 'all'"):
        train(acer, tmp_path / "cut", resume=True, loss_on="all", **opts)
    capsys.readouterr()
    assert main(["train", str(acer), "--out", str(tmp_path / "cut"), "--resume", "--quiet", "--threads", "1"]) == 0
    cut, whole = metrics(tmp_path / "cut"), metrics(tmp_path / "whole")
    assert [r["step"] for r in cut] == [1, 2, 3, 4]
    for a, b in zip(cut, whole):
        assert abs(a["loss"] - b["loss"]) <= 1e-6 and a["loss_tokens"] == b["loss_tokens"], (a, b)
    manifest = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert manifest["settings"]["loss_on"] == "answer"
