"""Carlini-Wagner L2: the smallest L2 perturbation that flips the prediction.

Minimizes ||x' - x||_2^2 + c * f(x') over x' = (tanh(w) + 1) / 2 (always in [0, 1]) with
Adam, where f is the logit margin max(Z_y - max_{i != y} Z_i, -kappa) (untargeted) or
max(max_{i != t} Z_i - Z_t, -kappa) (targeted). A binary search per example over c
finds the smallest perturbation: c grows x10 until an attack succeeds, then bisects.

Unlike PGD it returns a distance per example (inf where no attack was found), so robust
accuracy at every eps comes from a single run: an example is robust at eps if it is
classified correctly and its smallest adversarial distance exceeds eps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from advfeat.attacks.forward import frozen, frozen_view
from advfeat.attacks.engine import check_targets
from advfeat.errors import UserError
from advfeat.runtime import autocast, prepare_input


@dataclass
class CWResult:
    x_adv: torch.Tensor  # (N, ...) smallest successful perturbation found (x0 where none)
    distance: torch.Tensor  # (N,) its L2 norm; inf where no attack succeeded
    success: torch.Tensor  # (N,) bool
    image_steps: int
    seconds: float


def margin(logits: torch.Tensor, labels: torch.Tensor, targeted: bool, kappa: float) -> torch.Tensor:
    """CW's f: how far the attack is from success (<= 0 once it succeeded by kappa)."""
    label_logit = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], -torch.inf).amax(1)
    gap = others - label_logit if targeted else label_logit - others
    return gap.clamp(min=-kappa)


def _attack_batch(forward, x0, labels, targeted, steps, binary_steps, c_init, lr, kappa):
    n = len(x0)
    device = x0.device
    w0 = torch.atanh((x0 * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
    c = torch.full((n,), c_init, device=device)
    lower, upper = torch.zeros(n, device=device), torch.full((n,), torch.inf, device=device)
    best_x, best_d = x0.clone(), torch.full((n,), torch.inf, device=device)
    shape = (-1, *[1] * (x0.dim() - 1))
    for _ in range(binary_steps):
        w = w0.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([w], lr=lr)
        found = torch.zeros(n, dtype=torch.bool, device=device)
        for _ in range(steps):
            x = (torch.tanh(w) + 1) / 2
            with autocast(device):
                logits = forward(prepare_input(x, device)).float()
            distance2 = (x - x0).flatten(1).pow(2).sum(1)
            loss = (distance2 + c * margin(logits, labels, targeted, kappa)).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                hit = (logits.argmax(1) == labels) if targeted else (logits.argmax(1) != labels)
                distance = distance2.sqrt()
                better = hit & (distance < best_d)
                best_d = torch.where(better, distance, best_d)
                best_x = torch.where(better.view(shape), x.detach(), best_x)
                found |= hit
        # Success: search smaller c; failure: larger (x10 until bracketed, then bisect).
        upper = torch.where(found, torch.minimum(upper, c), upper)
        lower = torch.where(found, lower, torch.maximum(lower, c))
        c = torch.where(torch.isinf(upper), c * 10, (lower + upper) / 2)
    return best_x, best_d


def cw_l2(
    model: torch.nn.Module,
    x0: torch.Tensor,
    labels: torch.Tensor,
    *,
    targeted: bool = False,
    steps: int = 100,
    binary_steps: int = 9,
    c_init: float = 1e-2,
    lr: float = 0.01,
    kappa: float = 0.0,
    batch_size: int | None = None,
    compile: bool | None = None,
) -> CWResult:
    """CW-L2 on every example of x0; `labels` are true labels, or targets if targeted."""
    if steps < 1 or binary_steps < 1:
        raise UserError(f"CW needs steps >= 1 and binary steps >= 1, got {steps} and {binary_steps}")
    if not (c_init > 0 and lr > 0 and kappa >= 0):
        raise UserError("CW needs c_init > 0, lr > 0 and kappa >= 0")
    check_targets(labels, getattr(model, "num_classes", None))
    start = time.perf_counter()
    n = len(x0)
    width = n if batch_size is None else max(1, min(batch_size, n))
    xs, ds = [], []
    with frozen(model):
        forward = frozen_view(model, compile, x0.device)
        for i in range(0, n, width):
            bx, bd = _attack_batch(forward, x0[i:i + width], labels[i:i + width], targeted, steps, binary_steps,
                                   c_init, lr, kappa)
            xs.append(bx)
            ds.append(bd)
    distance = torch.cat(ds) if ds else torch.zeros(0, device=x0.device)
    return CWResult(torch.cat(xs) if xs else x0.clone(), distance, torch.isfinite(distance), n * steps * binary_steps,
                    time.perf_counter() - start)
