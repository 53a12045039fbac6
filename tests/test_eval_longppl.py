"""`nextlong.eval.longppl` is the one place that computes the held-out document metrics: the experiment's
`heldout_metrics` and `nextlong eval`'s LongPPL entry both come from `measure_documents`. Each is checked
against the code it replaced (copied below as references), on a tiny random Llama and on a copying model
whose key tokens and long-context gain are far from zero."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.eval_fixtures import CopyModel, one_thread, save_tiny_llama, train_tokenizer  # noqa: E402,F401
from tests.helpers import load_experiment_script as load_script  # noqa: E402

REL = 1e-6


def same(new, old, abs_tol: float) -> bool:
    """Equal within REL (and abs_tol); a metric that is None (e.g. LongPPL without key tokens) must stay None.
    (pytest.approx(None) raises a TypeError from pytest 9.2 on, so None is compared here, not by approx.)"""
    if old is None or new is None:
        return new is old
    return new == pytest.approx(old, rel=REL, abs=abs_tol)


# --- the references: the code before it called measure_documents ------------------------------------


def old_experiment_loop(lm, docs, sc, buckets=32):
    """The experiment's inline held-out loop (nextlong_vs_standard.document_metrics before this change)."""
    from nextlong.eval.longppl import key_token_mask
    from nextlong.eval.model import attention
    from nextlong.weighting import long_context_logprobs, short_context_logprobs

    L, W = sc.long_len, sc.ppl_window
    bucket = math.ceil((L - 1) / buckets)
    pos_sum, pos_n = [0.0] * buckets, [0] * buckets
    tot = key = far_full = far_short = 0.0
    n_tot = n_key = n_far = 0
    short_sum, short_n = 0.0, 0
    with torch.no_grad(), attention(lm.model, lm.prefill_attn):
        for d in docs:
            ids = torch.tensor([d[:L]], dtype=torch.long, device=lm.device)
            lp_long = long_context_logprobs(lm.model, ids)[0].float().cpu()
            lp_short = short_context_logprobs(lm.model, ids, W, stride=max(1, W // 2))[0].float().cpu()
            loss = -lp_long[1:]
            tot += float(loss.sum())
            n_tot += loss.numel()
            mask = key_token_mask(lp_long, lp_short)
            key += float(-lp_long[mask].sum())
            n_key += int(mask.sum())
            far = slice(W + 1, L)
            far_full += float(-lp_long[far].sum())
            far_short += float(-lp_short[far].sum())
            n_far += L - W - 1
            for b in range(buckets):
                part = loss[b * bucket:(b + 1) * bucket]
                pos_sum[b] += float(part.sum())
                pos_n[b] += part.numel()
            windows = [d[i:i + sc.base_len] for i in range(0, len(d) - sc.base_len + 1, sc.base_len)][:8]
            if windows:
                w_ids = torch.tensor(windows, dtype=torch.long, device=lm.device)
                lp = long_context_logprobs(lm.model, w_ids)[:, 1:].float()
                short_sum += float(-lp.sum())
                short_n += lp.numel()
    positions = [1 + b * bucket + bucket / 2 for b in range(buckets)]
    return {
        "metrics": {
            "ppl_long": math.exp(tot / n_tot),
            "longppl": math.exp(key / n_key) if n_key else None,
            "key_token_fraction": n_key / n_tot,
            "long_context_gain": (far_full - far_short) / n_far,
            "loss_far_full": far_full / n_far,
            "key_tokens": n_key,
            "short_ppl": math.exp(short_sum / short_n),
        },
        "loss_by_position": {"positions": positions, "loss": [s / n if n else None for s, n in zip(pos_sum, pos_n)]},
        "documents": len(docs),
    }


def old_evaluate_longppl(lm, docs, *, short_window, short_stride, buckets=32):
    """`nextlong eval`'s LongPPL entry before this change (evaluate_longppl)."""
    from nextlong.eval.longppl import key_token_mask
    from nextlong.eval.model import attention
    from nextlong.weighting import long_context_logprobs, short_context_logprobs

    length = len(docs[0])
    stride = max(1, min(short_stride, short_window))
    bucket = max(1, math.ceil((length - 1) / buckets))
    loss_sum = [0.0] * math.ceil((length - 1) / bucket)
    loss_n = [0] * len(loss_sum)
    total_loss = key_loss = 0.0
    total_n = key_n = 0
    with torch.no_grad(), attention(lm.model, lm.prefill_attn):
        for doc in docs:
            ids = torch.tensor([doc], dtype=torch.long, device=lm.device)
            logp_long = long_context_logprobs(lm.model, ids)[0].cpu()
            if short_window < length - 1:
                logp_short = short_context_logprobs(lm.model, ids, short_window, stride=stride)[0].cpu()
            else:
                logp_short = logp_long.clone()
            loss = -logp_long[1:]
            total_loss += float(loss.sum())
            total_n += loss.numel()
            mask = key_token_mask(logp_long, logp_short)
            key_loss += float(-logp_long[mask].sum())
            key_n += int(mask.sum())
            for b in range(len(loss_sum)):
                part = loss[b * bucket:(b + 1) * bucket]
                loss_sum[b] += float(part.sum())
                loss_n[b] += part.numel()
    return {
        "length": length, "documents": len(docs), "short_window": short_window, "short_stride": stride,
        "tokens": total_n, "key_tokens": key_n, "key_fraction": round(key_n / total_n, 6) if total_n else 0.0,
        "longppl": round(math.exp(key_loss / key_n), 6) if key_n else None,
        "ppl": round(math.exp(total_loss / total_n), 6) if total_n else None,
        "loss_by_position": {
            "bucket": bucket,
            "positions": [1 + b * bucket + (min(bucket, length - 1 - b * bucket) - 1) / 2 for b in range(len(loss_sum))],
            "loss": [round(s / n, 6) if n else None for s, n in zip(loss_sum, loss_n)],
        },
    }


# --- two models ------------------------------------------------------------------------------------


def periodic_docs(vocab: int, period: int, lengths, noise: float = 0.1, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    docs = []
    for n in lengths:
        base = torch.randint(0, vocab, (period,), generator=g)
        doc = base.repeat(n // period + 1)[:n]
        flip = torch.rand(n, generator=g) < noise
        doc[flip] = torch.randint(0, vocab, (int(flip.sum()),), generator=g)
        docs.append(doc.tolist())
    return docs


@pytest.fixture(scope="module", params=["tiny-llama", "copy"])
def model_and_docs(request, tmp_path_factory):
    """(LoadedModel-like, documents of different lengths, all >= 256 tokens)."""
    if request.param == "copy":
        model = CopyModel(vocab=64, period=48)
        lm = SimpleNamespace(model=model, prefill_attn="eager", device=torch.device("cpu"))
        return lm, periodic_docs(64, 48, (300, 420, 256))
    from nextlong.eval.model import load_model
    from tests.helpers import corpus_texts

    tmp = tmp_path_factory.mktemp("longppl")
    tok = train_tokenizer(tmp / "tok" / "tokenizer.json")
    lm = load_model(str(save_tiny_llama(tmp / "model", tok)), attn="auto", device="cpu")
    docs = [[int(i) for i in lm.tokenizer.encode(t)] for t in corpus_texts(max_bytes=200_000)]
    return lm, [d for d in docs if len(d) >= 300][:3]


def test_experiment_heldout_metrics_equal_its_old_inline_loop(model_and_docs):
    lm, docs = model_and_docs
    X = load_script()
    sc = dataclasses.replace(X.SCALES["smoke"], long_len=256, ppl_window=32, base_len=64)
    old = old_experiment_loop(lm, docs, sc)
    new = X.heldout_metrics(lm, docs, sc)
    assert set(new["metrics"]) == set(old["metrics"]) and new["documents"] == old["documents"] == 3
    for name, value in old["metrics"].items():
        assert same(new["metrics"][name], value, abs_tol=0 if value else 1e-12), name
    assert new["loss_by_position"]["loss"] == pytest.approx(old["loss_by_position"]["loss"], rel=REL)
    # positions are now the exact centre of each bucket of positions (old: half a token to the right)
    bucket = math.ceil(255 / 32)
    assert len(new["loss_by_position"]["positions"]) == 32
    assert new["loss_by_position"]["positions"][:-1] == [x - 0.5 for x in old["loss_by_position"]["positions"][:-1]]
    assert new["loss_by_position"]["positions"][-1] == 1 + 31 * bucket + (255 - 31 * bucket - 1) / 2


def test_copy_model_gives_key_tokens_and_a_long_context_gain():
    """The copying model is a meaningful check of the comparisons above (not all metrics trivially 0/None)."""
    model = CopyModel(vocab=64, period=48)
    lm = SimpleNamespace(model=model, prefill_attn="eager", device=torch.device("cpu"))
    from nextlong.eval.longppl import measure_documents

    m = measure_documents(lm, periodic_docs(64, 48, (300, 420, 256)), length=256, short_window=32, short_stride=16,
                          short_context_length=64, progress=False)
    assert 0.5 < m.key_fraction < 0.9 and m.longppl < 1.1 < m.ppl
    assert m.long_context_gain < -2.0 and m.far_tokens == 3 * (256 - 32 - 1)
    assert 1 < m.short_ppl < 64  # 64-token windows copy their last 16 tokens; uniform would be 64


@pytest.mark.parametrize("short_window,short_stride", [(32, 16), (300, 8)])
def test_eval_longppl_entry_is_unchanged(model_and_docs, short_window, short_stride):
    """`nextlong eval`'s results["longppl"] has the same keys and values (rounded to 6 decimals) as before;
    a window as long as the documents gives no key tokens."""
    from nextlong.eval.longppl import evaluate_longppl

    lm, docs = model_and_docs
    docs = [d[:256] for d in docs]
    old = old_evaluate_longppl(lm, docs, short_window=short_window, short_stride=short_stride)
    new = evaluate_longppl(lm, docs, short_window=short_window, short_stride=short_stride)
    # one key more since 2026-12-06: who chose the key tokens ("self" here)
    assert [k for k in new if k != "key_tokens_from"] == list(old) and new["key_tokens_from"] == "self"
    assert list(new["loss_by_position"]) == list(old["loss_by_position"])
    for key in ("length", "documents", "short_window", "short_stride", "tokens", "key_tokens"):
        assert new[key] == old[key], key
    for key in ("key_fraction", "longppl", "ppl"):
        assert same(new[key], old[key], abs_tol=1e-6), key
    assert new["loss_by_position"]["positions"] == old["loss_by_position"]["positions"]
    assert new["loss_by_position"]["loss"] == pytest.approx(old["loss_by_position"]["loss"], rel=REL)
    if short_window >= 255:
        assert new["key_tokens"] == 0 and new["longppl"] is None


# --- key tokens chosen by an evaluator model (Fang et al.) --------------------------------------------


def test_self_chosen_key_tokens_can_rank_a_better_model_worse_and_an_evaluator_cannot():
    """B is better than A on every token, yet each picking its own key tokens gives B the higher LongPPL
    (it finds more of them, harder ones among them); scored on one evaluator's key tokens, B is lower."""
    from nextlong.eval.longppl import DocumentLosses, key_token_mask

    short = torch.tensor([0.0, -5.0, -5.0, -5.0, -5.0, -5.0])
    a = torch.tensor([0.0, -0.01, -0.01, -4.0, -4.0, -4.0])    # sure of two tokens, lost on the rest
    b = torch.tensor([0.0, -0.01, -0.01, -1.5, -1.5, -1.5])    # as sure of the two, far better on the rest
    assert bool((b >= a).all())
    own = {}
    for name, lp in (("a", a), ("b", b)):
        own[name] = DocumentLosses(length=6, short_window=1, short_stride=1)
        own[name].add(lp, short)
    assert own["b"].longppl > own["a"].longppl  # the flaw the evaluator removes
    mask = key_token_mask(b, short)  # the evaluator here: a model that finds all five key tokens
    shared = {}
    for name, lp in (("a", a), ("b", b)):
        shared[name] = DocumentLosses(length=6, short_window=1, short_stride=1, key_tokens_from="ev")
        shared[name].add(lp, short, mask)
    assert shared["a"].key_tokens == shared["b"].key_tokens == 5
    assert shared["b"].longppl < shared["a"].longppl
    assert shared["a"].longppl == pytest.approx(math.exp((0.02 + 12.0) / 5))
    assert shared["a"].summary()["key_tokens_from"] == "ev" and own["a"].summary()["key_tokens_from"] == "self"


def test_an_evaluator_equal_to_the_model_gives_its_own_longppl(model_and_docs):
    from nextlong.eval.longppl import evaluate_longppl, key_token_masks

    lm, docs = model_and_docs
    docs = [d[:256] for d in docs]
    own = evaluate_longppl(lm, docs, short_window=32, short_stride=16)
    masks = key_token_masks(lm, docs, short_window=32, short_stride=16, progress=False)
    shared = evaluate_longppl(lm, docs, short_window=32, short_stride=16, key_masks=masks, key_tokens_from="it")
    assert shared["key_tokens_from"] == "it" and own["key_tokens_from"] == "self"
    assert {k: v for k, v in shared.items() if k != "key_tokens_from"} == \
        {k: v for k, v in own.items() if k != "key_tokens_from"}
    with pytest.raises(ValueError, match="one per document"):
        evaluate_longppl(lm, docs, short_window=32, short_stride=16, key_masks=masks[:1])


def test_cli_longppl_evaluator(tmp_path, capsys):
    """`nextlong eval --longppl-evaluator`: key tokens from another model, named in results and summary;
    refused, before any work, with another tokenizer or without the longppl task."""
    import json

    from nextlong.cli import main
    from tests.helpers import corpus_head, write_jsonl

    tok = train_tokenizer(tmp_path / "tok" / "tokenizer.json")
    model = save_tiny_llama(tmp_path / "model", tok, seed=0)
    evaluator = save_tiny_llama(tmp_path / "evaluator", tok, seed=1)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_head(max_bytes=200_000))
    common = [str(model), "--corpus", str(corpus), "--tasks", "longppl", "--lengths", "256", "--short-window", "32",
              "--short-stride", "16", "--longppl-docs", "2", "--device", "cpu"]
    assert main(["eval", *common, "--out", str(tmp_path / "own")]) == 0
    assert main(["eval", *common, "--out", str(tmp_path / "ev"), "--longppl-evaluator", str(evaluator)]) == 0
    own = json.loads((tmp_path / "own" / "results.json").read_text())["longppl"]
    ev = json.loads((tmp_path / "ev" / "results.json").read_text())["longppl"]
    assert own["key_tokens_from"] == "self" and ev["key_tokens_from"] == str(evaluator)
    assert ev["ppl"] == own["ppl"]  # the evaluated model's own loss; only the key tokens differ
    assert "chosen by the evaluator" in (tmp_path / "ev" / "summary.md").read_text()
    assert "does not compare models" in (tmp_path / "own" / "summary.md").read_text()

    other = save_tiny_llama(tmp_path / "other", train_tokenizer(tmp_path / "tok2" / "tokenizer.json", 512))
    capsys.readouterr()
    assert main(["eval", *common, "--out", str(tmp_path / "bad"), "--longppl-evaluator", str(other)]) == 2
    assert "must share a tokenizer" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["eval", *common[:4], "ruler", *common[5:], "--out", str(tmp_path / "bad2"),
                 "--longppl-evaluator", str(evaluator)]) == 2
    assert "add longppl to --tasks" in capsys.readouterr().err


# --- a tokenizer that puts BOS before each sequence (Llama-3) ---------------------------------------


class RecordingCopyModel(CopyModel):
    """CopyModel that keeps every sequence it is fed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fed = []

    def get_decoder(self):
        inner = super().get_decoder()

        def decoder(input_ids):
            self.fed.append(input_ids.tolist())
            return inner(input_ids)
        return decoder


def test_documents_start_with_the_tokenizers_prefix_and_still_fit_their_length():
    """LongPPL and the repeat probe feed the BOS-like prefix first (as HF tokenizers' default encode does in
    Fang et al.'s code), in place of a document token, so every sequence is still at most `length` long."""
    from nextlong.eval.longppl import measure_documents
    from nextlong.eval.repeat import repeat_losses

    BOS, L = 63, 256
    docs = periodic_docs(63, 48, (300, 420))
    for prefix in ((), (BOS,)):
        model = RecordingCopyModel(vocab=64, period=48)
        lm = SimpleNamespace(model=model, prefill_attn="eager", device=torch.device("cpu"),
                             tokenizer=SimpleNamespace(prefix_ids=prefix))
        m = measure_documents(lm, docs, length=L, short_window=32, short_stride=16, short_context_length=64,
                              progress=False)
        assert m.length == L - len(prefix) and m.tokens == 2 * (L - len(prefix) - 1)
        assert model.fed and all(len(row) <= L and row[:len(prefix)] == list(prefix) for seq in model.fed
                                 for row in seq if len(row) >= 64)  # the long passes and short-ppl windows (64)
        model.fed.clear()
        (r,) = repeat_losses(lm, docs, [128], max_length=L, progress=False)
        assert all(len(row) <= L and row[:len(prefix)] == list(prefix) for seq in model.fed for row in seq)
        assert r.segments == 2 and math.isfinite(r.gain)
