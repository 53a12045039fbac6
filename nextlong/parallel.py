"""Ulysses sequence parallelism for attention: `ulysses_attention`.

A packed sequence too long for one device is split by tokens over the N ranks of a process group: rank r
holds tokens [r * T/N, (r + 1) * T/N). Everything but attention works token by token, so it runs on the
local slice. Attention needs whole sequences, so an all-to-all trades the token split for a head split
(each rank then holds every token of H/N query heads), the varlen attention runs on whole documents with
the global `cu_seqlens`, and a second all-to-all trades back (DeepSpeed-Ulysses, Jacobs et al. 2023).
Both all-to-alls are differentiable: the backward is the reverse exchange.

Heads: the query heads must be divisible by N. Key/value heads divisible by N are split the same way
(query head h keeps its kv head h // (H / H_kv)); fewer or indivisible kv heads are repeated up to the
query heads first, as Ulysses implementations do, so a model with one kv head runs at any N.

`attn_fn` is any function with flash-attn's `flash_attn_varlen_func` signature (default: ours,
`nextlong.kernels.flash_attn_varlen_func`), so the same wrapper serves flash-attn itself.

Inside a transformers model: `with sequence_parallel(group):` makes `attn_implementation="nextlong"`
call `ulysses_attention` with the `cu_seq_lens_q` the model is given (the whole sequence's boundaries);
each rank then feeds the model its token slice, with that slice's `position_ids`.
"""

from __future__ import annotations

import contextlib

import torch

_STATE = {"group": None}


@contextlib.contextmanager
def sequence_parallel(group):
    """Within this block, attn_implementation="nextlong" runs Ulysses over `group` (None: no parallelism)."""
    previous, _STATE["group"] = _STATE["group"], group
    try:
        yield
    finally:
        _STATE["group"] = previous


def current_group():
    """The process group `sequence_parallel` set, or None."""
    return _STATE["group"]


def split_for_rank(batch: dict, rank: int, parts: int) -> dict:
    """This rank's token slice of every row of a collated batch (nextlong.train.data.collate): input_ids
    and position_ids [a, b) with a = rank * S / parts; labels [a, b + 1) (one more column: the
    target of the slice's last token is the next slice's first), so the loss at local position t still
    predicts labels[t + 1]; cu_seq_lens and max lengths stay those of the whole sequence."""
    seq = batch["input_ids"].shape[1]
    if parts < 1 or seq % parts or not 0 <= rank < parts:
        raise ValueError(f"split_for_rank: a sequence of {seq} tokens does not split into {parts} equal slices "
                         f"for rank {rank} (the tokens past the last whole slice would go to no rank)")
    n = seq // parts
    a, b = rank * n, (rank + 1) * n
    labels = batch["labels"][:, a:b + 1]
    if labels.shape[1] == n:  # the last slice: nothing follows it
        labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -100)], dim=1)
    return dict(batch, input_ids=batch["input_ids"][:, a:b], position_ids=batch["position_ids"][:, a:b],
                labels=labels)


def assemble_rows(part: torch.Tensor, start: int, length: int, group) -> torch.Tensor:
    """Whole rows from the columns each rank of `group` holds: `part` (B, n) is columns [start, start + n)
    of rows `length` long (columns past the end are dropped); every rank gets the (B, length) rows.
    Not differentiable: for scores and masks, which every rank then reads whole."""
    import torch.distributed as dist

    rows = part.new_zeros((part.shape[0], length))
    stop = min(length, start + part.shape[1])
    if stop > start:
        rows[:, start:stop] = part[:, :stop - start]
    dist.all_reduce(rows, group=group)  # each column is non-zero on one rank only: the sum is exact
    return rows


class _AllToAll(torch.autograd.Function):
    """Split `x` into `world` pieces along `scatter_dim`, send piece i to rank i, and join what arrives along
    `gather_dim` in rank order. Its gradient is the same exchange with the two dimensions swapped."""

    @staticmethod
    def forward(ctx, x, group, scatter_dim: int, gather_dim: int):
        ctx.group, ctx.dims = group, (scatter_dim, gather_dim)
        return _all_to_all(x, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad):
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad.contiguous(), ctx.group, gather_dim, scatter_dim), None, None, None


def _all_to_all(x, group, scatter_dim: int, gather_dim: int):
    import torch.distributed as dist

    world = dist.get_world_size(group)
    pieces = [p.contiguous() for p in x.chunk(world, dim=scatter_dim)]
    received = [torch.empty_like(p) for p in pieces]
    dist.all_to_all(received, pieces, group=group)
    return torch.cat(received, dim=gather_dim)


def ulysses_attention(q, k, v, cu_seqlens, *, group=None, causal: bool = True, softmax_scale=None,
                      window_size=(-1, -1), attn_fn=None):
    """Attention over sequences split by tokens across `group` (default: the whole world).

    q: (T/N, H, D), k and v: (T/N, H_kv, D), this rank's slice of the packed tokens; or, for a batch of
    B rows each split the same way, (B, S/N, H, D) and (B, S/N, H_kv, D). `cu_seqlens`: the int32 document
    boundaries of the whole sequence (T tokens), or of the B whole rows flattened (B * S), the same on
    every rank. Returns this rank's slice of the output, q's shape."""
    import torch.distributed as dist

    from .kernels.varlen import flash_attn_varlen_func

    attn_fn = attn_fn or flash_attn_varlen_func
    world = dist.get_world_size(group)
    rows = q.dim() == 4
    heads, kv_heads = q.shape[-2], k.shape[-2]
    if heads % world:
        raise ValueError(f"ulysses_attention: {heads} query heads cannot be split over {world} ranks "
                         "(the sequence-parallel size must divide the query heads)")
    total, local = int(cu_seqlens[-1]), q.shape[0] * (q.shape[1] if rows else 1)
    if local * world != total:
        raise ValueError(f"ulysses_attention: {world} ranks x {local} local tokens != {total}, the tokens "
                         "cu_seqlens covers (every rank holds an equal slice of the packed sequence)")
    if kv_heads % world:
        k, v = (x.repeat_interleave(heads // kv_heads, dim=-2) for x in (k, v))
    token_dim, head_dim = (1, 2) if rows else (0, 1)
    q, k, v = (_AllToAll.apply(x, group, head_dim, token_dim) for x in (q, k, v))  # whole rows, heads / N
    shape = q.shape
    q, k, v = (x.reshape(-1, *x.shape[-2:]) for x in (q, k, v))
    longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    out = attn_fn(q, k, v, cu_seqlens, cu_seqlens, longest, longest, 0.0, softmax_scale=softmax_scale,
                  causal=causal, window_size=window_size)
    return _AllToAll.apply(out.reshape(shape), group, token_dim, head_dim)  # this rank's tokens, all heads


__all__ = ["ulysses_attention", "sequence_parallel", "current_group", "split_for_rank", "assemble_rows"]
