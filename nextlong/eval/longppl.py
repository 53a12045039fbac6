"""LongPPL (Fang et al.): perplexity on the tokens that need long context, beside plain perplexity.

A token is *key* when long context helps it a lot and the model then gets it right:
`log p(x | full context) − log p(x | last `short_window` tokens) > 2` and `log p(x | full) > −2`.
LongPPL = exp(mean loss over key tokens); PPL = exp(mean loss over all predicted tokens).

Who picks the key tokens matters. Fang et al. pick them with one fixed *evaluator* model, so every
evaluated model is scored on the same tokens: pass `key_masks` (from `key_token_masks` run on the
evaluator; `nextlong eval --longppl-evaluator`). Without it the evaluated model picks its own. That
self-selected LongPPL is below e² ≈ 7.39 by construction (a key token has loss < 2) and is measured on
a different token set for each model, so it does not compare models: a model better on every token can
get a higher one (it finds more key tokens, harder ones among them).

Tokens within the first `short_window` positions see their whole prefix either way, so they are never
key; a short window at least as long as the documents gives no key tokens (LongPPL is then null).
The short pass slides windows with `short_stride` (1 is exact; larger strides give each token
between `short_window` and `short_window + stride - 1` tokens of context, see
`nextlong.weighting.short_context_logprobs`).

The same two passes also give the *long-context gain*: the mean loss with the full context minus
the mean loss with the last `short_window` tokens only, over the tokens whose full context is longer
than the window (negative: the model uses the far context). `measure_documents` returns every sum
(`DocumentLosses`); `evaluate_longppl` is `nextlong eval`'s summary of them. Optionally it also runs
the *short-context perplexity*: the model on consecutive windows of a short length, each on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

from .haystack import CorpusTooSmallError
from .model import LoadedModel, attention

GAIN_THRESHOLD = 2.0
LOGPROB_THRESHOLD = -2.0


def long_documents(tokenizer, texts: Iterable[str], length: int, count: int,
                   what: str = "longppl", option: str = "--longppl-length") -> list[list[int]]:
    """The first `count` documents with at least `length` tokens, cut to `length` tokens (`what` and
    `option`: the measurement and the setting an error message names). Special-token strings in a document
    ("<|endoftext|>") are read as ordinary text, as in every prompt (`model.prompt_ids`)."""
    docs, longest = [], 0
    for text in texts:
        ids = tokenizer.encode_ordinary(text)
        longest = max(longest, len(ids))
        if len(ids) >= length:
            docs.append([int(i) for i in ids[:length]])
            if len(docs) == count:
                break
    if not docs:
        raise CorpusTooSmallError(f"{what}: no document of the corpus has {length} tokens (the longest has "
                                  f"{longest}); give a corpus of longer documents or a smaller {option}")
    return docs


def key_token_mask(logp_long, logp_short, gain: float = GAIN_THRESHOLD, floor: float = LOGPROB_THRESHOLD):
    """Bool mask of key tokens (position 0, which has no prediction, is never key)."""
    mask = ((logp_long - logp_short) > gain) & (logp_long > floor)
    mask[..., 0] = False
    return mask


def _exp_mean(total: float, n: int) -> float | None:
    return math.exp(total / n) if n else None


@dataclass
class DocumentLosses:
    """Loss sums over documents of `length` tokens (position 0 predicts nothing; positions 1..length-1
    are the predicted tokens). Means and perplexities are derived, so documents can be added one by one."""

    length: int
    short_window: int
    short_stride: int
    buckets: int = 32
    documents: int = 0
    tokens: int = 0
    loss_sum: float = 0.0
    key_tokens: int = 0
    key_loss_sum: float = 0.0
    far_tokens: int = 0  # positions > short_window: their full context is longer than the window
    far_loss_full: float = 0.0
    far_loss_short: float = 0.0
    key_tokens_from: str = "self"  # "self", or the evaluator model that chose the key tokens
    short_context_tokens: int = 0  # the optional short-context perplexity pass
    short_context_loss_sum: float = 0.0
    bucket_loss_sum: list = field(default_factory=list)
    bucket_tokens: list = field(default_factory=list)

    def __post_init__(self):
        if not self.bucket_loss_sum:
            self.bucket_loss_sum = [0.0] * math.ceil((self.length - 1) / self.bucket)
            self.bucket_tokens = [0] * len(self.bucket_loss_sum)

    @property
    def bucket(self) -> int:
        """Predicted positions per loss-by-position bucket (the last one may hold fewer)."""
        return max(1, math.ceil((self.length - 1) / self.buckets))

    def add(self, logp_long, logp_short, key_mask=None) -> None:
        """One document's log-probs, (length,) each, position t = log p(x_t | its context); `key_mask`:
        the key tokens an evaluator chose (default: this model's own, from these log-probs)."""
        loss = -logp_long[1:]
        self.documents += 1
        self.loss_sum += float(loss.sum())
        self.tokens += loss.numel()
        mask = key_token_mask(logp_long, logp_short) if key_mask is None else key_mask
        self.key_loss_sum += float(-logp_long[mask].sum())
        self.key_tokens += int(mask.sum())
        far = slice(self.short_window + 1, self.length)
        self.far_loss_full += float(-logp_long[far].sum())
        self.far_loss_short += float(-logp_short[far].sum())
        self.far_tokens += max(0, self.length - self.short_window - 1)
        for b in range(len(self.bucket_loss_sum)):
            part = loss[b * self.bucket:(b + 1) * self.bucket]
            self.bucket_loss_sum[b] += float(part.sum())
            self.bucket_tokens[b] += part.numel()

    @property
    def ppl(self) -> float | None:
        return _exp_mean(self.loss_sum, self.tokens)

    @property
    def longppl(self) -> float | None:
        return _exp_mean(self.key_loss_sum, self.key_tokens)

    @property
    def key_fraction(self) -> float:
        return self.key_tokens / self.tokens if self.tokens else 0.0

    @property
    def long_context_gain(self) -> float | None:
        """Mean loss with the full context minus with the last `short_window` tokens (negative = helps)."""
        return (self.far_loss_full - self.far_loss_short) / self.far_tokens if self.far_tokens else None

    @property
    def loss_far_full(self) -> float | None:
        return self.far_loss_full / self.far_tokens if self.far_tokens else None

    @property
    def short_ppl(self) -> float | None:
        return _exp_mean(self.short_context_loss_sum, self.short_context_tokens)

    def loss_by_position(self) -> dict:
        """Mean loss per bucket, at the centre of each bucket of predicted positions 1..length-1."""
        n, bucket = self.length - 1, self.bucket
        return {"bucket": bucket,
                "positions": [1 + b * bucket + (min(bucket, n - b * bucket) - 1) / 2
                              for b in range(len(self.bucket_loss_sum))],
                "loss": [s / k if k else None for s, k in zip(self.bucket_loss_sum, self.bucket_tokens)]}

    def summary(self) -> dict:
        """`nextlong eval`'s `longppl` entry (rounded to 6 decimals)."""
        curve = self.loss_by_position()
        return {
            "length": self.length,
            "documents": self.documents,
            "short_window": self.short_window,
            "short_stride": self.short_stride,
            "tokens": self.tokens,
            "key_tokens": self.key_tokens,
            "key_tokens_from": self.key_tokens_from,
            "key_fraction": round(self.key_fraction, 6),
            "longppl": None if self.longppl is None else round(self.longppl, 6),
            "ppl": None if self.ppl is None else round(self.ppl, 6),
            "loss_by_position": {**curve, "loss": [None if x is None else round(x, 6) for x in curve["loss"]]},
        }


def prefix_of(lm) -> list[int]:
    """The ids the model's tokenizer puts before a sequence (Llama-3's BOS; usually none), which every
    document fed here starts with, as in Fang et al.'s code (the tokenizer's default encode)."""
    return [int(i) for i in getattr(getattr(lm, "tokenizer", None), "prefix_ids", ())]


def scored_length(lm, length: int) -> int:
    """Document tokens scored per document of `length` fed tokens: the prefix takes its place in them."""
    return length - len(prefix_of(lm))


def _two_passes(lm: LoadedModel, doc: list[int], short_window: int, stride: int):
    """(log p with the full prefix, log p with the last `short_window` tokens) of each token of `doc`, on
    CPU, with the tokenizer's prefix ids fed first (their own log-probs are dropped)."""
    import torch

    from ..weighting import long_context_logprobs, short_context_logprobs

    prefix = prefix_of(lm)
    ids = torch.tensor([prefix + list(doc)], dtype=torch.long, device=lm.device)
    p = len(prefix)
    logp_long = long_context_logprobs(lm.model, ids)[0, p:].float().cpu()
    if short_window < ids.shape[1] - 1:
        logp_short = short_context_logprobs(lm.model, ids, short_window, stride=stride)[0, p:].float().cpu()
    else:  # every token sees its whole prefix in a window this long
        logp_short = logp_long.clone()
    return logp_long, logp_short


def key_token_masks(evaluator: LoadedModel, docs: list[list[int]], *, length: int | None = None,
                    short_window: int = 4096, short_stride: int = 1024, progress: bool = True) -> list:
    """The key tokens `evaluator` finds in each document (a bool mask over its first `length` tokens), to
    score other models on the same tokens (`measure_documents(..., key_masks=...)`)."""
    import torch
    from tqdm import tqdm

    length = scored_length(evaluator, length or len(docs[0]))
    stride = max(1, min(short_stride, short_window))
    masks = []
    with torch.no_grad(), attention(evaluator.model, evaluator.prefill_attn):
        for doc in tqdm(docs, desc="longppl key tokens (evaluator)", unit="doc", dynamic_ncols=True,
                        disable=not progress):
            masks.append(key_token_mask(*_two_passes(evaluator, doc[:length], short_window, stride)))
    return masks


def measure_documents(lm: LoadedModel, docs: list[list[int]], *, short_window: int = 4096, short_stride: int = 1024,
                      buckets: int = 32, length: int | None = None, short_context_length: int | None = None,
                      short_context_windows: int = 8, progress: bool = True, key_masks: list | None = None,
                      key_tokens_from: str = "self") -> DocumentLosses:
    """Long and short passes over the first `length` tokens of each document (default: the first
    document's length; every document must have that many); a tokenizer that puts ids before a sequence
    (Llama-3's BOS, `prefix_of`) has them fed first, in place of the document's last tokens, so what the
    model reads is still `length` tokens. `key_masks`: one per document, from
    `key_token_masks` on an evaluator model named by `key_tokens_from` (default: `lm` picks its own).
    With `short_context_length`, also the short-context perplexity: up to `short_context_windows`
    consecutive windows of that many tokens from the start of each whole document, each run on its own."""
    import torch
    from tqdm import tqdm

    from ..weighting import long_context_logprobs

    length = scored_length(lm, length or len(docs[0]))
    if key_masks is not None and (len(key_masks) != len(docs) or any(m.shape != (length,) for m in key_masks)):
        raise ValueError(f"key_masks: expected {len(docs)} masks of {length} tokens, one per document")
    stride = max(1, min(short_stride, short_window))
    sums = DocumentLosses(length=length, short_window=short_window, short_stride=stride, buckets=buckets,
                          key_tokens_from=key_tokens_from if key_masks is not None else "self")
    with torch.no_grad(), attention(lm.model, lm.prefill_attn):
        for d, doc in enumerate(tqdm(docs, desc="longppl documents", unit="doc", dynamic_ncols=True,
                                     disable=not progress)):
            logp_long, logp_short = _two_passes(lm, doc[:length], short_window, stride)
            sums.add(logp_long, logp_short, None if key_masks is None else key_masks[d])
            if short_context_length:
                prefix = prefix_of(lm)
                p, n = len(prefix), short_context_length - len(prefix)
                windows = [prefix + doc[i:i + n] for i in range(0, len(doc) - n + 1, n)][:short_context_windows]
                if windows:
                    w_ids = torch.tensor(windows, dtype=torch.long, device=lm.device)
                    lp = long_context_logprobs(lm.model, w_ids)[:, p + 1:].float()
                    sums.short_context_loss_sum += float(-lp.sum())
                    sums.short_context_tokens += lp.numel()
    return sums


def evaluate_longppl(lm: LoadedModel, docs: list[list[int]], *, short_window: int = 4096, short_stride: int = 1024,
                     buckets: int = 32, key_masks: list | None = None, key_tokens_from: str = "self",
                     progress: bool = True) -> dict:
    """LongPPL, PPL and the loss-by-position curve over `docs` (equal-length token lists); `key_masks`,
    `key_tokens_from` and `progress` as for `measure_documents`."""
    return measure_documents(lm, docs, short_window=short_window, short_stride=short_stride, buckets=buckets,
                             key_masks=key_masks, key_tokens_from=key_tokens_from, progress=progress).summary()
