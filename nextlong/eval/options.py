"""The settings of one `nextlong eval` run, their defaults and their checks, shared by the CLI (which takes
its defaults from here) and the Python API:

    from nextlong.eval import evaluate
    results = evaluate("demo-run", "demo-eval", tasks="niah_single_1,repeat", lengths=[1024, 2048])

Field names are the CLI's options with `_` for `-` (`--max-new-tokens` is `max_new_tokens`). A bad value
is one UsageError naming the option, before the model loads, as on the command line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..synthesis.acer.config import DTYPES, ORDERS, RETRIEVERS  # the rag task evaluates what ACER builds

DEFAULT_TASKS = "ruler,json_kv,longppl"
MODES = ("both", "greedy", "teacher-forced")
ATTENTION = ("auto", "nextlong", "sdpa", "eager")  # prefill attention
DISTRACTORS = ("retrieved", "no-answer")  # --rag-distractors


@dataclass
class EvalOptions:
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

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def validate(self) -> "EvalOptions":
        """Check every value as its CLI option's type would (and normalise `tasks` and `lengths`)."""
        from ..seeds import seed_problem

        def bad(name: str, expected: str, value) -> UsageError:
            return UsageError(f"--{name.replace('_', '-')} must be {expected}, got {value!r}")

        def whole(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not isinstance(self.tasks, str):
            if not all(isinstance(t, str) for t in self.tasks or ()):
                raise bad("tasks", "a comma-separated string or a list of task names", self.tasks)
            self.tasks = ",".join(self.tasks)
        for name in ("depths", "samples", "rag_chunk_tokens", "rag_read", "longppl_docs", "repeat_docs",
                     "short_window", "short_stride"):
            if not whole(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "a positive integer", getattr(self, name))
        for name in ("max_new_tokens", "rag_retrieve", "longppl_length"):
            value = getattr(self, name)
            if value is not None and (not whole(value) or value < 1):
                raise bad(name, "a positive integer (or None)", value)
        if self.lengths is not None:
            if isinstance(self.lengths, (str, bytes)) or not all(whole(n) and n >= 1 for n in self.lengths) \
                    or not len(self.lengths):
                raise bad("lengths", "a list of positive integers (or None)", self.lengths)
            self.lengths = sorted(set(self.lengths))
        if not whole(self.seed) or seed_problem(self.seed):
            raise bad("seed", "an integer in [0, 2**63)", self.seed)
        for name, choices in (("mode", MODES), ("attn", ATTENTION), ("rag_retriever", RETRIEVERS),
                              ("rag_distractors", DISTRACTORS), ("rag_order", ORDERS)):
            if getattr(self, name) not in choices:
                raise bad(name, f"one of {', '.join(choices)}", getattr(self, name))
        if self.dtype is not None and self.dtype not in DTYPES:
            raise bad("dtype", f"one of {', '.join(DTYPES)} (or None)", self.dtype)
        for name in ("allow_extrapolation", "trust_remote_code", "dump", "no_progress", "quiet"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "True or False", getattr(self, name))
        for name in ("model", "out"):
            if not isinstance(getattr(self, name), (str, Path)) or not str(getattr(self, name)):
                raise bad(name, "a path", getattr(self, name))
        for name in ("corpus", "id_field", "rag_questions", "rag_embedder", "rag_prompts", "longppl_evaluator",
                     "device"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), (str, Path)):
                raise bad(name, "a string or path (or None)", getattr(self, name))
        for name in ("text_field", "rag_separator"):
            if not isinstance(getattr(self, name), str):
                raise bad(name, "a string", getattr(self, name))
        return self


DEFAULTS = {f.name: f.default for f in dataclasses.fields(EvalOptions) if f.default is not dataclasses.MISSING}


def evaluate(model, out, **options) -> dict:
    """`nextlong eval MODEL --out OUT` from Python, with the same options (see EvalOptions), checks and files;
    returns what results.json holds."""
    unknown = sorted(set(options) - set(EvalOptions.field_names()))
    if unknown:
        raise UsageError(f"evaluate: unknown option {unknown[0]!r}; the options are {', '.join(DEFAULTS)}")
    from .evaluation import run_eval

    return run_eval(EvalOptions(model=model, out=out, **options).validate())
