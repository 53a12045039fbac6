"""`attn_implementation="nextlong"` for transformers models: `flash_attention` behind its attention interface.

    import nextlong.kernels.transformers_attention as nla
    nla.register()                       # also done on import
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="nextlong")

Packed batches work as with transformers' flash-attention path: give `position_ids` that restart at
every document (`[[0, 1, 2, 0, 1, 0, 1, 2, 3]]`) and no attention mask; every restart (a position that
falls back to the row's smallest id) starts a new document, so attention never crosses it. Other jumps
(`[0..9, 50..59]`, positions skipped on purpose) stay within one document, as in transformers. Also accepted: flash-attn style
`cu_seq_lens_q`/`cu_seq_lens_k` keyword arguments (what `DataCollatorWithFlattening` produces), and a
2-D padding `attention_mask` (padding tokens are dropped before the kernel and get zeros out).
Not supported, with an error: KV-cache decoding (queries shorter than keys), dropout, logit softcapping,
arbitrary 4-D masks. Sliding-window models map `sliding_window=s` to `window=(s - 1, s - 1)` as
transformers does for flash-attn.
"""

from __future__ import annotations

import torch

from .attention import flash_attention

NAME = "nextlong"

# Which flash_attention backend the drop-in uses ("auto": Triton on CUDA, PyTorch on CPU).
BACKEND = "auto"


def _document_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, S) bool: True where a new document starts: the row's start, and every later position that falls
    back to the row's smallest id, as transformers' flash-attention path reads packed rows. Other jumps
    (positions skipped on purpose, as in PoSE) stay inside one document."""
    starts = position_ids == position_ids.min(dim=-1, keepdim=True).values
    starts[:, 0] = True
    return starts


def packed_cu_seqlens(position_ids: torch.Tensor | None, batch: int, seq: int, device,
                      keep: torch.Tensor | None = None) -> torch.Tensor:
    """int32 cu_seqlens over the flattened (batch * seq) tokens that are kept (all when `keep` is None)."""
    if position_ids is None:
        starts = torch.zeros((batch, seq), dtype=torch.bool, device=device)
        starts[:, 0] = True
    else:
        starts = _document_starts(position_ids.to(device).expand(batch, seq))
    if keep is not None:
        # A kept token after a dropped one (left or middle padding) also opens a document.
        prev_kept = torch.zeros_like(keep)
        prev_kept[:, 1:] = keep[:, :-1]
        starts = (starts | ~prev_kept) & keep
        flat_starts = starts[keep]
    else:
        flat_starts = starts.reshape(-1)
    idx = torch.nonzero(flat_starts).flatten().to(torch.int32)
    total = torch.tensor([flat_starts.numel()], dtype=torch.int32, device=device)
    return torch.cat([idx, total])


def _sequence_parallel_group():
    import sys

    parallel = sys.modules.get("nextlong.parallel")  # set only by code that imported it
    return parallel.current_group() if parallel is not None else None


def nextlong_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                               scaling: float | None = None, sliding_window: int | None = None,
                               softcap: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers attention function: q (B, H, S, D), k/v (B, H_kv, S, D) -> ((B, S, H, D), None)."""
    if dropout:
        raise NotImplementedError("nextlong attention: attention dropout is not supported (set attention_dropout=0)")
    if softcap is not None:
        raise NotImplementedError("nextlong attention: logit softcapping is not supported")
    batch, heads, seq, dim = query.shape
    if key.shape[2] != seq:
        raise NotImplementedError(
            f"nextlong attention: queries ({seq}) and keys ({key.shape[2]}) differ in length, i.e. KV-cache "
            "decoding; it is meant for training and prefill. Use attn_implementation='sdpa' to generate.")
    if attention_mask is not None and attention_mask.dim() != 2:
        raise NotImplementedError(
            f"nextlong attention: only 2-D padding masks are supported, got shape {tuple(attention_mask.shape)}")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    window = None
    if sliding_window is not None and sliding_window < seq:
        window = (sliding_window - 1, sliding_window - 1)

    q = query.transpose(1, 2)
    k = key.transpose(1, 2)
    v = value.transpose(1, 2)
    # The attention may be handed a mask sliced for a static cache; without a cache it spans the sequence.
    keep = None
    if attention_mask is not None:
        keep = attention_mask[:, -seq:].bool()
        if bool(keep.all()):
            keep = None

    cu_q = kwargs.get("cu_seq_lens_q")
    if cu_q is not None and keep is None:
        cu_k = kwargs.get("cu_seq_lens_k")
        if cu_k is not None and not torch.equal(cu_k, cu_q):
            raise NotImplementedError("nextlong attention: cu_seq_lens_k must equal cu_seq_lens_q (self-attention)")
        cu = cu_q.to(device=q.device, dtype=torch.int32)
        flat = [x.reshape(batch * seq, x.shape[2], dim) for x in (q, k, v)]
        group = _sequence_parallel_group()
        if group is not None:  # this rank holds a slice of every row's tokens; cu covers the whole rows
            from nextlong.parallel import ulysses_attention

            out = ulysses_attention(q, k, v, cu, group=group, causal=causal, softmax_scale=scaling,
                                    window_size=window or (-1, -1))
        else:
            out = flash_attention(*flat, causal=causal, cu_seqlens=cu, softmax_scale=scaling, window=window,
                                  backend=BACKEND)
        return out.reshape(batch, seq, heads, dim), None
    if _sequence_parallel_group() is not None:
        raise NotImplementedError("nextlong attention: under sequence_parallel the model needs cu_seq_lens_q/k "
                                  "(the boundaries of the whole sequence), not a mask or position_ids")

    position_ids = kwargs.get("position_ids")
    if keep is None:
        cu = packed_cu_seqlens(position_ids, batch, seq, q.device)
        if cu.numel() == batch + 1:  # one document per row: the plain batched layout
            out = flash_attention(q, k, v, causal=causal, softmax_scale=scaling, window=window, backend=BACKEND)
            return out, None
        flat = [x.reshape(batch * seq, x.shape[2], dim) for x in (q, k, v)]
        out = flash_attention(*flat, causal=causal, cu_seqlens=cu, softmax_scale=scaling, window=window,
                              backend=BACKEND)
        return out.reshape(batch, seq, heads, dim), None

    # Padding: gather the kept tokens, attend per document, scatter back (zeros at padding).
    cu = packed_cu_seqlens(position_ids, batch, seq, q.device, keep=keep)
    flat_keep = keep.reshape(-1)
    packed = [x.reshape(batch * seq, x.shape[2], dim)[flat_keep] for x in (q, k, v)]
    out_packed = flash_attention(*packed, causal=causal, cu_seqlens=cu, softmax_scale=scaling, window=window,
                                 backend=BACKEND)
    out = out_packed.new_zeros(batch * seq, heads, dim)
    out = out.index_copy(0, torch.nonzero(flat_keep).flatten(), out_packed)
    return out.reshape(batch, seq, heads, dim), None


def register(name: str = NAME) -> str:
    """Register the attention function (and its mask preparation) with transformers under `name`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(name, nextlong_attention_forward)
    # flash-attn's mask preparation: None for plain causal, otherwise the 2-D padding mask we unpad with.
    AttentionMaskInterface.register(name, flash_attention_mask)
    return name


register()

__all__ = ["register", "nextlong_attention_forward", "packed_cu_seqlens", "NAME"]
