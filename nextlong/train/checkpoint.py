"""Checkpoints that a killed run can never leave half-written, and the exported model folder.

RUN/checkpoints/step-00000100/
    model.pt        full (unsharded) model state dict
    optimizer.pt    full optimizer state dict
    trainer.json    step, scheduler state, run-defining settings, the metrics so far
    rank-N.pt       per rank: data position (stream counters, generator, leftover spans) and RNG states

Every file is written into RUN/checkpoints/.tmp-step-00000100/ and the folder is renamed to its
final name only when all ranks have finished writing: resume looks only at `step-*` folders, so a
crash mid-write leaves a `.tmp-*` folder that is ignored (and cleared by the next save).

RUN/model/ is the latest weights as a Hugging Face `save_pretrained` folder (config.json +
model.safetensors) plus `nextlong.json` = {"tokenizer": SPEC} (SPEC for `nextlong.tokenizer.load_tokenizer`;
a tokenizer file is copied beside it and named relative to RUN/model), written to a temporary folder
and swapped in.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ..errors import NextlongError

CHECKPOINTS = "checkpoints"


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _barrier():
    d = _dist()
    if d is not None:
        d.barrier()


def rng_state() -> dict:
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


def full_state_dicts(model: torch.nn.Module, optimizer, sharded: bool) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts (gathered from FSDP shards when `sharded`)."""
    if not sharded:
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dicts(model, optimizer, model_sd: dict, optim_sd: dict, sharded: bool) -> None:
    if not sharded:
        model.load_state_dict(model_sd)
        optimizer.load_state_dict(optim_sd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                   options=StateDictOptions(full_state_dict=True))


def save_checkpoint(run: Path, step: int, *, model, optimizer, scheduler, rank_state: dict, trainer_state: dict,
                    sharded: bool, rank: int, keep: int) -> Path:
    """Write checkpoint `step` (all ranks call this); returns its final folder."""
    root = Path(run) / CHECKPOINTS
    name = f"step-{step:08d}"
    tmp, final = root / f".tmp-{name}", root / name
    model_sd, optim_sd = full_state_dicts(model, optimizer, sharded)
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier()
    torch.save({**rank_state, "rng": rng_state()}, tmp / f"rank-{rank}.pt")
    if rank == 0:
        torch.save(model_sd, tmp / "model.pt")
        torch.save(optim_sd, tmp / "optimizer.pt")
        state = dict(trainer_state, step=step, scheduler=scheduler.state_dict())
        (tmp / "trainer.json").write_text(json.dumps(state, indent=1, default=str))
    _barrier()
    if rank == 0:
        for f in tmp.iterdir():  # on disk before the rename that publishes the checkpoint
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old in list_checkpoints(run)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
    _barrier()
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(run) -> list[Path]:
    """Complete checkpoints, oldest first (`.tmp-*` folders of interrupted saves never count)."""
    root = Path(run) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def read_trainer_state(checkpoint: Path) -> dict:
    try:
        return json.loads((checkpoint / "trainer.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise NextlongError(f"{checkpoint}: unreadable checkpoint ({exc}); delete it to resume from an older one")


def load_checkpoint(checkpoint: Path, *, model, optimizer, scheduler, sharded: bool, rank: int, world: int) -> dict:
    """Restore model, optimizer, scheduler and RNG; returns this rank's saved state (data position)."""
    state = read_trainer_state(checkpoint)
    if state.get("world_size", 1) != world:
        raise NextlongError(f"{checkpoint}: saved by {state.get('world_size')} processes, resumed with {world}; "
                            "the data position is per process, so resume with the same number")
    model_sd = torch.load(checkpoint / "model.pt", map_location="cpu", weights_only=False)
    optim_sd = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=False)
    load_full_state_dicts(model, optimizer, model_sd, optim_sd, sharded)
    scheduler.load_state_dict(state["scheduler"])
    rank_state = torch.load(checkpoint / f"rank-{rank}.pt", map_location="cpu", weights_only=False)
    set_rng_state(rank_state.pop("rng"))
    return rank_state


def export_model(run: Path, hf_model, *, tokenizer_spec: str | None, state_dict: dict | None = None) -> Path:
    """Write RUN/model/ (save_pretrained + nextlong.json) atomically; rank 0 only."""
    run = Path(run)
    final = run / "model"
    tmp = run / ".tmp-model"
    old = run / ".old-model"
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    try:  # no "Writing model shards" bar inside the training bar
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    use_cache = getattr(hf_model.config, "use_cache", None)
    hf_model.config.use_cache = True  # off while training; whoever loads the model generates with a cache
    try:
        hf_model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    finally:
        hf_model.config.use_cache = use_cache
    spec = tokenizer_spec
    if spec is not None and Path(spec).is_file():
        shutil.copy2(spec, tmp / Path(spec).name)
        spec = Path(spec).name
    (tmp / "nextlong.json").write_text(json.dumps({"tokenizer": spec}, indent=1) + "\n")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final
