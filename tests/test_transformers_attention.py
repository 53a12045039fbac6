"""attn_implementation="nextlong" on a tiny random Llama (CPU) against transformers' eager attention.

The eager model gets the equivalent mask explicitly (block-diagonal causal, or the 2-D padding mask).
Weights are shared, everything is fp32: logits and every parameter gradient must agree to 1e-5
absolute (observed ~2e-7).
"""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import nextlong.kernels.transformers_attention as nla  # noqa: E402  (registers "nextlong")

ATOL = 1e-5
VOCAB = 97


def _models():
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    ours = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation="nextlong")
    eager = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation="eager")
    eager.load_state_dict(ours.state_dict())
    assert ours.config._attn_implementation == "nextlong"
    return ours, eager


def _block_diagonal_causal(lengths):
    s = sum(lengths)
    doc = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    pos = torch.arange(s)
    allowed = (doc[:, None] == doc[None, :]) & (pos[None, :] <= pos[:, None])
    return torch.zeros(s, s).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]


def _compare(ours, eager, ours_kwargs, eager_kwargs, ids, keep=None):
    a = ours(input_ids=ids, **ours_kwargs)
    b = eager(input_ids=ids, **eager_kwargs)
    la, lb = a.logits, b.logits
    if keep is not None:
        la, lb = la[keep], lb[keep]
    torch.testing.assert_close(la, lb, atol=ATOL, rtol=0)
    (la.float().square().mean()).backward()
    (lb.float().square().mean()).backward()
    for (name, pa), pb in zip(ours.named_parameters(), eager.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=ATOL, rtol=0, msg=lambda m: f"{name}: {m}")


@pytest.fixture
def backend(request):
    saved = nla.BACKEND
    nla.BACKEND = request.param
    yield request.param
    nla.BACKEND = saved


@pytest.mark.parametrize("backend", ["torch", "triton"], indirect=True)
def test_packed_batch_matches_eager_with_block_diagonal_mask(backend):
    ours, eager = _models()
    lengths = [7, 12, 1, 9]
    ids = torch.randint(0, VOCAB, (1, sum(lengths)), generator=torch.Generator().manual_seed(1))
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    _compare(ours, eager, {"position_ids": position_ids},
             {"position_ids": position_ids, "attention_mask": _block_diagonal_causal(lengths)}, ids)


def test_flattening_collator_cu_seq_lens_kwargs():
    # DataCollatorWithFlattening hands flash-attn kwargs to the model; they reach the attention function.
    ours, eager = _models()
    lengths = [10, 6, 13]
    ids = torch.randint(0, VOCAB, (1, sum(lengths)), generator=torch.Generator().manual_seed(2))
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    cu = torch.tensor([0, 10, 16, 29], dtype=torch.int32)
    kwargs = {"position_ids": position_ids, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
              "max_length_q": 13, "max_length_k": 13}
    _compare(ours, eager, kwargs,
             {"position_ids": position_ids, "attention_mask": _block_diagonal_causal(lengths)}, ids)


def test_padded_batch_matches_eager():
    ours, eager = _models()
    mask = torch.ones(2, 15, dtype=torch.long)
    mask[0, 11:] = 0  # right padding
    mask[1, :4] = 0   # left padding
    ids = torch.randint(0, VOCAB, (2, 15), generator=torch.Generator().manual_seed(3))
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    kwargs = {"attention_mask": mask, "position_ids": position_ids}
    _compare(ours, eager, kwargs, kwargs, ids, keep=mask.bool())


def test_plain_batch_without_position_ids_matches_eager():
    ours, eager = _models()
    ids = torch.randint(0, VOCAB, (3, 17), generator=torch.Generator().manual_seed(4))
    _compare(ours, eager, {}, {}, ids)


def test_cu_seqlens_from_restarting_position_ids():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert nla.packed_cu_seqlens(pos, 1, 9, "cpu").tolist() == [0, 3, 5, 9]
    two_rows = torch.tensor([[0, 1, 0, 1], [0, 1, 2, 3]])
    assert nla.packed_cu_seqlens(two_rows, 2, 4, "cpu").tolist() == [0, 2, 4, 8]
    keep = torch.tensor([[True, True, False, False], [False, True, True, True]])
    assert nla.packed_cu_seqlens(None, 2, 4, "cpu", keep=keep).tolist() == [0, 2, 5]
    # as transformers' flash-attention path: only a fall back to the row's smallest id starts a document, so
    # skipped positions (PoSE) stay one document, and so do rows starting at another id (RoBERTa's padding + 1)
    skipped = torch.tensor([[0, 1, 2, 3, 50, 51, 52, 0, 1]])
    assert nla.packed_cu_seqlens(skipped, 1, 9, "cpu").tolist() == [0, 7, 9]
    roberta = torch.tensor([[2, 3, 4, 2, 3]])
    assert nla.packed_cu_seqlens(roberta, 1, 5, "cpu").tolist() == [0, 3, 5]
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    for pos in (torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]]), skipped, roberta):
        (cu, _), _ = prepare_fa_kwargs_from_position_ids(pos)
        assert nla.packed_cu_seqlens(pos, 1, pos.shape[1], "cpu").tolist() == cu.tolist()


def test_kv_cache_decoding_is_refused():
    module = torch.nn.Module()
    q = torch.randn(1, 4, 1, 16)
    kv = torch.randn(1, 2, 5, 16)
    with pytest.raises(NotImplementedError, match="KV-cache"):
        nla.nextlong_attention_forward(module, q, kv, kv, None)
