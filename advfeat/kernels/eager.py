"""Plain-torch twins of the fused PGD-step kernels: this file is the spec.

All tensors live in [0, 1] pixel space with shape (B, ...). `x` is the current
adversarial batch and `x0` the clean batch (both fp32); `grad` is fp32 or bf16.
`eps` is a Python float or an fp32 tensor of shape [B] (one radius per example,
so several eps can share a batch); `math.inf` means "no constraint".
A negative `step_size` descends (targeted attacks).

    l2_step:      g_hat = grad / max(||grad||_2, 1e-12)      (per example, fp32)
                  x1    = x + step_size * g_hat
                  x_new = l2_project(x1, x0, eps)
    l2_project:   d     = x - x0
                  d     = d * min(1, eps / ||d||_2)          (d = 0 stays 0)
                  x_new = clamp(x0 + d, 0, 1)
    linf_step:    x1    = x + step_size * sign(grad)
                  x_new = linf_project(x1, x0, eps)
    linf_project: x_new = clamp(clamp(x, x0 - eps, x0 + eps), 0, 1)
    batch_l2_norm(t) = per-example ||t||_2 as fp32 [B], accumulated in fp32.

No validation happens here; the dispatcher in `advfeat.kernels` does it.
"""

import torch


def batch_l2_norm(t: torch.Tensor) -> torch.Tensor:
    # Reduce over the non-batch dims in place: flatten(1) would copy a channels_last tensor.
    return torch.linalg.vector_norm(t.float(), dim=tuple(range(1, t.dim()))) if t.dim() > 1 else t.float().abs()


def _per_example(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """View a [B] tensor as (B, 1, 1, ...) so it broadcasts against `like`."""
    if isinstance(v, torch.Tensor):
        return v.view(-1, *([1] * (like.dim() - 1)))
    return v


def l2_project(x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
    d = x - x0
    norm = _per_example(batch_l2_norm(d), d)
    # where() rather than a clamped denominator: eps = 0 with d = 0 must not give 0/0.
    factor = torch.where(norm > 0, (_per_example(eps, d) / norm).clamp(max=1.0), 1.0)
    return (x0 + d * factor).clamp(0.0, 1.0)


def l2_step(
    x: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor, step_size: float, eps: torch.Tensor | float
) -> torch.Tensor:
    g = grad.float()
    g_norm = _per_example(batch_l2_norm(g), g).clamp(min=1e-12)
    return l2_project(x + step_size * (g / g_norm), x0, eps)


def linf_project(x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
    eps = _per_example(eps, x)
    return torch.clamp(x, x0 - eps, x0 + eps).clamp(0.0, 1.0)


def linf_step(
    x: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor, step_size: float, eps: torch.Tensor | float
) -> torch.Tensor:
    # sign in fp32: a bf16 sign times step_size would round the step to bf16.
    return linf_project(x + step_size * grad.float().sign(), x0, eps)
