"""Projected gradient descent, written once against a threat model and an objective.

The engine keeps a batch of B "slots" full: each slot holds one example at its own step
count. When an example finishes (all steps done, or it succeeded and `retire` is on) its
slot is refilled from the queue, so a 2,500-step attack never pays for solved images and
the GPU always sees full batches.

Per example it keeps the best iterate seen: a successful iterate beats an unsuccessful
one, and between equals the higher objective wins (the robustness library's `use_best`,
made success-aware). Restarts re-attack only the examples not yet broken.

The model runs in eval mode with its parameters frozen (gradients w.r.t. the input only),
under bf16 autocast on CUDA; the perturbed images stay fp32.
"""

from __future__ import annotations

import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

from advfeat.attacks.objectives import Misclassify, Objective
from advfeat.attacks.threats import ThreatModel
from advfeat.errors import UserError
from advfeat.kernels import batch_l2_norm
from advfeat.runtime import autocast, prepare_input

KEEP = ("best", "last")


@dataclass
class AttackResult:
    x_adv: torch.Tensor  # (N, ...) fp32, the kept iterate of each example
    objective: torch.Tensor  # (N,) objective at x_adv
    success: torch.Tensor  # (N,) bool; all False when the objective knows no success
    steps: torch.Tensor  # (N,) gradient steps taken, over all restarts
    zero_grad: torch.Tensor  # (N,) bool: the gradient at the start point was exactly zero
    image_steps: int  # forward+backward passes over single images, in total
    seconds: float

    @property
    def image_steps_per_s(self) -> float:
        return self.image_steps / max(self.seconds, 1e-9)


@contextmanager
def frozen(model: torch.nn.Module):
    """Eval mode, no parameter gradients; both restored afterwards."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled(model: torch.nn.Module):
    """torch.compile(model), built once per model and reused by every attack on it."""
    if model not in _compiled:
        _compiled[model] = torch.compile(model)
    return _compiled[model]


def attack_forward(model: torch.nn.Module, compile: bool | None, device: torch.device):
    """The model as an attack calls it: compiled if asked, and by default (None) on CUDA,
    where thousands of steps repay the compile time; eager otherwise."""
    return compiled(model) if (device.type == "cuda" if compile is None else compile) else model


def objective_and_gradient(forward, x: torch.Tensor, target: torch.Tensor, objective: Objective):
    """(objective [B], success [B] or None, d objective / d x) at x."""
    x = x.detach().requires_grad_(True)
    with autocast(x.device):
        if objective.needs_features:
            logits, features = forward(prepare_input(x, x.device), return_features=True)
            features = features.float()
        else:
            logits, features = forward(prepare_input(x, x.device)), None
    value = objective(logits.float(), features, target)
    (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), objective.succeeded(logits.detach(), target), grad


def check_attack_args(steps: int, step_size: float, restarts: int, keep: str) -> None:
    if steps < 1:
        raise UserError(f"attack steps must be at least 1, got {steps}")
    if not step_size > 0:
        raise UserError(f"attack step size must be positive, got {step_size}")
    if restarts < 1:
        raise UserError(f"restarts must be at least 1, got {restarts}")
    if keep not in KEEP:
        raise UserError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}")


def check_targets(target: torch.Tensor, num_classes: int | None) -> None:
    if target.dtype == torch.long and num_classes is not None and len(target):
        low, high = int(target.min()), int(target.max())
        if low < 0 or high >= num_classes:
            raise UserError(f"targets must be classes 0..{num_classes - 1}, got values in [{low}, {high}]")


def pgd(
    model: torch.nn.Module,
    x0: torch.Tensor,
    target: torch.Tensor,
    *,
    threat: ThreatModel,
    steps: int,
    step_size: float,
    objective: Objective | None = None,
    restarts: int = 1,
    keep: str = "best",
    retire: bool = False,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    compile: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AttackResult:
    """Attack every example of x0 (N, ...) in [0, 1]; `target` is per example (labels,
    target labels or target features, as the objective wants).

    keep="best" returns each example's best iterate, "last" its final one. retire=True
    stops an example at its first success. progress(examples_finished, image_steps) is
    called as slots finish.
    """
    objective = objective or Misclassify()
    check_attack_args(steps, step_size, restarts, keep)
    check_targets(target, getattr(model, "num_classes", None))
    n, device = len(x0), x0.device
    width = n if batch_size is None else max(1, min(batch_size, n))
    best_x, best_obj = x0.clone(), torch.full((n,), -torch.inf, device=device)
    best_success = torch.zeros(n, dtype=torch.bool, device=device)
    steps_done = torch.zeros(n, dtype=torch.long, device=device)
    zero_grad = torch.zeros(n, dtype=torch.bool, device=device)
    image_steps, finished, start = 0, 0, time.perf_counter()
    no_success = torch.zeros(0, dtype=torch.bool, device=device)

    with frozen(model):
        forward = attack_forward(model, compile, device)
        for restart in range(restarts):
            queue = torch.arange(n, device=device) if restart == 0 else torch.nonzero(~best_success).flatten()
            taken = 0
            idx = torch.zeros(0, dtype=torch.long, device=device)
            x, t = x0[:0], torch.zeros(0, dtype=torch.long, device=device)
            while True:
                free = width - len(idx)
                if free > 0 and taken < len(queue):  # refill the free slots
                    new = queue[taken:taken + free]
                    taken += len(new)
                    idx = torch.cat([idx, new])
                    x = torch.cat([x, threat.random_start(x0[new], generator)])
                    t = torch.cat([t, torch.zeros(len(new), dtype=torch.long, device=device)])
                if len(idx) == 0:
                    break
                value, success, grad = objective_and_gradient(forward, x, target[idx], objective)
                success = no_success.new_zeros(len(idx)) if success is None else success
                image_steps += len(idx)
                if restart == 0:
                    first = t == 0
                    zero_grad[idx[first]] = batch_l2_norm(grad[first]) == 0
                done = t >= steps
                if retire:
                    done |= success
                # Success first, then the objective: (success, value) compared lexicographically.
                better = (success & ~best_success[idx]) | ((success == best_success[idx]) & (value > best_obj[idx]))
                if keep == "last":
                    better &= done
                if better.any():
                    chosen = idx[better]
                    best_x[chosen], best_obj[chosen], best_success[chosen] = x[better], value[better], success[better]
                going = ~done
                steps_done[idx[going]] += 1
                if not going.all():
                    finished += int((~going).sum())
                    idx, x, t, grad = idx[going], x[going], t[going], grad[going]
                    if progress is not None:
                        progress(finished, image_steps)
                x = threat.step(x, x0[idx], grad, step_size)
                t = t + 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return AttackResult(best_x, best_obj, best_success, steps_done, zero_grad, image_steps,
                        time.perf_counter() - start)


def training_attack(config, device: torch.device):
    """The batch transform of adversarial training: PGD on (x, y) with the model frozen.

    Random starts come from a generator seeded by (seed, epoch, batch), so a resumed run
    crafts the same adversarial examples.
    """
    from advfeat.attacks.threats import make_threat
    from advfeat.pipelines.tensor_loader import epoch_generator

    threat = make_threat(config.adv, config.eps, config.attack_start)

    def perturb(model, x, y, epoch: int, batch: int) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=epoch_generator(config.seed, epoch * 1_000_003 + batch)))
        generator = torch.Generator(device=x.device).manual_seed(seed)
        result = pgd(model, x, y, threat=threat, steps=config.attack_steps, step_size=config.attack_step_size,
                     generator=generator, compile=config.compile)
        return result.x_adv

    return perturb
