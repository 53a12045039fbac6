"""Every setting of `nextlong train`, checked before any work starts.

Defaults follow ProLong's recipe, which the NExtLong authors train with: AdamW (0.9, 0.95), weight
decay 0.1, gradient clipping 1.0, cosine decay to `min_lr_ratio` = 0.1 of the peak after a linear
warm-up. Where the paper is silent (the learning rate of a model initialised at random, the warm-up
length) the default is named in docs/training.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..seeds import seed_problem
from ..untrusted import show

ATTENTIONS = ("nextlong", "sdpa", "eager")
LOSSES = ("fused", "eager")
WEIGHTINGS = ("none", "dense", "sparse", "longce")
SPAN_MODES = ("sample", "document", "none")
NAN_POLICIES = ("stop", "skip-step")
LOSS_ON = ("all", "answer")

# Settings that change what a step computes: a resumed run must use the same ones.
# `tokenizer` is the user's own say-so about a file (never taken from a run folder's manifest on resume).
_NOT_RUN_DEFINING = {"out", "resume", "save_every", "keep_checkpoints", "progress", "stop_after", "num_threads",
                     "nan_policy", "trust_checkpoint", "trust_remote_code", "tokenizer", "restored",
                     "collective_timeout"}
MAX_LR = 1e10  # far above any rate that trains; AdamW's float32 arithmetic overflows near 1e38


def option_text(name: str, value, restored=frozenset()) -> str:
    """`--name value` (a flag: `--name`) as an error names an option, marked as the run's own where --resume took it
    from RUN/manifest.json: a user who never typed it must not read it as their mistake."""
    said = f"--{name.replace('_', '-')}" + ("" if value is True else f" {value}")
    return f"{said} (from the run's manifest)" if name in restored else said


@dataclass
class TrainConfig:
    data: list[str]                      # "PATH" or "PATH@weight", one per source
    out: str
    model: str = "tiny"                  # tiny | small | 1b | a local Hugging Face causal-LM folder
    trust_remote_code: bool = False      # run Python code a model folder ships (nextlong.model_folder)
    tokenizer: str | None = None         # the data's tokenizer (default: its manifest's own copy or built-in name)
    seq_len: int | None = None           # default: the data's sample length
    batch_tokens: int | None = None      # tokens per optimizer step; default seq_len x world size
    micro_batch: int = 1                 # sequences per forward pass on one rank
    steps: int = 100
    lr: float | None = None              # default 1e-3 for a preset (random init), 1e-5 for a pretrained model
    warmup: int | None = None            # default 5% of the steps
    min_lr_ratio: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    rope_theta: float | None = None      # default: the preset's 500,000, or the pretrained config's value
    seed: int = 0
    attention: str = "nextlong"
    loss: str = "fused"
    attention_spans: str = "sample"
    split_spans: bool = False            # cut spans longer than the room left in a sequence
    loss_on: str | None = None           # all | answer (loss_mask tokens only); default answer when the data has a mask
    token_weighting: str = "none"
    scorer: str | None = None            # short-context scorer model (default: the model being trained)
    short_window: int = 4096             # context of the short-context scores (capped at seq_len / 4)
    short_stride: int = 512
    dense_lam: float = 0.25              # weight of the score part: w = lam * s/mean(s) + (1 - lam)
    sparse_keep: float = 0.3
    longce_gamma: float = 5.0
    grad_checkpointing: bool = False
    fsdp: bool = False
    seq_parallel: int = 1                # Ulysses: each sequence's tokens split over this many ranks
    save_every: int = 0                  # 0: only at the end
    keep_checkpoints: int = 2
    resume: bool = False
    trust_checkpoint: bool = False       # load an old pickle checkpoint once (it can run code) and rewrite it safely
    nan_policy: str = "stop"             # a non-finite loss or gradient norm: stop the run, or skip that update
    stop_after: int | None = None        # end this invocation after N steps (a later --resume goes on)
    progress: bool = True
    num_threads: int = 0                 # CPU threads per process (0: the cores divided among local ranks)
    collective_timeout: float | None = None  # seconds a collective waits for the other ranks (None: torch's default)
    extra: dict = field(default_factory=dict)
    # with resume: the settings taken from RUN/manifest.json, not given; an error names them as the run's
    restored: frozenset = frozenset()

    def validate(self) -> "TrainConfig":
        def check(ok, message, name=None):
            if not ok:  # a value --resume took from the run's manifest is said to be the run's, not the user's
                raise UsageError(message + (" (from the run's manifest)" if name in self.restored else ""))

        check(self.data, "train: give at least one DATA folder")
        for f in dataclasses.fields(self):  # a crafted manifest (--resume) or a Python caller: not what the checks
            value = getattr(self, f.name)  # below compare ('<' between a float and a str was a TypeError traceback)
            check(_of_type(value, _FIELD_TYPES[f.name]), f"{_setting(f.name)} must be "
                  f"{_described(_FIELD_TYPES[f.name])}, got {show(value)}", f.name)
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
              f"betas must be two numbers in [0, 1) (AdamW's), got {show(self.betas)}", "betas")
        check(self.attention in ATTENTIONS, f"--attention must be one of {ATTENTIONS}, got {self.attention!r}")
        check(self.loss in LOSSES, f"--loss must be one of {LOSSES}, got {self.loss!r}")
        check(self.attention_spans in SPAN_MODES,
              f"--attention-spans must be one of {SPAN_MODES}, got {self.attention_spans!r}")
        check(self.loss_on is None or self.loss_on in LOSS_ON,
              f"--loss-on must be one of {LOSS_ON}, got {self.loss_on!r}")
        check(self.token_weighting in WEIGHTINGS,
              f"--token-weighting must be one of {WEIGHTINGS}, got {self.token_weighting!r}")
        check(self.scorer is None or self.token_weighting != "none",
              "--scorer is only used with --token-weighting dense|sparse|longce")
        for name in ("steps", "micro_batch", "short_window", "short_stride", "keep_checkpoints", "seq_parallel"):
            check(getattr(self, name) >= 1, f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}", name)
        for name in ("seq_len", "batch_tokens", "stop_after"):
            value = getattr(self, name)
            check(value is None or value >= 1, f"--{name.replace('_', '-')} must be >= 1, got {value}", name)
        check(self.seq_len is None or self.seq_len >= 2, "--seq-len must be at least 2 tokens", "seq_len")
        check(self.lr is None or 0 < self.lr <= MAX_LR, f"--lr must be > 0 and at most {MAX_LR:g}, got {self.lr}",
              "lr")
        check(self.warmup is None or 0 <= self.warmup <= self.steps,
              f"--warmup must be between 0 and {self.option('steps')}, got {self.option('warmup')}")
        check(0.0 <= self.min_lr_ratio <= 1.0, f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}",
              "min_lr_ratio")
        check(self.save_every >= 0, f"--save-every must be >= 0, got {self.save_every}")
        check(self.rope_theta is None or 0 < self.rope_theta < math.inf,
              f"--rope-theta must be > 0 and finite, got {self.rope_theta}", "rope_theta")
        check(0 <= self.weight_decay < math.inf, f"--weight-decay must be >= 0 and finite, got {self.weight_decay}",
              "weight_decay")
        check(0.0 <= self.dense_lam <= 1.0, f"--dense-lam must be in [0, 1], got {self.dense_lam}", "dense_lam")
        check(0.0 < self.sparse_keep <= 1.0, f"--sparse-keep must be in (0, 1], got {self.sparse_keep}",
              "sparse_keep")
        check(self.longce_gamma >= 1.0, f"--longce-gamma must be >= 1, got {self.longce_gamma}", "longce_gamma")
        check(self.grad_clip >= 0, f"--grad-clip must be >= 0, got {self.grad_clip}", "grad_clip")
        check(self.num_threads >= 0, f"--threads must be >= 0, got {self.num_threads}")
        check(self.collective_timeout is None or 0 < self.collective_timeout < float("inf"),
              f"--collective-timeout must be a positive number of seconds, got {show(self.collective_timeout)}")
        problem = seed_problem(self.seed)
        check(problem is None, f"--seed {problem}")
        check(self.nan_policy in NAN_POLICIES, f"--nan-policy must be one of {NAN_POLICIES}, got {self.nan_policy!r}")
        check(self.resume or not self.trust_checkpoint, "--trust-checkpoint only applies with --resume")
        return self

    def option(self, name: str, value=None) -> str:
        """`--name value` as an error names it (option_text)."""
        return option_text(name, getattr(self, name) if value is None else value, self.restored)

    def resolved_warmup(self) -> int:
        return self.warmup if self.warmup is not None else int(round(0.05 * self.steps))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        del d["restored"]  # where a value came from, not a setting
        d["betas"] = list(self.betas)
        return d

    def run_defining(self) -> dict:
        """The settings a resumed run must share with the run it continues."""
        return {k: v for k, v in self.to_dict().items() if k not in _NOT_RUN_DEFINING}


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}  # the annotations, as text


def _of_type(value, annotation: str) -> bool:
    """Whether `value` is of TrainConfig's `annotation` ("int | None", "list[str]", "tuple[float, float]", ...):
    an int is a float, a bool is neither."""
    if " | " in annotation:
        return any(_of_type(value, part) for part in annotation.split(" | "))
    simple = {"None": value is None, "bool": type(value) is bool, "int": type(value) is int,
              "float": type(value) in (int, float), "str": isinstance(value, (str, os.PathLike)),
              "dict": isinstance(value, dict),
              "frozenset": isinstance(value, (set, frozenset))}
    if annotation in simple:
        return simple[annotation]
    if annotation == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if annotation == "tuple[float, float]":
        return isinstance(value, (list, tuple)) and all(type(v) in (int, float) for v in value)
    raise AssertionError(f"TrainConfig annotation {annotation!r} has no check")


_WORDS = {"None": "null", "bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
          "dict": "an object", "frozenset": "a set", "list[str]": "a list of strings",
          "tuple[float, float]": "a pair of numbers"}


def _described(annotation: str) -> str:
    return " or ".join(_WORDS[part] for part in annotation.split(" | "))


def _setting(name: str) -> str:
    """A setting as an error names it: the option (--micro-batch), or the field where there is none (betas)."""
    return name if name in ("data", "out", "betas", "extra", "restored") else f"--{name.replace('_', '-')}"


def recorded_settings(run) -> dict:
    """The settings a `nextlong train` run folder's manifest recorded ({} when it has none yet, or an
    unreadable one: the trainer then reports what it finds), read as untrusted input."""
    from ..manifest import read_manifest

    manifest = read_manifest(Path(run) / "manifest.json")
    settings = manifest.get("settings")
    return settings if isinstance(settings, dict) and manifest.get("command") == "train" else {}


def check_output_folder(run) -> None:
    """--out holding another command's record (a `nextlong synthesize` or `acer` output, such as the DATA folder
    itself) is refused: the run would replace its manifest.json, which the data's provenance and train's own
    data fingerprint rest on, and write its checkpoints among the data. The rule every folder command's lock
    applies (locking.refuse_another_commands_folder), checked here before train's setup."""
    from ..locking import refuse_another_commands_folder

    refuse_another_commands_folder(Path(run), "train")


def check_settings_recorded(run, settings_given: bool) -> None:
    """With --resume: a run folder that exists but records no settings (no `nextlong train` manifest and no
    checkpoint: a run killed during its setup, before it wrote its manifest) cannot supply the settings a short
    `--resume` leaves to it, and its defaults would silently train another run than the one killed. So a resume
    that gives none of the run-defining settings (`settings_given` False) is refused there; one that gives some
    states the run itself (what it leaves off takes its default, as in a new run), and an --out that does not
    exist yet starts a new run (job scripts pass --resume always)."""
    from ..errors import NextlongError
    from . import checkpoint as ckpt

    run = Path(run)
    check_output_folder(run)
    if settings_given or not run.is_dir() or recorded_settings(run) or ckpt.list_checkpoints(run):
        return
    why = ("it stopped before writing its manifest" if not os.path.lexists(run / "manifest.json") else
           "its manifest.json is not a readable `nextlong train` manifest")
    raise NextlongError(f"{run} records no settings to resume from ({why}): give the settings again, or run "
                        "without --resume")


def run_defining_names() -> set[str]:
    """The names of the settings a resumed run must share with the run it continues."""
    return set(TrainConfig(data=[], out="").run_defining())


def resumed_settings(run, given: dict) -> dict:
    """`given` (keyword settings of `train(..., resume=True)`) completed with what RUN/manifest.json recorded
    for every setting a resume must share and `given` leaves out, so a resume needs no setting repeated (as
    `nextlong train DATA --out RUN --resume`); a setting given anew that differs is still refused."""
    from . import checkpoint as ckpt

    shared = run_defining_names() - {"data", "extra"}
    check_settings_recorded(run, settings_given=bool(shared & set(given)))
    everything = recorded_settings(run)
    # a number given anew that differs from the run's is refused now, by name: later, a setting taken from the run
    # was named in an error as if given ("--batch-tokens 1024 must be a multiple of --seq-len 2048", the 1024 the
    # run's); the trainer still compares every resolved setting against the checkpoint's
    differ = {k: (everything[k], v) for k, v in given.items() if k in shared and k in everything
              and isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(everything[k], (int, float))
              and not isinstance(everything[k], bool) and everything[k] != v}
    if differ and ckpt.list_checkpoints(run):  # with none, the run starts from step 0 with what is given
        raise other_settings_error(run, differ)
    recorded = {k: v for k, v in everything.items() if k in shared and k not in given}
    refuse_recorded_paths(run, recorded, given)
    if isinstance(recorded.get("betas"), list):  # JSON keeps the pair as a list
        recorded["betas"] = tuple(recorded["betas"])
    restored = frozenset(given.get("restored", ())) | frozenset(recorded)
    return {**recorded, **given, "restored": restored}


PATH_SETTINGS = ("model", "scorer")  # settings that name a folder to load


def refuse_recorded_paths(run, recorded: dict, given) -> None:
    """A run folder is untrusted input: a model path its manifest names is not followed on --resume (a crafted
    manifest made `--resume` load, train and export a model from anywhere on the disk). A preset name is taken
    from it; a path must be given again, as the command that started the run gave it."""
    from ..errors import UsageError
    from ..untrusted import show
    from .model import is_preset

    for name in PATH_SETTINGS:
        value = recorded.get(name)
        if name in given or value is None or (name == "model" and isinstance(value, str) and is_preset(value)):
            continue
        raise UsageError(f"{Path(run) / 'manifest.json'}: the run's --{name} is {show(value, 100)}, a path, which a "
                         f"run folder's manifest cannot choose: give it again (--{name} PATH) to resume")


def other_settings_error(run, differ: dict, given_from: str | None = None):
    """The refusal of a resume whose settings differ from the run's: {name: (saved, now)}; `given_from`: the folder
    the saved relative paths were given from (a checkpoint's cwd), named when a path differs ("saved ['data'], now
    ['data']" is another folder of that name)."""
    from ..errors import NextlongError
    from ..untrusted import show

    details = "; ".join(f"{k if k.isidentifier() else show(k)}: saved {show(saved, 100)}, now {show(now, 100)}"
                        for k, (saved, now) in sorted(differ.items())[:8])
    if given_from is not None and {"data", "model", "scorer"} & set(differ):
        details += f"; the saved relative paths were given from {show(given_from, 200)}"
    more = ("; to train on from it, start a new run with --model " + str(run) + " and another --out"
            if "steps" in differ else "")
    return NextlongError(f"{run}: cannot resume with other settings ({details}){more}")
