"""A tiny random Llama and a small byte-level BPE tokenizer, built in the test session (no download)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch


def training_texts() -> list[str]:
    from nextlong.eval.haystack import NOISE_SENTENCES
    from nextlong.eval.tasks import adjectives, nouns
    from tests.helpers import corpus_texts

    texts = list(corpus_texts(max_bytes=300_000))
    texts.append(" ".join(NOISE_SENTENCES) * 20)
    texts.append(" ".join(nouns()[:2000]) + " " + " ".join(adjectives()[:1000]))
    texts.append("0123456789 abcdef - VAR = { } : \" , . Key: Corresponding value: special magic numbers uuid")
    return texts


@functools.lru_cache(maxsize=None)
def _trained_json(vocab_size: int) -> str:
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(training_texts(), trainer=trainer)
    return tok.to_str()


def train_tokenizer(path: Path, vocab_size: int = 1024) -> Path:
    """A GPT-2 style byte-level BPE trained with HF tokenizers' trainer (once per process); saved as
    tokenizer.json at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_trained_json(vocab_size))
    return path


def save_tiny_llama(folder: Path, tokenizer_json: Path, *, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    hidden: int = 64, max_positions: int = 4096, init: float = 0.02, seed: int = 0,
                    run_layout: bool = False) -> Path:
    """A random LlamaForCausalLM saved with save_pretrained. `run_layout` writes a `nextlong train`
    run folder (RUN/model/ + nextlong.json naming the tokenizer file) instead of a plain HF folder."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = json.loads(Path(tokenizer_json).read_text())["model"]["vocab"]
    cfg = LlamaConfig(vocab_size=len(vocab) + 1, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=max_positions, initializer_range=init, eos_token_id=0,
                      bos_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    target = folder / "model" if run_layout else folder
    model.save_pretrained(target)
    if run_layout:
        shutil.copy(tokenizer_json, target / "tok.json")
        (target / "nextlong.json").write_text(json.dumps({"tokenizer": "tok.json"}))
    else:
        shutil.copy(tokenizer_json, target / "tokenizer.json")
    return folder


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread while a test runs: the CI machine is shared, and tiny models run fastest and
    steadiest that way. Autouse in every module that imports it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class CopyModel(torch.nn.Module):
    """Predicts the token `period` positions back (an induction head by construction): with the long
    context it is nearly sure of every token of a periodic document after the first period; a window
    shorter than the period sees nothing to copy and gives the uniform distribution. So most tokens are
    key tokens and the long-context gain is about log(vocab) per far token, except at injected noise."""

    def __init__(self, vocab: int, period: int, sharpness: float = 8.0):
        super().__init__()
        self.vocab, self.period = vocab, period
        self.head = torch.nn.Linear(vocab, vocab, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(sharpness * torch.eye(vocab))
        self.config = SimpleNamespace(_attn_implementation="eager", final_logit_softcapping=None)

    def get_output_embeddings(self):
        return self.head

    def get_decoder(self):
        def decoder(input_ids):
            hidden = torch.zeros(*input_ids.shape, self.vocab)
            p = self.period  # position t predicts token t + 1, whose copy sits at t + 1 - p
            if input_ids.shape[1] >= p:
                hidden[:, p - 1:] = torch.nn.functional.one_hot(input_ids[:, :input_ids.shape[1] - p + 1],
                                                                self.vocab).float()
            return SimpleNamespace(last_hidden_state=hidden)
        return decoder


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """The trained test tokenizer, loaded by nextlong."""
    from nextlong.corpus.tokenizer import Tokenizer

    return Tokenizer.from_file(train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json"))


@pytest.fixture(scope="module")
def essay():
    """Essay sentences from 200 KB of the test corpus: the haystack of the needle tasks."""
    from nextlong.eval.haystack import essay_sentences
    from tests.helpers import corpus_texts

    return essay_sentences(corpus_texts(max_bytes=200_000))


def sliding_window_model(kind: str, vocab: int):
    """A tiny random model whose attention slides over 8 tokens: Mistral (every layer), Qwen2 (one of two layers) or
    Gemma 2 (local and global layers alternate)."""
    import transformers

    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=2048, eos_token_id=0, bos_token_id=0,
                  pad_token_id=0)
    if kind == "mistral":  # every layer slides
        cfg = transformers.MistralConfig(sliding_window=8, **common)
        cls = transformers.MistralForCausalLM
    elif kind == "qwen2":  # one full layer, one sliding layer
        cfg = transformers.Qwen2Config(use_sliding_window=True, sliding_window=8, max_window_layers=1, **common)
        cls = transformers.Qwen2ForCausalLM
    else:  # Gemma 2: local and global layers alternate
        cfg = transformers.Gemma2Config(sliding_window=8, head_dim=16, query_pre_attn_scalar=16,
                                        attn_logit_softcapping=None, **common)  # SDPA takes no soft-cap
        cls = transformers.Gemma2ForCausalLM
    torch.manual_seed(0)
    model = cls(cfg).eval()
    with torch.no_grad():  # larger weights than the default init: varied logits, so greedy ties cannot occur
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model


def multimodal_gemma3(vocab: int, positions: int):
    """A tiny random Gemma 3 with its vision tower (Gemma3ForConditionalGeneration): its config names the positions
    only in `text_config`, as the released Gemma 3 checkpoints' do."""
    import transformers

    cfg = transformers.Gemma3Config(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=positions,
                         sliding_window=64, eos_token_id=0, bos_token_id=0, pad_token_id=0),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14), mm_tokens_per_image=4)
    torch.manual_seed(0)
    model = transformers.Gemma3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # varied logits, so greedy ties cannot occur
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model
