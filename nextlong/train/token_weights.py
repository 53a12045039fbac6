"""Per-token loss weights of a training step (`--token-weighting dense|sparse|longce`).

A target's weight compares the model's log-probability of it with the whole prefix in view (the long
pass, the training forward's own) against a short-context scorer's with only the last `short_window`
tokens (`--scorer`, or the model in training); `nextlong.weighting` turns the two into weights. Kept
apart from the loop: a step asks `weigher(batch)` for (weights, plain cross-entropy) and nothing else.
Under sequence parallelism each rank scores its own slice of the targets and the group assembles whole
rows, since dense and sparse weights depend on whole rows.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch


def autocast(device: torch.device):
    """bf16 autocast on CUDA (the step's own); full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sequence_parallel(sp: int, group):
    """The context under which our attention splits a sequence over `group` (nothing when sp is 1)."""
    if sp == 1:
        return contextlib.nullcontext()
    from ..parallel import sequence_parallel as split

    return split(group)


def short_window(cfg, seq_len: int) -> int:
    """The scorer's window: --short-window, at most a quarter of the sequence (a longer one leaves no
    target outside it to weigh)."""
    return max(1, min(cfg.short_window, seq_len // 4))


def plain_ce_sum(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of -log p over the targets (columns 1.. of the weighting layout; masked ones may hold garbage)."""
    lp = logprobs[:, 1:].double()
    return -torch.where(mask[:, 1:], lp, torch.zeros_like(lp)).sum()


class TokenWeigher:
    """(token weights, the batch's plain cross-entropy summed over its targets) for one micro-batch.

    `long_logprobs(batch)`: the model's log-probability of each target (column t: target x_t), computed as
    the training forward computes it (under FSDP, through the wrapped model); `short_model`: the scorer of
    the short passes (--scorer, or the model in training)."""

    def __init__(self, cfg, *, seq_len: int, device: torch.device, long_logprobs: Callable, short_model,
                 sp: int = 1, sp_rank: int = 0, sp_group=None):
        self.cfg, self.device = cfg, device
        self.window = short_window(cfg, seq_len)
        self.long_logprobs, self.short_model = long_logprobs, short_model
        self.sp, self.sp_rank, self.sp_group = sp, sp_rank, sp_group

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weights aligned with labels, 0 where a label is ignored; the plain cross-entropy read off the
        weighting's own long pass, the unweighted loss a reader compares runs by, or None without
        weighting, where the loss is plain already)."""
        mask = batch["labels"] != -100
        if self.cfg.token_weighting == "none":
            return mask.float(), None
        if self.sp > 1:
            return self._sequence_parallel_rows(batch)
        with autocast(self.device):
            long = self.long_logprobs(batch)
            short = self._short_logprobs(batch["input_ids"])
        w = self._weights(long, short, mask, self._span_offsets(batch, batch["input_ids"].shape))
        return w, plain_ce_sum(long, mask)

    def _sequence_parallel_rows(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights of this rank's slice, equal to the single-process ones: the rank scores its own
        targets (global tokens a+1 .. a+n; the long pass under Ulysses, the short pass on the windows the
        whole row would use, 1/N of the scorer's work), the group assembles whole rows of scores, and each
        rank keeps its slice."""
        from ..parallel import assemble_rows

        ids, labels = batch["input_ids"], batch["labels"]
        n = ids.shape[1]
        a, total = self.sp_rank * n, n * self.sp
        rows = lambda part, start: assemble_rows(part, start, total, self.sp_group)  # noqa: E731
        whole_ids = rows(ids, a)
        with autocast(self.device):
            with sequence_parallel(self.sp, self.sp_group):
                long = rows(self.long_logprobs(batch)[:, 1:], a + 1)
            short = self._short_logprobs(whole_ids, targets=(a + 1, a + n + 1))
        short = rows(short[:, a + 1:a + n + 1], a + 1)
        mask = rows(labels[:, :n], a) != -100  # local label column j is global column a + j
        w = self._weights(long, short, mask, self._span_offsets(batch, whole_ids.shape))
        local = torch.zeros(labels.shape, dtype=w.dtype, device=w.device)
        mine = w[:, a + 1:a + n + 1]  # the last rank's last column (past the row's end) stays 0
        local[:, 1:1 + mine.shape[1]] = mine
        # every rank of the group holds the whole rows: its share of their sum, so the global sum counts each once
        return local, plain_ce_sum(long, mask) / self.sp

    def _short_logprobs(self, input_ids: torch.Tensor, targets=None) -> torch.Tensor:
        from ..weighting import short_context_logprobs

        return short_context_logprobs(self.short_model, input_ids, self.window, stride=self.cfg.short_stride,
                                      targets=targets)

    @staticmethod
    def _span_offsets(batch: dict, shape) -> torch.Tensor:
        """Each position of the whole rows' distance from its attention span's start (column t: target x_t)."""
        from ..weighting import span_offsets

        return span_offsets(batch["cu_seq_lens_q"], shape[0], shape[1])

    def _weights(self, long: torch.Tensor, short: torch.Tensor, mask: torch.Tensor,
                 offsets: torch.Tensor) -> torch.Tensor:
        """Weights of whole rows from both passes' log-probabilities; `offsets`: each target's distance from
        its span's start (a target whose span prefix fits the window scores 0)."""
        from .. import weighting as W

        cfg = self.cfg
        short = W.short_logprobs_with_full_prefix(short, long, self.window, offsets.to(long.device))
        if cfg.token_weighting == "longce":
            return W.longce_weights(long, short, mask, gamma=cfg.longce_gamma)
        scores = W.token_scores(long, short, absolute=True)
        if cfg.token_weighting == "dense":
            return W.dense_weights(scores, mask, lam=cfg.dense_lam)
        return W.sparse_weights(scores, mask, keep=cfg.sparse_keep)
