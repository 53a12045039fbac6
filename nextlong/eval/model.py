"""Find and load the model to evaluate: a Hugging Face causal-LM folder or a `nextlong train` run.

MODEL is either a folder with `config.json` and weights (`save_pretrained`), or a run folder RUN
holding `RUN/model/` in that layout plus `RUN/model/nextlong.json` = {"tokenizer": SPEC}, where SPEC
is a built-in tokenizer name ("cl100k_base") or a file in RUN/model (nothing outside the folder: it is
untrusted input, nextlong.model_folder.tokenizer_spec). Without nextlong.json the folder's
`tokenizer.json` is used. Our own
tokenizer counts and encodes every prompt, so lengths are the model's tokens. Text is read as ordinary text
(`prompt_ids`): a special token's string in a corpus ("<|endoftext|>") is its bytes, as counted, and only the
ids the code adds on purpose (the tokenizer's prefix, Llama-3's BOS) are special.

Prefill runs with our attention kernel (`attn="nextlong"`, `nextlong.kernels.transformers_attention`),
PyTorch SDPA or transformers' eager attention; decoding steps always use SDPA (or eager where
attention weights are needed), since a kernel for training and prefill does not take a KV cache.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from .options import ATTENTION
from ..model_folder import (ModelFolderError, end_of_text_ids, folder_identity, load_causal_lm, max_positions_of,  # noqa: F401  (importable from here)
                            read_config, resolve_model_folder, text_config)



@dataclass
class LoadedModel:
    model: object          # transformers PreTrainedModel, eval mode
    tokenizer: object      # nextlong.Tokenizer
    folder: Path
    tokenizer_spec: str
    max_positions: int | None
    prefill_attn: str
    eos_ids: tuple[int, ...]
    # what a resume journal keys results on besides the settings: the folder's files (other weights saved into
    # it give other numbers), and the dtype and device the weights run in
    identity: dict = field(default_factory=dict)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def num_layers(self) -> int:  # of the text model: a multimodal config (Gemma 3's) nests them in text_config
        return int(text_config(self.model.config).num_hidden_layers)

    @property
    def num_heads(self) -> int:
        return int(text_config(self.model.config).num_attention_heads)


def load_model(path, *, attn: str = "auto", device: str | None = None, dtype: str | None = None,
               trust_remote_code: bool = False) -> LoadedModel:
    """Load MODEL for evaluation (eval mode, no gradients). `attn` picks the prefill attention; the
    folder's own Python code runs only with `trust_remote_code` (nextlong.model_folder)."""
    if attn not in ATTENTION:
        raise UsageError(f"--attn must be one of {', '.join(ATTENTION)}, got {attn!r}")
    import torch

    from ..corpus.tokenizer import load_tokenizer

    folder, spec = resolve_model_folder(path)
    config = read_config(folder, trust_remote_code=trust_remote_code)
    max_positions = max_positions_of(config, folder)
    tokenizer = load_tokenizer(spec)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    if dtype is None:
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if attn == "auto":  # evaluation prefills one document: SDPA measured faster there (docs/benchmarks.md)
        attn = "sdpa"
    if attn == "nextlong":
        import nextlong.kernels.transformers_attention  # noqa: F401  registers "nextlong"
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    config_eos, generation_eos = end_of_text_ids(folder, config, vocab)
    eos_ids = tuple(dict.fromkeys(config_eos + generation_eos))  # greedy answers end at either, as generate()'s
    identity = {"folder": str(folder), "files": folder_identity(folder)}  # taken first: a change while it loads shows
    model = load_causal_lm(folder, config, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                           attn_implementation="sdpa")
    model.to(device).eval()
    identity.update(dtype=str(torch_dtype).removeprefix("torch."), device=torch.device(device).type)
    if vocab and tokenizer.vocab_size > vocab:
        raise ModelFolderError(f"{folder}: the tokenizer ({spec}) has {tokenizer.vocab_size} ids but the model's "
                               f"vocabulary only {vocab}; wrong tokenizer?")
    return LoadedModel(model, tokenizer, folder, spec, max_positions, attn, eos_ids, identity)


def check_lengths(lengths, loaded: LoadedModel, allow_extrapolation: bool, extra: int = 0) -> list[str]:
    """Refuse lengths beyond the model's positions unless extrapolation is allowed (then warn)."""
    warnings = []
    limit = loaded.max_positions
    if limit is None:
        return warnings
    too_long = [n for n in lengths if n + extra > limit]
    if too_long:
        message = (f"length {max(too_long)} (+{extra} generated tokens) is beyond the model's "
                   f"{limit} positions (max_position_embeddings)" if extra else
                   f"length {max(too_long)} is beyond the model's {limit} positions (max_position_embeddings)")
        if not allow_extrapolation:
            raise UsageError(message + "; pass --allow-extrapolation to run it anyway")
        warnings.append(message + "; running anyway (--allow-extrapolation)")
    return warnings


@contextlib.contextmanager
def attention(model, name: str):
    """Run the block with `name` as the model's attention implementation (it is read per forward)."""
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before


def _forward_params(model) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def forward(model, input_ids, *, cache=None, last_only: bool = False, output_attentions: bool = False):
    """One forward pass with a KV cache across transformers versions. Returns (logits, cache, attentions)."""
    params = _forward_params(model)
    kwargs = {"use_cache": True}
    if cache is not None:
        kwargs["cache" if "cache" in params else "past_key_values"] = cache
    if last_only:
        if "logits_to_keep" in params:
            kwargs["logits_to_keep"] = 1
        elif "num_logits_to_keep" in params:
            kwargs["num_logits_to_keep"] = 1
    if output_attentions:
        kwargs["output_attentions"] = True
    out = model(input_ids=input_ids, **kwargs)
    new_cache = getattr(out, "cache", None)
    if new_cache is None:
        new_cache = getattr(out, "past_key_values", None)
    return out.logits, new_cache, getattr(out, "attentions", None)


def crop_cache(cache, length: int) -> None:
    """Cut a KV cache back to its first `length` positions. transformers 4.x takes the length to
    keep; 5.x takes minus the number of positions to remove."""
    params = list(inspect.signature(cache.crop).parameters)
    if params and params[0] == "tokens_to_remove":
        remove = cache.get_seq_length() - length
        if remove > 0:
            cache.crop(-remove)
    else:
        cache.crop(length)


def keep_past(cache, tokens: int) -> None:
    """Call before feeding `tokens` more tokens over `cache` that `rewind_cache` is to take back.

    transformers 5 keeps only the last window of a sliding-window layer (`DynamicSlidingWindowLayer`:
    Mistral with `sliding_window`, Gemma 2/3's local layers, Qwen2's windowed layers) and can cut such a
    layer back past the window only when told beforehand to keep what it would drop
    (`Cache.activate_past_recording`; without it `crop` raises "the current layer does not track past
    states"). After the cut the layer holds the same window as before, and it keeps recording: later
    steps grow it by one position each instead of sliding, which costs memory for the generated tokens
    only and changes no attention (a recording layer still hands attention just the window). Full
    attention layers are unaffected. A cache without that method (transformers 4) is left as it is."""
    activate = getattr(cache, "activate_past_recording", None)
    if callable(activate):
        try:
            activate(recurrent_states_to_keep=tokens)  # the history linear-attention layers keep
        except TypeError:  # a version whose method takes no arguments
            activate()


def rewind_cache(cache, length: int) -> bool:
    """Cut `cache` back to its first `length` positions (after `keep_past`), exactly: True when done,
    False when this cache cannot be cut back (a layer that says it is not croppable, e.g. a static
    sliding-window layer that went past its window, or a crop that refuses); then the caller must
    rebuild it, since a refused crop may have cut some layers and not others."""
    for layer in getattr(cache, "layers", ()):
        if getattr(layer, "is_croppable", True) is False:
            return False
    try:
        crop_cache(cache, length)
    except (RuntimeError, ValueError, TypeError, AttributeError, NotImplementedError):
        return False
    return cache.get_seq_length() == length


# Greedy decoding's revision, part of the resume fingerprints of greedy records (`nextlong eval`, its rag task):
# 2026-12-07, decoding stops at the model's positions (before, an answer at a length equal to them was decoded
# past them). A journal of the older fingerprint keeps the records `decoded_alike` clears; the rest are scored again.
DECODING_REVISION = "2026-12-07"

# Where a model's positions are read, part of the same fingerprints for a model whose config names them only in its
# text_config (Gemma 3's, Llama 4's; `model_folder.positions_in_text_config`): 2026-12-07, read there. Before, no
# limit was found, so greedy decoding ran past the positions as before DECODING_REVISION, whatever the journal's
# header: such a journal keeps only the records `decoded_alike` clears.
POSITIONS_REVISION = "2026-12-07"


def decoded_alike(limit: int | None, prompt_tokens: int, budget: int) -> bool:
    """Whether greedy decoding before DECODING_REVISION gave the answer `greedy_ids` gives now: they differ only
    where a prompt within the model's `limit` positions left fewer than `budget` - 1 of them (the old loop fed
    up to prompt + budget - 1 ids; the new one stops at the limit)."""
    return limit is None or prompt_tokens > limit or prompt_tokens + budget - 1 <= limit


# How a prompt's text becomes ids, part of the resume fingerprints of the runs it changed (`nextlong eval`'s tasks,
# `nextlong heads`): 2026-12-07, special-token strings in the text are read as ordinary text, as they are counted
# (before, the fed prompt parsed them into special ids, so it differed from the one measured). Only a run with a
# prompt where the two encodings differ (`read_specials_before`) carries it; the others keep their records.
ENCODING_REVISION = "2026-12-07"


def prompt_ids(tokenizer, text: str, prefix: bool = True) -> list[int]:
    """The ids fed for `text`: the tokenizer's prefix ids (Llama-3's BOS; with `prefix`), then the text read
    as ordinary text (`encode_ordinary`: the encoding `count_tokens` counts and the corpus engine trains on)."""
    head = [int(i) for i in getattr(tokenizer, "prefix_ids", ())] if prefix else []
    return head + [int(i) for i in tokenizer.encode_ordinary(text)]


def read_specials_before(tokenizer, text: str) -> bool:
    """Whether the encoding before ENCODING_REVISION (`encode`, which parses special-token strings) gave `text`
    other ids than `prompt_ids` does."""
    import numpy as np

    return not np.array_equal(tokenizer.encode(text), tokenizer.encode_ordinary(text))


def greedy_ids(lm: LoadedModel, cache, first_id: int, prompt_tokens: int, budget: int) -> list[int]:
    """Greedy ids after a prefilled prompt of `prompt_tokens` ids (`cache`; `first_id`: the argmax of its last
    logits), up to an end-of-text id, a newline after some text, or `budget` ids. Each id is fed only to get
    the next one, so the last is never fed. While the prompt lies within the model's positions, no id is fed
    at a position past them (decoding stops there): a prompt + answer that fills a length equal to
    `max_position_embeddings` leaves room for the answer and one more id, not for the whole margin, and a
    model with learned positions (GPT-2) cannot index past them at all. Run under the decoding attention."""
    import torch

    limit = lm.max_positions
    if limit is not None and prompt_tokens <= limit:
        budget = min(budget, limit - prompt_tokens + 1)
    out: list[int] = []
    next_id = first_id
    while len(out) < budget and next_id not in lm.eos_ids:
        out.append(next_id)
        if "\n" in decode(lm.tokenizer, out).lstrip() or len(out) == budget:
            break
        step, cache, _ = forward(lm.model, torch.tensor([[next_id]], device=lm.device), cache=cache)
        next_id = int(step[0, -1].float().argmax())
    return out


def generated_bytes(tokenizer, ids) -> bytes:
    """The bytes of generated ids, one id at a time; an id the tokenizer lacks (a model's padded
    vocabulary) gives U+FFFD's bytes."""
    parts = []
    for i in ids:
        try:
            parts.append(tokenizer.decode_bytes([int(i)]))
        except ValueError:
            parts.append("\ufffd".encode())
    return b"".join(parts)


def decode(tokenizer, ids) -> str:
    """Text of generated ids; ids the tokenizer lacks (a model's padded vocabulary) become U+FFFD."""
    try:
        return tokenizer.decode(ids)
    except ValueError:
        return generated_bytes(tokenizer, ids).decode("utf-8", errors="replace")
