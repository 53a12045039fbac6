"""Long-context evaluation, fully offline: RULER's synthetic recall tasks and HELMET's JSON-KV
(`tasks`, `json_kv`, `haystack`), their scoring (`scoring`), LongPPL (`longppl`), retrieval-head
detection (`heads`), the run loop (`runner`), model loading (`model`) and pictures (`plots`).

    nextlong eval MODEL --out DIR      # recall tasks x lengths x depths, LongPPL, heat maps
    nextlong heads MODEL --out DIR     # retrieval heads (Wu et al.), layers x heads map

    from nextlong.eval import evaluate
    results = evaluate("demo-run", "demo-eval", tasks="niah_single_1,repeat", lengths=[1024])  # as `nextlong eval`
    heads = retrieval_heads("demo-run", "demo-heads", lengths=[1024], needles=1)              # as `nextlong heads`
"""

from .evaluation import evaluate
from .heads_run import retrieval_heads
from .options import EvalOptions, HeadsOptions
from .scoring import rouge1_recall, string_match_all, string_match_part, substring_exact_match
from .tasks import ALL_TASKS, GROUPS, Sample, expand_tasks, make_sample

__all__ = ["ALL_TASKS", "EvalOptions", "GROUPS", "HeadsOptions", "Sample", "evaluate", "retrieval_heads", "expand_tasks", "make_sample", "rouge1_recall", "string_match_all",
           "string_match_part", "substring_exact_match"]
