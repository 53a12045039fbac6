"""An unmodified third-party ring-attention library written for flash-attn runs on our kernels.

ring-flash-attn (zhuzilin/ring-flash-attention, the ring attention behind 360-LLaMA-Factory, OpenRLHF and
verl) calls flash-attn's private halves `_flash_attn_varlen_forward` / `_flash_attn_varlen_backward`, because
a ring merges partial results by their log-sum-exp and runs each block's backward itself. Inside the worker
processes of this test only, a module named `flash_attn.flash_attn_interface` maps those two names, with
flash-attn 2.8's signatures, onto `nextlong.kernels.flash_attn_varlen_forward` / `_backward`; nextlong itself
is never importable under flash-attn's name. Its three varlen variants then run with gloo on 2 and 4 CPU
processes, and each rank's output and q, k, v gradients equal our single-process attention over the whole
packed sequence:

- `llama3_flash_attn_varlen_func`: contiguous slices of the packed tokens (our trainer's split), keys
  all-gathered, so each rank's queries attend a longer key range (bottom-right causal alignment);
- `ring_flash_attn_varlen_func`: every document cut into N equal pieces, keys passed around the ring;
- `zigzag_ring_flash_attn_varlen_func`: every document cut into 2N pieces, rank r holding r and 2N-1-r.

llama3 runs in fp32 (1e-5). The two ring variants run in bf16, what they are written for (flash-attn has no
fp32), against the fp32 single-process result of the same bf16 inputs (2e-2): in fp32 their backward
aliases its fp32 accumulator with the block buffer (`block_dq_buffer.to(torch.float32)` is the buffer
itself), so the next block's gradient overwrites the sum, and the plain ring one returns dq in bf16 anyway.

ring-flash-attn 0.1.8's package `__init__` also imports its transformers adapter, which imports a name
transformers 5 removed (`is_flash_attn_greater_or_equal_2_10`), so the workers load the three modules
without running that `__init__`; their code is what pip installed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import pytest
import torch

from tests.helpers import free_port

pytestmark = pytest.mark.slow

LENGTHS = [8, 24, 16, 8]  # 56 tokens: every length divides by 2N for N = 2 and 4 (the zigzag split)


def _install_flash_attn_shim() -> None:
    from nextlong.kernels import flash_attn_varlen_backward, flash_attn_varlen_forward

    def _flash_attn_varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                                   softmax_scale, causal, window_size_left=-1, window_size_right=-1, softcap=0.0,
                                   alibi_slopes=None, return_softmax=False, block_table=None, leftpad_k=None,
                                   seqused_k=None, zero_tensors=False):
        assert leftpad_k is None and seqused_k is None and not return_softmax
        out, lse = flash_attn_varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                             dropout_p, softmax_scale=softmax_scale, causal=causal,
                                             window_size=(window_size_left, window_size_right), softcap=softcap,
                                             alibi_slopes=alibi_slopes, block_table=block_table)
        return out, lse, None, None  # flash-attn 2.8: out, softmax_lse, S_dmask, rng_state

    def _flash_attn_varlen_backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k,
                                    max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal,
                                    window_size_left=-1, window_size_right=-1, softcap=0.0, alibi_slopes=None,
                                    deterministic=False, rng_state=None, zero_tensors=False):
        grads = flash_attn_varlen_backward(dout, q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k,
                                           max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale=softmax_scale,
                                           causal=causal, window_size=(window_size_left, window_size_right),
                                           softcap=softcap, alibi_slopes=alibi_slopes, deterministic=deterministic)
        for buffer, grad in zip((dq, dk, dv), grads):  # flash-attn writes into the buffers it is given
            buffer.copy_(grad)

    interface = types.ModuleType("flash_attn.flash_attn_interface")
    interface._flash_attn_varlen_forward = _flash_attn_varlen_forward
    interface._flash_attn_varlen_backward = _flash_attn_varlen_backward
    package = types.ModuleType("flash_attn")
    package.flash_attn_interface = interface
    sys.modules.update({"flash_attn": package, "flash_attn.flash_attn_interface": interface})


def _load_ring_modules():
    """ring_flash_attn's varlen modules, loaded from the installed package without its __init__."""
    spec = importlib.util.find_spec("ring_flash_attn")
    folder = os.path.dirname(spec.origin)
    package = types.ModuleType("ring_flash_attn")
    package.__path__ = [folder]
    sys.modules["ring_flash_attn"] = package
    return {name: importlib.import_module(f"ring_flash_attn.{name}")
            for name in ("llama3_flash_attn_varlen", "ring_flash_attn_varlen", "zigzag_ring_flash_attn_varlen")}


def _positions(variant: str, rank: int, world: int) -> torch.Tensor:
    """The global token positions rank `rank` holds, in its local order."""
    if variant == "llama3":
        n = sum(LENGTHS) // world
        return torch.arange(rank * n, (rank + 1) * n)
    pieces, starts = [], [sum(LENGTHS[:i]) for i in range(len(LENGTHS))]
    for start, length in zip(starts, LENGTHS):
        if variant == "ring":
            n = length // world
            pieces.append(torch.arange(start + rank * n, start + (rank + 1) * n))
        else:  # zigzag: chunks rank and 2N - 1 - rank of 2N
            n = length // (2 * world)
            for chunk in (rank, 2 * world - 1 - rank):
                pieces.append(torch.arange(start + chunk * n, start + (chunk + 1) * n))
    return torch.cat(pieces)


def _worker(rank, world, port, cases):
    """Each of `cases` (variant, kv heads) in turn, in one process group: a process start (torch, the ring
    modules) costs more than a case, so the three variants of a world size share their ranks."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    _install_flash_attn_shim()
    ring = _load_ring_modules()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for variant, kv_heads in cases:
            _check_case(ring, rank, world, variant, kv_heads)
    finally:
        dist.destroy_process_group()


def _check_case(ring, rank, world, variant, kv_heads):
    from nextlong.kernels import cu_seqlens_from_lengths, flash_attention

    dtype, tolerance = (torch.float32, 1e-5) if variant == "llama3" else (torch.bfloat16, 2e-2)
    g = torch.Generator().manual_seed(0)
    total, heads, dim = sum(LENGTHS), 4, 16
    q, k, v, grad = (torch.randn(total, h, dim, generator=g).to(dtype).float()
                     for h in (heads, kv_heads, kv_heads, heads))
    cu = cu_seqlens_from_lengths(LENGTHS)
    whole = [x.clone().requires_grad_() for x in (q, k, v)]  # the reference: fp32, one process
    ref = flash_attention(*whole, causal=True, cu_seqlens=cu)
    ref_grads = torch.autograd.grad((ref * grad).sum(), whole)

    mine = _positions(variant, rank, world)
    local = [x[mine].to(dtype).requires_grad_() for x in (q, k, v)]
    if variant == "llama3":
        module = ring["llama3_flash_attn_varlen"]
        cu_q, cu_k, max_q, max_k, keys = module.llama3_flash_attn_prepare_cu_seqlens(cu, True, rank, world)
        out = module.llama3_flash_attn_varlen_func(*local, cu_q, cu_k, max_q, max_k, heads_k_stride=1,
                                                   local_k_slice=keys, causal=True)
    else:
        local_cu = cu // world  # each document's local share, as ring-flash-attn's own tests build it
        longest = max(LENGTHS) // world
        if variant == "ring":
            out = ring["ring_flash_attn_varlen"].ring_flash_attn_varlen_func(*local, local_cu, longest,
                                                                              causal=True)
        else:
            out = ring["zigzag_ring_flash_attn_varlen"].zigzag_ring_flash_attn_varlen_func(
                *local, local_cu, longest, causal=True)
    grads = torch.autograd.grad((out * grad[mine].to(dtype)).sum(), local)
    case = f"{variant}, {world} ranks, {kv_heads} kv heads, rank {rank}"
    close = dict(atol=tolerance, rtol=tolerance, msg=lambda m: f"{case}: {m}")
    assert out.dtype == dtype, case
    torch.testing.assert_close(out.float(), ref[mine], **close)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.float(), want[mine], **close)


# Per world size, the variants with their kv heads (GQA: 4 query heads over 2 or 1 kv heads for llama3).
CASES = {2: [("llama3", 2), ("ring", 2), ("zigzag", 1)],
         4: [("llama3", 1), ("ring", 4), ("zigzag", 2)]}


@pytest.mark.parametrize("world", sorted(CASES))
def test_ring_flash_attn_runs_unmodified_on_our_kernels(world):
    assert importlib.util.find_spec("ring_flash_attn"), "ring-flash-attn comes with the test extra"
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(world, free_port(), CASES[world]), nprocs=world, join=True)
