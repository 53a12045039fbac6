"""The short-context LM of ACER: one model that scores passages (ranker), answers (reader) and, with
--generate-questions, writes questions. Loaded only through nextlong.model_folder (no code from the
folder runs without --trust-remote-code; weights are read safely).

Two operations, both on token ids (the prompts are built by nextlong/acer/templates.py):

* `option_probs(prompts, options)`: for each prompt, the next-token probabilities of the option tokens,
  renormalised over the options (a multiple-choice answer: P(A) / (P(A) + P(B))). One forward per batch,
  logits of the last position only.
* `generate(prompts, max_new_tokens, stop)`: greedy decoding with a KV cache, batched, until an
  end-of-text id, the `stop` text after some generated text, or the budget. It starts with visible
  text: ids that write only whitespace (or end the text) are skipped until a row has written some.

Batches are left-padded with explicit position ids (each row sees exactly its own tokens at positions
0, 1, ...) and sorted by length to pad little. A row's result is the same as alone up to float rounding
(tests/test_acer.py checks it); the batch size is therefore an execution option, not a setting.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import UsageError
from ...model_folder import ModelFolderError

_LOADED: dict = {}  # (folder, device, dtype, trust) -> LM: the ranker and the reader share one copy


@dataclass
class ModelInfo:
    """What the checks before work need, read from config.json without loading weights."""

    folder: Path
    tokenizer_spec: str
    max_positions: int | None
    vocab_size: int
    eos_ids: tuple[int, ...]
    model_type: str


def inspect_model(path, *, trust_remote_code: bool = False) -> ModelInfo:
    """Refuse a folder that is not a causal LM (or has no tokenizer, or unreadable weights) in one line."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from ...eval.model import max_positions_of, resolve_model_folder
    from ...model_folder import _check_weight_files, read_config

    folder, spec = resolve_model_folder(path)
    config = read_config(folder, trust_remote_code=trust_remote_code)
    model_type = getattr(config, "model_type", None)
    custom = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    architectures = list(getattr(config, "architectures", None) or [])
    if getattr(config, "is_encoder_decoder", False) or (model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                                                        and not custom):
        raise ModelFolderError(f"{folder}: not a causal LM (model type {model_type!r}): ACER's ranker and reader "
                               "are a decoder-only language model")
    if architectures and not custom and not any(a in causal_classes or a.endswith(("ForCausalLM", "LMHeadModel"))
                                                for a in architectures):
        raise ModelFolderError(f"{folder}: not a causal LM: config.json's architectures are {', '.join(architectures)}")
    _check_weight_files(folder)
    eos = getattr(config, "eos_token_id", None)
    eos_ids = (tuple(int(e) for e in eos) if isinstance(eos, (list, tuple))
               else (int(eos),) if isinstance(eos, int) else ())
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    bad = [e for e in eos_ids if e < 0 or (vocab and e >= vocab)]
    if bad:  # it would end every answer with an id outside the vocabulary
        raise ModelFolderError(f"{folder}: config.json's eos_token_id {bad[0]} is not a token id of the model "
                               f"(0..{vocab - 1})" if vocab else f"{folder}: config.json's eos_token_id {bad[0]} is negative")
    return ModelInfo(folder, spec, max_positions_of(config, folder), vocab, eos_ids, str(model_type))


class LM:
    """A loaded causal LM with its tokenizer (nextlong's native one: the exact ids of the folder's file)."""

    def __init__(self, model, tokenizer, info: ModelInfo, device: str, dtype):
        self.model, self.tokenizer, self.info, self.device, self.dtype = model, tokenizer, info, device, dtype
        self._blank = None  # _blank_ids, once per vocabulary size
        params = set(inspect.signature(model.forward).parameters)
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return self.info.eos_ids

    # --- one batched forward ------------------------------------------------------------------

    def _forward(self, ids, mask, positions, cache=None):
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "use_cache": True}
        if cache is not None:
            kwargs[self._cache_kw] = cache
        if self._keep_kw is not None:
            kwargs[self._keep_kw] = 1
        out = self.model(**kwargs)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        return out.logits[:, -1].float(), new_cache

    def _left_padded(self, prompts):
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):
            if len(p):
                ids[r, width - len(p):] = torch.as_tensor(np.asarray(p, np.int64))
                mask[r, width - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def _check_length(self, n: int, extra: int = 0) -> None:
        limit = self.info.max_positions
        if limit is not None and n + extra > limit:
            raise UsageError(f"a prompt of {n} tokens (+{extra} to generate) is beyond the model's {limit} positions")

    @staticmethod
    def _batches(prompts, batch_size: int):
        order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
        for lo in range(0, len(order), batch_size):
            yield order[lo:lo + batch_size]

    # --- scoring --------------------------------------------------------------------------------

    def option_probs(self, prompts, options, *, batch_size: int = 16, on_done=None) -> np.ndarray:
        """(len(prompts), len(options)) float64: softmax of the next-token logits restricted to the
        option ids (each row sums to 1). `on_done(n)` is called as rows finish."""
        import torch

        out = np.zeros((len(prompts), len(options)), np.float64)
        opts = torch.as_tensor(list(options), dtype=torch.long)
        with torch.inference_mode():
            for rows in self._batches(prompts, batch_size):
                batch = [prompts[r] for r in rows]
                self._check_length(max(len(p) for p in batch))
                ids, mask, positions = self._left_padded(batch)
                logits, _ = self._forward(ids, mask, positions)
                logp = logits.log_softmax(-1).cpu()[:, opts].double()
                out[rows] = logp.softmax(-1).numpy()
                if on_done is not None:
                    on_done(len(rows))
        return out

    # --- generation -----------------------------------------------------------------------------

    def generate(self, prompts, max_new_tokens: int, *, stop: str | None = "\n", batch_size: int = 16,
                 on_done=None) -> list[tuple[str, int]]:
        """Greedy continuations: (text, generated token count) per prompt. The text ends before the end-of-
        text id or before `stop` once some non-space text came (the stop text itself is not kept)."""
        import torch

        from ...eval.model import decode

        results: list = [None] * len(prompts)
        eos = set(self.eos_ids)
        with torch.inference_mode():
            for rows in self._batches(prompts, batch_size):
                batch = [prompts[r] for r in rows]
                self._check_length(max(len(p) for p in batch), max_new_tokens)
                ids, mask, positions = self._left_padded(batch)
                logits, cache = self._forward(ids, mask, positions)
                generated = [[] for _ in rows]
                texts = [None] * len(rows)
                blank_rows = [True] * len(rows)  # no visible text yet
                for step in range(max_new_tokens):
                    if any(blank_rows):  # a continuation starts with visible text (not whitespace, not the end)
                        skip = torch.tensor(blank_rows, device=logits.device)[:, None]
                        logits = torch.where(skip & self._blank_ids(logits.shape[-1], logits.device),
                                             torch.finfo(logits.dtype).min, logits)
                    nxt = logits.argmax(-1).cpu().tolist()
                    for r, tok in enumerate(nxt):
                        if texts[r] is not None:
                            continue
                        if tok in eos:
                            texts[r] = decode(self.tokenizer, generated[r])
                            continue
                        generated[r].append(tok)
                        text = decode(self.tokenizer, generated[r])
                        blank_rows[r] = not text.strip()
                        cut = _stop_at(text, stop)
                        if cut is not None:
                            texts[r] = text[:cut]
                    if all(t is not None for t in texts) or step == max_new_tokens - 1:
                        break
                    mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=mask.device)], 1)
                    positions = positions[:, -1:] + 1
                    step_ids = torch.as_tensor(nxt, dtype=torch.long, device=ids.device)[:, None]
                    logits, cache = self._forward(step_ids, mask, positions, cache)
                for r, row in enumerate(rows):
                    text = texts[r] if texts[r] is not None else decode(self.tokenizer, generated[r])
                    results[row] = (text, len(generated[r]))
                if on_done is not None:
                    on_done(len(rows))
        return results

    def _blank_ids(self, vocab: int, device):
        """(vocab,) bool: the ids that write no visible character (whitespace only, nothing, an end-of-text
        id). Greedy decoding skips them until a row has written some text, as HF's min_new_tokens skips
        the end: a barely trained model (the README's demo) would otherwise write only newlines, and
        every question and answer would be empty."""
        import torch

        if self._blank is None or self._blank.numel() != vocab:
            blank = [False] * vocab
            for i in range(vocab):
                try:
                    blank[i] = not self.tokenizer.decode_bytes([i]).strip()
                except ValueError:  # an id the tokenizer lacks (a padded vocabulary): shown as U+FFFD
                    pass
            for e in self.eos_ids:
                if 0 <= e < vocab:
                    blank[e] = True
            self._blank = torch.tensor(blank, dtype=torch.bool, device=device)
        return self._blank


def _stop_at(text: str, stop: str | None) -> int | None:
    """Where `text` is cut: the first `stop` after the leading whitespace, or None."""
    if not stop:
        return None
    lead = len(text) - len(text.lstrip())
    at = text.find(stop, lead)
    return None if at < 0 else at


def load_lm(path, *, device: str | None = None, dtype: str | None = None, trust_remote_code: bool = False) -> LM:
    """The LM of `path` on `device` (default cuda when available) in `dtype` (default bfloat16 on CUDA,
    float32 on CPU), loaded once per process (the ranker and reader stages share it)."""
    import torch

    from ...model_folder import load_causal_lm, read_config
    from ...corpus.tokenizer import load_tokenizer

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    if dtype is None:
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    from ..framework import corpus_identity

    info = inspect_model(path, trust_remote_code=trust_remote_code)
    key = (corpus_identity(info.folder)["hash"], str(info.folder.resolve()), device, dtype, trust_remote_code)
    if key in _LOADED:
        return _LOADED[key]
    config = read_config(info.folder, trust_remote_code=trust_remote_code)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    model = load_causal_lm(info.folder, config, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                           attn_implementation="sdpa")
    model.to(device).eval()
    tokenizer = load_tokenizer(info.tokenizer_spec)
    if info.vocab_size and tokenizer.vocab_size > info.vocab_size:
        raise ModelFolderError(f"{info.folder}: the tokenizer ({info.tokenizer_spec}) has {tokenizer.vocab_size} ids "
                               f"but the model's vocabulary only {info.vocab_size}; wrong tokenizer?")
    _LOADED.clear()  # one model at a time
    _LOADED[key] = lm = LM(model, tokenizer, info, device, dtype)
    return lm
