"""NExtLong synthesis: long documents from short ones, by hard-negative extension (method §1), and the
baselines it is compared with (method §2). `synthesize(...)` is the Python face of `nextlong synthesize`."""

from __future__ import annotations

from .config import FORMATS, METHODS, NEGATIVE_RULES, SynthesisConfig

__all__ = ["synthesize", "SynthesisConfig", "METHODS", "NEGATIVE_RULES", "FORMATS", "demo_config"]


def demo_config(out, **overrides) -> SynthesisConfig:
    """Settings of `--demo`: the stdlib docstring corpus, cl100k, MiniLM, L = 8192, a few samples,
    and otherwise the paper's defaults (fixed-k negatives: documents that cannot reach L are dropped
    and counted in the summary). The corpus is written to OUT/demo_corpus.jsonl once the settings are
    checked: a wrong one is refused before anything is written."""
    from pathlib import Path

    from ..errors import checked_path
    from .config import api_config
    from .demo import DEMO_NUM_SAMPLES, DEMO_TARGET_LENGTH, write_demo_corpus

    demo_corpus = Path(checked_path(out, "out")) / "demo_corpus.jsonl"
    settings = dict(corpus=str(demo_corpus), id_field="id", target_length=DEMO_TARGET_LENGTH,
                    num_samples=DEMO_NUM_SAMPLES)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    cfg = api_config(SynthesisConfig, out=out, **settings)
    cfg.validate()
    write_demo_corpus(demo_corpus)
    return cfg


def synthesize(corpus=None, out=None, *, demo: bool = False, **settings) -> dict:
    """Build long documents from `corpus` (a JSONL / Parquet / text file or folder) into folder `out`.

    Keyword settings are SynthesisConfig's fields, the options of `nextlong synthesize` with `_` for `-`
    (num_threads for --threads, verify=False for --no-verify): target_length=65536, method="nextlong",
    negatives, tokenizer, embedder, chunk_size, chunk_unit, seed, num_samples, format, separator, rebuild,
    progress=False (no bars or summary on stderr), ...; `demo=True`
    runs on the embedded demo corpus. Returns the run's manifest, the dict OUT/manifest.json holds (command,
    created_unix, seed, settings, statistics, versions). The documents are OUT/data/part-*.parquet.

    A wrong setting (a misspelt keyword, target_length="64k" or None) raises nextlong.errors.UsageError before
    any work; bad data another NextlongError naming the file. Another run writing `out` (another process, or
    another thread of this one) raises OutputLockedError. A second call resumes: finished stages are reused
    (one with other settings raises StageMismatchError, unless rebuild=True), and a call stopped by
    KeyboardInterrupt goes on where it stopped, to the same bytes."""
    from ..errors import UsageError
    from .config import api_config
    from .pipeline import run

    if out is None:
        raise UsageError("synthesize() needs out= (the output folder)")
    if demo:
        cfg = demo_config(out, corpus=corpus, **settings)
    else:
        cfg = api_config(SynthesisConfig, out=out, corpus=corpus, **settings)
    return run(cfg)
