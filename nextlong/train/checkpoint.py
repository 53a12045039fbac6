"""Checkpoints that a killed run can never leave half-written, that run no code when loaded, and the
exported model folder.

RUN/checkpoints/step-00000100/
    model.safetensors      full (unsharded) model state dict
    optimizer.safetensors  full optimizer state dict
    trainer.json           format, step, scheduler state, run-defining settings, the metrics so far
    rank-N.safetensors     per rank: data position (stream counters, generator, leftover spans) and RNG states

The .safetensors files are `state_file`'s: tensors plus JSON, nothing that executes when loaded, so a
checkpoint from someone else is safe to resume. Checkpoints of nextlong before this format are Python
pickles (model.pt, optimizer.pt, rank-N.pt), which run whatever code they hold: they are refused unless
the user types --trust-checkpoint, which loads one once and rewrites it in this format.

Every file is written into RUN/checkpoints/.tmp-step-00000100/ and the folder is renamed to its
final name only when all ranks have finished writing: resume looks only at `step-*` folders, so a
crash mid-write leaves a `.tmp-*` folder that is ignored (and cleared by the next save). A write that
fails (a full disk) on any rank removes the folder on every rank; the older checkpoints stay.

RUN/model is the latest weights as a Hugging Face `save_pretrained` folder (config.json +
model.safetensors) plus `nextlong.json` = {"tokenizer": SPEC} (SPEC for `nextlong.tokenizer.load_tokenizer`;
a tokenizer file is copied beside it and named relative to RUN/model). It is a symbolic link to a
hidden folder `.model-XXXXXXXX` written completely first; replacing the link is one atomic rename,
so a reader of RUN/model finds a complete model at every moment, even after a kill.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ..atomic import FILE_MODE, atomic_path
from ..errors import NextlongError, disk_full, is_disk_full
from .state_file import load_state, save_state

CHECKPOINTS = "checkpoints"
FORMAT = 2  # trainer.json "format"; the pickle checkpoints of before have none
MODEL = "model"


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _barrier():
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


# --- writing -----------------------------------------------------------------------------------


def _looks_disk_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT however a writer reports it: an OSError, or the message of safetensors' Rust
    error (not an OSError): "No space left on device (os error 28)"."""
    for _ in range(8):  # the exception and what it was raised from
        if exc is None:
            break
        if is_disk_full(exc) or any(f"(os error {n})" in str(exc) for n in (errno.ENOSPC, errno.EDQUOT)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def disk_full_as_error(path: Path):
    """A full disk inside the block becomes the one-line DiskFullError naming `path`."""
    try:
        yield
    except Exception as exc:
        if _looks_disk_full(exc):
            raise disk_full(path) from exc
        raise


def _finish(*files: Path) -> None:
    """Give the files the usual permissions (safetensors makes them private) and put them on disk."""
    for f in files:
        os.chmod(f, FILE_MODE)
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    error = None
    try:
        with disk_full_as_error(final):
            mine = [tmp / f"rank-{rank}.safetensors"]
            save_state(mine[0], {**rank_state, "rng": rng_state()})
            if rank == 0:
                mine += [tmp / "model.safetensors", tmp / "optimizer.safetensors", tmp / "trainer.json"]
                save_state(mine[1], model_sd)
                save_state(mine[2], optim_sd)
                state = dict(trainer_state, format=FORMAT, step=step, scheduler=scheduler.state_dict())
                mine[3].write_text(json.dumps(state, indent=1, default=str, allow_nan=False))
            _finish(*mine)  # on disk before the rename that publishes the checkpoint
    except Exception as exc:
        error = exc
    if not all_ranks_ok(error is None):
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if error is not None:
            raise error
        raise NextlongError(f"{tmp}: another process failed to write its part of this checkpoint; the older "
                            "checkpoints are kept")
    if rank == 0:
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


# --- reading -----------------------------------------------------------------------------------


def list_checkpoints(run) -> list[Path]:
    """Complete checkpoints, oldest first (`.tmp-*` folders of interrupted saves never count)."""
    root = Path(run) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def read_trainer_state(checkpoint: Path) -> dict:
    try:
        state = json.loads((checkpoint / "trainer.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise NextlongError(f"{checkpoint}: unreadable checkpoint ({exc}); delete it to resume from an older one")
    if not isinstance(state, dict):
        raise NextlongError(f"{checkpoint}/trainer.json: expected a JSON object; delete the checkpoint to resume "
                            "from an older one")
    return state


def load_checkpoint(checkpoint: Path, *, model, optimizer, scheduler, packer, sharded: bool, rank: int, world: int,
                    trust: bool = False) -> dict:
    """Restore model, optimizer, scheduler, data position and RNG; returns trainer.json's state.

    Reads only safetensors and JSON. An old pickle checkpoint is refused, or with `trust` (the user's
    --trust-checkpoint) converted first, by rank 0 while the others wait."""
    state = read_trainer_state(checkpoint)
    if state.get("world_size", 1) != world:
        raise NextlongError(f"{checkpoint}: saved by {state.get('world_size')} processes, resumed with {world}; "
                            "the data position is per process, so resume with the same number")
    fmt = state.get("format")
    if fmt is not None and fmt != FORMAT:
        raise NextlongError(f"{checkpoint}: checkpoint format {fmt!r}, but this nextlong reads format {FORMAT}; "
                            "resume with the nextlong version that wrote it")
    if fmt is None and not trust:
        raise NextlongError(f"{checkpoint}: an old checkpoint made of Python pickles (model.pt, optimizer.pt, "
                            "rank-N.pt), which can run any code when loaded, so it is not loaded; if you trust "
                            "whoever wrote this run folder, resume once with --trust-checkpoint to load it and "
                            "rewrite it as safetensors + JSON")
    _barrier()  # every rank has read trainer.json before rank 0 may rewrite it
    if fmt is None and rank == 0:
        convert_pickled_checkpoint(checkpoint, state)
    _barrier()
    model_sd = load_state(checkpoint / "model.safetensors")
    optim_sd = load_state(checkpoint / "optimizer.safetensors")
    rank_state = load_state(checkpoint / f"rank-{rank}.safetensors")
    try:
        saved_scheduler = state["scheduler"]
        unknown = set(saved_scheduler) - set(scheduler.state_dict())
        if unknown:
            raise KeyError(f"unknown scheduler entries {sorted(unknown)}")
        load_full_state_dicts(model, optimizer, model_sd, optim_sd, sharded)
        scheduler.load_state_dict(saved_scheduler)
        packer.load_state_dict(rank_state["data"])
        set_rng_state(rank_state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        detail = " ".join(str(exc).split())
        raise NextlongError(f"{checkpoint}: does not fit this run ({type(exc).__name__}: {detail[:300]}); delete it "
                            "to resume from an older one") from None
    return state


def convert_pickled_checkpoint(checkpoint: Path, state: dict) -> None:
    """Rewrite a pickle checkpoint as safetensors + JSON. Runs the pickles' code: only after the user's
    --trust-checkpoint. trainer.json is replaced last, so a kill midway leaves the old checkpoint."""
    ranks = [f"rank-{r}" for r in range(int(state.get("world_size", 1)))]
    with disk_full_as_error(checkpoint):
        for name in ["model", "optimizer", *ranks]:
            obj = torch.load(checkpoint / f"{name}.pt", map_location="cpu", weights_only=False)
            save_state(checkpoint / f"{name}.safetensors", obj)
            _finish(checkpoint / f"{name}.safetensors")
        with atomic_path(checkpoint / "trainer.json") as tmp:
            tmp.write_text(json.dumps(dict(state, format=FORMAT), indent=1, default=str))
    for name in ["model", "optimizer", *ranks]:
        (checkpoint / f"{name}.pt").unlink(missing_ok=True)


# --- the exported model ------------------------------------------------------------------------


def export_model(run: Path, hf_model, *, tokenizer_spec: str | None, state_dict: dict | None = None) -> Path:
    """Write RUN/model (save_pretrained + nextlong.json) atomically; rank 0 only."""
    run = Path(run)
    final = run / MODEL
    folder = run / f".{MODEL}-{os.urandom(4).hex()}"
    folder.mkdir()
    try:
        with disk_full_as_error(final):
            _write_model_folder(folder, hf_model, tokenizer_spec, state_dict)
            link = run / f".{MODEL}-link"
            link.unlink(missing_ok=True)
            os.symlink(folder.name, link)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if final.is_dir() and not final.is_symlink():  # a run folder of nextlong before the link: once
        shutil.rmtree(run / f".{MODEL}-before-link", ignore_errors=True)
        os.replace(final, run / f".{MODEL}-before-link")
    os.replace(link, final)  # the atomic step: readers see the old complete model or the new one
    _fsync_dir(run)
    for stale in run.glob(f".{MODEL}-*"):
        if stale != folder and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    for stale in (run / ".tmp-model", run / ".old-model"):  # left by nextlong before the link
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _write_model_folder(folder: Path, hf_model, tokenizer_spec: str | None, state_dict: dict | None) -> None:
    try:  # no "Writing model shards" bar inside the training bar
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    use_cache = getattr(hf_model.config, "use_cache", None)
    hf_model.config.use_cache = True  # off while training; whoever loads the model generates with a cache
    try:
        hf_model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    finally:
        hf_model.config.use_cache = use_cache
    spec = tokenizer_spec
    if spec is not None and Path(spec).is_file():
        shutil.copy2(spec, folder / Path(spec).name)
        spec = Path(spec).name
    (folder / "nextlong.json").write_text(json.dumps({"tokenizer": spec}, indent=1) + "\n")
    _finish(*(f for f in folder.iterdir() if f.is_file()))
