"""Per-token loss weights for long-range language modelling (spec section 4).

Step (a) scores each token by how much long context helps predict it,
``s_t = log p_long(x_t | full context) - log p_short(x_t | last c tokens)``; step (b) turns scores
into weights for ``fused_linear_cross_entropy(..., token_weights=w)``, whose "mean" reduction is
``sum w*CE / sum w``. All functions work on the last dimension (one sequence per row), take an
optional boolean ``mask`` (True = a real target token; others get weight 0), and return detached
fp32 weights: the loss must not be differentiated through its own weights.

Log-probability layout used throughout: ``logp[..., t] = log p(x_t | x_<t)`` for ``t >= 1``;
entry 0 has no prediction and is 0 (mask it out, as labels do with -100). Weights use the same
layout as ``labels`` (the weight of predicting token ``t``), which is what
``nextlong.kernels.transformers_loss`` expects.

Example (LongCE with the model being trained as its own short-context scorer)::

    mask = labels != -100
    long = long_context_logprobs(model, input_ids)
    short = short_context_logprobs(model, input_ids, window=4096, stride=512)
    w = longce_weights(long, short, mask, gamma=5.0)
    loss = model(input_ids=input_ids, labels=labels, token_weights=w).loss  # patched model

Dense weighting as `nextlong train --token-weighting dense` does it (Helm et al.'s absolute score)::

    w = dense_weights(token_scores(long, short, absolute=True), mask)  # lam 0.25, as --dense-lam
"""

from __future__ import annotations

import math

import torch


def _valid(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(scores, dtype=torch.bool)
    if mask.shape != scores.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from scores {tuple(scores.shape)}")
    return mask.to(device=scores.device, dtype=torch.bool)


def token_scores(logp_long: torch.Tensor, logp_short: torch.Tensor, *, absolute: bool = False):
    """``log p_long - log p_short`` per token (large = needs long context).

    ``absolute=True`` gives ``|difference|`` (Helm et al.'s variant, which also up-weights tokens
    the long context makes *less* likely).
    """
    if logp_long.shape != logp_short.shape:
        raise ValueError(f"shapes differ: {tuple(logp_long.shape)} vs {tuple(logp_short.shape)}")
    s = logp_long.detach().float() - logp_short.detach().float()
    return s.abs() if absolute else s


def dense_weights(scores: torch.Tensor, mask: torch.Tensor | None = None, *, lam: float = 0.25):
    """``w = lam * s / mean(s) + (1 - lam)`` per row over valid tokens, so valid weights average 1.

    Negative scores count as 0 (the token does not need long context); a row whose valid scores
    are all 0 gets uniform weights. ``lam = 0`` is ordinary uniform training, ``lam = 1`` pure
    score weighting. The default 0.25 is `nextlong train --dense-lam`'s (the authors' 0.75 on the
    uniform part), which scores with ``token_scores(..., absolute=True)``.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    valid = _valid(scores, mask)
    s = torch.where(valid, scores.detach().float().clamp_min(0.0), torch.zeros((), device=scores.device))
    count = valid.sum(dim=-1, keepdim=True).clamp_min(1)
    mean = s.sum(dim=-1, keepdim=True) / count
    w_score = torch.where(mean > 0, s / torch.where(mean > 0, mean, torch.ones_like(mean)), 1.0)
    w = lam * w_score + (1.0 - lam)
    return torch.where(valid, w, torch.zeros_like(w))


def sparse_weights(scores: torch.Tensor, mask: torch.Tensor | None = None, *, keep: float = 0.3,
                   low: float = 0.0):
    """Weight 1 for the top ``ceil(keep * n_valid)`` tokens of each row by score, ``low`` for the rest.

    Ties are broken by position (earlier first). ``low = 0`` drops the other tokens.
    """
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep must be in [0, 1], got {keep}")
    valid = _valid(scores, mask)
    s = scores.detach().float().masked_fill(~valid, float("-inf"))
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(s.shape[-1], device=s.device).expand_as(order))
    n_keep = torch.ceil(valid.sum(dim=-1, keepdim=True) * keep - 1e-9).long()
    w = torch.where(rank < n_keep, 1.0, float(low))
    return torch.where(valid, w, torch.zeros_like(w))


def longce_weights(logp_long: torch.Tensor, logp_short: torch.Tensor, mask=None, *,
                   gamma: float = 5.0):
    """LongCE (Fang et al.): ``min(exp(log p_long - log p_short), gamma)``."""
    lsd = token_scores(logp_long, logp_short)
    valid = _valid(lsd, mask)
    w = torch.exp(lsd.clamp_max(math.log(gamma))).clamp_max(gamma)
    return torch.where(valid, w, torch.zeros_like(w))


def span_offsets(cu_seqlens: torch.Tensor, rows: int, length: int) -> torch.Tensor:
    """(rows, length) int64: each position's distance from the start of its attention span (`cu_seqlens`:
    the span boundaries over the flattened rows, as the trainer's batches carry them)."""
    flat = torch.arange(rows * length, device=cu_seqlens.device)
    cu = cu_seqlens.to(torch.int64)
    return (flat - cu[torch.searchsorted(cu, flat, right=True) - 1]).view(rows, length)


def short_logprobs_with_full_prefix(logp_short: torch.Tensor, logp_long: torch.Tensor, window: int,
                                    offsets: torch.Tensor | None = None):
    """``logp_short`` with the targets whose whole prefix fits in the short window taken from ``logp_long``.

    Long context cannot help them: score 0, LongCE weight 1 (Fang et al.'s code sets w = 1 on the first
    window). With the model as its own scorer the two passes agree there anyway, up to rounding; a
    separate short-context scorer would otherwise weight those tokens by its gap to the model being
    trained, not by context. The prefix is the target's attention span's (`offsets`, `span_offsets`),
    default the whole row: in a row packing several documents, the short windows run over the raw row,
    so a document's first tokens would otherwise be scored against the end of the one before it.
    """
    if logp_long.shape != logp_short.shape:
        raise ValueError(f"shapes differ: {tuple(logp_long.shape)} vs {tuple(logp_short.shape)}")
    if offsets is None:
        offsets = torch.arange(logp_long.shape[-1], device=logp_long.device)
    return torch.where(offsets.to(logp_long.device) <= window, logp_long.to(logp_short.dtype), logp_short)


# ---- log-probabilities from a HuggingFace causal LM, through the fused loss (no full logits) ----


def _target_logprobs(model, input_ids: torch.Tensor, last: int | None = None) -> torch.Tensor:
    """log p(x_t | x_<t) for t >= 1 of every row, with column 0 set to 0. Shape (B, T), fp32.

    ``last``: only the last ``last`` targets' log-probabilities, shape (B, last). The vocabulary projection
    (the fused loss) then runs on those positions only: `short_context_logprobs` keeps the last ``stride``
    targets of each window, and projecting the other ``window - 1`` cost most of its time at a large
    vocabulary. Each target's value is the same either way, up to the last bit where BLAS rounds a product of
    very few rows differently (tests/test_weighting.py).
    """
    from nextlong.kernels.losses import fused_linear_cross_entropy
    from nextlong.kernels.transformers_loss import fold_logit_scale, logit_scale_of, logit_softcap_of

    if last is not None and not 1 <= last < input_ids.shape[1]:
        raise ValueError(f"last must be in 1..{input_ids.shape[1] - 1} (targets of a row), got {last}")
    head = model.get_output_embeddings()
    hidden = model.get_decoder()(input_ids=input_ids).last_hidden_state
    hidden, bias = fold_logit_scale(hidden, head.bias, logit_scale_of(model))  # Granite, Cohere, ...
    src, tgt = (hidden[:, :-1], input_ids[:, 1:]) if last is None else (hidden[:, -last - 1:-1], input_ids[:, -last:])
    ce = fused_linear_cross_entropy(src, head.weight, tgt, bias=bias, reduction="none",
                                    logit_softcap=logit_softcap_of(model))
    if last is not None:
        return -ce.float()
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=ce.device)
    out[:, 1:] = -ce.float()
    return out


@torch.no_grad()
def long_context_logprobs(model, input_ids: torch.Tensor) -> torch.Tensor:
    """``log p(x_t | x_0..x_{t-1})`` with the full context, layout as in the module docstring."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
    return _target_logprobs(model, input_ids)


@torch.no_grad()
def short_context_logprobs(model, input_ids: torch.Tensor, window: int, *, stride: int = 1,
                           batch_size: int = 64, targets: tuple[int, int] | None = None) -> torch.Tensor:
    """``log p(x_t | x_{t-window}..x_{t-1})``: each token sees only its last ``window`` tokens.

    Tokens with ``t <= window`` have their whole prefix anyway and come from one forward pass over
    the first ``window + 1`` tokens. Later tokens are scored in blocks of ``stride``: block ``j``
    holds targets ``t0 .. t0 + stride - 1`` with ``t0 = window + 1 + j * stride`` and runs one
    window ``x[t0 - window : t0 + stride]``, so target ``t`` sees ``window + (t - t0)`` tokens.
    ``stride=1`` (default) is exact; larger strides approximate it (context between ``window``
    and ``window + stride - 1`` tokens) at ``(window + stride) / stride`` model tokens per token
    instead of ``window + 1`` (the vocabulary projection runs on the ``stride`` targets a window keeps only,
    since 2026-12-08). Windows restart positions at 0, as for a model that only saw the
    window; equal-length windows are stacked without padding and run ``batch_size`` at a time.

    ``targets=(start, stop)`` scores only the targets ``start <= t < stop`` (the rest stay 0) with
    the windows the whole row would use, so the ranks of a sequence-parallel group can each score
    their own slice and together give the whole row's values.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got window={window}, stride={stride}")
    b, t = input_ids.shape
    lo, hi = (1, t) if targets is None else (max(1, int(targets[0])), min(t, int(targets[1])))
    out = torch.zeros((b, t), dtype=torch.float32, device=input_ids.device)
    if lo >= hi:
        return out
    head = min(t, window + 1)
    if lo < head:
        out[:, lo:min(hi, head)] = _target_logprobs(model, input_ids[:, :head])[:, lo:min(hi, head)]
    full, rest = divmod(t - head, stride)
    span = window + stride
    # blocks j0 .. j1 - 1 hold the wanted targets; block j's window covers tokens 1 + j*stride ..
    # window + (j+1)*stride, and its last `stride` tokens are targets head + j*stride ..
    j0 = max(0, (lo - head) // stride)
    j1 = min(full, max(0, -(-(hi - head) // stride)))
    if j1 > j0:
        wins = input_ids[:, 1 + j0 * stride:1 + j1 * stride + window].unfold(1, span, stride)
        flat = wins.reshape(-1, span)
        scored = torch.empty((flat.shape[0], stride), dtype=torch.float32, device=input_ids.device)
        for start in range(0, flat.shape[0], batch_size):
            scored[start:start + batch_size] = _target_logprobs(model, flat[start:start + batch_size], last=stride)
        first = head + j0 * stride
        a, z = max(lo, first), min(hi, head + j1 * stride)
        out[:, a:z] = scored.reshape(b, (j1 - j0) * stride)[:, a - first:z - first]
    t0 = head + full * stride
    if rest and hi > t0:
        out[:, max(lo, t0):hi] = _target_logprobs(model, input_ids[:, t0 - window:], last=rest)[:, max(lo, t0) - t0:hi - t0]
    return out
