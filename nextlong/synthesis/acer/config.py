"""Every setting of an ACER run in one dataclass (method: docs/acer.md; spec §6).

Where the paper (Gao, Zhang, Callan 2024) gives no number, the default is ours and docs/acer.md says
why; each is a parameter so that the ablations reviewers asked for (chunk size, context length, order)
are one flag away. Each stage takes the settings it depends on as its own dataclass fields
(nextlong/acer/stages.py), so a cached stage built with other settings is detected, not reused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..config import check_types

RETRIEVERS = ("embedding", "bm25")
RANKERS = ("model", "embedding", "bm25")
ORDERS = ("shuffled", "retrieval")
FILTERS = ("none", "answer-match")
FORMATS = ("parquet", "jsonl", "mds")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class AcerConfig:
    """Settings of `nextlong acer`. `questions` (a JSONL file) or `generate_questions` (N questions the
    model writes about random corpus chunks) says where the questions come from."""

    out: str
    corpus: str | None = None
    model: str | None = None  # a causal-LM folder or a `nextlong train` run: ranker, reader, question writer
    questions: str | None = None  # JSONL: question, optional answer (string or list) / answers, optional id
    generate_questions: int | None = None
    target_length: int = 32768  # most tokens per sample (chunks + question + answer)
    chunk_tokens: int = 256  # retrieval unit, in tokens of the sample tokenizer
    retrieve: int = 200  # chunks retrieved per question (the lossy first stage)
    read: int = 8  # top-ranked chunks the reader sees (must fit the model's own context)
    retriever: str | None = None  # embedding | bm25; None: bm25 for --ranker bm25, else embedding
    ranker: str = "model"  # model: the LM's multiple-choice score; embedding | bm25: the retriever's score
    order: str = "shuffled"  # chunk order in the sample: seeded shuffle, or retrieval rank
    filter: str = "none"  # answer-match: keep samples whose answer contains a gold answer
    max_new_tokens: int = 256  # reader's generation budget
    keep_cut_answers: bool = False  # keep answers the budget cut (without the end-of-text id); default: drop them
    question_max_new_tokens: int = 64  # --generate-questions: budget of one question
    chain_of_thought: bool = False  # the reader says what helps before answering (read_cot.txt)
    seed: int = 0
    embedder: str | None = None  # None: offline all-MiniLM-L6-v2 (as synthesize)
    query_prefix: str = ""  # before each question, for the embedder only (BGE / E5 query instructions)
    tokenizer: str | None = None  # None: the model folder's tokenizer (the model trained on the data is that LM)
    separator: str = "\n\n"  # after every chunk of a sample
    format: str = "parquet"
    prompts: str | None = None  # a folder whose rank.txt / read.txt / ... replace the shipped templates
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    text_field: str = "text"
    id_field: str | None = None
    on_error: str = "raise"
    # --- execution (change no output beyond float rounding; the LM stages record the dtype they resolve to) ---
    batch_size: int = 16  # prompts per LM forward
    block_questions: int = 64  # questions per block (the unit of resume); fixed by a folder's first run
    device: str | None = None  # None: cuda when available, else cpu
    dtype: str | None = None  # None: bfloat16 on CUDA, float32 on CPU
    trust_remote_code: bool = False
    num_threads: int | None = None
    executor: str = "local"  # local: this process; ray: a Ray cluster (same bytes)
    ray_address: str | None = None  # --executor ray: None starts a local Ray; "auto" or an address joins one
    gpus: int = 0  # --executor ray: GPUs for the actors of the GPU stages (embed; ask, rank, read)
    actors: int | None = None  # --executor ray: actors of the GPU stages (None: one per GPU, or one)
    rebuild: bool = False
    progress: bool = True

    @property
    def retriever_used(self) -> str:
        if self.retriever is not None:
            return self.retriever
        return "bm25" if self.ranker == "bm25" else "embedding"

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        from ...seeds import seed_problem
        from ...errors import UsageError

        def bad(msg):
            raise UsageError(msg)

        check_types(self)
        for name, value, choices in (("--retriever", self.retriever, (None,) + RETRIEVERS),
                                     ("--ranker", self.ranker, RANKERS), ("--order", self.order, ORDERS),
                                     ("--filter", self.filter, FILTERS), ("--format", self.format, FORMATS),
                                     ("--dtype", self.dtype, (None,) + DTYPES)):
            if value not in choices:
                bad(f"{name} must be one of {', '.join(c for c in choices if c)}, got {value!r}")
        if self.ranker != "model" and self.retriever is not None and self.retriever != self.ranker:
            bad(f"--ranker {self.ranker} ranks by the {self.ranker} retriever's score: it cannot follow --retriever "
                f"{self.retriever} (leave --retriever out, or use --ranker model)")
        if self.corpus is None:
            bad("no corpus: give --corpus PATH")
        if self.model is None:
            bad("no model: give --model, a causal-LM folder (the ranker and reader)")
        if (self.questions is None) == (self.generate_questions is None):
            bad("give exactly one of --questions FILE.jsonl and --generate-questions N")
        for name, value in (("--target-length", self.target_length), ("--chunk-tokens", self.chunk_tokens),
                            ("--retrieve", self.retrieve), ("--read", self.read),
                            ("--max-new-tokens", self.max_new_tokens),
                            ("--question-max-new-tokens", self.question_max_new_tokens),
                            ("--batch-size", self.batch_size), ("block_questions", self.block_questions)):
            if not isinstance(value, int) or value < 1:
                bad(f"{name} must be a positive integer, got {value!r}")
        if problem := seed_problem(self.seed):
            bad(f"--seed {problem}")
        if self.generate_questions is not None and self.generate_questions < 1:
            bad(f"--generate-questions must be positive, got {self.generate_questions}")
        if self.read > self.retrieve:
            bad(f"--read {self.read} is more than --retrieve {self.retrieve}: the reader reads the top of the "
                "retrieved chunks")
        if not isinstance(self.query_prefix, str):
            bad(f"--query-prefix must be a string, got {self.query_prefix!r}")
        if self.query_prefix and self.retriever_used != "embedding":
            bad("--query-prefix is put before each question for the embedder: it has no effect with --retriever "
                f"{self.retriever_used}")
        if self.bm25_k1 < 0 or not 0 <= self.bm25_b <= 1:
            bad(f"BM25 needs k1 >= 0 and b in [0, 1], got k1={self.bm25_k1}, b={self.bm25_b}")
        if self.on_error not in ("raise", "skip"):
            bad(f"--on-error must be raise or skip, got {self.on_error!r}")
        if self.executor not in ("local", "ray"):
            bad(f"--executor must be local or ray, got {self.executor!r}")
        if self.executor != "ray" and (self.ray_address is not None or self.gpus or self.actors):
            bad("--ray-address, --gpus and --actors work with --executor ray")
        if self.gpus < 0 or (self.actors is not None and self.actors < 1):
            bad(f"--gpus must be 0 or more and --actors positive, got {self.gpus} and {self.actors}")
        if self.num_threads is not None and self.num_threads < 0:
            bad(f"--threads must be 0 (all cores) or positive, got {self.num_threads}")
