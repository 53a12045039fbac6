"""Triton kernels for document-masked (varlen) attention: FlashAttention-2 forward and backward.

Every kernel works on the packed layout (total_tokens, heads, head_dim) with flash-attn `cu_seqlens`.
A program handles one block of one document; a small block table built on the device maps program ids
to (document, block) so no program is spent on padding and no host sync is needed. Inside a program
only the key (or query) blocks that the causal / window / document rules can reach are visited, and
of those only the blocks on a boundary pay for an element mask — which is where the speed-up of
document masking over a dense causal mask comes from.

Scores are kept in base 2 (`qk_scale = softmax_scale * log2(e)`, `exp2`), the saved log-sum-exp
`lse2` too, laid out (heads, tokens) in fp32. The backward recomputes probabilities from `lse2` and
never stores a (S, S) block: dK/dV accumulate per key block over the query heads of its GQA group
(no atomics, deterministic), dQ per query block.

Any head_dim up to 256 works: tiles span `BLOCK_D`, the next power of two (at least 16, what `tl.dot`
needs), and loads zero the columns past the real `HEAD_DIM` (stores skip them). Zero columns add
nothing to q.k or p.v, so no tensor is padded or copied in Python (Phi-2's 80, Phi-3's 96, ...).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    # fp32 inputs would silently use TF32 on tensor cores; keep them exact so fp32 stays a reference.
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _tile_mask(row_ok, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Mask of a (rows, BLOCK_D) tile: rows inside the document, columns inside the real head_dim."""
    if HEAD_DIM == BLOCK_D:
        mask = row_ok[:, None]
    else:
        mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    return mask


@triton.jit
def _load_tile(ptrs, row_ok, offs_d, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """A (rows, BLOCK_D) tile, zeros past the document (if ROWS) and in the head_dim padding; a full tile
    of a power-of-two head_dim loads unmasked (the fast path)."""
    if ROWS:
        tile = tl.load(ptrs, mask=_tile_mask(row_ok, offs_d, HEAD_DIM, BLOCK_D), other=0.0)
    elif HEAD_DIM == BLOCK_D:
        tile = tl.load(ptrs)
    else:
        tile = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    return tile


@triton.jit
def _key_blocks(m0, L, CAUSAL: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key range of query block [m0, m0+BLOCK_M) split as masked [lo, a), full [a, b), masked [b, hi)."""
    lo = 0
    if LEFT >= 0:
        lo = tl.maximum(m0 - LEFT, 0) // BLOCK_N * BLOCK_N
    hi = L
    if CAUSAL:
        hi = tl.minimum(hi, m0 + BLOCK_M)
    if RIGHT >= 0:
        hi = tl.minimum(hi, m0 + BLOCK_M + RIGHT)
    full_lo = lo
    if LEFT >= 0:
        full_lo = tl.maximum(lo, (tl.maximum(m0 + BLOCK_M - 1 - LEFT, 0) + BLOCK_N - 1) // BLOCK_N * BLOCK_N)
    limit = L
    if CAUSAL:
        limit = tl.minimum(limit, m0 + 1)
    if RIGHT >= 0:
        limit = tl.minimum(limit, m0 + RIGHT + 1)
    full_hi = limit // BLOCK_N * BLOCK_N
    a = tl.minimum(full_lo, hi)
    b = tl.maximum(a, tl.minimum(full_hi, hi))
    return lo, a, b, hi


@triton.jit
def _query_blocks(n0, L, CAUSAL: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query range reaching key block [n0, n0+BLOCK_N), split masked [lo, a), full [a, b), masked [b, hi)."""
    lo = 0
    if CAUSAL:
        lo = n0 // BLOCK_M * BLOCK_M
    if RIGHT >= 0:
        lo = tl.maximum(n0 - RIGHT, 0) // BLOCK_M * BLOCK_M
    hi = L
    if LEFT >= 0:
        hi = tl.minimum(hi, n0 + BLOCK_N + LEFT)
    full_lo = lo
    if CAUSAL:
        full_lo = tl.maximum(full_lo, (n0 + BLOCK_N - 1 + BLOCK_M - 1) // BLOCK_M * BLOCK_M)
    if RIGHT >= 0:
        full_lo = tl.maximum(full_lo, (tl.maximum(n0 + BLOCK_N - 1 - RIGHT, 0) + BLOCK_M - 1) // BLOCK_M * BLOCK_M)
    limit = L
    if LEFT >= 0:
        limit = tl.minimum(limit, n0 + LEFT + 1)
    full_hi = limit // BLOCK_M * BLOCK_M
    a = tl.minimum(full_lo, hi)
    b = tl.maximum(a, tl.minimum(full_hi, hi))
    return lo, a, b, hi


@triton.jit
def _allowed(offs_m, offs_n, L, CAUSAL: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr):
    """(M, N) mask of query offs_m attending key offs_n inside one document of length L."""
    ok = (offs_n[None, :] < L) & (offs_m[:, None] < L)
    if CAUSAL:
        ok = ok & (offs_n[None, :] <= offs_m[:, None])
    if LEFT >= 0:
        ok = ok & (offs_n[None, :] >= offs_m[:, None] - LEFT)
    if RIGHT >= 0:
        ok = ok & (offs_n[None, :] <= offs_m[:, None] + RIGHT)
    return ok


@triton.jit
def _load_kv_tile(k_base, v_base, stride_kt, stride_vt, n0, offs_d, L, BLOCK_N: tl.constexpr,
                  MASKED: tl.constexpr, BIG: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Key positions n0..n0+BLOCK_N of a document and their K and V rows (zeros past its length L)."""
    rows = tl.arange(0, BLOCK_N)
    offs_n = n0 + rows
    if BIG:  # 64-bit tile base, 32-bit offsets inside the tile: no overflow on very long documents
        k_ptrs = k_base + n0 * stride_kt.to(tl.int64) + rows[:, None] * stride_kt + offs_d[None, :]
        v_ptrs = v_base + n0 * stride_vt.to(tl.int64) + rows[:, None] * stride_vt + offs_d[None, :]
    else:  # 32-bit offsets from the document start (fewer registers)
        k_ptrs = k_base + offs_n[:, None] * stride_kt + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_vt + offs_d[None, :]
    k = _load_tile(k_ptrs, offs_n < L, offs_d, MASKED, HEAD_DIM, BLOCK_D)
    v = _load_tile(v_ptrs, offs_n < L, offs_d, MASKED, HEAD_DIM, BLOCK_D)
    return offs_n, k, v


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, L, start_n, end_n,
               qk_scale, CAUSAL: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr, MASKED: tl.constexpr,
               BLOCK_N: tl.constexpr, IEEE: tl.constexpr, BIG: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr):
    for n0 in range(start_n, end_n, BLOCK_N):
        offs_n, k, v = _load_kv_tile(k_base, v_base, stride_kt, stride_vt, n0, offs_d, L, BLOCK_N, MASKED, BIG,
                                      HEAD_DIM, BLOCK_D)
        s = _dot(q, tl.trans(k), tl.zeros([q.shape[0], BLOCK_N], dtype=tl.float32), IEEE) * qk_scale
        if MASKED:
            s = tl.where(_allowed(offs_m, offs_n, L, CAUSAL, LEFT, RIGHT), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if MASKED:
            # A row with no allowed key yet keeps m = -inf; subtract 0 then so exp2 gives 0, not NaN.
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_safe = m_new  # an unmasked tile gives every row a finite score
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = _dot(p.to(v.dtype), v, acc * alpha[:, None], IEEE)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, CU, BLK_DOC, BLK_IDX, total_tokens,
                stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                qk_scale, GROUP: tl.constexpr, CAUSAL: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                IEEE: tl.constexpr, BIG: tl.constexpr):
    pid = tl.program_id(0)
    head = tl.program_id(1)
    doc = tl.load(BLK_DOC + pid)
    if doc >= 0:
        m0 = tl.load(BLK_IDX + pid) * BLOCK_M
        start = tl.load(CU + doc).to(tl.int64)
        L = (tl.load(CU + doc + 1) - start).to(tl.int32)
        kv_head = head // GROUP
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        row_ok = offs_m < L
        tile_ok = _tile_mask(row_ok, offs_d, HEAD_DIM, BLOCK_D)
        q = tl.load(Q + (start + offs_m)[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                    mask=tile_ok, other=0.0)
        k_base = K + start * stride_kt + kv_head * stride_kh
        v_base = V + start * stride_vt + kv_head * stride_vh
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        lo, a, b, hi = _key_blocks(m0, L, CAUSAL, LEFT, RIGHT, BLOCK_M, BLOCK_N)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, L,
                                   lo, a, qk_scale, CAUSAL, LEFT, RIGHT, True, BLOCK_N, IEEE, BIG, HEAD_DIM, BLOCK_D)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, L,
                                   a, b, qk_scale, CAUSAL, LEFT, RIGHT, False, BLOCK_N, IEEE, BIG, HEAD_DIM, BLOCK_D)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, L,
                                   b, hi, qk_scale, CAUSAL, LEFT, RIGHT, True, BLOCK_N, IEEE, BIG, HEAD_DIM, BLOCK_D)
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        acc = acc / l_safe[:, None]
        lse2 = m_i + tl.math.log2(l_safe)
        tl.store(O + (start + offs_m)[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
                 acc.to(O.dtype.element_ty), mask=tile_ok)
        tl.store(LSE + head.to(tl.int64) * total_tokens + start + offs_m, lse2, mask=row_ok)


@triton.jit
def _delta_kernel(O, DO, DELTA, total_tokens, stride_ot, stride_oh, stride_dt, stride_dh,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr):
    """delta[h, t] = sum_d O * dO: the softmax-backward row term, (heads, tokens) fp32."""
    head = tl.program_id(1)
    offs_t = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    ok = _tile_mask(offs_t < total_tokens, offs_d, HEAD_DIM, BLOCK_D)
    o = tl.load(O + offs_t[:, None] * stride_ot + head * stride_oh + offs_d[None, :], mask=ok, other=0.0)
    do = tl.load(DO + offs_t[:, None] * stride_dt + head * stride_dh + offs_d[None, :], mask=ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + head.to(tl.int64) * total_tokens + offs_t, delta, mask=offs_t < total_tokens)


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot, offs_n, offs_d, L,
                start_m, end_m, qk_scale, CAUSAL: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr,
                MASKED: tl.constexpr, BLOCK_M: tl.constexpr, IEEE: tl.constexpr, BIG: tl.constexpr,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    for m0 in range(start_m, end_m, BLOCK_M):
        rows = tl.arange(0, BLOCK_M)
        offs_m = m0 + rows
        if BIG:
            q_ptrs = q_base + m0 * stride_qt.to(tl.int64) + rows[:, None] * stride_qt + offs_d[None, :]
            do_ptrs = do_base + m0 * stride_dot.to(tl.int64) + rows[:, None] * stride_dot + offs_d[None, :]
        else:
            q_ptrs = q_base + offs_m[:, None] * stride_qt + offs_d[None, :]
            do_ptrs = do_base + offs_m[:, None] * stride_dot + offs_d[None, :]
        row_ok = offs_m < L
        q = _load_tile(q_ptrs, row_ok, offs_d, MASKED, HEAD_DIM, BLOCK_D)
        do = _load_tile(do_ptrs, row_ok, offs_d, MASKED, HEAD_DIM, BLOCK_D)
        if MASKED:
            lse2 = tl.load(lse_base + m0 + rows, mask=row_ok, other=0.0)
            delta = tl.load(delta_base + m0 + rows, mask=row_ok, other=0.0)
        else:
            lse2 = tl.load(lse_base + m0 + rows)
            delta = tl.load(delta_base + m0 + rows)
        # Transposed scores (keys x queries) so dK, dV accumulate without transposing the results.
        s_t = _dot(k, tl.trans(q), tl.zeros([k.shape[0], BLOCK_M], dtype=tl.float32), IEEE) * qk_scale
        p_t = tl.math.exp2(s_t - lse2[None, :])
        if MASKED:
            p_t = tl.where(tl.trans(_allowed(offs_m, offs_n, L, CAUSAL, LEFT, RIGHT)), p_t, 0.0)
        dv = _dot(p_t.to(do.dtype), do, dv, IEEE)
        dp_t = _dot(v, tl.trans(do), tl.zeros([k.shape[0], BLOCK_M], dtype=tl.float32), IEEE)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = _dot(ds_t.to(q.dtype), q, dk, IEEE)
    return dk, dv


@triton.jit
def _dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, CU, BLK_DOC, BLK_IDX, total_tokens,
                 stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
                 stride_dkt, stride_dkh, stride_dvt, stride_dvh, qk_scale, sm_scale,
                 GROUP: tl.constexpr, CAUSAL: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 IEEE: tl.constexpr, BIG: tl.constexpr):
    pid = tl.program_id(0)
    kv_head = tl.program_id(1)
    doc = tl.load(BLK_DOC + pid)
    if doc >= 0:
        n0 = tl.load(BLK_IDX + pid) * BLOCK_N
        start = tl.load(CU + doc).to(tl.int64)
        L = (tl.load(CU + doc + 1) - start).to(tl.int32)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        key_ok = offs_n < L
        tile_ok = _tile_mask(key_ok, offs_d, HEAD_DIM, BLOCK_D)
        k = tl.load(K + (start + offs_n)[:, None] * stride_kt + kv_head * stride_kh + offs_d[None, :],
                    mask=tile_ok, other=0.0)
        v = tl.load(V + (start + offs_n)[:, None] * stride_vt + kv_head * stride_vh + offs_d[None, :],
                    mask=tile_ok, other=0.0)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        lo, a, b, hi = _query_blocks(n0, L, CAUSAL, LEFT, RIGHT, BLOCK_M, BLOCK_N)
        for g in range(GROUP):
            head = kv_head * GROUP + g
            q_base = Q + start * stride_qt + head * stride_qh
            do_base = DO + start * stride_dot + head * stride_doh
            lse_base = LSE + head.to(tl.int64) * total_tokens + start
            delta_base = DELTA + head.to(tl.int64) * total_tokens + start
            dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
                                 offs_n, offs_d, L, lo, a, qk_scale, CAUSAL, LEFT, RIGHT,
                                 True, BLOCK_M, IEEE, BIG, HEAD_DIM, BLOCK_D)
            dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
                                 offs_n, offs_d, L, a, b, qk_scale, CAUSAL, LEFT, RIGHT,
                                 False, BLOCK_M, IEEE, BIG, HEAD_DIM, BLOCK_D)
            dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
                                 offs_n, offs_d, L, b, hi, qk_scale, CAUSAL, LEFT, RIGHT,
                                 True, BLOCK_M, IEEE, BIG, HEAD_DIM, BLOCK_D)
        tl.store(DK + (start + offs_n)[:, None] * stride_dkt + kv_head * stride_dkh + offs_d[None, :],
                 (dk * sm_scale).to(DK.dtype.element_ty), mask=tile_ok)
        tl.store(DV + (start + offs_n)[:, None] * stride_dvt + kv_head * stride_dvh + offs_d[None, :],
                 dv.to(DV.dtype.element_ty), mask=tile_ok)


@triton.jit
def _dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, L, start_n, end_n,
              qk_scale, CAUSAL: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr, MASKED: tl.constexpr,
              BLOCK_N: tl.constexpr, IEEE: tl.constexpr, BIG: tl.constexpr, HEAD_DIM: tl.constexpr,
              BLOCK_D: tl.constexpr):
    for n0 in range(start_n, end_n, BLOCK_N):
        offs_n, k, v = _load_kv_tile(k_base, v_base, stride_kt, stride_vt, n0, offs_d, L, BLOCK_N, MASKED, BIG,
                                      HEAD_DIM, BLOCK_D)
        s = _dot(q, tl.trans(k), tl.zeros([q.shape[0], BLOCK_N], dtype=tl.float32), IEEE) * qk_scale
        p = tl.math.exp2(s - lse2[:, None])
        if MASKED:
            p = tl.where(_allowed(offs_m, offs_n, L, CAUSAL, LEFT, RIGHT), p, 0.0)
        dp = _dot(do, tl.trans(v), tl.zeros([q.shape[0], BLOCK_N], dtype=tl.float32), IEEE)
        ds = p * (dp - delta[:, None])
        dq = _dot(ds.to(k.dtype), k, dq, IEEE)
    return dq


@triton.jit
def _dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, CU, BLK_DOC, BLK_IDX, total_tokens,
               stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
               stride_dqt, stride_dqh, qk_scale, sm_scale,
               GROUP: tl.constexpr, CAUSAL: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               IEEE: tl.constexpr, BIG: tl.constexpr):
    pid = tl.program_id(0)
    head = tl.program_id(1)
    doc = tl.load(BLK_DOC + pid)
    if doc >= 0:
        m0 = tl.load(BLK_IDX + pid) * BLOCK_M
        start = tl.load(CU + doc).to(tl.int64)
        L = (tl.load(CU + doc + 1) - start).to(tl.int32)
        kv_head = head // GROUP
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        row_ok = offs_m < L
        tile_ok = _tile_mask(row_ok, offs_d, HEAD_DIM, BLOCK_D)
        q = tl.load(Q + (start + offs_m)[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                    mask=tile_ok, other=0.0)
        do = tl.load(DO + (start + offs_m)[:, None] * stride_dot + head * stride_doh + offs_d[None, :],
                     mask=tile_ok, other=0.0)
        lse2 = tl.load(LSE + head.to(tl.int64) * total_tokens + start + offs_m, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + head.to(tl.int64) * total_tokens + start + offs_m, mask=row_ok, other=0.0)
        k_base = K + start * stride_kt + kv_head * stride_kh
        v_base = V + start * stride_vt + kv_head * stride_vh
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        lo, a, b, hi = _key_blocks(m0, L, CAUSAL, LEFT, RIGHT, BLOCK_M, BLOCK_N)
        dq = _dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, L, lo, a,
                       qk_scale, CAUSAL, LEFT, RIGHT, True, BLOCK_N, IEEE, BIG, HEAD_DIM, BLOCK_D)
        dq = _dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, L, a, b,
                       qk_scale, CAUSAL, LEFT, RIGHT, False, BLOCK_N, IEEE, BIG, HEAD_DIM, BLOCK_D)
        dq = _dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, L, b, hi,
                       qk_scale, CAUSAL, LEFT, RIGHT, True, BLOCK_N, IEEE, BIG, HEAD_DIM, BLOCK_D)
        tl.store(DQ + (start + offs_m)[:, None] * stride_dqt + head * stride_dqh + offs_d[None, :],
                 (dq * sm_scale).to(DQ.dtype.element_ty), mask=tile_ok)


# ----------------------------------------------------------------------------------------------- host side

# (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel and padded head dim (`block_d`): 80 and 96 take head
# dim 128's tiles, untuned (ptxas, sm_90a, at 96: forward spills 16 bytes against 36 at 128, dK/dV 568
# against 412, dQ none). First chosen without a GPU by
# compiling for sm_90 and reading ptxas' register/spill report (tests/test_attention_compile.py does
# the compile part). Head dim 128 was then tuned on an H200 (benchmarks/tune_attention_tiles.py,
# S=32K, 16 heads, bf16, docs/benchmarks.md): forward 128x128 is 1.05-1.10x the 128x64 tiles, dK/dV
# 64x128 is 1.01-1.07x the 32x128 tiles (spilling or not, nothing else tried was faster), dQ kept.
_FWD = {16: (128, 64, 4, 3), 32: (128, 64, 4, 3), 64: (128, 64, 4, 3), 128: (128, 128, 8, 3), 256: (64, 32, 8, 2)}
_DKDV = {16: (32, 128, 8, 2), 32: (32, 128, 8, 2), 64: (32, 128, 8, 2), 128: (64, 128, 8, 2), 256: (32, 32, 4, 1)}
_DQ = {16: (128, 64, 8, 2), 32: (128, 64, 8, 2), 64: (128, 64, 8, 2), 128: (128, 64, 8, 2), 256: (64, 32, 4, 1)}


def block_d(head_dim: int) -> int:
    """The tiles' head-dim width: the next power of two, at least 16 (tl.dot's smallest K)."""
    return max(16, triton.next_power_of_2(head_dim))


def block_table(cu_seqlens: torch.Tensor, total_tokens: int, block: int):
    """Per program id: (document index or -1, block index inside the document), built on the device."""
    ndocs = cu_seqlens.numel() - 1
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    nblk = (lens + block - 1) // block
    ends = torch.cumsum(nblk, 0)
    grid = triton.cdiv(total_tokens, block) + ndocs
    pid = torch.arange(grid, device=cu_seqlens.device)
    doc = torch.searchsorted(ends, pid, right=True)
    valid = doc < ndocs
    doc = doc.clamp(max=max(ndocs - 1, 0))
    idx = pid - (ends - nblk)[doc]
    doc = torch.where(valid, doc, torch.full_like(doc, -1))
    return doc.to(torch.int32), idx.to(torch.int32), grid


def _needs_64bit(*tensors) -> bool:
    """Whether a token offset times a row stride can pass 2**31 elements (then tiles use 64-bit bases)."""
    return any(t.shape[0] * t.stride(0) >= 2 ** 31 for t in tensors)


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_attention_forward(q, k, v, cu_seqlens, causal, left, right, scale, blocks=None):
    cu_seqlens = cu_seqlens.contiguous()  # the kernels read CU + doc: a strided view gave NaN
    total, heads, dim = q.shape
    group = heads // k.shape[1]
    out = torch.empty_like(q)
    lse = torch.empty((heads, total), dtype=torch.float32, device=q.device)
    bd = block_d(dim)
    bm, bn, warps, stages = _FWD[bd]
    if blocks is not None:
        bm, bn = blocks
    doc, idx, grid = block_table(cu_seqlens, total, bm)
    extra = {} if _interpreting() else {"num_warps": warps, "num_stages": stages}
    _fwd_kernel[(grid, heads)](
        q, k, v, out, lse, cu_seqlens, doc, idx, total,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        scale * LOG2E, GROUP=group, CAUSAL=causal, LEFT=left, RIGHT=right, HEAD_DIM=dim,
        BLOCK_D=bd, BLOCK_M=bm, BLOCK_N=bn, IEEE=q.dtype == torch.float32, BIG=_needs_64bit(q, k, v, out), **extra)
    return out, lse


def triton_attention_backward(do, q, k, v, out, lse, cu_seqlens, causal, left, right, scale, blocks=None):
    cu_seqlens = cu_seqlens.contiguous()
    total, heads, dim = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    do = do if do.stride(-1) == 1 else do.contiguous()
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    delta = torch.empty((heads, total), dtype=torch.float32, device=q.device)
    bd = block_d(dim)
    m1, n1, warps1, stages1 = _DKDV[bd]
    m2, n2, warps2, stages2 = _DQ[bd]
    if blocks is not None:
        m1, n1 = m2, n2 = blocks
    interp = _interpreting()
    delta_block = 64
    _delta_kernel[(triton.cdiv(total, delta_block), heads)](
        out, do, delta, total, out.stride(0), out.stride(1), do.stride(0), do.stride(1),
        HEAD_DIM=dim, BLOCK_D=bd, BLOCK=delta_block)
    ieee = q.dtype == torch.float32
    big = _needs_64bit(q, k, v, do, out)
    kdoc, kidx, kgrid = block_table(cu_seqlens, total, n1)
    _dkdv_kernel[(kgrid, kv_heads)](
        q, k, v, do, lse, delta, dk, dv, cu_seqlens, kdoc, kidx, total,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1),
        dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1), scale * LOG2E, scale,
        GROUP=group, CAUSAL=causal, LEFT=left, RIGHT=right, HEAD_DIM=dim, BLOCK_D=bd, BLOCK_M=m1, BLOCK_N=n1,
        IEEE=ieee, BIG=big,         **({} if interp else {"num_warps": warps1, "num_stages": stages1}))
    qdoc, qidx, qgrid = block_table(cu_seqlens, total, m2)
    _dq_kernel[(qgrid, heads)](
        q, k, v, do, lse, delta, dq, cu_seqlens, qdoc, qidx, total,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1),
        dq.stride(0), dq.stride(1), scale * LOG2E, scale,
        GROUP=group, CAUSAL=causal, LEFT=left, RIGHT=right, HEAD_DIM=dim, BLOCK_D=bd, BLOCK_M=m2, BLOCK_N=n2,
        IEEE=ieee, BIG=big,         **({} if interp else {"num_warps": warps2, "num_stages": stages2}))
    return dq, dk, dv


__all__ = ["triton_attention_forward", "triton_attention_backward", "block_table", "block_d"]
