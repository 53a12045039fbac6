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

A query row that may see no key (lq > lk under `causal`, or a window that leaves none) gets output 0
and lse -inf, the log of an empty sum; flash-attn writes +inf there. -inf is what merging formulas need
to ignore the row (ring attention's `lse - logsigmoid(lse - block_lse)`, logaddexp), and our backward
takes either.

`flash_attn_func(q, k, v, ...)` is the same for the batched layout (B, S, H, D), with flash-attn's
defaults (`causal=False`); its softmax_lse is (B, H, S_q).

Not supported (an error names the argument): dropout_p > 0, softcap, alibi_slopes, block_table
(paged KV cache). `deterministic` is accepted: our backward is deterministic either way.

Ring attention merges partial results itself, so it needs the two halves apart, as flash-attn's private
`_flash_attn_varlen_forward` / `_flash_attn_varlen_backward` give them: `flash_attn_varlen_forward` returns
(out, softmax_lse) and records no graph; `flash_attn_varlen_backward(dout, q, k, v, out, softmax_lse, ...)`
returns (dq, dk, dv) from the saved out and lse without running the forward again (dk, dv in the kv heads).
"""

from __future__ import annotations

import math

import torch

from ._autograd import require_tensors
from .attention import attention_backward, attention_with_lse, check_cu_seqlens, check_heads


def _supported(name, dropout_p, softcap, alibi_slopes, block_table, window_size):
    """The window as attention_with_lse takes it, after refusing what our kernels do not do."""
    if dropout_p:
        raise ValueError(f"{name}: dropout_p={dropout_p} is not supported (attention dropout is off in "
                         "long-context training); pass 0.0")
    for arg, value in (("softcap", softcap), ("alibi_slopes", alibi_slopes), ("block_table", block_table)):
        if value is not None and (torch.is_tensor(value) or value != 0.0):
            raise NotImplementedError(f"{name}: {arg} is not supported by nextlong's kernels")
    try:
        left, right = (int(w) for w in window_size)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: window_size must be a pair (left, right), -1 for unbounded; got "
                         f"{window_size!r}") from None
    if left < -1 or right < -1:
        raise ValueError(f"{name}: window_size entries must be >= 0, or -1 for unbounded; got {window_size!r}")
    return None if left < 0 and right < 0 else (left, right)


def _check_unequal(q, k, v, cu_q, cu_k) -> None:
    """What attention_with_lse checks for one cu_seqlens, for a query and a key split of their own (read on
    the host: comparing them syncs anyway)."""
    for name, x in (("q", q), ("k", k)):
        if x.dim() != 3:
            raise ValueError(f"flash_attn_varlen: {name} must be (total_tokens, heads, head_dim), got {tuple(x.shape)}")
    check_cu_seqlens(cu_q, q, "cu_seqlens_q", host=True, caller="flash_attn_varlen")
    check_cu_seqlens(cu_k, k, "cu_seqlens_k", host=True, caller="flash_attn_varlen")
    check_heads(q, k, v)


def _check_saved(dout, q, out, softmax_lse) -> None:
    """The backward's inputs from the forward: dout and out shaped like q, softmax_lse (heads, total_q)."""
    for name, x in (("dout", dout), ("out", out)):
        if x.shape != q.shape:
            raise ValueError(f"flash_attn_varlen_backward: {name} must have q's shape {tuple(q.shape)}, got "
                             f"{tuple(x.shape)}")
    if softmax_lse.shape != (q.shape[1], q.shape[0]):
        raise ValueError(f"flash_attn_varlen_backward: softmax_lse must be (heads, total_q) = "
                         f"{(q.shape[1], q.shape[0])}, got {tuple(softmax_lse.shape)}")


def _same(name, q, k, cu_q, cu_k) -> bool:
    """Whether the two splits are one (self-attention), after checking each is a split of its tokens (type,
    device; values only where free) so that a list or a tensor on another device is named, not failed on."""
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError(f"{name}: q and k must be (total_tokens, heads, head_dim), got {tuple(q.shape)} and "
                         f"{tuple(k.shape)}")
    check_cu_seqlens(cu_q, q, "cu_seqlens_q", caller=name)
    check_cu_seqlens(cu_k, k, "cu_seqlens_k", caller=name)
    return cu_q is cu_k or torch.equal(cu_q, cu_k)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """flash-attn's `flash_attn_varlen_func` (see the module docstring for what is supported)."""
    require_tensors("flash_attn_varlen_func", q=q, k=k, v=v)
    del max_seqlen_q, max_seqlen_k, deterministic
    window = _supported("flash_attn_varlen_func", dropout_p, softcap, alibi_slopes, block_table, window_size)
    if _same("flash_attn_varlen_func", q, k, cu_seqlens_q, cu_seqlens_k):
        out, lse = attention_with_lse(q, k, v, causal=causal, cu_seqlens=cu_seqlens_q, softmax_scale=softmax_scale,
                                      window=window)
    else:
        out, lse = _unequal(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, softmax_scale, window)
    return (out, lse.t().contiguous(), None) if return_attn_probs else out


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """flash-attn's `flash_attn_func`: q (B, S_q, H, D), k and v (B, S_k, H_kv, D), each row one sequence;
    S_q may differ from S_k (the bottom-right causal alignment of the module docstring)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not torch.is_tensor(x) or x.dim() != 4:
            raise ValueError(f"flash_attn_func: {name} must be (batch, seq, heads, head_dim), got "
                             f"{tuple(getattr(x, 'shape', ())) or type(x).__name__}")
    if k.shape[0] != q.shape[0] or v.shape[:2] != k.shape[:2]:
        raise ValueError(f"flash_attn_func: q, k, v must share the batch, and k and v the sequence: q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    check_heads(q, k, v)  # before the cu_seqlens built here could be named in an error (another device, B = 0)
    (b, sq), sk = q.shape[:2], k.shape[1]
    if b == 0:  # no sequence, so no cu_seqlens to split: the error named cu_seqlens_q, which callers never pass
        _supported("flash_attn_func", dropout_p, softcap, alibi_slopes, None, window_size)
        out = q.new_zeros(q.shape) + 0 * (q.sum() + k.sum() + v.sum())  # keeps the graph: backward gives zeros
        return (out, q.new_zeros((0, q.shape[2], sq), dtype=torch.float32), None) if return_attn_probs else out
    cu_q = torch.arange(b + 1, dtype=torch.int32, device=q.device) * sq
    cu_k = cu_q if sk == sq else torch.arange(b + 1, dtype=torch.int32, device=k.device) * sk
    flat = [x.reshape(-1, *x.shape[2:]) for x in (q, k, v)]
    out, lse, _ = flash_attn_varlen_func(*flat, cu_q, cu_k, sq, sk, dropout_p, softmax_scale, causal, window_size,
                                         softcap, alibi_slopes, deterministic, return_attn_probs=True)
    out = out.reshape(q.shape[:3] + out.shape[-1:])
    if not return_attn_probs:
        return out
    return out, lse.reshape(lse.shape[0], b, sq).transpose(0, 1), None


@torch.no_grad()
def flash_attn_varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                              dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                              alibi_slopes=None, block_table=None):
    """(out, softmax_lse (H, total_q) fp32): the forward half of `flash_attn_varlen_func`, no graph recorded."""
    out, lse, _ = flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                                         softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                                         softcap=softcap, alibi_slopes=alibi_slopes, return_attn_probs=True,
                                         block_table=block_table)
    return out, lse


def flash_attn_varlen_backward(dout, q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None,
                               max_seqlen_k=None, dropout_p=0.0, softmax_scale=None, causal=False,
                               window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False):
    """(dq, dk, dv) of `flash_attn_varlen_func` given its out and softmax_lse (H, total_q), which may come from
    a merge of several blocks (ring attention): the kernel's backward runs on them directly."""
    del max_seqlen_q, max_seqlen_k, deterministic
    require_tensors("flash_attn_varlen_backward", dout=dout, q=q, k=k, v=v, out=out, softmax_lse=softmax_lse)
    window = _supported("flash_attn_varlen_backward", dropout_p, softcap, alibi_slopes, None, window_size)
    _check_saved(dout, q, out, softmax_lse)
    lse = softmax_lse.t()
    if _same("flash_attn_varlen_backward", q, k, cu_seqlens_q, cu_seqlens_k):
        return attention_backward(dout, q, k, v, out, lse, cu_seqlens=cu_seqlens_q, causal=causal,
                                  softmax_scale=softmax_scale, window=window)
    _check_unequal(q, k, v, cu_seqlens_q, cu_seqlens_k)
    rows = _query_rows(q, cu_seqlens_q, cu_seqlens_k)
    if rows is None:  # some lq > lk: the exact PyTorch path
        return _reference_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, causal, softmax_scale,
                                   window)
    # the padded layout _unequal ran: pad rows have dout 0 and lse +inf, so they add nothing to dk, dv
    total = k.shape[0]
    dq, dk, dv = attention_backward(
        _in_key_layout(dout, rows, total), _in_key_layout(q, rows, total), k, v, _in_key_layout(out, rows, total),
        _in_key_layout(lse.float(), rows, total, fill=float("inf")), cu_seqlens=cu_seqlens_k, causal=causal,
        softmax_scale=softmax_scale, window=window)
    return dq[rows], dk, dv


def _in_key_layout(x, rows, total: int, fill: float = 0.0):
    """`x`'s query rows placed at `rows` (from _query_rows) of a `total`-row tensor filled with `fill`."""
    return x.new_full((total, *x.shape[1:]), fill).index_copy(0, rows, x)


def _query_rows(q, cu_q, cu_k):
    """Where each query row sits in the key layout (query sequence i at the end of key sequence i), or None
    when some query sequence is longer than its keys. The padded layout computes every key position's row,
    so a query range much shorter than its keys (a llama3-style ring's slice) costs the whole key range."""
    if cu_q.numel() != cu_k.numel():
        raise ValueError(f"flash_attn_varlen: cu_seqlens_q has {cu_q.numel() - 1} sequences, cu_seqlens_k "
                         f"{cu_k.numel() - 1}")
    lq, lk = (cu[1:] - cu[:-1] for cu in (cu_q.long(), cu_k.long()))
    if not bool((lq <= lk).all()):
        return None
    seq = torch.repeat_interleave(torch.arange(lq.numel(), device=q.device), lq)
    return cu_k.long()[seq] + (lk - lq)[seq] + (torch.arange(q.shape[0], device=q.device) - cu_q.long()[seq])


def _unequal(q, k, v, cu_q, cu_k, causal, softmax_scale, window):
    _check_unequal(q, k, v, cu_q, cu_k)
    rows = _query_rows(q, cu_q, cu_k)
    if rows is None:
        return _reference(q, k, v, cu_q, cu_k, causal, softmax_scale, window)
    # self-attention on the key layout: sequence i's queries are the last lq[i] rows of its lk[i]
    out, lse = attention_with_lse(_in_key_layout(q, rows, k.shape[0]), k, v, causal=causal, cu_seqlens=cu_k,
                                  softmax_scale=softmax_scale, window=window)
    return out[rows], lse[rows]


def _reference_scores(q, k, cu_q, cu_k, causal, softmax_scale, window):
    """Per sequence: (query rows, key rows, masked scores (H, lq, lk) fp32) with the explicit
    bottom-right-aligned mask; k is repeated up to q's heads."""
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    left, right = window if window is not None else (-1, -1)
    group = q.shape[1] // k.shape[1]
    for a, b, c, d in zip(cu_q.tolist(), cu_q.tolist()[1:], cu_k.tolist(), cu_k.tolist()[1:]):
        ks = k[c:d].float().repeat_interleave(group, dim=1)
        s = torch.einsum("ihd,jhd->hij", q[a:b].float(), ks) * scale
        i = torch.arange(b - a, device=q.device)[:, None] + (d - c) - (b - a)  # aligned query positions
        j = torch.arange(d - c, device=q.device)[None, :]
        allowed = torch.ones_like(s[0], dtype=torch.bool)
        if causal:
            allowed &= j <= i
        if left >= 0:
            allowed &= i - j <= left
        if right >= 0 and not causal:
            allowed &= j - i <= right
        yield slice(a, b), slice(c, d), s.masked_fill(~allowed, float("-inf"))


def _reference(q, k, v, cu_q, cu_k, causal, softmax_scale, window):
    """Per sequence, the explicit mask; rows that see no key give 0 (and lse -inf). Differentiable."""
    group = q.shape[1] // k.shape[1]
    outs, lses = [], []
    for _, keys, s in _reference_scores(q, k, cu_q, cu_k, causal, softmax_scale, window):
        lse = torch.logsumexp(s, dim=-1)  # (H, lq)
        p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
        outs.append(torch.einsum("hij,jhd->ihd", p, v[keys].float().repeat_interleave(group, dim=1)).to(q.dtype))
        lses.append(lse.t())
    return torch.cat(outs), torch.cat(lses)


def _reference_backward(dout, q, k, v, out, lse, cu_q, cu_k, causal, softmax_scale, window):
    """(dq, dk, dv) from the given out and lse (T_q, H), which may be a ring's merge of several blocks: the
    probabilities are exp(s - lse), not this block's own softmax."""
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    kv_heads, group = k.shape[1], q.shape[1] // k.shape[1]
    dq = torch.zeros_like(q, dtype=torch.float32)
    dk = torch.zeros_like(k, dtype=torch.float32)
    dv = torch.zeros_like(v, dtype=torch.float32)
    for rows, keys, s in _reference_scores(q, k, cu_q, cu_k, causal, softmax_scale, window):
        p = torch.exp(s - lse[rows].float().t()[..., None]).nan_to_num(0.0)  # (H, lq, lk)
        do, o = dout[rows].float(), out[rows].float()
        vs = v[keys].float().repeat_interleave(group, dim=1)
        ks = k[keys].float().repeat_interleave(group, dim=1)
        dp = torch.einsum("ihd,jhd->hij", do, vs)
        ds = p * (dp - (do * o).sum(-1).t()[..., None]) * scale
        dq[rows] = torch.einsum("hij,jhd->ihd", ds, ks)
        lk = keys.stop - keys.start
        dk[keys] = torch.einsum("hij,ihd->jhd", ds, q[rows].float()).reshape(lk, kv_heads, group, k.shape[-1]).sum(2)
        dv[keys] = torch.einsum("hij,ihd->jhd", p, do).reshape(lk, kv_heads, group, v.shape[-1]).sum(2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


__all__ = ["flash_attn_func", "flash_attn_varlen_func", "flash_attn_varlen_forward", "flash_attn_varlen_backward"]
