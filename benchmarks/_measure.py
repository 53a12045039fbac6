"""Timing and peak-memory probes shared by the kernel benchmarks."""

from __future__ import annotations

import gc
import re

import torch


def rss_kib(field: str) -> int:
    """A memory figure of this process from /proc (VmRSS: now, VmHWM: peak), in KiB."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1))


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
