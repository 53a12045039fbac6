"""Repeat probe: can the model fetch a token from `distance` positions back when it plainly helps?

A segment x of `distance` tokens is fed twice, [x; x]. On the second copy each token's earlier
occurrence sits exactly `distance` positions back, so a model that can attend that far copies it.
The probe reports the mean loss of x[1:] on the first copy (only the segment's own prefix helps),
the mean loss of the same tokens on the second copy, and their difference, the *repeat gain*
(second − first, nats per token; negative: the model retrieves from that far back).

This separates *can the model use far context* from *does natural text reward it*: the long-context
gain on held-out documents (`nextlong.eval.longppl`) mixes the two, and at small scale it is near 0
either because the model cannot look far or because the far text does not help predict the near.
A distance past the length a model was trained at shows whether length extension taught it to reach
there at all (induction-style copying, the mechanism behind retrieval heads).
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import LoadedModel, attention


@dataclass
class RepeatLoss:
    distance: int
    segments: int
    first: float    # mean loss of x[1:] on the first copy
    second: float   # mean loss of the same tokens on the second copy

    @property
    def gain(self) -> float:
        return self.second - self.first

    def summary(self) -> dict:
        return {"distance": self.distance, "segments": self.segments, "first": self.first,
                "second": self.second, "gain": self.gain}


def repeat_losses(lm: LoadedModel, docs: list[list[int]], distances: list[int], *, batch_size: int = 4,
                  progress: bool = True, max_length: int | None = None) -> list[RepeatLoss]:
    """For each distance d: the first d tokens x of every document with at least d tokens, each fed as
    [x; x] (2d tokens) in batches of `batch_size`. With `max_length` (the context a model is meant for),
    a distance with 2d > max_length feeds [x; x[:max_length - d]] instead: the repeated tokens still sit
    exactly d back, and both copies are scored on those same m = max_length - d tokens. A tokenizer that
    puts ids before a sequence (Llama-3's BOS) has them fed first: [prefix; x; x], scored as without them,
    and counted in `max_length`."""
    import torch
    from tqdm import tqdm

    from ..weighting import long_context_logprobs
    from .longppl import prefix_of

    prefix = prefix_of(lm)
    p = len(prefix)
    if max_length is not None:
        max_length -= p
    if any(d < 2 for d in distances):
        raise ValueError(f"repeat probe: every distance must be >= 2 tokens, got {distances}")
    if max_length is not None and any(max_length - d < 2 for d in distances):
        raise ValueError(f"repeat probe: every distance must be <= max_length - 2 = {max_length - 2}, got {distances}")
    results = []
    with torch.no_grad(), attention(lm.model, lm.prefill_attn):
        for d in distances:
            segments = [doc[:d] for doc in docs if len(doc) >= d]
            if not segments:
                raise ValueError(f"repeat probe: no document has {d} tokens (the longest has "
                                 f"{max(map(len, docs), default=0)})")
            m = d if max_length is None else min(d, max_length - d)  # tokens repeated
            first = second = 0.0
            for i in tqdm(range(0, len(segments), batch_size), desc=f"repeat d={d}", unit="batch",
                          dynamic_ncols=True, disable=not progress):
                x = torch.tensor(segments[i:i + batch_size], dtype=torch.long, device=lm.device)
                head = torch.tensor([prefix], dtype=torch.long, device=lm.device).expand(x.shape[0], p)
                lp = long_context_logprobs(lm.model, torch.cat([head, x, x[:, :m]], dim=1))[:, p:].float()
                first += float(-lp[:, 1:m].sum())           # x[1:m] after its own prefix
                second += float(-lp[:, d + 1:d + m].sum())  # the same tokens, d positions later
            n = len(segments) * (m - 1)
            results.append(RepeatLoss(d, len(segments), first / n, second / n))
    return results
