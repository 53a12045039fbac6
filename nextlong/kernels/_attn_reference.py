"""PyTorch attention with document masking: a dense reference for tests and a memory-lean fallback.

`dense_reference_attention` materialises the full (T, T) mask and is only for checking the other
implementations on small inputs. `torch_attention_forward/backward` are the fallback behind
`flash_attention(backend="torch")`, working one document at a time so nothing is quadratic in the
packed length:
- fused: PyTorch's CPU flash-attention kernel (`aten::_scaled_dot_product_flash_attention_for_cpu`,
  which returns the log-sum-exp the backward needs); a whole document with `is_causal` when there is
  no window, or blocks of queries with a small additive mask over the keys in range when there is.
- chunked: plain matmuls over blocks of queries, log-sum-exp saved, scores recomputed in the backward
  (used off CPU and when the fused op is missing); peak extra memory one (heads, chunk, keys) block.

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


_FUSED_FWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FUSED_BWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
# Queries per block for the fused path with a window (the additive mask is chunk x (chunk + window)).
FUSED_WINDOW_CHUNK = 1024


def use_fused(q: torch.Tensor) -> bool:
    return _FUSED_FWD is not None and _FUSED_BWD is not None and q.device.type == "cpu" and q.dtype != torch.float16


def _heads_first(x: torch.Tensor, group: int = 1) -> torch.Tensor:
    """(L, H, D) -> (1, H * group, L, D) view (a copy only when k/v heads are repeated for GQA)."""
    if group > 1:
        x = x.repeat_interleave(group, dim=1)
    return x.transpose(0, 1)[None]


def _fused_blocks(length, causal, left, right):
    """(query lo, hi, key lo, hi, is_causal, needs_mask) blocks covering one document."""
    if left < 0 and right < 0:
        return [(0, length, 0, length, causal, False)]
    blocks = []
    for a in range(0, length, FUSED_WINDOW_CHUNK):
        b = min(length, a + FUSED_WINDOW_CHUNK)
        klo, khi = key_range(a, b, length, causal, left, right)
        blocks.append((a, b, klo, khi, False, True))
    return blocks


def _additive_mask(a, b, klo, khi, causal, left, right, dtype, device):
    allowed = block_mask(a, b, klo, khi, causal, left, right, device)
    if allowed is None:
        return None
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))


def _fused_forward(q, k, v, cu_seqlens, causal, left, right, scale):
    total, heads, _ = q.shape
    group = heads // k.shape[1]
    out = torch.empty_like(q)
    lse = torch.full((total, heads), float("-inf"), dtype=torch.float32, device=q.device)
    for start, length in _documents(cu_seqlens):
        for a, b, klo, khi, is_causal, needs_mask in _fused_blocks(length, causal, left, right):
            mask = _additive_mask(a, b, klo, khi, causal, left, right, q.dtype, q.device) if needs_mask else None
            o, m = _FUSED_FWD(_heads_first(q[start + a:start + b]),
                              _heads_first(k[start + klo:start + khi], group),
                              _heads_first(v[start + klo:start + khi], group),
                              0.0, is_causal, attn_mask=mask, scale=scale)
            out[start + a:start + b] = o[0].transpose(0, 1)
            lse[start + a:start + b] = m[0].transpose(0, 1)
    # The CPU kernel's running max skips NaN, so a query row holding a NaN came back as output 0 and lse 0, a
    # finite answer from a diverged model; the chunked path, the Triton kernel and flash-attn give NaN there.
    # q.sum() gates the row search: 0.14 ms at 8K x 8 x 64 against 27 ms for isnan(q).any(-1) (forward: 580 ms).
    if bool(torch.isnan(q.sum())):
        nan_rows = torch.isnan(q).any(-1)
        out[nan_rows] = float("nan")
        lse[nan_rows] = float("nan")
    return out, lse


def _fused_backward(do, q, k, v, out, lse, cu_seqlens, causal, left, right, scale):
    heads, kv_heads, dim = q.shape[1], k.shape[1], q.shape[2]
    group = heads // kv_heads
    dq = torch.empty_like(q)
    dk = torch.zeros_like(k, dtype=torch.float32)
    dv = torch.zeros_like(v, dtype=torch.float32)
    for start, length in _documents(cu_seqlens):
        for a, b, klo, khi, is_causal, needs_mask in _fused_blocks(length, causal, left, right):
            mask = _additive_mask(a, b, klo, khi, causal, left, right, q.dtype, q.device) if needs_mask else None
            qs, ks = slice(start + a, start + b), slice(start + klo, start + khi)
            gq, gk, gv = _FUSED_BWD(_heads_first(do[qs]), _heads_first(q[qs]), _heads_first(k[ks], group),
                                    _heads_first(v[ks], group), _heads_first(out[qs]),
                                    lse[qs].transpose(0, 1)[None].contiguous(), 0.0, is_causal,
                                    attn_mask=mask, scale=scale)
            dq[qs] = gq[0].transpose(0, 1)
            if group > 1:  # sum the gradients of the G query heads that share one kv head
                gk = gk[0].float().reshape(kv_heads, group, khi - klo, dim).sum(1)
                gv = gv[0].float().reshape(kv_heads, group, khi - klo, dim).sum(1)
            else:
                gk, gv = gk[0], gv[0]
            dk[ks] += gk.transpose(0, 1)
            dv[ks] += gv.transpose(0, 1)
    return dq, dk.to(k.dtype), dv.to(v.dtype)


def torch_attention_forward(q, k, v, cu_seqlens, causal, left, right, scale, chunk=DEFAULT_QUERY_CHUNK,
                            budget=SCORE_BUDGET, fused=None):
    """Returns (out like q, lse float32 (T, H)), processing one document and one query chunk at a time."""
    if use_fused(q) if fused is None else fused:
        return _fused_forward(q, k, v, cu_seqlens, causal, left, right, scale)
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
                             chunk=DEFAULT_QUERY_CHUNK, budget=SCORE_BUDGET, fused=None):
    """Gradients (dq, dk, dv) by recomputing each score block from the saved log-sum-exp."""
    if use_fused(q) if fused is None else fused:
        return _fused_backward(do, q, k, v, out, lse, cu_seqlens, causal, left, right, scale)
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
