"""Triton kernels for cross-entropy statistics and their gradients.

Both ops reduce the loss to three per-token statistics of the (soft-capped) logits ``z``:
``lse = logsumexp_v z``, ``zy = z[label]`` and ``sz = sum_v z``. Every option of the public API
(weights, reductions, label smoothing, z-loss) is a cheap function of these, computed in PyTorch
by ``cross_entropy.py``; the kernels only ever see the gradients ``(a, b, c)`` of the loss with
respect to ``(lse, zy, sz)``, and form ``dL/dz = a*softmax(z) + b*onehot(label) + c``.

Fused linear design (least memory, Cut-Cross-Entropy style):

* forward: each program owns ``BLOCK_N`` tokens and a contiguous range of vocabulary blocks; it
  computes one ``BLOCK_N x BLOCK_V`` logit tile at a time (loop over the hidden size with
  ``tl.dot``, fp32 accumulators) and folds it into an online log-sum-exp. Nothing of size
  ``(N, V)`` is ever written; the vocabulary may be split across programs for parallelism and the
  partial statistics merged in PyTorch (O(N) memory).
* backward: a ``(token block, vocabulary block)`` grid recomputes each logit tile, forms its
  gradient tile in registers and adds ``dZ @ W`` into ``grad_hidden`` and ``dZ^T @ X`` into
  ``grad_weight`` with fp32 atomics (tile sizes autotuned on GPU). Extra memory is O(N)
  statistics plus fp32 gradient accumulators (``(N + V) * H`` floats, cast to the input dtype at
  the end), against ``N * V`` logits for eager PyTorch and ``chunk * V`` for chunked
  (Liger-style) designs. The price: one extra logit matmul in backward (4 matmul passes instead
  of 3), atomic traffic of ``N*V*H*(1/BLOCK_N + 1/BLOCK_V)`` adds, and a summation order that is
  not deterministic. Not done (yet): skipping tiles whose gradient is negligible (Cut
  Cross-Entropy's gradient filtering), which would cut backward work for trained models.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (tests without a GPU)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _softcap(z, cap):
    # cap * tanh(z / cap), written with exp of a non-positive number so it never overflows.
    t = z / cap
    e = tl.exp(-2.0 * tl.abs(t))
    th = (1.0 - e) / (1.0 + e)
    th = tl.where(t < 0, -th, th)
    return cap * th


@triton.jit
def _logit_tile(X, W, B, offs_n, offs_v, mask_n, mask_v, H, stride_xn, stride_wv, softcap,
                HAS_BIAS: tl.constexpr, HAS_CAP: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, PRECISION: tl.constexpr):
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        x = tl.load(X + offs_n.to(tl.int64)[:, None] * stride_xn + offs_h[None, :],
                    mask=mask_n[:, None] & mask_h[None, :], other=0.0)
        w = tl.load(W + offs_v.to(tl.int64)[:, None] * stride_wv + offs_h[None, :],
                    mask=mask_v[:, None] & mask_h[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(B + offs_v, mask=mask_v, other=0.0).to(tl.float32)[None, :]
    if HAS_CAP:
        acc = _softcap(acc, softcap)
    return acc


@triton.jit
def _online_stats(z, offs_v, mask_v, y, m, s, zy, sz):
    zm = tl.where(mask_v[None, :], z, float("-inf"))
    m_new = tl.maximum(m, tl.max(zm, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no finite logit yet: exp(-inf - 0) = 0, not NaN
    s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(zm - m_safe[:, None]), axis=1)
    zy += tl.sum(tl.where(offs_v[None, :] == y[:, None], z, 0.0), axis=1)
    sz += tl.sum(tl.where(mask_v[None, :], z, 0.0), axis=1)
    return m_new, s, zy, sz


@triton.jit
def _grad_tile(z, offs_v, mask_n, mask_v, y, lse, ga, gb, gc, softcap, HAS_CAP: tl.constexpr):
    p = tl.exp(z - lse[:, None])
    d = ga[:, None] * p + tl.where(offs_v[None, :] == y[:, None], gb[:, None], 0.0) + gc[:, None]
    if HAS_CAP:
        r = z / softcap
        d = d * (1.0 - r * r)
    return tl.where(mask_n[:, None] & mask_v[None, :], d, 0.0)


@triton.jit
def _flce_fwd_kernel(X, W, B, Y, M_OUT, S_OUT, ZY_OUT, SZ_OUT, N, V, H, stride_xn, stride_wv,
                     blocks_per_split, num_v_blocks, softcap,
                     HAS_BIAS: tl.constexpr, HAS_CAP: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, PRECISION: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    y = tl.load(Y + offs_n, mask=mask_n, other=-1)
    m = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    s = tl.zeros([BLOCK_N], dtype=tl.float32)
    zy = tl.zeros([BLOCK_N], dtype=tl.float32)
    sz = tl.zeros([BLOCK_N], dtype=tl.float32)
    vb_lo = pid_s * blocks_per_split
    vb_hi = tl.minimum(vb_lo + blocks_per_split, num_v_blocks)
    for vb in range(vb_lo, vb_hi):
        offs_v = vb * BLOCK_V + tl.arange(0, BLOCK_V)
        mask_v = offs_v < V
        z = _logit_tile(X, W, B, offs_n, offs_v, mask_n, mask_v, H, stride_xn, stride_wv, softcap,
                        HAS_BIAS, HAS_CAP, BLOCK_N, BLOCK_V, BLOCK_H, PRECISION)
        m, s, zy, sz = _online_stats(z, offs_v, mask_v, y, m, s, zy, sz)
    out = pid_s * N + offs_n
    tl.store(M_OUT + out, m, mask=mask_n)
    tl.store(S_OUT + out, s, mask=mask_n)
    tl.store(ZY_OUT + out, zy, mask=mask_n)
    tl.store(SZ_OUT + out, sz, mask=mask_n)


def _bwd_configs():
    """Backward tiles to autotune over on GPU (key: N, V, H, dtype); one tiny tile in the interpreter."""
    if interpreting():
        return [triton.Config({"BLOCK_N": 16, "BLOCK_V": 32, "BLOCK_H": 16}, num_warps=1, num_stages=1)]
    # (BLOCK_N, BLOCK_V, BLOCK_H, warps, stages) that compile for sm_90 without register spills
    # in bf16 (checked with cuobjdump -res-usage); BLOCK_H=64 variants spill.
    tiles = [(64, 128, 32, 8, 3), (128, 64, 32, 8, 3), (128, 128, 32, 8, 4), (64, 64, 32, 4, 3),
             (32, 64, 32, 4, 2)]
    return [triton.Config({"BLOCK_N": n, "BLOCK_V": v, "BLOCK_H": h}, num_warps=w, num_stages=st)
            for n, v, h, w, st in tiles]


@triton.autotune(configs=_bwd_configs(), key=["N", "V", "H", "PRECISION"],
                 reset_to_zero=["DX", "DW", "DB"])
@triton.jit
def _flce_bwd_kernel(X, W, B, Y, LSE, GA, GB, GC, DX, DW, DB, N, V, H, stride_xn, stride_wv,
                     softcap, HAS_BIAS: tl.constexpr, HAS_CAP: tl.constexpr,
                     NEED_DX: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                     PRECISION: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_n = offs_n < N
    mask_v = offs_v < V
    y = tl.load(Y + offs_n, mask=mask_n, other=-1)
    lse = tl.load(LSE + offs_n, mask=mask_n, other=0.0)
    ga = tl.load(GA + offs_n, mask=mask_n, other=0.0)
    gb = tl.load(GB + offs_n, mask=mask_n, other=0.0)
    gc = tl.load(GC + offs_n, mask=mask_n, other=0.0)
    z = _logit_tile(X, W, B, offs_n, offs_v, mask_n, mask_v, H, stride_xn, stride_wv, softcap,
                    HAS_BIAS, HAS_CAP, BLOCK_N, BLOCK_V, BLOCK_H, PRECISION)
    d = _grad_tile(z, offs_v, mask_n, mask_v, y, lse, ga, gb, gc, softcap, HAS_CAP)
    if NEED_DB:
        tl.atomic_add(DB + offs_v, tl.sum(d, axis=0), mask=mask_v)
    dd = d.to(X.dtype.element_ty)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        if NEED_DX:
            w = tl.load(W + offs_v.to(tl.int64)[:, None] * stride_wv + offs_h[None, :],
                        mask=mask_v[:, None] & mask_h[None, :], other=0.0)
            dx = tl.dot(dd, w, input_precision=PRECISION)
            tl.atomic_add(DX + offs_n.to(tl.int64)[:, None] * H + offs_h[None, :], dx,
                          mask=mask_n[:, None] & mask_h[None, :])
        if NEED_DW:
            x = tl.load(X + offs_n.to(tl.int64)[:, None] * stride_xn + offs_h[None, :],
                        mask=mask_n[:, None] & mask_h[None, :], other=0.0)
            dw = tl.dot(tl.trans(dd), x, input_precision=PRECISION)
            tl.atomic_add(DW + offs_v.to(tl.int64)[:, None] * H + offs_h[None, :], dw,
                          mask=mask_v[:, None] & mask_h[None, :])


@triton.jit
def _ce_fwd_kernel(Z, Y, LSE, ZY, SZ, N, V, stride_zn, softcap, HAS_CAP: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    pid_n = tl.program_id(0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    y = tl.load(Y + offs_n, mask=mask_n, other=-1)
    m = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    s = tl.zeros([BLOCK_N], dtype=tl.float32)
    zy = tl.zeros([BLOCK_N], dtype=tl.float32)
    sz = tl.zeros([BLOCK_N], dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        mask_v = offs_v < V
        z = tl.load(Z + offs_n.to(tl.int64)[:, None] * stride_zn + offs_v[None, :],
                    mask=mask_n[:, None] & mask_v[None, :], other=0.0).to(tl.float32)
        if HAS_CAP:
            z = _softcap(z, softcap)
        m, s, zy, sz = _online_stats(z, offs_v, mask_v, y, m, s, zy, sz)
    tl.store(LSE + offs_n, m + tl.log(s), mask=mask_n)
    tl.store(ZY + offs_n, zy, mask=mask_n)
    tl.store(SZ + offs_n, sz, mask=mask_n)


@triton.jit
def _ce_bwd_kernel(Z, Y, LSE, GA, GB, GC, DZ, N, V, stride_zn, stride_dn, softcap,
                   HAS_CAP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_n = offs_n < N
    mask_v = offs_v < V
    mask = mask_n[:, None] & mask_v[None, :]
    y = tl.load(Y + offs_n, mask=mask_n, other=-1)
    lse = tl.load(LSE + offs_n, mask=mask_n, other=0.0)
    ga = tl.load(GA + offs_n, mask=mask_n, other=0.0)
    gb = tl.load(GB + offs_n, mask=mask_n, other=0.0)
    gc = tl.load(GC + offs_n, mask=mask_n, other=0.0)
    z = tl.load(Z + offs_n.to(tl.int64)[:, None] * stride_zn + offs_v[None, :], mask=mask, other=0.0)
    z = z.to(tl.float32)
    if HAS_CAP:
        z = _softcap(z, softcap)
    d = _grad_tile(z, offs_v, mask_n, mask_v, y, lse, ga, gb, gc, softcap, HAS_CAP)
    tl.store(DZ + offs_n.to(tl.int64)[:, None] * stride_dn + offs_v[None, :], d.to(DZ.dtype.element_ty),
             mask=mask)


# --------------------------------------------------------------------------------------------
# Launchers. Block sizes: large tiles for tensor cores on GPU, tiny ones in the interpreter so
# that tests with small shapes still cross block boundaries.


def _linear_blocks(dtype: torch.dtype) -> tuple[int, int, int, int, int]:
    """(BLOCK_N, BLOCK_V, BLOCK_H, num_warps, num_stages) for the fused linear kernels."""
    if interpreting():
        return 16, 32, 16, 1, 1
    if dtype == torch.float32:
        return 64, 64, 32, 4, 2
    return 64, 128, 64, 8, 3


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs get true fp32 products (as PyTorch's default matmul); half types use tensor cores.
    return "ieee" if dtype == torch.float32 else "tf32"


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def flce_stats(hidden, weight, bias, labels, softcap, v_splits=None):
    """(lse, zy, sz) in fp32 for the logits ``hidden @ weight.T + bias`` without materialising them."""
    n, h = hidden.shape
    v = weight.shape[0]
    if n == 0:
        empty = torch.empty(0, device=hidden.device, dtype=torch.float32)
        return empty, empty.clone(), empty.clone()
    bn, bv, bh, warps, stages = _linear_blocks(hidden.dtype)
    n_blocks = triton.cdiv(n, bn)
    v_blocks = triton.cdiv(v, bv)
    if v_splits is None:  # enough programs to fill the GPU twice over
        v_splits = max(1, min(v_blocks, triton.cdiv(2 * _sm_count(hidden.device), n_blocks)))
    per = triton.cdiv(v_blocks, max(1, min(v_splits, v_blocks)))
    splits = triton.cdiv(v_blocks, per)
    kw = dict(device=hidden.device, dtype=torch.float32)
    m, s, zy, sz = (torch.empty((splits, n), **kw) for _ in range(4))
    _flce_fwd_kernel[(n_blocks, splits)](
        hidden, weight, bias if bias is not None else hidden, labels, m, s, zy, sz,
        n, v, h, hidden.stride(0), weight.stride(0), per, v_blocks,
        float(softcap or 1.0), HAS_BIAS=bias is not None, HAS_CAP=softcap is not None,
        BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh, PRECISION=_precision(hidden.dtype),
        num_warps=warps, num_stages=stages)
    if splits == 1:
        return m[0] + torch.log(s[0]), zy[0], sz[0]
    top = m.max(dim=0).values
    lse = top + torch.log((s * torch.exp(m - top)).sum(dim=0))
    return lse, zy.sum(dim=0), sz.sum(dim=0)


def flce_grads(hidden, weight, bias, labels, softcap, lse, ga, gb, gc, needs):
    """Gradients (or None) of hidden, weight, bias for ``needs = (dx?, dw?, db?)`` given
    dL/d(lse, zy, sz); fp32 accumulators, cast to the parameters' dtypes at the end."""
    n, h = hidden.shape
    v = weight.shape[0]
    need_dx, need_dw, need_db = needs
    f32 = dict(device=hidden.device, dtype=torch.float32)
    dx = torch.zeros((n, h), **f32) if need_dx else None
    dw = torch.zeros((v, h), **f32) if need_dw else None
    db = torch.zeros((v,), **f32) if need_db else None
    dummy = torch.empty(1, **f32)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(v, meta["BLOCK_V"]))  # noqa: E731
    if n > 0 and any(needs):
        _flce_bwd_kernel[grid](
            hidden, weight, bias if bias is not None else hidden, labels, lse, ga, gb, gc,
            dx if need_dx else dummy, dw if need_dw else dummy, db if need_db else dummy,
            n, v, h, hidden.stride(0), weight.stride(0), float(softcap or 1.0),
            HAS_BIAS=bias is not None, HAS_CAP=softcap is not None,
            NEED_DX=need_dx, NEED_DW=need_dw, NEED_DB=need_db, PRECISION=_precision(hidden.dtype))
    return (None if dx is None else dx.to(hidden.dtype),
            None if dw is None else dw.to(weight.dtype),
            None if db is None else db.to(bias.dtype))


def _logits_blocks() -> tuple[int, int, int]:
    if interpreting():
        return 4, 32, 1
    return 16, 1024, 8


def ce_stats(logits, labels, softcap):
    n, v = logits.shape
    bn, bv, warps = _logits_blocks()
    lse, zy, sz = (torch.empty(n, device=logits.device, dtype=torch.float32) for _ in range(3))
    _ce_fwd_kernel[(triton.cdiv(n, bn),)](
        logits, labels, lse, zy, sz, n, v, logits.stride(0), float(softcap or 1.0),
        HAS_CAP=softcap is not None, BLOCK_N=bn, BLOCK_V=bv, num_warps=warps)
    return lse, zy, sz


def ce_grad(logits, labels, softcap, lse, ga, gb, gc, out=None):
    """dL/dz; ``out=logits`` writes it over the logits (each tile is read, then written, by one program)."""
    n, v = logits.shape
    bn, bv, warps = _logits_blocks()
    dz = torch.empty_like(logits) if out is None else out
    _ce_bwd_kernel[(triton.cdiv(n, bn), triton.cdiv(v, bv))](
        logits, labels, lse, ga, gb, gc, dz, n, v, logits.stride(0), dz.stride(0),
        float(softcap or 1.0), HAS_CAP=softcap is not None, BLOCK_N=bn, BLOCK_V=bv,
        num_warps=warps)
    return dz


def chunked_stats(hidden, weight, bias, labels, softcap, chunk):
    """(lse, zy, sz) in fp32, chunk by chunk: cuBLAS forms a chunk's logits in the input dtype and
    `_ce_fwd_kernel` reduces them with fp32 math in registers."""
    n = hidden.shape[0]
    stats = [torch.empty(n, device=hidden.device, dtype=torch.float32) for _ in range(3)]
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        z = torch.nn.functional.linear(hidden[sl], weight, bias)
        for dst, src in zip(stats, ce_stats(z, labels[sl], softcap)):
            dst[sl] = src
        del z
    return tuple(stats)


def chunked_grads(hidden, weight, bias, labels, softcap, lse, ga, gb, gc, needs, chunk, accumulate_fp32=False,
                  grad_dtype=None):
    """Gradients (or None) of hidden, weight, bias given dL/d(lse, zy, sz): per chunk the logits are formed
    again, `_ce_bwd_kernel` overwrites them with their gradient, and cuBLAS adds dX and dW."""
    from ._ce_reference import _cast, accumulate_grads, grad_buffers

    dx, dw, db = grad_buffers(hidden, weight, needs, accumulate_fp32)
    for start in range(0, hidden.shape[0], chunk):
        sl = slice(start, start + chunk)
        z = torch.nn.functional.linear(hidden[sl], weight, bias)
        ce_grad(z, labels[sl], softcap, lse[sl], ga[sl], gb[sl], gc[sl], out=z)
        accumulate_grads(z, hidden[sl], weight, sl, dx, dw, db)
        del z
    return dx, _cast(dw, weight, grad_dtype), _cast(db, bias, grad_dtype)


def chunked_stats_and_grads(hidden, weight, bias, labels, softcap, coefficients, needs, chunk,
                            accumulate_fp32=False, grad_dtype=None):
    """``_ce_reference.flce_stats_and_grads`` (same contract) with Liger's memory shape: per chunk of tokens,
    cuBLAS forms the chunk's logits in the input dtype, `_ce_fwd_kernel` reduces them to (lse, zy, sz) with
    fp32 math in registers, `_ce_bwd_kernel` overwrites them with their gradient, and cuBLAS adds dX and,
    in place, dW. The only logit memory is one (chunk, V) buffer in the input dtype: no fp32 copy of the
    logits, no exp pass in PyTorch, and each chunk's logits formed once (3 matmul passes, not 4)."""
    from ._ce_reference import _cast, accumulate_grads, grad_buffers

    n = hidden.shape[0]
    stats = [torch.empty(n, device=hidden.device, dtype=torch.float32) for _ in range(3)]
    dx, dw, db = grad_buffers(hidden, weight, needs, accumulate_fp32)
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        y = labels[sl]
        z = torch.nn.functional.linear(hidden[sl], weight, bias)
        lse, zy, sz = ce_stats(z, y, softcap)
        for dst, src in zip(stats, (lse, zy, sz)):
            dst[sl] = src
        ga, gb, gc = (g.to(torch.float32).contiguous() for g in coefficients(lse, sl))
        ce_grad(z, y, softcap, lse, ga, gb, gc, out=z)
        accumulate_grads(z, hidden[sl], weight, sl, dx, dw, db)
        del z
    return tuple(stats), (dx, _cast(dw, weight, grad_dtype), _cast(db, bias, grad_dtype))
