"""The dtype a kernel computes in under ``torch.autocast``, shared by the attention and the loss."""

from __future__ import annotations

import torch


def autocast_inputs(*tensors):
    """Inside ``torch.autocast``, the tensors cast to its dtype, as ``F.linear``/SDPA would be (None kept).

    Under autocast the parameters stay fp32 while activations arrive in bf16 or fp32 (rotary and
    norms promote), so a kernel that wants one dtype takes the one autocast would compute in."""
    ref = next(t for t in tensors if t is not None)
    kind = ref.device.type
    if not torch.is_autocast_enabled(kind):
        return tensors
    dtype = torch.get_autocast_dtype(kind)
    return tuple(t if t is None or not t.is_floating_point() else t.to(dtype) for t in tensors)
