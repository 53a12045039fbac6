"""What the kernels share: their autograd Functions are differentiable once, their entry points take tensors."""

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


def require_tensors(caller: str, **named) -> None:
    """Refuse a non-tensor argument (a list, a numpy array) by name: it failed later with an AttributeError about
    a method the kernel happened to call first ("'str' object has no attribute 'type'"). None passes."""
    for name, value in named.items():
        if value is not None and not torch.is_tensor(value):
            raise TypeError(f"{caller}: {name} must be a torch.Tensor, got {type(value).__name__}")
