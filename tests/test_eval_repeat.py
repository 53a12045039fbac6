"""The repeat probe (`nextlong.eval.repeat`): its losses equal a direct log-softmax over the HF model's
logits, and on a model that copies from exactly `period` tokens back it finds the copy at that distance
and nowhere else (so the probe measures distance, not just repetition)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.eval_fixtures import CopyModel, one_thread, save_tiny_llama, train_tokenizer  # noqa: E402,F401


def reference(model, docs, d, m=None):
    """Mean loss of x[1:m] on each copy of [x; x[:m]] (m = d: the whole segment twice), from full logits."""
    m = m or d
    first = second = 0.0
    n = 0
    for doc in docs:
        if len(doc) < d:
            continue
        x = torch.tensor([doc[:d] + doc[:m]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=x).logits.double(), dim=-1)[0]
        tok = x[0]
        loss = -logp[:-1].gather(1, tok[1:, None])[:, 0]  # loss[t - 1] is the loss of token t
        first += float(loss[0:m - 1].sum())
        second += float(loss[d:d + m - 1].sum())
        n += m - 1
    return first / n, second / n


def test_repeat_losses_equal_a_direct_computation(tmp_path):
    from nextlong.eval.model import load_model
    from nextlong.eval.repeat import repeat_losses

    tok = train_tokenizer(tmp_path / "tok" / "tokenizer.json")
    lm = load_model(str(save_tiny_llama(tmp_path / "model", tok)), attn="sdpa", device="cpu")
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, 1000, (n,), generator=g).tolist() for n in (70, 40, 64, 10)]
    got = repeat_losses(lm, docs, [8, 33, 64], batch_size=2, progress=False)
    assert [r.distance for r in got] == [8, 33, 64] and [r.segments for r in got] == [4, 3, 2]
    for r in got:
        first, second = reference(lm.model, docs, r.distance)
        assert r.first == pytest.approx(first, rel=1e-5) and r.second == pytest.approx(second, rel=1e-5)
        assert r.gain == pytest.approx(second - first, abs=1e-5)
    with pytest.raises(ValueError, match="no document has 71 tokens"):
        repeat_losses(lm, docs, [71], progress=False)
    # within a context of 80 tokens: d = 64 repeats only its first 16 tokens, still 64 back
    short = repeat_losses(lm, docs, [33, 64], batch_size=2, progress=False, max_length=80)
    for r, m in zip(short, (33, 16)):
        first, second = reference(lm.model, docs, r.distance, m)
        assert r.first == pytest.approx(first, rel=1e-5) and r.second == pytest.approx(second, rel=1e-5)
    with pytest.raises(ValueError, match="max_length"):
        repeat_losses(lm, docs, [79], progress=False, max_length=80)


def test_copy_model_is_found_at_its_distance_only():
    from nextlong.eval.repeat import repeat_losses

    vocab, period = 64, 48
    lm = SimpleNamespace(model=CopyModel(vocab=vocab, period=period), prefill_attn="eager", device=torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(0, vocab, (200,), generator=g).tolist() for _ in range(3)]
    at, beyond = repeat_losses(lm, docs, [period, 2 * period], progress=False)
    # first copy: nothing to copy (a random token `period` back, or nothing): no better than uniform
    assert at.first >= math.log(vocab) - 0.3 and beyond.first >= math.log(vocab) - 0.3
    assert at.second < 0.1 and at.gain < -math.log(vocab) + 0.5      # copies exactly at its distance
    assert beyond.gain > -0.5  # at twice its distance the copy does not help (it copies the wrong token)
    # the same within a context shorter than [x; x]: found at its distance from a partial repeat
    at, = repeat_losses(lm, docs, [period], progress=False, max_length=period + 20)
    assert at.second < 0.1 and at.gain < -math.log(vocab) + 0.5
