"""PyTorch attention with document masking: a dense reference for tests and a memory-lean fallback.

`dense_reference_attention` materialises the full (T, T) mask and is only for checking the other
implementations on small inputs. `TorchVarlenAttention` is the CPU fallback behind
`flash_attention(backend="torch")`: the same algorithm as the Triton kernels (per document, blocks of
queries, log-sum-exp saved, scores recomputed in the backward), so its peak extra memory is one
(heads, chunk, keys-in-range) score block rather than anything quadratic in the sequence.

Mask semantics shared by every backend (query i, key j, positions counted inside one document):
    j attends-able  iff  same document
                    and (not causal or j <= i)
                    and (left  < 0 or j >= i - left)
                    and (right < 0 or j <= i + right)
"""

from __future__ import annotations

import math

import torch

# Queries per block in the fallback (fewer when the documents are long, see SCORE_BUDGET).
DEFAULT_QUERY_CHUNK = 256
# Largest fp32 score block (elements) the fallback materialises at once: 16M = 64 MiB.
SCORE_BUDGET = 1 << 24


def key_range(q_lo: int, q_hi: int, length: int, causal: bool, left: int, right: int) -> tuple[int, int]:
    """Keys [lo, hi) that any query in [q_lo, q_hi) of a document of `length` tokens may attend to."""
    lo = 0 if left < 0 else max(0, q_lo - left)
    hi = length
    if causal:
        hi = min(hi, q_hi)
    elif right >= 0:
        hi = min(hi, q_hi - 1 + right + 1)
    return lo, hi


def block_mask(q_lo: int, q_hi: int, k_lo: int, k_hi: int, causal: bool, left: int, right: int,
               device: torch.device) -> torch.Tensor | None:
    """Boolean (queries, keys) mask of allowed pairs inside one document, or None when all are allowed."""
    qi = torch.arange(q_lo, q_hi, device=device)[:, None]
    kj = torch.arange(k_lo, k_hi, device=device)[None, :]
    allowed = None

    def _and(a, b):
        return b if a is None else a & b

    if causal:
        allowed = _and(allowed, kj <= qi)
    if left >= 0:
        allowed = _and(allowed, kj >= qi - left)
    if right >= 0 and not causal:
        allowed = _and(allowed, kj <= qi + right)
    if allowed is not None and bool(allowed.all()):
        return None
    return allowed


def dense_mask(cu_seqlens: torch.Tensor, causal: bool, left: int, right: int) -> torch.Tensor:
    """Full (T, T) boolean mask of the packed sequence. Test-only: quadratic memory."""
    cu = cu_seqlens.tolist()
    total = cu[-1]
    doc = torch.empty(total, dtype=torch.long)
    pos = torch.empty(total, dtype=torch.long)
    for d in range(len(cu) - 1):
        doc[cu[d]:cu[d + 1]] = d
        pos[cu[d]:cu[d + 1]] = torch.arange(cu[d + 1] - cu[d])
    allowed = doc[:, None] == doc[None, :]
    qi, kj = pos[:, None], pos[None, :]
    if causal:
        allowed &= kj <= qi
    if left >= 0:
        allowed &= kj >= qi - left
    if right >= 0 and not causal:
        allowed &= kj <= qi + right
    return allowed


def dense_reference_attention(q, k, v, cu_seqlens, causal=True, left=-1, right=-1, softmax_scale=None):
    """Plain softmax attention over a packed (T, H, D) sequence with an explicit dense mask (autograd-able)."""
    heads, kv_heads, dim = q.shape[1], k.shape[1], q.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(dim)
    group = heads // kv_heads
    kk = k.repeat_interleave(group, dim=1)
    vv = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("thd,shd->hts", q, kk) * scale
    mask = dense_mask(cu_seqlens.cpu(), causal, left, right).to(q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("hts,shd->thd", probs, vv)


def _documents(cu_seqlens: torch.Tensor):
    cu = cu_seqlens.tolist()
    return [(cu[d], cu[d + 1] - cu[d]) for d in range(len(cu) - 1) if cu[d + 1] > cu[d]]


def _group_view(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(C, H, D) -> (Hkv, G, C, D) float32, query head h using kv head h // G (transformers' repeat_kv order)."""
    c, h, d = x.shape
    return x.float().permute(1, 0, 2).reshape(kv_heads, h // kv_heads, c, d)


def _ungroup(x: torch.Tensor) -> torch.Tensor:
    hk, g, c, d = x.shape
    return x.reshape(hk * g, c, d).permute(1, 0, 2)


def _chunk_size(chunk: int, heads: int, keys: int, budget: int) -> int:
    """Queries per block so one (heads, chunk, keys) fp32 score block stays within `budget` elements."""
    return max(16, min(chunk, budget // max(1, heads * keys)))


def _doc_kv(x: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """One document's keys or values as (Hkv, 1, L, D) fp32, converted once per document, not per chunk."""
    return x[start:start + length].float().permute(1, 0, 2).contiguous()[:, None]


def torch_attention_forward(q, k, v, cu_seqlens, causal, left, right, scale, chunk=DEFAULT_QUERY_CHUNK,
                            budget=SCORE_BUDGET):
    """Returns (out like q, lse float32 (T, H)), processing one document and one query chunk at a time."""
    total, heads, _ = q.shape
    kv_heads = k.shape[1]
    out = torch.zeros_like(q)
    lse = torch.full((total, heads), float("-inf"), dtype=torch.float32, device=q.device)
    for start, length in _documents(cu_seqlens):
        kd, vd = _doc_kv(k, start, length), _doc_kv(v, start, length)
        step = _chunk_size(chunk, heads, length if left < 0 else min(length, chunk + left), budget)
        for a in range(0, length, step):
            b = min(length, a + step)
            klo, khi = key_range(a, b, length, causal, left, right)
            qc = _group_view(q[start + a:start + b], kv_heads)
            kc, vc = kd[:, :, klo:khi], vd[:, :, klo:khi]
            s = torch.matmul(qc, kc.transpose(-1, -2)).mul_(scale)
            allowed = block_mask(a, b, klo, khi, causal, left, right, q.device)
            if allowed is not None:
                s.masked_fill_(~allowed, float("-inf"))
            m = torch.logsumexp(s, dim=-1, keepdim=True)
            p = s.sub_(m).exp_()
            out[start + a:start + b] = _ungroup(torch.matmul(p, vc)).to(q.dtype)
            lse[start + a:start + b] = _ungroup(m).squeeze(-1)
    return out, lse


def torch_attention_backward(do, q, k, v, out, lse, cu_seqlens, causal, left, right, scale,
                             chunk=DEFAULT_QUERY_CHUNK, budget=SCORE_BUDGET):
    """Gradients (dq, dk, dv) by recomputing each score block from the saved log-sum-exp."""
    heads, kv_heads = q.shape[1], k.shape[1]
    dq = torch.zeros_like(q)
    dk = torch.zeros_like(k, dtype=torch.float32)
    dv = torch.zeros_like(v, dtype=torch.float32)
    for start, length in _documents(cu_seqlens):
        kd, vd = _doc_kv(k, start, length), _doc_kv(v, start, length)
        dkd, dvd = torch.zeros_like(kd), torch.zeros_like(vd)
        step = _chunk_size(chunk, heads, length if left < 0 else min(length, chunk + left), budget)
        for a in range(0, length, step):
            b = min(length, a + step)
            klo, khi = key_range(a, b, length, causal, left, right)
            sl = slice(start + a, start + b)
            qc = _group_view(q[sl], kv_heads)
            doc = _group_view(do[sl], kv_heads)
            oc = _group_view(out[sl], kv_heads)
            mc = _group_view(lse[sl][..., None], kv_heads)
            kc, vc = kd[:, :, klo:khi], vd[:, :, klo:khi]
            s = torch.matmul(qc, kc.transpose(-1, -2)).mul_(scale)
            allowed = block_mask(a, b, klo, khi, causal, left, right, q.device)
            if allowed is not None:
                s.masked_fill_(~allowed, float("-inf"))
            p = s.sub_(mc).exp_()
            delta = (doc * oc).sum(-1, keepdim=True)
            ds = torch.matmul(doc, vc.transpose(-1, -2)).sub_(delta).mul_(p).mul_(scale)
            dq[sl] = _ungroup(torch.matmul(ds, kc)).to(q.dtype)
            # Sum over the G query heads sharing each kv head.
            dkd[:, :, klo:khi] += torch.matmul(ds.transpose(-1, -2), qc).sum(1, keepdim=True)
            dvd[:, :, klo:khi] += torch.matmul(p.transpose(-1, -2), doc).sum(1, keepdim=True)
        dk[start:start + length] = dkd[:, 0].permute(1, 0, 2)
        dv[start:start + length] = dvd[:, 0].permute(1, 0, 2)
    return dq, dk.to(k.dtype), dv.to(v.dtype)
