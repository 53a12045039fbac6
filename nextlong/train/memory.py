"""The least memory a training step needs, checked against what the machine has before the first step.

`--seq-len 99999999` must be a one-line error naming the option, not a traceback from a 25 GB
allocation inside the first forward pass. The estimate is a floor, so it never refuses a setting
that would fit: the micro-batch's tokens as the collator's int64 tensors (ids, labels, positions),
the residual stream that backward keeps (one hidden-state vector per token for the embeddings and
for every layer: kept even with --grad-checkpointing), and the gradients and AdamW moments of the
trainable parameters (12 bytes each, split over the processes under FSDP). Attention, MLP
activations and the allocator come on top, so a setting that passes can still run out of memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import UsageError
from .config import option_text
from .distributed import all_ranks_ok

_BATCH_BYTES_PER_TOKEN = 3 * 8 + 4  # input_ids, labels, position_ids (int64) + the packed uint32 ids


def step_memory_floor(config, *, tokens: int, trainable: int, shards: int, cuda: bool) -> int:
    """Bytes one micro-batch of `tokens` tokens needs at the least (see the module docstring)."""
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or 0
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None) or 0
    activation = 2 if cuda else 4  # bf16 autocast on CUDA, fp32 on the CPU
    per_token = _BATCH_BYTES_PER_TOKEN + hidden * (layers + 1) * activation
    return tokens * per_token + 12 * trainable // shards


def available_memory(device: torch.device, local_world: int = 1) -> int | None:
    """Bytes free for this process: the GPU's free memory, or the RAM available (within the cgroup's
    limit) shared by the processes on this machine. None where it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    limits = [_meminfo_available(), _cgroup_room()]
    known = [x for x in limits if x is not None]
    return min(known) // max(1, local_world) if known else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         (v1 + "limit_in_bytes", v1 + "usage_in_bytes")):
        try:
            text = Path(limit).read_text().strip()
            if text == "max" or int(text) >= 1 << 60:  # no limit
                return None
            return max(0, int(text) - int(Path(usage).read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


def check_step_memory(model, *, seq_len: int, micro_batch: int, device: torch.device, shards: int = 1,
                      local_world: int = 1, seq_parallel: int = 1, restored=frozenset()) -> None:
    """UsageError (on every rank) when one micro-batch cannot fit in the memory available now (under
    sequence parallelism, this rank's 1/seq_parallel of each sequence)."""
    tokens = seq_len // seq_parallel * micro_batch
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    need = step_memory_floor(model.config, tokens=tokens, trainable=trainable, shards=shards,
                             cuda=device.type == "cuda")
    have = available_memory(device, local_world)
    if all_ranks_ok(have is None or need <= have):
        return
    what = option_text("seq_len", seq_len, restored) + (
        f" / {option_text('seq_parallel', seq_parallel, restored)}" if seq_parallel > 1 else "") + (
        f" x {option_text('micro_batch', micro_batch, restored)}" if micro_batch > 1 else "")
    where = "GPU" if device.type == "cuda" else "main"
    have_text = _gib(have) if have is not None and have < need else "less on another process"
    raise UsageError(f"{what} = {tokens:,} tokens per forward pass need at least {_gib(need)} of {where} memory "
                     f"for this model (the token batch and the {getattr(model.config, 'hidden_size', '?')}-wide "
                     f"hidden states backward keeps for each layer), but {have_text} is available; lower "
                     f"--seq-len or --micro-batch, or split each sequence over more ranks (--seq-parallel)")


def _gib(n: int) -> str:
    return f"{n / (1 << 30):,.1f} GiB"


def is_out_of_memory(exc: BaseException) -> bool:
    """The allocation failures of a step too large for the memory the floor above does not count:
    torch's CUDA OutOfMemoryError, the CPU allocator's RuntimeError, numpy's MemoryError."""
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))
