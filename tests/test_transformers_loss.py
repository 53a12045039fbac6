"""Fused loss drop-in for a tiny random LlamaForCausalLM on CPU (torch fallback backend).

Tolerances (fp32): loss rtol 1e-5 / atol 1e-6; parameter gradients rtol 1e-4 / atol 1e-5.
"""

import copy

import pytest
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


def test_a_deep_copy_of_a_patched_model_uses_its_own_weights():
    """An EMA or reference model made with copy.deepcopy (TRL's create_reference_model) computed with the
    original's decoder and head: the patched forward held them in a closure."""
    model = patch_causal_lm(tiny_llama(), backend="torch")
    twin = copy.deepcopy(model)
    ids, labels = batch()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    plain = unpatch_causal_lm(copy.deepcopy(twin))
    torch.testing.assert_close(twin(input_ids=ids, labels=labels).loss, plain(input_ids=ids, labels=labels).loss,
                               rtol=1e-5, atol=1e-6)
    twin(input_ids=ids, labels=labels).loss.backward()
    assert all(p.grad is not None for p in twin.parameters()) and all(p.grad is None for p in model.parameters())


def _look_alike(cls_name, **extra):
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, cls_name.replace("ForCausalLM", "Config"))(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, **extra)
    return getattr(transformers, cls_name)(config).eval()


def test_logit_scales_of_granite_and_cohere_are_applied():
    """Granite divides its logits by logits_scaling after lm_head, Cohere multiplies them by logit_scale: the
    patched loss dropped both (4.63 against 4.58)."""
    ids, labels = batch()
    for name, extra in (("GraniteForCausalLM", {"logits_scaling": 8.0}), ("CohereForCausalLM", {"logit_scale": 0.0625})):
        stock = _look_alike(name, **extra)
        fused = patch_causal_lm(copy.deepcopy(stock), backend="torch")
        ref = stock(input_ids=ids, labels=labels)
        out = fused(input_ids=ids, labels=labels)
        torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6, msg=name)
        ref.loss.backward()
        out.loss.backward()
        for n, g in grads(stock).items():
            torch.testing.assert_close(grads(fused)[n], g, rtol=1e-4, atol=1e-5, msg=f"{name} {n}")


def test_an_unknown_logit_scale_is_refused_unless_given():
    import pytest

    model = tiny_llama()
    model.config.logits_scaling = 4.0  # a Llama look-alike this module does not know
    with pytest.raises(ValueError, match="config.logits_scaling = 4.0.*pass logit_scale="):
        patch_causal_lm(copy.deepcopy(model))
    stock = tiny_llama()
    ids, labels = batch()
    with torch.no_grad():
        logits = stock(input_ids=ids).logits[:, :-1] * 0.25
    ref = F.cross_entropy(logits.reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    fused = patch_causal_lm(copy.deepcopy(stock), backend="torch", logit_scale=0.25)
    torch.testing.assert_close(fused(input_ids=ids, labels=labels).loss, ref, rtol=1e-5, atol=1e-6)


def test_num_items_in_batch_keeps_the_weighted_means_scale():
    """Trainer passes num_items_in_batch on every step: sum w*CE / N grew with the weights' scale (weights of 3
    gave 3x the loss). Weights are scaled to mean 1 over the call's targets first."""
    model = patch_causal_lm(tiny_llama(), backend="torch")
    ids, labels = batch()
    n = int((labels[:, 1:] != -100).sum())
    plain = model(input_ids=ids, labels=labels, num_items_in_batch=torch.tensor(n)).loss
    three = model(input_ids=ids, labels=labels, token_weights=torch.full(labels.shape, 3.0),
                  num_items_in_batch=torch.tensor(n)).loss
    torch.testing.assert_close(three, plain, rtol=1e-5, atol=1e-6)
    w = torch.rand(labels.shape, generator=torch.Generator().manual_seed(3)) * 4
    weighted_mean = model(input_ids=ids, labels=labels, token_weights=w).loss  # sum w*CE / sum w
    # one micro-batch that holds every target: the same as the weighted mean; half the count: twice it
    torch.testing.assert_close(model(input_ids=ids, labels=labels, token_weights=w,
                                     num_items_in_batch=torch.tensor(n)).loss, weighted_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(input_ids=ids, labels=labels, token_weights=w,
                                     num_items_in_batch=torch.tensor(2 * n)).loss, weighted_mean / 2,
                               rtol=1e-5, atol=1e-6)


def test_return_dict_false_gives_a_tuple_led_by_the_loss():
    stock = tiny_llama()
    fused = patch_causal_lm(copy.deepcopy(stock), backend="torch")
    ids, labels = batch()
    out = fused(input_ids=ids, labels=labels, return_dict=False)
    assert isinstance(out, tuple)
    torch.testing.assert_close(out[0], stock(input_ids=ids, labels=labels, return_dict=False)[0], rtol=1e-5, atol=1e-6)


def test_positional_arguments_mean_what_the_models_forward_says():
    """model(ids, mask): transformers' second positional parameter is attention_mask; the patched forward took it
    as labels and returned a loss and no logits, in silence (audit)."""
    stock = tiny_llama()
    fused = patch_causal_lm(copy.deepcopy(stock), backend="torch")
    ids, _ = batch()
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    with torch.no_grad():
        want, got = stock(ids, mask), fused(ids, mask)
    assert got.loss is None
    torch.testing.assert_close(got.logits, want.logits)
    with pytest.raises(TypeError, match="multiple values for argument 'input_ids'"):
        fused(ids, input_ids=ids)


def test_a_non_finite_weight_at_an_ignored_position_stays_out_of_the_trainer_path():
    """num_items_in_batch (what transformers' Trainer passes) rescales the weights: a NaN there at an ignored
    position made the loss NaN (audit)."""
    model = patch_causal_lm(tiny_llama(), backend="torch")
    ids, labels = batch()
    weights = torch.rand(ids.shape)
    clean = weights.clone()
    weights[1, 1] = float("nan")  # predicts labels[1, 2], which is ignored
    clean[1, 1] = 0.0
    got = model(input_ids=ids, labels=labels, token_weights=weights, num_items_in_batch=20).loss
    want = model(input_ids=ids, labels=labels, token_weights=clean, num_items_in_batch=20).loss
    assert torch.isfinite(got) and torch.equal(got, want)


@pytest.mark.parametrize("items", [None, 20, torch.tensor(20)], ids=["mean", "trainer-int", "trainer-tensor"])
def test_a_negative_weight_is_refused_with_or_without_num_items_in_batch(items):
    """The Trainer path (num_items_in_batch) scales the weights to mean 1 by dividing by their sum: a negative
    weight made that sum stop counting tokens (0 or below: the rescale was skipped in silence; above: a scale
    off by the negatives), where the plain mean refused it (kernel attack). Both refuse it now; one at an
    ignored position stays out."""
    model = patch_causal_lm(tiny_llama(), backend="torch")
    ids, labels = batch()
    weights = torch.rand(ids.shape, generator=torch.Generator().manual_seed(4))
    weights[0, 8] = -1.0  # predicts labels[0, 9], a target
    with pytest.raises(ValueError, match="token_weights must be >= 0"):
        model(input_ids=ids, labels=labels, token_weights=weights, num_items_in_batch=items)
    weights[0, 8] = 0.5
    weights[1, 1] = -1.0  # predicts labels[1, 2], which is ignored
    assert torch.isfinite(model(input_ids=ids, labels=labels, token_weights=weights, num_items_in_batch=items).loss)
