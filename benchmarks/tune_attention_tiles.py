"""Tile sweep for our Triton attention kernels on a GPU: each candidate (BLOCK_M, BLOCK_N, num_warps,
num_stages) of one kernel against the shipped one, same inputs, same process, same timing.

The forward is timed alone; a dK/dV or dQ candidate is timed as forward + backward with the other two
kernels at their shipped tiles, so a row's ratio to the shipped row is that kernel's effect. Every
candidate's output and gradients are compared with the shipped configuration's (bf16, max |diff|), so
a tiling that computes something else is reported, not ranked. A candidate that does not compile
(shared memory, registers) is reported and skipped.

Run on a GPU: ``python3 benchmarks/tune_attention_tiles.py [--dim 128] [--seq 32768] [--heads 16]``.
The winners go into ``_FWD``/``_DKDV``/``_DQ`` in ``nextlong/kernels/_attn_triton.py`` by hand, with the
figures in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys

import torch
from _measure import cuda_median_seconds_and_peak_mib  # benchmarks/ is on the path when run as a script
from bench_attention import _inputs, attention_flops, document_lengths

from nextlong.kernels import _attn_triton as tiles
from nextlong.kernels.attention import cu_seqlens_from_lengths, flash_attention

CANDIDATES = {
    "_FWD": [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (128, 32, 4, 4), (64, 128, 8, 3)],
    "_DKDV": [(32, 128, 8, 2), (64, 128, 8, 2), (64, 64, 4, 2), (64, 64, 4, 3), (32, 64, 4, 2), (32, 128, 4, 2),
              (128, 128, 8, 2), (16, 128, 4, 2), (64, 128, 8, 1)],
    "_DQ": [(128, 64, 8, 2), (64, 64, 4, 2), (128, 32, 8, 2), (128, 64, 4, 3), (64, 128, 8, 2), (128, 128, 8, 2)],
}


def run(kernel: str, config, dim: int, total: int, heads: int, mask: str, repeats: int = 5):
    """(seconds, outputs) with ``config`` in place of the shipped tiles of ``kernel`` at ``dim``."""
    table = getattr(tiles, kernel)
    shipped = table[dim]
    table[dim] = config
    try:
        lengths = document_lengths(total, mask)
        cu = cu_seqlens_from_lengths(lengths, device="cuda")
        q, k, v = _inputs(total, heads, dim, "cuda", torch.bfloat16)
        backward = kernel != "_FWD"
        g = torch.Generator(device="cuda").manual_seed(1)
        do = torch.randn(q.shape, device="cuda", dtype=q.dtype, generator=g) * 0.1  # same for every candidate

        def step():
            q.grad = k.grad = v.grad = None
            out = flash_attention(q, k, v, causal=True, cu_seqlens=cu)
            if backward:
                out.backward(do)
            return out

        out = step()
        outputs = [out.detach()] + ([q.grad, k.grad, v.grad] if backward else [])
        seconds, _ = cuda_median_seconds_and_peak_mib(step, repeats)
        return seconds, outputs, attention_flops(lengths, heads, dim, backward)
    finally:
        table[dim] = shipped


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--seq", type=int, default=32768)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--masks", default="docs,causal")
    p.add_argument("--kernels", default="_DKDV,_FWD,_DQ")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("tile sweep: skipped, CUDA not available")
        return 0
    print(f"device: {torch.cuda.get_device_name()}, triton {tiles.triton.__version__}, torch {torch.__version__}; "
          f"S={a.seq} H={a.heads} D={a.dim} bf16; median of 5 CUDA-event timings after one warm-up")
    for kernel in a.kernels.split(","):
        for mask in a.masks.split(","):
            shipped = getattr(tiles, kernel)[a.dim]
            ref_sec, ref_out, flops = run(kernel, shipped, a.dim, a.seq, a.heads, mask)
            print(f"{kernel:>6} {mask:>6} shipped {shipped}: {1000 * ref_sec:8.2f} ms "
                  f"{flops / ref_sec / 1e12:6.1f} TFLOP/s", flush=True)
            for config in CANDIDATES[kernel]:
                if tuple(config) == tuple(shipped):
                    continue
                try:
                    sec, outs, _ = run(kernel, config, a.dim, a.seq, a.heads, mask)
                except Exception as exc:  # a tiling that does not fit is a finding, not a crash
                    print(f"{kernel:>6} {mask:>6} {config}: failed: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:100] if str(exc) else ''}", flush=True)
                    torch.cuda.empty_cache()
                    continue
                diff = max((x.float() - y.float()).abs().max().item() for x, y in zip(outs, ref_out))
                print(f"{kernel:>6} {mask:>6} {config}: {1000 * sec:8.2f} ms {flops / sec / 1e12:6.1f} TFLOP/s "
                      f"x{ref_sec / sec:5.2f} vs shipped  max|diff| {diff:.3g}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
