"""Long-context evaluation, fully offline: RULER's synthetic recall tasks and HELMET's JSON-KV
(`tasks`, `json_kv`, `haystack`), their scoring (`scoring`), LongPPL (`longppl`), retrieval-head
detection (`heads`), the run loop (`runner`), model loading (`model`) and pictures (`plots`).

    nextlong eval MODEL --out DIR      # recall tasks x lengths x depths, LongPPL, heat maps
    nextlong heads MODEL --out DIR     # retrieval heads (Wu et al.), layers x heads map

    from nextlong.eval import evaluate
    results = evaluate("demo-run", "demo-eval", tasks="niah_single_1,repeat", lengths=[1024])  # as `nextlong eval`
    heads = retrieval_heads("demo-run", "demo-heads", lengths=[1024], needles=1)              # as `nextlong heads`
"""

from __future__ import annotations

from .. import lazy_attribute

# public name -> module that defines it, imported on first use: every `nextlong` command builds its parser from
# nextlong.eval.options, and the tasks, runner and report behind `evaluate` cost ~0.1 s to import (half of
# `nextlong --help`'s time) for the commands that never evaluate
_LAZY = {"evaluate": "evaluation", "retrieval_heads": "heads_run", "EvalOptions": "options", "HeadsOptions": "options",
         "rouge1_recall": "scoring", "string_match_all": "scoring", "string_match_part": "scoring",
         "substring_exact_match": "scoring", "ALL_TASKS": "tasks", "GROUPS": "tasks", "Sample": "tasks",
         "expand_tasks": "tasks", "make_sample": "tasks"}

__all__ = sorted(_LAZY)
_MODULES = {name: f"{__name__}.{module}" for name, module in _LAZY.items()}


def __getattr__(name: str):
    return lazy_attribute(__name__, globals(), _MODULES, name)


def __dir__():
    return __all__
