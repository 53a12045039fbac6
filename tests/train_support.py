"""Shared by the training tests (no tests here): small synthesized data sets, made once per process.

A byte-level BPE of 1,024 ids is trained on the shipped docstring snapshot (HF tokenizers), so the
`tiny` preset's output layer stays small and a step takes milliseconds; `nextlong synthesize` then
builds long documents with it (standard concatenation, and NExtLong with the hashed TF-IDF embedder).
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

SAMPLE_LEN = 256


@lru_cache(maxsize=1)
def base_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="nextlong-train-tests-"))
    atexit.register(shutil.rmtree, path, True)  # made once per test process, removed when it ends
    return path


@lru_cache(maxsize=1)
def corpus_and_tokenizer() -> tuple[Path, Path]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from tests.helpers import corpus_head

    docs = corpus_head(max_bytes=200_000)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([text for _, text in docs], trainer)
    tok_path = base_dir() / "tok1k.json"
    tok.save(str(tok_path))
    corpus = base_dir() / "corpus.jsonl"
    with open(corpus, "w") as f:
        for doc_id, text in docs:
            f.write(json.dumps({"id": str(doc_id), "text": text}) + "\n")
    return corpus, tok_path


@lru_cache(maxsize=8)
def synthesized(method: str = "standard", fmt: str = "parquet", target_length: int = SAMPLE_LEN) -> Path:
    """A `nextlong synthesize` output folder made with the 1K-vocabulary tokenizer."""
    from nextlong import synthesize

    corpus, tok = corpus_and_tokenizer()
    out = base_dir() / f"syn-{method}-{fmt}-{target_length}"
    extra = {"embedder": "hashed-tfidf:128", "num_samples": 12} if method == "nextlong" else {}
    synthesize(corpus, out, method=method, tokenizer=str(tok), target_length=target_length, chunk_size=256,
               progress=False, format=fmt, **extra)
    return out


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line]


def set_up_trainer(**settings):
    """A Trainer of TrainConfig(**settings), set up in this process (one rank) with its first batches read:
    for tests that look at one step's pieces (token weights, the loss) without running the loop."""
    from nextlong.train.config import TrainConfig
    from nextlong.train.distributed import init_distributed
    from nextlong.train.trainer import Trainer

    trainer = Trainer(TrainConfig(**settings).validate())
    trainer.rank, trainer.world, trainer.local_world, trainer.device = init_distributed()
    trainer.setup()
    return trainer


def dropout_model(folder: Path) -> Path:
    """A one-layer Llama folder whose config sets attention_dropout 0.5 (what our attention refuses)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    LlamaForCausalLM(LlamaConfig(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, attention_dropout=0.5,
                                 tie_word_embeddings=True)).save_pretrained(folder)
    return folder
