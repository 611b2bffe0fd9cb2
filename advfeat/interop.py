"""Running advfeat's models in other attack libraries (torchattacks, the reference AutoAttack).

advfeat's attack view of a model (attacks.forward.frozen_view) runs channels_last, so the
gradient with respect to its input comes back channels_last; torchattacks `.view()`s that
gradient, which needs a contiguous tensor. `ContiguousGradient(model)` is the same function
with a contiguous input gradient. The tests and benchmarks compare advfeat with torchattacks
through it.
"""

from __future__ import annotations

import torch


class _ContiguousGrad(torch.autograd.Function):
    """The identity, whose backward makes the gradient contiguous."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class ContiguousGradient(torch.nn.Module):
    """`inner` with a contiguous gradient w.r.t. its input: logits unchanged, (N, C, H, W) in."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(_ContiguousGrad.apply(x))
