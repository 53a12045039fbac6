"""Every setting of a synthesis run in one dataclass, with the paper's defaults (method §1–§2).

Each stage takes the subset of settings it depends on as its own fields (stages.py), so its
fingerprint is derived and a cached stage built with other settings is detected, not reused.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

METHODS = ("nextlong", "standard", "knn", "iclm", "quest", "litelong")
EMBEDDING_METHODS = ("nextlong", "knn", "iclm")  # the methods that embed every chunk
NEGATIVE_RULES = ("fixed-k", "fill")
FORMATS = ("parquet", "jsonl", "mds")
ATTENTION_SPANS = ("sample", "document")
# NExtLong builds dependencies across its meta-chunks; one attention span per source document cuts them
BLOCKED_DEPENDENCIES = ("warning: {what} with NExtLong data makes each meta-chunk its own attention span, so "
                        "no meta-chunk can attend to the one before it across its distractors: the dependency the "
                        "method builds is blocked (fine for an ablation; for training, keep one span per sample)")  # MDS `indices`: one span per long document, or per source document
K_ROUNDINGS = ("ceil", "floor")
LONG_DOCS = ("keep", "drop")
OVERFLOW = ("carry", "drop")  # standard, iclm: the rest of a document cut at L
EXECUTORS = ("local", "ray")
MINING = ("hnsw", "partitioned")  # how negatives are found above the exact-search threshold


MAX_TARGET_LENGTH = (1 << 31) - 1  # token positions (segment and span offsets) stay 32-bit

# the settings only some methods read -> those methods. Given (away from its default) with another method, one could
# not change the run: it ran in silence (--index of no folder too), and where the plan or units stage records it a
# later change refused a rerun as "other settings". `unread_setting` refuses it in one line before any work
METHOD_SETTINGS = {
    "index": EMBEDDING_METHODS, "embedder": EMBEDDING_METHODS,
    "negatives": ("nextlong",), "overshoot": ("nextlong",), "chars_per_token": ("nextlong",),
    "k_rounding": ("nextlong",), "long_docs": ("nextlong",), "max_candidates": ("nextlong",),
    "exclude_duplicates": ("nextlong",), "reproducible_index": ("nextlong",), "index_shards": ("nextlong",),
    "knn_neighbors": ("knn", "iclm"), "doc_embedding": ("knn", "iclm"),
    "quest_keywords": ("quest",), "quest_max_repeats": ("quest",), "overflow": ("standard", "iclm"),
}
PARTITIONED_SETTINGS = ("partitions", "nprobe", "neighbours", "mining_block_rows")  # read by --mining partitioned only
PYTHON_ONLY_SETTINGS = ("max_candidates", "exclude_duplicates")  # no option of the CLI: named as fields


@dataclass
class SynthesisConfig:
    """Settings of `nextlong synthesize`. Defaults are the paper's where it has one."""

    out: str
    corpus: str | None = None
    tokenizer: str | None = None  # None: cl100k_base (offline)
    target_length: int = 131072  # L, tokens
    method: str = "nextlong"
    negatives: str = "fixed-k"  # method §1.4: the paper's rule; "fill" packs to exactly L
    index: str | None = None  # reuse a prebuilt chunk index (nextlong index) instead of DIR/index
    embedder: str | None = None  # None: offline all-MiniLM-L6-v2
    chunk_size: int = 2048  # granularity s
    chunk_unit: str = "chars"  # the reference code counts characters
    seed: int = 0
    num_samples: int | None = None  # None: one long document per usable anchor
    format: str = "parquet"
    attention_spans: str = "sample"  # MDS `indices`: [0, L) per sample, or one pair per source-document run
    separator: str = "\n"  # appended after every piece (trailing side, see assemble.py)
    rebuild: bool = False
    text_field: str = "text"
    id_field: str | None = None
    on_error: str = "raise"  # bad corpus records: stop, or "skip" and count them (truncated files always stop)
    verify: bool = True  # CRC32-check the index and embeddings files before use (one read of each)
    reproducible_index: bool = False  # build the HNSW index on one thread: the same graph, hence the same output, every run
    index_shards: int = 1  # > 1: that many HNSW shards, each built on one thread, in parallel: reproducible and parallel
    # hnsw: exact search up to 50k chunks, one HNSW index above; partitioned: always neighbour lists from a
    # partitioned batch self-search (synthesis/neighbours.py), built as tasks, deterministic for a seed
    mining: str = "hnsw"
    partitions: int = 0  # --mining partitioned: k-means partitions (0: sqrt(chunks))
    nprobe: int = 32  # --mining partitioned: partitions searched per chunk
    neighbours: int = 0  # --mining partitioned: K per chunk (0: the planner's first search for 90% of anchors)
    mining_block_rows: int = 1 << 16  # --mining partitioned: chunks per task of the route and merge steps
    # --- NExtLong details (method §1.4) ---
    overshoot: float = 1.5  # w in k = (T·E·w − S)/(p·s)
    chars_per_token: float | None = None  # E; None: measured on the corpus's chunks
    k_rounding: str = "ceil"  # the formula gives a real number; ceil keeps the overshoot
    exclude_duplicates: bool = True  # skip chunks whose text hash equals an anchor chunk's or a used one's
    near_dup_threshold: float = 0.5  # skip near-copies: word 5-gram Jaccard >= this with a piece; 0 = off
    long_docs: str = "keep"  # an anchor document that alone reaches L: keep it (no negatives) or drop it
    dedup_corpus: bool = False  # drop documents that are near-copies of an earlier one (every method; counted)
    max_candidates: int = 4096  # stop widening the search beyond this many neighbours per meta-chunk
    # --- baselines (method §2) ---
    doc_embedding: str = "mean"  # knn/iclm: document vector = mean of its chunk vectors, or "first" chunk
    knn_neighbors: int = 32  # iclm graph degree; knn first search width (widened on demand)
    quest_keywords: int = 3  # quest: the key of a document is drawn among its top this-many keywords
    quest_max_repeats: int = 4  # quest: a small key group is repeated (reshuffled) at most this often
    overflow: str = "carry"  # standard, iclm: the rest of a document cut at L starts the next long document
    topics: str | None = None  # litelong: the topics file, one sample per topic (synthesis/topics.py)
    # --- execution ---
    shard_size: int = 64  # anchors (nextlong, knn) or long documents (stream baselines) per output shard
    num_threads: int | None = None
    quality_pairs: int = 2000  # random chunk pairs for the similarity baseline in the manifest
    progress: bool = True
    executor: str = "local"  # local: this process; ray: a Ray cluster (same output, byte for byte)
    ray_address: str | None = None  # --executor ray: None starts a local Ray; "auto" or an address joins one
    embed_gpus: int = 0  # --executor ray: GPUs for the embedding actors (0: CPU actors)
    embed_actors: int | None = None  # --executor ray: embedding actors (None: one per GPU, or one)

    def validate(self) -> None:
        from ..seeds import seed_problem
        from ..errors import UsageError

        def bad(msg):
            raise UsageError(msg)

        check_types(self)
        if self.target_length > MAX_TARGET_LENGTH:
            bad(f"--target-length {self.target_length} is above {MAX_TARGET_LENGTH:,} tokens (token positions are "
                "32-bit in the MDS and training formats)")
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            memory = None
        if memory and isinstance(self.shard_size, int) and self.shard_size * self.target_length * 4 > memory:
            bad(f"--target-length {self.target_length:,} x {self.shard_size} documents per output shard needs "
                f"{self.shard_size * self.target_length * 4 / 2**30:.0f} GiB to assemble a shard, more than this "
                f"machine's {memory / 2**30:.0f} GiB; lower --target-length (or shard_size)")
        if self.chars_per_token is not None and not 0.01 <= self.chars_per_token <= 1000:
            bad(f"--chars-per-token must be between 0.01 and 1000 characters per token, got {self.chars_per_token:.3g}")

        if self.method not in METHODS:
            bad(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.negatives not in NEGATIVE_RULES:
            bad(f"--negatives must be one of {', '.join(NEGATIVE_RULES)}, got {self.negatives!r}")
        if self.format not in FORMATS:
            bad(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.attention_spans not in ATTENTION_SPANS:
            bad(f"--attention-spans must be one of {', '.join(ATTENTION_SPANS)}, got {self.attention_spans!r}")
        if not 0.0 <= self.near_dup_threshold <= 1.0:
            bad(f"--near-dup-threshold must be in [0, 1] (0 or off disables), got {self.near_dup_threshold}")
        if self.dedup_corpus and self.near_dup_threshold <= 0:
            bad("--dedup-corpus needs a --near-dup-threshold above 0 (it drops documents at that word 5-gram "
                "Jaccard)")
        if self.long_docs not in LONG_DOCS:
            bad(f"--long-docs must be one of {', '.join(LONG_DOCS)}, got {self.long_docs!r}")
        if self.overflow not in OVERFLOW:
            bad(f"--overflow must be one of {', '.join(OVERFLOW)}, got {self.overflow!r}")
        if self.k_rounding not in K_ROUNDINGS:
            bad(f"k_rounding must be one of {K_ROUNDINGS}, got {self.k_rounding!r}")
        if self.chunk_unit not in ("chars", "tokens"):
            bad(f"--chunk-unit must be chars or tokens, got {self.chunk_unit!r}")
        if self.on_error not in ("raise", "skip"):
            bad(f"--on-error must be raise or skip, got {self.on_error!r}")
        if self.num_threads is not None and self.num_threads < 0:
            bad(f"--threads must be 0 (all cores) or positive, got {self.num_threads}")
        if self.method == "litelong" and self.topics is None:
            bad("--method litelong retrieves one sample per topic: give --topics FILE (one topic per line, or a "
                ".jsonl with a string field \"topic\")")
        if self.method != "litelong" and self.topics is not None:
            bad(f"--topics is LiteLong's topics file: it works with --method litelong, not {self.method}")
        if self.topics == "":  # read as the folder "." (check_types refused what is not a str)
            bad(f"--topics must name a topics file (a path), got {self.topics!r}")
        if self.quest_keywords < 1:
            bad(f"--quest-keywords must be positive, got {self.quest_keywords}")
        if self.quest_max_repeats < 1:
            bad(f"--quest-max-repeats must be positive, got {self.quest_max_repeats}")
        if self.doc_embedding not in ("mean", "first"):
            bad(f"doc_embedding must be mean or first, got {self.doc_embedding!r}")
        if self.target_length < 1:
            bad(f"--target-length must be positive, got {self.target_length}")
        if self.chunk_size < 1:
            bad(f"--chunk-size must be positive, got {self.chunk_size}")
        if self.target_length < self.min_target_length:
            unit = "tokens" if self.chunk_unit == "tokens" else f"chars, about {self.chunk_tokens_estimate} tokens"
            bad(f"--target-length {self.target_length} is shorter than one meta-chunk (--chunk-size {self.chunk_size} "
                f"{unit}): every document would be a cut-off piece of one anchor chunk, with no negative; "
                f"use --target-length {self.min_target_length} or more, or a smaller --chunk-size")
        if self.num_samples is not None and self.num_samples < 1:
            bad(f"--num-samples must be positive, got {self.num_samples}")
        if problem := seed_problem(self.seed):
            bad(f"--seed {problem}")
        if self.overshoot <= 0:
            bad(f"overshoot w must be positive, got {self.overshoot}")
        if self.shard_size < 1:
            bad(f"shard_size must be positive, got {self.shard_size}")
        if self.index_shards < 1:
            bad(f"index_shards must be positive, got {self.index_shards}")
        if self.mining not in MINING:
            bad(f"--mining must be one of {', '.join(MINING)}, got {self.mining!r}")
        if self.mining == "partitioned":
            if self.method != "nextlong":
                bad(f"--mining partitioned mines NExtLong's negatives: it works with --method nextlong, not {self.method}")
            if self.index is not None or self.reproducible_index or self.index_shards > 1:
                bad("--index, --reproducible-index and --index-shards are HNSW settings: leave them out with "
                    "--mining partitioned")
        if self.partitions < 0 or self.neighbours < 0 or self.nprobe < 1 or self.mining_block_rows < 1:
            bad(f"--partitions and --neighbours must be 0 (default) or positive, --nprobe positive; got "
                f"{self.partitions}, {self.neighbours}, {self.nprobe}")
        if self.executor not in EXECUTORS:
            bad(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.embed_gpus < 0:
            bad(f"--embed-gpus must be 0 or positive, got {self.embed_gpus}")
        if self.embed_actors is not None and self.embed_actors < 1:
            bad(f"--embed-actors must be positive, got {self.embed_actors}")
        if self.executor != "ray" and (self.ray_address is not None or self.embed_gpus or self.embed_actors):
            bad("--ray-address, --embed-gpus and --embed-actors work with --executor ray")
        if problem := unread_setting(self):
            bad(problem)
        if self.corpus is None:
            bad("no corpus: give --corpus PATH (or --demo)")

    @property
    def chunk_tokens_estimate(self) -> int:
        """A meta-chunk's length in tokens: exact for --chunk-unit tokens, else at --chars-per-token (4 when
        not given, the usual figure for English BPE; the run measures the real one later)."""
        if self.chunk_unit == "tokens":
            return self.chunk_size
        return max(1, math.ceil(self.chunk_size / (self.chars_per_token or 4.0)))

    @property
    def builds_near_copy_graph(self) -> bool:
        """The corpus's near-copy graph is built: NExtLong keeps near-copies out of its negatives, and
        --dedup-corpus (every method) drops the documents it links."""
        return self.near_dup_threshold > 0 and (self.method == "nextlong" or self.dedup_corpus)

    @property
    def min_target_length(self) -> int:
        """The shortest document that still holds a whole anchor meta-chunk."""
        return self.chunk_tokens_estimate

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def out_dir(self) -> Path:
        return Path(self.out)


def unread_setting(cfg: SynthesisConfig) -> str | None:
    """The usage error of a setting given (away from its default) with a method that does not read it, or None:
    `--index does-not-exist --method quest` ran quest in silence."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for name, methods in METHOD_SETTINGS.items():
        if cfg.method not in methods and getattr(cfg, name) != defaults[name]:
            flag = name if name in PYTHON_ONLY_SETTINGS else "--" + name.replace("_", "-")
            used = " or ".join(", ".join(methods).rsplit(", ", 1))
            return f"{flag} is not read by --method {cfg.method}: it works with --method {used} (leave it out)"
    if cfg.index is not None and (cfg.reproducible_index or cfg.index_shards > 1):
        return ("--reproducible-index and --index-shards build the HNSW index: leave them out with --index (a "
                "prebuilt index is searched as it is)")
    if cfg.mining != "partitioned" and any(getattr(cfg, n) != defaults[n] for n in PARTITIONED_SETTINGS):
        return (f"--partitions, --nprobe, --neighbours and mining_block_rows are settings of --mining partitioned: "
                f"leave them out with --mining {cfg.mining}")
    if cfg.method != "nextlong" and not cfg.dedup_corpus and cfg.near_dup_threshold != defaults["near_dup_threshold"]:
        return (f"--near-dup-threshold is not read by --method {cfg.method} without --dedup-corpus: it keeps "
                "near-copies out of NExtLong's negatives, and sets the threshold of --dedup-corpus (leave it out)")
    return None


def api_config(cls, **settings):
    """The `cls` dataclass (SynthesisConfig, AcerConfig) of a Python API call's keywords: a misspelt keyword is a
    UsageError naming it (and the setting meant), not a TypeError from the dataclass; a path may be a str or an
    os.PathLike (pathlib.Path), kept as a str; anything else where a path goes (a list, a number) is refused by
    `check_types` when the config is validated."""
    from ..errors import UsageError, close_match

    names = [f.name for f in dataclasses.fields(cls)]
    for key in settings:
        if key not in names:
            raise UsageError(f"unknown setting {key}={settings[key]!r}{close_match(key, names)}")
    return cls(**{k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in settings.items()})


def check_types(cfg) -> None:
    """Each field of the dataclass `cfg` holds its annotated type: the Python API takes what a caller passes, so a
    wrong kind ("64k" or 2048.0 for a length, None where a value is needed, "no" for a flag, which is true) fails
    here as a UsageError naming the setting, not as a TypeError deep in a stage, or as a flag silently on."""
    import typing

    from ..errors import checked_flag, checked_int, checked_number, checked_str

    hints = typing.get_type_hints(type(cfg))
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        allowed = typing.get_args(hints[field.name]) or (hints[field.name],)
        if value is None and type(None) in allowed:
            continue
        if bool in allowed:
            checked_flag(value, field.name)
        elif int in allowed:
            checked_int(value, field.name)
        elif float in allowed:
            checked_number(value, field.name)
        elif str in allowed:
            checked_str(value, field.name)
