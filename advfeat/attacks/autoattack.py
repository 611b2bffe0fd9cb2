"""The AutoAttack ensemble (Croce & Hein 2020), on advfeat's APGD.

Per example, the worst case over attacks run one after the other, each only on the examples
every earlier one left robust:
    1. APGD-CE: APGD with the cross-entropy loss, `restarts_ce` random starts;
    2. APGD-T: APGD with the targeted DLR loss toward each of the n_target_classes classes of
       highest clean logit (the true class left out), one run per class;
    3. Square (optional, square=True): a black-box random search that needs no gradient at
       all, so gradient masking does not fool it.
Only correctly classified examples are attacked (the others count as broken, "clean"). An
example counts as broken by a stage when any iterate of it is misclassified (success_when
"misclassified" for APGD-T too, as in AutoAttack).

`autoattack` runs one eps and returns per-example records and RobustBench-style fields;
advfeat.evaluation.autoattack_accuracy runs a list of eps in the shape of robust_accuracy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from advfeat.attacks.apgd import apgd, apgd_targeted
from advfeat.attacks.engine import batched_forward
from advfeat.attacks.results import EnsembleResult
from advfeat.attacks.square import square_attack
from advfeat.errors import UserError
from advfeat.settings import NORMS

STAGES = ("apgd-ce", "apgd-t", "square")
CLEAN = "clean"  # the record of an example the model already misclassifies


def check_autoattack_args(norm: str, eps_list: list[float], n_iter: int, restarts_ce: int, n_target_classes: int,
                          num_classes: int | None = None, square_queries: int = 1) -> None:
    if norm not in NORMS:
        raise UserError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    if not eps_list or any(not (e > 0 and math.isfinite(e)) for e in eps_list):
        raise UserError(f"eps must be positive and finite, got {eps_list}")
    if n_iter < 1:
        raise UserError(f"n_iter must be at least 1, got {n_iter}")
    if restarts_ce < 1:
        raise UserError(f"restarts_ce must be at least 1, got {restarts_ce}")
    if n_target_classes < 1 or (num_classes is not None and n_target_classes >= num_classes):
        most = f"{num_classes - 1} (the model has {num_classes} classes)" if num_classes is not None else "classes - 1"
        raise UserError(f"n_target_classes must be in 1..{most}, got {n_target_classes}")
    if square_queries < 1:
        raise UserError(f"square_queries must be at least 1, got {square_queries}")


@dataclass
class Outcome:
    """The ensemble on a subset of examples (`index`), in the subset's order."""

    index: torch.Tensor  # (M,) example indices
    broken_by: list  # (M,) stage name or None
    iteration: list  # (M,) step (APGD) or query (Square) of the break, None when robust
    target: list  # (M,) APGD-T's target class where it broke the example, else None
    x_adv: torch.Tensor  # (M, ...) the breaking point, else the last stage's best point
    zero_grad: torch.Tensor  # (M,) bool: APGD-CE's gradient at its first start was exactly zero
    stages: list = field(default_factory=list)  # per stage: attacked, broken, seconds, image_steps

    @property
    def broken(self) -> torch.Tensor:
        return torch.tensor([b is not None for b in self.broken_by], dtype=torch.bool, device=self.index.device)


def run_ensemble(model, x, y, clean_logits, index: torch.Tensor, *, norm: str, eps: float, n_iter: int,
              restarts_ce: int, n_target_classes: int, square: bool, square_queries: int, batch_size, generator,
              compile, progress) -> Outcome:
    """Run the stages on x[index] (correctly classified examples), each on the survivors."""
    m = len(index)
    out = Outcome(index, [None] * m, [None] * m, [None] * m, x[index].clone(),
                  torch.zeros(m, dtype=torch.bool, device=x.device))
    common = dict(norm=norm, eps=eps, n_iter=n_iter, batch_size=batch_size, generator=generator, compile=compile,
                  progress=progress)

    def run_stage(name: str, attack: Callable[[torch.Tensor], EnsembleResult]) -> None:
        alive = torch.tensor([b is None for b in out.broken_by], dtype=torch.bool)
        local = torch.nonzero(alive).flatten().to(x.device)
        if not len(local):
            out.stages.append({"attack": name, "attacked": 0, "broken": 0, "seconds": 0.0, "image_steps": 0})
            return
        result = attack(index[local])
        out.x_adv[local] = result.x_adv
        success = result.success.cpu().tolist()  # one host read per stage
        iteration = result.success_iteration.cpu().tolist()
        target = result.target.cpu().tolist() if result.target is not None else [None] * len(local)
        for j, pos in enumerate(local.cpu().tolist()):
            if success[j]:
                out.broken_by[pos], out.iteration[pos] = name, iteration[j]
                out.target[pos] = target[j] if name == "apgd-t" else None
        out.stages.append({"attack": name, "attacked": len(local), "broken": int(sum(success)),
                           "seconds": round(result.seconds, 3), "image_steps": result.image_steps})
        if name == "apgd-ce":
            out.zero_grad[local] = result.zero_grad

    run_stage("apgd-ce", lambda i: apgd(model, x[i], y[i], loss="ce", restarts=restarts_ce, **common))
    run_stage("apgd-t", lambda i: apgd_targeted(model, x[i], y[i], n_target_classes=n_target_classes,
                                                clean_logits=clean_logits[i], **common))
    if square:
        run_stage("square", lambda i: square_attack(model, x[i], y[i], norm=norm, eps=eps, n_queries=square_queries,
                                                    batch_size=batch_size, generator=generator, compile=compile))
    return out


def autoattack(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float,
    n_iter: int = 100,
    restarts_ce: int = 1,
    n_target_classes: int = 9,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    compile: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    square: bool = False,
    square_queries: int = 5000,
) -> dict:
    """The ensemble at one eps on (x, y) (tensors on the model's device).

    Returns {"norm", "eps", "n", "n_iter", "clean_accuracy", "robust_accuracy",
    "records": per example {"attack": "clean" | "apgd-ce" | "apgd-t" | "square" | None (robust),
    "iteration": the step or query of the break (0: the random start), "target": APGD-T's
    class}, "robust": (N,) bool tensor, "x_adv": (N, ...) the breaking point of each broken
    example (the clean image for "clean", the last stage's best point for the robust),
    "stages": per stage {"attack", "attacked", "broken", "seconds", "image_steps"},
    "zero_grad_fraction", "seconds", "image_steps"}.
    """
    check_autoattack_args(norm, [eps], n_iter, restarts_ce, n_target_classes, getattr(model, "num_classes", None),
                          square_queries)
    start = time.perf_counter()
    logits = batched_forward(model, x, batch_size, compile=compile)
    check_autoattack_args(norm, [eps], n_iter, restarts_ce, n_target_classes, logits.shape[1])
    correct = logits.argmax(1) == y
    index = torch.nonzero(correct).flatten()
    out = run_ensemble(model, x, y, logits, index, norm=norm, eps=eps, n_iter=n_iter, restarts_ce=restarts_ce,
                    n_target_classes=n_target_classes, square=square, square_queries=square_queries,
                    batch_size=batch_size, generator=generator, compile=compile, progress=progress)
    records = [{"attack": CLEAN, "iteration": 0, "target": None} for _ in range(len(y))]
    for j, i in enumerate(index.cpu().tolist()):
        records[i] = {"attack": out.broken_by[j], "iteration": out.iteration[j], "target": out.target[j]}
    robust = correct.clone()
    robust[index] = ~out.broken
    x_adv = x.clone()
    x_adv[index] = out.x_adv
    n = len(y)
    return {"norm": norm, "eps": eps, "n": n, "n_iter": n_iter,
            "clean_accuracy": float(correct.float().mean()) if n else 0.0,
            "robust_accuracy": float(robust.float().mean()) if n else 0.0,
            "records": records, "robust": robust, "x_adv": x_adv, "stages": out.stages,
            "zero_grad_fraction": float(out.zero_grad.float().mean()) if len(index) else 0.0,
            "seconds": time.perf_counter() - start, "image_steps": sum(s["image_steps"] for s in out.stages)}
