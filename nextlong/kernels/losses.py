"""Cross-entropy with per-token weights that never materialises the full ``(N, V)`` logits.

Two entry points with the same options:

* :func:`fused_linear_cross_entropy` takes the last hidden state and the output projection
  (``lm_head``) and computes logits tile by tile (Triton on CUDA, chunks of tokens on CPU).
* :func:`cross_entropy` takes logits the caller already has.

Semantics, per non-ignored token ``t`` with label ``y``, over a vocabulary of size ``V``::

    z      = hidden_t @ weight.T + bias                  (fp32 accumulation)
    z      = softcap * tanh(z / softcap)                 (only if logit_softcap is given; first)
    lse    = logsumexp_v z_v
    ce_t   = (1 - eps) * (lse - z_y) + eps * (lse - mean_v z_v)     (eps = label_smoothing)
    loss_t = ce_t + z_loss * lse ** 2

which is exactly ``F.cross_entropy(softcapped_logits, y, label_smoothing=eps)`` plus the z-loss
term, per token (up to fp32 rounding of ``lse - z_y``: about |z| x 6e-8 absolute, below 1e-5 at language-model
logit scales; the gradients come from the softmax and do not lose it). With token weights ``w`` (``w = 1`` when omitted; ignored tokens get ``w = 0``):

* ``reduction="none"``: ``w_t * loss_t`` with the shape of ``labels`` (0 at ignored positions);
* ``reduction="sum"``:  ``sum_t w_t * loss_t``;
* ``reduction="mean"``: ``sum_t w_t * loss_t / sum_t w_t`` (0, not NaN, when every token is ignored); a
  negative weight at a non-ignored token is refused (the divisor would stop being a count of tokens).

The z-loss is weighted and reduced like the cross-entropy. Gradients flow to ``hidden``,
``weight``, ``bias`` (and ``logits``); ``token_weights`` are treated as constants (detached, no
gradient), as the weighting schemes of ``nextlong.weighting`` intend. The loss is returned in fp32 (fp64 for fp64 inputs).

Implementation: an autograd function reduces the logits to three per-token fp32 statistics
(``lse``, ``z_y``, ``sum_v z_v``); every option above is ordinary PyTorch on those O(N) vectors,
and backward hands their gradients back to a kernel that recomputes logits tile by tile (Triton;
see ``_ce_triton`` for the memory/time trade-off) or chunk by chunk (PyTorch fallback). When the
fallback trains with a scalar reduction it instead computes the gradients during forward, chunk
by chunk, saving the recomputation (see ``_ChunkedLinearLoss``). Neither path ever holds more
than one chunk/tile of logits.
"""

from __future__ import annotations

import torch

from . import _ce_reference as _ref
from ._autocast import autocast_inputs
from ._autograd import first_order_only, require_tensors

_REDUCTIONS = ("mean", "sum", "none")
_BACKENDS = ("auto", "triton", "chunked", "torch")


def _triton_module():
    from . import _ce_triton  # imported lazily: triton is optional for CPU users

    return _ce_triton


def _pick_backend(backend: str, tensor: torch.Tensor, cuda_default: str = "triton") -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return cuda_default if tensor.is_cuda else "torch"
    if backend in ("triton", "chunked") and not tensor.is_cuda and not _triton_module().interpreting():
        raise ValueError(
            f"backend={backend!r} needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter); "
            "use backend='torch' or 'auto' on CPU")
    if backend in ("triton", "chunked") and tensor.dtype == torch.float64:
        # their statistics are fp32 (the loss would come back in fp32, not fp64 as documented)
        raise ValueError(f"backend={backend!r} takes fp32, bf16 or fp16; fp64 runs on backend='torch' (what "
                         "'auto' picks for it)")
    return backend


class _LinearStats(torch.autograd.Function):
    """(hidden, weight, bias) -> per-token (lse, z_y, sum z) of the soft-capped logits."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, softcap, backend, chunk, accumulate_fp32, compute_dtype):
        w, b = _lowered(weight, bias, compute_dtype)
        with _no_autocast(hidden):
            if backend == "triton":
                stats = _triton_module().flce_stats(hidden, w, b, labels, softcap)
            elif backend == "chunked":
                stats = _triton_module().chunked_stats(hidden, w, b, labels, softcap, chunk)
            else:
                stats = _ref.flce_stats(hidden, w, b, labels, softcap, chunk)
        # the parameters as given (fp32 masters are lowered again in backward, not kept lowered in between)
        ctx.save_for_backward(hidden, weight, bias, labels, stats[0])
        ctx.softcap, ctx.backend, ctx.chunk, ctx.accumulate_fp32 = softcap, backend, chunk, accumulate_fp32
        ctx.compute_dtype = compute_dtype
        return stats

    @staticmethod
    @first_order_only
    def backward(ctx, g_lse, g_zy, g_sz):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        grad_dtype = weight.dtype if ctx.compute_dtype is not None else None  # fp32 masters get fp32 grads
        weight, bias = _lowered(weight, bias, ctx.compute_dtype)
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                 bias is not None and ctx.needs_input_grad[2])
        g = [x.to(lse.dtype).contiguous() for x in (g_lse, g_zy, g_sz)]
        with _no_autocast(hidden):
            if ctx.backend == "triton":
                dx, dw, db = _triton_module().flce_grads(
                    hidden, weight, bias, labels, ctx.softcap, lse, *g, needs)
            elif ctx.backend == "chunked":
                dx, dw, db = _triton_module().chunked_grads(
                    hidden, weight, bias, labels, ctx.softcap, lse, *g, needs, ctx.chunk, ctx.accumulate_fp32,
                    grad_dtype=grad_dtype)
            else:
                dx, dw, db = _ref.flce_grads(
                    hidden, weight, bias, labels, ctx.softcap, lse, *g, needs, ctx.chunk, ctx.accumulate_fp32,
                    grad_dtype=grad_dtype)
        return dx, dw, db, None, None, None, None, None, None


def _no_autocast(tensor):
    """The kernels pick their own dtypes; autocast must not recast their products (fp16 autocast would turn
    the fp32 gradient products of fp16 weights back into fp16)."""
    return torch.autocast(tensor.device.type, enabled=False)


def _lowered(weight, bias, compute_dtype):
    """The parameters in the dtype the matmuls run in (autocast's), when they were passed as fp32 masters."""
    if compute_dtype is None:
        return weight, bias
    return weight.to(compute_dtype), None if bias is None else bias.to(compute_dtype)


class _LogitStats(torch.autograd.Function):
    """logits -> per-token (lse, z_y, sum z) of the soft-capped logits."""

    @staticmethod
    def forward(ctx, logits, labels, softcap, backend, chunk):
        if backend == "triton":
            stats = _triton_module().ce_stats(logits, labels, softcap)
        else:
            stats = _ref.ce_stats(logits, labels, softcap, chunk)
        ctx.save_for_backward(logits, labels, stats[0])
        ctx.softcap, ctx.backend, ctx.chunk = softcap, backend, chunk
        return stats

    @staticmethod
    @first_order_only
    def backward(ctx, g_lse, g_zy, g_sz):
        logits, labels, lse = ctx.saved_tensors
        g = [x.to(lse.dtype).contiguous() for x in (g_lse, g_zy, g_sz)]
        if ctx.backend == "triton":
            dz = _triton_module().ce_grad(logits, labels, ctx.softcap, lse, *g)
        else:
            dz = _ref.ce_grad(logits, labels, ctx.softcap, lse, *g, ctx.chunk)
        return dz, None, None, None, None


class _ChunkedLinearLoss(torch.autograd.Function):
    """Scalar ("mean"/"sum") loss in chunks of tokens, gradients computed during forward.

    For a scalar reduction the derivative of the loss w.r.t. each token's (lse, z_y, sum z) is
    known as soon as that token's lse is: ``s*(1 + 2*z_loss*lse)``, ``-(1-eps)*s`` and
    ``-eps*s/V`` with ``s = w / sum(w)`` ("mean") or ``s = w`` ("sum"). Forward therefore turns
    each chunk's logits into their gradient right away (Liger-style) and backward only scales
    the stored gradients by the incoming scalar: 3 matmul passes instead of 4. The stored
    gradients are exactly what backward would allocate anyway, right when the loss (the last op
    of a forward pass) is computed, so peak memory does not grow. ``rows="triton"`` does each chunk's
    row math with the Triton logit kernels on the chunk's 16-bit logits, in place (the CUDA default);
    ``rows="torch"`` in PyTorch on an fp32 copy (CPU).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, token_weights, softcap, chunk, reduction, eps, zl, rows,
                accumulate_fp32, compute_dtype):
        grad_dtype = weight.dtype if compute_dtype is not None else None  # fp32 masters get fp32 grads
        weight, bias = _lowered(weight, bias, compute_dtype)
        vocab = weight.shape[0]
        valid = labels >= 0
        w = valid.to(_ref.acc_dtype(hidden))
        if token_weights is not None:
            w = torch.where(valid, token_weights.reshape(-1).to(device=w.device, dtype=w.dtype), w)
        scale = w
        if reduction == "mean":
            denom = w.sum()
            scale = w / torch.where(denom == 0, torch.ones_like(denom), denom)

        def coefficients(lse, rows):
            s = scale[rows]
            ga = s * (1.0 + 2.0 * zl * lse) if zl else s
            return ga, -(1.0 - eps) * s, (-eps / vocab) * s

        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                 bias is not None and ctx.needs_input_grad[2])
        with _no_autocast(hidden):
            if rows == "triton":
                stats, grads = _triton_module().chunked_stats_and_grads(
                    hidden, weight, bias, labels, softcap, coefficients, needs, chunk, accumulate_fp32,
                    grad_dtype=grad_dtype)
            else:
                stats, grads = _ref.flce_stats_and_grads(hidden, weight, bias, labels, softcap, coefficients,
                                                         needs, chunk, need_sum=bool(eps),
                                                         accumulate_fp32=accumulate_fp32, grad_dtype=grad_dtype)
        ctx.grads = grads  # freed with the graph; neither inputs nor outputs, so no saved-tensor rules
        return _reduce(stats, labels, labels.shape, vocab, token_weights, reduction, eps, zl)

    @staticmethod
    @first_order_only
    def backward(ctx, grad_loss):
        scaled = tuple(None if g is None else g * grad_loss.to(g.dtype) for g in ctx.grads)
        return scaled + (None,) * 10


def _cuda_backend(dtype: torch.dtype) -> str:
    """backend="auto" on CUDA. bf16 and fp32: the chunked path. fp16: the fused kernels, which sum in fp32
    registers; the chunked path writes each logit's gradient (scaled by 1/tokens for a mean) in the input
    dtype, where fp16's range (smallest subnormal 6e-8) flushes it to 0 on large batches, and a loss scaler
    cannot help because the gradient is formed before it scales (bf16 has fp32's range). fp64: the PyTorch
    chunks, exact (the Triton row kernels compute in fp32)."""
    return {torch.float16: "triton", torch.float64: "torch"}.get(dtype, "chunked")


def _check_options(reduction, label_smoothing, z_loss, logit_softcap, chunk_size, scores):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if not 0.0 <= z_loss < float("inf"):  # NaN fails too
        raise ValueError(f"z_loss must be finite and >= 0, got {z_loss}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if not scores.is_floating_point():
        raise TypeError(f"hidden states and logits must be floating point, got {scores.dtype}")
    if logit_softcap is not None and not logit_softcap > 0:
        raise ValueError(f"logit_softcap must be > 0 or None, got {logit_softcap}")


def _flat_labels(labels: torch.Tensor, n: int, vocab: int, ignore_index: int,
                 mean_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The labels flat, -1 where ignored, after refusing out-of-range labels and (given `mean_weights`, the
    token weights of a "mean") negative weights, both read in one host sync."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or not -2**63 <= ignore_index < 2**63:
        raise ValueError(f"ignore_index must be an integer label value (64-bit), got {ignore_index!r}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.numel() != n:
        raise ValueError(f"labels has {labels.numel()} elements but there are {n} tokens")
    flat = labels.reshape(-1).long().contiguous()
    bad = (flat != ignore_index) & ((flat < 0) | (flat >= vocab))
    negative = torch.zeros_like(bad)
    if mean_weights is not None:
        # "mean" divides by sum(w): a negative weight made it a sign flip, and weights summing to 0 a plain sum
        negative = (flat != ignore_index) & (mean_weights.detach().reshape(-1).to(flat.device) < 0)
    any_bad, any_negative = torch.stack([bad.any(), negative.any()]).tolist()
    if any_negative:
        i = int(torch.nonzero(negative)[0, 0])
        raise ValueError(f"token_weights must be >= 0 with reduction='mean' (it divides by their sum), got "
                         f"{float(mean_weights.reshape(-1)[i])} at flat position {i}; signed weights need "
                         "reduction='sum' or 'none'")
    if any_bad:
        i = int(torch.nonzero(bad)[0, 0])
        raise ValueError(
            f"label {int(flat[i])} at flat position {i} is outside [0, {vocab}) and is not "
            f"ignore_index={ignore_index}")
    # The kernels treat any label outside [0, V) as "no target"; -1 is never a class.
    return torch.where(flat == ignore_index, torch.full_like(flat, -1), flat)


def _check_weight_shape(token_weights, labels) -> None:
    """token_weights pair with labels element for element: the same shape, or flat. Counting elements alone let a
    (T, B) beside (B, T) labels weight each token with another token's weight."""
    if token_weights is not None and tuple(token_weights.shape) not in (tuple(labels.shape), (labels.numel(),)):
        raise ValueError(f"token_weights {tuple(token_weights.shape)} must have the labels' shape "
                         f"{tuple(labels.shape)} (or be flat, ({labels.numel()},))")


def _reduce(stats, labels, shape, vocab, token_weights, reduction, label_smoothing, z_loss):
    lse, zy, sz = stats
    eps = float(label_smoothing)
    loss = lse - (1.0 - eps) * zy
    if eps:
        loss = loss - eps * sz / vocab
    if z_loss:
        loss = loss + z_loss * lse * lse
    valid = labels >= 0
    w = valid.to(lse.dtype)
    if token_weights is not None:  # its shape was checked against the labels' (_check_weight_shape)
        w = torch.where(valid, token_weights.detach().reshape(-1).to(device=lse.device, dtype=lse.dtype), w)
    weighted = torch.where(valid, loss, torch.zeros_like(loss)) * w
    if reduction == "none":
        return weighted.reshape(shape)
    total = weighted.sum()
    if reduction == "sum":
        return total
    denom = w.sum()
    return total / torch.where(denom == 0, torch.ones_like(denom), denom)


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    token_weights: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    backend: str = "auto",
    chunk_size: int | None = None,
    accumulate_fp32: bool | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T + bias`` against ``labels`` without the full logits.

    ``hidden`` is ``(..., H)``, ``weight`` ``(V, H)``, ``labels`` the leading shape of ``hidden``
    (any integer dtype), ``token_weights`` the same shape as ``labels``. Options and reductions
    are defined in the module docstring.

    Backends: ``"chunked"`` (CUDA's default for bf16 and fp32): chunks of tokens whose logits cuBLAS
    forms in the input dtype and the Triton logit kernels reduce, then turn into their gradient in place;
    ``"torch"`` (CPU's default, and CUDA's for fp64): the same chunks in PyTorch, on an fp32 copy of each
    chunk's logits; ``"triton"`` (CUDA's default for fp16, see ``_cuda_backend``): fused kernels that
    never hold a logit chunk and sum in fp32, least memory, slowest. ``chunk_size`` is tokens per
    chunk (default: 64 MiB of fp32 logits on CPU, 512 MiB worth on CUDA). A training loss with a scalar
    reduction forms each chunk's gradient in the same pass as its statistics (3 matmul passes); other
    reductions recompute the chunk's logits in backward (4).

    ``accumulate_fp32``: how the chunked paths sum dW over chunks when the matmuls run in 16 bits.
    False: in place in the 16-bit dtype, one rounding per chunk, as Liger-Kernel does (no fp32 (V, H)
    accumulator, no (V, H) temporary per chunk); the error grows with the number of chunks (measured on
    CPU at 64 chunks: 4% of max |dW| against 0.3% for fp32, docs/benchmarks.md). True: an fp32
    accumulator, at 2 bytes more per weight plus a 16-bit (V, H) product per chunk. None (default):
    True when ``weight`` is fp32 (mixed precision with fp32 master weights: the parameter's gradient is
    fp32, so no per-chunk rounding is needed), False when it is 16-bit (the caller chose 16-bit
    gradients). Under autocast the chunked paths take fp32 parameters as they are and lower them
    themselves, so dW and dB leave the fp32 accumulator as they are, not rounded to the autocast dtype
    and back. The fused Triton kernels always accumulate in fp32.
    """
    require_tensors("fused_linear_cross_entropy", hidden=hidden, weight=weight, labels=labels, bias=bias,
                    token_weights=token_weights)
    _check_options(reduction, label_smoothing, z_loss, logit_softcap, chunk_size, hidden)
    if accumulate_fp32 is None:  # decided by the parameter's own dtype, before autocast lowers it
        accumulate_fp32 = weight.dtype in (torch.float32, torch.float64)
    params = (weight, bias)
    hidden, weight, bias = autocast_inputs(hidden, weight, bias)
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden (..., H) and weight (V, H) disagree: {tuple(hidden.shape)} vs {tuple(weight.shape)}")
    if 0 in weight.shape:  # failed deep inside ("index -1 is out of bounds", "cannot reshape tensor of 0 elements")
        raise ValueError(f"weight {tuple(weight.shape)} must have at least one vocabulary row and one hidden unit")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden and weight must share a dtype, got {hidden.dtype} and {weight.dtype}")
    if weight.device != hidden.device or (bias is not None and bias.device != hidden.device):
        # a weight left on "meta" (not loaded) gave the loss of all-zero logits, log(V), with no error
        raise ValueError(f"hidden, weight and bias must be on one device, got {hidden.device}, {weight.device}, "
                         f"{None if bias is None else bias.device}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if bias is not None and bias.dtype != weight.dtype:  # the matmul's own error named neither bias nor weight
        raise TypeError(f"bias and weight must share a dtype, got {bias.dtype} and {weight.dtype}")
    shape = labels.shape
    h2 = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    vocab = weight.shape[0]
    if labels.numel() != h2.shape[0] and labels.numel() == vocab:
        raise ValueError(f"labels has {labels.numel()} elements but hidden holds {h2.shape[0]} tokens, and weight "
                         f"{vocab} rows: were hidden and weight swapped? The order is (hidden, weight, labels); "
                         "Liger's fused loss takes (weight, hidden, labels)")
    lead = tuple(hidden.shape[:-1])
    if hidden.dim() > 2 and labels.numel() == h2.shape[0] and tuple(labels.shape) not in (lead, (h2.shape[0],)):
        # same count, other layout: a (T, B) beside (B, T, H) would pair tokens with other tokens' targets
        raise ValueError(f"labels {tuple(labels.shape)} must have hidden's leading shape {lead} (or be flat, "
                         f"({h2.shape[0]},))")
    _check_weight_shape(token_weights, labels)
    flat = _flat_labels(labels.to(h2.device), h2.shape[0], vocab, ignore_index,
                        token_weights if reduction == "mean" else None)
    # CUDA defaults to the chunked path: its matmuls run on cuBLAS, while the fused Triton backward (atomic
    # adds into dX and dW) measured 11.7x slower than Liger's fused linear CE on an H200, and the fused
    # forward alone reached 230 TFLOP/s (docs/benchmarks.md). backend="triton" still forces the fused kernels.
    which = _pick_backend(backend, h2, _cuda_backend(h2.dtype))
    chunk = chunk_size or _ref.default_chunk(h2.shape[0], vocab, h2.is_cuda)
    softcap = float(logit_softcap) if logit_softcap is not None else None
    w2 = weight.contiguous()
    b2 = None if bias is None else bias.contiguous()
    training = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias))
    # fp32 parameters that autocast lowered: the chunked paths lower them inside, so their gradients come
    # back in fp32 straight from the fp32 accumulator
    compute_dtype = None
    if which in ("chunked", "torch") and accumulate_fp32 and params[0].dtype == torch.float32 \
            and w2.dtype != torch.float32:
        compute_dtype = w2.dtype
        weight, bias = params  # drop autocast's lowered copies: the Function lowers its own
        w2, b2 = weight.contiguous(), None if bias is None else bias.contiguous()
    if which in ("chunked", "torch") and reduction != "none" and training:
        tw = None if token_weights is None else token_weights.detach()
        rows = "triton" if which == "chunked" else "torch"
        return _ChunkedLinearLoss.apply(h2, w2, b2, flat, tw, softcap, chunk, reduction, float(label_smoothing),
                                        float(z_loss), rows, bool(accumulate_fp32), compute_dtype)
    stats = _LinearStats.apply(h2, w2, b2, flat, softcap, which, chunk, bool(accumulate_fp32), compute_dtype)
    return _reduce(stats, flat, shape, vocab, token_weights, reduction, label_smoothing, z_loss)


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    token_weights: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    backend: str = "auto",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Same loss as :func:`fused_linear_cross_entropy` for precomputed ``logits`` of shape ``(..., V)``.

    The vocabulary is the *last* dimension and ``labels`` has the leading shape, as in a language
    model's ``(batch, seq, V)`` logits; ``F.cross_entropy`` instead takes classes in dimension 1
    (``(N, V, d1, ...)``): transpose such logits first. The gradient w.r.t. ``logits`` has their shape
    and dtype; no fp32 copy of the logits is kept. Differentiable once (no double backward).
    """
    require_tensors("cross_entropy", logits=logits, labels=labels, token_weights=token_weights)
    _check_options(reduction, label_smoothing, z_loss, logit_softcap, chunk_size, logits)
    shape = labels.shape
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"labels {tuple(labels.shape)} must have the logits' leading shape {tuple(logits.shape[:-1])}: "
                         "the vocabulary is the last dimension of logits (F.cross_entropy's (N, V, ...) layout "
                         "puts it in dimension 1; move it last)")
    if logits.dim() == 0 or logits.shape[-1] == 0:  # failed inside: "cannot reshape tensor of 0 elements"
        raise ValueError(f"logits {tuple(logits.shape)} need a vocabulary (last) dimension of size 1 or more")
    _check_weight_shape(token_weights, labels)
    z2 = logits.reshape(-1, logits.shape[-1]).contiguous()
    vocab = z2.shape[1]
    flat = _flat_labels(labels.to(z2.device), z2.shape[0], vocab, ignore_index,
                        token_weights if reduction == "mean" else None)
    which = _pick_backend(backend, z2)
    chunk = chunk_size or _ref.default_chunk(z2.shape[0], vocab)
    softcap = float(logit_softcap) if logit_softcap is not None else None
    stats = _LogitStats.apply(z2, flat, softcap, which, chunk)
    return _reduce(stats, flat, shape, vocab, token_weights, reduction, label_smoothing, z_loss)
