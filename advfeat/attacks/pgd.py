"""Projected gradient descent (Madry et al. 2018), written once against a threat model and an objective.

PGD runs in the slot engine (engine.py): fixed shapes, masks instead of host decisions, at
most one host-device sync per step. Per example it keeps the best iterate seen: a successful
one beats an unsuccessful one, and between equals the higher objective wins (the robustness
library's `use_best`, made success-aware). Restarts re-attack only the examples not yet
broken. **No wasted last backward:** when every busy slot is at its last iterate, that
iterate is evaluated with a forward pass only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from advfeat.attacks.engine import (Slots, check_targets, drain_queue, objective_and_gradient, objective_only,
                                    rows)
from advfeat.attacks.forward import frozen, frozen_view
from advfeat.attacks.objectives import Misclassify, Objective
from advfeat.attacks.threats import ThreatModel
from advfeat.errors import UserError
from advfeat.kernels import batch_l2_norm
from advfeat.runtime import prepare_input

KEEP = ("best", "last")


@dataclass
class AttackResult:
    x_adv: torch.Tensor  # (N, ...) fp32, the kept iterate of each example
    objective: torch.Tensor  # (N,) objective at x_adv
    success: torch.Tensor  # (N,) bool; all False when the objective knows no success
    steps: torch.Tensor  # (N,) gradient steps taken, over all restarts
    zero_grad: torch.Tensor  # (N,) bool: the gradient at the start point was exactly zero
    image_steps: int  # rows of gradient passes (forward + backward), padding rows included
    seconds: float

    @property
    def image_steps_per_s(self) -> float:
        return self.image_steps / max(self.seconds, 1e-9)


def check_attack_args(steps: int, step_size: float, restarts: int, keep: str) -> None:
    if steps < 1:
        raise UserError(f"attack steps must be at least 1, got {steps}")
    if not step_size > 0:
        raise UserError(f"attack step size must be positive, got {step_size}")
    if restarts < 1:
        raise UserError(f"restarts must be at least 1, got {restarts}")
    if keep not in KEEP:
        raise UserError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}")


# --------------------------------------------------------------------------- the slot batch


class PGDRecords:
    """Per example: the best iterate so far, its objective and success, steps, zero gradients.
    Row n is a spare that padding slots point to, so writes need no masking."""

    def __init__(self, x0: torch.Tensor):
        n, device = len(x0), x0.device
        self.x = torch.cat([x0, x0.new_zeros(1, *x0.shape[1:])])
        self.objective = torch.full((n + 1,), -torch.inf, device=device)
        self.success = torch.zeros(n + 1, dtype=torch.bool, device=device)
        self.steps = torch.zeros(n + 1, dtype=torch.long, device=device)
        self.zero_grad = torch.zeros(n + 1, dtype=torch.bool, device=device)


class SlotBatch(Slots):
    """PGD's batch. Device state per slot: example index, iterate, clean image, target, steps
    taken, alive (busy and not finished), and the best iterate so far."""

    FIELDS = ("idx", "x", "x0", "target", "t", "alive", "best_x", "best_objective", "best_success", "zero_grad")

    def __init__(self, width: int, x0p: torch.Tensor, targetp: torch.Tensor, pad: int):
        device = x0p.device
        self.width, self.pad = width, pad
        self.idx = torch.full((width,), pad, dtype=torch.long, device=device)
        self.x = x0p[self.idx].clone()
        self.x0 = self.x.clone()
        self.target = targetp[self.idx].clone()
        self.t = torch.zeros(width, dtype=torch.long, device=device)
        self.alive = torch.zeros(width, dtype=torch.bool, device=device)
        self.best_x = self.x.clone()
        self.best_objective = torch.full((width,), -torch.inf, device=device)
        self.best_success = torch.zeros(width, dtype=torch.bool, device=device)
        self.zero_grad = torch.zeros(width, dtype=torch.bool, device=device)
        self.busy = np.zeros(width, dtype=bool)
        self.t_host = np.zeros(width, dtype=np.int64)

    def fill(self, positions: np.ndarray, examples: torch.Tensor, start: torch.Tensor, x0p, targetp,
             results: PGDRecords) -> None:
        """Put examples into the slots at `positions`, starting from `start`."""
        pos = torch.as_tensor(positions, device=self.idx.device)
        self.idx[pos] = examples
        self.x0[pos] = x0p[examples]
        self.x[pos] = start
        self.target[pos] = targetp[examples]
        self.t[pos] = 0
        self.alive[pos] = True
        # Comparisons start from the example's best over earlier restarts.
        self.best_x[pos] = results.x[examples]
        self.best_objective[pos] = results.objective[examples]
        self.best_success[pos] = results.success[examples]
        self.zero_grad[pos] = False
        self.busy[positions] = True
        self.t_host[positions] = 0

    def release(self, positions: np.ndarray, results: PGDRecords) -> None:
        """Write the slots' results back to their examples and free the slots."""
        pos = torch.as_tensor(positions, device=self.idx.device)
        idx = self.idx[pos]
        results.x[idx] = self.best_x[pos]
        results.objective[idx] = self.best_objective[pos]
        results.success[idx] = self.best_success[pos]
        results.steps[idx] += self.t[pos]
        results.zero_grad[idx] |= self.zero_grad[pos]
        self.idx[pos] = self.pad
        self.alive[pos] = False
        self.busy[positions] = False


# --------------------------------------------------------------------------- the attack


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
    refill_every: int = 1,
) -> AttackResult:
    """Attack every example of x0 (N, ...) in [0, 1]; `target` is per example (labels,
    target labels or target features, as the objective wants).

    keep="best" returns each example's best iterate, "last" its final one. retire=True
    stops an example at its first success. refill_every=k reads retirements back from the
    device (and refills their slots) every k steps. progress(examples_finished, image_steps)
    is called as slots finish.
    """
    objective = objective or Misclassify()
    check_attack_args(steps, step_size, restarts, keep)
    check_targets(target, getattr(model, "num_classes", None))
    if refill_every < 1:
        raise UserError(f"refill_every must be at least 1, got {refill_every}")
    n, device = len(x0), x0.device
    start_time = time.perf_counter()
    results = PGDRecords(x0)
    # The slots hold images in the model's layout (channels_last), so no step copies them.
    x0p = prepare_input(results.x)
    targetp = torch.cat([target, target[:1] if n else target.new_zeros(1, *target.shape[1:])])
    state = {"image_steps": 0, "finished": 0}
    with frozen(model):
        forward = frozen_view(model, compile, device)
        for restart in range(restarts):
            queue = np.arange(n) if restart == 0 else np.flatnonzero(~results.success[:n].cpu().numpy())
            if len(queue):
                _run_queue(forward, queue, x0p, targetp, results, threat, objective, steps, step_size, keep,
                           retire, n if batch_size is None else max(1, min(batch_size, n)), generator,
                           restart == 0, refill_every, progress, state)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return AttackResult(results.x[:n], results.objective[:n], results.success[:n], results.steps[:n],
                        results.zero_grad[:n], state["image_steps"], time.perf_counter() - start_time)


def _run_queue(forward, queue: np.ndarray, x0p, targetp, results: PGDRecords, threat: ThreatModel,
               objective: Objective, steps: int, step_size: float, keep: str, retire: bool, width: int,
               generator, first_restart: bool, refill_every: int, progress, state: dict) -> None:
    """One restart: attack the examples of `queue` through a slot batch until all are done."""
    slots = SlotBatch(min(width, len(queue)), x0p, targetp, len(x0p) - 1)

    def fill(free, first, count):
        examples = torch.as_tensor(queue[first:first + count], device=x0p.device)
        slots.fill(free, examples, threat.random_start(x0p[examples], generator), x0p, targetp, results)

    drain_queue(slots, queue, steps, retire, refill_every, fill,
                lambda: _step(forward, slots, objective, steps, step_size, keep, retire, threat, first_restart, state),
                results, progress, state)


def _step(forward, slots: SlotBatch, objective: Objective, steps: int, step_size: float, keep: str, retire: bool,
          threat: ThreatModel, first_restart: bool, state: dict) -> None:
    """Evaluate every slot at its iterate, keep the best, retire, and take one PGD step."""
    busy = slots.busy
    last_only = bool((slots.t_host[busy] >= steps).all())
    if last_only:  # every busy slot is at its last iterate: no gradient needed
        value, success = objective_only(forward, slots.x, slots.target, objective)
        grad = None
    else:
        value, success, grad = objective_and_gradient(forward, slots.x, slots.target, objective)
        state["image_steps"] += slots.width
    alive = slots.alive
    success = alive & (success if success is not None else torch.zeros_like(alive))
    at_end = slots.t >= steps
    done = at_end | (success if retire else torch.zeros_like(at_end))
    # Success first, then the objective: (success, value) compared lexicographically.
    better = alive & ((success & ~slots.best_success)
                      | ((success == slots.best_success) & (value > slots.best_objective)))
    if keep == "last":
        better &= done
        if not retire and not (slots.t_host[busy] >= steps).any():
            better = None  # no slot is at its last iterate: nothing to keep this step
    if better is not None:
        _keep_better(slots, better, value, success)
    if first_restart and grad is not None and (slots.t_host[busy] == 0).any():
        fresh = alive & (slots.t == 0)
        slots.zero_grad |= fresh & (batch_l2_norm(grad) == 0)
    slots.alive = alive & ~done
    slots.t = slots.t + slots.alive
    slots.t_host[busy] += 1
    if grad is not None:
        slots.x = threat.step(slots.x, slots.x0, grad, step_size)


def _keep_better(slots: SlotBatch, better: torch.Tensor, value: torch.Tensor, success: torch.Tensor) -> None:
    slots.best_x = torch.where(rows(better, slots.x), slots.x, slots.best_x)
    slots.best_objective = torch.where(better, value, slots.best_objective)
    slots.best_success = torch.where(better, success, slots.best_success)
