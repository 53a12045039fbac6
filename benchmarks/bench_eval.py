"""Evaluation prefill throughput (tokens/s): the attention a `nextlong eval` prefill runs, same model,
same prompt, same run.

Each side does the same work: one forward pass of a random Llama over one S-token prompt with
`logits_to_keep=1` (only the last position's logits, as the eval runner's prefill does) and a fresh
KV cache, under `torch.no_grad()`. Only the attention implementation differs:

* ``nextlong`` — our kernel through `attn_implementation="nextlong"` (Triton on CUDA; on CPU its
  PyTorch fallback, PyTorch's fused flash kernel for a single document),
* ``sdpa`` — `torch.nn.functional.scaled_dot_product_attention` as transformers calls it,
* ``eager`` — transformers' eager attention (materialises the (S, S) score matrix per head).

CPU: a small Llama (hidden 256, 4 layers, 8 query / 4 KV heads of 32, vocab 32K) at S = 4096, fp32,
median of 3 timed runs after one warm-up. GPU (prepared, run on a lent GPU): a 1B-class Llama shape
(hidden 2048, 16 layers, 32 query / 8 KV heads of 64, vocab 128K) in bf16 at S = 32K, 64K, 128K,
nextlong vs SDPA (eager does not fit at these lengths), CUDA-event timing, peak memory, and the max
|difference| of the last position's logits against SDPA's.

GPU, attention alone (`attention_only_gpu`, same run): one causal document, forward, bf16, through
the attention functions the prefill calls (transformers' `sdpa_attention_forward` and our
`nextlong_attention_forward`, which repacks transformers' (B, H, S, D) q/k/v into our (B, S, H, D)
layout) and our kernel alone on contiguous (B, S, H, D) inputs, at two shapes: the eval model's
(32 query / 8 KV heads of 64, GQA) and bench_attention.py's (16 heads of 128). The first lease
measured our forward 1.16-1.36x SDPA at the second shape, the second lease this prefill at 0.90x
at the first; this table measures both shapes, and the prefill's extra work, in one run.

Run: ``python3 benchmarks/bench_eval.py [cpu|gpu]`` prints a table with ratios; or
``python3 -m pytest -q benchmarks/bench_eval.py -k cpu`` (pytest-benchmark entries).
"""

from __future__ import annotations

import statistics
import sys
import time

import pytest
import torch

CPU_SHAPE = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4, vocab_size=32000)
GPU_SHAPE = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256)
CPU_LENGTH = 4096
GPU_LENGTHS = (32768, 65536, 131072)
IMPLS = ("nextlong", "sdpa", "eager")


def make_model(shape: dict, max_positions: int, device: str, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    import nextlong.kernels.transformers_attention  # noqa: F401  registers "nextlong"

    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=max_positions, rope_theta=500000.0, **shape)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()


def prefill(model, ids, impl: str):
    """What the eval runner's prefill does: one pass over the prompt, last position's logits only."""
    from nextlong.eval.model import attention, forward

    with torch.no_grad(), attention(model, impl):
        logits, _, _ = forward(model, ids, last_only=True)
    return logits


def cpu_seconds(model, ids, impl: str, repeats: int = 3) -> float:
    prefill(model, ids, impl)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        prefill(model, ids, impl)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gpu_seconds_and_peak(model, ids, impl: str, repeats: int = 3) -> tuple[float, float]:
    from _measure import cuda_median_seconds_and_peak_mib

    prefill(model, ids, impl)
    return cuda_median_seconds_and_peak_mib(lambda: prefill(model, ids, impl), repeats)


def _load() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def run_cpu() -> list[dict]:
    model = make_model(CPU_SHAPE, CPU_LENGTH, "cpu", torch.float32)
    ids = torch.randint(0, CPU_SHAPE["vocab_size"], (1, CPU_LENGTH))
    ref = prefill(model, ids, "eager")[0, -1]
    rows = []
    for impl in IMPLS:
        out = prefill(model, ids, impl)[0, -1]
        err = float((out - ref).abs().max())
        seconds = cpu_seconds(model, ids, impl)
        rows.append({"device": "cpu", "impl": impl, "tokens": CPU_LENGTH, "seconds": seconds,
                     "tokens_per_s": CPU_LENGTH / seconds, "max_abs_diff_vs_eager": err, "load": _load()})
    return rows


def _record(impl, length, seconds, peak):
    """One row of docs/benchmarks/gpu-runs.jsonl: a whole-model prefill of one document (h: the model's
    hidden size, v: its vocabulary)."""
    from _measure import record_gpu_row

    shape = GPU_SHAPE
    record_gpu_row("prefill", "fwd", impl, seq=length, docs=1, h=shape["hidden_size"], v=shape["vocab_size"],
                   head_dim=shape["hidden_size"] // shape["num_attention_heads"],
                   kv_heads=shape["num_key_value_heads"], dtype="bfloat16",
                   ms=None if seconds is None else 1000 * seconds, peak_mib=peak)


def run_gpu() -> list[dict]:
    if not torch.cuda.is_available():
        raise SystemExit("gpu: CUDA is not available")
    rows = []
    model = make_model(GPU_SHAPE, max(GPU_LENGTHS), "cuda", torch.bfloat16)
    for length in GPU_LENGTHS:
        ids = torch.randint(0, GPU_SHAPE["vocab_size"], (1, length), device="cuda")
        logits = {}
        for impl in ("sdpa", "nextlong"):
            try:
                seconds, peak = gpu_seconds_and_peak(model, ids, impl)
                logits[impl] = prefill(model, ids, impl)[0, -1].float()
            except torch.cuda.OutOfMemoryError:
                rows.append({"device": torch.cuda.get_device_name(), "impl": impl, "tokens": length, "oom": True})
                torch.cuda.empty_cache()
                _record(impl, length, None, None)
                continue
            _record(impl, length, seconds, peak)
            row = {"device": torch.cuda.get_device_name(), "impl": impl, "tokens": length,
                   "seconds": seconds, "tokens_per_s": length / seconds, "peak_mib": peak}
            if impl != "sdpa" and "sdpa" in logits:
                row["max_abs_diff_vs_sdpa"] = float((logits[impl] - logits["sdpa"]).abs().max())
            rows.append(row)
    return rows


ATTENTION_SHAPES = {"eval model: 32 q / 8 kv heads of 64": (32, 8, 64),
                    "bench_attention: 16 heads of 128": (16, 16, 128)}


def _cpu_median_seconds(step, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), 0.0


def attention_only_gpu(lengths=(32768, 131072), repeats: int = 5, device: str = "cuda",
                       dtype=torch.bfloat16) -> list[dict]:
    """Forward of one causal document, bf16: transformers' SDPA function, our transformers function,
    and our kernel on contiguous inputs, at the eval model's and bench_attention's head shapes.
    (device="cpu", dtype=torch.float32 with short lengths: a smoke run of the same code.)"""
    from types import SimpleNamespace

    if device == "cuda":
        from _measure import cuda_median_seconds_and_peak_mib as timer
    else:
        timer = _cpu_median_seconds
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from nextlong.kernels.attention import flash_attention
    from nextlong.kernels.transformers_attention import nextlong_attention_forward

    rows = []
    for label, (heads, kv_heads, dim) in ATTENTION_SHAPES.items():
        module = SimpleNamespace(is_causal=True, training=False, num_key_value_groups=heads // kv_heads)
        scale = dim ** -0.5
        for length in lengths:
            g = torch.Generator(device=device).manual_seed(0)
            q, k, v = (torch.randn(1, h, length, dim, device=device, dtype=dtype, generator=g)
                       for h in (heads, kv_heads, kv_heads))
            packed = [x.transpose(1, 2).contiguous() for x in (q, k, v)]
            impls = {
                "sdpa (transformers' function)": lambda: sdpa_attention_forward(module, q, k, v, None, scaling=scale)[0],
                "nextlong (transformers' function)":
                    lambda: nextlong_attention_forward(module, q, k, v, None, scaling=scale)[0],
                "nextlong kernel, (B, S, H, D) inputs":
                    lambda: flash_attention(*packed, causal=True, softmax_scale=scale),
            }
            ref = None
            for name, fn in impls.items():
                with torch.no_grad():
                    out = fn().float()
                    ref = out if ref is None else ref
                    seconds, peak = timer(fn, repeats)
                flops = 4.0 * dim * heads * length * (length + 1) / 2
                rows.append({"shape": label, "tokens": length, "impl": name, "seconds": seconds, "peak_mib": peak,
                             "tflops": flops / seconds / 1e12, "max_abs_diff_vs_sdpa": float((out - ref).abs().max())})
                del out
            del q, k, v, packed
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def print_attention(rows: list[dict]) -> None:
    """Attention-only table: time relative to transformers' SDPA function of the same shape and length."""
    base = {(r["shape"], r["tokens"]): r["seconds"] for r in rows if r["impl"].startswith("sdpa")}
    for r in rows:
        speed = base[(r["shape"], r["tokens"])] / r["seconds"]
        print(f"{r['shape']:>36} S={r['tokens']:>6} {r['impl']:>36}: {1000 * r['seconds']:8.2f} ms "
              f"{r['tflops']:6.0f} TFLOP/s  speed x{speed:.2f} vs sdpa  peak {r['peak_mib']:.0f} MiB  "
              f"max|diff| {r['max_abs_diff_vs_sdpa']:.1e}")


def print_table(rows: list[dict]) -> None:
    by_len = {}
    for r in rows:
        by_len.setdefault(r["tokens"], {})[r["impl"]] = r
    for length, impls in by_len.items():
        # SDPA is the peer a user would pick (eager materialises the (S, S) scores); eager stays the
        # correctness reference on CPU.
        peer_name = "sdpa" if "sdpa" in impls else "eager"
        peer = impls.get(peer_name)
        for impl, r in impls.items():
            if r.get("oom"):
                print(f"{r['device']:>10} S={length:>6} {impl:>9}: out of memory")
                continue
            ratio = r["tokens_per_s"] / peer["tokens_per_s"] if peer and not peer.get("oom") else float("nan")
            extra = f"  peak {r['peak_mib']:.0f} MiB" if "peak_mib" in r else ""
            extra += f"  max|diff| vs eager {r['max_abs_diff_vs_eager']:.1e}" if "max_abs_diff_vs_eager" in r else ""
            extra += f"  max|diff| vs sdpa {r['max_abs_diff_vs_sdpa']:.1e}" if "max_abs_diff_vs_sdpa" in r else ""
            extra += f"  load {r['load']}" if "load" in r else ""
            print(f"{r['device']:>10} S={length:>6} {impl:>9}: {r['tokens_per_s']:>10.0f} tok/s "
                  f"({r['seconds'] * 1000:8.1f} ms)  x{ratio:.2f} vs {peer_name}{extra}")


@pytest.fixture(scope="module")
def cpu_model():
    return make_model(CPU_SHAPE, CPU_LENGTH, "cpu", torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_cpu_prefill_4k(benchmark, cpu_model, impl):
    ids = torch.randint(0, CPU_SHAPE["vocab_size"], (1, CPU_LENGTH))
    prefill(cpu_model, ids, impl)
    benchmark.pedantic(prefill, args=(cpu_model, ids, impl), rounds=3, iterations=1)
    benchmark.extra_info["tokens"] = CPU_LENGTH


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    print_table(run_cpu() if which == "cpu" else run_gpu())
    if which == "gpu":
        print_attention(attention_only_gpu())
