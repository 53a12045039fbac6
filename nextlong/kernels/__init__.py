"""Triton training kernels, importable as `nextlong.kernels` and usable in any training stack.

One module per op, each with a pure-PyTorch fallback of identical semantics that is chosen
automatically when no GPU is present. Names are imported lazily so importing this package does
not import triton.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "fused_linear_cross_entropy": "losses",
    "cross_entropy": "losses",
    "flash_attention": "attention",
    "cu_seqlens_from_lengths": "attention",
    "flash_attn_func": "varlen",
    "flash_attn_varlen_func": "varlen",
    "flash_attn_varlen_forward": "varlen",
    "flash_attn_varlen_backward": "varlen",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nextlong.kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
