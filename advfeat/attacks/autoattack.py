"""The AutoAttack ensemble (Croce & Hein 2020, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks"), on advfeat's APGD, FAB and Square.

Per example, the worst case over attacks run one after the other, each only on the examples
every earlier one left robust. Three versions (`VERSIONS`):
    fast      APGD-CE (`restarts_ce` random starts), APGD-T; Square at the end with square=True.
              advfeat's default (what `--attack autoattack` ran before versions existed).
    standard  APGD-CE, APGD-T, FAB-T, Square 5,000 queries: the reference implementation's
              "standard" version, the one RobustBench reports.
    plus      APGD-CE and APGD-DLR (5 restarts each), FAB (untargeted, 5 restarts), Square,
              APGD-T, FAB-T: the reference's "plus" version.
APGD-T and FAB-T attack each of the n_target_classes classes of highest clean logit (true class
left out), one run per class (APGD-T: targeted DLR loss; FAB-T: the boundary toward the class).
Only correctly classified examples are attacked (the others count as broken, "clean"). An
example counts as broken by a stage when an iterate of it is misclassified within eps (success
"misclassified" for the targeted attacks too, as in AutoAttack).

`autoattack` runs one eps and returns per-example records and RobustBench-style fields;
`autoattack_accuracy` runs a list of eps in the shape of advfeat.evaluation.robust_accuracy,
chunk by chunk of the examples, and with a state file resumes a killed evaluation
(advfeat.eval_state): each chunk draws its random numbers from its own generator, seeded by
(seed, chunk), so a resumed run gives the results of an uninterrupted one bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from advfeat.attacks.apgd import apgd, apgd_targeted
from advfeat.attacks.engine import batched_forward
from advfeat.attacks.fab import fab, fab_targeted
from advfeat.attacks.results import EnsembleResult
from advfeat.attacks.square import square_attack
from advfeat.errors import UserError
from advfeat.settings import NORMS

VERSIONS = {
    "fast": ("apgd-ce", "apgd-t"),
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
}
STAGES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
TARGETED = ("apgd-t", "fab-t")  # stages whose record names the target class
PLUS_RESTARTS = 5  # the plus version's restarts of APGD-CE, APGD-DLR and FAB, as the reference
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


def stages_of(version: str, square: bool = False) -> tuple[str, ...]:
    """The stages a version runs, in order; square=True adds Square to the fast version."""
    if version not in VERSIONS:
        raise UserError(f"unknown AutoAttack version {version!r}; choose one of {', '.join(VERSIONS)}")
    stages = VERSIONS[version]
    return stages + ("square",) if square and "square" not in stages else stages


def run_ensemble(model, x, y, clean_logits, index: torch.Tensor, *, norm: str, eps: float, n_iter: int,
                 restarts_ce: int, n_target_classes: int, square: bool, square_queries: int, batch_size, generator,
                 compile, progress, version: str = "fast") -> Outcome:
    """Run the version's stages on x[index] (correctly classified examples), each on the survivors."""
    m = len(index)
    out = Outcome(index, [None] * m, [None] * m, [None] * m, x[index].clone(),
                  torch.zeros(m, dtype=torch.bool, device=x.device))
    common = dict(norm=norm, eps=eps, n_iter=n_iter, batch_size=batch_size, generator=generator, compile=compile,
                  progress=progress)
    restarts = PLUS_RESTARTS if version == "plus" else restarts_ce
    attacks = {
        "apgd-ce": lambda i: apgd(model, x[i], y[i], loss="ce", restarts=restarts, **common),
        "apgd-dlr": lambda i: apgd(model, x[i], y[i], loss="dlr", restarts=PLUS_RESTARTS, **common),
        "apgd-t": lambda i: apgd_targeted(model, x[i], y[i], n_target_classes=n_target_classes,
                                          clean_logits=clean_logits[i], **common),
        "fab": lambda i: fab(model, x[i], y[i], restarts=PLUS_RESTARTS, **common),
        "fab-t": lambda i: fab_targeted(model, x[i], y[i], n_target_classes=n_target_classes,
                                        clean_logits=clean_logits[i], **common),
        "square": lambda i: square_attack(model, x[i], y[i], norm=norm, eps=eps, n_queries=square_queries,
                                          batch_size=batch_size, generator=generator, compile=compile),
    }

    def run_stage(name: str, attack: Callable[[torch.Tensor], EnsembleResult]) -> None:
        alive = torch.tensor([b is None for b in out.broken_by], dtype=torch.bool)
        local = torch.nonzero(alive).flatten().to(x.device)
        if not len(local):
            out.stages.append({"attack": name, "attacked": 0, "broken": 0, "seconds": 0.0, "image_steps": 0})
            return
        result = attack(index[local])
        # FAB's point of an unbroken example may lie outside the ball: keep the earlier one there.
        keep = result.success if name.startswith("fab") else torch.ones_like(result.success)
        out.x_adv[local] = torch.where(keep.view(-1, *[1] * (x.dim() - 1)), result.x_adv, out.x_adv[local])
        success = result.success.cpu().tolist()  # one host read per stage
        iteration = result.success_iteration.cpu().tolist()
        target = result.target.cpu().tolist() if result.target is not None else [None] * len(local)
        for j, pos in enumerate(local.cpu().tolist()):
            if success[j]:
                out.broken_by[pos], out.iteration[pos] = name, iteration[j]
                out.target[pos] = target[j] if name in TARGETED else None
        out.stages.append({"attack": name, "attacked": len(local), "broken": int(sum(success)),
                           "seconds": round(result.seconds, 3), "image_steps": result.image_steps})
        if name == "apgd-ce":
            out.zero_grad[local] = result.zero_grad

    for name in stages_of(version, square):
        run_stage(name, attacks[name])
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
    version: str = "fast",
) -> dict:
    """The ensemble (`version`: fast, standard or plus) at one eps on (x, y) (tensors on the
    model's device).

    Returns {"norm", "eps", "n", "n_iter", "clean_accuracy", "robust_accuracy",
    "version", "attacks": the stages run, "records": per example {"attack": "clean" | a stage
    name | None (robust), "iteration": the step or query of the break (0: the random start),
    "target": APGD-T's or FAB-T's class}, "robust": (N,) bool tensor, "x_adv": (N, ...) the breaking point of each broken
    example (the clean image for "clean", the last stage's best point for the robust),
    "stages": per stage {"attack", "attacked", "broken", "seconds", "image_steps"},
    "zero_grad_fraction", "seconds", "image_steps"}.
    """
    check_autoattack_args(norm, [eps], n_iter, restarts_ce, n_target_classes, getattr(model, "num_classes", None),
                          square_queries)
    stages = stages_of(version, square)
    start = time.perf_counter()
    logits = batched_forward(model, x, batch_size, compile=compile)
    check_autoattack_args(norm, [eps], n_iter, restarts_ce, n_target_classes, logits.shape[1])
    correct = logits.argmax(1) == y
    index = torch.nonzero(correct).flatten()
    out = run_ensemble(model, x, y, logits, index, norm=norm, eps=eps, n_iter=n_iter, restarts_ce=restarts_ce,
                    n_target_classes=n_target_classes, square=square, square_queries=square_queries,
                    batch_size=batch_size, generator=generator, compile=compile, progress=progress,
                    version=version)
    records = [{"attack": CLEAN, "iteration": 0, "target": None} for _ in range(len(y))]
    for j, i in enumerate(index.cpu().tolist()):
        records[i] = {"attack": out.broken_by[j], "iteration": out.iteration[j], "target": out.target[j]}
    robust = correct.clone()
    robust[index] = ~out.broken
    x_adv = x.clone()
    x_adv[index] = out.x_adv
    n = len(y)
    return {"norm": norm, "eps": eps, "n": n, "n_iter": n_iter, "version": version, "attacks": list(stages),
            "clean_accuracy": float(correct.float().mean()) if n else 0.0,
            "robust_accuracy": float(robust.float().mean()) if n else 0.0,
            "records": records, "robust": robust, "x_adv": x_adv, "stages": out.stages,
            "zero_grad_fraction": float(out.zero_grad.float().mean()) if len(index) else 0.0,
            "seconds": time.perf_counter() - start, "image_steps": sum(s["image_steps"] for s in out.stages)}


# --------------------------------------------------------------------------- a list of eps, resumable


def autoattack_accuracy(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps_list: list[float],
    *,
    norm: str,
    version: str = "fast",
    n_iter: int = 100,
    restarts_ce: int = 1,
    n_target_classes: int = 9,
    batch_size: int | None = None,
    seed: int = 0,
    compile: bool | None = None,
    share: bool = True,
    square: bool = False,
    square_queries: int = 5000,
    checkpoint_every: int = 4,
    state_path=None,
    progress: bool = False,
) -> dict:
    """Clean and AutoAttack robust accuracy of `model` on (x, y) at each eps, in the shape of
    advfeat.evaluation.robust_accuracy: {"clean_accuracy", "n", "attack", "robust": rows,
    "warnings"}. Each row: "eps", "accuracy", "robust_index", "attacked", "seconds",
    "image_steps", "images_per_s", "image_steps_per_s", "broken_by" (counts per stage),
    "zero_grad_fraction", "stages", and "per_example": per example [stage, iteration, target]
    of its break, None where it stayed robust, ["clean", 0, None] where the model already
    misclassifies it. With share=True an example broken at a smaller eps keeps that eps's
    record (the same point breaks it here) and is not attacked again.

    The examples run in chunks of checkpoint_every * batch_size (all at once without a
    batch_size), every eps on a chunk before the next; chunk c draws its random numbers from a
    generator seeded with (seed, c). With state_path, each finished chunk's records are saved
    there (advfeat.eval_state), and a later call with the same model, data and settings skips
    the chunks already done: same results as an uninterrupted run.
    """
    from advfeat.eval_state import EvalState, model_digest, tensor_digest

    check_autoattack_args(norm, list(eps_list), n_iter, restarts_ce, n_target_classes,
                          getattr(model, "num_classes", None), square_queries)
    stages = stages_of(version, square)
    if checkpoint_every < 1:
        raise UserError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
    eps_list = sorted({float(e) for e in eps_list})
    logits = batched_forward(model, x, batch_size, compile=compile)
    check_autoattack_args(norm, eps_list, n_iter, restarts_ce, n_target_classes, logits.shape[1])
    correct = logits.argmax(1) == y
    settings = {"name": "autoattack", "version": version, "attacks": list(stages), "norm": norm, "eps": eps_list,
                "n_iter": n_iter, "restarts_ce": PLUS_RESTARTS if version == "plus" else restarts_ce,
                "n_target_classes": n_target_classes, "square": "square" in stages,
                "square_queries": square_queries if "square" in stages else None,
                "batch_size": batch_size, "checkpoint_every": checkpoint_every, "seed": seed, "compile": compile,
                "share": share}
    state = EvalState(state_path, {"model": model_digest(model), "data": tensor_digest(x, y),
                                   "settings": settings, "device": x.device.type})
    n = len(y)
    size = max(1, n if batch_size is None else batch_size * checkpoint_every)
    chunks = []
    for c, first in enumerate(range(0, n, size)):
        part = torch.arange(first, min(first + size, n), device=x.device)
        done = state.done(c)
        if done is None:
            generator = torch.Generator(device=x.device).manual_seed(seed * 1_000_003 + c)
            done = _attack_chunk(model, x, y, logits, correct, part, eps_list, settings, square, generator, progress)
            state.record(c, done)
        chunks.append(done)
    rows = [_eps_row(eps, chunks, n) for eps in eps_list]
    clean = float(correct.float().mean()) if n else 0.0
    return {"clean_accuracy": clean, "n": n, "attack": settings, "robust": rows,
            "warnings": _masking_warnings(rows, clean, n)}


def _masking_warnings(rows, clean, n):
    from advfeat.evaluation import masking_warnings  # the one home of the warnings

    return masking_warnings(rows, clean, n)


def _attack_chunk(model, x, y, logits, correct, part: torch.Tensor, eps_list: list[float], settings: dict,
                  square: bool, generator, progress: bool) -> dict:
    """Every eps on the examples `part` (smallest eps first): {"records": {eps: per example},
    "stages": {eps: per stage}, "zero_grad": {eps: count}, "seconds": {eps: seconds}}, as JSON."""
    from advfeat.evaluation import attack_progress_bar

    base = [None if ok else [CLEAN, 0, None] for ok in correct[part].cpu().tolist()]
    records, robust = list(base), correct[part].clone()
    out = {"records": {}, "stages": {}, "zero_grad": {}, "seconds": {}}
    for eps in eps_list:
        candidates = robust if settings["share"] else correct[part]
        if not settings["share"]:
            records = list(base)
        local = torch.nonzero(candidates).flatten()
        update, bar = attack_progress_bar(len(local), eps, progress)
        start = time.perf_counter()
        run = run_ensemble(model, x, y, logits, part[local], norm=settings["norm"], eps=eps,
                           n_iter=settings["n_iter"], restarts_ce=settings["restarts_ce"],
                           n_target_classes=settings["n_target_classes"], square=square,
                           square_queries=settings["square_queries"] or 1, batch_size=settings["batch_size"],
                           generator=generator, compile=settings["compile"], progress=update,
                           version=settings["version"])
        bar.close()
        broken = torch.zeros_like(candidates)
        broken[local] = run.broken
        robust = candidates & ~broken
        records = list(records)
        for j, pos in enumerate(local.cpu().tolist()):
            name = run.broken_by[j]
            records[pos] = None if name is None else [name, run.iteration[j], run.target[j]]
        key = repr(eps)
        out["records"][key], out["stages"][key] = records, run.stages
        out["zero_grad"][key] = int(run.zero_grad.sum())
        out["seconds"][key] = time.perf_counter() - start
    return out


def _eps_row(eps: float, chunks: list[dict], n: int) -> dict:
    """One eps's row, summed over the chunks."""
    key = repr(eps)
    records = [r for chunk in chunks for r in chunk["records"][key]]
    stages: dict[str, dict] = {}
    for chunk in chunks:
        for s in chunk["stages"][key]:
            total = stages.setdefault(s["attack"], {"attack": s["attack"], "attacked": 0, "broken": 0,
                                                    "seconds": 0.0, "image_steps": 0})
            for field_ in ("attacked", "broken", "seconds", "image_steps"):
                total[field_] += s[field_]
    stage_list = [s | {"seconds": round(s["seconds"], 3)} for s in stages.values()]
    attacked = stage_list[0]["attacked"] if stage_list else 0
    seconds = sum(chunk["seconds"][key] for chunk in chunks)
    image_steps = sum(s["image_steps"] for s in stage_list)
    robust_index = [i for i, r in enumerate(records) if r is None]
    return {"eps": eps, "accuracy": len(robust_index) / n if n else 0.0, "robust_index": robust_index,
            "attacked": attacked, "seconds": round(seconds, 3), "image_steps": image_steps,
            "images_per_s": round(attacked / max(seconds, 1e-9), 1),
            "image_steps_per_s": round(image_steps / max(seconds, 1e-9), 1),
            "broken_by": {s["attack"]: s["broken"] for s in stage_list},
            "zero_grad_fraction": sum(chunk["zero_grad"][key] for chunk in chunks) / attacked if attacked else 0.0,
            "stages": stage_list, "per_example": records}
