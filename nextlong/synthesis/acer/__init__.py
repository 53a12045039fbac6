"""ACER: long-context training data made with a short-context LM (Gao, Zhang, Callan 2024; docs/acer.md).

For each question, a retriever picks many chunks of a corpus, the LM ranks them (is this passage
helpful?) and reads only the top few to answer; the training sample is the whole retrieved context, the
question and that answer, with the loss on the answer. `acer(...)` is the Python face of `nextlong acer`:

    import nextlong
    manifest = nextlong.acer("corpus.jsonl", "out", model="models/llama", questions="q.jsonl",
                             target_length=32768, read=8)

It lives beside NExtLong's stages because it is another way to synthesize long-context training data,
run by the same stages and executors (`nextlong.synthesis`).
"""

from __future__ import annotations

from .config import FILTERS, FORMATS, ORDERS, RANKERS, RETRIEVERS, AcerConfig

__all__ = ["acer", "AcerConfig", "RANKERS", "RETRIEVERS", "ORDERS", "FILTERS", "FORMATS"]


def acer(corpus=None, out=None, *, model=None, questions=None, **settings) -> dict:
    """Build ACER samples from `corpus` into folder `out` with the causal LM `model`; returns the manifest.

    Questions come from `questions` (a JSONL file: question, optional answer/answers, optional id) or,
    with `generate_questions=N`, are written by the model about N random chunks. Other keyword settings
    are AcerConfig's fields, the options of `nextlong acer` with `_` for `-` (target_length, chunk_tokens,
    retrieve, read, retriever, ranker, order, filter, max_new_tokens, seed, embedder, tokenizer, format, prompts,
    chain_of_thought, progress=False, ...). Returns the dict OUT/manifest.json holds. A wrong setting raises
    nextlong.errors.UsageError before any work; a second call resumes from the finished blocks (docs/acer.md)."""
    from ...errors import UsageError
    from ..config import api_config
    from .pipeline import run

    if out is None:
        raise UsageError("acer() needs out= (the output folder)")
    cfg = api_config(AcerConfig, out=out, corpus=corpus, model=model, questions=questions, **settings)
    return run(cfg)
