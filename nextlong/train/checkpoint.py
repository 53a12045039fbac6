"""Checkpoints that a killed run can never leave half-written, that run no code when loaded, and the
exported model folder.

RUN/checkpoints/step-00000100/
    model.safetensors      full (unsharded) model state dict
    optimizer.safetensors  full optimizer state dict
    trainer.json           format, step, scheduler state, run-defining settings (and the folder their relative
                           paths were given from), the metrics so far
    rank-N.safetensors     per rank: data position (stream counters, generator, leftover spans) and RNG states

The .safetensors files are `state_file`'s: tensors plus JSON, nothing that executes when loaded, so a
checkpoint from someone else is safe to resume. Checkpoints of nextlong before this format are Python
pickles (model.pt, optimizer.pt, rank-N.pt), which run whatever code they hold: they are refused unless
the user types --trust-checkpoint, which loads one once and rewrites it in this format.

Every file is written into RUN/checkpoints/.tmp-step-00000100/ and the folder is renamed to its
final name only when all ranks have finished writing: resume looks only at folders named exactly so
(`step-` and 8 digits or more), so a crash mid-write leaves a `.tmp-*` folder that is ignored (and
cleared by the next save). A write that fails (a full disk) on any rank removes the folder on every
rank; the older checkpoints stay.

A run folder may come from someone else, so `--resume` trusts nothing in it (`check_run_folder`):
`checkpoints/` and every `step-NNNNNNNN` / `.tmp-step-NNNNNNNN` entry must be real folders of the run (never a
symbolic link: rotation would delete, and resume read, whatever it points to), and every file is read
as a regular file of its folder (no link, FIFO or device). trainer.json and the state files are
checked field by field against the run being resumed (`read_trainer_state`, `load_checkpoint`)
before anything is loaded, so a damaged or crafted checkpoint is refused in one line, never loaded in
part.

RUN/model is the latest weights as a Hugging Face `save_pretrained` folder (config.json +
model.safetensors) plus `nextlong.json` = {"tokenizer": SPEC, "step": N} (SPEC for `nextlong.corpus.tokenizer.load_tokenizer`;
a tokenizer file is copied beside it and named relative to RUN/model). It is a symbolic link to a
hidden folder `.model-XXXXXXXX` written completely first; replacing the link is one atomic rename,
so a reader of RUN/model finds a complete model at every moment, even after a kill.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import random
import shutil
import stat
from pathlib import Path

import numpy as np
import torch

from ..atomic import FILE_MODE, atomic_path, fsync_path
from ..errors import NextlongError, disk_full, is_disk_full
from ..untrusted import number, open_regular, read_json, show, whole
from .distributed import agreed, barrier, rng_state, set_rng_state
from .plot import METRICS_FILE
from .state_file import load_state, save_state

CHECKPOINTS = "checkpoints"
FORMAT = 2  # trainer.json "format"; the pickle checkpoints of before have none
MODEL = "model"


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
        fsync_path(f)


def save_checkpoint(run: Path, step: int, *, model, optimizer, scheduler, rank_state: dict, trainer_state: dict,
                    sharded: bool, rank: int, keep: int, agree=agreed, states: tuple | None = None) -> Path:
    """Write checkpoint `step` (all ranks call this); returns its final folder. `agree`: `distributed.agreed`,
    or the trainer's, which also remembers a failure it raises. `states`: full_state_dicts(model, optimizer,
    sharded) when the caller has them already (the trainer gathers FSDP's shards once for this and the export)."""
    root = Path(run) / CHECKPOINTS
    name = checkpoint_name(step)
    tmp, final = root / f".tmp-{name}", root / name
    model_sd, optim_sd = states if states is not None else full_state_dicts(model, optimizer, sharded)
    if rank == 0:
        check_run_folder(run)  # nothing swapped in since setup: a link here would send the writes elsewhere
        _remove(tmp)
        tmp.mkdir(parents=True)
    barrier()

    def write() -> None:
        with disk_full_as_error(final):
            # the rank that wrote it: a rank file swapped with another's would resume another rank's data
            mine = [tmp / f"rank-{rank}.safetensors"]
            save_state(mine[0], {**rank_state, "rank": rank, "rng": rng_state()})
            if rank == 0:
                mine += [tmp / "model.safetensors", tmp / "optimizer.safetensors", tmp / "trainer.json"]
                save_state(mine[1], model_sd)
                save_state(mine[2], optim_sd)
                state = dict(trainer_state, format=FORMAT, step=step, scheduler=scheduler.state_dict())
                mine[3].write_text(json.dumps(state, indent=1, default=str, allow_nan=False))
            _finish(*mine)  # on disk before the rename that publishes the checkpoint

    # a rank that failed says why; the others raise OtherRankFailed with its message (which rank 0's manifest
    # records), instead of a second error line saying only that another process failed
    try:
        agree(write)
    except Exception:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if rank == 0:
        _remove(final)
        os.replace(tmp, final)
        fsync_path(root)
        for old in list_checkpoints(run)[:-keep]:
            # renamed first: a kill during the deletion leaves a .tmp- folder (cleaned below, next time),
            # never a half-deleted one under a checkpoint's name
            doomed = root / f".tmp-{old.name}-removed"
            try:
                os.replace(old, doomed)
            except OSError:
                continue
            _remove(doomed, ignore_errors=True)
        for stale in root.glob(".tmp-step-*"):
            _remove(stale, ignore_errors=True)
    barrier()
    return final


def _remove(path: Path, ignore_errors: bool = False) -> None:
    """Delete a folder of the run, or whatever else has its name: a symbolic link is unlinked, never
    followed (shutil.rmtree does not follow the links inside a folder either)."""
    try:
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
    except OSError:
        if not ignore_errors:
            raise


# --- reading -----------------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    """The folder name of checkpoint `step`: `step-` and the step in 8 digits or more (`step-00000100`)."""
    return f"step-{step:08d}"


def _is_step_name(name: str) -> bool:
    """Whether `name` is a checkpoint's name exactly as save_checkpoint writes it. Only that form: `step-2` or
    `step-000000002` beside `step-00000002` named the same step twice (resume read either, rotation deleted
    either), and `step-3` a step ahead of it; str.isdigit() also takes '²' or '３', which int() refuses or reads
    as 3. Anything else in checkpoints/ is not the trainer's: never read, never deleted."""
    digits = name[5:]
    return name.startswith("step-") and digits.isascii() and digits.isdigit() and name == checkpoint_name(int(digits))


def checkpoint_step(checkpoint: Path) -> int:
    """The step of a checkpoint folder that list_checkpoints gave."""
    return int(Path(checkpoint).name[5:])


def list_checkpoints(run) -> list[Path]:
    """Complete checkpoints, oldest first (`.tmp-*` folders of interrupted saves never count; neither
    does anything that is not a real folder, such as a symbolic link: `check_run_folder` refuses them)."""
    root = Path(run) / CHECKPOINTS
    if root.is_symlink() or not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _is_step_name(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=checkpoint_step)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISREG(mode):
        return "a file"
    return {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device",
            stat.S_IFBLK: "a device"}.get(stat.S_IFMT(mode), "not a folder")


def check_run_folder(run) -> None:
    """Refuse, in one line and before any work, a run folder whose parts are not its own: `checkpoints/`
    and its `step-*` / `.tmp-step-*` entries must be real folders (lstat: a symbolic link would make
    resume read, and rotation delete, what it points to), and the files the trainer reads or rewrites
    (manifest.json, metrics.jsonl) regular files, not links, FIFOs or devices."""
    run = Path(run)
    fix = "; a run folder's parts must be its own (remove it, or choose another --out)"

    def lstat(path: Path):
        try:
            return path.lstat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise NextlongError(f"{path}: cannot read ({exc.strerror})") from None

    if lstat(run) is None:
        return
    if not run.is_dir():  # the folder the user named may itself be a link: their choice
        raise NextlongError(f"{run}: exists and is not a folder; choose another --out")
    for name in ("manifest.json", METRICS_FILE):
        st = lstat(run / name)
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise NextlongError(f"{run / name}: is {_kind(st.st_mode)}, not a regular file{fix}")
    root = run / CHECKPOINTS
    st = lstat(root)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise NextlongError(f"{root}: is {_kind(st.st_mode)}, not a folder of the run{fix}")
    for entry in sorted(root.iterdir()):
        name = entry.name
        if _is_step_name(name) or _is_step_name(name[5:] if name.startswith(".tmp-") else ""):
            st = lstat(entry)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                raise NextlongError(f"{entry}: is {_kind(st.st_mode)}, not a checkpoint folder of the run{fix}")


def _unreadable(checkpoint: Path):
    """The error for a file of `checkpoint` that cannot be read (`untrusted`'s `error` argument)."""
    return lambda message: NextlongError(f"{message}; delete {checkpoint} to resume from an older checkpoint")


def _unfit(checkpoint: Path, what: str) -> NextlongError:
    return NextlongError(f"{checkpoint}: does not fit this run ({what}); delete it to resume from an older one")


def read_trainer_state(checkpoint: Path, max_step: int | None = None) -> dict:
    """trainer.json of `checkpoint`, every field the trainer uses checked: a regular file of strict JSON
    (no NaN, no number of thousands of digits, nesting Python can parse), an object whose `step` is
    the folder's number (and at most `max_step`, the run's --steps), `history` one row per step."""
    checkpoint = Path(checkpoint)
    path = checkpoint / "trainer.json"
    state = read_json(path, _unreadable(checkpoint), expect=dict, finite=True, follow=False)

    def bad(field: str, expected: str, value) -> NextlongError:
        return NextlongError(f"{path}: {field} must be {expected}, got {show(value)}; delete {checkpoint} to "
                             "resume from an older checkpoint")

    fmt = state.get("format")
    if fmt is not None and type(fmt) is not int:
        raise bad("format", "an integer", fmt)
    step = state.get("step")
    if not whole(step, 0):
        raise bad("step", "an integer >= 0", step)
    if _is_step_name(checkpoint.name) and step != int(checkpoint.name[5:]):
        raise bad("step", f"{int(checkpoint.name[5:])} (the folder's step)", step)
    if max_step is not None and step > max_step:
        raise bad("step", f"at most --steps ({max_step})", step)
    if not whole(state.get("world_size", 1), 1):
        raise bad("world_size", "an integer >= 1", state.get("world_size"))
    if not (isinstance(state.get("cwd", "/"), str) and os.path.isabs(state.get("cwd", "/"))):
        raise bad("cwd", "an absolute path", state.get("cwd"))
    if not isinstance(state.get("settings", {}), dict):
        raise bad("settings", "an object", state.get("settings"))
    if not isinstance(state.get("scheduler", {}), dict):
        raise bad("scheduler", "an object", state.get("scheduler"))
    history = state.get("history", [])
    if not isinstance(history, list) or len(history) != step:
        raise bad("history", f"a list of one row per step ({step})",
                  history if not isinstance(history, list) else f"{len(history)} rows")
    for i, row in enumerate(history):
        if not isinstance(row, dict) or row.get("step") != i + 1:
            raise bad(f"history[{i}]", f"an object of numbers for step {i + 1}", row)
        unknown = [key for key in row if key not in _HISTORY_ROW]
        if unknown:
            raise NextlongError(f"{path}: history[{i}] has the key {show(unknown[0])}, which the trainer never writes "
                                f"(a row's keys are {', '.join(_HISTORY_ROW)}); delete {checkpoint} to resume from an "
                                "older checkpoint")
        for key, value in row.items():
            test, expected = _ROW_VALUES[_HISTORY_ROW[key]]
            if not test(value):
                raise bad(f"history[{i}].{key}", expected, value)
    return state


INT64_MAX = 2**63 - 1


# what each value of a history row must be: (test, as an error says it); numbers are finite (trainer.json is
# read as strict JSON)
_ROW_VALUES = {
    "count": (lambda v: whole(v, 0) and v <= INT64_MAX, f"an integer from 0 to {INT64_MAX}"),
    "amount": (lambda v: number(v) and v >= 0, "a number >= 0"),
    "amount or null": (lambda v: v is None or number(v) and v >= 0, "a number >= 0 or null"),
    "number or null": (lambda v: v is None or number(v), "a number or null"),
    "flag": (lambda v: type(v) is bool, "true or false"),
}
# the keys of a history row as the trainer writes them (older runs wrote fewer): rows are copied into
# metrics.jsonl and summed into the manifest, so a crafted one must add no key and no count past 64 bits
_HISTORY_ROW = {
    **dict.fromkeys(("step", "tokens", "padding_tokens", "loss_tokens"), "count"),
    **dict.fromkeys(("lr", "tokens_per_s", "step_s", "peak_memory_mb", "epoch"), "amount"),
    "grad_norm": "amount or null",  # null: a skipped step's, not finite
    **dict.fromkeys(("loss", "ce"), "number or null"),
    "skipped": "flag",
}


def _same_form(ours, theirs) -> bool:
    """Whether `theirs` (from a checkpoint) has the form of `ours` (this run's own state): the same JSON
    types, list lengths and object keys (a float may be stored as an integer)."""
    if isinstance(ours, bool) or ours is None:
        return type(theirs) is type(ours)
    if isinstance(ours, int):
        return type(theirs) is int
    if isinstance(ours, float):
        return type(theirs) in (int, float) and math.isfinite(theirs)
    if isinstance(ours, str):
        return isinstance(theirs, str)
    if isinstance(ours, (list, tuple)):
        return isinstance(theirs, (list, tuple)) and len(theirs) == len(ours) and all(
            _same_form(a, b) for a, b in zip(ours, theirs))
    if isinstance(ours, dict):
        return isinstance(theirs, dict) and set(theirs) <= set(ours) and all(
            _same_form(ours[k], v) for k, v in theirs.items())
    return False


def _check_scheduler(checkpoint: Path, scheduler, saved: dict, step: int) -> None:
    ours = scheduler.state_dict()
    unknown = set(saved) - set(ours)
    if unknown:
        raise _unfit(checkpoint, f"unknown scheduler entries {show(sorted(unknown))}")
    for key, value in saved.items():
        if not _same_form(ours[key], value):
            raise _unfit(checkpoint, f"scheduler.{key} is {show(value)}, expected the form of {show(ours[key])}")
    if "last_epoch" in saved and saved["last_epoch"] != step:
        raise _unfit(checkpoint, f"scheduler.last_epoch {saved['last_epoch']} is not the checkpoint's step {step}")
    if "base_lrs" in saved and [float(x) for x in saved["base_lrs"]] != [float(x) for x in ours["base_lrs"]]:
        raise _unfit(checkpoint, f"scheduler.base_lrs {show(saved['base_lrs'])}, but this run's --lr gives "
                                 f"{show(ours['base_lrs'])}")


def _tensor_problem(t, shape, name: str) -> str | None:
    if not isinstance(t, torch.Tensor):
        return f"{name} is {type(t).__name__}, not a tensor"
    if tuple(t.shape) != tuple(shape):
        return f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}"
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        return f"{name} holds values that are not finite"
    return None


def _check_model_state(checkpoint: Path, model, model_sd) -> None:
    ours = model.state_dict()
    if not isinstance(model_sd, dict):
        raise _unfit(checkpoint, f"model.safetensors holds {type(model_sd).__name__}, not a state dict")
    missing, extra = sorted(set(ours) - set(model_sd)), sorted(str(k) for k in set(model_sd) - set(ours))
    if missing or extra:
        raise _unfit(checkpoint, f"model.safetensors lacks {show(missing[:3])}" if missing else
                     f"model.safetensors has unknown tensors {show(extra[:3])}")
    for name, want in ours.items():
        problem = _tensor_problem(model_sd[name], want.shape, f"model tensor {name}")
        if problem is None and model_sd[name].dtype != want.dtype:
            problem = f"model tensor {name} is {model_sd[name].dtype}, expected {want.dtype}"
        if problem:
            raise _unfit(checkpoint, problem)


_ADAM_STATE = {"step", "exp_avg", "exp_avg_sq"}
_NEEDED_HYPERPARAMETERS = {"params", "lr", "initial_lr", "betas", "eps", "weight_decay"}


def _plain(value):
    """A hyperparameter as JSON would give it back (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def _check_optimizer_state(checkpoint: Path, model, optimizer, optim_sd, step: int, sharded: bool) -> None:
    """AdamW's state must be this run's: every moment the shape of its parameter, the same parameter
    groups and hyperparameters (only the scheduled lr moves). Checked whole before anything is loaded:
    torch would load a wrongly shaped moment and fail only at the next step."""
    if not isinstance(optim_sd, dict) or not isinstance(optim_sd.get("state"), dict) or not isinstance(
            optim_sd.get("param_groups"), list) or set(optim_sd) != {"state", "param_groups"}:
        raise _unfit(checkpoint, "optimizer.safetensors is not an optimizer state (state, param_groups)")
    if sharded:  # full state dicts name parameters by their qualified names
        shapes = {name: p.shape for name, p in model.named_parameters() if p.requires_grad}
        ours_groups = None
    else:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        shapes = {i: p.shape for i, p in enumerate(params)}
        ours_groups = optimizer.state_dict()["param_groups"]
    groups = optim_sd["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise _unfit(checkpoint, f"{len(groups)} optimizer parameter groups, this run has "
                                 f"{len(optimizer.param_groups)}")
    for g, (group, mine) in enumerate(zip(groups, optimizer.param_groups)):
        where = f"optimizer param_groups[{g}]"
        if not isinstance(group, dict) or not isinstance(group.get("params"), list):
            raise _unfit(checkpoint, f"{where} is not a parameter group")
        if ours_groups is not None and group["params"] != ours_groups[g]["params"]:
            raise _unfit(checkpoint, f"{where} holds other parameters than this run's")
        if ours_groups is None and (len(group["params"]) != len(mine["params"])
                                    or not all(k in shapes for k in group["params"])):
            raise _unfit(checkpoint, f"{where} holds other parameters than this run's")
        unknown, missing = set(group) - set(mine), _NEEDED_HYPERPARAMETERS - set(group)
        if unknown or missing:
            raise _unfit(checkpoint, f"{where} has unknown settings {show(sorted(unknown))}" if unknown else
                         f"{where} lacks {show(sorted(missing))}")
        for key, value in group.items():
            if key == "params":
                continue
            want = _plain(mine[key])
            if key == "lr":  # the scheduled rate: anything from 0 to the peak
                ok = type(value) in (int, float) and 0 <= value <= mine["initial_lr"]
            else:  # what this run's own settings give (AdamW's defaults fill what an older torch did not save)
                ok = (_plain(value) == want and type(_plain(value)) is type(want)) or (
                    type(want) is float and type(value) is int and value == want)
            if not ok:
                raise _unfit(checkpoint, f"{where}.{key} is {show(value)}" +
                             (f", this run's is {show(want)}" if key != "lr" else ""))
    for key, entry in optim_sd["state"].items():
        if key not in shapes:
            raise _unfit(checkpoint, f"optimizer state for an unknown parameter {show(key)}")
        if not isinstance(entry, dict) or set(entry) != _ADAM_STATE:
            raise _unfit(checkpoint, f"optimizer state {show(key)} is not AdamW's (step, exp_avg, exp_avg_sq)")
        for name in ("exp_avg", "exp_avg_sq"):
            problem = _tensor_problem(entry[name], shapes[key], f"optimizer {name} of parameter {key}")
            if problem:
                raise _unfit(checkpoint, problem)
        v = entry["exp_avg_sq"]  # its square root divides the update: a negative one made the first step NaN
        if v.numel() and (not v.is_floating_point() or bool((v < 0).any())):
            raise _unfit(checkpoint, f"optimizer exp_avg_sq of parameter {key} is not a second moment (a floating "
                                     "tensor >= 0)")
        count = entry["step"]
        if not (isinstance(count, torch.Tensor) and count.numel() == 1 and 0 <= float(count) <= step):
            raise _unfit(checkpoint, f"optimizer step count of parameter {key} is {show(count)}, expected 0.."
                                     f"{step}")


def _check_rng(checkpoint: Path, rng) -> None:
    """The saved random states, tried on scratch generators (so a bad one is refused before any is set)."""
    try:
        if not isinstance(rng, dict) or not {"python", "numpy", "torch"} <= set(rng):
            raise ValueError("expected python, numpy and torch states")
        random.Random().setstate(rng["python"])
        np.random.RandomState().set_state(rng["numpy"])
        if not isinstance(rng["torch"], torch.Tensor) or rng["torch"].dtype != torch.uint8:
            raise ValueError("the torch state is not a byte tensor")
        torch.Generator().set_state(rng["torch"])
        cuda = rng.get("cuda", [])
        if not isinstance(cuda, list) or not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8
                                                 for t in cuda):
            raise ValueError("the cuda states are not byte tensors")
    except (TypeError, ValueError, RuntimeError, OverflowError, KeyError, IndexError) as exc:
        detail = " ".join(str(exc).split())
        raise _unfit(checkpoint, f"its random states: {type(exc).__name__}: {detail[:200]}") from None


def load_checkpoint(checkpoint: Path, *, model, optimizer, scheduler, packer, sharded: bool, rank: int, world: int,
                    trust: bool = False, max_step: int | None = None) -> dict:
    """Restore model, optimizer, scheduler, data position and RNG; returns trainer.json's state.

    Reads only safetensors and JSON. An old pickle checkpoint is refused, or with `trust` (the user's
    --trust-checkpoint) converted first, by rank 0 while the others wait. Everything is checked
    against this run before anything is loaded: a checkpoint that does not fit is refused whole."""
    def check_trainer_state() -> dict:
        state = read_trainer_state(checkpoint, max_step)
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
        return state

    # Each part ends in an agreement (on_every_rank): a file that fails on one rank alone (its rank file missing
    # or damaged) stops every rank with that rank's message, and one that fails on all is printed once. The first
    # is also the barrier after which rank 0 may rewrite trainer.json.
    state = agreed(check_trainer_state)
    if state.get("format") is None:
        agreed(lambda: rank == 0 and convert_pickled_checkpoint(checkpoint, state))
    step = state["step"]

    def read_and_check() -> tuple:
        model_sd = load_state(checkpoint / "model.safetensors")
        optim_sd = load_state(checkpoint / "optimizer.safetensors")
        rank_state = load_state(checkpoint / f"rank-{rank}.safetensors")
        saved_scheduler = state.get("scheduler")
        if saved_scheduler is None:
            raise _unfit(checkpoint, "trainer.json has no scheduler state")
        _check_scheduler(checkpoint, scheduler, saved_scheduler, step)
        _check_model_state(checkpoint, model, model_sd)
        _check_optimizer_state(checkpoint, model, optimizer, optim_sd, step, sharded)
        if not isinstance(rank_state, dict) or not {"data", "rng"} <= set(rank_state):
            raise _unfit(checkpoint, f"rank-{rank}.safetensors holds no data position and random states")
        saved_rank = rank_state.get("rank", rank)  # checkpoints before it recorded none
        if saved_rank != rank or type(saved_rank) is not int:
            raise _unfit(checkpoint, f"rank-{rank}.safetensors was written by rank {show(saved_rank)}: its data "
                                     "position is another rank's")
        _check_rng(checkpoint, rank_state["rng"])
        try:
            packer.load_state_dict(rank_state["data"])  # checks the whole position before it sets any of it
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
            detail = " ".join(str(exc).split())
            raise _unfit(checkpoint, f"rank-{rank}.safetensors, data position: {type(exc).__name__}: "
                                     f"{detail[:300]}") from None
        return model_sd, optim_sd, rank_state, saved_scheduler

    model_sd, optim_sd, rank_state, saved_scheduler = agreed(read_and_check)
    try:  # checked above: nothing here should fail, but a failure is still one line
        load_full_state_dicts(model, optimizer, model_sd, optim_sd, sharded)
        scheduler.load_state_dict(saved_scheduler)
        set_rng_state(rank_state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        detail = " ".join(str(exc).split())
        raise _unfit(checkpoint, f"{type(exc).__name__}: {detail[:300]}") from None
    return state


def convert_pickled_checkpoint(checkpoint: Path, state: dict) -> None:
    """Rewrite a pickle checkpoint as safetensors + JSON. Runs the pickles' code: only after the user's
    --trust-checkpoint. trainer.json is replaced last, so a kill midway leaves the old checkpoint."""
    ranks = [f"rank-{r}" for r in range(int(state.get("world_size", 1)))]
    with disk_full_as_error(checkpoint):
        for name in ["model", "optimizer", *ranks]:
            with open_regular(checkpoint / f"{name}.pt", _unreadable(checkpoint),
                              what="checkpoint file") as (fh, _):
                obj = torch.load(fh, map_location="cpu", weights_only=False)
            save_state(checkpoint / f"{name}.safetensors", obj)
            _finish(checkpoint / f"{name}.safetensors")
        with atomic_path(checkpoint / "trainer.json") as tmp:
            tmp.write_text(json.dumps(dict(state, format=FORMAT), indent=1, default=str, allow_nan=False))
    for name in ["model", "optimizer", *ranks]:
        (checkpoint / f"{name}.pt").unlink(missing_ok=True)


# --- the exported model ------------------------------------------------------------------------


def exported_step(run: Path) -> int | None:
    """The training step RUN/model holds (nextlong.json's "step"), or None when it says none or cannot be read (the
    model is then exported again). Read as a run folder's file is: a regular file of bounded size, not through a
    link (a FIFO there hung the resume of a finished run, and a link to /dev/zero filled the memory)."""
    try:
        step = read_json(Path(run) / MODEL / "nextlong.json", NextlongError, expect=dict, follow=False).get("step")
    except NextlongError:
        return None
    return step if whole(step) else None


def export_model(run: Path, hf_model, *, tokenizer_spec: str | None, state_dict: dict | None = None,
                 step: int | None = None) -> Path:
    """Write RUN/model (save_pretrained + nextlong.json, which records `step`) atomically; rank 0 only."""
    run = Path(run)
    final = run / MODEL
    folder = run / f".{MODEL}-{os.urandom(4).hex()}"
    folder.mkdir()
    try:
        with disk_full_as_error(final):
            _write_model_folder(folder, hf_model, tokenizer_spec, state_dict, step)
            link = run / f".{MODEL}-link"
            _remove(link)  # whatever has the name (a crafted folder too), never followed
            os.symlink(folder.name, link)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if final.is_dir() and not final.is_symlink():  # a run folder of nextlong before the link: once
        _remove(run / f".{MODEL}-before-link")
        os.replace(final, run / f".{MODEL}-before-link")
    os.replace(link, final)  # the atomic step: readers see the old complete model or the new one
    fsync_path(run)
    for stale in run.glob(f".{MODEL}-*"):
        if stale != folder and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    for stale in (run / ".tmp-model", run / ".old-model"):  # left by nextlong before the link
        _remove(stale, ignore_errors=True)
    return final


def _write_model_folder(folder: Path, hf_model, tokenizer_spec: str | None, state_dict: dict | None,
                        step: int | None) -> None:
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
    meta = {"tokenizer": spec} if step is None else {"tokenizer": spec, "step": int(step)}
    (folder / "nextlong.json").write_text(json.dumps(meta, indent=1) + "\n")
    _finish(*(f for f in folder.iterdir() if f.is_file()))
