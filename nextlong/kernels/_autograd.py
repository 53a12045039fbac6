"""What the kernels' autograd Functions share: they are differentiable once."""

from __future__ import annotations

import functools

import torch


def first_order_only(backward):
    """Wrap an autograd Function's backward so that a double backward (``create_graph=True``) fails at once,
    naming the op. Without it the first gradient comes back silently detached (the kernels form it from
    saved statistics, or in the forward pass), and the failure surfaces later as "element 0 of tensors does
    not require grad"."""

    @functools.wraps(backward)
    def wrapped(ctx, *grads):
        if torch.is_grad_enabled():  # the engine enables grad mode in backward only under create_graph=True
            raise RuntimeError(f"{type(ctx).__name__.removesuffix('Backward')}: nextlong's kernels are differentiable "
                               "once; create_graph=True (a double backward) is not supported: compute that loss "
                               "with PyTorch ops (F.scaled_dot_product_attention, F.cross_entropy on logits)")
        return backward(ctx, *grads)

    return wrapped
