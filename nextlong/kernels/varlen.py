"""`flash_attn_varlen_func` with flash-attn's signature, on our kernels: code written for flash-attn
(Ulysses or ring wrappers, model code that packs sequences) can call ours unchanged.

Semantics, as flash-attn 2 documents them: q is (total_q, H, D) and k, v are (total_k, H_kv, D), split
into sequences by `cu_seqlens_q` / `cu_seqlens_k` (int32); sequence i of q attends only to sequence i
of k. With `causal=True` the mask is aligned to the bottom-right corner: when a query sequence is
shorter than its key sequence (lq <= lk), query i sees keys j <= i + lk - lq (the queries are the last
lq positions). `window_size=(left, right)` keeps keys with i + lk - lq - left <= j <= i + lk - lq + right
(-1: unbounded). `softmax_scale` defaults to 1/sqrt(D). `return_attn_probs=True` returns
(out, softmax_lse (H, total_q) fp32, None): the lse ring wrappers merge with; it carries no gradient.

How: equal `cu_seqlens` (self-attention, every Ulysses call) go straight to `attention_with_lse`.
Unequal ones with lq <= lk for every sequence are run as self-attention on the key layout, each query
sequence placed at the end of a zero-padded sequence of its keys' length (the pad rows are computed and
dropped): the same mask, on the same kernels. A sequence with lq > lk (queries that may see no key at
all) takes a PyTorch path that builds each sequence's mask: exact, not fast. Comparing unequal
`cu_seqlens` reads them on the host (one sync per call).

Not supported (an error names the argument): dropout_p > 0, softcap, alibi_slopes, block_table
(paged KV cache). `deterministic` is accepted: our backward is deterministic either way.
"""

from __future__ import annotations

import math

import torch

from .attention import attention_with_lse


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """flash-attn's `flash_attn_varlen_func` (see the module docstring for what is supported)."""
    del max_seqlen_q, max_seqlen_k, deterministic
    if dropout_p:
        raise ValueError(f"flash_attn_varlen_func: dropout_p={dropout_p} is not supported (attention dropout is "
                         "off in long-context training); pass 0.0")
    for name, value in (("softcap", softcap), ("alibi_slopes", alibi_slopes), ("block_table", block_table)):
        if value is not None and (torch.is_tensor(value) or value != 0.0):
            raise NotImplementedError(f"flash_attn_varlen_func: {name} is not supported by nextlong's kernels")
    left, right = (int(w) for w in window_size)
    window = None if left < 0 and right < 0 else (left, right)
    if cu_seqlens_q is cu_seqlens_k or torch.equal(cu_seqlens_q, cu_seqlens_k):
        out, lse = attention_with_lse(q, k, v, causal=causal, cu_seqlens=cu_seqlens_q, softmax_scale=softmax_scale,
                                      window=window)
    else:
        out, lse = _unequal(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, softmax_scale, window)
    return (out, lse.t().contiguous(), None) if return_attn_probs else out


def _unequal(q, k, v, cu_q, cu_k, causal, softmax_scale, window):
    if cu_q.numel() != cu_k.numel():
        raise ValueError(f"flash_attn_varlen_func: cu_seqlens_q has {cu_q.numel() - 1} sequences, cu_seqlens_k "
                         f"{cu_k.numel() - 1}")
    lq, lk = (cu[1:] - cu[:-1] for cu in (cu_q.long(), cu_k.long()))
    if bool((lq <= lk).all()):
        # self-attention on the key layout: sequence i's queries are the last lq[i] rows of its lk[i]
        seq = torch.repeat_interleave(torch.arange(lq.numel(), device=q.device), lq)
        rows = cu_k.long()[seq] + (lk - lq)[seq] + (torch.arange(q.shape[0], device=q.device) - cu_q.long()[seq])
        padded = q.new_zeros((k.shape[0], *q.shape[1:])).index_copy(0, rows, q)
        out, lse = attention_with_lse(padded, k, v, causal=causal, cu_seqlens=cu_k, softmax_scale=softmax_scale,
                                      window=window)
        return out[rows], lse[rows]
    return _reference(q, k, v, cu_q, cu_k, causal, softmax_scale, window)


def _reference(q, k, v, cu_q, cu_k, causal, softmax_scale, window):
    """Per sequence, the explicit bottom-right-aligned mask; rows that see no key give 0 (and lse -inf)."""
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    left, right = window if window is not None else (-1, -1)
    group = q.shape[1] // k.shape[1]
    outs, lses = [], []
    for a, b, c, d in zip(cu_q.tolist(), cu_q.tolist()[1:], cu_k.tolist(), cu_k.tolist()[1:]):
        qs, ks, vs = q[a:b].float(), k[c:d].float(), v[c:d].float()
        ks, vs = (x.repeat_interleave(group, dim=1) for x in (ks, vs))
        s = torch.einsum("ihd,jhd->hij", qs, ks) * scale
        i = torch.arange(b - a, device=q.device)[:, None] + (d - c) - (b - a)  # aligned query positions
        j = torch.arange(d - c, device=q.device)[None, :]
        allowed = torch.ones_like(s[0], dtype=torch.bool)
        if causal:
            allowed &= j <= i
        if left >= 0:
            allowed &= i - j <= left
        if right >= 0 and not causal:
            allowed &= j - i <= right
        s = s.masked_fill(~allowed, float("-inf"))
        lse = torch.logsumexp(s, dim=-1)  # (H, lq)
        p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
        outs.append(torch.einsum("hij,jhd->ihd", p, vs).to(q.dtype))
        lses.append(lse.t())
    return torch.cat(outs), torch.cat(lses)


__all__ = ["flash_attn_varlen_func"]
