"""Retrieval heads (Wu et al., 2024): the attention heads that copy the needle into the answer.

Needle-in-a-haystack trials over lengths x depths x needles. The prompt minus its last token is
prefilled; then the model decodes greedily (at most 50 tokens, stopping after a newline), feeding
the last prompt token first. At every step, for every layer and query head, take the top-1
attended position of the current query; when it lies inside the needle's token span and the token
the model generates at this step equals the prompt token at that position, the head earns
1 / (needle length in tokens). A trial counts when the answer's ROUGE-1 recall against the needle is
above 0.5 (`all_trials=True` counts every trial); a head's score is the mean of its per-trial sums
over the counted trials. Heads with score > 0.1 are retrieval heads. Heads are query heads (GQA
models share key/value heads, but each query head has its own attention). Only layers whose attention
returns weights are scored (`attention_layers`): a hybrid model's linear-attention or state-space layers
have no heads to read.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Sequence

from ..errors import NextlongError
from ..model_folder import text_config
from .haystack import Insert, build_context, essay_units, fit_to_length
from .model import LoadedModel, attention, decode, forward, prompt_ids
from .scoring import rouge1_recall

# Our own needles: a statement, the question that asks for it. The needle is the ROUGE reference.
NEEDLES = (
    ("The secret ingredient of the harbour bakery's famous rye bread is a spoonful of smoked sea salt.",
     "What is the secret ingredient of the harbour bakery's famous rye bread?"),
    ("The best way to cross the old mountain pass is on foot at dawn, carrying a lantern and hot tea.",
     "What is the best way to cross the old mountain pass?"),
    ("The lighthouse keeper's cat is called Captain Biscuit and sleeps on the warm lens every afternoon.",
     "What is the lighthouse keeper's cat called, and where does it sleep?"),
)
QUESTION = "\n\nBased on the content of the text above, answer the question.\nQuestion: {question}\nAnswer:"
MAX_NEW_TOKENS = 50
RETRIEVAL_THRESHOLD = 0.1
MIN_RECALL = 0.5
# Part of `nextlong heads`' resume fingerprint for models with a sliding window: until 2026-12-07 a sliding layer's
# top-1 index (an offset into its window) was read as a prompt position, so such trials are scored again.
SLIDING_REVISION = "2026-12-07"


@dataclass
class Trial:
    length: int
    depth: float
    needle: int
    prompt: str
    prompt_ids: list[int]
    span: tuple[int, int]  # token span [start, end) of the needle in prompt_ids
    reference: str


def token_span(tokenizer, ids: Sequence[int], text: str, char_start: int, char_end: int) -> tuple[int, int]:
    """Tokens of `ids` (the encoding of `text`) that overlap text[char_start:char_end]."""
    byte_start = len(text[:char_start].encode("utf-8"))
    byte_end = len(text[:char_end].encode("utf-8"))
    start = end = None
    offset = 0
    for i, tid in enumerate(ids):
        size = len(tokenizer.decode_bytes([int(tid)]))
        if start is None and offset + size > byte_start:
            start = i
        if offset >= byte_end:
            end = i
            break
        offset += size
    if start is None:
        raise ValueError("span lies beyond the text")
    return start, (len(ids) if end is None else end)


def make_trials(tokenizer, essay: Sequence[str], lengths: Sequence[int], depths: Sequence[float],
                needles: Sequence[tuple[str, str]] = NEEDLES) -> list[Trial]:
    trials = []
    for length in lengths:
        for depth in depths:
            for k, (needle, question) in enumerate(needles):
                units = essay_units(tokenizer, essay)
                tail = QUESTION.format(question=question)
                inserts = [Insert(needle, depth / 100, queried=True)]

                def build(n, units=units, inserts=inserts, tail=tail):
                    return build_context(units, n, inserts).framed("", tail)

                prefix = [int(i) for i in tokenizer.prefix_ids]  # fed first (Llama-3's BOS), counted in length
                built, _ = fit_to_length(tokenizer, units, build, tokenizer.count_tokens(" " + needle),
                                         length - len(prefix), task="heads", what="essay")
                prompt, spans = built.context, built.spans
                ids = prompt_ids(tokenizer, prompt, prefix=False)  # the text as counted
                start, end = token_span(tokenizer, ids, prompt, *spans[0])
                trials.append(Trial(length, depth, k, prompt, prefix + ids, (start + len(prefix), end + len(prefix)),
                                    needle))
    return trials


def _top_positions(weights, keys: int):
    """The position each query head of a layer attends most, from the layer's attention weights of the token fed
    last, the `keys`-th position (0-based `keys - 1`). A sliding-window layer's cache keeps only its last window, so
    its row covers the last `weights.shape[-1]` positions: its argmax is an offset into them (a full layer's row
    covers them all)."""
    row = weights[0, :, -1, :]
    return row.argmax(-1) + (keys - row.shape[-1])


ATTENTION_MODULES = ("self_attn", "attn", "self_attention", "attention")  # a decoder layer's attention, by name


def _attention_module(layer):
    """A decoder layer's attention module, by its name (ATTENTION_MODULES; GPT-NeoX's `attention`, Falcon's
    `self_attention`, GPT-2's `attn`), or None."""
    import torch

    return next((getattr(layer, n) for n in ATTENTION_MODULES if isinstance(getattr(layer, n, None), torch.nn.Module)),
                None)


def attention_layers(lm: LoadedModel) -> list[int]:
    """The decoder layers whose attention returns weights under eager attention, found by one forward pass over
    a needle's first tokens before any work. transformers leaves out the layers that give None (a hybrid's
    linear-attention or state-space layers, an attention that returns no weights), so each weight's layer is
    read from hooks on the layers' attention modules. Raises a one-line NextlongError when no layer gives weights
    or when which layers did cannot be told."""
    import torch

    given: dict[int, bool] = {}
    handles = []
    try:
        layers = _layers(lm.model)
    except ValueError:
        layers = []
    for i, layer in enumerate(layers):
        module = _attention_module(layer)
        if module is not None:
            handles.append(module.register_forward_hook(lambda m, args, out, i=i: given.__setitem__(
                i, isinstance(out, tuple) and len(out) > 1 and torch.is_tensor(out[1]))))
    try:
        with torch.no_grad(), attention(lm.model, "eager"):
            ids = prompt_ids(lm.tokenizer, NEEDLES[0][0])[:8]
            _, _, weights = forward(lm.model, torch.tensor([ids], device=lm.device), output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()
    count, total = len(weights or ()), lm.num_layers
    found = [i for i in range(total) if given.get(i)]
    if count == total:
        return list(range(total))
    if count == 0:
        raise NextlongError(f"{lm.folder}: no layer of the model returns attention weights (output_attentions=True "
                            "under eager attention); retrieval heads are read from them")
    if len(found) != count:
        raise NextlongError(f"{lm.folder}: {count} of the model's {total} layers return attention weights, and "
                            "which ones cannot be told from their attention modules; retrieval heads need each "
                            "weight's layer")
    return found


@dataclass(eq=False)
class TrialResult:
    scores: object          # (layers, heads) float tensor: this trial's copy sum per head
    generated: list[int]
    response: str
    recall: float
    counted: bool = field(default=False)


def detect_trial(lm: LoadedModel, trial: Trial, *, max_new_tokens: int = MAX_NEW_TOKENS,
                 forced: Sequence[int] | None = None, layers: Sequence[int] | None = None) -> TrialResult:
    """Decode one trial and score every head of `layers` (`attention_layers`; None: all of them, each giving
    weights); the others keep 0. `forced` feeds these tokens instead of the greedy choice (a teacher-forced
    probe of the same rule)."""
    import torch

    model, tok = lm.model, lm.tokenizer
    ids = trial.prompt_ids
    start, end = trial.span
    prompt = torch.tensor(ids, dtype=torch.long, device=lm.device)
    scores = torch.zeros(lm.num_layers, lm.num_heads, dtype=torch.float64)
    rows = list(range(lm.num_layers)) if layers is None else list(layers)
    generated: list[int] = []
    with torch.no_grad():
        with attention(model, lm.prefill_attn):
            _, cache, _ = forward(model, prompt[None, :-1], last_only=True)
        token = ids[-1]
        steps = max_new_tokens if forced is None else min(max_new_tokens, len(forced))
        with attention(model, "eager"):  # attention weights need the eager path
            for step in range(steps):
                logits, cache, attentions = forward(model, torch.tensor([[token]], device=lm.device), cache=cache,
                                                    output_attentions=True)
                nxt = int(logits[0, -1].argmax()) if forced is None else int(forced[step])
                if len(attentions or ()) != len(rows):  # else weights would be credited to the wrong layers
                    raise NextlongError(f"{lm.folder}: {len(attentions or ())} layers returned attention weights, "
                                        f"expected {len(rows)} (nextlong.eval.heads.attention_layers)")
                top = torch.stack([_top_positions(a, len(ids) + step) for a in attentions])  # (layers, heads)
                inside = (top >= start) & (top < end)
                copied = prompt[top.clamp(max=len(ids) - 1)] == nxt
                scores[rows] += (inside & copied).double().cpu() / (end - start)
                generated.append(nxt)
                if "\n" in decode(tok, [nxt]):
                    break
                token = nxt
    response = decode(tok, generated).strip()
    return TrialResult(scores, generated, response, rouge1_recall(response, trial.reference))


def head_scores(results: Sequence[TrialResult], all_trials: bool = False, min_recall: float = MIN_RECALL):
    """(layers, heads) mean score over counted trials (zeros when none counts), and the count."""
    import torch

    for r in results:
        r.counted = all_trials or r.recall > min_recall
    counted = [r for r in results if r.counted]
    if not counted:
        return torch.zeros_like(results[0].scores), 0
    return torch.stack([r.scores for r in counted]).mean(0), len(counted)


def as_named(scores) -> dict[str, float]:
    """{"layer-head": score}, as the reference code names heads."""
    layers, heads = scores.shape
    return {f"{l}-{h}": round(float(scores[l, h]), 6) for l in range(layers) for h in range(heads)}


def ranked(named: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(named.items(), key=lambda kv: (-kv[1], tuple(int(x) for x in kv[0].split("-"))))


# ---------------------------------------------------------------- the causal check: mask heads


def _layers(model):
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers",
                 "model.language_model.layers"):  # the last: a multimodal model's text layers (Gemma 3)
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return list(obj)
        except AttributeError:
            continue
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__} to mask heads")


@contextlib.contextmanager
def masked_heads(lm: LoadedModel, heads: Sequence[tuple[int, int]]):
    """Zero the outputs of the given (layer, query head)s: their slice of the attention output
    projection's input is set to 0, so the head contributes nothing."""
    config = text_config(lm.model.config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    handles = []
    layers = _layers(lm.model)
    for layer, hs in by_layer.items():
        attn = _attention_module(layers[layer])
        proj = getattr(attn, "o_proj", None) or getattr(attn, "c_proj", None) or getattr(attn, "dense", None)
        if proj is None:
            raise NextlongError(f"{lm.folder}: cannot find the attention output projection of layer {layer} "
                                f"({type(attn).__name__}) to mask its heads")

        def hook(module, args, hs=tuple(hs)):
            x = args[0].clone()
            for h in hs:
                x[..., h * head_dim:(h + 1) * head_dim] = 0
            return (x,) + tuple(args[1:])

        handles.append(proj.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def niah_accuracy(lm: LoadedModel, trials: Sequence[Trial], min_recall: float = MIN_RECALL, *,
                  max_new_tokens: int = MAX_NEW_TOKENS, layers: Sequence[int] | None = None) -> float:
    """Fraction of trials whose greedy answer (`max_new_tokens` at most) reaches the ROUGE-1 recall bar."""
    return sum(detect_trial(lm, t, max_new_tokens=max_new_tokens, layers=layers).recall > min_recall
               for t in trials) / max(len(trials), 1)


def mask_check(lm: LoadedModel, trials: Sequence[Trial], named: dict[str, float], k: int, seed: int = 0,
               min_recall: float = MIN_RECALL, *, max_new_tokens: int = MAX_NEW_TOKENS,
               layers: Sequence[int] | None = None) -> dict:
    """NIAH accuracy unmasked, with the top-k heads masked, and with k random other heads masked, each answer
    decoded with the detection's `max_new_tokens` (so the unmasked figure is the detection's own accuracy).
    Heads are drawn from `layers` only (those scored: a layer without attention has no head to mask)."""
    order = [tuple(int(x) for x in name.split("-")) for name, _ in ranked(named)]
    order = [h for h in order if layers is None or h[0] in layers]
    top = order[:k]
    rest = order[k:]
    rand = random.Random(f"mask:{seed}").sample(rest, min(k, len(rest)))
    out = {"k": k, "top_heads": [f"{l}-{h}" for l, h in top], "random_heads": [f"{l}-{h}" for l, h in rand],
           "trials": len(trials), "accuracy_unmasked": niah_accuracy(lm, trials, min_recall,
                                                                    max_new_tokens=max_new_tokens, layers=layers)}
    with masked_heads(lm, top):
        out["accuracy_top_masked"] = niah_accuracy(lm, trials, min_recall, max_new_tokens=max_new_tokens,
                                                   layers=layers)
    with masked_heads(lm, rand):
        out["accuracy_random_masked"] = niah_accuracy(lm, trials, min_recall, max_new_tokens=max_new_tokens,
                                                      layers=layers)
    return out


def compare(named_a: dict[str, float], named_b: dict[str, float], threshold: float = RETRIEVAL_THRESHOLD) -> dict:
    """Retrieval-head counts and per-head score differences (B - A) of two detection runs."""
    if set(named_a) != set(named_b):
        raise ValueError("the two runs have different heads (different model shapes)")
    heads_a = {h for h, s in named_a.items() if s > threshold}
    heads_b = {h for h, s in named_b.items() if s > threshold}
    diff = {h: round(named_b[h] - named_a[h], 6) for h in named_a}
    moves = sorted(diff.items(), key=lambda kv: -abs(kv[1]))
    return {"threshold": threshold, "retrieval_heads_a": len(heads_a), "retrieval_heads_b": len(heads_b),
            "shared": sorted(heads_a & heads_b), "only_a": sorted(heads_a - heads_b),
            "only_b": sorted(heads_b - heads_a), "largest_changes": moves[:20], "difference": diff}
