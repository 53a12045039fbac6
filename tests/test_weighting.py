"""Token-weighting schemes against hand-computed cases; log-prob helpers against a direct loop."""

import math

import pytest
import torch

from nextlong.weighting import (dense_weights, long_context_logprobs, longce_weights,
                                short_context_logprobs, short_logprobs_with_full_prefix, sparse_weights,
                                token_scores)


def test_token_scores_signed_and_absolute():
    long = torch.tensor([-1.0, -2.0, -0.5])
    short = torch.tensor([-3.0, -1.0, -0.5])
    assert token_scores(long, short).tolist() == [2.0, -1.0, 0.0]
    assert token_scores(long, short, absolute=True).tolist() == [2.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="shapes differ"):
        token_scores(long, short[:2])


def test_dense_hand_computed():
    # valid scores [3, 1, -2 -> 0, 0]; mean over 4 valid = 1; w_score = [3, 1, 0, 0]
    scores = torch.tensor([[3.0, 1.0, -2.0, 0.0, 9.0]])
    mask = torch.tensor([[True, True, True, True, False]])
    w = dense_weights(scores, mask, lam=0.5)
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.0, 0.5, 0.5, 0.0]]))
    assert w[mask].mean().item() == pytest.approx(1.0)
    torch.testing.assert_close(dense_weights(scores, mask, lam=1.0),
                               torch.tensor([[3.0, 1.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(dense_weights(scores, mask, lam=0.0), mask.float())
    # each row is normalised on its own; an all-zero row is uniform
    two = dense_weights(torch.tensor([[2.0, 6.0], [0.0, 0.0]]), lam=1.0)
    torch.testing.assert_close(two, torch.tensor([[0.5, 1.5], [1.0, 1.0]]))


def test_sparse_hand_computed():
    scores = torch.tensor([[0.1, 5.0, 3.0, -1.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, True, True, True, False]])
    # 5 valid tokens, keep 40% -> 2 tokens: 5.0 (pos 1) and the earlier 3.0 (pos 2)
    w = sparse_weights(scores, mask, keep=0.4, low=0.1)
    torch.testing.assert_close(w, torch.tensor([[0.1, 1.0, 1.0, 0.1, 0.1, 0.0]]))
    # keep 50% of 5 -> ceil(2.5) = 3 tokens, others dropped
    w = sparse_weights(scores, mask, keep=0.5)
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0, 0.0]]))
    assert sparse_weights(scores, mask, keep=1.0)[mask].eq(1).all()
    assert sparse_weights(scores, mask, keep=0.0).eq(0).all()


def test_longce_hand_computed():
    long = torch.tensor([-1.0, -1.0, -5.0, -0.1])
    short = torch.tensor([-1.0, -3.0, -4.0, -20.0])
    w = longce_weights(long, short, gamma=8.0)  # e^2 = 7.39 stays, e^19.9 is clipped to 8
    torch.testing.assert_close(w, torch.tensor([1.0, math.exp(2.0), math.exp(-1.0), 8.0]))
    assert longce_weights(long, short, gamma=5.0)[1].item() == 5.0
    mask = torch.tensor([True, False, True, True])
    assert longce_weights(long, short, mask, gamma=5.0)[1].item() == 0.0


def test_targets_inside_the_short_window_score_zero_and_weigh_one():
    """Targets 1..window see their whole prefix in the short pass: long context cannot help them, so their
    score is 0 and their LongCE weight 1 (Fang et al.'s code), even when another model scored the short pass."""
    long = torch.tensor([[0.0, -1.0, -2.0, -3.0, -0.5, -6.0]])
    short = torch.tensor([[0.0, -4.0, -0.1, -9.0, -3.0, -1.0]])  # a different scorer: far from `long` everywhere
    fixed = short_logprobs_with_full_prefix(short, long, window=3)
    torch.testing.assert_close(fixed, torch.tensor([[0.0, -1.0, -2.0, -3.0, -3.0, -1.0]]))
    assert short[0, 1].item() == -4.0  # the input is left as it was
    w = longce_weights(long, fixed, gamma=20.0)
    torch.testing.assert_close(w[0, :4], torch.ones(4))
    torch.testing.assert_close(w[0, 4:], torch.tensor([math.exp(2.5), math.exp(-5.0)]))
    assert token_scores(long, fixed, absolute=True)[0, :4].abs().max().item() == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        short_logprobs_with_full_prefix(short[:, :5], long, window=3)


def test_the_full_prefix_rule_counts_from_each_attention_span():
    """A row packing two documents: the second one's first targets see only their own span in the long pass
    (document masks), so when their span prefix fits the window they score 0 and weigh 1 as a row's first
    targets do; the short pass, which runs over the raw row, would otherwise score them against the end of
    the document before (seen: LongCE weights 0.79-1.19 there before 2026-12-06)."""
    from nextlong.weighting import span_offsets

    offsets = span_offsets(torch.tensor([0, 4, 10, 13, 20], dtype=torch.int32), rows=2, length=10)
    assert offsets.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 2, 3, 4, 5, 6]]
    long = -torch.arange(20, dtype=torch.float32).view(2, 10) / 10
    short = long - 1.0  # a scorer 1 nat worse everywhere
    fixed = short_logprobs_with_full_prefix(short, long, window=3, offsets=offsets)
    expect = torch.where(offsets <= 3, long, short)
    torch.testing.assert_close(fixed, expect)
    assert fixed[0, 4] == long[0, 4] and fixed[0, 8] == short[0, 8]  # span 2 of row 0: offsets 0..5
    torch.testing.assert_close(short_logprobs_with_full_prefix(short, long, window=3),
                               torch.where(torch.arange(10) <= 3, long, short))  # default: the whole row


def tiny_llama(seed=0, vocab=61):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def direct_logprobs(model, ids, window=None, stride=1):
    """One forward per token on exactly its context, through the stock model's logits."""
    b, t = ids.shape
    out = torch.zeros(b, t)
    with torch.no_grad():
        for pos in range(1, t):
            lo = 0
            if window is not None and pos > window:
                block_start = window + 1 + (pos - window - 1) // stride * stride
                lo = block_start - window
            logits = model(input_ids=ids[:, lo:pos]).logits[:, -1].float()
            out[:, pos] = torch.log_softmax(logits, -1).gather(1, ids[:, pos:pos + 1])[:, 0]
    return out


def test_short_and_long_logprobs_match_direct_computation():
    model = tiny_llama()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 61, (2, 13), generator=g)
    tol = dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(long_context_logprobs(model, ids), direct_logprobs(model, ids), **tol)
    exact = {window: direct_logprobs(model, ids, window) for window in (1, 4)}
    for window, want in exact.items():
        got = short_context_logprobs(model, ids, window, batch_size=5)
        torch.testing.assert_close(got, want, **tol)
    # strided approximation: 8 targets after a window of 4 -> blocks of 3, 3 and a remainder of 2
    got = short_context_logprobs(model, ids, 4, stride=3, batch_size=2)
    torch.testing.assert_close(got, direct_logprobs(model, ids, 4, stride=3), **tol)
    assert not torch.allclose(got, exact[4], **tol)  # really is different
    # a window at least as long as the sequence is the long context
    torch.testing.assert_close(short_context_logprobs(model, ids, 20),
                               long_context_logprobs(model, ids), **tol)
    with pytest.raises(ValueError, match="window"):
        short_context_logprobs(model, ids, 0)


def test_short_logprobs_of_a_target_range_are_the_whole_rows_values():
    """A sequence-parallel rank scores only its slice of targets; every cut of the row into ranges
    (through the head pass, inside and across stride blocks, into the remainder) gives the whole
    row's values there and 0 elsewhere, and the ranges add up to the whole row."""
    model = tiny_llama()
    ids = torch.randint(0, 61, (2, 23), generator=torch.Generator().manual_seed(3))
    for window, stride in ((4, 3), (4, 1), (6, 5), (30, 4)):
        whole = direct_logprobs(model, ids, window, stride=stride)
        for cuts in ((0, 12, 23), (0, 5, 9, 16, 23), (0, 1, 2, 22, 24), (0, 7, 8, 23)):
            total = torch.zeros_like(whole)
            for lo, hi in zip(cuts, cuts[1:]):
                got = short_context_logprobs(model, ids, window, stride=stride, batch_size=2, targets=(lo, hi))
                inside = torch.zeros(ids.shape[1], dtype=torch.bool)
                inside[lo:hi] = True
                assert (got[:, ~inside] == 0).all()
                torch.testing.assert_close(got[:, inside], whole[:, inside], rtol=1e-4, atol=1e-4)
                total += got
            torch.testing.assert_close(total, whole, rtol=1e-4, atol=1e-4)
    assert (short_context_logprobs(model, ids, 4, targets=(30, 40)) == 0).all()


def test_the_library_defaults_are_the_trainers():
    """dense_weights defaulted to lam 0.5 while `nextlong train` uses 0.25 (the documented method): a user
    calling the library as its docstring shows got other weights than the CLI trains with."""
    import inspect

    from nextlong import weighting as W
    from nextlong.train.config import TrainConfig

    cfg = TrainConfig.__dataclass_fields__
    assert inspect.signature(W.dense_weights).parameters["lam"].default == cfg["dense_lam"].default
    assert inspect.signature(W.sparse_weights).parameters["keep"].default == cfg["sparse_keep"].default
    assert inspect.signature(W.longce_weights).parameters["gamma"].default == cfg["longce_gamma"].default


def test_short_logprobs_project_only_the_kept_targets(monkeypatch):
    """Each stride window keeps its last `stride` targets, so the vocabulary projection (the fused loss) runs on
    those rows only, not on all `window + stride - 1` (most of a LongPPL short pass's time at a large
    vocabulary); the values are those of projecting every row of the window and keeping the last, up to the
    last bit a product of another shape may round differently (BLAS picks its kernel by the row count)."""
    import nextlong.kernels.losses as losses
    from nextlong.weighting import _target_logprobs

    model = tiny_llama()
    ids = torch.randint(0, 61, (2, 24), generator=torch.Generator().manual_seed(5))
    rows = []
    real = losses.fused_linear_cross_entropy

    def counted(hidden, *args, **kwargs):
        rows.append(hidden.shape[:-1].numel())
        return real(hidden, *args, **kwargs)

    monkeypatch.setattr(losses, "fused_linear_cross_entropy", counted)
    # window 4, stride 3: the head pass (4 targets), 6 blocks of 3 and a remainder of 1, two rows each
    got = short_context_logprobs(model, ids, 4, stride=3, batch_size=64)
    assert rows == [2 * 4, 2 * 6 * 3, 2 * 1]
    monkeypatch.setattr(losses, "fused_linear_cross_entropy", real)
    # block 2 (targets 11..13) runs the window ids[7:14]; the remainder (target 23) the window ids[19:24]
    same = dict(rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # as short_context_logprobs runs
        torch.testing.assert_close(got[:, 11:14], _target_logprobs(model, ids[:, 7:14])[:, -3:], **same)
        torch.testing.assert_close(got[:, 23:], _target_logprobs(model, ids[:, 19:24])[:, -1:], **same)
        whole = _target_logprobs(model, ids)
        for last in (1, 5, 23):
            torch.testing.assert_close(_target_logprobs(model, ids, last=last), whole[:, -last:], **same)
    for bad in (0, 24):
        with pytest.raises(ValueError, match="last must be in 1..23"):
            _target_logprobs(model, ids, last=bad)
