"""LongPPL (Fang et al.): perplexity on the tokens that need long context, beside plain perplexity.

A token is *key* when long context helps it a lot and the model then gets it right:
`log p(x | full context) − log p(x | last `short_window` tokens) > 2` and `log p(x | full) > −2`.
LongPPL = exp(mean loss over key tokens); PPL = exp(mean loss over all predicted tokens). Here the
evaluated model picks its own key tokens (the paper may use a separate evaluator model). Tokens
within the first `short_window` positions see their whole prefix either way, so they are never key;
a short window at least as long as the documents gives no key tokens (LongPPL is then null).
The short pass slides windows with `short_stride` (1 is exact; larger strides give each token
between `short_window` and `short_window + stride - 1` tokens of context, see
`nextlong.weighting.short_context_logprobs`).
"""

from __future__ import annotations

import math
from typing import Iterable

from .haystack import CorpusTooSmallError
from .model import LoadedModel, attention

GAIN_THRESHOLD = 2.0
LOGPROB_THRESHOLD = -2.0


def long_documents(tokenizer, texts: Iterable[str], length: int, count: int) -> list[list[int]]:
    """The first `count` documents with at least `length` tokens, cut to `length` tokens."""
    docs, longest = [], 0
    for text in texts:
        ids = tokenizer.encode(text)
        longest = max(longest, len(ids))
        if len(ids) >= length:
            docs.append([int(i) for i in ids[:length]])
            if len(docs) == count:
                break
    if not docs:
        raise CorpusTooSmallError(f"longppl: no document of the corpus has {length} tokens (the longest has "
                                  f"{longest}); give a corpus of longer documents or a smaller --longppl-length")
    return docs


def key_token_mask(logp_long, logp_short, gain: float = GAIN_THRESHOLD, floor: float = LOGPROB_THRESHOLD):
    """Bool mask of key tokens (position 0, which has no prediction, is never key)."""
    mask = ((logp_long - logp_short) > gain) & (logp_long > floor)
    mask[..., 0] = False
    return mask


def evaluate_longppl(lm: LoadedModel, docs: list[list[int]], *, short_window: int = 4096, short_stride: int = 1024,
                     buckets: int = 32) -> dict:
    """LongPPL, PPL and the loss-by-position curve over `docs` (equal-length token lists)."""
    import torch
    from tqdm import tqdm

    from ..weighting import long_context_logprobs, short_context_logprobs

    length = len(docs[0])
    stride = max(1, min(short_stride, short_window))
    bucket = max(1, math.ceil((length - 1) / buckets))
    loss_sum = [0.0] * math.ceil((length - 1) / bucket)
    loss_n = [0] * len(loss_sum)
    total_loss = key_loss = 0.0
    total_n = key_n = 0
    with torch.no_grad(), attention(lm.model, lm.prefill_attn):
        for doc in tqdm(docs, desc="longppl documents", unit="doc", dynamic_ncols=True):
            ids = torch.tensor([doc], dtype=torch.long, device=lm.device)
            logp_long = long_context_logprobs(lm.model, ids)[0].cpu()
            if short_window < length - 1:
                logp_short = short_context_logprobs(lm.model, ids, short_window, stride=stride)[0].cpu()
            else:
                logp_short = logp_long.clone()
            loss = -logp_long[1:]
            total_loss += float(loss.sum())
            total_n += loss.numel()
            mask = key_token_mask(logp_long, logp_short)
            key_loss += float(-logp_long[mask].sum())
            key_n += int(mask.sum())
            for b in range(len(loss_sum)):
                part = loss[b * bucket:(b + 1) * bucket]
                loss_sum[b] += float(part.sum())
                loss_n[b] += part.numel()
    return {
        "length": length,
        "documents": len(docs),
        "short_window": short_window,
        "short_stride": stride,
        "tokens": total_n,
        "key_tokens": key_n,
        "key_fraction": round(key_n / total_n, 6) if total_n else 0.0,
        "longppl": round(math.exp(key_loss / key_n), 6) if key_n else None,
        "ppl": round(math.exp(total_loss / total_n), 6) if total_n else None,
        "loss_by_position": {
            "bucket": bucket,
            # the centre of each bucket of predicted positions 1..length-1
            "positions": [1 + b * bucket + (min(bucket, length - 1 - b * bucket) - 1) / 2 for b in range(len(loss_sum))],
            "loss": [round(s / n, 6) if n else None for s, n in zip(loss_sum, loss_n)],
        },
    }
