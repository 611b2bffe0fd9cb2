"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks", Algorithm 1), on the slot engine of pgd.py.

APGD is PGD that tunes its own step size. Per example:
- start at a random point of the eps-ball, with step size eta = 2 * eps;
- step with momentum: z = P(x_k + eta * d(grad)), x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))
  with a = 1 on the first step and 0.75 after; d is the normalized gradient (L2) or its sign
  (Linf), P the projection onto the eps-ball intersected with [0, 1] (the threat model's);
- at checkpoints w_j = p_j * n_iter (p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06))
  halve eta, and jump back to the best point seen, when the loss rose in at most rho = 0.75 of
  the steps since the last checkpoint, or when eta was not halved there and the best loss has
  not improved since;
- keep the point of highest loss, and the first point that succeeds.
Losses: "ce" (cross-entropy), "dlr" (difference of logits ratio, untargeted) and
"dlr-targeted" (toward a target class per example). Restarts start afresh from new random
points, on the examples not yet broken.

Where the reference code (auto-attack, torchattacks) keeps one iteration counter for the whole
batch, here every piece of that state is per example, so that examples can sit at different
iterations of the same batch: the slot batch of pgd.py, where a slot holds one example at its
own iteration and is refilled from the queue as soon as its example finishes, or succeeds
(`retire`). The checkpoint schedule is the same for every example, so it is a table indexed by
each slot's iteration; the halving decision is a mask. As in pgd.py: fixed batch width with a
ladder of widths once the queue drains, masks instead of host decisions, at most one host read
per step (which slots retired), a forward-only pass when every busy slot is at its last
iterate, bf16 autocast on CUDA, fp32 perturbations, no weight gradients.

Random starts are drawn for the whole queue when a restart begins, in queue order, so results do
not depend on the batch width or on retirement: these change the cost, not the results.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from advfeat.attacks.forward import frozen, frozen_view
from advfeat.attacks.objectives import Objective
from advfeat.attacks.engine import (Slots, attack_targets, check_targets, drain_queue, objective_and_gradient,
                                    objective_only, rows)
from advfeat.attacks.threats import ThreatModel, make_threat
from advfeat.errors import UserError
from advfeat.attacks.results import EnsembleResult
from advfeat.kernels import batch_l2_norm
from advfeat.runtime import prepare_input
from advfeat.settings import NORMS

LOSSES = ("ce", "dlr", "dlr-targeted")
SUCCESS = ("misclassified", "target")
MOMENTUM = 0.75  # weight of the new step; 1 - MOMENTUM goes to the previous one (the paper's alpha)
RANDOM_START = {"l2": "sphere", "linf": "box"}  # a random point of the sphere / the box, as auto-attack


# --------------------------------------------------------------------------- losses


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3): the margin, scaled so that rescaling the
    logits (or a saturated softmax) changes nothing. pi sorts the logits in decreasing order."""
    top = logits.topk(3, dim=1).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -math.inf).amax(1)
    return -(true - other) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2): DLR toward the target class t."""
    top = logits.topk(4, dim=1).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    aim = logits.gather(1, target[:, None]).squeeze(1)
    return -(true - aim) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


class APGDLoss(Objective):
    """One of LOSSES as an objective of the engine. The engine's per-example `target` is a
    (B, 2) tensor: the true label and the target class (the label again when untargeted).
    Success: a wrong prediction ("misclassified") or the target class predicted ("target")."""

    CLASSES_NEEDED: ClassVar[dict[str, int]] = {"ce": 2, "dlr": 3, "dlr-targeted": 4}

    def __init__(self, name: str, success_when: str):
        self.name, self.success_when = name, success_when

    def __call__(self, logits, features, labels):
        if logits.shape[1] < self.CLASSES_NEEDED[self.name]:  # a shape: no host-device sync
            raise UserError(f"the {self.name} loss needs a model with at least {self.CLASSES_NEEDED[self.name]} "
                            f"classes, this one has {logits.shape[1]}")
        y, target = labels[:, 0], labels[:, 1]
        if self.name == "ce":
            return F.cross_entropy(logits, y, reduction="none")
        if self.name == "dlr":
            return dlr_loss(logits, y)
        return dlr_targeted_loss(logits, y, target)

    def succeeded(self, logits, labels):
        pred = logits.argmax(1)
        return pred == labels[:, 1] if self.success_when == "target" else pred != labels[:, 0]


# --------------------------------------------------------------------------- the step-size schedule


def checkpoints(n_iter: int) -> list[tuple[int, int]]:
    """(iteration, iterations since the previous checkpoint) of each checkpoint.

    The paper's p_j in whole steps, rounded as the reference code rounds them: the first
    interval is max(int(0.22 n), 1) steps, each next one max(int(0.03 n), 1) shorter, but never
    below max(int(0.06 n), 1). For n = 100: 22, 41, 57, 70, 80, 87, 93, 99.
    """
    interval, shrink, floor = max(int(0.22 * n_iter), 1), max(int(0.03 * n_iter), 1), max(int(0.06 * n_iter), 1)
    out, at = [], 0
    while at + interval <= n_iter:
        at += interval
        out.append((at, interval))
        interval = max(interval - shrink, floor)
    return out


def window_table(n_iter: int, device: torch.device) -> torch.Tensor:
    """table[k] = the checkpoint's window length if iteration k is a checkpoint, else 0: each slot
    looks its own iteration up, so no host decision is needed."""
    table = torch.zeros(n_iter + 1, dtype=torch.long)
    for at, interval in checkpoints(n_iter):
        table[at] = interval
    return table.to(device)


@dataclass
class Plan:
    """What every restart of one apgd call shares."""

    threat: ThreatModel
    objective: APGDLoss
    n_iter: int
    windows: torch.Tensor
    rho: float
    retire: bool
    refill_every: int


# --------------------------------------------------------------------------- per-example results


class APGDRecords:
    """Per example, over restarts. Row n is a spare that padding slots point to, so writes
    need no masking."""

    def __init__(self, x0: torch.Tensor):
        n, device = len(x0), x0.device
        self.x = torch.cat([x0, x0.new_zeros(1, *x0.shape[1:])])
        self.loss = torch.full((n + 1,), -math.inf, device=device)
        self.success = torch.zeros(n + 1, dtype=torch.bool, device=device)
        self.success_iteration = torch.full((n + 1,), -1, dtype=torch.long, device=device)
        self.iterations = torch.zeros(n + 1, dtype=torch.long, device=device)
        self.zero_grad = torch.zeros(n + 1, dtype=torch.bool, device=device)


# --------------------------------------------------------------------------- the slot batch


class APGDSlots(Slots):
    """The batch the model sees: one example per slot, each at its own iteration k.

    Device state per slot (all of APGD's state is per example):
      idx, x0, labels           the example, its clean image, (label, target class)
      x, x_prev                 x_k (not yet evaluated) and x_{k-1}, for the momentum term
      t, alive                  k, and busy-and-not-finished
      eta                       the step size
      loss_prev, increases      f(x_{k-1}), and how many steps raised the loss since the last checkpoint
      best_x, best_loss, best_grad   the highest-loss point so far and its gradient (jumped back to)
      check_loss, reduced       the best loss and whether eta was halved, at the last checkpoint
      success, success_t, adv_x the first success: whether, at which k, and the point
      zero_grad                 the gradient at the start was exactly zero
    Host state per slot: busy, and k (exact for every busy slot that has not retired).
    """

    FIELDS = ("idx", "x0", "labels", "x", "x_prev", "t", "alive", "eta", "loss_prev", "increases", "best_x",
              "best_loss", "best_grad", "check_loss", "reduced", "success", "success_t", "adv_x", "zero_grad")

    def __init__(self, width: int, x0p: torch.Tensor, labelsp: torch.Tensor, pad: int, eta0: float):
        device = x0p.device
        self.start_slots(width, x0p, labelsp, pad)
        self.eta0 = eta0
        for name in ("x", "x_prev", "best_x", "best_grad", "adv_x"):
            setattr(self, name, self.x0.clone())
        self.t = torch.zeros(width, dtype=torch.long, device=device)
        self.increases = torch.zeros(width, dtype=torch.long, device=device)
        self.success_t = torch.full((width,), -1, dtype=torch.long, device=device)
        for name in ("eta", "loss_prev", "best_loss", "check_loss"):
            setattr(self, name, torch.zeros(width, device=device))
        for name in ("alive", "reduced", "success", "zero_grad"):
            setattr(self, name, torch.zeros(width, dtype=torch.bool, device=device))

    def fill(self, positions: np.ndarray, examples: torch.Tensor, start: torch.Tensor, x0p, labelsp) -> None:
        """Put examples into the slots at `positions`, at iteration 0 from `start`."""
        pos = self.take(positions, examples, x0p, labelsp)
        for name in ("x", "x_prev", "best_x", "adv_x"):
            getattr(self, name)[pos] = start
        self.best_grad[pos] = 0.0
        self.t[pos] = 0
        self.alive[pos] = True
        self.eta[pos] = self.eta0
        self.increases[pos] = 0
        self.best_loss[pos] = -math.inf  # the first evaluation sets it
        # The "no improvement" condition needs a previous checkpoint: the reference code starts
        # as if eta had just been halved, which turns it off at the first checkpoint.
        self.reduced[pos] = True
        self.success[pos] = False
        self.success_t[pos] = -1
        self.zero_grad[pos] = False

    def release(self, positions: np.ndarray, results: APGDRecords) -> None:
        """Write the slots' outcome back to their examples, and free the slots.

        A restart only runs on examples not yet broken, so a success here is the example's
        first; otherwise the highest-loss point wins over earlier restarts'.
        """
        pos = torch.as_tensor(positions, device=self.idx.device)
        idx = self.idx[pos]
        success, best_loss = self.success[pos], self.best_loss[pos]
        higher = best_loss > results.loss[idx]
        keep = torch.where(rows(higher, self.best_x), self.best_x[pos], results.x[idx])
        results.x[idx] = torch.where(rows(success, self.adv_x), self.adv_x[pos], keep)
        results.loss[idx] = torch.maximum(results.loss[idx], best_loss)
        results.success[idx] |= success
        results.success_iteration[idx] = torch.where(success, self.success_t[pos], results.success_iteration[idx])
        results.iterations[idx] += self.t[pos]
        results.zero_grad[idx] |= self.zero_grad[pos]
        self.idx[pos] = self.pad
        self.alive[pos] = False
        self.busy[positions] = False


# --------------------------------------------------------------------------- the attack


def check_apgd_args(norm: str, eps: float, n_iter: int, loss: str, restarts: int, rho: float) -> None:
    if norm not in NORMS:
        raise UserError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    if not (eps > 0 and math.isfinite(eps)):
        raise UserError(f"eps must be positive and finite, got {eps}")
    if n_iter < 1:
        raise UserError(f"n_iter must be at least 1, got {n_iter}")
    if loss not in LOSSES:
        raise UserError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if restarts < 1:
        raise UserError(f"restarts must be at least 1, got {restarts}")
    if not 0 < rho <= 1:
        raise UserError(f"rho must be in (0, 1], got {rho}")


def _labels(y: torch.Tensor, target: torch.Tensor | None, loss: str, success_when: str,
            num_classes: int | None) -> torch.Tensor:
    """The engine's per-example (label, target class), validated."""
    needs_target = loss == "dlr-targeted" or success_when == "target"
    if needs_target and target is None:
        raise UserError(f"loss {loss!r} with success {success_when!r} needs a target class per example")
    if target is None:
        return torch.stack([y, y], 1)
    if target.shape != y.shape or target.dtype != torch.long:
        raise UserError(f"targets must be a long tensor shaped like the labels {tuple(y.shape)}, "
                        f"got {target.dtype} {tuple(target.shape)}")
    check_targets(target, num_classes)
    if len(y) and bool((target == y).any()):  # one host read per call
        raise UserError("a target class equals the true label; targets must be other classes")
    return torch.stack([y, target], 1)


def apgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float,
    n_iter: int = 100,
    loss: str = "ce",
    target: torch.Tensor | None = None,
    restarts: int = 1,
    rho: float = 0.75,
    success_when: str | None = None,
    random_start: bool = True,
    x_init: torch.Tensor | None = None,
    retire: bool = True,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    compile: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    refill_every: int = 1,
) -> EnsembleResult:
    """APGD on every example of x (N, ...) in [0, 1] with true labels y (N,).

    loss: "ce", "dlr", or "dlr-targeted" with `target` (N,) classes. success_when:
    "misclassified" (the default for untargeted losses) or "target" (the default for
    "dlr-targeted": the target class is predicted); AutoAttack's APGD-T counts any
    misclassification. retire=True stops an example at its first success (its slot is
    refilled); False runs every example for all n_iter steps (same results, more cost).
    restarts: further runs from new random starts on the examples not yet broken.
    x_init (N, ...): where the first restart starts (projected onto the ball), instead of a
    random point; later restarts start at random points (or at x when random_start=False).
    progress(examples_finished, image_steps) is called as slots finish.
    """
    check_apgd_args(norm, eps, n_iter, loss, restarts, rho)
    success_when = success_when or ("target" if loss == "dlr-targeted" else "misclassified")
    if success_when not in SUCCESS:
        raise UserError(f"success_when must be one of {', '.join(SUCCESS)}, got {success_when!r}")
    if refill_every < 1:
        raise UserError(f"refill_every must be at least 1, got {refill_every}")
    check_targets(y, getattr(model, "num_classes", None))
    labels = _labels(y, target, loss, success_when, getattr(model, "num_classes", None))
    if x_init is not None and x_init.shape != x.shape:
        raise UserError(f"x_init must be shaped like x {tuple(x.shape)}, got {tuple(x_init.shape)}")
    n, device = len(x), x.device
    start_time = time.perf_counter()
    threat = make_threat(norm, eps, RANDOM_START[norm] if random_start else "none")
    plan = Plan(threat, APGDLoss(loss, success_when), n_iter, window_table(n_iter, device), rho, retire,
                refill_every)
    results = APGDRecords(x)
    # The slots hold images in the model's layout (channels_last), so no step copies them.
    x0p = prepare_input(results.x.clone())
    labelsp = torch.cat([labels, labels[:1] if n else labels.new_zeros(1, 2)])
    width = n if batch_size is None else max(1, min(batch_size, n))
    state = {"image_steps": 0, "finished": 0}
    with frozen(model):
        forward = frozen_view(model, compile, device)
        for restart in range(restarts):
            queue = np.arange(n) if restart == 0 else np.flatnonzero(~results.success[:n].cpu().numpy())
            if len(queue):
                # Starts for the whole queue, in its order: independent of width and retirement.
                if restart == 0 and x_init is not None:
                    starts = threat.project(prepare_input(x_init.float()), x0p[:n])
                else:
                    starts = threat.random_start(x0p[torch.as_tensor(queue, device=device)], generator)
                _run_restart(forward, plan, queue, starts, x0p, labelsp, results, width, restart == 0, progress,
                             state)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return EnsembleResult(results.x[:n], results.success[:n], results.loss[:n], results.iterations[:n],
                      results.success_iteration[:n], results.zero_grad[:n], state["image_steps"],
                      time.perf_counter() - start_time, target=None if target is None else target.clone())


def _run_restart(forward, plan: Plan, queue: np.ndarray, starts: torch.Tensor, x0p, labelsp, results: APGDRecords,
                 width: int, first_restart: bool, progress, state: dict) -> None:
    """One restart: run the examples of `queue` through a slot batch until all are done."""
    slots = APGDSlots(min(width, len(queue)), x0p, labelsp, len(x0p) - 1, 2.0 * plan.threat.eps)

    def fill(free, first, count):
        examples = torch.as_tensor(queue[first:first + count], device=x0p.device)
        slots.fill(free, examples, starts[first:first + count], x0p, labelsp)

    drain_queue(slots, queue, plan.n_iter, plan.retire, plan.refill_every, fill,
                lambda: _step(forward, slots, plan, first_restart, state), results, progress, state)


def _step(forward, slots: APGDSlots, plan: Plan, first_restart: bool, state: dict) -> None:
    """One APGD iteration for every slot, each at its own k: evaluate x_k, record it, maybe halve
    the step size at a checkpoint, retire, and step to x_{k+1}."""
    busy = slots.busy
    if (slots.t_host[busy] >= plan.n_iter).all():  # every busy slot is at its last iterate: no step follows
        value, success = objective_only(forward, slots.x, slots.labels, plan.objective)
        grad = None
    else:
        value, success, grad = objective_and_gradient(forward, slots.x, slots.labels, plan.objective)
        state["image_steps"] += slots.width
    alive = slots.alive
    fresh = alive & (slots.t == 0)
    _record_success(slots, alive & success)
    _record_loss(slots, alive, fresh, value, grad)
    if first_restart and grad is not None and (slots.t_host[busy] == 0).any():
        slots.zero_grad |= fresh & (batch_l2_norm(grad) == 0)
    if grad is not None:
        grad = _checkpoint(slots, alive, grad, plan.windows, plan.rho)
    done = (slots.t >= plan.n_iter) | (slots.success if plan.retire else torch.zeros_like(alive))
    slots.alive = alive & ~done
    slots.t = slots.t + slots.alive
    slots.t_host[busy] += 1
    if grad is not None:
        _momentum_step(slots, grad, fresh, plan.threat)


def _record_success(slots: APGDSlots, success: torch.Tensor) -> None:
    """Keep each example's first successful iterate (retirement stops there anyway, so with
    or without it the attack returns the same point)."""
    first = success & ~slots.success
    slots.adv_x = torch.where(rows(first, slots.x), slots.x, slots.adv_x)
    slots.success_t = torch.where(first, slots.t, slots.success_t)
    slots.success = slots.success | first


def _record_loss(slots: APGDSlots, alive, fresh, value: torch.Tensor, grad: torch.Tensor | None) -> None:
    """Count loss increases since the last checkpoint; keep the highest-loss point and its gradient."""
    slots.increases = slots.increases + (alive & ~fresh & (value > slots.loss_prev))
    slots.loss_prev = torch.where(alive, value, slots.loss_prev)
    higher = alive & (fresh | (value > slots.best_loss))
    slots.best_x = torch.where(rows(higher, slots.x), slots.x, slots.best_x)
    slots.best_loss = torch.where(higher, value, slots.best_loss)
    if grad is not None:
        slots.best_grad = torch.where(rows(higher, grad), grad, slots.best_grad)
    # The start is checkpoint 0: "has the best loss improved since" compares with its loss.
    slots.check_loss = torch.where(fresh, value, slots.check_loss)


def _checkpoint(slots: APGDSlots, alive, grad: torch.Tensor, windows: torch.Tensor, rho: float) -> torch.Tensor:
    """At a slot's checkpoint: halve eta and jump back to the best point (and its gradient) if
    the loss rose in at most rho of the window's steps (it oscillates), or if eta was not halved
    at the last checkpoint and the best loss has not improved since (it stalls). Returns the
    gradient to step along."""
    window = windows[slots.t.clamp(max=len(windows) - 1)]
    at_check = alive & (window > 0)
    oscillates = slots.increases <= rho * window  # <=, as the reference code (the paper writes <)
    stalls = ~slots.reduced & (slots.best_loss <= slots.check_loss)
    halve = at_check & (oscillates | stalls)
    slots.eta = torch.where(halve, slots.eta / 2, slots.eta)
    slots.x = torch.where(rows(halve, slots.x), slots.best_x, slots.x)
    slots.reduced = torch.where(at_check, halve, slots.reduced)
    slots.check_loss = torch.where(at_check, slots.best_loss, slots.check_loss)
    slots.increases = torch.where(at_check, 0, slots.increases)
    return torch.where(rows(halve, grad), slots.best_grad, grad)


def _momentum_step(slots: APGDSlots, grad: torch.Tensor, fresh: torch.Tensor, threat: ThreatModel) -> None:
    """x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})), z = P(x_k + eta d(grad));
    a = 1 on an example's first step (no previous step to follow)."""
    x, x0 = slots.x, slots.x0
    grad = grad.float()
    if threat.name == "linf":
        direction = grad.sign()
    else:
        direction = grad / rows(batch_l2_norm(grad).clamp(min=1e-12), grad)
    z = threat.project(x + rows(slots.eta, x) * direction, x0)
    a = rows(torch.where(fresh, 1.0, MOMENTUM), x)
    slots.x_prev, slots.x = x, threat.project(x + a * (z - x) + (1 - a) * (x - slots.x_prev), x0)


# --------------------------------------------------------------------------- targeted, over classes


def apgd_targeted(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float,
    n_iter: int = 100,
    n_target_classes: int = 9,
    restarts: int = 1,
    success_when: str = "misclassified",
    clean_logits: torch.Tensor | None = None,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    compile: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EnsembleResult:
    """APGD-T: APGD with the targeted DLR loss toward each of the top n_target_classes classes
    (by the clean logits, true class left out), each target run only on the examples that no
    earlier target broke. result.target is the class of the run that broke each example (of
    the last run for the unbroken; -1 where no run reached the example).
    Success is any misclassification by default, as in AutoAttack."""
    check_apgd_args(norm, eps, n_iter, "dlr-targeted", restarts, 0.75)
    targets = attack_targets(model, x, y, n_target_classes, clean_logits, batch_size, compile)
    n, device = len(x), x.device
    merged = EnsembleResult(x.clone(), torch.zeros(n, dtype=torch.bool, device=device), torch.full((n,), -math.inf,
                        device=device), torch.zeros(n, dtype=torch.long, device=device),
                        torch.full((n,), -1, dtype=torch.long, device=device),
                        torch.zeros(n, dtype=torch.bool, device=device), 0, 0.0,
                        target=torch.full((n,), -1, dtype=torch.long, device=device))
    for rank in range(n_target_classes):
        index = torch.nonzero(~merged.success).flatten()  # one host read per target class
        if not len(index):
            break
        run = apgd(model, x[index], y[index], norm=norm, eps=eps, n_iter=n_iter, loss="dlr-targeted",
                   target=targets[index, rank], restarts=restarts, success_when=success_when,
                   batch_size=batch_size, generator=generator, compile=compile, progress=progress)
        _merge(merged, run, index, first_run=rank == 0)
    return merged


def _merge(merged: EnsembleResult, run: EnsembleResult, index: torch.Tensor, first_run: bool) -> None:
    """Fold the run of one target class (on `index`, all unbroken) into the running result."""
    merged.x_adv[index] = run.x_adv
    merged.success[index] = run.success
    merged.loss[index] = run.loss
    merged.iterations[index] += run.iterations
    merged.success_iteration[index] = run.success_iteration
    if first_run:
        merged.zero_grad[index] = run.zero_grad
    merged.target[index] = run.target
    merged.image_steps += run.image_steps
    merged.seconds += run.seconds
