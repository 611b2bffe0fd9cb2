"""The slot engine that PGD and APGD share, and the one batched forward pass of an attack.

The engine keeps a batch of "slots" busy: each slot holds one example at its own step, and a
slot whose example has finished (all steps done, or succeeded when retiring) is refilled from
the queue. A 2,500-step attack then never pays for solved images, and the model always sees
full batches. Written for accelerators and for torch.compile:
- **Fixed shapes.** The batch keeps its width; empty slots hold a padding example whose
  results are never read. Once the queue is empty the batch shrinks to a ladder of widths
  (width, width/2, width/4, ...), so a draining queue compiles a bounded number of graphs.
- **Masks, not host decisions.** Per-step bookkeeping runs on the device with masks. The
  host knows each slot's step count by itself; only retirement (success) lives on the
  device, and it is read back once every `refill_every` steps: at most one host-device sync
  per step, none at all without retirement.
An attack brings its own `Slots` subclass (its per-slot device state), a `fill` and a `step`;
`drain_queue` runs them. The model runs through `frozen_view` (eval mode, batch norm folded,
channels_last, compiled if asked), under bf16 autocast on CUDA; perturbed images stay fp32.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from advfeat.attacks.forward import frozen, frozen_view
from advfeat.attacks.objectives import Objective
from advfeat.errors import UserError
from advfeat.runtime import autocast, prepare_input


# --------------------------------------------------------------------------- the model


@torch.no_grad()
def batched_forward(model: torch.nn.Module, x: torch.Tensor, batch_size: int | None, *,
                    features: bool = False, compile: bool | None = False) -> torch.Tensor:
    """fp32 logits (or, with features=True, the penultimate representation g(x)) of the model
    at images x (N, ...) already on its device, batch_size images at a time, as attacks see it."""
    step = max(1, batch_size or len(x) or 1)
    out = []
    with frozen(model):
        forward = frozen_view(model, compile, x.device)
        for i in range(0, len(x), step):
            with autocast(x.device):
                if features:
                    out.append(forward(prepare_input(x[i:i + step]), return_features=True)[1].float())
                else:
                    out.append(forward(prepare_input(x[i:i + step])).float())
    if out:
        return torch.cat(out)
    width = getattr(model, "feature_dim" if features else "num_classes", 0)
    return torch.zeros(0, width, device=x.device)


def _model_outputs(forward, x: torch.Tensor, objective: Objective):
    """(logits fp32, features fp32 or None) of the model at x."""
    with autocast(x.device):
        if objective.needs_features:
            flags = {"fake_relu": True} if objective.fake_relu else {}
            logits, features = forward(prepare_input(x), return_features=True, **flags)
            return logits.float(), features.float()
        return forward(prepare_input(x)).float(), None


def objective_and_gradient(forward, x: torch.Tensor, target: torch.Tensor, objective: Objective):
    """(objective [B], success [B] or None, d objective / d x) at x."""
    x = x.detach().requires_grad_(True)
    logits, features = _model_outputs(forward, x, objective)
    value = objective(logits, features, target)
    (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), objective.succeeded(logits.detach(), target), grad


@torch.no_grad()
def objective_only(forward, x: torch.Tensor, target: torch.Tensor, objective: Objective):
    """(objective [B], success [B] or None) at x: a forward pass, no gradient."""
    logits, features = _model_outputs(forward, x, objective)
    return objective(logits, features, target), objective.succeeded(logits, target)


def check_targets(target: torch.Tensor, num_classes: int | None) -> None:
    if target.dtype == torch.long and num_classes is not None and len(target):
        low, high = torch.stack(torch.aminmax(target)).tolist()  # one host read for both
        if low < 0 or high >= num_classes:
            raise UserError(f"targets must be classes 0..{num_classes - 1}, got values in [{low}, {high}]")



def top_classes(logits: torch.Tensor, y: torch.Tensor, count: int) -> torch.Tensor:
    """(N, count): each example's classes by decreasing clean logit, its true class left out."""
    return logits.float().scatter(1, y[:, None], -math.inf).argsort(1, descending=True)[:, :count]


def attack_targets(model, x: torch.Tensor, y: torch.Tensor, n_target_classes: int,
                   clean_logits: torch.Tensor | None, batch_size: int | None, compile: bool | None) -> torch.Tensor:
    """The target classes of a targeted attack (APGD-T, FAB-T): per example the n_target_classes
    classes of highest clean logit, the true one left out; [N, n_target_classes]. The clean
    logits are computed when not given; an n outside 1..classes-1 is one line."""
    if clean_logits is None:
        clean_logits = batched_forward(model, x, batch_size, compile=compile)
    classes = clean_logits.shape[1]
    if not 1 <= n_target_classes < classes:
        raise UserError(f"n_target_classes must be in 1..{classes - 1} (the model has {classes} classes), "
                        f"got {n_target_classes}")
    return top_classes(clean_logits, y, n_target_classes)


# --------------------------------------------------------------------------- the slot batch


def rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-slot mask shaped to broadcast over per-slot images."""
    return mask.view(-1, *[1] * (like.dim() - 1))


class Slots:
    """What every slot batch shares (PGD's here, APGD's in apgd.py): `width` slots whose device
    state is the tensors named in FIELDS (one row per slot), and host state per slot: busy, and
    steps taken (exact for every busy slot that has not retired)."""

    FIELDS: tuple[str, ...] = ()
    width: int
    busy: np.ndarray
    t_host: np.ndarray

    def start_slots(self, width: int, x0p: torch.Tensor, labelsp: torch.Tensor, pad: int) -> None:
        """The state every labelled slot batch has: per slot an example index (`pad`, the spare
        row, when empty), its clean image and label on the device; busy and steps on the host."""
        device = x0p.device
        self.width, self.pad = width, pad
        self.idx = torch.full((width,), pad, dtype=torch.long, device=device)
        self.x0 = x0p[self.idx].clone()
        self.labels = labelsp[self.idx].clone()
        self.busy = np.zeros(width, dtype=bool)
        self.t_host = np.zeros(width, dtype=np.int64)

    def take(self, positions: np.ndarray, examples: torch.Tensor, x0p: torch.Tensor, labelsp: torch.Tensor
             ) -> torch.Tensor:
        """Put examples (index, clean image, label) into the slots at `positions`, busy at step 0;
        returns the positions as a device tensor for the attack's own fields."""
        pos = torch.as_tensor(positions, device=self.idx.device)
        self.idx[pos] = examples
        self.x0[pos] = x0p[examples]
        self.labels[pos] = labelsp[examples]
        self.busy[positions] = True
        self.t_host[positions] = 0
        return pos

    def shrink(self, width: int) -> None:
        """Keep the busy slots, in order, in a batch of `width` slots (width >= busy slots)."""
        keep = np.flatnonzero(self.busy)
        order = np.concatenate([keep, np.flatnonzero(~self.busy)])[:width]
        index = torch.as_tensor(order, device=self.idx.device)
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name)[index])
        self.busy, self.t_host, self.width = self.busy[order], self.t_host[order], width


def read_alive(slots: Slots) -> np.ndarray:
    """The device's alive flags on the host: the engine's only host-device sync in a step."""
    return slots.alive.cpu().numpy()


def ladder_width(width: int, busy: int) -> int:
    """The smallest of width, width/2, width/4, ... (rounded up) that holds `busy` slots."""
    while width > 1 and -(-width // 2) >= busy:
        width = -(-width // 2)
    return width


def drain_queue(slots: Slots, queue: np.ndarray, n_steps: int, retire: bool, refill_every: int, fill: Callable,
                step: Callable, results, progress, state: dict) -> None:
    """Run the examples of `queue` through `slots` until every one is done: the loop that PGD and
    APGD share. fill(free_slots, first, count) puts queue[first:first + count] into those slots;
    step() advances every busy slot by one iteration."""
    taken, iteration = 0, 0
    while True:
        # Free the slots whose examples finished: by step count (the host knows), or by
        # retiring (read back from the device every refill_every steps: the one sync).
        finished = slots.busy & (slots.t_host > n_steps)
        if retire and iteration % refill_every == 0:
            finished |= slots.busy & ~read_alive(slots)
        if finished.any():
            slots.release(np.flatnonzero(finished), results)
            state["finished"] += int(finished.sum())
            if progress is not None:
                progress(state["finished"], state["image_steps"])
        free = np.flatnonzero(~slots.busy)
        if len(free) and taken < len(queue):
            count = min(len(free), len(queue) - taken)
            fill(free[:count], taken, count)
            taken += count
        busy = int(slots.busy.sum())
        if busy == 0:
            return
        if taken == len(queue) and ladder_width(slots.width, busy) < slots.width:
            slots.shrink(ladder_width(slots.width, busy))
        step()
        iteration += 1
