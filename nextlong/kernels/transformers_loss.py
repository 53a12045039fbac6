"""Drop-in fused loss for HuggingFace causal LMs (``LlamaForCausalLM`` and look-alikes).

Stock ``XForCausalLM.forward`` always runs ``logits = lm_head(hidden)`` before calling
``self.loss_function(logits, labels, ...)``, so replacing ``loss_function`` alone cannot avoid
the ``(batch, seq, vocab)`` logits, and ``logits_to_keep`` only trims positions (for
generation), which would no longer line up with ``labels``. Instead, :func:`patch_causal_lm` replaces the instance's
``forward``: when ``labels`` are given it runs the decoder, then feeds the last hidden state
and ``lm_head.weight`` straight into :func:`fused_linear_cross_entropy`; ``logits`` in the
output is ``None``. Without ``labels`` (generation, evaluation) the original forward runs.

Usage::

    from nextlong.kernels.transformers_loss import patch_causal_lm
    model = LlamaForCausalLM(config)
    patch_causal_lm(model)                      # idempotent; unpatch_causal_lm(model) undoes it
    out = model(input_ids, labels=input_ids, token_weights=w)   # w: same shape as labels
    out.loss.backward()

Semantics follow transformers' ``ForCausalLMLoss``: labels are shifted left by one inside (pass
``shift_labels=`` to give already-shifted labels), ``token_weights`` are aligned with ``labels``
(weight of the token being predicted) and shifted the same way (given with ``shift_labels``, they must be
aligned with ``shift_labels`` and are not shifted), and ``num_items_in_batch`` (which
``Trainer`` passes on every step: the target tokens of the whole accumulated batch) switches to
``sum / num_items_in_batch``. With ``token_weights`` too, the weights are first scaled to mean 1
over the call's target tokens, so the step still averages ``sum w*CE / sum w`` (exactly when every
micro-batch has the same mean weight) instead of growing with the weights' scale; as that mean, a negative
weight at a target token is refused (ValueError), with or without ``num_items_in_batch``.

The patch assumes the model's logits are ``lm_head(last hidden state)``, then at most a scale and a
soft-cap. It applies a config's ``final_logit_softcapping`` (Gemma-2) and the logit scale of the
models that have one (Granite and MiniCPM3 divide by ``logits_scaling``, HyperCLOVA X multiplies by
it, Cohere multiplies by ``logit_scale``); a config with such a field on a model type it does not
know is refused, unless ``logit_scale=`` is given.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from .losses import fused_linear_cross_entropy

_LOSS_KWARGS = ("num_items_in_batch", "shift_labels", "ignore_index", "token_weights")


def shift_for_causal_lm(labels: torch.Tensor, ignore_index: int = -100, fill=None) -> torch.Tensor:
    """Position t gets labels[t + 1]; the last position gets ``fill`` (default ``ignore_index``)."""
    fill = ignore_index if fill is None else fill
    return F.pad(labels, (0, 1), value=fill)[..., 1:]


def causal_lm_loss(
    hidden_states: torch.Tensor,
    lm_head: torch.nn.Linear,
    labels: torch.Tensor | None = None,
    *,
    shift_labels: torch.Tensor | None = None,
    token_weights: torch.Tensor | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    ignore_index: int = -100,
    **options,
) -> torch.Tensor:
    """Next-token loss from the decoder's last hidden state ``(B, T, H)`` and the output head.

    ``options`` are passed to :func:`fused_linear_cross_entropy` (label_smoothing, z_loss,
    logit_softcap, backend, chunk_size). With ``num_items_in_batch`` the loss is
    ``sum_t w_t * loss_t / num_items_in_batch`` (``w`` scaled to mean 1 over the targets), otherwise the weighted
    mean; either way a negative weight at a target is refused.
    """
    if shift_labels is None:
        if labels is None:
            raise ValueError("causal_lm_loss needs labels or shift_labels")
        shift_labels = shift_for_causal_lm(labels, ignore_index)
        if token_weights is not None:
            token_weights = shift_for_causal_lm(token_weights, fill=0.0)
    shift_labels = shift_labels.to(hidden_states.device)
    reduction, count = "mean" if num_items_in_batch is None else "sum", None
    if token_weights is not None and num_items_in_batch is not None:
        # Trainer divides by the accumulated token count: weights of mean 1 over the call's targets keep the
        # weighted mean's scale, sum(w*CE) * count / sum(w) = the weighted mean times the count. The "mean" also
        # refuses a negative weight (its divisor sum(w) would stop counting tokens) in the host sync that checks
        # the labels: no second sync per step
        reduction, count = "mean", (shift_labels != ignore_index).sum()
    loss = fused_linear_cross_entropy(
        hidden_states, lm_head.weight, shift_labels, bias=lm_head.bias,
        token_weights=token_weights, ignore_index=ignore_index, reduction=reduction, **options)
    if count is not None:
        loss = loss * count
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


def logit_softcap_of(model) -> float | None:
    config = getattr(model, "config", None)
    cap = getattr(config, "final_logit_softcapping", None)
    return float(cap) if cap else None


# model_type -> how its forward scales the logits after lm_head (from each model's modeling file)
_LOGIT_SCALES = {
    **{t: lambda c: 1.0 / c.logits_scaling for t in (
        "granite", "granitemoe", "granitemoeshared", "granitemoehybrid", "granite_swa", "granitemoe_swa",
        "minicpm3")},
    "hyperclovax": lambda c: float(c.logits_scaling),
    "cohere": lambda c: float(c.logit_scale),
    "cohere2": lambda c: float(c.logit_scale),
}


def fold_logit_scale(hidden: torch.Tensor, bias: torch.Tensor | None, scale: float):
    """(hidden, bias) with a post-head logit scale folded in: (h W^T + b) * s = (s h) W^T + s b, so the loss
    of the scaled logits is computed from the head's own weight, without materialising logits to scale."""
    if scale == 1.0:
        return hidden, bias
    return hidden * scale, None if bias is None else bias * scale


def logit_scale_of(model) -> float:
    """The factor this model's forward multiplies its logits by (1.0 for Llama and most others)."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind in _LOGIT_SCALES:
        return float(_LOGIT_SCALES[kind](config))
    for field in ("logits_scaling", "logit_scale"):
        if getattr(config, field, None) not in (None, 1, 1.0):
            raise ValueError(f"patch_causal_lm: {type(model).__name__} (model_type {kind!r}) has config.{field} = "
                             f"{getattr(config, field)!r}, and how its forward applies it is not known here; pass "
                             "logit_scale= (the factor its logits are multiplied by after lm_head)")
    return 1.0


def _patched_forward(self, *args, **kwargs):
    """The forward patch_causal_lm installs. It finds everything through `self` (no closure), so a
    `copy.deepcopy` of the model (an EMA or reference model) computes with the copy's own weights.
    Positional arguments mean what they mean to the model's own forward (`model(ids, mask)`: the mask is
    attention_mask, as transformers has it, not labels)."""
    if args:
        kwargs = _as_keywords(self._nextlong_original_forward, args, kwargs)
    input_ids, labels = kwargs.pop("input_ids", None), kwargs.pop("labels", None)
    logits_to_keep = kwargs.pop("logits_to_keep", 0)
    # Everything else (attention_mask, position_ids, the KV cache under whichever name this
    # transformers version uses, ...) passes through only when the caller gave it: naming a
    # renamed argument ourselves would trip its deprecation warning on every call.
    loss_kwargs = {k: kwargs.pop(k) for k in _LOSS_KWARGS if k in kwargs}
    if labels is None and loss_kwargs.get("shift_labels") is None:
        return self._nextlong_original_forward(input_ids=input_ids, logits_to_keep=logits_to_keep, **kwargs)
    return_dict = kwargs.pop("return_dict", None)
    options = dict(self._nextlong_loss_options)
    scale = options.pop("logit_scale")
    outputs = self.get_decoder()(input_ids=input_ids, **kwargs)
    hidden, head = outputs.last_hidden_state, self.get_output_embeddings()
    if scale != 1.0:
        hidden, bias = fold_logit_scale(hidden, head.bias, scale)
        head = _ScaledHead(head.weight, bias)
    loss = causal_lm_loss(hidden, head, labels, **loss_kwargs, **options)
    out = _causal_lm_output(loss, outputs)
    if return_dict is None:
        return_dict = getattr(getattr(self, "config", None), "return_dict", True)
    return out if return_dict is not False else out.to_tuple()


def _as_keywords(forward, args: tuple, kwargs: dict) -> dict:
    """`args` named by `forward`'s positional parameters, merged into `kwargs` (TypeError as Python's own)."""
    import inspect

    names = [p.name for p in inspect.signature(forward).parameters.values()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(args) > len(names):
        raise TypeError(f"forward() takes {len(names)} positional arguments but {len(args)} were given")
    for name, value in zip(names, args):
        if name in kwargs:
            raise TypeError(f"forward() got multiple values for argument {name!r}")
        kwargs[name] = value
    return kwargs


class _ScaledHead:
    """What causal_lm_loss reads of an output head (weight, bias), with the bias already scaled."""

    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias


def patch_causal_lm(model: torch.nn.Module, **options) -> torch.nn.Module:
    """Make ``model(..., labels=...)`` compute its loss with the fused kernel; returns the model.

    ``options`` (label_smoothing, z_loss, backend, chunk_size, logit_softcap, logit_scale) apply to
    every call. The patched forward accepts an extra ``token_weights=`` argument.
    """
    if getattr(model, "_nextlong_original_forward", None) is not None:
        return model
    head = model.get_output_embeddings()
    if head is None or not isinstance(head, torch.nn.Linear):
        raise TypeError(f"{type(model).__name__} has no linear output head (get_output_embeddings)")
    options.setdefault("logit_softcap", logit_softcap_of(model))
    if "logit_scale" not in options:
        options["logit_scale"] = logit_scale_of(model)
    options["logit_scale"] = float(options["logit_scale"])
    # instance attributes: copy.deepcopy rebinds the bound method to the copy and copies the options
    model._nextlong_original_forward = model.forward
    model._nextlong_loss_options = options
    model.forward = types.MethodType(_patched_forward, model)
    return model


def _causal_lm_output(loss, outputs):
    """transformers' CausalLMOutputWithPast, with the cache under the field name of the installed version
    (`past_key_values` before 5.25, `cache` since)."""
    import dataclasses

    from transformers.modeling_outputs import CausalLMOutputWithPast

    cache = next(f.name for f in dataclasses.fields(CausalLMOutputWithPast) if f.name in ("cache", "past_key_values"))
    return CausalLMOutputWithPast(loss=loss, logits=None, hidden_states=getattr(outputs, "hidden_states", None),
                                  attentions=getattr(outputs, "attentions", None),
                                  **{cache: getattr(outputs, cache, None)})


def unpatch_causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """Restore the forward that :func:`patch_causal_lm` replaced."""
    if getattr(model, "_nextlong_original_forward", None) is not None:
        del model.forward
        model._nextlong_original_forward = None
    return model
