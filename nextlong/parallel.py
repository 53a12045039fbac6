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
"""

from __future__ import annotations

import torch


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

    q: (T/N, H, D), k and v: (T/N, H_kv, D), this rank's slice of the packed tokens; `cu_seqlens`: the
    int32 document boundaries of the whole packed sequence (T tokens), the same on every rank. Returns
    this rank's slice of the output, (T/N, H, D)."""
    import torch.distributed as dist

    from .kernels.varlen import flash_attn_varlen_func

    attn_fn = attn_fn or flash_attn_varlen_func
    world = dist.get_world_size(group)
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads % world:
        raise ValueError(f"ulysses_attention: {heads} query heads cannot be split over {world} ranks "
                         "(the sequence-parallel size must divide the query heads)")
    total = int(cu_seqlens[-1])
    if q.shape[0] * world != total:
        raise ValueError(f"ulysses_attention: {world} ranks x {q.shape[0]} local tokens != {total}, the tokens "
                         "cu_seqlens covers (every rank holds an equal slice of the packed sequence)")
    if kv_heads % world:
        k, v = (x.repeat_interleave(heads // kv_heads, dim=1) for x in (k, v))
    q, k, v = (_AllToAll.apply(x, group, 1, 0) for x in (q, k, v))  # (T, heads / N, D)
    longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    out = attn_fn(q, k, v, cu_seqlens, cu_seqlens, longest, longest, 0.0, softmax_scale=softmax_scale,
                  causal=causal, window_size=window_size)
    return _AllToAll.apply(out, group, 0, 1)  # (T / N, heads, D)


__all__ = ["ulysses_attention"]
