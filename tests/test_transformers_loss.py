"""Fused loss drop-in for a tiny random LlamaForCausalLM on CPU (torch fallback backend).

Tolerances (fp32): loss rtol 1e-5 / atol 1e-6; parameter gradients rtol 1e-4 / atol 1e-5.
"""

import copy

import torch
import torch.nn.functional as F

from nextlong.kernels.transformers_loss import causal_lm_loss, patch_causal_lm, unpatch_causal_lm
from nextlong.weighting import dense_weights

VOCAB = 67


def tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def batch(seed=1, b=2, t=17):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    labels = ids.clone()
    labels[0, 5] = -100
    labels[1, :3] = -100
    return ids, labels


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_patched_model_matches_stock_loss_and_gradients():
    stock = tiny_llama()
    fused = patch_causal_lm(copy.deepcopy(stock), backend="torch", chunk_size=7)
    ids, labels = batch()
    ref = stock(input_ids=ids, labels=labels)
    out = fused(input_ids=ids, labels=labels)
    assert out.logits is None
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    ref.loss.backward()
    out.loss.backward()
    g_ref, g_out = grads(stock), grads(fused)
    assert g_ref.keys() == g_out.keys() and "lm_head.weight" in g_out
    for name in g_ref:
        torch.testing.assert_close(g_out[name], g_ref[name], rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"{name}: {m}")
    # num_items_in_batch (Trainer with gradient accumulation): sum / count, like stock
    n = torch.tensor(40)
    torch.testing.assert_close(fused(input_ids=ids, labels=labels, num_items_in_batch=n).loss,
                               stock(input_ids=ids, labels=labels, num_items_in_batch=n).loss,
                               rtol=1e-5, atol=1e-6)
    # without labels the original forward runs and returns logits
    assert fused(input_ids=ids).logits.shape == (2, 17, VOCAB)
    unpatch_causal_lm(fused)
    assert fused(input_ids=ids, labels=labels).logits is not None


def test_weighted_loss_is_shifted_like_labels():
    model = tiny_llama()
    ids, labels = batch()
    w = torch.rand(ids.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state
        got = causal_lm_loss(hidden, model.lm_head, labels, token_weights=w, backend="torch")
        logits = model.lm_head(hidden)[:, :-1].reshape(-1, VOCAB)
        y, ww = labels[:, 1:].reshape(-1), w[:, 1:].reshape(-1)
        ww = ww * (y != -100)
        per = F.cross_entropy(logits, y, reduction="none")
        want = (per * ww).sum() / ww.sum()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_weighted_training_reduces_loss_on_cpu():
    model = patch_causal_lm(tiny_llama(seed=3))  # backend "auto" -> CPU fallback
    model.train()
    ids, labels = batch(seed=4, b=4, t=24)
    scores = torch.rand(ids.shape, generator=torch.Generator().manual_seed(5))
    weights = dense_weights(scores, labels != -100, lam=0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        loss = model(input_ids=ids, labels=labels, token_weights=weights).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_patched_forward_warns_no_more_than_stock_and_keeps_the_cache():
    """The patch once named `past_key_values` itself, which transformers 5.25 renamed to `cache`: every
    call warned (FutureWarning) though the caller passed neither. It must warn exactly when stock does."""
    import warnings

    model = patch_causal_lm(tiny_llama(), backend="torch")
    ids, labels = batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(input_ids=ids)
        model(ids, labels=labels)
        out = model(input_ids=ids, labels=labels, use_cache=True)
    stock = model._nextlong_original_forward(input_ids=ids, use_cache=True)
    cache_field = "cache" if hasattr(stock, "cache") else "past_key_values"
    assert getattr(out, cache_field) is not None and type(getattr(out, cache_field)) is type(getattr(stock, cache_field))
