"""FAB, the fast adaptive boundary attack (Croce & Hein 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack", ICML), targeted (FAB-T) and untargeted, L2 and
Linf, on the slot engine (engine.py).

FAB looks for the smallest perturbation that crosses the decision boundary. Per example, from
x_1 = x0 (or, on a restart, a random point at distance eps/2 from x0), for k = 1..n_iter:
1. linearize the boundary at x_k: for FAB-T the one between the true class y and the target t,
   f(x) = z_t(x) - z_y(x) ~ f(x_k) + <grad f(x_k), x - x_k>; untargeted, the boundary of the
   class s != y closest in the linear model, s = argmin |f_s(x_k)| / ||grad f_s(x_k)||_q (q the
   dual norm: L1 for Linf, L2 for L2);
2. project x_k and x0 onto that hyperplane intersected with the box [0, 1]^n, in the attack's
   norm (`project_l2`, `project_linf`: exact, one sort per example): steps d1 (from x_k), d2
   (from x0);
3. bias toward x0: alpha = clip(||d1|| / (||d1|| + ||d2||), 0, alpha_max), and extrapolate by eta:
   x_{k+1} = clip((1 - alpha)(x_k + eta d1) + alpha (x0 + eta d2), 0, 1);
4. if x_{k+1} is misclassified: keep it when it is the closest adversarial point so far, and
   step back toward x0, x_{k+1} = x0 + beta (x_{k+1} - x0).
Defaults are the reference implementation's (fra31/auto-attack, fab_base.py; AutoAttack's
standard version runs FAB-T): n_iter 100, alpha_max 0.1, eta 1.05, beta 0.9, 9 target classes
(the classes of highest clean logit after the true one, one run each, each on the examples
the earlier ones did not break), 1 restart per target class (no random start); the untargeted
FAB of the "plus" version: 5 restarts, random starts from the second on.

In the engine: every piece of FAB's state is per example (x_k, the closest adversarial point
and its norm, k), so a slot holds one example at its own k and is refilled from the queue when
its example finishes. Each step is one forward+backward pass at x_k (one backward per class
for the untargeted attack) and one forward pass at x_{k+1} (is it misclassified?), fixed
shapes, masks instead of host decisions, at most one host read per step (which slots retired).

Deviations from the reference code (fab_base.py, fab_projections.py):
- **Retirement.** With retire=True and an eps, an example stops at the first iterate that is
  misclassified within eps: its robust-accuracy verdict cannot change after that (a later,
  closer point is still within eps). The reference runs all n_iter iterations. So x_adv is
  the first point found within eps, not the closest one; `distance` is its norm. With
  retire=False (or eps=None) FAB runs all iterations and returns the closest point, as the
  reference does.
- **Projections** are written from the problem, not ported: min ||d|| s.t. <w, t + d> = b,
  0 <= t + d <= 1 is solved exactly by sorting the points where coordinates reach their box
  faces and finding the multiplier on the piecewise-linear constraint with cumulative sums
  (one pass, no bisection loop); when no point of the box meets the hyperplane both return the
  box corner nearest to it, as the reference does.
- **Random starts** (restarts after the first) come from `generator`, drawn for the whole queue
  in its order, so results do not depend on the batch width; the reference reseeds torch's
  global generator.
- **Results across runs** (targets, restarts) keep each example's closest adversarial point;
  a run only attacks examples not yet broken within eps, as in the reference.
- The model runs as every advfeat attack runs it (frozen view: batch norm folded,
  channels_last, bf16 autocast on CUDA); perturbations, gradients and projections are fp32.
- L1 FAB is not implemented: norm must be "l2" or "linf".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from advfeat.attacks.engine import Slots, attack_targets, drain_queue, rows
from advfeat.attacks.forward import frozen, frozen_view
from advfeat.attacks.results import EnsembleResult
from advfeat.errors import UserError
from advfeat.runtime import autocast, prepare_input

FAB_NORMS = ("l2", "linf")
RANDOM_START_SCALE = 0.5  # a restart starts at distance eps/2 from x0, as the reference


@dataclass
class FABResult(EnsembleResult):
    """EnsembleResult with FAB's own record: `distance` (N,), the norm of x_adv - x0 of the
    adversarial point kept (inf where none was found). `loss` is -distance."""

    distance: torch.Tensor | None = None


# --------------------------------------------------------------------------- projections


def _oriented(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w, c) with the hyperplane's sign flipped so that c = <w, t> - b >= 0: the step must
    lower <w, .> by c."""
    c = (w * t).sum(1) - b
    sign = torch.where(c >= 0, 1.0, -1.0)
    return w * sign[:, None], c * sign


def _multiplier(reach: torch.Tensor, weight: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve h(m) = sum_i weight_i min(m, reach_i) = c for m >= 0 (h is increasing, concave,
    piecewise linear with kinks at reach_i). Returns (m, feasible); feasible is False where
    c > h(inf) (m is then inf). Sort the kinks; h at each kink from cumulative sums; the
    number of kinks below c says which linear piece holds the solution."""
    reach_s, order = reach.sort(1)
    weight_s = weight.gather(1, order)
    below = torch.cumsum(weight_s * reach_s, 1)  # sum over kinks <= this one of weight * reach
    # The weight of the kinks after each one, as suffix sums: exactly 0 after the last active
    # kink (total - cumsum would leave rounding there, times a 1e12 kink).
    suffix = torch.cumsum(weight_s.flip(1), 1).flip(1)
    above = torch.cat([suffix[:, 1:], torch.zeros_like(suffix[:, :1])], 1)
    h = below + reach_s * above
    passed = (h < c[:, None]).sum(1)  # kinks before the solution
    feasible = passed < reach.shape[1]
    at = (passed - 1).clamp(min=0)[:, None]
    done = torch.where(passed > 0, below.gather(1, at).squeeze(1), torch.zeros_like(c))
    slope = torch.where(passed > 0, above.gather(1, at).squeeze(1), weight.sum(1))
    m = (c - done) / slope.clamp(min=1e-30)
    return torch.where(feasible, m, torch.full_like(m, math.inf)), feasible


def project_l2(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The step d (B, n) of least L2 norm with <w, t + d> = b and 0 <= t + d <= 1 (t, w: (B, n),
    b: (B,)). KKT: d_i = clip(-lam w_i, -t_i, 1 - t_i); coordinate i reaches its face at
    lam = r_i (t_i / w_i, or (t_i - 1) / w_i for w_i < 0), and <w, d> = -sum w_i^2 min(lam, r_i).
    Coordinates with |w_i| <= 1e-8 do not move (the reference's threshold)."""
    w, c = _oriented(t, w, b)
    active = w.abs() > 1e-8
    safe_w = torch.where(active, w, torch.ones_like(w))
    reach = torch.where(active, torch.where(w > 0, t / safe_w, (t - 1) / safe_w), torch.full_like(w, 1e12))
    lam, _ = _multiplier(reach.clamp(min=0), torch.where(active, w * w, torch.zeros_like(w)), c)
    d = torch.maximum(torch.minimum(-torch.minimum(lam[:, None], reach) * w, 1 - t), -t)
    return d * active


def project_linf(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The step d (B, n) of least Linf norm with <w, t + d> = b and 0 <= t + d <= 1. At radius
    delta the most a step can lower <w, .> is sum |w_i| min(delta, m_i), m_i the room toward
    -sign(w_i) (t_i, or 1 - t_i for w_i < 0); d_i = -sign(w_i) min(delta, m_i). Coordinates with
    w_i = 0 do not move."""
    w, c = _oriented(t, w, b)
    room = torch.where(w > 0, t, 1 - t)
    delta, _ = _multiplier(room, w.abs(), c)
    return -torch.sign(w) * torch.minimum(delta[:, None], room)


PROJECTIONS = {"l2": project_l2, "linf": project_linf}


def flat_norm(d: torch.Tensor, norm: str) -> torch.Tensor:
    """(B,) the L2 or Linf norm of each row of d (B, ...)."""
    d = d.flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.square().sum(1).sqrt()


# --------------------------------------------------------------------------- the slot batch


class FABRecords:
    """Per example, over runs (restarts, target classes); row n is the padding slots' spare."""

    def __init__(self, x0: torch.Tensor):
        n, device = len(x0), x0.device
        self.x = torch.cat([x0, x0.new_zeros(1, *x0.shape[1:])])
        self.distance = torch.full((n + 1,), math.inf, device=device)
        self.success_iteration = torch.full((n + 1,), -1, dtype=torch.long, device=device)
        self.iterations = torch.zeros(n + 1, dtype=torch.long, device=device)


class FABSlots(Slots):
    """One example per slot, each at its own iteration k. Device state per slot:
      idx, x0, labels        the example, its clean image, (label, target class)
      x                      x_k, to be linearized at the next step
      best_x, best_norm      the closest misclassified iterate so far (inf: none yet)
      t, alive               k, and busy-and-not-finished
      success_t              the iteration of the first misclassified iterate within eps (-1: none)
    Host state: busy, t_host."""

    FIELDS = ("idx", "x0", "labels", "x", "best_x", "best_norm", "t", "alive", "success_t")

    def __init__(self, width: int, x0p: torch.Tensor, labelsp: torch.Tensor, pad: int):
        device = x0p.device
        self.start_slots(width, x0p, labelsp, pad)
        self.x, self.best_x = self.x0.clone(), self.x0.clone()
        self.best_norm = torch.full((width,), math.inf, device=device)
        self.t = torch.zeros(width, dtype=torch.long, device=device)
        self.alive = torch.zeros(width, dtype=torch.bool, device=device)
        self.success_t = torch.full((width,), -1, dtype=torch.long, device=device)

    def fill(self, positions: np.ndarray, examples: torch.Tensor, start: torch.Tensor, x0p, labelsp) -> None:
        pos = self.take(positions, examples, x0p, labelsp)
        self.x[pos] = start
        self.best_x[pos] = x0p[examples]
        self.best_norm[pos] = math.inf
        self.t[pos] = 0
        self.alive[pos] = True
        self.success_t[pos] = -1

    def release(self, positions: np.ndarray, results: FABRecords) -> None:
        """Keep the closer adversarial point of this run and earlier ones; free the slots."""
        pos = torch.as_tensor(positions, device=self.idx.device)
        idx = self.idx[pos]
        closer = self.best_norm[pos] < results.distance[idx]
        results.x[idx] = torch.where(rows(closer, self.best_x), self.best_x[pos], results.x[idx])
        results.distance[idx] = torch.where(closer, self.best_norm[pos], results.distance[idx])
        first = (self.success_t[pos] >= 0) & (results.success_iteration[idx] < 0)
        results.success_iteration[idx] = torch.where(first, self.success_t[pos], results.success_iteration[idx])
        results.iterations[idx] += self.t[pos]
        self.idx[pos] = len(results.distance) - 1
        self.alive[pos] = False
        self.busy[positions] = False


@dataclass
class FABPlan:
    norm: str
    eps: float | None
    n_iter: int
    alpha_max: float
    eta: float
    beta: float
    targeted: bool
    retire: bool


# --------------------------------------------------------------------------- one step


def _boundary(forward, x: torch.Tensor, labels: torch.Tensor, plan: FABPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """(f (B,), grad f (B, n)) of the linearized boundary at x: z_t - z_y toward the target, or
    (untargeted) the class whose linearized boundary is nearest in the dual norm."""
    x = x.detach().requires_grad_(True)
    y, target = labels[:, 0], labels[:, 1]
    with torch.enable_grad(), autocast(x.device):
        logits = forward(prepare_input(x)).float()
    if plan.targeted:
        f = logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)
        (grad,) = torch.autograd.grad(f.sum(), x)
        return f.detach(), grad.float().flatten(1)
    classes = logits.shape[1]
    grads = torch.stack([torch.autograd.grad(logits[:, k].sum(), x, retain_graph=k < classes - 1)[0].float()
                         .flatten(1) for k in range(classes)], 1)  # (B, K, n): one backward per class
    f = (logits - logits.gather(1, y[:, None])).detach()
    g = grads - grads.gather(1, y[:, None, None].expand(-1, 1, grads.shape[2]))
    dual = g.abs().sum(2) if plan.norm == "linf" else g.square().sum(2).sqrt()
    distance = f.abs() / (dual + 1e-12)
    distance = distance.scatter(1, y[:, None], math.inf)  # the true class is no boundary
    s = distance.argmin(1)
    return f.gather(1, s[:, None]).squeeze(1), g[torch.arange(len(s), device=x.device), s]


def _step(forward, slots: FABSlots, plan: FABPlan, state: dict) -> None:
    """One FAB iteration for every slot, each at its own k."""
    x, x0, alive = slots.x, slots.x0, slots.alive
    f, w = _boundary(forward, x, slots.labels, plan)
    state["image_steps"] += slots.width
    flat_x, flat_x0 = x.flatten(1).float(), x0.flatten(1).float()
    b = (w * flat_x).sum(1) - f  # the hyperplane <w, z> = b, the zero set of the linearization at x
    project = PROJECTIONS[plan.norm]
    d = project(torch.cat([flat_x, flat_x0]), torch.cat([w, w]), torch.cat([b, b]))  # (2B, n): from x, from x0
    size = flat_norm(d, plan.norm).clamp(min=1e-8).view(2, len(x))
    d = d.view(2, *x.shape)
    alpha = rows((size[0] / (size[0] + size[1])).clamp(0, plan.alpha_max), x)
    moved = ((1 - alpha) * (x + plan.eta * d[0]) + alpha * (x0 + plan.eta * d[1])).clamp(0, 1)
    with torch.no_grad(), autocast(x.device):
        adversarial = forward(prepare_input(moved)).float().argmax(1) != slots.labels[:, 0]
    found = alive & adversarial
    dist = flat_norm(moved - x0, plan.norm)
    closer = found & (dist < slots.best_norm)
    slots.best_x = torch.where(rows(closer, x), moved, slots.best_x)
    slots.best_norm = torch.where(closer, dist, slots.best_norm)
    slots.t = slots.t + alive
    if plan.eps is not None:
        first = found & (dist <= plan.eps) & (slots.success_t < 0)
        slots.success_t = torch.where(first, slots.t, slots.success_t)
    stepped = torch.where(rows(found, x), x0 + plan.beta * (moved - x0), moved)
    slots.x = torch.where(rows(alive, x), stepped, x)
    done = slots.t >= plan.n_iter
    if plan.retire and plan.eps is not None:
        done = done | (slots.success_t >= 0)
    slots.alive = alive & ~done
    slots.t_host[slots.busy] += 1


# --------------------------------------------------------------------------- the attack


def check_fab_args(norm: str, eps: float | None, n_iter: int, restarts: int, alpha_max: float, eta: float,
                   beta: float) -> None:
    if norm not in FAB_NORMS:
        raise UserError(f"FAB supports the norms {', '.join(FAB_NORMS)}, not {norm!r}")
    if eps is not None and not (eps > 0 and math.isfinite(eps)):
        raise UserError(f"eps must be positive and finite, got {eps}")
    if n_iter < 1:
        raise UserError(f"n_iter must be at least 1, got {n_iter}")
    if restarts < 1:
        raise UserError(f"restarts must be at least 1, got {restarts}")
    if restarts > 1 and eps is None:
        raise UserError("FAB's random restarts start at distance eps/2: give an eps")
    if not 0 <= alpha_max <= 1 or not eta >= 1 or not 0 < beta <= 1:
        raise UserError(f"FAB needs 0 <= alpha_max <= 1, eta >= 1, 0 < beta <= 1; got {alpha_max}, {eta}, {beta}")


def random_starts(x0: torch.Tensor, norm: str, eps: float, generator) -> torch.Tensor:
    """x0 + (eps / 2) u / ||u|| (u uniform in the Linf box, Gaussian for L2), clipped to [0, 1]."""
    if norm == "linf":
        u = torch.rand(x0.shape, generator=generator, device=x0.device) * 2 - 1
    else:
        u = torch.randn(x0.shape, generator=generator, device=x0.device)
    scale = RANDOM_START_SCALE * eps / flat_norm(u, norm).clamp(min=1e-12)
    return (x0 + rows(scale, u) * u).clamp(0, 1)


def fab(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float | None = None,
    target: torch.Tensor | None = None,
    n_iter: int = 100,
    restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    retire: bool = True,
    refill_every: int = 1,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    compile: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FABResult:
    """FAB on images x (N, C, H, W) in [0, 1] with labels y (N,), on the model's device.

    target (N,) long: FAB-T toward these classes (one boundary, one backward per step); None:
    untargeted (one backward per class per step). eps: the radius that counts as success (and
    of the random starts); None: pure minimal-norm search, every example runs n_iter steps.
    restarts: runs after the first start at random points, on the examples not yet broken.
    Returns FABResult: x_adv (the adversarial point kept, x where none), success (misclassified
    within eps; any misclassified point when eps is None), distance, iterations,
    success_iteration (the step that found it), image_steps (rows of gradient passes; each
    step also runs one forward pass of the same rows), seconds, target.
    """
    check_fab_args(norm, eps, n_iter, restarts, alpha_max, eta, beta)
    if x.dim() < 2 or y.shape != (len(x),):
        raise UserError(f"FAB needs images (N, ...) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if target is not None and (target.shape != y.shape or bool((target == y).any())):
        raise UserError("FAB-T needs one target class per example, different from its label")
    n, device = len(x), x.device
    start_time = time.perf_counter()
    plan = FABPlan(norm, eps, n_iter, alpha_max, eta, beta, target is not None, retire)
    records = FABRecords(x.float())
    x0p = prepare_input(records.x.clone())
    labels = torch.stack([y, y if target is None else target], 1)
    labelsp = torch.cat([labels, labels.new_zeros(1, 2)])
    width = n if batch_size is None else max(1, min(batch_size, n))
    state = {"image_steps": 0, "finished": 0}
    with frozen(model):
        forward = frozen_view(model, compile, device)
        for restart in range(restarts):
            broken = records.distance[:n] <= (math.inf if eps is None else eps)
            queue = np.arange(n) if restart == 0 else np.flatnonzero(~broken.cpu().numpy())
            if not len(queue):
                break
            picked = x0p[torch.as_tensor(queue, device=device)]
            starts = picked if restart == 0 else random_starts(picked, norm, eps, generator)
            _run_queue(forward, plan, queue, starts, x0p, labelsp, records, width, refill_every, progress, state)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    distance = records.distance[:n]
    success = torch.isfinite(distance) if eps is None else distance <= eps
    return FABResult(records.x[:n].contiguous(), success, -distance, records.iterations[:n],
                     records.success_iteration[:n], torch.zeros_like(success), state["image_steps"],
                     time.perf_counter() - start_time, target=None if target is None else target.clone(),
                     distance=distance)


def _run_queue(forward, plan: FABPlan, queue: np.ndarray, starts: torch.Tensor, x0p, labelsp, records: FABRecords,
               width: int, refill_every: int, progress, state: dict) -> None:
    slots = FABSlots(min(width, len(queue)), x0p, labelsp, len(x0p) - 1)

    def fill(free, first, count):
        examples = torch.as_tensor(queue[first:first + count], device=x0p.device)
        slots.fill(free, examples, starts[first:first + count], x0p, labelsp)

    # The engine frees a slot once its host step count exceeds n_steps; a FAB step both moves
    # and checks its new point, so n_iter steps are n_steps = n_iter - 1 in the engine's count.
    retire = plan.retire and plan.eps is not None
    drain_queue(slots, queue, plan.n_iter - 1, retire, refill_every, fill,
                lambda: _step(forward, slots, plan, state), records, progress, state)


def fab_targeted(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float | None,
    n_iter: int = 100,
    n_target_classes: int = 9,
    restarts: int = 1,
    clean_logits: torch.Tensor | None = None,
    **options,
) -> FABResult:
    """FAB-T as AutoAttack runs it: FAB toward each of the n_target_classes classes of highest
    clean logit (the true class left out), in that order, each run on the examples no earlier
    run broke (within eps). result.target: the class of the run that broke each example (-1:
    none did). options: as `fab` (batch_size, generator, retire, ...)."""
    check_fab_args(norm, eps, n_iter, restarts, options.get("alpha_max", 0.1), options.get("eta", 1.05),
                   options.get("beta", 0.9))
    targets = attack_targets(model, x, y, n_target_classes, clean_logits, options.get("batch_size"),
                             options.get("compile"))
    n, device = len(x), x.device
    merged = FABResult(x.clone().float(), torch.zeros(n, dtype=torch.bool, device=device),
                       torch.full((n,), -math.inf, device=device), torch.zeros(n, dtype=torch.long, device=device),
                       torch.full((n,), -1, dtype=torch.long, device=device),
                       torch.zeros(n, dtype=torch.bool, device=device), 0, 0.0,
                       target=torch.full((n,), -1, dtype=torch.long, device=device),
                       distance=torch.full((n,), math.inf, device=device))
    for rank in range(n_target_classes):
        index = torch.nonzero(~merged.success).flatten()  # one host read per target class
        if not len(index):
            break
        run = fab(model, x[index], y[index], norm=norm, eps=eps, target=targets[index, rank], n_iter=n_iter,
                  restarts=restarts, **options)
        closer = run.distance < merged.distance[index]
        merged.x_adv[index] = torch.where(rows(closer, run.x_adv), run.x_adv, merged.x_adv[index])
        merged.distance[index] = torch.minimum(run.distance, merged.distance[index])
        merged.loss[index] = -merged.distance[index]
        merged.success[index] = run.success
        merged.iterations[index] += run.iterations
        merged.success_iteration[index] = torch.where(run.success, run.success_iteration,
                                                      merged.success_iteration[index])
        merged.target[index] = torch.where(run.success, targets[index, rank], merged.target[index])
        merged.image_steps += run.image_steps
        merged.seconds += run.seconds
    return merged
