"""Long-sequence attention with document masking: `flash_attention`.

Packed training sequences hold several documents; attention must be causal and must not cross a
document boundary. `flash_attention` takes the boundaries as flash-attn style `cu_seqlens` and skips
every block that no query may see, so cost and memory grow with the sum of squared document lengths,
not with the squared sequence length.

Layouts: packed `(total_tokens, heads, head_dim)` with `cu_seqlens` (int32, `[0, len_0, len_0+len_1,
..., total]`), or batched `(batch, seq, heads, head_dim)` without it (each row one document).

Mask, per document, query position i, key position j (0-based inside the document):
    allowed  iff  (not causal or j <= i) and (left < 0 or i - j <= left) and (right < 0 or j - i <= right)
`window=(left, right)` follows flash-attn's `window_size` (-1 = unbounded); `window=w` means `(w, w)`,
which with `causal=True` is "the current token and the `w` before it". transformers' `sliding_window=s`
is `window=s - 1`.

Backends: "triton" (CUDA fp16/bf16 at any head_dim up to 256, as flash-attn: 80 or 96 run in tiles
padded to 128 inside the kernel, no copy; or fp32 on any device in the interpreter with TRITON_INTERPRET=1,
which computes 16-bit dots wrongly and refuses them), "torch" (a chunked PyTorch implementation of the same
algorithm, any head_dim), "auto" = triton for CUDA fp16/bf16 tensors with head_dim <= 256, torch otherwise
(CPU, fp32, head_dim above 256). Differentiable once (no double backward). Unlike flash-attn's
`flash_attn_func`, `causal` defaults to True here (training a decoder); `nextlong.kernels.flash_attn_func`
keeps flash-attn's default (False).
"""

from __future__ import annotations

import math
import os

import torch

from . import _attn_reference as _ref
from ._autocast import autocast_inputs
from ._autograd import first_order_only, require_tensors

_MAX_TRITON_HEAD_DIM = 256  # flash-attn's limit too; the kernels' tile tables stop there


def _normalise_window(window, causal: bool) -> tuple[int, int]:
    if window is None:
        left, right = -1, -1
    elif isinstance(window, int):
        left, right = window, window
    else:
        try:
            left, right = (int(w) for w in window)
        except (TypeError, ValueError):
            raise ValueError(f"flash_attention: window must be None, an int or a (left, right) pair, got {window!r}")
    if left < -1 or right < -1:
        raise ValueError(f"flash_attention: window sizes must be >= 0 or -1 (unbounded), got {(left, right)}")
    if causal:
        right = -1  # the causal rule already bounds keys to j <= i
    return left, right


def _check(q, k, v, cu_seqlens):
    if cu_seqlens is None:
        if q.dim() != 4:
            raise ValueError("flash_attention: without cu_seqlens q must be (batch, seq, heads, head_dim), "
                             f"got {tuple(q.shape)}")
    else:
        if q.dim() != 3:
            raise ValueError("flash_attention: with cu_seqlens q must be (total_tokens, heads, head_dim), "
                             f"got {tuple(q.shape)}")
        check_cu_seqlens(cu_seqlens, q, "cu_seqlens")
    if k.shape[:-2] != q.shape[:-2]:
        raise ValueError(f"flash_attention: k and v must match q except in the head count: q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    check_heads(q, k, v)


def check_cu_seqlens(cu_seqlens, x, name: str, host: bool = False, caller: str = "flash_attention") -> None:
    """`cu_seqlens` splits x's rows: 1-D int32 [0, ..., total], non-decreasing. The values are checked on the
    host when they are there already (CPU) or when `host` says a sync is paid anyway."""
    if not torch.is_tensor(cu_seqlens) or cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 \
            or cu_seqlens.numel() < 2:
        raise ValueError(f"{caller}: {name} must be a 1-D int32 tensor [0, ..., total_tokens] (flash-attn "
                         f"convention), got {getattr(cu_seqlens, 'dtype', type(cu_seqlens).__name__)} shape "
                         f"{tuple(getattr(cu_seqlens, 'shape', ()))}")
    if cu_seqlens.device != x.device:
        raise ValueError(f"{caller}: {name} is on {cu_seqlens.device}, the tokens on {x.device}")
    if host or not cu_seqlens.is_cuda:  # free to check on the host; on a GPU it would cost a sync per call
        cu = cu_seqlens.tolist()
        if cu[0] != 0 or cu[-1] != x.shape[0] or any(b < a for a, b in zip(cu, cu[1:])):
            raise ValueError(f"{caller}: {name} must rise from 0 to total_tokens={x.shape[0]}, "
                             f"got {cu[:8]}{'...' if len(cu) > 8 else ''}")


def check_heads(q, k, v) -> None:
    """k and v alike, their head count dividing q's, one supported head_dim, dtype and device."""
    if k.shape != v.shape or k.dim() != q.dim() or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"flash_attention: k and v must match q except in the head count: q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    heads, kv_heads, dim = q.shape[-2], k.shape[-2], q.shape[-1]
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"flash_attention: k/v heads ({kv_heads}) must divide q heads ({heads}) "
                         "for grouped-query attention")
    if dim < 1:
        raise ValueError(f"flash_attention: head_dim must be positive, got {dim}")
    if not q.device == k.device == v.device:  # the torch backend returned garbage, the kernels read stray pointers
        raise ValueError(f"flash_attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError("flash_attention: q, k, v must share one of fp16/bf16/fp32, "
                         f"got {q.dtype}, {k.dtype}, {v.dtype}")


def _resolve_backend(backend: str, q: torch.Tensor) -> str:
    """"auto" made concrete (Triton for CUDA fp16/bf16 at head_dim <= 256, torch otherwise), and what cannot
    run refused."""
    dim = q.shape[-1]
    if backend == "auto":
        return "triton" if q.is_cuda and q.dtype != torch.float32 and dim <= _MAX_TRITON_HEAD_DIM else "torch"
    if backend not in ("triton", "torch"):
        raise ValueError(f"flash_attention: backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "triton":
        if not q.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise ValueError("flash_attention: backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU "
                             "interpreter); use backend='torch' or backend='auto' on CPU")
        if q.is_cuda and q.dtype == torch.float32:
            raise ValueError("flash_attention: the Triton kernels take fp16/bf16 on GPU (fp32 tiles do not fit the "
                             "tensor-core path); use backend='torch' or backend='auto' for fp32")
        if not q.is_cuda and q.dtype != torch.float32:
            raise ValueError(f"flash_attention: the Triton interpreter computes {q.dtype} dot products wrongly "
                             "(numpy has no 16-bit matmul); run it in fp32, or use backend='torch'")
        if dim > _MAX_TRITON_HEAD_DIM:
            raise ValueError(f"flash_attention: the Triton kernels take head_dim up to {_MAX_TRITON_HEAD_DIM}, "
                             f"got {dim}; backend='torch' (or 'auto') takes any")
    return backend


def _scale(softmax_scale, q: torch.Tensor) -> float:
    if softmax_scale is None:
        return 1.0 / math.sqrt(q.shape[-1])
    scale = float(softmax_scale)
    if not 0 < scale < math.inf:  # 0 or below gives NaN in the online softmax's max, nan and inf garbage
        raise ValueError(f"flash_attention: softmax_scale must be a positive finite number, got {softmax_scale!r}")
    return scale


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _torch_options(blocks):
    # A test-only tile size for the torch backend selects its chunked (non-fused) path with that chunk.
    return {} if blocks is None else {"chunk": blocks[0], "fused": False}


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, causal, left, right, scale, backend, blocks):
        if backend == "triton":
            from ._attn_triton import triton_attention_forward

            out, lse = triton_attention_forward(q, k, v, cu_seqlens, causal, left, right, scale, blocks)
        else:
            out, lse = _ref.torch_attention_forward(q, k, v, cu_seqlens, causal, left, right, scale,
                                                    **_torch_options(blocks))
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
        ctx.args = (causal, left, right, scale, backend, blocks)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    @first_order_only
    def backward(ctx, do, _dlse):
        q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
        causal, left, right, scale, backend, blocks = ctx.args
        if backend == "triton":
            from ._attn_triton import triton_attention_backward

            dq, dk, dv = triton_attention_backward(do, q, k, v, out, lse, cu_seqlens, causal, left, right, scale,
                                                   blocks)
        else:
            dq, dk, dv = _ref.torch_attention_backward(do, q, k, v, out, lse, cu_seqlens, causal, left, right,
                                                       scale, **_torch_options(blocks))
        return dq, dk, dv, None, None, None, None, None, None, None


def flash_attention(q, k, v, *, causal=True, cu_seqlens=None, max_seqlen=None, softmax_scale=None, window=None,
                    backend="auto", _blocks=None):
    """Exact softmax attention, memory O(tokens), with document masking, GQA and an optional sliding window.

    q: (total, H, D) with `cu_seqlens`, or (B, S, H, D); k, v: same with H_kv heads, H_kv dividing H
    (query head h uses kv head h // (H / H_kv), as transformers' `repeat_kv`). Returns q's shape and dtype.
    `max_seqlen` is accepted for flash-attn compatibility and not needed (no host sync either way).
    `softmax_scale` defaults to 1/sqrt(D). `_blocks` (tests only) overrides the tile sizes (and, for
    backend="torch", selects the chunked path instead of PyTorch's fused CPU kernel).
    """
    del max_seqlen
    return attention_with_lse(q, k, v, causal=causal, cu_seqlens=cu_seqlens, softmax_scale=softmax_scale,
                              window=window, backend=backend, _blocks=_blocks)[0]


def attention_with_lse(q, k, v, *, causal=True, cu_seqlens=None, softmax_scale=None, window=None, backend="auto",
                       _blocks=None):
    """`flash_attention`, also returning each query's log-sum-exp of its scaled scores (fp32, q's shape without
    head_dim: (total, H) or (B, S, H)), which ring-style wrappers need to merge partial results. The lse
    carries no gradient."""
    require_tensors("flash_attention", q=q, k=k, v=v)
    q, k, v = autocast_inputs(q, k, v)
    _check(q, k, v, cu_seqlens)
    left, right = _normalise_window(window, causal)
    backend = _resolve_backend(backend, q)
    scale = _scale(softmax_scale, q)

    batched = cu_seqlens is None
    if batched and q.shape[0] * q.shape[1] == 0:  # no token: nothing to attend (and no document to split)
        return q.new_zeros(q.shape) + 0 * (q.sum() + k.sum() + v.sum()), q.new_zeros(q.shape[:3], dtype=torch.float32)
    if batched:
        b, s = q.shape[:2]
        cu_seqlens = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device=q.device)
        q, k, v = (x.reshape(b * s, x.shape[2], x.shape[3]) for x in (q, k, v))
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    out, lse = _FlashAttention.apply(q, k, v, cu_seqlens, bool(causal), left, right, scale, backend, _blocks)
    if backend == "triton":  # the kernels keep it in base 2, laid out (heads, tokens)
        lse = (lse * math.log(2.0)).t()
    if batched:
        out, lse = out.reshape(b, s, *out.shape[1:]), lse.reshape(b, s, lse.shape[-1])
    return out, lse


def attention_backward(do, q, k, v, out, lse, *, cu_seqlens, causal=True, softmax_scale=None, window=None,
                       backend="auto"):
    """(dq, dk, dv) of `attention_with_lse` from its saved `out` and `lse` (packed layout, natural-log lse
    (total, H) as it returns it), without running the forward again: for ring-style wrappers, which merge
    partial results themselves and call each block's backward with the merged out and lse. A query row
    whose `do` is 0 contributes nothing, whatever its lse (+inf is allowed there)."""
    if cu_seqlens is None:
        raise ValueError("attention_backward: give cu_seqlens (the packed layout)")
    require_tensors("attention_backward", do=do, q=q, k=k, v=v, out=out, lse=lse)
    q, k, v = autocast_inputs(q, k, v)
    _check(q, k, v, cu_seqlens)
    if do.shape != q.shape or out.shape != q.shape or lse.shape != q.shape[:2]:
        raise ValueError(f"attention_backward: do and out must have q's shape {tuple(q.shape)} and lse "
                         f"{tuple(q.shape[:2])} (tokens, heads); got {tuple(do.shape)}, {tuple(out.shape)}, "
                         f"{tuple(lse.shape)}")
    left, right = _normalise_window(window, causal)
    backend = _resolve_backend(backend, q)
    scale = _scale(softmax_scale, q)
    q, k, v, out, do = (_last_dim_contiguous(x) for x in (q, k, v, out.to(q.dtype), do.to(q.dtype)))
    lse = lse.float()
    if backend == "triton":
        from ._attn_triton import triton_attention_backward

        return triton_attention_backward(do, q, k, v, out, (lse / math.log(2.0)).t().contiguous(), cu_seqlens,
                                         bool(causal), left, right, scale, None)
    return _ref.torch_attention_backward(do, q, k, v, out, lse.contiguous(), cu_seqlens, bool(causal), left, right,
                                         scale)


def cu_seqlens_from_lengths(lengths, device=None) -> torch.Tensor:
    """`cu_seqlens` (int32) for documents of the given lengths packed back to back."""
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:  # 2.5 became 2
        raise TypeError(f"cu_seqlens_from_lengths: lengths must be integers, got {lengths.dtype}")
    lengths = lengths.to(torch.int64)
    if not lengths.is_cuda and lengths.numel() and int(lengths.min()) < 0:  # (on a GPU: no sync for a check)
        raise ValueError(f"cu_seqlens_from_lengths: lengths must be 0 or more, got {int(lengths.min())}")
    out = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=lengths.device)
    out[1:] = torch.cumsum(lengths, 0)
    return out


__all__ = ["flash_attention", "attention_with_lse", "attention_backward", "cu_seqlens_from_lengths"]
