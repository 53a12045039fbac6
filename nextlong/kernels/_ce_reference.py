"""Pure-PyTorch chunked statistics and gradients: the CPU fallback with the Triton kernels' semantics.

Same contract as ``_ce_triton``: forward returns per-token ``(lse, zy, sz)`` of the soft-capped
logits, backward turns ``dL/d(lse, zy, sz)`` into gradients. Tokens are processed ``chunk`` at a
time, so at most ``chunk x V`` logits (plus two temporaries of that size) exist at once; backward
recomputes each chunk's logits instead of keeping them, except for scalar training losses, whose
gradients ``flce_stats_and_grads`` forms in the same pass.
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK_ELEMENTS = 1 << 24  # 64 MiB of fp32 logits per chunk: big enough for efficient BLAS
# On a GPU the per-chunk cost is the fp32 dW update (V x H read and written once per chunk), so
# chunks are larger: 512 MiB of fp32 logits, 1024 tokens at a 128K vocabulary (Liger picks ~512).
CUDA_CHUNK_ELEMENTS = 1 << 27


def default_chunk(n_tokens: int, vocab: int, cuda: bool = False) -> int:
    budget = CUDA_CHUNK_ELEMENTS if cuda else DEFAULT_CHUNK_ELEMENTS
    return max(1, min(n_tokens, budget // max(1, vocab)))


def acc_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 accumulation, or fp64 for fp64 inputs (so gradcheck can verify the maths)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def logits_buffer(hidden, weight, bias, chunk):
    """One (chunk, V) buffer the chunks' logits are written into in turn, or None where they cannot be (the
    product runs in another dtype than the logits, or autograd records it: a double backward). Reused, not
    allocated per chunk: on CPU a fresh 64 MiB block is a fresh mmap whose page faults cost ~10% of a step."""
    acc = acc_dtype(hidden)
    if torch.is_grad_enabled() or not (hidden.dtype == weight.dtype == acc and (bias is None or bias.dtype == acc)):
        return None
    return torch.empty((min(chunk, hidden.shape[0]), weight.shape[0]), device=hidden.device, dtype=acc)


def _capped_logits(hidden, weight, bias, softcap, out=None):
    """The chunk's soft-capped logits in the accumulation dtype, written into `out` (logits_buffer's) when
    given; the caller may overwrite them."""
    if out is not None:
        z = out[:hidden.shape[0]]
        if bias is None:
            torch.mm(hidden, weight.t(), out=z)
        else:
            torch.addmm(bias, hidden, weight.t(), out=z)
    else:
        z = torch.nn.functional.linear(hidden, weight, bias).to(acc_dtype(hidden))
    if softcap is not None:
        z = z.div_(softcap).tanh_().mul_(softcap) if out is not None else softcap * torch.tanh(z / softcap)
    return z


def _row_stats(z, labels):
    lse = torch.logsumexp(z, dim=-1)
    valid = (labels >= 0) & (labels < z.shape[-1])
    zy = torch.gather(z, 1, labels.clamp(0, z.shape[-1] - 1)[:, None])[:, 0]
    return lse, torch.where(valid, zy, torch.zeros_like(zy)), z.sum(dim=-1)


def _row_grad(z, labels, softcap, lse, ga, gb, gc, inplace=False):
    """dL/dz for one chunk; with ``inplace`` the chunk's logits ``z`` are overwritten (saves a copy)."""
    cap_grad = 1.0 - (z / softcap) ** 2 if softcap is not None else None
    d = z.sub_(lse[:, None]) if inplace else z - lse[:, None]
    d = d.exp_().mul_(ga[:, None]).add_(gc[:, None])
    valid = (labels >= 0) & (labels < z.shape[-1])
    rows = torch.nonzero(valid)[:, 0]
    d[rows, labels[rows]] += gb[rows]
    if cap_grad is not None:
        d.mul_(cap_grad)
    return d


def flce_stats(hidden, weight, bias, labels, softcap, chunk):
    out = [torch.empty(hidden.shape[0], device=hidden.device, dtype=acc_dtype(hidden)) for _ in range(3)]
    buffer = logits_buffer(hidden, weight, bias, chunk)
    for start in range(0, hidden.shape[0], chunk):
        sl = slice(start, start + chunk)
        z = _capped_logits(hidden[sl], weight, bias, softcap, out=buffer)
        for dst, src in zip(out, _row_stats(z, labels[sl])):
            dst[sl] = src
        del z
    return tuple(out)


def flce_grads(hidden, weight, bias, labels, softcap, lse, ga, gb, gc, needs, chunk, accumulate_fp32=False,
               grad_dtype=None):
    """Gradients (or None) of hidden, weight, bias for ``needs = (dx?, dw?, db?)``."""
    dx, dw, db = grad_buffers(hidden, weight, needs, accumulate_fp32)
    w_mm = product_weight(weight, acc_dtype(hidden))
    buffer = logits_buffer(hidden, weight, bias, chunk)
    for start in range(0, hidden.shape[0], chunk):
        sl = slice(start, start + chunk)
        z = _capped_logits(hidden[sl], weight, bias, softcap, out=buffer)
        d = _row_grad(z, labels[sl], softcap, lse[sl], ga[sl], gb[sl], gc[sl], inplace=True)
        del z
        accumulate_grads(d, hidden[sl], w_mm, sl, dx, dw, db)
    return dx, _cast(dw, weight, grad_dtype), _cast(db, bias, grad_dtype)


def grad_buffers(hidden, weight, needs, accumulate_fp32=False):
    """(dx, dw, db) to fill chunk by chunk (None where not needed). dW lives in the weight's dtype and is
    summed in place, one rounding per chunk, as Liger does (16-bit weights: half the memory of an fp32
    accumulator and no (V, H) temporary per chunk); ``accumulate_fp32`` keeps an fp32 one instead. dB is
    fp32 (it is small)."""
    need_dx, need_dw, need_db = needs
    acc = acc_dtype(hidden)
    dx = torch.empty_like(hidden) if need_dx else None
    dw = torch.zeros(weight.shape, device=weight.device, dtype=acc if accumulate_fp32 else weight.dtype) \
        if need_dw else None
    db = torch.zeros(weight.shape[0], device=weight.device, dtype=acc) if need_db else None
    return dx, dw, db


def product_weight(weight, d_dtype):
    """The weight the gradient products use: the weight itself (16-bit products on tensor cores), or, for fp16
    weights with wider logit gradients, an fp32 copy made once per call: fp16 would flush small logit
    gradients (p / tokens) to 0."""
    return weight.to(d_dtype) if weight.dtype == torch.float16 and d_dtype != torch.float16 else weight


def accumulate_grads(d, hidden_chunk, weight, rows, dx, dw, db):
    """Add one chunk's logit gradient ``d`` (chunk, V) into dX rows, dW and dB (buffers of grad_buffers);
    ``weight`` is ``product_weight``'s, whose dtype the products run in."""
    hidden_chunk = hidden_chunk if hidden_chunk.dtype == weight.dtype else hidden_chunk.to(weight.dtype)
    d_mm = d if d.dtype == weight.dtype else d.to(weight.dtype)
    if dx is not None and dx.dtype == weight.dtype and dx[rows].is_contiguous() and not torch.is_grad_enabled():
        torch.mm(d_mm, weight, out=dx[rows])
    elif dx is not None:
        dx[rows] = (d_mm @ weight).to(dx.dtype)
    if dw is not None and dw.dtype == weight.dtype:  # in place: the GEMM adds into dW with beta = 1
        dw.addmm_(d_mm.t(), hidden_chunk)
    elif dw is not None:  # an accumulator of another dtype than the products
        _add_product(dw, d_mm.t(), hidden_chunk)
    if db is not None:
        db += d.sum(dim=0, dtype=db.dtype)


_FP32_OUT_GEMM = {}  # "works": whether torch.addmm(..., out_dtype=torch.float32, out=acc) runs on CUDA; "why"


def _add_product(acc, a, b):
    """acc += a @ b for 16-bit a, b and an fp32 acc. On CUDA one GEMM with fp32 output adds into acc in place
    (torch's `out_dtype` overload, CUDA-only, and in older torch versions refused for an fp32 `acc`): no
    temporary, no rounding of the product to 16 bits. Where it does not run, the 16-bit product is formed
    (one (V, H) temporary) and added."""
    if acc.is_cuda and acc.dtype == torch.float32 and a.dtype in (torch.float16, torch.bfloat16) \
            and _fp32_output_gemm_works(a, b):
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc.add_(a @ b)


def _fp32_output_gemm_works(a, b) -> bool:
    """Tried once per process on a 2 x 2 product; `fp32_output_gemm()` says what was found."""
    if "works" not in _FP32_OUT_GEMM:
        try:
            probe = torch.zeros((2, 2), device=a.device)
            torch.addmm(probe, a[:2, :1], b[:1, :2], out_dtype=torch.float32, out=probe)
            _FP32_OUT_GEMM["works"] = True
        except (TypeError, RuntimeError, NotImplementedError) as exc:  # not an out-of-memory: 16 bytes
            _FP32_OUT_GEMM.update(works=False, why=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    return _FP32_OUT_GEMM["works"]


def fp32_output_gemm() -> dict:
    """What `_add_product` found on CUDA in this process: {"works": True/False, "why": the refusal}, or {}."""
    return dict(_FP32_OUT_GEMM)


def _cast(grad, like, dtype=None):
    """grad in `dtype`, or in the dtype of `like` (the parameter it belongs to) when dtype is None."""
    return None if grad is None else grad.to(dtype or like.dtype)


def ce_stats(logits, labels, softcap, chunk):
    out = [torch.empty(logits.shape[0], device=logits.device, dtype=acc_dtype(logits)) for _ in range(3)]
    for start in range(0, logits.shape[0], chunk):
        sl = slice(start, start + chunk)
        z = logits[sl].to(acc_dtype(logits))
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        for dst, src in zip(out, _row_stats(z, labels[sl])):
            dst[sl] = src
    return tuple(out)


def ce_grad(logits, labels, softcap, lse, ga, gb, gc, chunk):
    dz = torch.empty_like(logits)
    for start in range(0, logits.shape[0], chunk):
        sl = slice(start, start + chunk)
        z = logits[sl].to(acc_dtype(logits))
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        dz[sl] = _row_grad(z, labels[sl], softcap, lse[sl], ga[sl], gb[sl], gc[sl]).to(dz.dtype)
    return dz


def flce_stats_and_grads(hidden, weight, bias, labels, softcap, coefficients, needs, chunk,
                         need_sum=True, accumulate_fp32=False, grad_dtype=None):
    """One pass: per-token stats and the gradients of a loss whose derivative is known up front.

    ``coefficients(lse_chunk, rows)`` returns that chunk's ``dL/d(lse, zy, sz)``. Each chunk's
    logits are computed once and turned into their gradient in place, so training costs three
    matmul passes instead of four (no recomputation in backward), and softmax is formed from the
    same exponentials as the log-sum-exp. ``need_sum=False`` skips ``sum z`` (only label smoothing
    uses it) and reports 0; its coefficient (``dL/d sum z``) must then be 0, and is not added.
    """
    acc = acc_dtype(hidden)
    stats = [torch.empty(hidden.shape[0], device=hidden.device, dtype=acc) for _ in range(3)]
    dx, dw, db = grad_buffers(hidden, weight, needs, accumulate_fp32)
    w_mm = product_weight(weight, acc)
    buffer = logits_buffer(hidden, weight, bias, chunk)
    for start in range(0, hidden.shape[0], chunk):
        sl = slice(start, start + chunk)
        y = labels[sl]
        z = _capped_logits(hidden[sl], weight, bias, softcap, out=buffer)
        valid = (y >= 0) & (y < z.shape[-1])
        rows = torch.nonzero(valid)[:, 0]
        stats[1][sl] = 0.0
        stats[1][start + rows] = z[rows, y[rows]]
        stats[2][sl] = z.sum(dim=-1) if need_sum else 0.0
        cap_grad = 1.0 - (z / softcap) ** 2 if softcap is not None else None
        top = z.amax(dim=-1)
        d = z.sub_(top[:, None]).exp_()  # the chunk's logits become exp(z - max) in place
        total = d.sum(dim=-1)
        lse = top + total.log()
        stats[0][sl] = lse
        ga, gb, gc = coefficients(lse, sl)
        d.mul_((ga / total)[:, None])  # a * softmax (+ c)
        if need_sum:
            d.add_(gc[:, None])
        d[rows, y[rows]] += gb[rows]
        if cap_grad is not None:
            d.mul_(cap_grad)
        del z
        accumulate_grads(d, hidden[sl], w_mm, sl, dx, dw, db)
    return tuple(stats), (dx, _cast(dw, weight, grad_dtype), _cast(db, bias, grad_dtype))
