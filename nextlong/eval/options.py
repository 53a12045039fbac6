"""The settings of one `nextlong eval` or `nextlong heads` run, their defaults and their checks, shared by
the CLI (which takes its defaults from here) and the Python API:

    from nextlong.eval import evaluate, retrieval_heads
    results = evaluate("demo-run", "demo-eval", tasks="niah_single_1,repeat", lengths=[1024, 2048])
    heads = retrieval_heads("demo-run", "demo-heads", lengths=[1024], needles=1)

Field names are the CLI's options with `_` for `-` (`--max-new-tokens` is `max_new_tokens`). A bad value
is one UsageError naming the option, before the model loads, as on the command line.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..synthesis.acer.config import DTYPES, ORDERS, RETRIEVERS  # the rag task evaluates what ACER builds

DEFAULT_TASKS = "ruler,json_kv,longppl"
MODES = ("both", "greedy", "teacher-forced")
ATTENTION = ("auto", "nextlong", "sdpa", "eager")  # prefill attention
DISTRACTORS = ("retrieved", "no-answer")  # --rag-distractors


class _Checked:
    """The checks both option sets share: each names the CLI option, as argparse's types would."""

    @classmethod
    def defaults(cls) -> dict:
        """Every option's default (the CLI's defaults; model and out have none)."""
        return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    @classmethod
    def from_cli(cls, args):
        """The options of a parsed command line (argparse's Namespace holds one attribute per field), checked."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}).validate()

    @classmethod
    def from_keywords(cls, caller: str, model, out, options: dict):
        """The options of a Python call, checked; a keyword that is no option is refused by name."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise UsageError(f"{caller}: unknown option {unknown[0]!r}; the options are {', '.join(cls.defaults())}")
        return cls(model=model, out=out, **options).validate()

    def _bad(self, name: str, expected: str) -> UsageError:
        option = "MODEL" if name == "model" else f"--{name.replace('_', '-')}"
        return UsageError(f"{option} must be {expected}, got {getattr(self, name)!r}")

    def _positive(self, *names: str, optional: bool = False) -> None:
        for name in names:
            value = getattr(self, name)
            if not (optional and value is None):
                if not _whole(value) or value < 1:
                    raise self._bad(name, "a positive integer" + (" (or None)" if optional else ""))
                setattr(self, name, int(value))  # a numpy integer too

    def _choice(self, name: str, choices, optional: bool = False) -> None:
        if not (optional and getattr(self, name) is None) and getattr(self, name) not in choices:
            raise self._bad(name, f"one of {', '.join(choices)}" + (" (or None)" if optional else ""))

    def _flags(self, *names: str) -> None:
        for name in names:
            if not isinstance(getattr(self, name), bool):
                raise self._bad(name, "True or False")

    def _paths(self, *names: str, optional: bool = True) -> None:
        """Paths as the strings the CLI would have: the journal's fingerprint and the manifest record them."""
        for name in names:
            value = getattr(self, name)
            if optional and (value is None or value == ""):  # "" is "not given", as `--corpus ""` always was
                continue
            if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
                raise self._bad(name, "a path" + (" (or None)" if optional else ""))
            setattr(self, name, os.fspath(value))

    def _strings(self, *names: str, optional: bool = True) -> None:
        for name in names:
            value = getattr(self, name)
            if not (optional and value is None) and not isinstance(value, str):
                raise self._bad(name, "a string" + (" (or None)" if optional else ""))

    def _lengths_and_seed(self) -> None:
        """`lengths` (None, or positive integers: sorted, without repeats) and `seed`."""
        from ..seeds import seed_problem

        if self.lengths is not None:
            if not _sequence(self.lengths) or not len(self.lengths) \
                    or not all(_whole(n) and n >= 1 for n in self.lengths):
                raise self._bad("lengths", "a list of positive integers (or None)")
            self.lengths = sorted({int(n) for n in self.lengths})
        if not _whole(self.seed) or seed_problem(self.seed):
            raise self._bad("seed", "an integer in [0, 2**63)")


def _whole(value) -> bool:
    """An integer (numpy's too: numpy registers its integers as numbers.Integral), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _sequence(value) -> bool:
    """A list, tuple or array (not a string, an iterator or a set): what an option that takes several values
    accepts."""
    return isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray"  # numpy not imported for it


@dataclass
class EvalOptions(_Checked):
    model: str | Path
    out: str | Path
    tasks: str = DEFAULT_TASKS  # comma-separated tasks or groups (a list is joined)
    lengths: list[int] | None = None  # None: 1024, 2048, ... up to the model's positions
    depths: int = 5
    samples: int = 1
    seed: int = 0
    mode: str = "both"
    max_new_tokens: int | None = None
    corpus: str | Path | None = None
    text_field: str = "text"
    id_field: str | None = None
    rag_questions: str | Path | None = None
    rag_retriever: str = "embedding"
    rag_embedder: str | None = None
    rag_chunk_tokens: int = 256
    rag_read: int = 8
    rag_retrieve: int | None = None
    rag_distractors: str = "retrieved"
    rag_order: str = "shuffled"
    rag_separator: str = "\n\n"
    rag_prompts: str | Path | None = None
    longppl_length: int | None = None
    longppl_docs: int = 4
    longppl_evaluator: str | Path | None = None
    repeat_docs: int = 4
    short_window: int = 4096
    short_stride: int = 1024
    attn: str = "auto"
    device: str | None = None
    dtype: str | None = None  # None: bfloat16 on CUDA, float32 on CPU
    allow_extrapolation: bool = False
    trust_remote_code: bool = False
    dump: bool = False
    no_progress: bool = False
    quiet: bool = False

    def validate(self) -> "EvalOptions":
        """Check every value as its CLI option's type would (and normalise `tasks` and `lengths`)."""
        if not isinstance(self.tasks, str):
            if not _sequence(self.tasks) or not all(isinstance(t, str) for t in self.tasks):
                raise self._bad("tasks", "a comma-separated string or a list of task names")
            self.tasks = ",".join(self.tasks)
        self._positive("depths", "samples", "rag_chunk_tokens", "rag_read", "longppl_docs", "repeat_docs",
                       "short_window", "short_stride")
        self._positive("max_new_tokens", "rag_retrieve", "longppl_length", optional=True)
        self._lengths_and_seed()
        for name, choices in (("mode", MODES), ("attn", ATTENTION), ("rag_retriever", RETRIEVERS),
                              ("rag_distractors", DISTRACTORS), ("rag_order", ORDERS)):
            self._choice(name, choices)
        self._choice("dtype", DTYPES, optional=True)
        self._flags("allow_extrapolation", "trust_remote_code", "dump", "no_progress", "quiet")
        self._paths("model", "out", optional=False)
        self._paths("corpus", "rag_questions", "rag_embedder", "rag_prompts", "longppl_evaluator")
        self._strings("id_field", "device")
        self._strings("text_field", "rag_separator", optional=False)
        return self


EVAL_DEFAULTS = EvalOptions.defaults()


@dataclass
class HeadsOptions(_Checked):
    """`nextlong heads`: retrieval-head detection (Wu et al.) of `model`, or `compare` = (RUN_A, RUN_B)."""
    model: str | Path | None
    out: str | Path
    lengths: list[int] | None = None  # None: num_lengths lengths from 1000 to the model's positions
    num_lengths: int = 5
    depths: int = 5
    needles: int = 3  # 1, 2 or 3
    threshold: float = 0.1
    min_recall: float = 0.5
    all_trials: bool = False
    max_new_tokens: int = 50
    mask_heads: int = 0
    compare: tuple | None = None
    corpus: str | Path | None = None
    text_field: str = "text"
    seed: int = 0
    attn: str = "auto"
    device: str | None = None
    dtype: str | None = None
    allow_extrapolation: bool = False
    trust_remote_code: bool = False
    no_progress: bool = False
    quiet: bool = False

    def validate(self) -> "HeadsOptions":
        """Check every value as its CLI option's type would (and normalise `lengths`)."""
        self._positive("num_lengths", "depths", "max_new_tokens")
        if self.needles not in (1, 2, 3) or not _whole(self.needles):
            raise self._bad("needles", "1, 2 or 3")
        if not _whole(self.mask_heads) or self.mask_heads < 0:
            raise self._bad("mask_heads", "0 or more")
        self._lengths_and_seed()
        for name in ("threshold", "min_recall"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise self._bad(name, "a finite number")
            setattr(self, name, float(value))
        if not 0 <= self.min_recall < 1:
            raise self._bad("min_recall", "in [0, 1)")
        self._choice("attn", ATTENTION)
        self._choice("dtype", DTYPES, optional=True)
        self._flags("all_trials", "allow_extrapolation", "trust_remote_code", "no_progress", "quiet")
        if self.compare is not None:
            if not _sequence(self.compare) or len(self.compare) != 2 \
                    or not all(isinstance(c, (str, os.PathLike)) for c in self.compare):
                raise self._bad("compare", "two run folders")
            self.compare = tuple(os.fspath(c) for c in self.compare)
        self._paths("out", optional=False)
        self._paths("model", "corpus")
        self._strings("device")
        self._strings("text_field", optional=False)
        return self


HEADS_DEFAULTS = HeadsOptions.defaults()
