"""The short-context LM of ACER: one model that scores passages (ranker), answers (reader) and, with
--generate-questions, writes questions. Loaded only through nextlong.model_folder (no code from the
folder runs without --trust-remote-code; weights are read safely).

Two operations, both on token ids (the prompts are built by nextlong/acer/templates.py):

* `option_probs(prompts, options)`: for each prompt, the next-token probabilities of the option tokens,
  renormalised over the options (a multiple-choice answer: P(A) / (P(A) + P(B))). One forward per batch,
  logits of the last position only.
* `generate(prompts, max_new_tokens, stop, stop_after)`: greedy decoding with a KV cache, batched, until
  an end-of-text id, the `stop` text after some generated text (with `stop_after`: only after that
  marker and some text after it), or the budget. Each row says how it ended (`Generation.end`), so a
  caller can tell an answer cut by the budget from a finished one. Not plain greedy at the start: while
  a row has written no visible character, the ids that write only whitespace (or nothing) and the
  end-of-text ids are masked out (`_blank_ids`); `Generation.start_masked` says when that changed the
  token chosen.

Batches are left-padded with explicit position ids (each row sees exactly its own tokens at positions
0, 1, ...) and sorted by length to pad little. A row's result is the same as alone up to float rounding
(tests/test_acer.py checks it); the batch size is therefore an execution option, not a setting.
"""

from __future__ import annotations

import codecs
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ...errors import UsageError
from ...model_folder import ModelFolderError

_LOADED: dict = {}  # (folder, device, dtype, trust) -> LM: the ranker and the reader share one copy


@dataclass
class ModelInfo:
    """What the checks before work need, read from config.json and generation_config.json without loading
    weights."""

    folder: Path
    tokenizer_spec: str
    max_positions: int | None
    vocab_size: int
    eos_ids: tuple[int, ...]  # every id that ends a generation: config.json's, then generation_config.json's
    model_type: str
    config_eos_ids: tuple[int, ...] = ()  # config.json's eos_token_id (its first ends the samples' answers)
    generation_eos_ids: tuple[int, ...] = ()  # generation_config.json's eos_token_id


def inspect_model(path, *, trust_remote_code: bool = False) -> ModelInfo:
    """Refuse a folder that is not a causal LM (or has no tokenizer, or unreadable weights) in one line."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from ...model_folder import check_weight_files, end_of_text_ids, max_positions_of, read_config, resolve_model_folder

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
    check_weight_files(folder, config)  # and their shapes: only the LM's load, after the index, would say it
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    config_eos, generation_eos = end_of_text_ids(folder, config, vocab)
    eos_ids = tuple(dict.fromkeys(config_eos + generation_eos))  # the union: generate() stops at either
    return ModelInfo(folder, spec, max_positions_of(config, folder), vocab, eos_ids, str(model_type),
                     config_eos, generation_eos)


class Generation(NamedTuple):
    """One row of `LM.generate`."""

    text: str  # the continuation, before the end-of-text id or the stop text (not stripped)
    tokens: int  # ids generated, the end-of-text id not counted
    end: str  # "eos" (an end-of-text id), "stop" (the stop rule) or "budget" (max_new_tokens ids, no end)
    start_masked: bool  # the blank-start mask changed a token greedy decoding would have chosen

    @property
    def cut(self) -> bool:
        """The budget ended it: the text may stop mid-sentence (a budget cut inside a character is left out)."""
        return self.end == "budget"


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
        """Ids, attention mask and positions of a batch, each prompt after the tokenizer's prefix ids (Llama-3's
        BOS: the model was trained with its prompts starting there; none for most tokenizers)."""
        import torch

        prefix = list(self.tokenizer.prefix_ids)
        prompts = [prefix + [int(i) for i in p] for p in prompts] if prefix else prompts
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
        n += len(self.tokenizer.prefix_ids)
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

    def generate(self, prompts, max_new_tokens: int, *, stop: str | None = "\n", stop_after: str | None = None,
                 batch_size: int = 16, on_done=None) -> list[Generation]:
        """Greedy continuations, one `Generation` per prompt. The text ends before the end-of-text id, or
        before `stop` once some non-space text came (the stop text itself is not kept); with `stop_after`
        (a marker such as "So the answer is:", found case-insensitively), `stop` counts only after the
        marker and some non-space text after it, so nothing before the marker can end the text. A row
        that reaches `max_new_tokens` ids without either ends by the budget (`end` "budget"); its text
        leaves out an incomplete character at the end (the budget cut a multi-byte character)."""
        import torch

        from ...eval.model import decode

        results: list = [None] * len(prompts)
        eos = set(self.eos_ids)
        after = re.compile(re.escape(stop_after), re.IGNORECASE) if stop_after else None
        with torch.inference_mode():
            for rows in self._batches(prompts, batch_size):
                batch = [prompts[r] for r in rows]
                self._check_length(max(len(p) for p in batch), max_new_tokens)
                ids, mask, positions = self._left_padded(batch)
                logits, cache = self._forward(ids, mask, positions)
                generated = [[] for _ in rows]
                texts = [None] * len(rows)
                ends = ["budget"] * len(rows)
                blank_rows = [True] * len(rows)  # no visible text yet
                masked = [False] * len(rows)
                for step in range(max_new_tokens):
                    raw = None
                    if any(blank_rows):  # a continuation starts with visible text (not whitespace, not the end)
                        raw = logits.argmax(-1).cpu().tolist()
                        skip = torch.tensor(blank_rows, device=logits.device)[:, None]
                        logits = torch.where(skip & self._blank_ids(logits.shape[-1], logits.device),
                                             torch.finfo(logits.dtype).min, logits)
                    nxt = logits.argmax(-1).cpu().tolist()
                    for r, tok in enumerate(nxt):
                        if texts[r] is not None:
                            continue
                        if raw is not None and blank_rows[r] and raw[r] != tok:
                            masked[r] = True
                        if tok in eos:
                            texts[r], ends[r] = decode(self.tokenizer, generated[r]), "eos"
                            continue
                        generated[r].append(tok)
                        text = decode(self.tokenizer, generated[r])
                        blank_rows[r] = not text.strip()
                        cut = _stop_at(text, stop, after)
                        if cut is not None:
                            texts[r], ends[r] = text[:cut], "stop"
                    if all(t is not None for t in texts) or step == max_new_tokens - 1:
                        break
                    mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=mask.device)], 1)
                    positions = positions[:, -1:] + 1
                    step_ids = torch.as_tensor(nxt, dtype=torch.long, device=ids.device)[:, None]
                    logits, cache = self._forward(step_ids, mask, positions, cache)
                for r, row in enumerate(rows):
                    text = texts[r] if texts[r] is not None else _decode_whole_characters(self.tokenizer, generated[r])
                    results[row] = Generation(text, len(generated[r]), ends[r], masked[r])
                if on_done is not None:
                    on_done(len(rows))
        return results

    def _blank_ids(self, vocab: int, device):
        """(vocab,) bool: the ids that write no visible character (their bytes are whitespace only or
        nothing: str.strip() leaves no text) and the model's end-of-text ids. Greedy decoding masks them
        while a row has written no visible character (so, in practice, at its first token only), as HF's
        min_new_tokens masks the end: a barely trained model (the README's demo) would otherwise write
        only newlines or stop at once, and every question and answer would be empty."""
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


def _stop_at(text: str, stop: str | None, after: re.Pattern | None = None) -> int | None:
    """Where `text` is cut: the first `stop` after the leading whitespace, or None. With `after`, the
    first `stop` after the first match of `after` and the whitespace that follows it (None before it)."""
    if not stop:
        return None
    start = 0
    if after is not None:
        m = after.search(text)
        if m is None:
            return None
        start = m.end()
    rest = text[start:]
    at = text.find(stop, start + len(rest) - len(rest.lstrip()))
    return None if at < 0 else at


def _decode_whole_characters(tokenizer, ids) -> str:
    """Text of generated ids, leaving out an incomplete UTF-8 sequence at the end (ids the tokenizer lacks
    become U+FFFD, as eval.model.decode): a budget that cuts a character's bytes leaves no U+FFFD."""
    from ...eval.model import generated_bytes

    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(generated_bytes(tokenizer, ids),
                                                                         final=False)


def check_device(device: str | None, *, here: bool = True) -> None:
    """--device checked before any work (the LM loads only when the first LM stage starts, after chunking,
    embedding and the index): a string torch cannot parse is one line, not torch's traceback; with `here`
    (the local executor: the LM runs in this process), also a device this machine lacks. On Ray the actors'
    machines hold the devices, so only the spelling is checked."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise UsageError(f"--device {device!r} is not a torch device ({reason}); use cpu, cuda or cuda:N") from None
    if not here or parsed.type == "cpu":
        return
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return
    try:  # another backend (mps, xpu, ...): usable when a tensor can be made on it
        torch.empty(0, device=parsed)
    except (RuntimeError, ValueError, AssertionError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise UsageError(f"--device {device}: not usable on this machine ({reason})") from None


def check_vocabulary(info: ModelInfo, tokenizer) -> None:
    """The model's tokenizer has no more ids than its vocabulary (else it is another model's tokenizer, and an id
    beyond the embedding would fail the first forward). pipeline.check_before_work calls it before any work."""
    if info.vocab_size and tokenizer.vocab_size > info.vocab_size:
        raise ModelFolderError(f"{info.folder}: the tokenizer ({info.tokenizer_spec}) has {tokenizer.vocab_size} ids "
                               f"but the model's vocabulary only {info.vocab_size}; wrong tokenizer?")


def resolved_dtype(dtype: str | None, device: str | None, cuda: bool) -> str:
    """The weights dtype the LM runs in: `dtype`, else bfloat16 on CUDA (`device` cuda..., or no device where the
    LM's process has CUDA: `cuda`) and float32 elsewhere, as load_lm resolves it."""
    if dtype is not None:
        return dtype
    on_cuda = device.startswith("cuda") if device is not None else cuda
    return "bfloat16" if on_cuda else "float32"


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
    dtype = resolved_dtype(dtype, device, cuda=False)
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
    check_vocabulary(info, tokenizer)
    _LOADED.clear()  # one model at a time
    _LOADED[key] = lm = LM(model, tokenizer, info, device, dtype)
    return lm
