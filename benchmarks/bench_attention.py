"""Document-masked attention: nextlong's flash_attention against the peers a user would pick, same run.

Every table row gives time, peak memory and the max |difference| of the output (and, forward+backward,
of dQ, dK, dV) against our kernel on the same inputs: a peer that computes something else is visible.

GPU (needs CUDA): one packed sequence of S in {8K, 16K, 32K, 64K, 128K} tokens (forward only also at
512K), head dim 128, 16 heads, bf16, causal; mask "causal" (one document) and "docs" (documents of
seeded log-uniform lengths in [512, 16K] packed back to back, no attention across them). Peers:

* ``flex`` — FlexAttention (``torch.compile(flex_attention)``) with a document+causal ``BlockMask``;
  the block mask is built from the document lengths outside the timing (``flex_block_mask``, checked
  against ``create_block_mask`` in the tests), its build time and the first call (the compile) are
  reported apart;
* ``varlen`` — PyTorch's own varlen attention (``torch.nn.attention.varlen.varlen_attn``, torch >= 2.9,
  CUDA only) with our ``cu_seqlens``;
* ``flash_attn`` — flash-attn's ``flash_attn_varlen_func`` (import guarded: PyPI has no binary wheel);
* ``sdpa_flash`` — SDPA's flash backend called once per document in a Python loop (``torch.split``
  views, ``torch.cat`` of the outputs). Not what a user of packed documents would pick; kept as the
  series the first lease measured.

A plain bf16 ``torch.matmul`` measured in the same run gives the achievable peak. TFLOP/s count only
allowed (query, key) pairs: forward 4*D*H*pairs, backward 2.5x the forward.

CPU: packed sequences, fp32, the PyTorch fallback (which calls PyTorch's fused CPU flash kernel once
per document) against

* ``sdpa_split`` — SDPA with ``is_causal`` once per document over ``torch.split`` views of the
  (1, H, T, D) layout, one ``torch.cat``: the same aten kernel per document, what a user would write;
* ``flex`` — compiled FlexAttention with the same block mask, forward only: torch 2.13 has no
  FlexAttention backward on CPU ("FlexAttention does not support backward on CPU"), so it is no peer
  for CPU training;
* ``sdpa_dense_mask`` — SDPA over the whole sequence with a dense (S, S) block-diagonal causal mask,
  the obvious one-call way; its cost grows with S^2 whatever the documents, so that ratio measures the
  mask's sparsity, not a better kernel.

``varlen`` and ``flash_attn`` have no CPU kernel. CPU rounds interleave the implementations (one step
of each in turn, same inputs) so a change of load hits all of them; best of ROUNDS. Peak extra
resident memory from VmHWM over the inputs (output, gradients and temporaries of one step); the
benchmark sets glibc's mmap threshold to 64 KiB itself (mallopt), so freed buffers leave the heap,
peaks are visible, and the figure is the same in script and pytest mode whatever
MALLOC_MMAP_THRESHOLD_ says.

Run: ``python3 benchmarks/bench_attention.py [cpu|gpu]`` for a table with ratios to the peers, or
``python3 -m pytest -q benchmarks/bench_attention.py -k cpu`` (pytest-benchmark entries; ``-k agree``
for the fast check that every peer that runs here gives our outputs).
"""

from __future__ import annotations

import gc
import inspect
import math
import os
import random
import sys
import time
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

try:  # benchmarks/ on sys.path (script, pytest on this file, the GPU lease) ...
    from _measure import (AGREE_TOL, agrees, cuda_median_seconds_and_peak_mib, dtype_name, malloc_trim,
                          record_gpu_row, relative_error, reset_peak_rss, rss_kib, verdict, wide_dtype)
except ModuleNotFoundError:  # ... or imported as benchmarks.bench_attention from the repository root
    from benchmarks._measure import (AGREE_TOL, agrees, cuda_median_seconds_and_peak_mib, dtype_name,
                                     malloc_trim, record_gpu_row, relative_error, reset_peak_rss, rss_kib,
                                     verdict, wide_dtype)

from nextlong.kernels.attention import cu_seqlens_from_lengths, flash_attention

H100_BF16_DENSE_TFLOPS = 989.0
GPU_SEQLENS = (8192, 16384, 32768, 65536, 131072)
GPU_FWD_ONLY_SEQLENS = (524288,)
GPU_HEADS, GPU_DIM = 16, 128
KV_HEADS = None  # key/value heads of every case (None: as many as the query heads; 4 with 16 heads is GQA 4:1)
CPU_SHAPES = ((2048, 8, 64), (4096, 8, 64), (8192, 8, 64), (4096, 8, 128))  # (S, H, D)
MASKS = ("causal", "docs")
ROUNDS = 7
FLEX_BLOCK = 128


def document_lengths(total: int, kind: str, seed: int = 0, lo: int = 512, hi: int = 16384) -> list[int]:
    """One document for "causal"; otherwise seeded log-uniform lengths in [lo, hi] filling `total` exactly."""
    if kind == "causal":
        return [total]
    rng = random.Random(seed)
    lo, hi = min(lo, total), min(hi, total)
    lengths, used = [], 0
    while used < total:
        n = min(total - used, int(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
        lengths.append(n)
        used += n
    return lengths


def allowed_pairs(lengths) -> int:
    return sum(n * (n + 1) // 2 for n in lengths)


def attention_flops(lengths, heads, dim, backward: bool) -> float:
    fwd = 4.0 * dim * heads * allowed_pairs(lengths)
    return fwd * (3.5 if backward else 1.0)


# ---- implementations: each maps (q, k, v as (T, H, D), lengths, cu_seqlens) -> out (T, H, D) -------

def _nextlong(q, k, v, lengths, cu):
    return flash_attention(q, k, v, causal=True, cu_seqlens=cu)


def _heads_first(x):
    """(T, H, D) -> (1, H, T, D), a view: SDPA's and FlexAttention's layout."""
    return x.transpose(0, 1)[None]


def _sdpa_dense_mask(q, k, v, lengths, cu):
    """CPU peer: SDPA with an explicit (S, S) block-diagonal causal mask."""
    doc = torch.repeat_interleave(torch.arange(len(lengths), device=q.device),
                                  torch.tensor(lengths, device=q.device))
    pos = torch.arange(q.shape[0], device=q.device)
    mask = (doc[:, None] == doc[None, :]) & (pos[None, :] <= pos[:, None])
    out = F.scaled_dot_product_attention(_heads_first(q), _heads_first(k), _heads_first(v), attn_mask=mask,
                                         **_gqa(q, k))
    return out[0].transpose(0, 1)


def _sdpa_split(q, k, v, lengths, cu):
    """SDPA with is_causal once per document (it takes no document mask): torch.split views, one cat."""
    parts = [_heads_first(x).split(lengths, dim=2) for x in (q, k, v)]
    outs = [F.scaled_dot_product_attention(a, b, c, is_causal=True, **_gqa(q, k)) for a, b, c in zip(*parts)]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out[0].transpose(0, 1)


def _sdpa_flash(q, k, v, lengths, cu):
    """GPU: SDPA's flash backend, once per document (the loop above)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return _sdpa_split(q, k, v, lengths, cu)


def flex_block_mask(lengths, device, block: int = FLEX_BLOCK):
    """FlexAttention BlockMask for causal attention inside packed documents, from the lengths alone:
    O((S / block)^2) work, no (S, S) tensor and no compile (create_block_mask evaluates the mask_mod
    on every (q, k) pair, 16 GiB of bools at 128K unless compiled). Returns (BlockMask, build seconds)."""
    from torch.nn.attention.flex_attention import BlockMask

    if device == "cuda" or getattr(device, "type", None) == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    total = sum(lengths)
    nb = -(-total // block)
    doc = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))
    # Padding past `total` (a partial last block) gets its own document id; FlexAttention masks it anyway.
    doc = torch.cat([doc, torch.full((nb * block - total,), len(lengths), device=device, dtype=doc.dtype)])

    def document_causal(b, h, qi, ki):
        return (doc[qi] == doc[ki]) & (ki <= qi)

    starts = torch.arange(nb, device=device) * block
    first = doc[starts]  # document of each block's first token
    last = doc[torch.clamp(starts + block, max=total) - 1]  # ... and of its last real token
    qi, kj = torch.arange(nb, device=device)[:, None], torch.arange(nb, device=device)[None, :]
    # Key block j < query block i holds an allowed pair iff they share a document (documents are
    # contiguous and rising): the key block's last document >= the query block's first. It is full
    # (every pair allowed) iff one document runs from the key block's start to the query block's end.
    below = kj < qi
    any_pair = (below & (last[None, :] >= first[:, None])) | (kj == qi)
    full = below & (first[None, :] == last[:, None])
    partial = any_pair & ~full

    def blocks(m):
        num = m.sum(-1, dtype=torch.int32)
        idx = torch.argsort((~m).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return num[None, None], idx[None, None]

    kv_num, kv_idx = blocks(partial)
    full_num, full_idx = blocks(full)
    mask = BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block,
                                    mask_mod=document_causal, seq_lengths=(total, total))
    if device == "cuda" or getattr(device, "type", None) == "cuda":
        torch.cuda.synchronize()
    return mask, time.perf_counter() - t0


_flex_state = {}


def new_flex_case() -> None:
    """A fresh compiled FlexAttention for the next case. dynamo keeps its compile cache on flex_attention's code
    object, not on the torch.compile wrapper: without the reset every case counted against recompile_limit (8),
    and from the 9th case on flex ran eagerly (its scores materialised) inside the timing."""
    _flex_state.clear()
    torch._dynamo.reset()


def _flex(q, k, v, lengths, cu, compiled=True):
    """FlexAttention with the document+causal block mask (built once per lengths, outside the timing
    after the first call); `compiled=False` runs the unfused eager version (tests only)."""
    from torch.nn.attention.flex_attention import flex_attention

    key = (tuple(lengths), str(q.device))
    if _flex_state.get("key") != key:
        _flex_state.update(key=key, mask=None)
        _flex_state["mask"], _flex_state["build_seconds"] = flex_block_mask(lengths, q.device)
    if compiled and "compiled" not in _flex_state:
        # dynamic=False: one static compile per shape. The dynamic recompile that torch.compile tries at
        # a second shape fails to build on CPU in torch 2.13 (inductor C++: 'cur_qSplitSize8' undeclared).
        torch._dynamo.config.fail_on_recompile_limit_hit = True  # a fallback to eager must fail, not be timed
        _flex_state["compiled"] = torch.compile(flex_attention, dynamic=False)
    fn = _flex_state["compiled"] if compiled else flex_attention
    if not torch.is_grad_enabled():  # on CPU it refuses inputs that require grad, even under no_grad
        q, k, v = q.detach(), k.detach(), v.detach()
    out = fn(_heads_first(q), _heads_first(k), _heads_first(v), block_mask=_flex_state["mask"], **_gqa(q, k))
    return out[0].transpose(0, 1)


def _varlen():
    from torch.nn.attention.varlen import varlen_attn

    # torch 2.9/2.10 take is_causal; later versions a flash-attn style window ((-1, 0) = causal).
    causal = {"is_causal": True} if "is_causal" in inspect.signature(varlen_attn).parameters \
        else {"window_size": (-1, 0)}

    def run(q, k, v, lengths, cu):
        m = max(lengths)
        return varlen_attn(q, k, v, cu, cu, m, m, **causal, **_gqa(q, k))

    return run


def _flash_attn():
    from flash_attn import flash_attn_varlen_func

    def run(q, k, v, lengths, cu):
        m = max(lengths)
        return flash_attn_varlen_func(q, k, v, cu, cu, m, m, causal=True)

    return run


def implementation(name):
    """The callable for `name`, or a skip reason string when its package is missing."""
    table = {"nextlong": lambda: _nextlong, "sdpa_dense_mask": lambda: _sdpa_dense_mask,
             "sdpa_split": lambda: _sdpa_split, "sdpa_flash": lambda: _sdpa_flash, "flex": lambda: _flex,
             "varlen": _varlen, "flash_attn": _flash_attn}
    try:
        return table[name]()
    except ImportError as exc:
        return f"{name} not importable: {exc}"


def unsupported(name, device: str, backward: bool):
    """Why `name` cannot run this case (a string), or None."""
    if device == "cpu" and name in ("varlen", "flash_attn", "sdpa_flash"):
        return "CUDA only"
    if device == "cpu" and name == "flex" and backward:
        return f"no FlexAttention backward on CPU in torch {torch.__version__.split('+')[0]}"
    return None


# ---- measurement -------------------------------------------------------------------------------

class Result(NamedTuple):
    seconds: float  # best (CPU) or median (GPU) wall seconds of one step
    peak_mib: float  # peak extra memory of one step over its inputs
    cpu_seconds: float | None  # best process CPU seconds (CPU only)
    lengths: list
    first_seconds: float  # the first call (compiles, for FlexAttention)
    max_diff: float | None  # max |difference| of output and gradients against nextlong's
    error: float | None = None  # max |x - ref| / max |ref| against the wider-precision reference (None: unchecked)
    times: tuple = ()  # CPU: wall seconds of each interleaved round (for paired ratios)
    cpu_times: tuple = ()  # CPU: process CPU seconds of each round


def _median(xs):
    xs = sorted(xs)
    return 0.5 * (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2])


def ratio(a: Result, b: Result, cpu: bool = False) -> float:
    """a's time over b's. With per-round times (CPU): the median over rounds of the paired ratio (the
    two steps of a round ran back to back, so a change of load hits both); otherwise best (or median)
    over best."""
    ta, tb = (a.cpu_times, b.cpu_times) if cpu else (a.times, b.times)
    if ta and tb and len(ta) == len(tb):
        return _median([x / y for x, y in zip(ta, tb)])
    return (a.cpu_seconds / b.cpu_seconds) if cpu else (a.seconds / b.seconds)


def _inputs(total, heads, dim, device, dtype, seed=0):
    """q (T, H, D) and k, v (T, KV_HEADS or H, D), seeded, requiring grad."""
    g = torch.Generator(device=device).manual_seed(seed)
    kv = KV_HEADS or heads
    return [torch.randn(total, h, dim, device=device, dtype=dtype, generator=g).requires_grad_()
            for h in (heads, kv, kv)]


def _gqa(q, k) -> dict:
    """enable_gqa=True for the PyTorch peers when k has fewer heads than q (flash-attn and ours take it as is)."""
    return {"enable_gqa": True} if k.shape[1] != q.shape[1] else {}


def _step(fn, q, k, v, lengths, cu, backward):
    if not backward:
        with torch.no_grad():
            return fn(q, k, v, lengths, cu)
    q.grad = k.grad = v.grad = None
    out = fn(q, k, v, lengths, cu)
    out.backward(torch.ones_like(out))
    return out


def _outputs(out, q, k, v, backward):
    return [out.detach()] + ([q.grad, k.grad, v.grad] if backward else [])


def _max_diff(a, b) -> float:
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b))


# The reference is skipped (the row says "unchecked") past this much work in allowed-pair flops: fp32 attention
# has no tensor-core kernel, and one 256K-token document would cost more of a lease than its row.
REFERENCE_MAX_FLOPS = 1e14


def reference_outputs(q, k, v, lengths, backward):
    """Output (and, with `backward`, dQ, dK, dV for the gradient of ones that `_step` uses) of causal attention
    inside each document, from the same inputs in ``wide_dtype``: SDPA once per document (the memory-efficient
    kernel on CUDA, which takes fp32 without an (L, L) matrix), key/value heads repeated for GQA. None when
    the case is past REFERENCE_MAX_FLOPS."""
    if attention_flops(lengths, q.shape[1], q.shape[2], backward) > REFERENCE_MAX_FLOPS:
        return None
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    wide = wide_dtype(q.dtype)
    qw, kw, vw = (x.detach().to(wide).requires_grad_(backward) for x in (q, k, v))
    group = q.shape[1] // k.shape[1]
    outs = []
    with torch.set_grad_enabled(backward), \
            sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION) if q.is_cuda else nullcontext():
        for a, b, c in zip(*(x.split(lengths) for x in (qw, kw, vw))):
            b, c = (_heads_first(x.repeat_interleave(group, dim=1)) for x in (b, c))
            outs.append(F.scaled_dot_product_attention(_heads_first(a), b, c, is_causal=True)[0].transpose(0, 1))
        out = torch.cat(outs)
        if not backward:
            return [out]
        out.backward(torch.ones_like(out))
    return [out.detach(), qw.grad, kw.grad, vw.grad]


def measure_cpu_case(fns: dict, total, heads, dim, mask, backward, rounds=ROUNDS) -> dict:
    """{name: Result} for the callables in `fns` on one CPU case, fp32. The implementations take turns
    (one step of each per round, each on its own copy of the same inputs); best of `rounds`."""
    lengths = document_lengths(total, mask, lo=128, hi=1024)
    cu = cu_seqlens_from_lengths(lengths)
    malloc_trim()
    state, failed = {}, {}
    for name, fn in fns.items():
        q, k, v = _inputs(total, heads, dim, "cpu", torch.float32)
        t0 = time.perf_counter()
        try:
            _step(fn, q, k, v, lengths, cu, backward)
        except Exception as exc:  # a peer failing must not cost the rest of the table
            msg = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            failed[name] = f"failed: {type(exc).__name__}: {msg}"
            continue
        state[name] = {"fn": fn, "qkv": (q, k, v), "first": time.perf_counter() - t0, "times": [],
                       "cpu_times": [], "peak": 0.0, "outputs": None}
    for _ in range(rounds):
        for s in state.values():
            q, k, v = s["qkv"]
            q.grad = k.grad = v.grad = None
            s["outputs"] = None
            gc.collect()
            malloc_trim()  # hand freed pages back, so the peak of this step shows in VmHWM
            reset_peak_rss()
            base = rss_kib("VmRSS")
            t0, c0 = time.perf_counter(), time.process_time()
            out = _step(s["fn"], q, k, v, lengths, cu, backward)
            s["times"].append(time.perf_counter() - t0)
            s["cpu_times"].append(time.process_time() - c0)
            s["peak"] = max(s["peak"], (rss_kib("VmHWM") - base) / 1024)
            s["outputs"] = _outputs(out, q, k, v, backward)
            del out
    ref = state.get("nextlong", {}).get("outputs")
    exact = reference_outputs(*_inputs(total, heads, dim, "cpu", torch.float32), lengths, backward)
    rows = {name: Result(min(s["times"]), s["peak"], min(s["cpu_times"]), lengths, s["first"],
                         _max_diff(s["outputs"], ref) if ref is not None else None,
                         relative_error(s["outputs"], exact) if exact is not None else None,
                         tuple(s["times"]), tuple(s["cpu_times"]))
            for name, s in state.items()}
    return {**rows, **failed}


def measure_cpu(fn, total, heads, dim, mask, backward, repeats=3) -> Result:
    result = measure_cpu_case({"impl": fn}, total, heads, dim, mask, backward, rounds=repeats)["impl"]
    if isinstance(result, str):
        raise RuntimeError(result)
    return result


def measure_gpu(fn, total, heads, dim, mask, backward, repeats=5, reference=None, exact=None):
    """(Result, outputs): median seconds of `repeats` after the first call (timed apart), peak extra
    allocated MiB over the inputs; max |diff| against `reference` outputs and the relative error against
    `exact` (reference_outputs) when given."""
    lengths = document_lengths(total, mask)
    cu = cu_seqlens_from_lengths(lengths, device="cuda")
    q, k, v = _inputs(total, heads, dim, "cuda", torch.bfloat16)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    _step(fn, q, k, v, lengths, cu, backward)  # first call: compiles kernels, allocates grads
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    q.grad = k.grad = v.grad = None
    seconds, peak = cuda_median_seconds_and_peak_mib(lambda: _step(fn, q, k, v, lengths, cu, backward), repeats)
    outputs = _outputs(_step(fn, q, k, v, lengths, cu, backward), q, k, v, backward)
    diff = _max_diff(outputs, reference) if reference is not None else None
    error = relative_error(outputs, exact) if exact is not None else None
    return Result(seconds, peak, None, lengths, first, diff, error), outputs


def matmul_tflops(n=8192, repeats=10):
    """What a plain bf16 (n x n) @ (n x n) reaches on this GPU: the practical peak for the ratios."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2.0 * n ** 3 * repeats / (start.elapsed_time(end) / 1000) / 1e12


def measure_gpu_case(fns: dict, total, heads, dim, mask, backward) -> dict:
    """{name: Result or error string}; nextlong (first in `fns`) is the reference of the max |diff|, the
    fp32 reference_outputs that of the error."""
    rows, ref = {}, None
    exact = reference_outputs(*_inputs(total, heads, dim, "cuda", torch.bfloat16), document_lengths(total, mask),
                              backward)
    for name, fn in fns.items():
        try:
            rows[name], outputs = measure_gpu(fn, total, heads, dim, mask, backward, reference=ref, exact=exact)
            if ref is None and name == "nextlong":
                ref = outputs
            del outputs
        except torch.OutOfMemoryError:
            rows[name] = "out of memory"
        except Exception as exc:  # a peer failing must not cost the rest of the table
            msg = str(exc).splitlines()[0][:120] if str(exc) else ""
            rows[name] = f"failed: {type(exc).__name__}: {msg}"
        gc.collect()
        torch.cuda.empty_cache()
    return rows


# ---- pytest-benchmark entries ------------------------------------------------------------------

CPU_IMPLS = ("nextlong", "sdpa_split", "flex", "sdpa_dense_mask")
GPU_IMPLS = ("nextlong", "flex", "varlen", "flash_attn", "sdpa_flash")
CPU_PEERS = ("sdpa_split", "flex", "sdpa_dense_mask")
GPU_PEERS = ("flex", "varlen", "flash_attn", "sdpa_flash")


def _bench(benchmark, result, fn, total, heads, dim, backward, device, dtype):
    tflops = attention_flops(result.lengths, heads, dim, backward) / result.seconds / 1e12
    benchmark.extra_info.update(seconds=result.seconds, cpu_seconds=result.cpu_seconds, peak_mib=result.peak_mib,
                                tflops=tflops, documents=len(result.lengths), first_seconds=result.first_seconds)
    cu = cu_seqlens_from_lengths(result.lengths, device=device)
    q, k, v = _inputs(total, heads, dim, device, dtype)

    def step():
        _step(fn, q, k, v, result.lengths, cu, backward)
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(step, rounds=3, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd_bwd"])
@pytest.mark.parametrize("shape", CPU_SHAPES[:2], ids=lambda s: "S{}_H{}_D{}".format(*s))
def test_cpu_fallback_vs_peers(benchmark, impl, shape, backward):
    reason = unsupported(impl, "cpu", backward)
    if reason:
        pytest.skip(reason)
    torch.set_num_threads(2)
    benchmark.group = f"cpu-{'fwd_bwd' if backward else 'fwd'}-S{shape[0]}-D{shape[2]}"
    fn = implementation(impl)
    result = measure_cpu(fn, *shape, "docs", backward)
    _bench(benchmark, result, fn, *shape, backward, "cpu", torch.float32)


def check_peers_agree_with_nextlong(kv_heads=None):
    """`_check_peers` with KV_HEADS = kv_heads (4 query heads over kv_heads: GQA), restored after."""
    global KV_HEADS
    saved, KV_HEADS = KV_HEADS, kv_heads
    try:
        _check_peers(4 if kv_heads else 2)
    finally:
        KV_HEADS = saved


def _check_peers(heads):
    """Every peer that runs on this machine gives our output and gradients (fp32 on CPU, 3 documents in
    457 tokens; FlexAttention uncompiled, forward only), and the block mask built from the lengths is
    the one create_block_mask evaluates from the mask function. tests/test_benchmark_peers.py runs it
    in CI (about 2 s)."""
    import warnings

    from torch.nn.attention.flex_attention import create_block_mask

    device = "cuda" if torch.cuda.is_available() else "cpu"
    lengths = [300, 57, 100]  # blocks of 128: full, partial and empty key blocks, a partial last block
    total, dim = sum(lengths), 64
    cu = cu_seqlens_from_lengths(lengths, device=device)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    q, k, v = _inputs(total, heads, dim, device, dtype)
    ref = _outputs(_step(_nextlong, q, k, v, lengths, cu, True), q, k, v, True)
    dense = [(_outputs(_step(implementation(n), q, k, v, lengths, cu, True), q, k, v, True))
             for n in ("sdpa_split", "sdpa_dense_mask")]
    for name, outs in zip(("sdpa_split", "sdpa_dense_mask"), dense):
        assert _max_diff(outs, ref) < tol, name
    for name in ("varlen", "flash_attn"):
        fn = implementation(name)
        if isinstance(fn, str) or unsupported(name, device, True):
            continue
        assert _max_diff(_outputs(_step(fn, q, k, v, lengths, cu, True), q, k, v, True), ref) < tol, name

    mask, _ = flex_block_mask(lengths, device)
    doc = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))
    expected = create_block_mask(lambda b, h, qi, ki: (doc[qi] == doc[ki]) & (ki <= qi), None, None, total, total,
                                 device=device)
    assert torch.equal(mask.to_dense(), expected.to_dense())
    for name in ("kv_num_blocks", "full_kv_num_blocks"):
        assert torch.equal(getattr(mask, name), getattr(expected, name)), name
    assert int(mask.full_kv_num_blocks.sum()) > 0 and int(mask.kv_num_blocks.sum()) > 0
    new_flex_case()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out = _flex(q, k, v, lengths, cu, compiled=False)
    new_flex_case()
    assert _max_diff([out], ref[:1]) < tol


def test_peers_agree_with_nextlong_on_a_tiny_input():
    check_peers_agree_with_nextlong()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmark needs CUDA")
@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd_bwd"])
@pytest.mark.parametrize("total", GPU_SEQLENS)
def test_gpu_attention(benchmark, impl, mask, backward, total):
    fn = implementation(impl)
    if isinstance(fn, str):
        pytest.skip(fn)
    benchmark.group = f"gpu-{mask}-{'fwd_bwd' if backward else 'fwd'}-S{total}"
    try:
        result, _ = measure_gpu(fn, total, GPU_HEADS, GPU_DIM, mask, backward)
        _bench(benchmark, result, fn, total, GPU_HEADS, GPU_DIM, backward, "cuda", torch.bfloat16)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        pytest.skip(f"{impl} out of memory at S={total}")


# ---- table with ratios (script mode) -----------------------------------------------------------

def _record(name, label, total, heads, dim, lengths, result, tflops=None, wrong=False):
    """One row of docs/benchmarks/gpu-runs.jsonl (the SDPA flash loop is impl "sdpa"); ms null when the
    implementation ran out of memory or its outputs were `wrong`."""
    record_gpu_row("attention", label, {"sdpa_flash": "sdpa"}.get(name, name), seq=total, docs=len(lengths), h=heads,
                   head_dim=dim, kv_heads=KV_HEADS or heads, dtype="bfloat16",
                   ms=None if result is None or wrong else 1000 * result.seconds,
                   peak_mib=None if result is None else result.peak_mib, tflops=None if wrong else tflops)


def _table(kind):
    if kind == "gpu" and not torch.cuda.is_available():
        print("gpu: skipped, CUDA not available")
        return
    device = "cuda" if kind == "gpu" else "cpu"
    dtype = torch.bfloat16 if kind == "gpu" else torch.float32
    if kind == "gpu":
        cases = [(s, GPU_HEADS, GPU_DIM, m, b) for s in GPU_SEQLENS for m in MASKS for b in (False, True)]
        cases += [(s, GPU_HEADS, GPU_DIM, m, False) for s in GPU_FWD_ONLY_SEQLENS for m in MASKS]
        impls, peers = GPU_IMPLS, [p for p in GPU_PEERS if p in GPU_IMPLS]
        peak = matmul_tflops()
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
        print(f"torch.matmul bf16 8192^3: {peak:.0f} TFLOP/s ({100 * peak / H100_BF16_DENSE_TFLOPS:.0f}% of the "
              f"H100 SXM bf16 dense paper peak {H100_BF16_DENSE_TFLOPS:.0f})")
    else:
        torch.set_num_threads(2)
        cases = [(s, h, d, "docs", b) for s, h, d in CPU_SHAPES for b in (False, True)]
        impls, peers, peak = CPU_IMPLS, [p for p in CPU_PEERS if p in CPU_IMPLS], None
        print(f"cpu, {torch.get_num_threads()} threads, torch {torch.__version__}, fp32, best of {ROUNDS} "
              "interleaved rounds")
    for i, peer in enumerate(peers):
        print(f"peer {i + 1}: {peer}")
    print(f"{'S':>7} {'H':>3} {'D':>4} {'mask':>6} {'pass':>7} {'docs':>5} {'impl':>16} {'ms':>9} {'cpu ms':>8} "
          f"{'1st ms':>8} {'TFLOP/s':>8} {'peak MiB':>9}"
          + "".join(f" {f't/p{i}':>6} {f'cpu/p{i}':>7} {f'mem/p{i}':>7}" for i in range(1, len(peers) + 1))
          + f" {'max|diff|':>9} {'error vs ' + dtype_name(wide_dtype(dtype)):>19} {'%matmul':>7} "
          f"{'%989':>5}  load")
    wrong = []
    for total, heads, dim, mask, backward in cases:
        label = "fwd+bwd" if backward else "fwd"
        head = f"{total:>7} {heads:>3} {dim:>4} {mask:>6} {label:>7}"
        fns = {}
        for name in impls:
            fn = implementation(name)
            reason = fn if isinstance(fn, str) else unsupported(name, device, backward)
            if reason:
                print(f"{head} {'':>5} {name:>16}  skipped: {reason}")
            else:
                fns[name] = fn
        new_flex_case()
        if kind == "gpu":
            rows = measure_gpu_case(fns, total, heads, dim, mask, backward)
        else:
            rows = measure_cpu_case(fns, total, heads, dim, mask, backward)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        for name, r in rows.items():
            if isinstance(r, str):
                print(f"{head} {'':>5} {name:>16}  {r}")
                if kind == "gpu" and r == "out of memory":
                    _record(name, label, total, heads, dim, document_lengths(total, mask), None)
                continue
            tflops = attention_flops(r.lengths, heads, dim, backward) / r.seconds / 1e12
            is_wrong = agrees(r.error, dtype) is False
            if is_wrong:
                wrong.append(f"{name} at S={total} D={dim} {mask} {label}")
            if kind == "gpu":  # a row whose outputs are wrong is recorded as failed (ms null), not as a time
                _record(name, label, total, heads, dim, r.lengths, r, tflops, wrong=is_wrong)
            ratios = ""
            for peer in peers:
                ref = rows.get(peer)
                ok = isinstance(ref, Result) and agrees(ref.error, dtype) is not False  # a WRONG row is no peer
                ratios += f" {ratio(r, ref):6.2f}" if ok else "      -"
                ratios += f" {ratio(r, ref, cpu=True):7.2f}" if ok and r.cpu_seconds is not None else "       -"
                ratios += f" {r.peak_mib / ref.peak_mib:7.2f}" if ok and ref.peak_mib > 0 else "       -"
            cms = f"{1000 * r.cpu_seconds:8.1f}" if r.cpu_seconds is not None else "       -"
            diff = f"{r.max_diff:9.1e}" if r.max_diff is not None else "        -"
            pm = f"{100 * tflops / peak:7.1f}" if peak else "      -"
            pp = f"{100 * tflops / H100_BF16_DENSE_TFLOPS:5.1f}" if peak else "    -"
            print(f"{head} {len(r.lengths):>5} {name:>16} {1000 * r.seconds:9.1f} {cms} {1000 * r.first_seconds:8.0f} "
                  f"{tflops:8.3f} {r.peak_mib:9.0f}{ratios} {diff} {verdict(r.error, dtype):>19} {pm} {pp}  {load}")
        if "build_seconds" in _flex_state:
            print(f"{head} {'':>5} {'flex block mask':>16} built from the lengths in "
                  f"{1000 * _flex_state['build_seconds']:.1f} ms (not in the flex rows' time)")
    print("t/pN, cpu/pN, mem/pN: ours (or that row's) time, CPU time, peak memory divided by peer N's: below 1 "
          "the row is better (CPU: median over the rounds of the paired per-round ratio). ms: wall, best of "
          "the interleaved rounds on CPU, median of 5 on GPU; cpu ms: "
          "process CPU time (includes OpenMP spin-waiting); 1st ms: the first call (FlexAttention's compile); "
          "max|diff|: of output (and dQ, dK, dV) against nextlong's on the same inputs; error: max over them of "
          f"max|x - ref| / max|ref| against the same inputs in {dtype_name(wide_dtype(dtype))}, "
          f"ok up to {AGREE_TOL[dtype]:g} "
          "(unchecked: the reference would cost more than the row); TFLOP/s over allowed "
          "pairs only; %matmul: of torch.matmul in this run; %989: of the H100 SXM bf16 dense paper peak")
    if wrong:
        print(f"WRONG outputs (times not recorded): {'; '.join(wrong)}")


if __name__ == "__main__":
    for kind in sys.argv[1:] or ["cpu", "gpu"]:
        _table(kind)
