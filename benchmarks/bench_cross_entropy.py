"""Peak memory and time of cross-entropy forward+backward: nextlong vs its peers, same run.

GPU (needs CUDA): N in {8K, 32K, 128K} tokens, hidden 4096, V in {32K, 128K, 256K}, bf16;
peers: eager PyTorch (materialised logits, fp32 upcast as transformers does), torch.compile of
the same, Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss`` and Apple's Cut Cross-Entropy
(``cut-cross-entropy``), each skipped with a reason when not importable or out of memory.

CPU: small shapes, the chunked fallback vs eager and a static torch.compile of it (compiled anew for each
shape), peak resident memory from ``VmHWM`` (reset through ``/proc/self/clear_refs``), so it runs on the CI
machine.

Every table row is checked: its loss and both gradients (hidden, weight) against the same inputs' loss
computed in a wider dtype (fp32 for the GPU's bf16 rows, fp64 for the CPU's fp32 rows; the weighted row
against the weighted mean), as max |x - ref| / max |ref|, called ok or WRONG at ``_measure.AGREE_TOL``.
A WRONG row is no peer for the ratios, and its time is recorded as failed (ms null).

Run: ``python3 -m pytest -q benchmarks/bench_cross_entropy.py -k cpu`` (pytest-benchmark), or
``python3 benchmarks/bench_cross_entropy.py [cpu|gpu]`` for a table with ratios to the peers.
"""

from __future__ import annotations

import gc
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from _measure import (AGREE_TOL, agrees, cuda_median_seconds_and_peak_mib, dtype_name, malloc_trim, record_gpu_row,
                      relative_error, reset_peak_rss, rss_kib, verdict, wide_dtype)

from nextlong.kernels.losses import fused_linear_cross_entropy

H100_BF16_DENSE_TFLOPS = 989.0
GPU_TOKENS = (8192, 32768, 131072)
GPU_VOCABS = (32768, 131072, 262144)
GPU_HIDDEN = 4096
CPU_SHAPES = ((2048, 256, 8192), (4096, 256, 32768))  # (N, H, V)


# ---- implementations: each maps (hidden, weight, labels) -> scalar mean loss ----------------

def _eager(h, w, y):
    return F.cross_entropy(F.linear(h, w).float(), y)


_compiled = None


def _compile(h, w, y):
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(_eager, dynamic=False)  # a user with one shape gets a static graph
    return _compiled(h, w, y)


def new_compile_case() -> None:
    """A fresh static compile for the next shape: one wrapper serving two shapes recompiled the second as a
    dynamic-shape graph (automatic_dynamic_shapes), which is not what a user with that one shape runs."""
    global _compiled
    _compiled = None
    torch._dynamo.reset()


def _nextlong(h, w, y):
    return fused_linear_cross_entropy(h, w, y)


def _nextlong_fp32acc(h, w, y):
    """dW summed in an fp32 accumulator (the default with bf16 weights sums it in place, as Liger does)."""
    return fused_linear_cross_entropy(h, w, y, accumulate_fp32=True)


def _token_weights(labels):
    """The weighted row's per-token weights (LongCE-style, in [0, 5)), seeded apart from the inputs."""
    g = torch.Generator(device=labels.device).manual_seed(1)
    return 5 * torch.rand(labels.shape, device=labels.device, generator=g)


def _nextlong_weighted(h, w, y):
    """Per-token weights: the same kernels with one more O(N) vector."""
    return fused_linear_cross_entropy(h, w, y, token_weights=_token_weights(y))


def _nextlong_triton(h, w, y):
    """Our Triton kernels forced (on CUDA, training takes the chunked cuBLAS path by default)."""
    return fused_linear_cross_entropy(h, w, y, backend="triton")


def _liger():
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss()
    return lambda h, w, y: loss(w, h, y)


def _cce():
    from cut_cross_entropy import linear_cross_entropy

    return lambda h, w, y: linear_cross_entropy(h, w, y)


def implementation(name):
    """The callable for ``name``, or a skip reason string when its package is missing."""
    table = {"nextlong": lambda: _nextlong, "nextlong_fp32acc": lambda: _nextlong_fp32acc,
             "nextlong_weighted": lambda: _nextlong_weighted, "nextlong_triton": lambda: _nextlong_triton,
             "eager": lambda: _eager, "compile": lambda: _compile,
             "liger": _liger, "cce": _cce}
    try:
        return table[name]()
    except ImportError as exc:
        return f"{name} not importable: {exc}"


# ---- measurement -------------------------------------------------------------------------

def _inputs(n, h, v, device, dtype, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    hidden = (torch.randn(n, h, device=device, dtype=dtype, generator=g)).requires_grad_()
    weight = (torch.randn(v, h, device=device, dtype=dtype, generator=g) * h ** -0.5).requires_grad_()
    labels = torch.randint(0, v, (n,), device=device, generator=g)
    return hidden, weight, labels


def _step(fn, hidden, weight, labels):
    hidden.grad = weight.grad = None
    loss = fn(hidden, weight, labels)
    loss.backward()
    return loss


def measure_cpu(fn, n, h, v, repeats=3):
    """(wall seconds per fwd+bwd, best of ``repeats``; peak extra resident MiB over the inputs;
    process CPU seconds, best of ``repeats`` - steadier than wall time on a shared machine)."""
    hidden, weight, labels = _inputs(n, h, v, "cpu", torch.float32)
    _step(fn, hidden, weight, labels)  # warm-up; also allocates the .grad tensors' first copy
    gc.collect()
    reset_peak_rss()
    base = rss_kib("VmRSS")
    best = best_cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        _step(fn, hidden, weight, labels)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, (rss_kib("VmHWM") - base) / 1024, best_cpu


CPU_ROUNDS = 7


def measure_cpu_rows(fns: dict, n, h, v, rounds=CPU_ROUNDS) -> dict:
    """{name: (best wall seconds, peak extra MiB, best CPU seconds, CPU seconds per round)} for `fns` on one
    shape: the implementations take turns, one step of each per round on its own copy of the same inputs,
    the allocator trimmed and VmHWM reset before each step, so load drift and what ran before touch every
    side alike (the ratios are medians of the per-round pairs)."""
    malloc_trim()
    state = {}
    for name, fn in fns.items():
        hidden, weight, labels = _inputs(n, h, v, "cpu", torch.float32)
        _step(fn, hidden, weight, labels)  # warm-up (the compile, for torch.compile)
        state[name] = {"fn": fn, "inputs": (hidden, weight, labels), "wall": [], "cpu": [], "peak": 0.0}
    for _ in range(rounds):
        for st in state.values():
            hidden, weight, labels = st["inputs"]
            hidden.grad = weight.grad = None
            gc.collect()
            malloc_trim()
            reset_peak_rss()
            base = rss_kib("VmRSS")
            t0, c0 = time.perf_counter(), time.process_time()
            _step(st["fn"], hidden, weight, labels)
            st["wall"].append(time.perf_counter() - t0)
            st["cpu"].append(time.process_time() - c0)
            st["peak"] = max(st["peak"], (rss_kib("VmHWM") - base) / 1024)
    return {name: (min(st["wall"]), st["peak"], min(st["cpu"]), st["cpu"]) for name, st in state.items()}


def measure_gpu(fn, n, h, v, repeats=5):
    """(seconds per fwd+bwd, median of ``repeats``; peak extra allocated MiB over the inputs)."""
    hidden, weight, labels = _inputs(n, h, v, "cuda", torch.bfloat16)
    _step(fn, hidden, weight, labels)
    hidden.grad = weight.grad = None
    seconds, peak = cuda_median_seconds_and_peak_mib(lambda: _step(fn, hidden, weight, labels), repeats)
    return seconds, peak, None


def step_outputs(fn, n, h, v, device, dtype):
    """(loss, d hidden, d weight) of one fwd+bwd on the seeded inputs, as fp32."""
    hidden, weight, labels = _inputs(n, h, v, device, dtype)
    loss = _step(fn, hidden, weight, labels)
    return [loss.detach().float(), hidden.grad.float(), weight.grad.float()]


WEIGHTED = ("nextlong_weighted",)  # rows whose work is the token-weighted mean


def reference_outputs(n, h, v, device, dtype, weighted=False, rows=4096):
    """(loss, d hidden, d weight) of the seeded inputs' mean cross-entropy (weighted: sum w ce / sum w, with
    the weighted row's weights), computed in ``wide_dtype(dtype)`` from the same rounded inputs, ``rows``
    tokens of logits at a time: the reference every row of the table is checked against."""
    wide = wide_dtype(dtype)
    hidden, weight, labels = _inputs(n, h, v, device, dtype)
    x, w = hidden.detach().to(wide), weight.detach().to(wide).requires_grad_()
    tw = _token_weights(labels).to(wide) if weighted else torch.ones(n, device=device, dtype=wide)
    total, loss, dx = tw.sum(), torch.zeros((), device=device, dtype=wide), torch.empty_like(x)
    for s in range(0, n, rows):
        part = x[s:s + rows].requires_grad_()
        ce = F.cross_entropy(F.linear(part, w), labels[s:s + rows], reduction="none")
        piece = (ce * tw[s:s + rows]).sum() / total
        piece.backward()
        dx[s:s + rows] = part.grad
        loss += piece.detach()
    return [loss, dx, w.grad]


def matmul_fraction_of_peak(n, h, v, seconds):
    """Useful logit matmul work (forward + two backward products = 6NHV flops) / H100 bf16 peak."""
    return 6.0 * n * h * v / seconds / 1e12 / H100_BF16_DENSE_TFLOPS


# ---- pytest-benchmark entries -------------------------------------------------------------

CPU_IMPLS = ("nextlong", "eager", "compile")
GPU_IMPLS = ("nextlong", "nextlong_fp32acc", "nextlong_weighted", "nextlong_triton", "eager", "compile", "liger",
             "cce")


def _run(benchmark, measure, fn, n, h, v, device, dtype):
    """Peak memory (and its own timing) from ``measure``; pytest-benchmark times one fwd+bwd."""
    seconds, peak, cpu_seconds = measure(fn, n, h, v)
    benchmark.extra_info.update(peak_mib=peak, seconds=seconds, cpu_seconds=cpu_seconds)
    if device == "cuda":
        benchmark.extra_info["matmul_fraction_of_h100_peak"] = matmul_fraction_of_peak(n, h, v, seconds)
    hidden, weight, labels = _inputs(n, h, v, device, dtype)

    def step():
        _step(fn, hidden, weight, labels)
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(step, rounds=3, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: "N{}_H{}_V{}".format(*s))
def test_cpu_fallback_vs_eager(benchmark, impl, shape):
    torch.set_num_threads(2)
    new_compile_case()
    _run(benchmark, measure_cpu, implementation(impl), *shape, "cpu", torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmark needs CUDA")
@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("v", GPU_VOCABS)
@pytest.mark.parametrize("n", GPU_TOKENS)
def test_gpu_fused_linear_ce(benchmark, impl, n, v):
    new_compile_case()
    fn = implementation(impl)
    if isinstance(fn, str):
        pytest.skip(fn)
    try:
        _run(benchmark, measure_gpu, fn, n, GPU_HIDDEN, v, "cuda", torch.bfloat16)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        pytest.skip(f"{impl} out of memory at N={n} V={v}")


# ---- accuracy of dW summed in place (16-bit) or in fp32 -------------------------------------

def weight_grad_errors(n, h, v, device="cpu", chunk=None, seed=0) -> dict:
    """max |dW - fp64 dW| of the chunked path with bf16 inputs, dW summed in place in bf16 (the default for
    bf16 weights) and in an fp32 accumulator, both relative to max |dW|; and, for scale, the error of
    rounding the exact dW to bf16 once. Same bf16 inputs for all, the reference in fp64 on the device."""
    hidden, weight, labels = _inputs(n, h, v, device, torch.bfloat16, seed=seed)
    h64, w64 = (t.detach().double().requires_grad_() for t in (hidden, weight))
    exact = torch.autograd.grad(F.cross_entropy(F.linear(h64, w64), labels), w64)[0]
    del h64, w64
    scale = exact.abs().max().item()
    out = {"chunks": -(-n // (chunk or _chunk(n, v, device))), "max_abs_dw": scale,
           "bf16_rounding": (exact.bfloat16().double() - exact).abs().max().item() / scale}
    for name, fp32 in (("in_place_bf16", False), ("fp32_accumulator", True)):
        x, w = hidden.detach(), weight.detach().requires_grad_()
        loss = fused_linear_cross_entropy(x, w, labels, chunk_size=chunk, accumulate_fp32=fp32)
        grad = torch.autograd.grad(loss, w)[0]
        out[name] = (grad.double() - exact).abs().max().item() / scale
        del grad
    return out


def _chunk(n, v, device):
    from nextlong.kernels._ce_reference import default_chunk

    return default_chunk(n, v, device == "cuda")


# ---- table with ratios (script mode) ------------------------------------------------------

def _record(name, n, h, v, seconds, mib):
    """One row of docs/benchmarks/gpu-runs.jsonl; the weighted run is impl "nextlong" with weights true,
    the fp32-accumulation one keeps its own impl name, "nextlong_fp32acc"."""
    impl = "nextlong" if name == "nextlong_weighted" else name
    record_gpu_row("cross_entropy", "fwd+bwd", impl, n=n, h=h, v=v, weights=name == "nextlong_weighted",
                   dtype="bfloat16", ms=None if seconds is None else 1000 * seconds, peak_mib=mib,
                   tflops=None if seconds is None else 6.0 * n * h * v / seconds / 1e12)


def _table(kind):
    if kind == "gpu" and not torch.cuda.is_available():
        print("gpu: skipped, CUDA not available")
        return
    shapes = ([(n, GPU_HIDDEN, v) for n in GPU_TOKENS for v in GPU_VOCABS] if kind == "gpu"
              else list(CPU_SHAPES))
    impls, measure = (GPU_IMPLS, measure_gpu) if kind == "gpu" else (CPU_IMPLS, measure_cpu)
    if kind == "cpu":
        torch.set_num_threads(2)
    device, dtype = ("cuda", torch.bfloat16) if kind == "gpu" else ("cpu", torch.float32)
    print(f"{'N':>7} {'H':>5} {'V':>7} {'impl':>17} {'ms':>10} {'cpu ms':>8} {'peak MiB':>10} "
          f"{'t/peer':>7} {'mem/peer':>8} {'%peak':>6}  error vs "
          f"{dtype_name(wide_dtype(dtype))} reference")
    wrong = []
    for n, h, v in shapes:
        new_compile_case()
        rows, errors, rounds = {}, {}, {}
        refs = {weighted: reference_outputs(n, h, v, device, dtype, weighted)
                for weighted in {name in WEIGHTED for name in impls}}
        if kind == "cpu":  # interleaved: one step of each implementation per round
            fns = {name: implementation(name) for name in impls}
            rounds = measure_cpu_rows({k: f for k, f in fns.items() if not isinstance(f, str)}, n, h, v)
        for name in impls:
            fn = implementation(name)
            if isinstance(fn, str):
                print(f"{n:>7} {h:>5} {v:>7} {name:>17}  skipped: {fn}")
                continue
            try:
                rows[name] = rounds[name][:3] if kind == "cpu" else measure(fn, n, h, v)
                errors[name] = relative_error(step_outputs(fn, n, h, v, device, dtype), refs[name in WEIGHTED])
            except torch.OutOfMemoryError:
                rows.pop(name, None)
                torch.cuda.empty_cache()
                print(f"{n:>7} {h:>5} {v:>7} {name:>17}  out of memory")
                if kind == "gpu":
                    _record(name, n, h, v, None, None)
        del refs
        # the peer a user would pick, among the rows whose outputs agree with the reference
        peer_name = next((k for k in ("liger", "compile", "eager") if k in rows and agrees(errors[k], dtype)), None)
        peer_t = rows.get(peer_name)
        mem_peer = next((k for k in ("cce", "eager") if k in rows and agrees(errors[k], dtype)), None)
        peer_m = rows.get(mem_peer)
        for name, (sec, mib, cpu) in rows.items():
            frac = f"{100 * matmul_fraction_of_peak(n, h, v, sec):6.1f}" if kind == "gpu" else "     -"
            if peer_t and kind == "cpu":  # CPU time (steadier on a shared machine), median of the per-round pairs
                pairs = sorted(a / b for a, b in zip(rounds[name][3], rounds[peer_name][3]))
                rt = f"{pairs[len(pairs) // 2]:7.2f}"
            elif peer_t:
                ratio = cpu / peer_t[2] if cpu is not None else sec / peer_t[0]
                rt = f"{ratio:7.2f}"
            else:
                rt = "      -"
            rm = f"{mib / peer_m[1]:8.2f}" if peer_m and peer_m[1] > 0 else "       -"
            cms = f"{1000 * cpu:8.1f}" if cpu is not None else "       -"
            print(f"{n:>7} {h:>5} {v:>7} {name:>17} {1000 * sec:10.1f} {cms} {mib:10.0f} {rt} {rm} {frac}  "
                  f"{verdict(errors[name], dtype)}")
            if not agrees(errors[name], dtype):
                wrong.append(f"{name} at N={n} H={h} V={v}")
            if kind == "gpu":  # a row whose outputs are wrong is recorded as failed (ms null), not as a time
                _record(name, n, h, v, sec if agrees(errors[name], dtype) else None, mib)
    wide = dtype_name(wide_dtype(dtype))
    print("t/peer: time relative to liger (torch.compile where liger is absent, then eager; on CPU the median "
          f"of {CPU_ROUNDS} interleaved rounds' CPU-time ratios); "
          "mem/peer: peak relative to cce (eager when cce is absent); a peer is one whose outputs pass. "
          f"error: max over loss, dh, dw of max|x - ref| / max|ref|, against the same inputs in {wide} "
          f"(weighted rows: the weighted mean); ok up to {AGREE_TOL[dtype]:g}")
    if wrong:
        print(f"WRONG outputs (times not recorded): {'; '.join(wrong)}")
    print_fp32_output_gemm()


def print_weight_grad_errors(shapes, device) -> None:
    for n, h, v, chunk in shapes:
        e = weight_grad_errors(n, h, v, device, chunk)
        print(f"N={n} H={h} V={v} chunks={e['chunks']} ({device}, bf16): max|dW - fp64| / max|dW|: in place "
              f"{e['in_place_bf16']:.2e}, fp32 accumulator {e['fp32_accumulator']:.2e}; one bf16 rounding of "
              f"the exact dW {e['bf16_rounding']:.2e}")
    print_fp32_output_gemm()


def print_fp32_output_gemm() -> None:
    """Which way the fp32 dW sum added each chunk's product in this process (nothing when it never ran)."""
    from nextlong.kernels._ce_reference import fp32_output_gemm

    found = fp32_output_gemm()
    if "works" in found:
        print("fp32 dW sum: " + ("one GEMM with fp32 output, in place (out_dtype)" if found["works"] else
                                 f"a bf16 product added (out_dtype refused: {found.get('why')})"))


if __name__ == "__main__":
    for kind in sys.argv[1:] or ["cpu", "gpu"]:
        if kind == "accuracy-cpu":
            torch.set_num_threads(2)
            print_weight_grad_errors([(16384, 256, 8192, 1024), (16384, 256, 8192, 256), (65536, 256, 8192, 1024)],
                                     "cpu")
        else:
            _table(kind)
