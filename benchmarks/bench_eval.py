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
nextlong vs SDPA (eager does not fit at these lengths), CUDA-event timing, peak memory.

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


def run_gpu() -> list[dict]:
    if not torch.cuda.is_available():
        raise SystemExit("gpu: CUDA is not available")
    rows = []
    model = make_model(GPU_SHAPE, max(GPU_LENGTHS), "cuda", torch.bfloat16)
    for length in GPU_LENGTHS:
        ids = torch.randint(0, GPU_SHAPE["vocab_size"], (1, length), device="cuda")
        for impl in ("nextlong", "sdpa"):
            try:
                seconds, peak = gpu_seconds_and_peak(model, ids, impl)
            except torch.cuda.OutOfMemoryError:
                rows.append({"device": torch.cuda.get_device_name(), "impl": impl, "tokens": length, "oom": True})
                torch.cuda.empty_cache()
                continue
            rows.append({"device": torch.cuda.get_device_name(), "impl": impl, "tokens": length,
                         "seconds": seconds, "tokens_per_s": length / seconds, "peak_mib": peak})
    return rows


def print_table(rows: list[dict]) -> None:
    by_len = {}
    for r in rows:
        by_len.setdefault(r["tokens"], {})[r["impl"]] = r
    for length, impls in by_len.items():
        peer = impls.get("eager") or impls.get("sdpa")
        for impl, r in impls.items():
            if r.get("oom"):
                print(f"{r['device']:>10} S={length:>6} {impl:>9}: out of memory")
                continue
            ratio = r["tokens_per_s"] / peer["tokens_per_s"] if peer and not peer.get("oom") else float("nan")
            extra = f"  peak {r['peak_mib']:.0f} MiB" if "peak_mib" in r else ""
            extra += f"  max|diff| vs eager {r['max_abs_diff_vs_eager']:.1e}" if "max_abs_diff_vs_eager" in r else ""
            extra += f"  load {r['load']}" if "load" in r else ""
            print(f"{r['device']:>10} S={length:>6} {impl:>9}: {r['tokens_per_s']:>10.0f} tok/s "
                  f"({r['seconds'] * 1000:8.1f} ms)  x{ratio:.2f} vs {'eager' if 'eager' in impls else 'sdpa'}{extra}")


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
