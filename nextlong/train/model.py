"""The model being trained: named presets or a pretrained folder, the attention implementation, and
`LossModel`, which turns a collated batch into the weighted cross-entropy sum.

Presets are Llama-architecture models initialised at random with the vocabulary of the data's
tokenizer (the sizes are in docs/training.md):

* tiny  — 2 layers, hidden 64, 2 heads of 32 (1 KV head), MLP 192, tied embeddings: a few million
          parameters with a 100K vocabulary, for tests and CPU experiments;
* small — 12 layers, hidden 768, 12 heads of 64 (4 KV heads), MLP 2048, tied embeddings: GPT-2-small
          class (~150M parameters with a 100K vocabulary), for GPU experiments;
* 1b    — 16 layers, hidden 2048, 32 heads of 64 (8 KV heads), MLP 8192, tied embeddings: Llama-3.2-1B's
          shape (~1.2B parameters with a 100K vocabulary), for GPU benchmarks at a realistic size.

Attention: "nextlong" = our kernel (Triton on CUDA, its PyTorch fallback on CPU) fed the collator's
`cu_seq_lens_q/k`; "sdpa" and "eager" = transformers' implementations fed a dense (B, 1, S, S)
additive block-diagonal causal mask built from the same spans (the memory-hungry path a user would
otherwise take). Loss: "fused" = `fused_linear_cross_entropy` from the last hidden state (no logits
tensor); "eager" = `lm_head` then `F.cross_entropy` on the full logits.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import NextlongError, UsageError
from ..model_folder import load_causal_lm, read_config

PRESETS = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                 intermediate_size=192),
    "small": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                  intermediate_size=2048),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192),
}
PRESET_ROPE_THETA = 500_000.0  # Llama-3's base value; long-context stages raise it (--rope-theta)


def _transformers_attention_name(attention: str) -> str:
    if attention == "nextlong":
        import nextlong.kernels.transformers_attention as nla

        return nla.register()
    return attention


def set_rope_theta(config, theta: float) -> None:
    """Set RoPE's base on a config (transformers 5 keeps it in `rope_parameters`, older in `rope_theta`)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict):
        params["rope_theta"] = float(theta)
    config.rope_theta = float(theta)


def get_rope_theta(config) -> float | None:
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    return float(theta) if theta is not None else None


def is_preset(name: str) -> bool:
    return name in PRESETS


def run_or_model_folder(spec: str) -> Path:
    """A training run folder (RUN/model/config.json) or a Hugging Face model folder."""
    path = Path(spec)
    if (path / "model" / "config.json").is_file():
        return path / "model"
    if (path / "config.json").is_file():
        return path
    raise NextlongError(f"{spec}: not a model preset ({', '.join(PRESETS)}) nor a folder with config.json "
                        "(a Hugging Face causal-LM folder or a `nextlong train` run)")


def build_model(spec: str, *, vocab_size: int | None, seq_len: int, attention: str,
                rope_theta: float | None = None, seed: int = 0, trust_remote_code: bool = False,
                eos_id: int | None = None):
    """The model. Presets are initialised from `seed`, with `eos_id` (the data tokenizer's end-of-text id,
    or None) as their BOS/EOS ids: LlamaConfig's defaults, 1 and 2, are ordinary tokens of a BPE vocabulary
    (cl100k: '"' and '#'), where generation would stop. Folders are loaded by nextlong.model_folder, which
    runs the folder's own Python code only with `trust_remote_code`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    attn = _transformers_attention_name(attention)
    if is_preset(spec):
        if vocab_size is None:
            raise NextlongError(f"--model {spec} needs the data's tokenizer to size its vocabulary; the data has no "
                                "manifest (give a pretrained --model folder instead)")
        config = LlamaConfig(vocab_size=int(vocab_size), max_position_embeddings=max(seq_len, 2048),
                             tie_word_embeddings=True, attention_dropout=0.0, bos_token_id=eos_id,
                             eos_token_id=eos_id, pad_token_id=None, **PRESETS[spec])
        set_rope_theta(config, rope_theta or PRESET_ROPE_THETA)
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    else:
        folder = run_or_model_folder(spec)
        config = read_config(folder, trust_remote_code=trust_remote_code)
        if rope_theta is not None:
            set_rope_theta(config, rope_theta)
        if getattr(config, "max_position_embeddings", seq_len) < seq_len:
            config.max_position_embeddings = seq_len
        model = load_causal_lm(folder, config, dtype=torch.float32, trust_remote_code=trust_remote_code)
    model.config._attn_implementation = attn
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    if model.get_output_embeddings() is None or model.get_decoder() is None:
        raise NextlongError(f"{spec}: the model has no output head or decoder (expected a causal LM)")
    from nextlong.kernels.transformers_loss import logit_scale_of

    try:  # the loss applies the model's logit scale as its forward does: one it cannot place is refused here
        logit_scale_of(model)
    except ValueError as exc:
        raise NextlongError(f"{spec}: {str(exc).split(': ', 1)[1].split('; pass')[0]}; its loss cannot be "
                            "computed as its own forward computes it") from None
    return model


def check_attention_dropout(model, spec: str, attention: str) -> None:
    """Our attention applies no dropout: a model that trains with attention dropout is refused at setup under
    --attention nextlong (its first step died in the kernel, with a 93-line traceback)."""
    p = getattr(model.config, "attention_dropout", 0.0) or 0.0
    if attention == "nextlong" and isinstance(p, (int, float)) and p > 0:
        raise UsageError(f"--model {spec}: its config sets attention_dropout = {p:g}, which our attention "
                         "(--attention nextlong, the default) does not apply; pass --attention sdpa, or set "
                         f"attention_dropout to 0 in {run_or_model_folder(spec) / 'config.json'}")


def dense_span_mask(cu_seqlens: torch.Tensor, batch: int, seq: int, device) -> torch.Tensor:
    """(B, 1, S, S) bool: True where key j lies in query i's span and j <= i."""
    cu = cu_seqlens.to(torch.int64).cpu()
    span_id = torch.zeros(batch * seq, dtype=torch.int64)
    span_id[cu[1:-1]] = 1
    span_id = span_id.cumsum(0).reshape(batch, seq).to(device)
    same = span_id[:, :, None] == span_id[:, None, :]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=device).tril()
    return (same & causal)[:, None]


class LossModel(torch.nn.Module):
    """Wraps a causal LM: forward(batch, weights) -> sum_t w_t * CE_t over the batch's targets.

    The caller divides by the step's total weight (all micro-batches, all ranks), which makes the
    step's gradient that of `sum w*CE / sum w` over the global batch, however it was split. It is
    the module handed to DDP/FSDP, so gradient synchronisation sees the whole computation.
    """

    def __init__(self, lm, *, attention: str = "nextlong", loss: str = "fused"):
        super().__init__()
        self.lm, self.attention, self.loss = lm, attention, loss

    def attention_inputs(self, batch: dict) -> dict:
        b, s = batch["input_ids"].shape
        if self.attention == "nextlong":
            return {k: batch[k] for k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")}
        if batch["cu_seq_lens_q"].numel() == b + 1:  # one span per row: plain causal attention
            return {}
        allowed = dense_span_mask(batch["cu_seq_lens_q"], b, s, batch["input_ids"].device)
        if self.attention == "sdpa":  # SDPA takes a boolean mask; eager adds an additive one to the scores
            return {"attention_mask": allowed}
        dtype = self.lm.get_output_embeddings().weight.dtype
        additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return {"attention_mask": additive.masked_fill_(~allowed, torch.finfo(dtype).min)}

    def hidden_states(self, batch: dict) -> torch.Tensor:
        out = self.lm.get_decoder()(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                    use_cache=False, **self.attention_inputs(batch))
        return out.last_hidden_state

    def token_losses(self, hidden: torch.Tensor, labels: torch.Tensor, reduction: str, weights=None):
        """CE of predicting labels[:, t+1] from hidden[:, t]; weights aligned with labels. Labels one column
        longer than hidden (a sequence-parallel slice: nextlong.parallel.split_for_rank) give every
        position of hidden a target."""
        from nextlong.kernels.transformers_loss import fold_logit_scale, logit_scale_of, logit_softcap_of

        head = self.lm.get_output_embeddings()
        h = (hidden if labels.shape[1] == hidden.shape[1] + 1 else hidden[:, :-1]).reshape(-1, hidden.shape[-1])
        y = labels[:, 1:].reshape(-1)
        w = None if weights is None else weights[:, 1:].reshape(-1)
        # the model's own logits: its post-head scale (Granite, Cohere) and soft-cap (Gemma-2), as its forward
        h, bias = fold_logit_scale(h, head.bias, logit_scale_of(self.lm))
        cap = logit_softcap_of(self.lm)
        if self.loss == "fused":
            from nextlong.kernels.losses import fused_linear_cross_entropy

            return fused_linear_cross_entropy(h, head.weight, y, bias=bias, token_weights=w,
                                              reduction=reduction, logit_softcap=cap)
        logits = F.linear(h, head.weight, bias).float()
        if cap:
            logits = cap * torch.tanh(logits / cap)
        ce = F.cross_entropy(logits, y, ignore_index=-100, reduction="none")
        if w is not None:
            ce = ce * w.to(ce.dtype)
        return ce.sum() if reduction == "sum" else ce

    def forward(self, batch: dict, weights: torch.Tensor | None = None) -> torch.Tensor:
        """With weights: sum_t w_t * CE_t (a scalar). Without: `target_logprobs` (call under no_grad).

        Scoring goes through forward too, so FSDP gathers the root's parameters for it."""
        hidden = self.hidden_states(batch)
        if weights is not None:
            return self.token_losses(hidden, batch["labels"], "sum", weights)
        targets = batch["input_ids"]
        if batch["labels"].shape[1] == targets.shape[1] + 1:  # a sequence-parallel slice: its last position
            targets = batch["labels"].clamp_min(0)             # predicts the next slice's first token
        ce = self.token_losses(hidden, targets, "none")
        out = torch.zeros(targets.shape, dtype=torch.float32, device=ce.device)
        out[:, 1:] = -ce.float().reshape(out.shape[0], -1)
        return out

    def target_logprobs(self, batch: dict) -> torch.Tensor:
        """log p(x_t | its span's prefix) in nextlong.weighting's layout: (B, S) fp32, column 0 = 0; for a
        sequence-parallel slice, aligned with its labels (B, S/N + 1), where masked targets hold garbage."""
        with torch.no_grad():
            return self(batch)
