"""Timing and peak-memory probes shared by the kernel benchmarks."""

from __future__ import annotations

import gc
import math
import re

import torch


def rss_kib(field: str) -> int:
    """A memory figure of this process from /proc (VmRSS: now, VmHWM: peak), in KiB."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1))


def reset_peak_rss() -> None:
    """VmHWM back to the current RSS (Linux >= 4.0): a later rss_kib("VmHWM") is the peak of what follows."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def malloc_trim() -> None:
    """Freed buffers back to the OS, and buffers of 64 KiB and more mmapped from now on (so each is returned
    when freed): VmHWM then tracks each step's live memory, whatever ran before it and whatever
    MALLOC_MMAP_THRESHOLD_ says (the CPU tables call it before every step they measure)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 65536)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cuda_median_seconds_and_peak_mib(step, repeats: int) -> tuple[float, float]:
    """Median seconds of `step()` over `repeats` runs timed with CUDA events, and the peak memory the
    runs allocated beyond what was allocated before them (MiB). Call after a warm-up step."""
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    return sorted(times)[len(times) // 2], peak


# ---- one JSON object per measured GPU row (docs/benchmarks/gpu-runs.jsonl) ----------------------

GPU_ROW_FIELDS = ("lease", "date", "device", "torch", "triton", "op", "pass", "impl", "seq", "docs", "n", "h", "v",
                  "head_dim", "kv_heads", "weights", "dtype", "ms", "peak_mib", "tflops")
GPU_OPS = ("cross_entropy", "attention", "prefill", "train_step")


def gpu_row(op: str, pass_: str, impl: str, *, ms, peak_mib=None, tflops=None, **shape) -> dict:
    """A measured row with every field of GPU_ROW_FIELDS (absent shape fields null), stamped with the lease
    (NEXTLONG_LEASE, set by gpu_lease.sh), the date, the device and the versions. ms is None when the
    implementation ran out of memory."""
    import datetime
    import os

    if op not in GPU_OPS:
        raise ValueError(f"op must be one of {GPU_OPS}, got {op!r}")
    unknown = set(shape) - set(GPU_ROW_FIELDS)
    if unknown:
        raise ValueError(f"unknown row fields {sorted(unknown)}")
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    row = dict.fromkeys(GPU_ROW_FIELDS)
    row.update(lease=os.environ.get("NEXTLONG_LEASE"), date=datetime.date.today().isoformat(), device=device,
               torch=torch.__version__, triton=triton_version, op=op, impl=impl, ms=ms, peak_mib=peak_mib,
               tflops=tflops, **shape)
    row["pass"] = pass_
    if isinstance(row["dtype"], torch.dtype):
        row["dtype"] = dtype_name(row["dtype"])
    return row


def record_gpu_row(op: str, pass_: str, impl: str, **fields) -> dict:
    """`gpu_row`, appended as one line to the file NEXTLONG_GPU_RUNS names (nothing is written when it is
    unset, so the tables run anywhere)."""
    import json
    import os

    row = gpu_row(op, pass_, impl, **fields)
    path = os.environ.get("NEXTLONG_GPU_RUNS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")
    return row


# ---- every timed row's outputs checked against a wider-precision reference of the same work ---------

# A row is called wrong when max |x - ref| / max |ref| of any output (loss, output, each gradient) passes the
# tolerance of its dtype. A gross-error gate: bf16 kernels round every element (2^-8 relative) and may sum dW
# in bf16 over chunks (4% of max |dW| at 64 chunks, measured), while a wrong mask, scale, label shift or
# gradient is off by tens of percent or more. fp32 rows (CPU) are held to 1e-4 against an fp64 reference.
AGREE_TOL = {torch.bfloat16: 0.1, torch.float16: 0.05, torch.float32: 1e-4, torch.float64: 1e-9}


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16", as the tables and the runs file write it."""
    return str(dtype).removeprefix("torch.")


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """The reference's dtype for rows in `dtype`: fp32 for 16-bit rows (a GPU's fast fp32 path), else fp64."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else torch.float64


def relative_error(outputs, reference) -> float:
    """Max over paired tensors of max |x - ref| / max |ref| (absolute where ref is all zero); inf when x is
    not finite, so a NaN row can never pass."""
    worst = 0.0
    for x, ref in zip(outputs, reference, strict=True):
        if not bool(torch.isfinite(x).all()):
            return math.inf
        diff = (x.to(ref.dtype) - ref).abs().max().item()
        scale = ref.abs().max().item()
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def agrees(error: float | None, dtype: torch.dtype) -> bool | None:
    """True/False against AGREE_TOL[dtype]; None when no reference was computed."""
    return None if error is None else error <= AGREE_TOL[dtype]


def verdict(error: float | None, dtype: torch.dtype) -> str:
    """The table's cell: the error and ok / WRONG (or "unchecked")."""
    ok = agrees(error, dtype)
    return "unchecked" if ok is None else f"{error:.1e} {'ok' if ok else 'WRONG'}"
