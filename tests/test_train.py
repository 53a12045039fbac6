"""nextlong train: data packing and spans, kernel parity inside the model, token weights, the loop,
exact resume, atomic checkpoints, bad input, the exported model folder, the CLI."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nextlong.errors import NextlongError, UsageError
from nextlong.train import train
from nextlong.train.data import SampleStream, SequencePacker, collate
from nextlong.train.sources import Source, open_sources
from nextlong.train.state_file import load_state
from tests.train_support import SAMPLE_LEN, corpus_and_tokenizer, metrics, synthesized

FAST = dict(model="tiny", progress=False, num_threads=1)


@pytest.fixture(scope="module")
def data():
    return synthesized("standard")


# --- data: spans, labels, packing, streaming -----------------------------------------------------


def _packer(path, seq_len, spans="sample", split=False, rank=0, world=1, seed=0):
    stream = SampleStream(open_sources([str(path)] if not isinstance(path, list) else path), seed=seed, rank=rank,
                          world=world, spans=spans)
    return SequencePacker(stream, seq_len, split=split)


def test_sample_spans_pack_two_documents_per_sequence(data):
    rows = pq.read_table(data / "data").to_pylist()
    packer = _packer(data, 2 * SAMPLE_LEN)
    batch = collate([packer.next_sequence() for _ in range(2)])
    L = SAMPLE_LEN
    assert batch["cu_seq_lens_q"].tolist() == [0, L, 2 * L, 3 * L, 4 * L]
    assert batch["max_length_q"] == L and batch["cu_seq_lens_q"].dtype == torch.int32
    ids = np.concatenate([rows[i]["input_ids"] for i in range(4)])
    assert batch["input_ids"].reshape(-1).tolist() == ids.tolist()
    labels = batch["labels"].reshape(-1)
    assert (labels[[0, L, 2 * L, 3 * L]] == -100).all()
    assert (labels != -100).sum() == 4 * L - 4
    assert batch["position_ids"][1].tolist() == list(range(2 * L))  # positions are not reset per span


def test_document_spans_follow_segments(data):
    data = synthesized("nextlong")  # anchors interleaved with negatives from other documents
    packer = _packer(data, SAMPLE_LEN, spans="document")
    most = 0
    for row in pq.read_table(data / "data").to_pylist():
        expected, last = [0], None
        for seg in row["segments"]:
            if seg["doc_id"] != last and seg["start"] != 0:
                expected.append(seg["start"])
            last = seg["doc_id"]
        expected.append(SAMPLE_LEN)
        batch = collate([packer.next_sequence()])
        assert batch["cu_seq_lens_q"].tolist() == expected
        assert (batch["labels"][0, expected[:-1]] == -100).all()
        most = max(most, len(expected))
    assert most > 3
    none = collate([_packer(data, SAMPLE_LEN, spans="none").next_sequence()])
    assert none["cu_seq_lens_q"].tolist() == [0, SAMPLE_LEN] and (none["labels"] == -100).sum() == 1


def test_padding_and_splitting(data):
    L = SAMPLE_LEN
    seq = _packer(data, L + L // 2).next_sequence()  # the second sample does not fit: padding
    assert seq.span_lengths == [L, L // 2] and seq.num_pad == L // 2
    b = collate([seq])
    assert (b["labels"][0, L:] == -100).all()
    packer = _packer(data, L + L // 2, split=True)
    a, c = packer.next_sequence(), packer.next_sequence()
    assert a.span_lengths == [L, L // 2] and a.num_pad == 0 and c.span_lengths == [L // 2, L]
    with pytest.raises(NextlongError, match="longer than --seq-len"):
        _packer(data, L // 2).next_sequence()


def test_ranks_read_disjoint_shares_and_state_resumes(data):
    one = _packer(data, SAMPLE_LEN)
    single = [one.next_sequence().ids for _ in range(6)]
    r0 = _packer(data, SAMPLE_LEN, rank=0, world=2)
    r1 = _packer(data, SAMPLE_LEN, rank=1, world=2)
    for i in range(3):
        assert np.array_equal(r0.next_sequence().ids, single[2 * i])
        assert np.array_equal(r1.next_sequence().ids, single[2 * i + 1])
    # a mixture continues identically from a saved state
    other = synthesized("nextlong")
    mix = [f"{data}@3", f"{other}@1"]
    p = _packer(mix, SAMPLE_LEN, split=True)
    for _ in range(5):
        p.next_sequence()
    state = p.state_dict()
    ahead = [p.next_sequence().ids for _ in range(8)]
    q = _packer(mix, SAMPLE_LEN, split=True)
    q.load_state_dict(state)
    assert all(np.array_equal(q.next_sequence().ids, x) for x in ahead)
    assert q.stream.drawn[0] > q.stream.drawn[1]  # weight 3 vs 1


def test_a_folder_named_like_a_weight_is_read_as_that_folder(data, tmp_path, monkeypatch):
    """A folder really named `v@2` was read as `v` at weight 2 ("data not found"); it is the folder when `v`
    does not exist, and refused as ambiguous when both do."""
    named = tmp_path / "v@2"
    shutil.copytree(data, named)
    (source,) = open_sources([str(named)])
    assert (source.path, source.weight) == (named, 1.0)
    (source,) = open_sources([f"{named}@3"])
    assert (source.path, source.weight) == (named, 3.0)
    shutil.copytree(data, tmp_path / "v")
    with pytest.raises(UsageError, match=r"v@2: ambiguous: it exists, and so does .*/v \(at weight 2\); "
                                         r"write .*/v@2@1 for the first, .*/v/@2 for the second"):
        open_sources([str(named)])
    (source,) = open_sources([f"{tmp_path / 'v'}/@2"])
    assert (source.path, source.weight) == (tmp_path / "v", 2.0)
    # a run that recorded `v@2` when only `v` existed resumes, with `v/@2`
    from nextlong.train.trainer import _same_data

    assert _same_data([f"{tmp_path / 'v'}/@2"], [str(named)])
    # or the folder v@2, when the run was started before v existed: either reading of what it recorded
    assert _same_data([f"{named}@1"], [str(named)]) and not _same_data([f"{named}@1"], [f"{tmp_path / 'v'}@3"])
    # a model: one path spelled two ways is one setting; a preset and a folder of its name are not (attack s14 #2)
    from nextlong.train.trainer import _same_path

    assert _same_path(f"{tmp_path / 'v'}/", str(tmp_path / "v"))
    (tmp_path / "tiny").mkdir()
    monkeypatch.chdir(tmp_path)
    assert not _same_path("./tiny", "tiny") and not _same_path("tiny", "./tiny")
    (source,) = open_sources([f"{named}@1"])
    assert (source.path, source.weight) == (named, 1.0)
    (source,) = open_sources([f"{tmp_path / 'v'}@2.5"])
    assert (source.path, source.weight) == (tmp_path / "v", 2.5)


def test_mds_input_matches_parquet():
    mds = synthesized("standard", fmt="mds")
    a = _packer(mds / "mds", SAMPLE_LEN).next_sequence()
    b = _packer(mds, SAMPLE_LEN).next_sequence()  # parquet shards of the same run
    assert np.array_equal(a.ids, b.ids) and a.span_lengths == b.span_lengths
    assert Source(str(mds / "mds")).kind == "mds"


def test_jsonl_rows_with_segments_train_as_the_same_parquet_rows(tmp_path):
    """JSONL rows carrying `segments` were cut into per-document spans under the default `--attention-spans
    sample` (Parquet's segments are read for `document` only): the NExtLong rows as JSONL trained with 252-254
    targets a step where the same rows as Parquet have 255. Now both give the same steps in both span modes."""
    data = synthesized("nextlong")
    jsonl = tmp_path / "rows.jsonl"
    with open(jsonl, "w") as f:
        for row in pq.read_table(data / "data").to_pylist():
            segments = [{k: s[k] for k in ("start", "end", "doc_id")} for s in row["segments"]]
            f.write(json.dumps({"input_ids": row["input_ids"], "segments": segments}) + "\n")
    tok = str(corpus_and_tokenizer()[1])
    for spans in ("sample", "document"):
        curves = {}
        for name, source in (("parquet", data), ("jsonl", jsonl)):
            train(source, tmp_path / f"{spans}-{name}", steps=3, seq_len=SAMPLE_LEN, tokenizer=tok,
                  attention_spans=spans, **FAST)
            curves[name] = [(r["loss_tokens"], r["loss"]) for r in metrics(tmp_path / f"{spans}-{name}")]
        assert curves["jsonl"] == curves["parquet"], spans
        if spans == "sample":
            assert {n for n, _ in curves["parquet"]} == {SAMPLE_LEN - 1}
        else:
            assert min(n for n, _ in curves["parquet"]) < SAMPLE_LEN - 1


# --- the model: kernels against eager, token weights ----------------------------------------------


def _model_and_batch(data, attention, loss, spans="document"):
    from nextlong.corpus.tokenizer import load_tokenizer
    from nextlong.train.model import LossModel, build_model

    _, tok = corpus_and_tokenizer()
    data = synthesized("nextlong") if spans == "document" else data
    lm = build_model("tiny", vocab_size=load_tokenizer(str(tok)).vocab_size, seq_len=2 * SAMPLE_LEN,
                     attention=attention, seed=3)
    packer = _packer(data, 2 * SAMPLE_LEN, spans=spans)
    batch = collate([packer.next_sequence() for _ in range(2)])
    return LossModel(lm, attention=attention, loss=loss), batch


def _loss_and_grads(model, batch, weights=None):
    w = (batch["labels"] != -100).float() if weights is None else weights
    loss = model(batch, w) / w[:, 1:].sum()
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("attention,loss", [("nextlong", "eager"), ("eager", "fused"), ("sdpa", "eager")])
def test_step_one_parity_with_eager(data, attention, loss):
    ref_loss, ref_grads = _loss_and_grads(*_model_and_batch(data, "eager", "eager"))
    got_loss, got_grads = _loss_and_grads(*_model_and_batch(data, attention, loss))
    assert abs(got_loss - ref_loss) < 1e-5
    for name, g in ref_grads.items():
        torch.testing.assert_close(got_grads[name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_document_masking_changes_the_loss(data):
    """The spans reach the attention: per-document masking gives another loss than one causal span."""
    doc = _loss_and_grads(*_model_and_batch(data, "nextlong", "fused", spans="document"))[0]
    whole = _loss_and_grads(*_model_and_batch(data, "nextlong", "fused", spans="none"))[0]
    assert abs(doc - whole) > 1e-4


def test_token_weights_change_the_gradient_as_the_formula_says(data):
    import torch.nn.functional as F

    model, batch = _model_and_batch(data, "nextlong", "fused")
    gen = torch.Generator().manual_seed(0)
    w = torch.rand(batch["labels"].shape, generator=gen) * 3 * (batch["labels"] != -100)
    loss, grads = _loss_and_grads(model, batch, w)
    # reference: sum w*CE / sum w from full logits
    model.zero_grad()
    hidden = model.hidden_states(batch)
    logits = model.lm.lm_head(hidden[:, :-1]).float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                         ignore_index=-100, reduction="none")
    ww = w[:, 1:].reshape(-1)
    ref = (ww * ce).sum() / ww.sum()
    ref.backward()
    assert abs(loss - float(ref)) < 1e-5
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)
    uniform = _loss_and_grads(*_model_and_batch(data, "nextlong", "fused"))[1]
    assert not torch.allclose(uniform["lm.model.embed_tokens.weight"], grads["lm.model.embed_tokens.weight"])


# --- the loop ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_run_lowers_the_loss_and_exports_the_model(data, tmp_path):
    from transformers import AutoModelForCausalLM

    from nextlong.corpus.tokenizer import load_tokenizer

    run = tmp_path / "run"
    summary = train(data, run, steps=30, batch_tokens=2 * SAMPLE_LEN, lr=3e-3, **FAST)
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert {"step", "loss", "lr", "tokens", "tokens_per_s"} <= set(rows[0])
    assert np.mean([r["loss"] for r in rows[-5:]]) < np.mean([r["loss"] for r in rows[:5]]) - 0.3
    assert summary["status"] == "finished" and (run / "loss.png").stat().st_size > 1000
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["command"] == "train" and manifest["settings"]["data_fingerprint"][0]["rows"] > 0
    # the evaluation contract: RUN/model is a save_pretrained folder plus nextlong.json
    spec = json.loads((run / "model" / "nextlong.json").read_text())["tokenizer"]
    assert load_tokenizer(str(run / "model" / spec)).vocab_size == 1024
    lm = AutoModelForCausalLM.from_pretrained(run / "model")
    saved = load_state(sorted((run / "checkpoints").iterdir())[-1] / "model.safetensors")
    for name, tensor in lm.state_dict().items():
        assert torch.equal(tensor, saved["lm." + name]), name


def test_the_seed_fixes_every_random_draw_dropout_included(data, tmp_path):
    """A pretrained model's dropout draws from torch's global generator: --seed now fixes it too (two runs with
    the same seed differed in the 4th significant digit of the first loss)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "model"
    torch.manual_seed(1)
    LlamaForCausalLM(LlamaConfig(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, attention_dropout=0.5,
                                 tie_word_embeddings=True)).save_pretrained(folder)
    opts = dict(model=str(folder), attention="sdpa", steps=2, batch_tokens=SAMPLE_LEN, lr=1e-3, progress=False,
                num_threads=1)
    curves = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        torch.manual_seed(100 + len(curves))  # whatever state the caller's generator is in
        train(data, tmp_path / name, seed=seed, **opts)
        curves[name] = [r["loss"] for r in metrics(tmp_path / name)]
    assert curves["a"] == curves["b"]
    assert curves["a"] != curves["c"]
    # a resume restores the generators the checkpoint saved: step 2's dropout is the uninterrupted run's
    train(data, tmp_path / "cut", seed=0, stop_after=1, **opts)
    train(data, tmp_path / "cut", seed=0, resume=True, **opts)
    assert [r["loss"] for r in metrics(tmp_path / "cut")] == curves["a"]


@pytest.mark.slow
def test_resume_continues_exactly_and_ignores_half_written_checkpoints(data, tmp_path, monkeypatch):
    opts = dict(steps=6, batch_tokens=2 * SAMPLE_LEN, save_every=2, **FAST)
    train(data, tmp_path / "whole", **opts)
    whole = metrics(tmp_path / "whole")

    # stop after 4 steps; then a crash while writing the next checkpoint (step 6's model.safetensors)
    train(data, tmp_path / "cut", stop_after=4, **opts)
    import nextlong.train.checkpoint as ckpt

    real_save = ckpt.save_state

    def crashing_save(path, obj):
        real_save(path, obj)
        if str(path).endswith("model.safetensors"):
            with open(path, "r+b") as f:
                f.truncate(100)  # half-written
            raise KeyboardInterrupt("killed while checkpointing")

    monkeypatch.setattr(ckpt, "save_state", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        train(data, tmp_path / "cut", resume=True, **opts)
    monkeypatch.setattr(ckpt, "save_state", real_save)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "cut")] == ["step-00000002", "step-00000004"]
    assert any(p.name.startswith(".tmp-") for p in (tmp_path / "cut" / "checkpoints").iterdir())

    train(data, tmp_path / "cut", resume=True, **opts)
    cut = metrics(tmp_path / "cut")
    assert [r["step"] for r in cut] == list(range(1, 7))
    for a, b in zip(cut, whole):
        assert abs(a["loss"] - b["loss"]) <= 1e-6 and a["lr"] == b["lr"], (a, b)

    with pytest.raises(NextlongError, match="cannot resume with other settings.*lr"):
        train(data, tmp_path / "cut", resume=True, **dict(opts, lr=5e-4))
    with pytest.raises(NextlongError, match=r"steps: saved 6, now 8\); to train on from it, start a new run with --model"):
        train(data, tmp_path / "cut", resume=True, **dict(opts, steps=8))
    with pytest.raises(NextlongError, match="already holds a training run"):
        train(data, tmp_path / "cut", **opts)


def test_optimizer_steps_are_a_hand_written_adamw_with_clipping_and_the_documented_schedule(data, tmp_path,
                                                                                          monkeypatch):
    """ProLong's optimizer, written out: AdamW (betas 0.9/0.95, eps 1e-8, weight decay on the matrices only),
    the gradient clipped to norm 1, a linear warm-up that trains at lr/warmup from the first step, then cosine
    decay to min_lr_ratio x lr at the last step. Applied by hand in float64 to the gradients the run computed
    (taken where it clips them), it must give the run's weights after every step, and its `lr` and `grad_norm`
    must be the logged ones (no test looked at the optimizer before: betas swapped, decay on the norms, no
    clipping, a warm-up from 0 or no cosine floor all passed)."""
    steps, warmup, lr, floor, decay = 6, 2, 2e-2, 0.2, 0.1
    seen = []  # (weights before the update, gradients) at each step, in parameter order
    real_clip = torch.nn.utils.clip_grad_norm_

    def clip(params, max_norm, *args, **kwargs):
        params = list(params)
        seen.append(([p.detach().double().clone() for p in params], [p.grad.detach().double().clone() for p in params]))
        return real_clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    train(data, tmp_path / "run", steps=steps, warmup=warmup, lr=lr, min_lr_ratio=floor, weight_decay=decay, **FAST)
    rows = metrics(tmp_path / "run")

    def rate(s):  # step s, from 0
        if s < warmup:
            return lr * (s + 1) / warmup
        return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup - 1))))

    weights = seen[0][0]
    m = [torch.zeros_like(w) for w in weights]
    v = [torch.zeros_like(w) for w in weights]
    factors = []
    for s, (before, grads) in enumerate(seen):
        assert max(float((a - b).abs().max()) for a, b in zip(before, weights)) < 2e-6, f"weights before step {s + 1}"
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
        assert rows[s]["grad_norm"] == pytest.approx(norm, rel=1e-5) and rows[s]["lr"] == pytest.approx(rate(s))
        factors.append(min(1.0, 1.0 / (norm + 1e-6)))
        for i, (w, g) in enumerate(zip(weights, grads)):
            g = g * factors[-1]
            w.mul_(1 - rate(s) * (decay if w.dim() >= 2 else 0.0))
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.95 * v[i] + 0.05 * g * g
            w.sub_(rate(s) * (m[i] / (1 - 0.9 ** (s + 1))) / ((v[i] / (1 - 0.95 ** (s + 1))).sqrt() + 1e-8))
    assert len(seen) == steps and min(factors) < 0.9  # clipping took part
    assert rows[-1]["lr"] == pytest.approx(floor * lr)


def test_the_logged_weighted_loss_is_divided_by_the_total_weight(data, tmp_path):
    """With token weighting the step's `loss` is sum w CE / sum w (not / the number of targets: LongCE weights do
    not average 1)."""
    from tests.train_support import set_up_trainer

    t = set_up_trainer(data=[str(data)], out=str(tmp_path / "run"), steps=1, batch_tokens=2 * SAMPLE_LEN,
                       token_weighting="longce", short_window=32, short_stride=32, **FAST)
    weighted = total = 0.0
    with torch.no_grad():
        for batch in t.next_batches:
            w = t.token_weights(batch)
            weighted += float(t.loss_model(batch, w))
            total += float(w[:, 1:].sum())
    loss, _, applied, targets = t.step(t.next_batches)
    assert applied and targets == 2 * (SAMPLE_LEN - 1) and abs(total - targets) > 1e-3 * targets
    assert loss == pytest.approx(weighted / total, rel=1e-5)


# --- bad input: clear errors before the first step -----------------------------------------------


def test_bad_input_is_reported_before_training(data, tmp_path):
    with pytest.raises(UsageError, match="longer than --seq-len"):
        train(data, tmp_path / "a", seq_len=SAMPLE_LEN // 2, **FAST)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NextlongError, match="no training data inside"):
        train(tmp_path / "empty", tmp_path / "b", **FAST)
    with pytest.raises(UsageError, match="multiple of --seq-len"):
        train(data, tmp_path / "c", batch_tokens=SAMPLE_LEN + 1, **FAST)

    # a pretrained model (a finished run) and data from another tokenizer
    run = tmp_path / "pre"
    train(data, run, steps=1, **FAST)
    other = tmp_path / "other"
    shutil.copytree(data, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["settings"].update(tokenizer="cl100k_base", tokenizer_copy=None, tokenizer_fingerprint=None,
                                tokenizer_name="cl100k_base")
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(NextlongError, match="tokenized with cl100k_base"):
        train(other, tmp_path / "d", model=str(run), progress=False)

    # token ids past the model's vocabulary (Parquet without a manifest), named by file and row
    ids = np.arange(SAMPLE_LEN, dtype=np.uint32)
    ids[7] = 5000
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"input_ids": pa.array([ids], pa.list_(pa.uint32()))}), bad / "part-0.parquet")
    with pytest.raises(NextlongError, match=r"part-0.parquet row 0.*token id 5000.*vocabulary of 1024"):
        train(bad, tmp_path / "e", model=str(run), seq_len=SAMPLE_LEN, progress=False)
    assert not (tmp_path / "e").exists()  # refused in setup: no metrics.jsonl, no empty folder left behind


def test_cli_train_and_plot(data, tmp_path, capsys):
    from nextlong.cli import main

    run = tmp_path / "cli-run"
    assert main(["train", str(data), "--out", str(run), "--steps", "2", "--quiet", "--threads", "1",
                 "--rope-theta", "8e6"]) == 0
    assert len(metrics(run)) == 2
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == 8e6
    # the preset stops generating at the data tokenizer's end-of-text token, not at LlamaConfig's default ids
    from nextlong.corpus.tokenizer import load_tokenizer
    from nextlong.manifest import recorded_tokenizer

    manifest = json.loads((data / "manifest.json").read_text())
    eos = load_tokenizer(recorded_tokenizer(data, manifest["settings"])).end_of_text_id
    assert config.get("eos_token_id") == config.get("bos_token_id") == eos
    generation = json.loads((run / "model" / "generation_config.json").read_text())
    assert generation.get("eos_token_id") == eos
    (run / "loss.png").unlink()
    assert main(["plot", str(run)]) == 0 and (run / "loss.png").exists()
    assert main(["train", str(data), "--out", str(tmp_path / "x"), "--seq-len", "8"]) == 2
    assert "longer than --seq-len" in capsys.readouterr().err


def test_cli_resume_takes_the_runs_own_settings(data, tmp_path, capsys):
    """`nextlong train DATA --out RUN --resume`, as the README writes it, continues a run started with
    other than default settings; an option given anew that differs is still refused, naming it."""
    from nextlong.cli import main

    run = tmp_path / "run"
    start = ["train", str(data), "--out", str(run), "--quiet", "--threads", "1"]
    assert main(start + ["--steps", "3", "--stop-after", "1", "--lr", "0.002", "--seq-len", "512",
                         "--warmup", "1"]) == 0
    assert main(["train", str(data), "--out", str(run), "--resume", "--quiet", "--threads", "1"]) == 0
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["tokens"] == 3 * 512
    capsys.readouterr()
    assert main(["train", str(data), "--out", str(run), "--resume", "--quiet", "--lr", "0.5"]) == 1
    assert "lr: saved 0.002, now 0.5" in capsys.readouterr().err
    # an edited manifest: each saved value is checked as its option would be, one line naming the field
    good = (run / "manifest.json").read_text()
    for field, value in (("seq_len", "abc"), ("steps", [6]), ("lr", "fast"), ("min_lr_ratio", None),
                         ("attention", "magic"), ("split_spans", "yes")):
        manifest = json.loads(good)
        manifest["settings"][field] = value
        (run / "manifest.json").write_text(json.dumps(manifest))
        assert main(["train", str(data), "--out", str(run), "--resume", "--quiet", "--threads", "1"]) == 1, field
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"manifest.json: settings.{field} = " in err, err
    (run / "manifest.json").write_text(good)


def test_cli_resume_from_another_folder_with_the_runs_relative_paths(data, tmp_path, monkeypatch):
    """A run started with relative paths (`nextlong train data --out run` in A) resumes from another folder
    (`nextlong train A/data --out A/run --resume`): its checkpoint records the folder its paths were given from.
    Before: "cannot resume with other settings (data: saved ['data'], now ['A/data'])"."""
    from nextlong.cli import main
    from nextlong.train.trainer import _same_path

    shutil.copytree(data, tmp_path / "A" / "data")
    monkeypatch.chdir(tmp_path / "A")
    opts = ["--quiet", "--threads", "1"]
    assert main(["train", "data", "--out", "run", "--steps", "2", "--stop-after", "1", "--seq-len", "512",
                 "--warmup", "1"] + opts) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["train", "A/data", "--out", "A/run", "--resume"] + opts) == 0
    assert [r["step"] for r in metrics(tmp_path / "A" / "run")] == [1, 2]
    # a model or scorer path the same way (compared only: the model loaded is the one given now)
    assert _same_path("A/run/model", "run/model", str(tmp_path / "A")) and not _same_path("A/run/model", "run/model")


def test_resume_compares_recorded_paths_from_the_runs_folder(tmp_path, monkeypatch):
    """A saved relative DATA/--model is the folder under the run's recorded cwd: the same spelling given from
    another folder is another folder (it compared equal as strings), and a recorded `v@2` is looked up there (a
    folder v@2 of the run's folder was read as v at weight 2 from elsewhere: "other settings")."""
    from nextlong.train.trainer import _same_data, _same_path

    for name in ("A/data", "A/v@2", "A/model", "B/data", "B/model"):
        (tmp_path / name).mkdir(parents=True)
    a = str(tmp_path / "A")
    monkeypatch.chdir(tmp_path / "B")
    assert not _same_data(["data"], ["data"], a) and not _same_path("model", "model", a)
    assert _same_data(["../A/data"], ["data"], a) and _same_path("../A/model", "model", a)
    assert _same_data(["data"], ["data"], str(tmp_path / "B")) and _same_data(["data"], ["data"])  # same folder
    monkeypatch.chdir(tmp_path)
    assert _same_data(["A/v@2"], ["v@2"], a) and _same_data(["A/data@2"], ["data@2"], a)
    assert not _same_data(["A/data@3"], ["data@2"], a)
    from nextlong.train.config import other_settings_error

    assert f"given from {a!r}" in str(other_settings_error("run", {"data": (["data"], ["data"])}, a))


@pytest.mark.parametrize("scheme", ["dense", "sparse", "longce"])
def test_token_weighting_schemes_train(data, tmp_path, scheme):
    """Each scheme runs in the loop (short-context scores from the model itself, or from --scorer) and
    gives another first-step loss than uniform weights on the same batch."""
    opts = dict(steps=1, short_window=32, short_stride=32, **FAST)
    base = train(data, tmp_path / "none", **opts)["first_loss"]
    weighted = train(data, tmp_path / scheme, token_weighting=scheme, **opts)["first_loss"]
    assert np.isfinite(weighted) and abs(weighted - base) > 1e-4
    if scheme == "longce":
        scored = train(data, tmp_path / "scorer", token_weighting=scheme, scorer=str(tmp_path / "none"), **opts)
        assert np.isfinite(scored["first_loss"])
        # a scorer of another tokenizer: its log-probs would be of other ids; refused before the first step
        other = tmp_path / "other-scorer"
        shutil.copytree(tmp_path / "none" / "model", other)
        info = json.loads((other / "nextlong.json").read_text())
        (other / "nextlong.json").write_text(json.dumps({**info, "tokenizer": "cl100k_base"}))
        with pytest.raises(NextlongError, match="--scorer .*trained with tokenizer cl100k_base"):
            train(data, tmp_path / "bad-scorer", token_weighting=scheme, scorer=str(other), **opts)
        assert not (tmp_path / "bad-scorer" / "metrics.jsonl").exists()


def test_longce_with_another_scorer_weighs_the_first_window_one(data, tmp_path):
    """With --scorer, the targets whose whole prefix fits in the short window get weight 1 (no context to gain),
    not exp(the gap between the two models); later targets keep their LongCE weights."""
    from nextlong.weighting import long_context_logprobs, longce_weights, short_context_logprobs
    from tests.train_support import set_up_trainer

    train(data, tmp_path / "scorer", steps=1, seed=7, **FAST)  # another model than the one trained below
    window = 32
    t = set_up_trainer(data=[str(data)], out=str(tmp_path / "w"), steps=1, token_weighting="longce",
                       scorer=str(tmp_path / "scorer" / "model"), short_window=window, short_stride=window, **FAST)
    cfg = t.cfg
    batch = t.next_batches[0]
    w = t.token_weights(batch)
    valid = batch["labels"] != -100
    head = valid[:, :window + 1]
    assert bool(head.any()) and bool((w[:, :window + 1][head] == 1.0).all())
    # past the window: min(exp(log p_long(model) - log p_short(scorer)), gamma), from the two models directly
    ids = batch["input_ids"]
    with torch.no_grad():
        long = long_context_logprobs(t.lm, ids)
        short = short_context_logprobs(t.scorer, ids, window, stride=window)
    ref = longce_weights(long, short, valid, gamma=cfg.longce_gamma)
    torch.testing.assert_close(w[:, window + 1:], ref[:, window + 1:], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ref[:, :window + 1][head], torch.ones(int(head.sum())))  # the old weights differ


def test_longce_weighs_one_at_the_start_of_every_span_of_a_packed_row(data, tmp_path):
    """Two samples per row: the second one's first targets see only their own span in the long pass, so when
    that prefix fits the short window they weigh 1 too (before 2026-12-06 only the row's first ones did)."""
    from nextlong.weighting import span_offsets
    from tests.train_support import set_up_trainer

    train(data, tmp_path / "scorer", steps=1, seed=7, **FAST)
    window = 32
    t = set_up_trainer(data=[str(data)], out=str(tmp_path / "w"), steps=1, seq_len=2 * SAMPLE_LEN,
                       batch_tokens=2 * SAMPLE_LEN, token_weighting="longce", scorer=str(tmp_path / "scorer" / "model"),
                       short_window=window, short_stride=window, **FAST)
    batch = t.next_batches[0]
    w = t.token_weights(batch)
    offsets = span_offsets(batch["cu_seq_lens_q"], *batch["input_ids"].shape)
    assert bool((offsets[:, SAMPLE_LEN] == 0).all())  # a span starts mid-row
    head = (batch["labels"] != -100) & (offsets <= window)
    assert bool(head[:, SAMPLE_LEN:].any()) and bool((w[head] == 1.0).all())
    later = (batch["labels"] != -100) & (offsets > window)
    assert not bool((w[later] == 1.0).all())  # past the window the scorer's gap still weighs


@pytest.mark.parametrize("weighting", ["dense", "sparse"])
def test_weighted_runs_log_the_plain_cross_entropy_beside_their_objective(data, tmp_path, weighting):
    """With token weighting, `loss` is sum w CE / sum w, not comparable across schemes; `ce` is the plain mean
    cross-entropy of the same step (before its update): at step 1 it equals an unweighted run's loss."""
    opts = dict(steps=2, batch_tokens=2 * SAMPLE_LEN, short_window=32, short_stride=32, **FAST)
    train(data, tmp_path / "plain", **opts)
    train(data, tmp_path / weighting, token_weighting=weighting, **opts)
    plain, weighted = metrics(tmp_path / "plain"), metrics(tmp_path / weighting)
    assert "ce" not in plain[0] and all("ce" in r for r in weighted)
    assert weighted[0]["ce"] == pytest.approx(plain[0]["loss"], rel=1e-5)
    assert weighted[0]["loss"] != pytest.approx(plain[0]["loss"], rel=1e-5)


def test_a_preset_scorer_is_refused_and_the_manifest_records_the_window_used(data, tmp_path):
    """A preset scorer is a random model (with the run's seed, the trained model's own initial weights): refused.
    The manifest records the short window used beside the one asked for (capped at seq_len / 4)."""
    with pytest.raises(UsageError, match="--scorer tiny: a preset is a model at random initialisation"):
        train(data, tmp_path / "p", steps=1, token_weighting="longce", scorer="tiny", **FAST)
    train(data, tmp_path / "w", steps=1, token_weighting="dense", short_window=4096, **FAST)
    settings = json.loads((tmp_path / "w" / "manifest.json").read_text())["settings"]
    assert settings["short_window"] == 4096 and settings["short_window_used"] == SAMPLE_LEN // 4


def test_step_under_autocast_with_our_kernels(data):
    # `nextlong train` wraps GPU steps in bf16 autocast; there rotary hands fp32 q/k beside a bf16 v
    # and fp32 hidden states to the loss. Both kernels take autocast's dtype (here on the CPU) and the
    # step stays close to the fp32 one.
    model, batch = _model_and_batch(data, "nextlong", "fused")
    ref_loss, _ = _loss_and_grads(model, batch)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = (batch["labels"] != -100).float()
        loss = model(batch, w) / w[:, 1:].sum()
    loss.backward()
    assert abs(float(loss.detach()) - ref_loss) < 0.05 * ref_loss
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in model.parameters() if p.requires_grad)


def test_without_seq_len_a_mix_trains_at_its_longest_sources_length(data, tmp_path):
    """`nextlong train short/@2 long/@1` (the README's mix): the sequence is the longest source's sample length,
    whichever source comes first, so the longer samples fit and the shorter are packed."""
    longer = tmp_path / "longer"
    shutil.copytree(data, longer)
    manifest = json.loads((longer / "manifest.json").read_text())
    manifest["settings"]["target_length"] = 2 * SAMPLE_LEN
    (longer / "manifest.json").write_text(json.dumps(manifest))
    train([f"{data}@2", f"{longer}@1"], tmp_path / "run", steps=1, progress=False)
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["settings"]["seq_len"] == 2 * SAMPLE_LEN


@pytest.mark.parametrize("loss", ["fused", "eager"])
def test_the_training_loss_is_the_models_own_with_its_logit_softcap_and_scale(loss):
    """Gemma-2 soft-caps its logits, Granite divides them by logits_scaling: the trainer's loss (and the
    scorer's log-probs) equal the model's own forward loss (before 2026-12-06 both were left out)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM, GraniteConfig, GraniteForCausalLM

    from nextlong.train.model import LossModel
    from nextlong.weighting import long_context_logprobs

    small = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1)
    torch.manual_seed(0)
    for lm in (Gemma2ForCausalLM(Gemma2Config(**small, head_dim=16, final_logit_softcapping=0.5,
                                              attn_logit_softcapping=None)),
               GraniteForCausalLM(GraniteConfig(**small, logits_scaling=4.0))):
        lm.config._attn_implementation = "eager"
        ids = torch.randint(0, 128, (1, 24))
        with torch.no_grad():
            ref = float(lm(input_ids=ids, labels=ids).loss)
            logits = lm(input_ids=ids).logits[0, :-1].log_softmax(-1)
        cu = torch.tensor([0, 24], dtype=torch.int32)
        batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(24)[None],
                 "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": 24, "max_length_k": 24}
        batch["labels"][0, 0] = -100
        got = float(LossModel(lm, attention="eager", loss=loss)(batch, torch.ones(1, 24))) / 23
        assert got == pytest.approx(ref, abs=1e-5), type(lm).__name__
        scored = long_context_logprobs(lm, ids)[0, 1:]
        torch.testing.assert_close(scored, logits.gather(-1, ids[0, 1:, None])[:, 0], atol=1e-5, rtol=0)
