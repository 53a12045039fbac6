"""The processes of a training run: the process group under torchrun, collective decisions every rank takes
alike, and the global random generators a checkpoint saves. One process (no torchrun) needs none of it:
every function here then does the single-process thing."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from ..errors import OtherRankFailed


def init_distributed(timeout: float | None = None) -> tuple[int, int, int, torch.device]:
    """(rank, world, local world, device); starts the process group under torchrun. `timeout` (seconds,
    --collective-timeout): how long a collective waits for a rank that hangs (torchrun does not see one)."""
    import datetime
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    cuda = torch.cuda.is_available()
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local_rank)
        kwargs = {} if timeout is None else {"timeout": datetime.timedelta(seconds=timeout)}
        dist.init_process_group("nccl" if cuda else "gloo", **kwargs)
    rank = dist.get_rank() if world > 1 else 0
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return rank, world, local_world, device


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """x summed over the ranks (a copy; x itself in one process)."""
    d = _dist()
    if d is not None:
        x = x.clone()
        d.all_reduce(x)
    return x


def _dist():
    """torch.distributed when a process group runs (torchrun), else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def barrier() -> None:
    """Wait for every rank (nothing in one process)."""
    d = _dist()
    if d is not None:
        d.barrier()


def all_ranks_ok(ok: bool) -> bool:
    """True when `ok` holds on every rank (a barrier too), so all ranks take the same branch."""
    d = _dist()
    if d is None:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device="cuda" if d.get_backend() == "nccl" else "cpu")
    d.all_reduce(flag)
    return float(flag) == 0.0


def lowest_rank_with(value):
    """(rank, value) of the lowest rank whose `value` is not None, or None when no rank has one: which rank
    speaks for all of them (a signal that torchrun forwards to every rank is said once, not once per rank).
    Collective; the values are gathered only when some rank has one."""
    d = _dist()
    if d is None:
        return None if value is None else (0, value)
    if all_ranks_ok(value is None):
        return None
    values = [None] * d.get_world_size()
    d.all_gather_object(values, value)
    return next((r, v) for r, v in enumerate(values) if v is not None)


def seed_all(seed: int) -> None:
    """Python's, numpy's and torch's global generators from --seed: without it a pretrained model's dropout
    drew from the process's startup entropy, so two runs with the same --seed trained differently."""
    random.seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])  # numpy takes 32-bit words; seeds go up to 2**63
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global generator's state, saved with each rank's checkpoint for an exact resume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def on_every_rank(work):
    """(work()'s result, None) when it succeeded on every rank, else (None, the exception to raise here):
    this rank's own, or OtherRankFailed with the failed rank's one-line message (also where this rank failed
    with the very message of a lower rank: each error is printed once). Collective: every rank
    calls it at the same point (a bad row read by rank 1 alone reached rank 0 only as a broken gloo
    connection at the next step, which its manifest then recorded as the cause)."""
    from ..manifest import error_line

    error = result = None
    try:
        result = work()
    except Exception as exc:  # noqa: BLE001  (passed on, never swallowed)
        error = exc
    d = _dist()
    if d is None or all_ranks_ok(error is None):
        return (result, None) if error is None else (None, error)
    mine = None if error is None else error_line(error)
    messages = [None] * d.get_world_size()
    d.all_gather_object(messages, mine)
    rank, message = next((r, m) for r, m in enumerate(messages) if m is not None and (error is None or m == mine))
    if error is not None and rank == d.get_rank():
        return None, error  # the lowest rank with this message: it prints it
    # a rank that did not fail, or failed as a lower rank did (a sequence-parallel group reads the same rows)
    return None, OtherRankFailed(f"rank {rank}: {message}")


def agreed(work):
    """work()'s result when it succeeded on every rank; else every rank raises (on_every_rank)."""
    result, failure = on_every_rank(work)
    if failure is not None:
        raise failure
    return result
