"""Document-masked attention: nextlong's flash_attention vs its peers, TFLOP/s and peak memory, same run.

GPU (needs CUDA): one packed sequence of S in {8K, 16K, 32K, 64K, 128K} tokens (forward only also at
512K), head dim 128, 16 heads, bf16, causal; mask "causal" (one document) and "docs" (documents of
seeded log-uniform lengths in [512, 16K] packed back to back, no attention across them). Peers:
PyTorch SDPA with the flash backend (per-document loop for "docs", since it takes no document mask),
FlexAttention (torch.compile'd) with a document+causal block mask, and flash-attn's varlen kernel when
importable; a plain bf16 `torch.matmul` measured in the same run gives the achievable peak.
TFLOP/s count only allowed (query, key) pairs: forward 4*D*H*pairs, backward 2.5x the forward.

CPU: small packed sequences, fp32, the PyTorch fallback against two peers: SDPA run once per document
with is_causal=True (the fair peer: it computes only allowed pairs, like the GPU section's), and SDPA
over the whole sequence with a dense (S, S) block-diagonal causal mask (the obvious one-call way; its
cost grows with S^2 whatever the documents, so that ratio mostly measures the mask's sparsity).
Peak extra resident memory from VmHWM; the benchmark sets glibc's mmap threshold to 64 KiB itself
(mallopt), so freed buffers leave the heap, peaks are visible, and the figure is the same in script
and pytest mode whatever MALLOC_MMAP_THRESHOLD_ says.

Run: ``python3 benchmarks/bench_attention.py [cpu|gpu]`` for a table with
ratios to the peers, or
``python3 -m pytest -q benchmarks/bench_attention.py -k cpu`` (pytest-benchmark entries).
"""

from __future__ import annotations

import gc
import math
import os
import random
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from _measure import cuda_median_seconds_and_peak_mib, rss_kib

from nextlong.kernels.attention import cu_seqlens_from_lengths, flash_attention

H100_BF16_DENSE_TFLOPS = 989.0
GPU_SEQLENS = (8192, 16384, 32768, 65536, 131072)
GPU_FWD_ONLY_SEQLENS = (524288,)
GPU_HEADS, GPU_DIM = 16, 128
CPU_SHAPES = ((2048, 8, 64), (4096, 8, 64))  # (S, H, D)
MASKS = ("causal", "docs")


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


def _sdpa_dense_mask(q, k, v, lengths, cu):
    """CPU peer: SDPA with an explicit (S, S) block-diagonal causal mask."""
    doc = torch.repeat_interleave(torch.arange(len(lengths), device=q.device),
                                  torch.tensor(lengths, device=q.device))
    pos = torch.arange(q.shape[0], device=q.device)
    mask = (doc[:, None] == doc[None, :]) & (pos[None, :] <= pos[:, None])
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                         v.transpose(0, 1)[None], attn_mask=mask)
    return out[0].transpose(0, 1)


def _sdpa_per_document(q, k, v, lengths, cu):
    """SDPA with is_causal, one call per document (it takes no document mask): only allowed pairs."""
    outs, start = [], 0
    for n in lengths:
        sl = slice(start, start + n)
        o = F.scaled_dot_product_attention(q[sl].transpose(0, 1)[None], k[sl].transpose(0, 1)[None],
                                           v[sl].transpose(0, 1)[None], is_causal=True)
        outs.append(o[0].transpose(0, 1))
        start += n
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _sdpa_flash(q, k, v, lengths, cu):
    """GPU peer: SDPA's flash backend, one call per document."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return _sdpa_per_document(q, k, v, lengths, cu)


_flex_cache = {}


def _flex(q, k, v, lengths, cu):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    key = (tuple(lengths), q.device)
    if key not in _flex_cache:
        doc = torch.repeat_interleave(torch.arange(len(lengths), device=q.device),
                                      torch.tensor(lengths, device=q.device))

        def document_causal(b, h, qi, ki):
            return (doc[qi] == doc[ki]) & (ki <= qi)

        total = q.shape[0]
        # Compiled so the (S, S) mask is never materialised (16 GiB of bools at 128K).
        mask = torch.compile(create_block_mask)(document_causal, None, None, total, total, device=q.device)
        _flex_cache.clear()
        _flex_cache[key] = (mask, torch.compile(flex_attention))
    mask, fn = _flex_cache[key]
    out = fn(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], block_mask=mask)
    return out[0].transpose(0, 1)


def _flash_attn():
    from flash_attn import flash_attn_varlen_func

    def run(q, k, v, lengths, cu):
        m = max(lengths)
        return flash_attn_varlen_func(q, k, v, cu, cu, m, m, causal=True)

    return run


def implementation(name):
    """The callable for `name`, or a skip reason string when its package is missing."""
    table = {"nextlong": lambda: _nextlong, "sdpa_dense_mask": lambda: _sdpa_dense_mask,
             "sdpa_per_doc": lambda: _sdpa_per_document, "sdpa_flash": lambda: _sdpa_flash, "flex": lambda: _flex, "flash_attn": _flash_attn}
    try:
        return table[name]()
    except ImportError as exc:
        return f"{name} not importable: {exc}"


# ---- measurement -------------------------------------------------------------------------------

def _inputs(total, heads, dim, device, dtype, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(total, heads, dim, device=device, dtype=dtype, generator=g).requires_grad_()
            for _ in range(3)]


def _step(fn, q, k, v, lengths, cu, backward):
    if not backward:
        with torch.no_grad():
            return fn(q, k, v, lengths, cu)
    q.grad = k.grad = v.grad = None
    out = fn(q, k, v, lengths, cu)
    out.backward(torch.ones_like(out))
    return out


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _malloc_trim():
    """Freed buffers back to the OS, and buffers of 64 KiB and more mmapped from now on (so each is
    returned when freed): VmHWM then tracks live memory, independent of MALLOC_MMAP_THRESHOLD_."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 65536)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_cpu(fn, total, heads, dim, mask, backward, repeats=3):
    """(best wall seconds, peak extra resident MiB over the inputs, best process CPU seconds)."""
    lengths = document_lengths(total, mask, lo=128, hi=1024)
    cu = cu_seqlens_from_lengths(lengths)
    q, k, v = _inputs(total, heads, dim, "cpu", torch.float32)
    _malloc_trim()
    _step(fn, q, k, v, lengths, cu, backward)
    gc.collect()
    _malloc_trim()  # hand freed pages back, so the peak of the measured steps shows in VmHWM
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = rss_kib("VmRSS")
    best = best_cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        _step(fn, q, k, v, lengths, cu, backward)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, (rss_kib("VmHWM") - base) / 1024, best_cpu, lengths


def measure_gpu(fn, total, heads, dim, mask, backward, repeats=5):
    """(median seconds, peak extra allocated MiB over the inputs and their grads, None, lengths)."""
    lengths = document_lengths(total, mask)
    cu = cu_seqlens_from_lengths(lengths, device="cuda")
    q, k, v = _inputs(total, heads, dim, "cuda", torch.bfloat16)
    _step(fn, q, k, v, lengths, cu, backward)  # warm-up: compiles kernels, allocates grads
    seconds, peak = cuda_median_seconds_and_peak_mib(lambda: _step(fn, q, k, v, lengths, cu, backward), repeats)
    return seconds, peak, None, lengths


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


def gpu_agreement(total=8192, heads=GPU_HEADS, dim=GPU_DIM):
    """Max |difference| of outputs and gradients, nextlong vs SDPA-flash per document (bf16): a sanity
    check that the numbers in the table come from a correct kernel."""
    lengths = document_lengths(total, "docs")
    cu = cu_seqlens_from_lengths(lengths, device="cuda")
    results = []
    for fn in (_nextlong, _sdpa_flash):
        q, k, v = _inputs(total, heads, dim, "cuda", torch.bfloat16)
        out = fn(q, k, v, lengths, cu)
        out.backward(torch.ones_like(out) / 16)
        results.append([out.detach().float(), q.grad.float(), k.grad.float(), v.grad.float()])
    return {name: (a - b).abs().max().item() for name, a, b in zip(("out", "dq", "dk", "dv"), *results)}


# ---- pytest-benchmark entries ------------------------------------------------------------------

CPU_IMPLS = ("nextlong", "sdpa_per_doc", "sdpa_dense_mask")
GPU_IMPLS = ("nextlong", "sdpa_flash", "flex", "flash_attn")


def _bench(benchmark, measure, fn, total, heads, dim, mask, backward, device, dtype):
    seconds, peak, cpu_seconds, lengths = measure(fn, total, heads, dim, mask, backward)
    tflops = attention_flops(lengths, heads, dim, backward) / seconds / 1e12
    benchmark.extra_info.update(seconds=seconds, cpu_seconds=cpu_seconds, peak_mib=peak, tflops=tflops,
                                documents=len(lengths))
    cu = cu_seqlens_from_lengths(lengths, device=device)
    q, k, v = _inputs(total, heads, dim, device, dtype)

    def step():
        _step(fn, q, k, v, lengths, cu, backward)
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(step, rounds=3, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd_bwd"])
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: "S{}_H{}_D{}".format(*s))
def test_cpu_fallback_vs_sdpa(benchmark, impl, shape, backward):
    torch.set_num_threads(2)
    benchmark.group = f"cpu-{'fwd_bwd' if backward else 'fwd'}-S{shape[0]}"
    _bench(benchmark, measure_cpu, implementation(impl), *shape, "docs", backward, "cpu", torch.float32)


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
        _bench(benchmark, measure_gpu, fn, total, GPU_HEADS, GPU_DIM, mask, backward, "cuda", torch.bfloat16)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        pytest.skip(f"{impl} out of memory at S={total}")


# ---- table with ratios (script mode) -----------------------------------------------------------

def _table(kind):
    if kind == "gpu" and not torch.cuda.is_available():
        print("gpu: skipped, CUDA not available")
        return
    if kind == "gpu":
        cases = [(s, GPU_HEADS, GPU_DIM, m, b) for s in GPU_SEQLENS for m in MASKS for b in (False, True)]
        cases += [(s, GPU_HEADS, GPU_DIM, m, False) for s in GPU_FWD_ONLY_SEQLENS for m in MASKS]
        impls, measure, peers = GPU_IMPLS, measure_gpu, ("flex",)
        print("nextlong vs sdpa_flash per document, 8K bf16, max |diff|:", gpu_agreement())
        peak = matmul_tflops()
        print(f"torch.matmul bf16 8192^3: {peak:.0f} TFLOP/s ({100 * peak / H100_BF16_DENSE_TFLOPS:.0f}% of the "
              f"H100 SXM paper peak {H100_BF16_DENSE_TFLOPS:.0f})")
    else:
        torch.set_num_threads(2)
        cases = [(s, h, d, "docs", b) for s, h, d in CPU_SHAPES for b in (False, True)]
        impls, measure, peers, peak = CPU_IMPLS, measure_cpu, ("sdpa_per_doc", "sdpa_dense_mask"), None
        print("load average (1/5/15 min):", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    for i, peer in enumerate(peers):
        print(f"peer {i + 1}: {peer}")
    print(f"{'S':>7} {'mask':>6} {'pass':>7} {'docs':>5} {'impl':>16} {'ms':>9} {'cpu ms':>8} {'TFLOP/s':>8} "
          f"{'peak MiB':>9}" + "".join(f" {f't/p{i}':>6} {f'cpu/p{i}':>7} {f'mem/p{i}':>7}" for i in range(1, len(peers) + 1))
          + f" {'%matmul':>7} {'%989':>5}")
    for total, heads, dim, mask, backward in cases:
        rows = {}
        label = "fwd+bwd" if backward else "fwd"
        for name in impls:
            fn = implementation(name)
            if isinstance(fn, str):
                print(f"{total:>7} {mask:>6} {label:>7} {'':>5} {name:>16}  skipped: {fn}")
                continue
            try:
                rows[name] = measure(fn, total, heads, dim, mask, backward)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                print(f"{total:>7} {mask:>6} {label:>7} {'':>5} {name:>16}  out of memory")
            except Exception as exc:  # a peer failing must not cost the rest of the table
                msg = str(exc).splitlines()[0][:120] if str(exc) else ""
                print(f"{total:>7} {mask:>6} {label:>7} {'':>5} {name:>16}  failed: {type(exc).__name__}: {msg}")
        for name, (sec, mib, cpu, lengths) in rows.items():
            tflops = attention_flops(lengths, heads, dim, backward) / sec / 1e12
            ratios = ""
            for peer in peers:
                ref = rows.get(peer)
                ratios += f" {sec / ref[0]:6.2f}" if ref else "      -"
                ratios += f" {cpu / ref[2]:7.2f}" if ref and cpu is not None else "       -"
                ratios += f" {mib / ref[1]:7.2f}" if ref and ref[1] > 0 else "       -"
            cms = f"{1000 * cpu:8.1f}" if cpu is not None else "       -"
            pm = f"{100 * tflops / peak:7.1f}" if peak else "      -"
            pp = f"{100 * tflops / H100_BF16_DENSE_TFLOPS:5.1f}" if peak else "    -"
            print(f"{total:>7} {mask:>6} {label:>7} {len(lengths):>5} {name:>16} {1000 * sec:9.1f} {cms} "
                  f"{tflops:8.3f} {mib:9.0f}{ratios} {pm} {pp}")
    print("t/pN, cpu/pN, mem/pN: relative to peer N (ms: wall, best of 3 on CPU, median on GPU; cpu ms: "
          "process CPU time, includes OpenMP spin-waiting); TFLOP/s over allowed pairs only; "
          "%matmul: of torch.matmul in this run; %989: of the H100 SXM bf16 dense paper peak")


if __name__ == "__main__":
    for kind in sys.argv[1:] or ["cpu", "gpu"]:
        _table(kind)
